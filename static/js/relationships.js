// What a family member may say they are to the person (server/connections.py RELATIONSHIPS:
// codes, never free text). Each code with the family's words for it ("You are: their parent")
// and how the kiosk tells the person ("Says they are your parent").
export const RELATIONSHIPS = [
  ["parent", "Their parent", "your parent"],
  ["child", "Their child", "your child"],
  ["partner", "Their partner or spouse", "your partner or spouse"],
  ["sibling", "Their brother or sister", "your brother or sister"],
  ["grandparent", "Their grandparent", "your grandparent"],
  ["grandchild", "Their grandchild", "your grandchild"],
  ["other_family", "Other family", "family"],
  ["friend", "A friend", "a friend"],
  ["attorney", "Their attorney", "your attorney"],
  ["clergy", "Clergy", "clergy"],
  ["other", "Someone else", "someone you know"],
];

/** The kiosk's words for a code, or null when none (or an unknown one) was given. */
export function toPerson(code) {
  const found = RELATIONSHIPS.find(([c]) => c === code);
  return found ? found[2] : null;
}
