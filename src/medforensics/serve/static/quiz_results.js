// Quiz results: my scores per forgery kind (and everyone's for admins), accuracy against the
// study's 75 % as plain HTML bars.
"use strict";

(() => {
  const {api, el, fill, $} = MF;

  function pct(x) { return x === null || x === undefined ? "–" : `${Math.round(x * 1000) / 10} %`; }

  function tally(rows) {
    const t = {n: 0, correct: 0, hits: 0};
    for (const r of rows) { t.n += r.n; t.correct += r.correct; t.hits += r.hits; }
    t.accuracy = t.n ? t.correct / t.n : null;
    return t;
  }

  function byKey(rows, key) {
    const groups = new Map();
    for (const r of rows) { if (!groups.has(r[key])) groups.set(r[key], []); groups.get(r[key]).push(r); }
    return [...groups.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0])));
  }

  /** One bar per [name, tally], plus the overall bar; a dashed line at the benchmark. */
  function chart(node, entries, overall, benchmark) {
    const bar = (name, t, cls) => {
      const fill_ = el("span", {class: "fill" + (t.accuracy !== null && t.accuracy < benchmark ? " below" : "")});
      fill_.style.width = `${Math.round(100 * (t.accuracy || 0))}%`;
      const bench = el("span", {class: "bench", title: `study: ${pct(benchmark)}`});
      bench.style.left = `${100 * benchmark}%`;
      return el("div", {class: `row ${cls || ""}`, "data-name": name, "data-accuracy": t.accuracy === null ? "" : t.accuracy.toFixed(4)},
        el("span", {}, name, el("span", {class: "muted"}, ` (${t.n})`)), el("div", {class: "track"}, fill_, bench),
        el("span", {class: "num"}, pct(t.accuracy)));
    };
    fill(node, entries.map(([name, t]) => bar(name, t)), bar("overall", overall, "overall"),
         el("div", {class: "legend"}, `dashed line: the study's ${pct(benchmark)}`));
  }

  /** "fakes called fake: x % (n); authentic images called real: y % (m)" for ``rows``. */
  function split(rows) {
    const fakes = tally(rows.filter((r) => r.kind !== "authentic"));
    const real = tally(rows.filter((r) => r.kind === "authentic"));
    const parts = [];
    if (fakes.n) parts.push(`fakes called fake: ${pct(fakes.accuracy)} of ${fakes.n}, ${fakes.hits} marked inside the change`);
    if (real.n) parts.push(`authentic images called real: ${pct(real.accuracy)} of ${real.n}`);
    return parts.join(" · ");
  }

  function verdictLine(node, who, t, benchmark) {
    if (!t.n) { node.textContent = `${who} answered no quiz image yet.`; node.className = "verdict"; return; }
    const diff = t.accuracy - benchmark;
    node.className = `verdict ${diff >= 0 ? "correct" : "incorrect"}`;
    node.textContent = `${who}: ${pct(t.accuracy)} correct over ${t.n} image${t.n > 1 ? "s" : ""} ` +
      `(${diff >= 0 ? "+" : "−"}${Math.abs(Math.round(diff * 1000) / 10)} points against the study's ${pct(benchmark)}).`;
  }

  function rowsTable(tbody, groups, withUser) {
    fill(tbody, groups.map(([key, rows]) => {
      const t = tally(rows);
      return el("tr", {class: "score-row", "data-kind": withUser ? rows[0].kind : key},
        withUser ? el("td", {}, rows[0].user) : null, el("td", {}, withUser ? rows[0].kind : key),
        el("td", {class: "num"}, t.n), el("td", {class: "num"}, t.correct), el("td", {class: "num"}, pct(t.accuracy)),
        el("td", {class: "num"}, rows[0].kind === "authentic" ? "–" : t.hits));
    }));
  }

  document.addEventListener("DOMContentLoaded", async () => {
    let data;
    try { data = await api("GET", "/api/quiz/scores"); } catch (e) { return; }
    const benchmark = data.benchmark ?? 0.75;
    $("#benchmark-text").textContent = pct(benchmark);
    const mine = data.mine || [];
    const kinds = byKey(mine, "kind");
    verdictLine($("#mine-overall"), "You", tally(mine), benchmark);
    $("#mine-split").textContent = split(mine);
    chart($("#accuracy-chart"), kinds.map(([k, rows]) => [k, tally(rows)]), tally(mine), benchmark);
    rowsTable($("#scores-mine tbody"), kinds, false);
    const panel = $("#everyone-panel");
    if (panel && data.everyone) {
      const everyone = data.everyone;
      const users = byKey(everyone, "user");
      verdictLine($("#department-overall"), `The department (${users.length} user${users.length === 1 ? "" : "s"})`,
                  tally(everyone), benchmark);
      $("#department-split").textContent = split(everyone);
      chart($("#department-chart"), users.map(([u, rows]) => [u, tally(rows)]), tally(everyone), benchmark);
      const pairs = byKey(everyone.map((r) => ({...r, pair: `${r.user}\u0000${r.kind}`})), "pair");
      rowsTable($("#scores-everyone tbody"), pairs, true);
    }
    document.body.dataset.ready = "1";
  });
})();
