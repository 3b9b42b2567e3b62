"""Evaluation of learned detectors the way the review paper reports them, and past it.

Trained checkpoints on the test split of a forge dataset (seconds to minutes per model; writes
the figures and ``report.html`` into the new folder ``eval/``):

>>> from medforensics.learn.evaluate import evaluate_checkpoints
>>> summary = evaluate_checkpoints(["resnet50.safetensors", "fast.safetensors"], "forge-ds/manifest.csv",
...                                out_dir="eval/")                                # doctest: +SKIP
>>> summary["models"]["fast"]["accuracy"]                                          # doctest: +SKIP
0.93

The numbers of one model come from :func:`evaluate_predictions`, here on four manifest rows and
made-up probabilities (one real item is called fake):

>>> import numpy as np
>>> rows = [{"label": "real", "class": "real", "method": "none", "patient_id": "p1"},
...         {"label": "real", "class": "real", "method": "none", "patient_id": "p2"},
...         {"label": "fake", "class": "fake", "method": "copy-move", "patient_id": "p1"},
...         {"label": "fake", "class": "fake", "method": "inpaint", "patient_id": "p2"}]
>>> probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
>>> m = evaluate_predictions(rows, probs, ["real", "fake"], ["fake"])
>>> m["n"], m["accuracy"], m["roc_auc"], m["confusion"]["matrix"]
(4, 0.75, 1.0, [[1, 1], [0, 2]])
>>> {k: v["accuracy"] for k, v in m["breakdown"]["method"].items()}
{'fake/copy-move': 1.0, 'fake/inpaint': 1.0, 'real': 0.5}

:func:`evaluate_predictions` turns one model's probabilities on manifest rows into every number
(scikit-learn metrics): accuracy, precision / recall / F1 (macro and weighted), ROC-AUC (real vs
fake from the fake probability, and one-vs-rest per class), the confusion matrix, the
distribution of confidence scores per class, calibration (expected calibration error over 15
bins and the reliability curve), and breakdowns per patient, per forge method and per source
dataset. :func:`evaluate_checkpoints` runs checkpoints on a manifest split and writes
``metrics.json``, PNG plots and ``report.html`` laid out like the review's Table 6 and Figures
8-9. :func:`cross_generator` trains a binary model on some forge methods and reports the drop on
the methods it never saw.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..core import MedForensicsError

#: Bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15
#: Bins of the confidence-score histograms (over [0, 1]).
SCORE_BINS = 20
#: Points kept of each ROC curve in the JSON (the plot uses the full curve).
ROC_POINTS = 200
#: Rows handed to ``predict_files`` at a time (a progress step).
CHUNK = 64

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------
# metrics of one model on one set of rows
# --------------------------------------------------------------------------------------------

def true_class(row: dict, classes: Sequence[str], fake_classes: Sequence[str]) -> str:
    """The class a row should be predicted as: its ``class`` if the model has it, else its binary
    ``label`` (``real``/``fake``) mapped onto the model's classes."""
    if row.get("class") in classes:
        return str(row["class"])
    label = row.get("label")
    if label in classes:
        return str(label)
    if label in ("real", "fake") and fake_classes:
        real = [c for c in classes if c not in fake_classes]
        if label == "fake" and len(fake_classes) == 1:
            return str(fake_classes[0])
        if label == "real" and len(real) == 1:
            return real[0]
    raise ValueError(f"row {row.get('id', '?')}: class {row.get('class')!r} / label {label!r} "
                     f"has no counterpart among the model's classes {list(classes)}")


def forge_method(row: dict) -> str:
    """The forge method of a row: its class, with the manifest's ``method`` when it says more
    (``inpaint/learned``, ``FM/gan``); ``authentic``, ``TB`` or ``TM`` for real items."""
    cls, method = str(row.get("class", "")), str(row.get("method", "") or "none")
    return cls if method in ("none", "", cls) else f"{cls}/{method}"


def is_fake(row: dict, fake_classes: Sequence[str] = ()) -> bool:
    label = row.get("label")
    if label in ("real", "fake"):
        return label == "fake"
    return row.get("class") in fake_classes


def evaluate_predictions(rows: list[dict], probs: np.ndarray, classes: list[str],
                         fake_classes: list[str]) -> dict[str, Any]:
    """Every metric of one model's class probabilities ``probs`` (n, n_classes) on manifest ``rows``.

    Returns a JSON-ready dict: ``n``, ``accuracy``, ``precision_macro`` ... ``f1_weighted``,
    ``per_class`` (precision, recall, F1, support), ``confusion`` (``classes``, ``matrix`` rows =
    true class), ``roc_auc`` (real vs fake from the summed probability of ``fake_classes``),
    ``roc_curve``, ``roc_auc_ovr_macro`` and ``roc_auc_per_class`` (multi-class only),
    ``scores`` (histograms and summary statistics of the fake score and of the confidence of the
    predicted class, per true class), ``calibration`` (top-label ECE over 15 bins and the
    reliability curve; the same for the fake score), ``breakdown`` (per ``patient``, ``method``,
    ``source``: n, accuracy, mean fake score, AUC where both labels occur) and ``notes`` (why an
    AUC is None). Degenerate inputs (one class only) give None with a note, never an error.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    fake_classes = [c for c in fake_classes if c in classes]
    if probs.ndim != 2 or probs.shape != (len(rows), len(classes)):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(rows)} rows x {len(classes)} classes")
    notes: list[str] = []
    n_classes = len(classes)
    res: dict[str, Any] = {"n": len(rows), "classes": classes, "fake_classes": fake_classes, "notes": notes}
    if not rows:
        notes.append("no rows to evaluate")
        return res
    y = np.array([classes.index(true_class(r, classes, fake_classes)) for r in rows])
    pred = probs.argmax(axis=1)
    fake_idx = [classes.index(c) for c in fake_classes]
    fake_score = probs[:, fake_idx].sum(axis=1) if fake_idx else np.zeros(len(rows))
    fake_true = np.array([is_fake(r, fake_classes) for r in rows])
    labels = list(range(n_classes))

    res["accuracy"] = float(accuracy_score(y, pred))
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        res[f"precision_{avg}"], res[f"recall_{avg}"], res[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    res["per_class"] = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                        for i, c in enumerate(classes)}
    res["confusion"] = {"classes": classes, "matrix": confusion_matrix(y, pred, labels=labels).tolist()}
    res["n_real"], res["n_fake"] = int((~fake_true).sum()), int(fake_true.sum())
    res["binary_accuracy"] = float(((fake_score >= 0.5) == fake_true).mean())

    auc, curve, note = _binary_auc(fake_true, fake_score, "real vs fake")
    res["roc_auc"], res["roc_curve"] = auc, curve
    if note:
        notes.append(note)
    if n_classes > 2:
        per: dict[str, float | None] = {}
        for i, c in enumerate(classes):
            a, _, note = _binary_auc(y == i, probs[:, i], f"class {c} vs rest", curve=False)
            per[c] = a
            if note:
                notes.append(note)
        got = [a for a in per.values() if a is not None]
        res["roc_auc_per_class"] = per
        res["roc_auc_ovr_macro"] = float(np.mean(got)) if got else None
        if len(got) < n_classes and got:
            notes.append(f"one-vs-rest macro AUC averages the {len(got)} of {n_classes} classes present in this split")

    conf = probs.max(axis=1)
    res["scores"] = {classes[i]: {"fake_score": _distribution(fake_score[y == i]),
                                  "confidence": _distribution(conf[y == i])}
                     for i in range(n_classes) if (y == i).any()}
    res["calibration"] = {"top_label": reliability(conf, pred == y),
                          "fake_score": reliability(fake_score, fake_true)}
    res["ece"] = res["calibration"]["top_label"]["ece"]
    res["breakdown"] = {
        "patient": _breakdown(rows, [str(r.get("patient_id", "")) for r in rows], y == pred, fake_score, fake_true),
        "method": _breakdown(rows, [forge_method(r) for r in rows], y == pred, fake_score, fake_true),
        "source": _breakdown(rows, [str(r.get("source_dataset", "")) for r in rows], y == pred, fake_score, fake_true),
    }
    return res


def _binary_auc(truth: np.ndarray, score: np.ndarray, what: str, curve: bool = True
                ) -> tuple[float | None, dict | None, str | None]:
    from sklearn.metrics import roc_auc_score, roc_curve

    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        only = "positive" if truth.all() else "negative"
        return None, None, f"ROC-AUC ({what}) undefined: only {only} items in this set"
    auc = float(roc_auc_score(truth, score))
    if not curve:
        return auc, None, None
    fpr, tpr, _ = roc_curve(truth, score)
    if len(fpr) > ROC_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return auc, {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}, None


def _distribution(x: np.ndarray) -> dict[str, Any]:
    x = np.asarray(x, np.float64)
    counts, edges = np.histogram(np.clip(x, 0, 1), bins=SCORE_BINS, range=(0.0, 1.0))
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "median": float(np.median(x)), "max": float(x.max()),
            "histogram": {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}}


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error and the reliability curve of ``confidence`` against the 0/1
    outcome ``correct``: equal-width bins over [0, 1] (the last one closed), ECE = sum over bins of
    (n_bin / n) * |accuracy_bin - mean confidence_bin|."""
    confidence = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    correct = np.asarray(correct, np.float64)
    idx = np.minimum((confidence * bins).astype(int), bins - 1)
    out, ece, n = [], 0.0, confidence.size
    for b in range(bins):
        sel = idx == b
        k = int(sel.sum())
        row = {"lower": b / bins, "upper": (b + 1) / bins, "n": k, "confidence": None, "accuracy": None}
        if k:
            c, a = float(confidence[sel].mean()), float(correct[sel].mean())
            row.update(confidence=c, accuracy=a)
            ece += k / n * abs(a - c)
        out.append(row)
    return {"ece": float(ece) if n else None, "bins": out}


def _breakdown(rows: list[dict], keys: list[str], correct: np.ndarray, fake_score: np.ndarray,
               fake_true: np.ndarray) -> dict[str, dict[str, Any]]:
    from sklearn.metrics import roc_auc_score

    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k or "(none)", []).append(i)
    res = {}
    for k in sorted(groups):
        ix = np.array(groups[k])
        t = fake_true[ix]
        both = t.any() and not t.all()
        res[k] = {"n": int(ix.size), "n_fake": int(t.sum()), "accuracy": float(correct[ix].mean()),
                  "mean_fake_score": float(fake_score[ix].mean()),
                  "auc": float(roc_auc_score(t, fake_score[ix])) if both else None}
    return res


# --------------------------------------------------------------------------------------------
# running checkpoints on a manifest
# --------------------------------------------------------------------------------------------

def model_kinds(card: dict) -> list[str]:
    """The item kinds (``ct-slice``, ``radiograph``) a model is meant for, from its card: the kinds
    it was trained on; for a card that names none, CT slices for ``ct4`` and every kind otherwise."""
    data = card.get("data") if isinstance(card.get("data"), dict) else {}
    tr = card.get("training") if isinstance(card.get("training"), dict) else {}
    cfg = tr.get("config") if isinstance(tr.get("config"), dict) else {}
    kinds = data.get("kinds") or cfg.get("kinds")
    if kinds:
        return [kinds] if isinstance(kinds, str) else list(kinds)
    return ["ct-slice"] if str(card.get("task", "")).startswith("ct") else ["ct-slice", "radiograph"]


def select_rows(rows: Iterable[dict], clf: Any, split: str | None) -> list[dict]:
    """The rows of ``split`` (all if None) that ``clf`` is meant for: its kinds, and for a
    multi-class model only rows of its classes (a ct4 model sees CT slices of TB/TM/FB/FM), and
    no image smaller than its training ``min_size``. Augmented copies (rows with an
    ``augmentation``) are left out: they are not test items."""
    from .data import item_shape
    from .predict import card_min_size

    kinds = set(model_kinds(clf.card))
    min_size = card_min_size(clf.card)
    binary = len(clf.classes) == 2 and bool(clf.fake_classes)
    sel = []
    for r in rows:
        if split is not None and r.get("split") != split:
            continue
        if r.get("kind") not in kinds or r.get("augmentation"):
            continue  # augmented copies of fakes (the review's eight variants) are training material
        if not binary and r.get("class") not in clf.classes:
            continue
        if min_size and min(item_shape(r.get("_path") or r["file"])) < min_size:
            continue
        sel.append(r)
    return sel


def predict_rows(clf: Any, rows: list[dict], root: Path, *, name: str = "",
                 progress: Progress | None = None) -> np.ndarray:
    """Class probabilities of ``clf`` on manifest ``rows`` (files relative to ``root``)."""
    parts = []
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i:i + CHUNK]
        p = clf.predict_files([r.get("_path") or root / r["file"] for r in chunk], [r["kind"] for r in chunk])
        parts.append(np.asarray(p, np.float64))
        if progress:
            progress(name, min(i + CHUNK, len(rows)), len(rows))
    return np.concatenate(parts) if parts else np.zeros((0, len(clf.classes)))


#: Settings of the review's full protocol (the shipped ``review`` config) that a card must match.
FULL_PROTOCOL = {"epochs": 50, "image_size": 224, "crop": 224, "batch": 64, "optimizer": "adam", "lr": 0.001,
                 "weight_decay": 0.0001, "dropout": 0.5, "loss": "weighted-ce", "augment_fakes": True}


def _profile(card: dict) -> str:
    """``full protocol`` when the card's training config is the review's and ran all its epochs,
    else ``fast CPU profile`` (or ``shortened run``) with what was done."""
    tr = card.get("training") if isinstance(card.get("training"), dict) else {}
    cfg = tr.get("config") if isinstance(tr.get("config"), dict) else {}
    if not cfg:
        return "unknown (card has no training config)"
    same = all(cfg.get(k) == v for k, v in FULL_PROTOCOL.items())
    if same and tr.get("stopped_by", "epochs") == "epochs":
        return f"full protocol ({tr.get('device', '?')})"
    what = "fast CPU profile" if cfg.get("model") == "fastnet" or cfg.get("image_size", 224) < 224 else "shortened run"
    done = tr.get("epochs_done")
    epochs = cfg.get("epochs")
    detail = f"{done:.2f} of {epochs} epochs" if isinstance(done, (int, float)) else f"{epochs} epochs"
    if tr.get("stopped_by") not in (None, "epochs"):
        detail += f", stopped by {tr['stopped_by']}"
    return f"{what} ({detail}, {cfg.get('crop', '?')} px)"


def _history(card: dict) -> list[dict]:
    """Per-epoch records from a card (``metrics.validation`` of :func:`~.train.train`), as
    ``epoch``, ``val_accuracy``, ``val_loss``, ``train_loss``."""
    m = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    hist = m.get("validation") or m.get("history") or []
    out = []
    for i, h in enumerate(hist if isinstance(hist, list) else []):
        if not isinstance(h, dict):
            continue
        out.append({"epoch": h.get("epoch", i + 1), "epochs_done": h.get("epochs_done"),
                    "val_accuracy": h.get("val_accuracy", h.get("accuracy")),
                    "val_loss": h.get("val_loss", h.get("loss")), "train_loss": h.get("train_loss")})
    return out


def _unique_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        n, k = p.stem, 2
        while n in names:
            n, k = f"{p.stem}-{k}", k + 1
        names.append(n)
    return names


def evaluate_checkpoints(checkpoints: list[Path], manifest: Path, *, split: str = "test", out_dir: Path,
                         progress: Progress | None = None, device: str = "cpu") -> dict[str, Any]:
    """Run each checkpoint on the ``split`` rows of ``manifest`` it is meant for and write, into
    the new folder ``out_dir``: ``<model>/metrics.json``, ``<model>/confusion.png``,
    ``<model>/scores.png``, ``<model>/reliability.png``, ``roc.png`` (all models), ``curves.png``
    (per-epoch validation accuracy and loss from the cards), ``summary.json`` and ``report.html``.

    ``progress(model, done, total)`` is called after each batch; ``device`` runs the models there
    (``cuda`` on a GPU). Returns ``{"split", "manifest",
    "models": {name: metrics (with "checkpoint", "architecture", "task", "profile")}, "files"}``.
    """
    from .data import read_manifest
    from .predict import load_classifier

    manifest, out_dir = Path(manifest), Path(out_dir)
    checkpoints = [Path(c) for c in checkpoints]
    if not checkpoints:
        raise ValueError("no checkpoint to evaluate")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; choose a new folder")
    _check_manifest(manifest)
    rows = read_manifest(manifest)
    classifiers = [load_classifier(c, device=device) for c in checkpoints]  # all checked before any work
    out_dir.mkdir(parents=True)
    root = manifest.parent
    names = _unique_names(checkpoints)
    models: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    files: list[str] = []
    for name, path, clf in zip(names, checkpoints, classifiers):
        sel = select_rows(rows, clf, split)
        if progress:
            progress(name, 0, len(sel))
        probs = predict_rows(clf, sel, root, name=name, progress=progress)
        m = evaluate_predictions(sel, probs, list(clf.classes), list(clf.fake_classes))
        if not sel:
            m["notes"].append(f"no {'/'.join(model_kinds(clf.card))} rows of split {split!r} for this model")
        card = clf.card
        m.update(checkpoint=str(path), architecture=card.get("architecture"), task=card.get("task"),
                 kinds=model_kinds(card), profile=_profile(card), split=split, history=_history(card),
                 training=card.get("training"))
        models[name] = m
        d = out_dir / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(m, indent=1, default=str), encoding="utf-8")
        files.append(str(d / "metrics.json"))
        if sel:
            for fname, fig in (("confusion.png", plot_confusion(m, name)), ("scores.png", plot_scores(m, name)),
                               ("reliability.png", plot_reliability(m, name))):
                (d / fname).write_bytes(fig)
                files.append(str(d / fname))
        if m.get("roc_curve"):
            curves[name] = m["roc_curve"]
    figs: dict[str, bytes] = {}
    if curves:
        figs["roc.png"] = plot_roc(models)
    if any(m["history"] for m in models.values()):
        figs["curves.png"] = plot_history(models)
    for fname, png in figs.items():
        (out_dir / fname).write_bytes(png)
        files.append(str(out_dir / fname))
    summary = {"split": split, "manifest": str(manifest), "models": models, "files": files,
               "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    write_table6_report(summary, out_dir / "report.html")
    files += [str(out_dir / "summary.json"), str(out_dir / "report.html")]
    return summary


# --------------------------------------------------------------------------------------------
# tables and plots
# --------------------------------------------------------------------------------------------

TABLE6_COLUMNS = ("model", "task", "n", "accuracy %", "precision %", "recall %", "F1 %", "ROC-AUC", "ECE", "profile")


def table6_rows(summary: dict[str, Any], average: str = "weighted") -> list[list[str]]:
    """The review's Table 6, one row per model: accuracy, precision, recall, F1 in % (``average``
    of the per-class scores: ``weighted`` as the review reports, or ``macro``), ROC-AUC, ECE."""
    out = []
    for name, m in summary["models"].items():
        def pct(key: str) -> str:
            v = m.get(key)
            return "" if v is None else f"{100 * v:.2f}"

        def num(key: str) -> str:
            v = m.get(key)
            return "n/a" if v is None else f"{v:.3f}"

        out.append([name, str(m.get("task") or ""), str(m.get("n", 0)), pct("accuracy"), pct(f"precision_{average}"),
                    pct(f"recall_{average}"), pct(f"f1_{average}"), num("roc_auc"), num("ece"), m.get("profile", "")])
    return out


def table6_markdown(summary: dict[str, Any], average: str = "weighted") -> str:
    """:func:`table6_rows` as a markdown table."""
    lines = ["| " + " | ".join(TABLE6_COLUMNS) + " |", "|" + "---|" * len(TABLE6_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table6_rows(summary, average)]
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(m: dict[str, Any], name: str) -> bytes:
    """Confusion matrix (counts, and row-normalised colour) as PNG bytes."""
    plt = _plt()
    cm = np.array(m["confusion"]["matrix"], dtype=float)
    classes = m["confusion"]["classes"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: accuracy {100 * m['accuracy']:.1f}%", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    return _png(fig)


def plot_roc(models: dict[str, dict[str, Any]]) -> bytes:
    """ROC curves (real vs fake) of all models on one plot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="#aaa", lw=1, ls="--")
    for name, m in models.items():
        c = m.get("roc_curve")
        if c:
            ax.plot(c["fpr"], c["tpr"], lw=1.6, label=f"{name} (AUC {m['roc_auc']:.3f})")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake caught)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("ROC, real vs fake", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def plot_scores(m: dict[str, Any], name: str) -> bytes:
    """Histograms of the fake score per true class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for cls, d in m["scores"].items():
        h = d["fake_score"]["histogram"]
        edges = np.array(h["edges"])
        counts = np.array(h["counts"], float)
        ax.stairs(counts / max(counts.sum(), 1), edges, label=f"{cls} (n={d['fake_score']['n']})", lw=1.6)
    ax.set_xlabel("fake score (summed probability of the fake classes)")
    ax.set_ylabel("share of the class")
    ax.set_xlim(0, 1)
    ax.set_title(f"{name}: score distribution per true class", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_reliability(m: dict[str, Any], name: str) -> bytes:
    """Reliability diagram of the top-label confidence, with the ECE."""
    plt = _plt()
    cal = m["calibration"]["top_label"]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="#aaa", lw=1, ls="--", label="perfect calibration")
    b = [x for x in cal["bins"] if x["n"]]
    width = 1.0 / len(cal["bins"])
    ax.bar([x["lower"] for x in b], [x["accuracy"] for x in b], width=width, align="edge", alpha=0.7,
           edgecolor="#1f4e79", label="accuracy in bin")
    ax.plot([x["confidence"] for x in b], [x["accuracy"] for x in b], "o", color="#c62828", ms=4,
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name}: ECE {cal['ece']:.3f} ({len(cal['bins'])} bins)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def _series(history: list[dict], *keys: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        for k in keys:
            v = h.get(k)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                xs.append(float(h.get("epoch", i + 1)))
                ys.append(float(v))
                break
    return xs, ys


def plot_history(models: dict[str, dict[str, Any]]) -> bytes:
    """Figure 9 of the review: validation accuracy and loss per epoch, from the model cards."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in models.items():
        h = m.get("history") or []
        line = None
        for keys, ax, ls in ((("val_accuracy",), a1, "-"), (("train_accuracy",), a1, ":"),
                             (("val_loss",), a2, "-"), (("train_loss",), a2, ":")):
            xs, ys = _series(h, *keys)
            if xs:
                kw = {"color": line.get_color()} if line is not None else {}
                (ln,) = ax.plot(xs, ys, ls=ls, marker="o", ms=3, lw=1.4,
                                label=f"{name} {'validation' if ls == '-' else 'training'}", **kw)
                line = line or ln
    a1.set_title("accuracy per epoch", fontsize=10)
    a2.set_title("loss per epoch", fontsize=10)
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return _png(fig)


def _b64(path: Path) -> str | None:
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def write_table6_report(summary: dict[str, Any], out: Path) -> Path:
    """The self-contained HTML page (a new file): Table 6, Figures 8-9, plots and breakdowns."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from .. import __version__

    out = Path(out)
    folder = out.parent
    env = Environment(loader=PackageLoader("medforensics.learn", "templates"),
                      autoescape=select_autoescape(["html"], default=True), trim_blocks=True, lstrip_blocks=True)
    models = []
    for name, m in summary["models"].items():
        d = folder / name
        models.append({"name": name, "m": m, "confusion": _b64(d / "confusion.png"), "scores": _b64(d / "scores.png"),
                       "reliability": _b64(d / "reliability.png")})
    html = env.get_template("table6.html").render(
        title="medforensics evaluation: Table 6", summary=summary, columns=TABLE6_COLUMNS,
        rows=table6_rows(summary), rows_macro=table6_rows(summary, "macro"), models=models,
        roc=_b64(folder / "roc.png"), curves=_b64(folder / "curves.png"), version=__version__,
        created=dt.datetime.now().isoformat(timespec="seconds"))
    with open(out, "x", encoding="utf-8") as f:
        f.write(html)
    return out


# --------------------------------------------------------------------------------------------
# cross-generator evaluation
# --------------------------------------------------------------------------------------------

def _of_methods(row: dict, methods: Iterable[str]) -> bool:
    ms = set(methods)
    return row.get("class") in ms or row.get("method") in ms or forge_method(row) in ms


def cross_generator(manifest: Path, train_methods: Sequence[str], test_methods: Sequence[str], config: Any,
                    out_dir: Path, *, split: str = "test", progress: Progress | None = None) -> dict[str, Any]:
    """Train a binary real/fake model on the real items and the fakes of ``train_methods``, then
    test it on real + fakes of ``test_methods`` (held out) and on real + fakes of
    ``train_methods`` (held in). Methods match a row's ``class`` (``copymove``, ``synthetic``...),
    its ``method`` or ``class/method``.

    ``config`` is a :class:`~medforensics.learn.train.TrainConfig` or a TOML path; its ``task`` and
    ``methods`` are set here. Writes into the new folder ``out_dir``: ``model.safetensors``,
    ``cross_generator.json``. Returns ``{"held_in": metrics, "held_out": metrics, "drop":
    {"roc_auc", "accuracy", "binary_accuracy"}, "per_method": {...}, ...}`` where a drop is held-in
    minus held-out.
    """
    import dataclasses

    from .data import read_manifest
    from .predict import load_classifier
    from .train import TrainConfig, train

    manifest, out_dir = Path(manifest), Path(out_dir)
    train_methods, test_methods = list(train_methods), list(test_methods)
    overlap = set(train_methods) & set(test_methods)
    if overlap:
        raise ValueError(f"methods both trained on and held out: {', '.join(sorted(overlap))}")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; choose a new folder")
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_toml(config)
    kinds = list(getattr(config, "kinds", None) or ["radiograph"])
    config = dataclasses.replace(config, task="binary", kinds=kinds, methods=[])
    _check_manifest(manifest)
    rows = read_manifest(manifest)
    out_dir.mkdir(parents=True)
    train_manifest = write_method_manifest(manifest, out_dir / "train_manifest.csv",
                                           lambda r: r.get("label") == "real" or _of_methods(r, train_methods))
    ckpt = Path(train(config, train_manifest, out_dir / "model.safetensors"))
    clf = load_classifier(ckpt)
    test = [r for r in select_rows(rows, clf, split)
            if r.get("label") == "real" or _of_methods(r, train_methods) or _of_methods(r, test_methods)]
    probs = predict_rows(clf, test, manifest.parent, name="cross-generator", progress=progress)
    classes, fakes = list(clf.classes), list(clf.fake_classes)
    real = [i for i, r in enumerate(test) if r.get("label") == "real"]
    res: dict[str, Any] = {"train_methods": train_methods, "test_methods": test_methods, "split": split,
                           "checkpoint": str(ckpt), "config": dataclasses.asdict(config), "n_real": len(real)}
    for key, methods in (("held_in", train_methods), ("held_out", test_methods)):
        ix = real + [i for i, r in enumerate(test) if r.get("label") == "fake" and _of_methods(r, methods)]
        m = evaluate_predictions([test[i] for i in ix], probs[ix], classes, fakes)
        res[key] = {k: m.get(k) for k in ("n", "n_real", "n_fake", "accuracy", "binary_accuracy", "roc_auc",
                                          "f1_macro", "ece", "notes")}
        res[key]["per_method"] = m.get("breakdown", {}).get("method", {})
    per: dict[str, Any] = {}
    for mth in train_methods + test_methods:
        ix = real + [i for i, r in enumerate(test) if r.get("label") == "fake" and _of_methods(r, [mth])]
        m = evaluate_predictions([test[i] for i in ix], probs[ix], classes, fakes)
        per[mth] = {"held": "in" if mth in train_methods else "out", "n_fake": m.get("n_fake"),
                    "roc_auc": m.get("roc_auc"), "binary_accuracy": m.get("binary_accuracy")}
    res["per_method"] = per
    res["drop"] = {k: (None if res["held_in"].get(k) is None or res["held_out"].get(k) is None
                       else res["held_in"][k] - res["held_out"][k])
                   for k in ("roc_auc", "accuracy", "binary_accuracy")}
    (out_dir / "cross_generator.json").write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
    return res


def write_method_manifest(manifest: Path, out: Path, keep: Callable[[dict], bool]) -> Path:
    """A copy of ``manifest`` (a new file) with only the rows ``keep`` accepts, file paths made
    absolute so that it may live anywhere: the training set of a cross-generator run, whose
    validation split must not see the held-out methods either."""
    import csv

    root = Path(manifest).resolve().parent
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if keep(r)]
    with open(out, "x", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            for col in ("file", "mask"):
                if r.get(col):
                    r[col] = str(root / r[col])
            w.writerow(r)
    return out


def _check_manifest(path: Path) -> None:
    if not Path(path).is_file():
        raise MedForensicsError(path, "manifest not found")
