// Quiz: real or fake, and where? A round of quiz images; a click marks where (in the image's own
// pixels), Real/Fake answers, then the truth: the changed box and what the detectors say.
"use strict";

(() => {
  const {api, el, fill, $, $$, scoreCell, message} = MF;
  const ALARM = 0.5;
  const KIND_WORDS = {
    authentic: "authentic: the image as acquired",
    copymove: "copy-move: a region of the same image copied elsewhere",
    splice: "splice: a region of another patient's image pasted in",
    inpaint: "in-painting: a region's content removed and filled in from around it",
    rescale: "rescaled region: the contrast of a region raised or cut",
  };
  const S = {round: [], i: 0, mark: null, answered: false, opacity: 0.6};

  function img() { return $("#quiz-img"); }

  function place(node, left, top, width, height) {
    node.style.left = `${left}%`;
    node.style.top = `${top}%`;
    if (width !== undefined) { node.style.width = `${width}%`; node.style.height = `${height}%`; }
  }

  function show(i) {
    S.i = i;
    S.mark = null;
    S.answered = false;
    message("");
    if (i >= S.round.length) { finish(); return; }
    for (const id of ["#quiz-marker", "#quiz-truth", "#quiz-overlay", "#quiz-reveal", "#quiz-item-link", "#quiz-opacity-label"]) {
      $(id).classList.add("hidden");
    }
    $("#quiz-ask").classList.remove("hidden");
    $("#quiz-mark-info").textContent = "no mark yet";
    for (const b of $$(".answer-buttons button")) b.disabled = false;
    const q = S.round[i];
    img().src = `/api/quiz/images/${q}.png`;
    img().dataset.quizImage = String(q);
    $("#quiz-progress").textContent = `image ${i + 1} / ${S.round.length}`;
  }

  function finish(text) {
    $("#quiz-ask").classList.add("hidden");
    $("#quiz-reveal").classList.add("hidden");
    $("#quiz-done").classList.remove("hidden");
    if (text) $("#quiz-done-text").textContent = text;
    $("#quiz-progress").textContent = "";
  }

  function onClick(e) {
    if (S.answered || !img().naturalWidth) return;
    const r = img().getBoundingClientRect();
    const x = (e.clientX - r.left) * img().naturalWidth / r.width;
    const y = (e.clientY - r.top) * img().naturalHeight / r.height;
    if (x < 0 || y < 0 || x >= img().naturalWidth || y >= img().naturalHeight) return;
    S.mark = {x: Math.round(x * 10) / 10, y: Math.round(y * 10) / 10};
    const marker = $("#quiz-marker");
    place(marker, 100 * S.mark.x / img().naturalWidth, 100 * S.mark.y / img().naturalHeight);
    marker.classList.remove("hidden");
    marker.dataset.x = String(S.mark.x);
    marker.dataset.y = String(S.mark.y);
    $("#quiz-mark-info").textContent = `marked at column ${Math.round(S.mark.x)}, row ${Math.round(S.mark.y)}`;
  }

  async function answer(word) {
    if (S.answered || S.i >= S.round.length) return;
    const q = S.round[S.i];
    for (const b of $$(".answer-buttons button")) b.disabled = true;
    let res;
    try {
      res = await api("POST", "/api/quiz/answers", {quiz_image: q, answer: word, x: S.mark ? S.mark.x : null,
                                                    y: S.mark ? S.mark.y : null}, {quiet: true});
    } catch (e) {
      if (e.status === 409) {           // the round lists unanswered images first: the rest were answered before
        finish("You have answered every image of the quiz.");
        return;
      }
      message(e.message);
      for (const b of $$(".answer-buttons button")) b.disabled = false;
      return;
    }
    S.answered = true;
    reveal(word, res);
  }

  function reveal(word, res) {
    $("#quiz-ask").classList.add("hidden");
    $("#quiz-reveal").classList.remove("hidden");
    const fake = res.kind !== "authentic";
    const verdict = $("#quiz-verdict");
    verdict.className = `verdict ${res.correct ? "correct" : "incorrect"}`;
    verdict.dataset.correct = String(res.correct);
    verdict.textContent = `${res.correct ? "Correct" : "Incorrect"}: you said ${word}, the image is ${fake ? "fake" : "real"}.`;
    $("#quiz-kind").textContent = KIND_WORDS[res.kind] || res.kind;
    $("#quiz-kind").dataset.kind = res.kind;
    $("#quiz-hit").textContent = res.hit === true ? "Your mark is inside the changed region."
      : res.hit === false ? "Your mark is outside the changed region."
      : fake ? "You did not mark a place." : "";
    const box = $("#quiz-truth");
    if (res.truth_box && img().naturalWidth) {
      const [r0, c0, r1, c1] = res.truth_box;
      const W = img().naturalWidth;
      const H = img().naturalHeight;
      place(box, 100 * c0 / W, 100 * r0 / H, 100 * (c1 - c0) / W, 100 * (r1 - r0) / H);
      box.classList.remove("hidden");
    }
    fill($("#quiz-overlays"));
    fill($("#quiz-evidence"), el("p", {class: "muted"}, "loading…"));
    loadEvidence(res.item_id);
  }

  async function loadEvidence(itemId) {
    let item;
    try { item = await api("GET", `/api/items/${itemId}`, undefined, {quiet: true}); } catch (e) {
      fill($("#quiz-evidence"), el("p", {class: "muted"}, `the detectors' findings are not available (${e.message})`));
      return;
    }
    const link = $("#quiz-item-link");
    link.href = `/items/${itemId}`;
    link.classList.remove("hidden");
    const evidence = [...(item.record.evidence || [])].sort((a, b) => b.score - a.score);
    const label = item.label ? `The scan says ${item.label} (score ${item.score.toFixed(2)}).` : "The scan could not assess it.";
    fill($("#quiz-evidence"), el("p", {id: "quiz-scan-label"}, label), evidence.map((e) =>
      el("div", {class: "evidence-item" + (e.score >= ALARM && e.indicates !== "processing" ? " alarm" : ""), "data-detector": e.detector},
        el("div", {class: "head"}, el("strong", {}, e.detector), scoreCell(e.score)),
        el("p", {}, e.explanation || ""))));
    const names = item.overlays || [];
    const overlay = $("#quiz-overlay");
    const byName = Object.fromEntries(evidence.map((e) => [e.detector, e]));
    const ranked = [...names].sort((a, b) => ((byName[b] || {}).score || 0) - ((byName[a] || {}).score || 0));
    const select = (d) => {
      for (const c of $$(".quiz-overlay-toggle")) c.checked = c.dataset.detector === d;
      overlay.classList.toggle("hidden", !d);
      $("#quiz-opacity-label").classList.toggle("hidden", !d);
      if (d) { overlay.src = `/api/items/${itemId}/overlays/${encodeURIComponent(d)}/0.png`; overlay.dataset.detector = d; }
    };
    fill($("#quiz-overlays"), ranked.length ? [el("h3", {}, "Heatmap"), ranked.map((d) => {
      const c = el("input", {type: "checkbox", class: "quiz-overlay-toggle overlay-toggle", "data-detector": d});
      c.addEventListener("change", () => select(c.checked ? d : null));
      return el("label", {}, c, d, el("span", {class: "muted"}, byName[d] ? ` ${byName[d].score.toFixed(2)}` : ""));
    })] : []);
    overlay.style.opacity = String(S.opacity);
    select(ranked.length ? ranked[0] : null);
  }

  async function start() {
    $("#quiz-canvas").addEventListener("click", onClick);
    $("#answer-real").addEventListener("click", () => answer("real"));
    $("#answer-fake").addEventListener("click", () => answer("fake"));
    $("#quiz-next").addEventListener("click", () => show(S.i + 1));
    $("#quiz-opacity").addEventListener("input", (e) => {
      S.opacity = parseInt(e.target.value, 10) / 100;
      $("#quiz-overlay").style.opacity = String(S.opacity);
    });
    document.addEventListener("keydown", (e) => {
      if (e.target && ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName)) return;
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      if (!S.answered && (e.key === "r" || e.key === "f")) answer(e.key === "r" ? "real" : "fake");
      else if (S.answered && (e.key === "n" || e.key === "Enter")) show(S.i + 1);
    });
    let data;
    let scores;
    try {
      [data, scores] = await Promise.all([api("POST", "/api/quiz/start"), api("GET", "/api/quiz/scores")]);
    } catch (e) { return; }
    const round = data.round || [];
    if (!round.length) {
      finish("There are no quiz images yet: they are made when the service starts; try again in a minute.");
      return;
    }
    // the round lists the images not yet answered first; each image is answered once
    const answered = (scores.mine || []).reduce((sum, s) => sum + s.n, 0);
    S.round = round.slice(0, Math.max(0, round.length - answered));
    if (!S.round.length) {
      finish(`You have answered all ${round.length} images of the quiz.`);
      $("#quiz").dataset.ready = "1";
      return;
    }
    show(0);
    $("#quiz").dataset.ready = "1";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
