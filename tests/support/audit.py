"""The accessibility audit a browser test runs on each screen it shows, at a desktop's and a
phone's size (tests/browser/test_accessibility.py walks every screen with it)."""

from __future__ import annotations

from typing import Any

PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 800}

# Marks each visible interactive element with data-a11y-i and reports images without alt and
# the page's width. Visible: rendered (checkVisibility: not display:none, not in a closed
# <details>, not visibility:hidden) with a box; a visually hidden but focusable control (the
# photo file input) counts, since keyboard and screen-reader users reach it. While a modal
# dialog is open (the photo viewer) only its content counts: the page behind is inert, out of
# reach of the keyboard and of the accessibility tree, as it should be.
MARK = """() => {
  for (const el of document.querySelectorAll('[data-a11y-i]')) el.removeAttribute('data-a11y-i');
  const scope = document.querySelector('dialog:modal') || document;
  const sel = 'button, a[href], input, select, textarea, summary, [role=button], [role=link], '
    + '[role=tab], [role=checkbox], [contenteditable=true], [tabindex]';
  const marked = {};
  let i = 0;
  for (const el of scope.querySelectorAll(sel)) {
    if (el.type === 'hidden' || !el.checkVisibility({visibilityProperty: true})) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    el.setAttribute('data-a11y-i', String(i));
    marked[i++] = el.outerHTML.slice(0, 140);
  }
  const noAlt = [...document.images].filter((img) => !img.hasAttribute('alt'))
    .map((img) => img.outerHTML.slice(0, 140));
  return {marked, noAlt, scrollWidth: document.documentElement.scrollWidth,
          innerWidth: window.innerWidth};
}"""


def _marks(node: dict[str, Any], out: dict[int, int]) -> None:
    attrs = node.get("attributes", [])
    for k, v in zip(attrs[::2], attrs[1::2], strict=True):
        if k == "data-a11y-i":
            out[node["backendNodeId"]] = int(v)
    for child in node.get("children", []):
        _marks(child, out)


class Audit:
    """Collects every problem found, so one run lists them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: dict[str, int] = {}

    async def screen(self, page, name: str) -> None:
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            await page.set_viewport_size(size)
            await self._check(page, f"{name} @{label}", overflow=label == "phone")

    async def _check(self, page, where: str, overflow: bool) -> None:
        # Chromium brings its accessibility tree up to date after layout, asynchronously: just
        # after a viewport change (or a re-render by a live push) a fresh node can be missing
        # from it for a moment. A real problem stays; so look again before reporting one.
        for attempt in range(3):
            found, problems, count = await self._tree(page, where)
            if not problems:
                break
            await page.wait_for_timeout(250 * (attempt + 1))
        self.problems.extend(problems)
        self.checked[where] = count
        for html in found["noAlt"]:
            self.problems.append(f"{where}: image without alt: {html}")
        if overflow and found["scrollWidth"] > found["innerWidth"]:
            wide = await page.evaluate("""() => [...document.querySelectorAll('body *')]
              .filter((el) => el.getBoundingClientRect().right > innerWidth + 0.5
                      && el.checkVisibility())
              .slice(0, 5).map((el) => el.outerHTML.slice(0, 100))""")
            self.problems.append(f"{where}: {found['scrollWidth']} px wide at "
                                 f"{found['innerWidth']}: {wide}")


    async def _tree(self, page, where: str) -> tuple[dict, list[str], int]:
        found = await page.evaluate(MARK)
        cdp = await page.context.new_cdp_session(page)
        try:
            doc = await cdp.send("DOM.getDocument", {"depth": -1})
            ax = await cdp.send("Accessibility.getFullAXTree")
        finally:
            await cdp.detach()
        by_backend: dict[int, int] = {}
        _marks(doc["root"], by_backend)
        names = {n["backendDOMNodeId"]: n for n in ax["nodes"] if "backendDOMNodeId" in n}
        problems = []
        for backend, i in by_backend.items():
            html = found["marked"][str(i)]
            node = names.get(backend)
            if node is None or node.get("ignored"):
                problems.append(f"{where}: hidden from the accessibility tree: {html}")
                continue
            name = str((node.get("name") or {}).get("value") or "").strip()
            if not name:
                problems.append(f"{where}: no accessible name: {html}")
        return found, problems, len(by_backend)
