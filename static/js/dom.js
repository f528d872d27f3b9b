// The small DOM helper every page shares: find by id, build an element, say something in a
// live region, show an amount of money. Nothing here talks to the server (that is api.js).

/** The element with this id (the pages' markup ids; docs/clients.md). */
export const $ = (id) => document.getElementById(id);

/** A tiny element builder: h("li", {class: "x", onclick}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Show a message in a live region (role=status / role=alert). */
export function say(el, text, kind = "info") {
  el.textContent = text || "";
  el.dataset.kind = kind;
}

/** Whole credits and cents as money: 650 -> "$6.50". */
export function dollars(cents) {
  return `$${(cents / 100).toFixed(2)}`;
}
