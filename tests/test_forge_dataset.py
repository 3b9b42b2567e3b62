"""forge dataset: inventory of real data, patient-disjoint splits, manifest, augmentation, a small build."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medforensics.forge.dataset import (MANIFEST_COLUMNS, SPLITS, DatasetConfig, RealSource, _augmentations,
                                        assign_splits, build_dataset, check_patient_disjoint, inventory)


def _src(ds, patient, n=1):
    return RealSource("image", [Path(f"/x/{patient}_{i}.png") for i in range(n)], ds, patient)


def test_splits_are_patient_disjoint_and_spread_over_every_dataset():
    sources = [_src("a", f"p{i}", n=1 + i % 3) for i in range(40)] + [_src("b", f"q{i}") for i in range(3)]
    splits = assign_splits(sources, (0.7, 0.15, 0.15), seed=1)
    assert set(splits) == {s.patient_id for s in sources}
    assert {splits[f"q{i}"] for i in range(3)} == set(SPLITS)  # three patients: one per split
    share = {s: sum(len(x.files) for x in sources if x.dataset == "a" and splits[x.patient_id] == s) for s in SPLITS}
    total = sum(share.values())
    assert 0.6 < share["train"] / total < 0.8 and share["test"] > 0 and share["validation"] > 0
    assert assign_splits(sources, (0.7, 0.15, 0.15), seed=1) == splits  # reproducible
    assert assign_splits(sources, (0.7, 0.15, 0.15), seed=2) != splits


def test_disjointness_check_catches_a_leak(tmp_path):
    m = tmp_path / "manifest.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "split"])
        w.writeheader()
        w.writerows([{"patient_id": "p1", "split": "train"}, {"patient_id": "p2", "split": "test"},
                     {"patient_id": "p1", "split": "train"}])
    assert check_patient_disjoint(m) == {"train": {"p1"}, "test": {"p2"}}
    with open(m, "a", newline="") as fh:
        fh.write("p2,validation\n")
    with pytest.raises(ValueError, match="p2"):
        check_patient_disjoint(m)


def test_review_augmentation_makes_eight_variants():
    px = np.random.default_rng(0).uniform(0, 255, (40, 50)).astype(np.float32)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:20] = 1
    out = list(_augmentations(px, mask))
    assert [t for t, _, _ in out] == ["rotate-10", "rotate-5", "rotate+5", "rotate+10",
                                      "brightness-25%", "brightness-10%", "brightness+10%", "brightness+25%"]
    assert all(p.shape == px.shape and m.shape == mask.shape for _, p, m in out)
    assert out[7][1].mean() > px.mean() > out[4][1].mean()
    assert not np.array_equal(out[0][2], mask) and np.array_equal(out[4][2], mask)


def test_inventory_of_shared_data(shared_data):
    srcs = inventory(shared_data)
    by = {}
    for s in srcs:
        by.setdefault(s.dataset, []).append(s)
    assert len(by["mhh-covid19"]) == 243 and len({s.patient_id for s in by["mhh-covid19"]}) == 71
    assert len(by["nih-cxr14-64px"]) == 1000
    lidc = {s.patient_id: len(s.files) for s in by["lidc-idri"] if s.kind == "ct-series"}
    assert lidc == {"LIDC-IDRI-0001": 133, "LIDC-IDRI-0002": 12, "LIDC-IDRI-0003": 11}
    # three LIDC patients: one in each split, so every split has CT nodule classes
    splits = assign_splits(srcs, (0.7, 0.15, 0.15), seed=0)
    assert {splits[p] for p in lidc} == set(SPLITS) and splits["LIDC-IDRI-0001"] == "train"
    assert len(inventory(shared_data, include_nih_small=False)) == len(srcs) - 1000


def test_small_build_writes_a_consistent_patient_disjoint_dataset(shared_data, tmp_path):
    """A reduced build on a copy of part of the data: files, masks and manifest agree."""
    import shutil

    root = tmp_path / "data"
    (root / "xray" / "mhh-covid19" / "images").mkdir(parents=True)
    mhh = shared_data / "xray" / "mhh-covid19"
    rows = list(csv.DictReader(open(mhh / "data.csv")))[:12]
    with open(root / "xray" / "mhh-covid19" / "data.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        shutil.copy(mhh / "images" / f"{r['image_id']}.png", root / "xray" / "mhh-covid19" / "images")
    small = next((shared_data / "ct" / "lidc-idri-small").glob("LIDC-IDRI-0002"))
    shutil.copytree(small, root / "ct" / "lidc-idri-small" / "LIDC-IDRI-0002")
    cfg = DatasetConfig(seed=3, injections_per_100_slices=0, min_injections=2, removals_per_nodule=1, ct_methods=("classic",),
                        inpaint_methods=("classic",), synthetic=0, include_nih_small=False)
    manifest = build_dataset(root, tmp_path / "ds", cfg)
    rows = list(csv.DictReader(open(manifest)))
    assert list(rows[0]) == MANIFEST_COLUMNS
    card = json.loads((manifest.parent / "dataset.json").read_text())
    assert card["n_items"] == len(rows)
    # no machine's folder: the data root is ".", real images are named relative to it
    assert card["data_root"] == "."
    assert str(root) not in manifest.read_text() and str(tmp_path) not in manifest.read_text()
    assert all((root / r["source_file"]).is_file() for r in rows)
    donors = [json.loads(r["params"])["donor"] for r in rows if "donor" in json.loads(r["params"])]
    assert all((root / d).is_file() for d in donors)
    classes = {r["class"] for r in rows}
    assert {"authentic", "TB", "FM"} <= classes and classes & {"copymove", "splice", "inpaint", "intensity",
                                                               "contrast", "resample"}
    assert sum(r["class"] == "authentic" for r in rows) == 12
    check_patient_disjoint(manifest)
    import cv2
    for r in rows:
        assert (manifest.parent / r["file"]).is_file()
        m = cv2.imread(str(manifest.parent / r["mask"]), cv2.IMREAD_GRAYSCALE)
        assert (m.max() > 0) == (r["label"] == "fake"), r
    # reproducible by seed: same classes and parameters
    again = list(csv.DictReader(open(build_dataset(root, tmp_path / "ds2", cfg))))
    assert [(r["class"], r["params"]) for r in again] == [(r["class"], r["params"]) for r in rows]
    with pytest.raises(FileExistsError):
        build_dataset(root, tmp_path / "ds", cfg)
