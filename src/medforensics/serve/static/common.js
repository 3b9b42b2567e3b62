// medforensics review service: what every page shares -- the API helper, messages, DOM helpers.
// Loaded as a plain script (no build step); exposes one global, MF.
"use strict";

const MF = (() => {
  const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function messageArea() {
    let box = document.getElementById("message");
    if (!box) {
      box = document.createElement("div");
      box.id = "message";
      box.setAttribute("role", "alert");
      box.className = "message hidden";
      document.body.insertBefore(box, document.body.firstChild);
    }
    return box;
  }

  /** Show one line in the page's message area (kind "error" or "ok"); an empty text hides it. */
  function message(text, kind = "error") {
    const box = messageArea();
    box.textContent = "";
    if (!text) { box.className = "message hidden"; return; }
    box.className = kind === "ok" ? "message ok" : "message";
    box.appendChild(document.createTextNode(text));
    const close = el("button", {class: "close", type: "button", "aria-label": "close", title: "close"}, "×");
    close.addEventListener("click", () => message(""));
    box.appendChild(close);
  }

  /** The one-line text of an error body (``{"detail": "..."}``, or FastAPI's list of problems). */
  function detailText(data, status, statusText) {
    if (data && typeof data === "object" && "detail" in data) {
      const d = data.detail;
      if (typeof d === "string") return d;
      if (Array.isArray(d)) {
        return d.map((p) => (p && p.msg) ? `${(p.loc || []).slice(1).join(".") || "request"}: ${p.msg}` : String(p)).join("; ");
      }
      return JSON.stringify(d);
    }
    if (typeof data === "string" && data.trim() && data.length < 300) return data.trim();
    return `${status} ${statusText || "error"}`;
  }

  function loginUrl() {
    return "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  /**
   * Call the JSON API: ``await api("POST", "/api/x", {a: 1})``. A FormData body is sent as
   * multipart. Adds the CSRF header on state-changing methods, goes to the login page on 401
   * (unless ``opts.noRedirect``), shows the one-line ``detail`` of any other error (unless
   * ``opts.quiet``) and throws an Error carrying ``status``.
   */
  async function api(method, url, body, opts = {}) {
    method = method.toUpperCase();
    const headers = {"Accept": "application/json"};
    const init = {method, headers, credentials: "same-origin"};
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined && body !== null) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const token = csrfToken();
    if (MUTATING.has(method) && token) headers["X-CSRF-Token"] = token;
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      const e = new Error(`the service did not answer (${err.message})`);
      if (!opts.quiet) message(e.message);
      throw e;
    }
    if (response.status === 401 && !opts.noRedirect) {
      location.href = loginUrl();
      const e = new Error("not signed in");
      e.status = 401;
      throw e;
    }
    let data = null;
    if (response.status !== 204) {
      const type = response.headers.get("content-type") || "";
      data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
    }
    if (!response.ok) {
      const text = detailText(data, response.status, response.statusText);
      if (!opts.quiet) message(text);
      const e = new Error(text);
      e.status = response.status;
      e.data = data;
      throw e;
    }
    return data;
  }

  /** ``el("a", {href: "/x", class: "c", dataset: {id: 3}}, "text", child)``: a new element. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "dataset") {
        for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
      } else if (key === "text") {
        node.textContent = value;
      } else if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else if (value === true) {
        node.setAttribute(key, "");
      } else {
        node.setAttribute(key, String(value));
      }
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** Empty ``node`` and fill it with ``children``. */
  function fill(node, ...children) {
    node.textContent = "";
    return append(node, children);
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  /** A coloured badge for a label (null: the item could not be scanned). */
  function labelBadge(label) {
    const word = label || "error";
    return el("span", {class: `badge label-${word}`, "data-label": word}, word);
  }

  /** A score as a small bar and two decimals ("–" when there is none). */
  function scoreCell(score) {
    if (score === null || score === undefined) return el("span", {class: "muted"}, "–");
    const bar = el("span", {class: "scorebar" + (score < 0.3 ? " low" : score < 0.5 ? " mid" : "")}, el("span"));
    bar.firstChild.style.width = `${Math.round(score * 100)}%`;
    return el("span", {class: "nowrap"}, bar, score.toFixed(2));
  }

  function stateChip(state) {
    const word = state || "unreviewed";
    return el("span", {class: `state state-${word}`, "data-state": word}, word);
  }

  /** ISO-8601 UTC time as "YYYY-MM-DD HH:MM" (UTC, as stored). */
  function when(iso) {
    if (!iso) return "";
    return String(iso).replace("T", " ").replace(/:\d\dZ$/, "Z").replace(/Z$/, " UTC");
  }

  function fmt(value) {
    if (value === null || value === undefined || value === "") return "–";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  const ROLES = ["viewer", "reviewer", "admin"];
  function role() { return document.body.dataset.role || ""; }
  function atLeast(r) { return ROLES.indexOf(role()) >= ROLES.indexOf(r); }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  function signOutButton() {
    const button = document.getElementById("sign-out");
    if (!button) return;
    button.addEventListener("click", async () => {
      try { await api("DELETE", "/api/session", undefined, {noRedirect: true}); } catch (e) { /* signed out anyway */ }
      location.href = "/login";
    });
  }

  function markNav() {
    const page = document.body.dataset.page;
    for (const a of $$(".topbar nav a")) if (page && (a.dataset.page === page || page.startsWith(`${a.dataset.page}_`))) a.classList.add("active");
  }

  document.addEventListener("DOMContentLoaded", () => { signOutButton(); markNav(); });

  return {api, message, el, fill, append, $, $$, labelBadge, scoreCell, stateChip, when, fmt, role, atLeast,
          debounce, csrfToken};
})();
