// Photos in a conversation, for the family app and the kiosk: each photo of a message as a
// thumbnail link (GET /photos/{id}/thumb, the same authorised route everywhere) that opens the
// full photo in a modal <dialog>. The browser's own modal dialog keeps focus inside it, closes
// on Escape and hides the page from screen readers; Close (or a tap beside the photo) closes it
// and focus goes back to the thumbnail that opened it. The link still works without script.
import { h } from "./dom.js";
import { t } from "./i18n.js";

const photoUrl = (id, thumb) => `/api/v1/photos/${encodeURIComponent(id)}${thumb ? "/thumb" : ""}`;

/** The thumbnails of `ids`; `from` (a name) goes into each alt text when given. */
export function photoThumbs(ids, from) {
  const total = ids.length;
  return h("div", { class: "thumbs" }, ...ids.map((id, i) => {
    const alt = from ? t("photo.alt_from", { i: i + 1, n: total, name: from })
      : t("photo.alt", { i: i + 1, n: total });
    const link = h("a", { href: photoUrl(id), class: "photo", "aria-haspopup": "dialog",
                          title: t("photo.enlarge"), dataset: { photo: id } },
                   h("img", { src: photoUrl(id, true), alt, loading: "lazy" }));
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      showPhoto(id, alt, link);
    });
    return link;
  }));
}

function viewer() {
  let d = document.getElementById("photo-viewer");
  if (d) return d;
  const close = h("button", { type: "button", class: "primary", id: "photo-viewer-close" }, t("photo.close"));
  d = h("dialog", { id: "photo-viewer", class: "photo-viewer", "aria-labelledby": "photo-viewer-h" },
        h("div", { class: "bar" }, h("h2", { id: "photo-viewer-h" }), close),
        h("img", { id: "photo-viewer-img", alt: "" }));
  close.addEventListener("click", () => d.close());
  // A tap on the backdrop lands on the dialog element itself, outside its content.
  d.addEventListener("click", (ev) => { if (ev.target === d) d.close(); });
  document.body.append(d);
  return d;
}

/** Open the full-size photo `id` (described by `alt`); focus returns to `opener` on close. */
export function showPhoto(id, alt, opener) {
  const d = viewer();
  const img = d.querySelector("img");
  img.src = photoUrl(id);
  img.alt = alt;
  d.querySelector("h2").textContent = alt;
  d.addEventListener("close", () => {
    img.removeAttribute("src"); // nothing of it stays on screen for whoever comes next
    opener?.focus();
  }, { once: true });
  d.showModal();
  d.querySelector("#photo-viewer-close").focus();
}
