// What a family member may say they are to the person (server/connections.py RELATIONSHIPS:
// codes, never free text). Each code with the family's word for it ("I am their …") and how
// the kiosk tells the person ("Says they are …").
export const RELATIONSHIPS = [
  ["parent", "Parent", "your parent"],
  ["child", "Child", "your child"],
  ["partner", "Partner or spouse", "your partner or spouse"],
  ["sibling", "Brother or sister", "your brother or sister"],
  ["grandparent", "Grandparent", "your grandparent"],
  ["grandchild", "Grandchild", "your grandchild"],
  ["other_family", "Other family", "family"],
  ["friend", "Friend", "a friend"],
  ["attorney", "Attorney", "your attorney"],
  ["clergy", "Clergy", "clergy"],
  ["other", "Other", "someone you know"],
];

/** The kiosk's words for a code, or null when none (or an unknown one) was given. */
export function toPerson(code) {
  const found = RELATIONSHIPS.find(([c]) => c === code);
  return found ? found[2] : null;
}
