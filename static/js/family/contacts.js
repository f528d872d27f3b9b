// The family's contacts (GET /connections, `connection.updated`), kept in the page's store as
// "connections": a Map by connection id, replaced (never changed in place) on every update.

/** A connection's state in the family's words. */
export function statusText(c) {
  if (c.blocked) return "Blocked";
  return { requested: "Waiting for approval", approved: "Connected", denied: "Declined" }[c.status] || c.status;
}

/** The contact who is this person, if any. */
export function contactOf(connections, personId) {
  return [...connections.values()].find((c) => c.person_id === personId);
}

/** Approved and not blocked: the contacts one may write to, give to and visit. */
export function reachable(connections) {
  return [...connections.values()].filter((c) => c.status === "approved" && !c.blocked);
}

/** What the contact's facility charges: its own prices, else the server's defaults (GET /pricing). */
export function pricesOf(contact, pricing, facilities) {
  const f = contact && facilities.get(contact.facility_id);
  return { ...pricing.prices, ...((f && f.settings && f.settings.prices) || {}) };
}

/** A new or changed connection into the store (a push may lack the name the list had). */
export function upsertConnection(store, c) {
  const connections = new Map(store.get("connections"));
  const old = connections.get(c.id) || {};
  connections.set(c.id, { ...old, ...c, person_name: c.person_name || old.person_name });
  store.set("connections", connections);
}
