// "Attach photos" in the compose box: a labelled file input (JPEG/PNG, up to the server's
// photos_per_message_max, from GET /pricing) and a preview of each with a Remove button,
// before the message is sent. The controls are built here so index.html stays as it was;
// uploading them is the compose box's (messages.js).
import { $, h, say } from "../dom.js";
import { t } from "../i18n.js";

export class Attachments {
  /** Placed after #compose-body; `max` photos at most; `onChange()` whenever the set of
   * photos changes. */
  constructor({ max, onChange }) {
    this.max = max;
    this.items = []; // [{file, url, photoId?}]
    this.onChange = onChange;
    this.input = h("input", { type: "file", id: "compose-photos", accept: "image/jpeg,image/png",
                              multiple: true, class: "sr-only" });
    this.label = h("label", { for: "compose-photos", class: "attach" }, t("photos.attach"));
    const hint = h("span", { class: "muted", id: "compose-photos-hint" },
                   " " + t("photos.hint", { n: max }));
    this.previews = h("ul", { class: "previews", id: "compose-previews", "aria-label": t("photos.to_send") });
    this.input.setAttribute("aria-describedby", "compose-photos-hint");
    $("compose-body").after(h("div", { class: "attach-row" }, this.input, this.label, hint), this.previews);
    this.input.addEventListener("change", () => this.add());
  }

  add() {
    const files = [...this.input.files];
    this.input.value = "";
    const room = this.max - this.items.length;
    for (const file of files.slice(0, Math.max(room, 0))) {
      this.items.push({ file, url: URL.createObjectURL(file) });
    }
    say($("compose-notice"), files.length > room ? t("photos.at_most", { n: this.max }) : "",
        files.length > room ? "error" : "info");
    this.render();
  }

  render() {
    this.previews.replaceChildren(...this.items.map((a, i) => {
      const remove = h("button", { type: "button", class: "remove", "aria-label": t("photos.remove", { i: i + 1, file: a.file.name }) }, "×");
      remove.addEventListener("click", () => {
        URL.revokeObjectURL(a.url);
        this.items.splice(i, 1);
        this.render();
        this.label.focus();
      });
      return h("li", {}, h("img", { src: a.url, alt: t("photos.preview", { i: i + 1, file: a.file.name }) }), remove);
    }));
    this.onChange();
  }

  clear() {
    for (const a of this.items) URL.revokeObjectURL(a.url);
    this.items = [];
    this.render();
  }
}
