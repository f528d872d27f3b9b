// What a family member may say they are to the person (server/connections.py RELATIONSHIPS:
// codes, never free text). Each code with the family's words for it ("You are: their parent")
// and how the kiosk tells the person ("Says they are your parent").
// The words are in the catalogues (i18n.js): relationship.<code> for the family,
// relationship.to_person.<code> for the kiosk.
import { t } from "./i18n.js";

export const RELATIONSHIPS = ["parent", "child", "partner", "sibling", "grandparent", "grandchild",
                              "other_family", "friend", "attorney", "clergy", "other"];

/** The kiosk's words for a code, or null when none (or an unknown one) was given. */
export function toPerson(code) {
  return RELATIONSHIPS.includes(code) ? t(`relationship.to_person.${code}`) : null;
}
