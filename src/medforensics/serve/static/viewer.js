// Viewer: one item's slices at full resolution (PNG rendered by the service for a window/level),
// slice scrolling, heatmap overlays, regions, evidence, provenance, header and decisions.
"use strict";

(() => {
  const {api, el, fill, $, $$, labelBadge, scoreCell, stateChip, when, fmt, message} = MF;
  const ALARM = 0.5;
  const CT_PRESETS = {lung: [-600, 1500], "soft tissue": [40, 400], bone: [400, 1800]};
  const ACTION_LABELS = {confirm: "Confirm alarm", dismiss: "Dismiss alarm", flag: "Flag", release: "Release", reject: "Reject"};
  const ACTION_DONE = {confirm: "alarm confirmed", dismiss: "alarm dismissed", flag: "flagged", release: "released", reject: "rejected"};

  const viewer = () => $("#viewer");
  const S = {
    id: null, item: null, n: 1, rows: 1, cols: 1, k: 0,
    center: 0, width: 1, defaultWindow: [0, 1],
    active: new Set(), opacity: 0.6, regions: [], selected: null,
    prefetched: [], headerLoaded: false,
  };

  // ------------------------------------------------------------------ URLs
  function num(v) { return String(Math.round(v * 10) / 10); }
  function sliceUrl(k) {
    return `/api/items/${S.id}/slices/${k}.png?center=${num(S.center)}&width=${num(S.width)}`;
  }
  function overlayUrl(detector, k) {
    return `/api/items/${S.id}/overlays/${encodeURIComponent(detector)}/${k}.png`;
  }

  // ------------------------------------------------------------------ slices
  function clamp(k) { return Math.max(0, Math.min(S.n - 1, k)); }

  function show(k) {
    S.k = clamp(k);
    const img = $("#slice-img");
    const url = sliceUrl(S.k);
    if (img.getAttribute("src") !== url) img.src = url;
    img.dataset.k = String(S.k);
    for (const o of $$(".overlay-img")) {
      const on = S.active.has(o.dataset.detector);
      o.classList.toggle("hidden", !on);
      if (on) {
        const u = overlayUrl(o.dataset.detector, S.k);
        if (o.getAttribute("src") !== u) o.src = u;
      }
    }
    $("#slice-label").textContent = `slice ${S.k + 1} / ${S.n}`;
    $("#slice-range").value = String(S.k);
    drawBox();
    prefetch();
  }

  function step(d) { if (S.n > 1) show(S.k + d); }

  let prefetchTimer = null;
  function prefetch() {
    clearTimeout(prefetchTimer);
    if (S.n <= 1) return;
    prefetchTimer = setTimeout(() => {
      const keep = [];
      for (const d of [1, -1, 2, -2, 3, -3]) {
        const k = S.k + d;
        if (k < 0 || k >= S.n) continue;
        const urls = [sliceUrl(k), ...[...S.active].map((det) => overlayUrl(det, k))];
        for (const u of urls) { const im = new Image(); im.src = u; keep.push(im); }
      }
      S.prefetched = keep;   // referenced until the next prefetch, so they are not dropped mid-load
    }, 120);
  }

  // ------------------------------------------------------------------ window / level
  function setWindow(center, width, {redraw = true} = {}) {
    if (!Number.isFinite(center) || !Number.isFinite(width)) return;
    S.center = center;
    S.width = Math.max(1, width);
    $("#wl-center").value = num(S.center);
    $("#wl-width").value = num(S.width);
    for (const b of $$(".wl-preset")) {
      const [c, w] = b.dataset.preset === "default" ? S.defaultWindow : CT_PRESETS[b.dataset.preset];
      b.classList.toggle("pressed", Math.abs(c - S.center) < 0.05 && Math.abs(w - S.width) < 0.05);
    }
    if (redraw) show(S.k);
  }

  const redrawSoon = (() => {
    let pending = false;
    return () => {
      if (pending) return;
      pending = true;
      setTimeout(() => { pending = false; show(S.k); }, 80);
    };
  })();

  function setupWindowing() {
    const onInput = () => setWindow(parseFloat($("#wl-center").value), parseFloat($("#wl-width").value));
    $("#wl-center").addEventListener("change", onInput);
    $("#wl-width").addEventListener("change", onInput);
    $("#wl-presets").addEventListener("click", (e) => {
      const b = e.target.closest(".wl-preset");
      if (!b) return;
      const [c, w] = b.dataset.preset === "default" ? S.defaultWindow : CT_PRESETS[b.dataset.preset];
      setWindow(c, w);
    });
    const stage = $("#stage");
    let drag = null;
    stage.addEventListener("contextmenu", (e) => e.preventDefault());
    stage.addEventListener("mousedown", (e) => {
      const modifier = e.shiftKey || e.ctrlKey || e.altKey || e.metaKey;
      if (e.button === 2 || (e.button === 0 && modifier)) {
        e.preventDefault();
        drag = {x: e.clientX, y: e.clientY, c: S.center, w: S.width};
        stage.classList.add("dragging");
      }
    });
    window.addEventListener("mousemove", (e) => {
      if (!drag) return;
      const perPx = Math.max(drag.w, 20) / 256;
      setWindow(drag.c + (e.clientY - drag.y) * perPx, drag.w + (e.clientX - drag.x) * perPx, {redraw: false});
      redrawSoon();
    });
    window.addEventListener("mouseup", () => {
      if (!drag) return;
      drag = null;
      stage.classList.remove("dragging");
      show(S.k);
    });
  }

  // ------------------------------------------------------------------ the stage fills the window's height
  function fitStage() {
    const stage = $("#stage");
    const top = stage.getBoundingClientRect().top + window.scrollY;
    const h = Math.max(320, Math.floor(window.innerHeight - top - 12));
    stage.style.height = `${h}px`;
    const img = $("#slice-img");
    if (stage.classList.contains("fit")) {      // the whole slice, as large as the pane allows
      const scale = Math.min(stage.clientWidth / S.cols, h / S.rows);
      img.style.width = `${Math.floor(S.cols * scale)}px`;
      img.style.height = `${Math.floor(S.rows * scale)}px`;
    } else {                                    // 1:1: one image pixel per screen pixel
      img.style.width = `${S.cols}px`;
      img.style.height = `${S.rows}px`;
    }
  }

  // ------------------------------------------------------------------ scrolling, zoom
  function setupScrolling() {
    let wheelSum = 0;
    $("#stage").addEventListener("wheel", (e) => {
      if (S.n <= 1 || e.ctrlKey) return;
      e.preventDefault();
      if (e.deltaMode !== 0 || Math.abs(e.deltaY) >= 40) {
        wheelSum = 0;
        step(Math.sign(e.deltaY));
        return;
      }
      wheelSum += e.deltaY;                  // touchpads: small deltas add up to a step
      if (Math.abs(wheelSum) >= 40) { step(Math.sign(wheelSum)); wheelSum = 0; }
    }, {passive: false});
    document.addEventListener("keydown", (e) => {
      const t = e.target;
      // keys typed into a field stay there; on the slice slider and checkboxes they scroll the series
      // (the slider's own arrows would run the other way: ArrowDown is the next slice everywhere)
      const typing = t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
        (t.tagName === "INPUT" && t.type !== "checkbox" && t.id !== "slice-range"));
      if (typing) return;
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      const page = Math.max(1, Math.round(S.n / 10));
      const moves = {ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page, Home: -S.n, End: S.n};
      if (e.key in moves && S.n > 1) { e.preventDefault(); step(moves[e.key]); }
    });
    $("#slice-range").addEventListener("input", (e) => show(parseInt(e.target.value, 10)));
    $("#zoom-toggle").addEventListener("click", () => {
      const stage = $("#stage");
      const actual = stage.classList.contains("fit");
      stage.classList.toggle("fit", !actual);
      stage.classList.toggle("actual", actual);
      $("#zoom-toggle").textContent = actual ? "Fit" : "1:1";
      $("#zoom-toggle").classList.toggle("pressed", actual);
      fitStage();
      if (actual) centreOnBox();
    });
    $("#slice-img").addEventListener("error", async () => {
      const src = $("#slice-img").getAttribute("src");
      if (src) { try { await api("GET", src); } catch (err) { /* its detail is shown */ } }
    });
  }

  // ------------------------------------------------------------------ overlays
  function renderOverlays(item) {
    const names = item.overlays || [];
    const scores = {};
    for (const e of item.record.evidence || []) scores[e.detector] = e;
    // the most alarming detector that has a heatmap is on from the start
    const alarming = names.filter((d) => scores[d] && scores[d].score >= ALARM && scores[d].indicates !== "processing")
      .sort((a, b) => scores[b].score - scores[a].score);
    if (alarming.length) S.active.add(alarming[0]);
    const layer = $("#overlay-layer");
    fill(layer, names.map((d) => {
      const img = el("img", {class: "overlay-img hidden", alt: "", "data-detector": d, draggable: "false"});
      img.style.opacity = String(S.opacity);
      return img;
    }));
    const list = $("#overlay-list");
    $("#overlay-opacity").parentElement.classList.toggle("hidden", !names.length);
    if (!names.length) { fill(list, el("span", {class: "muted"}, "no detector left a heatmap")); return; }
    fill(list, names.map((d) => {
      const box = el("input", {type: "checkbox", class: "overlay-toggle", "data-detector": d, checked: S.active.has(d)});
      box.addEventListener("change", () => {
        if (box.checked) S.active.add(d); else S.active.delete(d);
        show(S.k);
      });
      const score = scores[d] ? ` ${scores[d].score.toFixed(2)}` : "";
      return el("label", {}, box, d, el("span", {class: "muted"}, score));
    }));
    $("#overlay-opacity").value = String(Math.round(S.opacity * 100));
  }

  function setupOpacity() {
    $("#overlay-opacity").addEventListener("input", (e) => {
      S.opacity = parseInt(e.target.value, 10) / 100;
      for (const o of $$(".overlay-img")) o.style.opacity = String(S.opacity);
    });
  }

  // ------------------------------------------------------------------ regions
  function regionOf(r, evidence) {
    const b = r.bbox_voxel || [];
    const c = r.center_voxel || [];
    const three = b.length === 6;
    return {
      detector: evidence.detector, evidenceScore: evidence.score, score: r.score ?? evidence.score,
      slice: three ? c[0] ?? Math.floor((b[0] + b[3]) / 2) : (c.length === 3 ? c[0] : null),
      s0: three ? b[0] : null, s1: three ? b[3] : null,
      r0: three ? b[1] : b[0], c0: three ? b[2] : b[1], r1: three ? b[4] : b[2], c1: three ? b[5] : b[3],
      row: c.length === 3 ? c[1] : c[0], col: c.length === 3 ? c[2] : c[1], note: r.note || "",
    };
  }

  function renderRegions(item) {
    S.regions = [];
    const evidence = [...(item.record.evidence || [])].sort((a, b) => b.score - a.score);
    for (const e of evidence) for (const r of e.regions || []) S.regions.push(regionOf(r, e));
    $("#regions-none").classList.toggle("hidden", S.regions.length > 0);
    $("#regions").classList.toggle("hidden", S.regions.length === 0);
    fill($("#regions-body"), S.regions.map((r, i) => {
      const size = `${r.r1 - r.r0}×${r.c1 - r.c0}${r.s0 !== null ? `×${r.s1 - r.s0}` : ""} px`;
      const tr = el("tr", {class: "region-row", "data-index": i, "data-detector": r.detector,
                           "data-slice": r.slice ?? "", title: r.note || "show this region"},
        el("td", {}, r.detector),
        el("td", {class: "num"}, r.score.toFixed(2)),
        el("td", {class: "num"}, r.slice !== null ? String(r.slice + 1) : "–"),
        el("td", {class: "nowrap"}, `${r.row}, ${r.col}`, el("div", {class: "muted"}, size)));
      tr.addEventListener("click", () => selectRegion(i));
      return tr;
    }));
  }

  function selectRegion(i) {
    S.selected = i;
    for (const tr of $$(".region-row")) tr.classList.toggle("selected", Number(tr.dataset.index) === i);
    const r = S.regions[i];
    if (r.slice !== null && S.n > 1) show(r.slice); else drawBox();
    centreOnBox();
  }

  function drawBox() {
    const box = $("#region-box");
    const r = S.selected === null ? null : S.regions[S.selected];
    const visible = r && (r.s0 === null || S.n <= 1 || (S.k >= r.s0 && S.k < r.s1));
    box.classList.toggle("hidden", !visible);
    if (!visible) return;
    // percentages of the slice: the box follows the displayed size (fit or 1:1) by itself
    box.style.left = `${100 * r.c0 / S.cols}%`;
    box.style.top = `${100 * r.r0 / S.rows}%`;
    box.style.width = `${100 * (r.c1 - r.c0) / S.cols}%`;
    box.style.height = `${100 * (r.r1 - r.r0) / S.rows}%`;
    box.dataset.detector = r.detector;
    $("#region-box-label").textContent = `${r.detector} ${r.score.toFixed(2)}`;
  }

  function centreOnBox() {
    const stage = $("#stage");
    if (S.selected === null || stage.classList.contains("fit")) return;
    const r = S.regions[S.selected];
    const img = $("#slice-img");
    const sx = img.clientWidth / S.cols;
    const sy = img.clientHeight / S.rows;
    const canvas = $("#canvas");
    stage.scrollLeft = canvas.offsetLeft + ((r.c0 + r.c1) / 2) * sx - stage.clientWidth / 2;
    stage.scrollTop = canvas.offsetTop + ((r.r0 + r.r1) / 2) * sy - stage.clientHeight / 2;
  }

  // ------------------------------------------------------------------ words
  function renderEvidence(item) {
    const rec = item.record || {};
    const evidence = [...(rec.evidence || [])].sort((a, b) => b.score - a.score);
    fill($("#evidence"), evidence.length ? evidence.map((e) => {
      const alarm = e.score >= ALARM && e.indicates !== "processing";
      return el("div", {class: "evidence-item" + (alarm ? " alarm" : ""), "data-detector": e.detector},
        el("div", {class: "head"}, el("strong", {}, e.detector), scoreCell(e.score)),
        el("div", {}, el("span", {class: "chip"}, e.indicates || "manipulation"),
           e.confidence && e.confidence !== "normal" ? el("span", {class: "chip"}, `${e.confidence} confidence`) : null,
           alarm ? el("span", {class: "chip"}, "alarm") : null),
        el("p", {}, e.explanation || el("span", {class: "muted"}, "no explanation given")));
    }) : el("p", {class: "muted"}, "no detector assessed this item"));
    const na = Object.entries(rec.not_assessed || {});
    fill($("#not-assessed"), na.length ? [el("h3", {}, "Not assessed"),
      el("ul", {}, na.map(([d, why]) => el("li", {"data-detector": d}, el("strong", {}, d), ": ", why)))] : []);
    const problems = [...(rec.errors || []).map((t) => ["error", t]), ...(rec.warnings || []).map((t) => ["warning", t])];
    fill($("#item-errors"), problems.length ? [el("h3", {}, "Errors and warnings"),
      el("ul", {}, problems.map(([k, t]) => el("li", {}, el("strong", {}, k), ": ", t)))] : []);
  }

  function describe(value) {
    if (value === null || value === undefined || value === "") return el("span", {class: "muted"}, "not present");
    if (typeof value !== "object") return String(value);
    if (Array.isArray(value)) return value.map(fmt).join(", ");
    return el("span", {}, Object.entries(value).map(([k, v], i) => [i ? "; " : "", el("span", {class: "muted"}, `${k}: `), fmt(v)]));
  }

  function renderProvenance(item) {
    // the API gives the verdict's status ("signature:broken watermark:tampered") and one field per proof
    const p = item.provenance || {};
    const status = p.status ?? "unknown";
    const absent = status === "unknown" ? "not checked" : "none found";
    const rows = [["status", status], ...["signature", "watermark", "ledger"].map((k) => [k, p[k] ?? absent])];
    for (const [k, v] of Object.entries(p)) if (!["status", "signature", "watermark", "ledger"].includes(k)) rows.push([k, v]);
    if (item.gateway) rows.push(["gateway", `series ${item.gateway.series}: ${item.gateway.state}`]);
    fill($("#provenance"), rows.map(([k, v]) => [el("dt", {}, k), el("dd", {"data-key": k}, describe(v))]));
  }

  function renderHead(item) {
    const parts = String(item.name).split("/");
    $("#item-name").textContent = parts.pop() || item.name;
    $("#item-name").title = item.name;
    $("#item-path").textContent = parts.join("/");
    document.title = `${item.name} · medforensics review`;
    fill($("#item-label"), labelBadge(item.label));
    $("#item-score").textContent = item.score === null || item.score === undefined ? "" : `score ${item.score.toFixed(2)}`;
    fill($("#item-review"), stateChip(item.review_state), item.reviewer ? el("span", {class: "muted"}, ` by ${item.reviewer}`) : null);
    const meta = [item.modality, item.kind, S.n > 1 ? `${S.n} slices` : null, S.rows > 1 ? `${S.cols}×${S.rows}` : null].filter(Boolean);
    $("#item-meta").textContent = meta.join(" · ");
  }

  function renderDecisions(item) {
    const entries = [...(item.decisions || [])].reverse();
    fill($("#decision-history"), entries.length ? entries.map((d) => el("li", {class: "decision", "data-action": d.action},
      el("div", {}, el("strong", {}, d.action), " ", el("span", {class: "muted"}, `${d.before || "–"} → ${d.after || "–"}`)),
      el("div", {class: "muted"}, `${d.who} · ${when(d.at)} · audit #${d.seq}`),
      d.note ? el("div", {class: "note"}, d.note) : null)) : el("li", {class: "muted"}, "no decision yet"));
    const panel = $("#decision-panel");
    if (!panel) return;
    const actions = item.actions || [];
    fill($("#decision-buttons"), actions.map((a) => el("button", {type: "button", class: a === "confirm" || a === "reject" ? "danger" : "",
      "data-action": a, onclick: () => decide(a)}, ACTION_LABELS[a] || a)));
    $("#decision-none").classList.toggle("hidden", actions.length > 0);
  }

  async function decide(action) {
    const note = $("#decision-note").value.trim();
    if (!note) {
      message("write a note before you decide: it goes into the audit trail");
      $("#decision-note").focus();
      return;
    }
    for (const b of $$("#decision-buttons button")) b.disabled = true;
    try {
      await api("POST", `/api/items/${S.id}/decisions`, {action, note});
      $("#decision-note").value = "";
      message(`${ACTION_DONE[action] || action}: recorded in the audit trail`, "ok");
      const item = await api("GET", `/api/items/${S.id}`);
      S.item = item;
      renderHead(item);
      renderProvenance(item);                 // a gateway series' state changes with release/reject
      renderDecisions(item);
    } catch (e) {
      for (const b of $$("#decision-buttons button")) b.disabled = false;
    }
  }

  // ------------------------------------------------------------------ header
  async function loadHeader() {
    if (S.headerLoaded) return;
    S.headerLoaded = true;
    try {
      const data = await api("GET", `/api/items/${S.id}/header`);
      const rows = data.rows || [];
      fill($("#header-body"), rows.length ? rows.map((r) => el("tr", {class: "header-row"},
        el("td", {class: "mono nowrap"}, r.tag || ""), el("td", {class: "nowrap"}, r.keyword || ""), el("td", {class: "mono"}, r.vr || ""),
        el("td", {class: "wrap-any"}, fmt(r.value)))) : el("tr", {}, el("td", {colspan: 4, class: "muted"}, "no header")));
      filterHeader();
    } catch (e) {
      S.headerLoaded = false;
    }
  }

  function filterHeader() {
    const q = $("#header-filter").value.trim().toLowerCase();
    for (const tr of $$(".header-row")) tr.classList.toggle("hidden", q !== "" && !tr.textContent.toLowerCase().includes(q));
  }

  // ------------------------------------------------------------------ start
  async function start() {
    S.id = viewer().dataset.itemId;
    setupWindowing();
    setupScrolling();
    setupOpacity();
    $("#header-panel").addEventListener("toggle", () => {
      if (!$("#header-panel").open) return;
      loadHeader();
      $("#header-panel").scrollIntoView({block: "start"});
    });
    $("#header-filter").addEventListener("input", filterHeader);
    let item;
    try { item = await api("GET", `/api/items/${S.id}`); } catch (e) { return; }
    S.item = item;
    const shape = item.shape || [];
    if (shape.length < 2) {                     // nothing to show: the file could not be read as an image
      renderHead(item);
      renderEvidence(item);
      renderProvenance(item);
      renderDecisions(item);
      renderOverlays(item);
      renderRegions(item);
      $(".toolbar").classList.add("hidden");
      $(".stage-hint").classList.add("hidden");
      fill($("#stage"), el("p", {class: "no-pixels", id: "no-pixels"}, "No picture: ",
        (item.record.errors || []).join("; ") || "the file holds no image the scan could read."));
      viewer().dataset.ready = "1";
      return;
    }
    S.rows = shape[shape.length - 2];
    S.cols = shape[shape.length - 1];
    S.n = shape.length >= 3 ? shape[0] : 1;
    const [c, w] = item.window || [S.center, S.width];
    S.defaultWindow = [c, w];
    if (item.modality === "CT") {
      for (const name of Object.keys(CT_PRESETS)) {
        $("#wl-presets").appendChild(el("button", {type: "button", class: "wl-preset", "data-preset": name}, name));
      }
    }
    $("#slice-range").max = String(S.n - 1);
    $("#slice-controls").classList.toggle("hidden", S.n <= 1);
    $("#slice-label").classList.toggle("hidden", S.n <= 1);
    renderHead(item);
    renderOverlays(item);
    renderRegions(item);
    renderEvidence(item);
    renderProvenance(item);
    renderDecisions(item);
    // open with the strongest region shown (on its slice), else on the middle slice
    const first = S.regions.length ? S.regions[0] : null;
    const k0 = first && first.slice !== null ? first.slice : Math.floor(S.n / 2);
    setWindow(c, w, {redraw: false});
    if (first) { S.selected = 0; $$(".region-row")[0].classList.add("selected"); }
    fitStage();
    window.addEventListener("resize", fitStage);
    show(k0);
    viewer().dataset.ready = "1";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
