// Work list: one page of items (100) sorted by suspicion, filters from /api/facets kept in the
// page's URL, the jobs panel (polled every 2 s while a job is queued or running, else every
// 15 s), uploads.
"use strict";

(() => {
  const {api, el, fill, $, labelBadge, scoreCell, stateChip, when, debounce} = MF;
  const PAGE = 100;
  const FILTERS = ["label", "detector", "modality", "review", "since", "until", "text", "sort"];
  let offset = 0;
  let total = 0;
  let request = 0;        // the newest list request; older answers are dropped
  let pollTimer = null;
  let activeJobs = new Set();
  let seenJobs = null;      // the job ids of the last look (null before the first)

  function control(name) { return document.getElementById(`f-${name}`); }

  function readUrl() {
    const q = new URLSearchParams(location.search);
    for (const name of FILTERS) if (q.has(name)) control(name).dataset.want = q.get(name);
    offset = Math.max(0, parseInt(q.get("offset") || "0", 10) || 0);
  }

  function query() {
    const q = new URLSearchParams();
    for (const name of FILTERS) {
      const v = control(name).value.trim();
      if (v && !(name === "sort" && v === "suspicion")) q.set(name, v);
    }
    return q;
  }

  function writeUrl() {
    const q = query();
    if (offset) q.set("offset", String(offset));
    const s = q.toString();
    history.replaceState(null, "", s ? `/?${s}` : "/");
  }

  async function loadFacets() {
    const facets = await api("GET", "/api/facets");
    const lists = {label: facets.labels, detector: facets.detectors, modality: facets.modalities, review: facets.review_states};
    for (const [name, values] of Object.entries(lists)) {
      const select = control(name);
      const want = select.dataset.want || select.value;
      fill(select, el("option", {value: ""}, "any"), (values || []).filter((v) => v !== null).map((v) => el("option", {value: v}, v)));
      if (want && ![...select.options].some((o) => o.value === want)) select.appendChild(el("option", {value: want}, want));
      select.value = want || "";
    }
    for (const name of ["since", "until", "text", "sort"]) {
      const c = control(name);
      if (c.dataset.want) { c.value = c.dataset.want; delete c.dataset.want; }
    }
  }

  // a name is a path inside the service's folder: the file's own name first, its folder below
  function baseName(name) { const parts = String(name).split("/"); return parts.pop() || name; }
  function folderOf(name) { const parts = String(name).split("/"); parts.pop(); return parts.join("/"); }

  function row(item) {
    const href = `/items/${item.id}`;
    const tr = el("tr", {class: "item-row", "data-id": item.id, "data-testid": "item-row"},
      el("td", {class: "num"}, scoreCell(item.score)),
      el("td", {}, labelBadge(item.label)),
      el("td", {class: "name-cell", title: item.name}, el("a", {class: "item-link", href}, baseName(item.name)),
         item.n_frames > 1 ? el("span", {class: "muted"}, ` · ${item.n_frames} slices`) : null,
         folderOf(item.name) ? el("div", {class: "muted path"}, folderOf(item.name)) : null),
      el("td", {}, item.modality || "–"),
      el("td", {}, (item.detectors || []).map((d) => el("span", {class: "chip"}, d))),
      el("td", {}, stateChip(item.review_state), item.reviewer ? el("span", {class: "muted"}, ` ${item.reviewer}`) : null),
      el("td", {class: "nowrap muted", title: item.created}, when(item.created).replace(" UTC", "")));
    tr.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;        // the link opens it itself (also in a new tab)
      if (event.ctrlKey || event.metaKey) window.open(href, "_blank"); else location.href = href;
    });
    return tr;
  }

  async function loadItems() {
    const mine = ++request;
    const q = query();
    q.set("offset", String(offset));
    q.set("limit", String(PAGE));
    const data = await api("GET", `/api/items?${q}`);
    if (mine !== request) return;
    total = data.total;
    if (offset > 0 && offset >= total) {           // a filter shrank the list under this page
      offset = Math.max(0, Math.floor((total - 1) / PAGE) * PAGE);
      return loadItems();
    }
    fill($("#items-body"), data.items.map(row));
    $("#items-empty").classList.toggle("hidden", data.items.length > 0);
    const first = total ? offset + 1 : 0;
    const last = offset + data.items.length;
    $("#page-info").textContent = `${first.toLocaleString("en")}–${last.toLocaleString("en")} of ${total.toLocaleString("en")} items`;
    $("#page-info").dataset.total = String(total);
    $("#page-prev").disabled = offset === 0;
    $("#page-next").disabled = last >= total;
    writeUrl();
  }

  function jobLine(job) {
    const pct = job.total > 0 ? Math.min(100, Math.round(100 * job.done / job.total)) : (job.state === "done" ? 100 : 0);
    const bar = el("span");
    bar.style.width = `${pct}%`;
    const counts = job.total > 0 ? `${job.done} / ${job.total}` : "";
    return el("div", {class: `job state-${job.state}`, "data-job": job.id, "data-state": job.state},
      el("div", {class: "line"}, el("strong", {}, `#${job.id} ${job.kind}`), el("span", {class: "muted"}, job.state)),
      el("div", {class: "progress", role: "progressbar", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100}, bar),
      el("div", {class: "line muted"}, el("span", {class: "wrap-any"}, job.message || ""), el("span", {class: "nowrap"}, counts)),
      el("div", {class: "line muted"}, el("span", {}, job.who), el("span", {}, when(job.updated || job.created))));
  }

  async function loadJobs() {
    clearTimeout(pollTimer);
    let data;
    try {
      data = await api("GET", "/api/jobs", undefined, {quiet: true});
    } catch (e) {
      if (e.status !== 401) pollTimer = setTimeout(loadJobs, 5000);
      return;
    }
    const all = data.jobs || [];
    const jobs = all.slice(0, 10);
    fill($("#jobs-list"), jobs.length ? jobs.map(jobLine) : el("p", {class: "muted"}, "no jobs yet"));
    const running = new Set(all.filter((j) => j.state === "queued" || j.state === "running").map((j) => j.id));
    // a job that ended since the last look (or began and ended in between: someone else's
    // upload, the gateway's pickup) brings new items
    const ended = [...activeJobs].some((id) => !running.has(id)) ||
      (seenJobs !== null && all.some((j) => !seenJobs.has(j.id) && !running.has(j.id)));
    activeJobs = running;
    seenJobs = new Set(all.map((j) => j.id));
    if (ended) { await loadFacets().catch(() => {}); await loadItems().catch(() => {}); }
    pollTimer = setTimeout(loadJobs, running.size ? 2000 : 15000);
  }

  /** POST the form to /api/jobs with upload progress (fetch has none); errors as MF.api's. */
  function send(form, progress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/jobs");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", MF.csrfToken());
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) progress(e.loaded, e.total); });
      xhr.addEventListener("load", () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = xhr.responseText; }
        if (xhr.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
        if (xhr.status >= 200 && xhr.status < 300) { resolve(data); return; }
        const text = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail))
          : `${xhr.status} ${xhr.statusText || "error"}`;
        MF.message(text);
        reject(Object.assign(new Error(text), {status: xhr.status}));
      });
      xhr.addEventListener("error", () => {
        MF.message("the upload did not reach the service");
        reject(new Error("network error"));
      });
      xhr.send(form);
    });
  }

  async function upload(event) {
    event.preventDefault();
    const form = new FormData();
    let n = 0;
    for (const f of $("#upload-files").files) { form.append("files", f, f.name); n++; }
    for (const f of $("#upload-folder").files) { form.append("files", f, f.webkitRelativePath || f.name); n++; }
    if (!n) { MF.message("choose files or a folder to upload"); return; }
    const button = $("#upload-submit");
    button.disabled = true;
    $("#upload-status").textContent = `uploading ${n} file${n > 1 ? "s" : ""}…`;
    try {
      const job = await send(form, (sent, total) => {
        $("#upload-status").textContent = `uploading ${n} file${n > 1 ? "s" : ""}: ${Math.round(100 * sent / total)} %`;
      });
      $("#upload-status").textContent = `job #${job.id} started`;
      event.target.reset();
      activeJobs.add(job.id);
      await loadJobs();
    } catch (e) {
      $("#upload-status").textContent = "";
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    readUrl();
    const reload = () => { offset = 0; loadItems().catch(() => {}); };
    for (const name of FILTERS) if (name !== "text") control(name).addEventListener("change", reload);
    control("text").addEventListener("input", debounce(reload, 250));
    $("#filters").addEventListener("submit", (e) => { e.preventDefault(); reload(); });
    $("#filters").addEventListener("reset", () => setTimeout(reload, 0));
    $("#page-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadItems().catch(() => {}); });
    $("#page-next").addEventListener("click", () => { offset += PAGE; loadItems().catch(() => {}); });
    const form = $("#upload-form");
    if (form) form.addEventListener("submit", upload);
    try { await loadFacets(); } catch (e) { /* shown */ }
    loadItems().catch(() => {});
    loadJobs();
  });
})();
