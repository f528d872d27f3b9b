// The facility's recorded visits (GET /recordings); the file plays from
// /recordings/{id}/media, by byte ranges, each request audited.
import { api } from "../api.js";
import { $, h, say } from "../dom.js";

export class Recordings {
  /** `scoped(path)` adds an admin's facility; `names` (names.js); `when(iso)` a time shown. */
  constructor({ scoped, names, when }) {
    Object.assign(this, { scoped, names, when });
    $("recordings-refresh").addEventListener("click", () => this.load().catch((e) => say($("notice"), e.message, "error")));
  }

  async load() {
    const when = this.when;
    const r = await api("GET", this.scoped("/recordings?limit=50"));
    await this.names.know(r.recordings.flatMap((x) => [x.family_id, x.person_id]));
    $("recordings-empty").hidden = r.recordings.length > 0;
    $("recording-list").replaceChildren(...r.recordings.map((x) => {
      const who = `${this.names.get(x.family_id)} and ${this.names.get(x.person_id)}`;
      const play = h("button", { type: "button", "aria-label": `Play the recording of ${who} at ${when(x.started_at)}` }, "Play");
      play.addEventListener("click", () => {
        $("recording-player").src = `/api/v1/recordings/${encodeURIComponent(x.id)}/media`;
        $("recording-cap").textContent = `${who}, ${when(x.started_at)}`;
        $("recording-figure").hidden = false;
        $("recording-player").play().catch(() => {}); // autoplay may be refused: the controls remain
      });
      const minutes = Math.floor(x.duration_s / 60);
      const seconds = String(Math.round(x.duration_s % 60)).padStart(2, "0");
      return h("li", { dataset: { recording: x.id } },
        h("span", {}, h("strong", {}, who), h("br"),
          h("span", { class: "muted" }, `${when(x.started_at)} · ${minutes}:${seconds} · kept until ${when(x.retain_until)}`)),
        play);
    }));
  }
}
