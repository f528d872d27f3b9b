// Who is who in the staff console: the facility's families and people by account id, from
// GET /connections (for the facility's own staff; administrators see ids).
import { api } from "../api.js";

export class Names {
  constructor(me) {
    this.admin = me.role === "admin";
    this.byId = new Map([[me.id, me.name]]); // "by <you>" in the audit log
  }

  /** The name, else the id itself. */
  get(id) {
    return this.byId.get(id) || id;
  }

  /** Read the names again if any of these ids is not known yet. */
  async know(ids) {
    if (ids.some((id) => !this.byId.has(id))) await this.load();
  }

  async load() {
    if (this.admin) return; // GET /connections is for the facility's own staff
    const r = await api("GET", "/connections");
    for (const c of r.connections) {
      if (c.family_name) this.byId.set(c.family_id, c.family_name);
      if (c.person_name) this.byId.set(c.person_id, c.person_name);
    }
  }
}
