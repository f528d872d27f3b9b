// What both apps do with connections and prices, kept in a page's Store (store.js) as
// "connections": a Map by connection id, replaced (never changed in place) on every update.

/** A new or changed connection into the store. A push may lack the names the list had. */
export function upsertConnection(store, c) {
  const connections = new Map(store.get("connections"));
  const old = connections.get(c.id) || {};
  const merged = { ...old, ...c };
  for (const name of ["person_name", "family_name"]) if (!c[name] && old[name]) merged[name] = old[name];
  connections.set(c.id, merged);
  store.set("connections", connections);
}

/** What a facility charges: its own prices, else the server's defaults (GET /pricing). */
export function facilityPrices(pricing, facility) {
  return { ...pricing.prices, ...((facility && facility.settings && facility.settings.prices) || {}) };
}
