"""Evaluation: metrics against hand-computed values, degenerate inputs, the report files, the CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medforensics.learn.evaluate import evaluate_predictions, forge_method, reliability, table6_markdown

CT4 = ["TB", "TM", "FB", "FM"]


def _row(i, cls, label, patient, method="none", source="lidc", kind="ct-slice"):
    return {"id": f"r{i}", "class": cls, "label": label, "patient_id": patient, "method": method,
            "source_dataset": source, "kind": kind, "split": "test"}


# Six CT slices; predictions chosen so that every number below can be worked out by hand.
ROWS = [_row(1, "TB", "real", "p1"), _row(2, "TB", "real", "p1"), _row(3, "TM", "real", "p2"),
        _row(4, "FB", "fake", "p2", "classic"), _row(5, "FM", "fake", "p3", "gan"),
        _row(6, "FM", "fake", "p3", "classic", "other")]
PROBS = np.array([[0.70, 0.10, 0.10, 0.10],   # TB -> TB  ok   fake score 0.20
                  [0.20, 0.08, 0.62, 0.10],   # TB -> FB  wrong       0.72
                  [0.06, 0.82, 0.06, 0.06],   # TM -> TM  ok          0.12
                  [0.10, 0.10, 0.70, 0.10],   # FB -> FB  ok          0.80
                  [0.10, 0.10, 0.10, 0.70],   # FM -> FM  ok          0.80
                  [0.42, 0.30, 0.18, 0.10]])  # FM -> TB  wrong       0.28


def test_metrics_hand_computed():
    m = evaluate_predictions(ROWS, PROBS, CT4, ["FB", "FM"])
    assert m["n"] == 6 and m["n_real"] == 3 and m["n_fake"] == 3
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class (P, R): TB (1/2, 1/2), TM (1, 1), FB (1/2, 1), FM (1, 1/2); F1 1/2, 1, 2/3, 2/3
    assert m["precision_macro"] == pytest.approx(0.75)
    assert m["recall_macro"] == pytest.approx(0.75)
    assert m["f1_macro"] == pytest.approx((0.5 + 1 + 2 / 3 + 2 / 3) / 4)
    assert m["f1_weighted"] == pytest.approx((2 * 0.5 + 1 + 2 / 3 + 2 * 2 / 3) / 6)
    assert m["precision_weighted"] == pytest.approx((2 * 0.5 + 1 + 0.5 + 2 * 1) / 6)
    assert m["per_class"]["FB"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["confusion"]["classes"] == CT4
    assert m["confusion"]["matrix"] == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]
    # real vs fake from FB + FM: fakes {0.8, 0.8, 0.28} vs reals {0.2, 0.72, 0.12}: 8 of 9 pairs
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["binary_accuracy"] == pytest.approx(4 / 6)  # 0.72 real and 0.28 fake on the wrong side
    assert m["roc_curve"]["fpr"][0] == 0 and m["roc_curve"]["tpr"][-1] == 1
    # one-vs-rest: TM is perfectly separated; every class is present
    assert m["roc_auc_per_class"]["TM"] == 1.0 and m["roc_auc_ovr_macro"] is not None
    # ECE, 15 bins: {0.7, 0.7, 0.7} all right, 0.62 wrong, 0.82 right, 0.42 wrong
    assert m["ece"] == pytest.approx(3 / 6 * 0.3 + (0.62 + 0.18 + 0.42) / 6)
    bins = m["calibration"]["top_label"]["bins"]
    assert len(bins) == 15 and sum(b["n"] for b in bins) == 6
    assert bins[10]["n"] == 3 and bins[10]["accuracy"] == 1.0 and bins[10]["confidence"] == pytest.approx(0.7)
    # score distributions per true class
    assert m["scores"]["FM"]["fake_score"]["n"] == 2
    assert m["scores"]["FM"]["fake_score"]["mean"] == pytest.approx(0.54)
    assert sum(m["scores"]["TB"]["confidence"]["histogram"]["counts"]) == 2
    # breakdowns
    meth = m["breakdown"]["method"]
    assert set(meth) == {"TB", "TM", "FB/classic", "FM/gan", "FM/classic"}
    assert meth["TB"] == {"n": 2, "n_fake": 0, "accuracy": 0.5, "mean_fake_score": pytest.approx(0.46), "auc": None}
    assert meth["FM/classic"]["accuracy"] == 0.0
    pat = m["breakdown"]["patient"]
    assert pat["p2"]["auc"] == 1.0 and pat["p2"]["accuracy"] == 1.0
    assert pat["p3"]["auc"] is None and pat["p3"]["mean_fake_score"] == pytest.approx(0.54)
    assert m["breakdown"]["source"]["other"]["n"] == 1
    json.dumps(m)  # JSON-ready


def test_binary_model_on_radiograph_rows():
    rows = [_row(1, "authentic", "real", "a", kind="radiograph"), _row(2, "copymove", "fake", "a", "classic", kind="radiograph"),
            _row(3, "inpaint", "fake", "b", "learned", kind="radiograph"), _row(4, "authentic", "real", "b", kind="radiograph")]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    m = evaluate_predictions(rows, probs, ["real", "fake"], ["fake"])
    assert m["accuracy"] == 0.5 and m["confusion"]["matrix"] == [[1, 1], [1, 1]]
    assert m["roc_auc"] == pytest.approx(0.75)  # fakes {0.7, 0.4} vs reals {0.1, 0.55}
    assert "roc_auc_ovr_macro" not in m
    assert set(m["breakdown"]["method"]) == {"authentic", "copymove/classic", "inpaint/learned"}
    assert forge_method(rows[2]) == "inpaint/learned"


def test_single_class_degenerate():
    rows = [_row(i, "TB", "real", "p1") for i in range(3)]
    probs = np.array([[0.9, 0.05, 0.03, 0.02], [0.5, 0.1, 0.3, 0.1], [0.2, 0.2, 0.5, 0.1]])
    m = evaluate_predictions(rows, probs, CT4, ["FB", "FM"])
    assert m["roc_auc"] is None and m["roc_curve"] is None
    assert any("undefined" in n and "negative" in n for n in m["notes"])
    assert m["roc_auc_ovr_macro"] is None and m["roc_auc_per_class"]["TB"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["breakdown"]["patient"]["p1"]["auc"] is None
    empty = evaluate_predictions([], np.zeros((0, 4)), CT4, ["FB", "FM"])
    assert empty["n"] == 0 and empty["notes"]
    with pytest.raises(ValueError, match="do not match"):
        evaluate_predictions(rows, probs[:, :2], CT4, ["FB", "FM"])


def test_reliability_perfect_and_worst():
    assert reliability(np.array([1.0, 1.0, 0.0]), np.array([1, 1, 0]))["ece"] == pytest.approx(0.0)
    assert reliability(np.array([1.0, 1.0]), np.array([0, 0]))["ece"] == pytest.approx(1.0)
    r = reliability(np.array([0.99, 1.0]), np.array([1, 1]))
    assert r["bins"][-1]["n"] == 2  # 1.0 falls in the last (closed) bin


def test_table6_markdown():
    m = evaluate_predictions(ROWS, PROBS, CT4, ["FB", "FM"])
    m.update(task="ct4", profile="fast CPU profile")
    md = table6_markdown({"models": {"net": m}})
    assert md.splitlines()[0].startswith("| model | task | n | accuracy %")
    assert "| net | ct4 | 6 | 66.67 |" in md and "0.889" in md
