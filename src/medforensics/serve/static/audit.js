// Audit trail: newest entries first, 100 a page; tree size and root; Verify (admins).
"use strict";

(() => {
  const {api, el, fill, $, when} = MF;
  const PAGE = 100;
  let first = null;   // seq offset of the page's oldest entry
  let size = 0;

  function targetCell(target) {
    const m = /^item:(\d+)$/.exec(target || "");
    return m ? el("a", {href: `/items/${m[1]}`}, target) : target;
  }

  async function load(offset) {
    // the API pages from the oldest entry; show the newest first
    const head = await api("GET", "/api/audit?offset=0&limit=1");
    size = head.size;
    $("#audit-size").textContent = String(size);
    $("#audit-root").textContent = head.root || "–";
    if (offset === null) offset = Math.max(0, size - PAGE);
    offset = Math.max(0, Math.min(offset, Math.max(0, size - 1)));
    const limit = Math.min(PAGE, size - offset) || 1;
    const data = await api("GET", `/api/audit?offset=${offset}&limit=${limit}`);
    first = offset;
    const entries = [...data.entries].reverse();
    fill($("#audit-body"), entries.length ? entries.map((e) => el("tr", {class: "audit-row", "data-seq": e.seq, "data-action": e.action},
      el("td", {class: "num"}, e.seq), el("td", {class: "nowrap"}, when(e.at)), el("td", {}, e.who), el("td", {}, e.action),
      el("td", {class: "wrap-any"}, targetCell(e.target)), el("td", {}, `${e.before || "–"} → ${e.after || "–"}`),
      el("td", {class: "wrap-any"}, e.note || ""), el("td", {class: "mono", title: e.leaf_hash}, (e.leaf_hash || "").slice(0, 16) + "…")))
      : el("tr", {}, el("td", {colspan: 8, class: "muted"}, "no entries yet")));
    const last = offset + data.entries.length;
    $("#audit-info").textContent = size ? `entries ${offset + 1}–${last} of ${size}` : "";
    $("#audit-prev").disabled = last >= size;
    $("#audit-next").disabled = offset === 0;
  }

  async function verify() {
    const out = $("#verify-result");
    out.textContent = "verifying…";
    try {
      const r = await api("GET", "/api/audit/verify");
      out.textContent = r.ok ? `intact: ${r.size} entries, root ${r.root.slice(0, 16)}…` : `${r.problems.length} problem(s) found`;
      out.className = r.ok ? "state state-dismissed" : "state state-confirmed";
      out.dataset.ok = String(r.ok);
      fill($("#verify-problems"), (r.problems || []).map((p) => el("li", {}, p)));
    } catch (e) {
      out.textContent = "";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#audit-prev").addEventListener("click", () => load(first + PAGE).catch(() => {}));
    $("#audit-next").addEventListener("click", () => load(Math.max(0, first - PAGE)).catch(() => {}));
    const v = $("#audit-verify");
    if (v) v.addEventListener("click", verify);
    load(null).then(() => { document.body.dataset.ready = "1"; }).catch(() => {});
  });
})();
