// The family's contacts (GET /connections, `connection.updated`; the store's "connections",
// connections.js) in the family's words.
import { facilityPrices } from "../connections.js";
import { has, t } from "../i18n.js";

/** A connection's state in the family's words. */
export function statusText(c) {
  if (c.blocked) return t("connection.blocked");
  return has(`connection.${c.status}`) ? t(`connection.${c.status}`) : c.status;
}

/** The contact who is this person, if any. */
export function contactOf(connections, personId) {
  return [...connections.values()].find((c) => c.person_id === personId);
}

/** Approved and not blocked: the contacts one may write to, give to and visit. */
export function reachable(connections) {
  return [...connections.values()].filter((c) => c.status === "approved" && !c.blocked);
}

/** What the contact's facility charges (GET /facilities; a Map by id). */
export function pricesOf(contact, pricing, facilities) {
  return facilityPrices(pricing, contact && facilities.get(contact.facility_id));
}
