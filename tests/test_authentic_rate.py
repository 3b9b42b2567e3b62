"""benchmarks/authentic_rate.py: the source table, the scan selection, demographics and the
leave-one-source-out refit, on hand-made records (no scan)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from medforensics.core import Evidence
from medforensics.fusion import fuse
from medforensics.learn.calibration import fit_logistic

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "authentic_rate.py"


@pytest.fixture(scope="module")
def ar():
    spec = importlib.util.spec_from_file_location("authentic_rate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


# ------------------------------------------------------------------------------- source table

ROWS = [  # path under the data root -> (row, status)
    ("ct/lidc-idri/LIDC-IDRI-0001/1.3.6/000001.dcm", "ct/lidc-idri", "fitted"),
    ("ct/lidc-idri-small/LIDC-IDRI-0002/a.dcm", "ct/lidc-idri-small", "fitted"),
    ("ct/slices/dcmqi-3slice/01.dcm", "ct/slices/dcmqi-3slice", "fitted"),
    ("ct/slices/tcia-covid19-ny-sbu/A002304/x.dcm", "ct/slices/tcia-covid19-ny-sbu", "fitted"),
    ("ct/nifti/example_ct.nii.gz", "ct/nifti", "fitted"),
    ("ct/dcm-qa-ct/GE_HiSpeedDual_human_head", "ct/dcm-qa-ct/GE_HiSpeedDual_human_head", "outside"),
    ("ct/dcm-qa-ct/Philips_phantom/IM1.dcm", "ct/dcm-qa-ct/Philips_phantom", "outside"),
    ("ct/emp-news/GE_Revolution_ATCM_phantom_40slices", "ct/emp-news", "outside"),
    ("xray/mhh-covid19/images/006f3a8a.png", "xray/mhh-covid19", "fitted"),
    ("xray/nih-cxr14/00000001_000.png", "xray/nih-cxr14", "fitted"),
    ("xray/nih-cxr14/NIH1000/train/normal/a.png", "xray/nih-cxr14/NIH1000", "fitted"),
    ("xray/siim/1.2.276.dcm", "xray/siim", "fitted"),
    ("xray/ieee8023/radiopaedia/a.jpeg", "xray/ieee8023/radiopaedia", "outside"),
    ("xray/ieee8023/eurorad/000001-17.jpg", "xray/ieee8023/eurorad", "outside"),
    ("xray/ieee8023/other-cc/b.png", "xray/ieee8023/other-cc", "outside"),
]


@pytest.mark.parametrize("rel,row,status", ROWS)
def test_source_table_maps_paths_to_rows(ar, rel, row, status):
    src, got = ar.row_of(rel, "CT")
    assert (got, src.status) == (row, status)


@pytest.mark.parametrize("rel,row", [
    ("ct/new-hospital/a.dcm", "ct/new-hospital"),
    ("ct/slices/other/a.dcm", "ct/slices/other"),          # beside fitted ct/slices/* entries
    ("xray/ieee8023/newsite/a.jpg", "xray/ieee8023/newsite"),
    ("xray/lidc-idri/a.png", "xray/lidc-idri"),             # a known name elsewhere is not that source
    ("mr/brain/a.dcm", "mr"),
])
def test_unknown_folder_is_its_own_outside_row(ar, rel, row):
    src, got = ar.row_of(rel)
    assert src.status == "outside" and not src.known
    assert got.startswith(row + " ") and "not in the source table" in got


def test_fitted_and_outside_are_the_documented_ones(ar):
    fitted = {s.prefix for s in ar.SOURCES if s.status == "fitted"}
    outside = {s.prefix for s in ar.SOURCES if s.status == "outside"}
    assert outside == {"ct/dcm-qa-ct", "ct/emp-news", "xray/ieee8023/radiopaedia", "xray/ieee8023/eurorad",
                       "xray/ieee8023/other-cc"}
    assert all(not p.startswith("xray/ieee8023") for p in fitted)
    assert ar.PYDICOM.status == "fitted"
    assert ar.PYDICOM.row((), "US") == "pydicom-data/US"
    # a source nested in another is scanned with it (--sources), so it must share its status
    for inner in ar.SOURCES:
        for outer in ar.SOURCES:
            if inner is not outer and inner.prefix.startswith(outer.prefix + "/"):
                assert inner.status == outer.status, (inner, outer)


def test_source_paths_select_by_status(ar, tmp_path):
    for d in ("ct/lidc-idri/S1", "ct/slices/dcmqi-3slice", "ct/slices/mystery", "ct/dcm-qa-ct/A",
              "xray/ieee8023/eurorad", "xray/nih-cxr14/NIH1000", "xray/newsite"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "README.md").write_text("not an image")
    (tmp_path / "xray/ieee8023/metadata.csv").write_text("path\n")
    (tmp_path / ".hidden").mkdir()
    rel = lambda which: sorted(p.relative_to(tmp_path).as_posix() for p in ar.source_paths(tmp_path, which))  # noqa: E731
    assert rel("fitted") == ["ct/lidc-idri", "ct/slices/dcmqi-3slice", "xray/nih-cxr14"]
    assert rel("outside") == ["ct/dcm-qa-ct", "ct/slices/mystery", "xray/ieee8023/eurorad", "xray/newsite"]
    assert ar.source_paths(tmp_path, "all") == [tmp_path]


def test_unreadable_root_is_one_line(ar, tmp_path):
    with pytest.raises(SystemExit) as e:
        ar.check_root(tmp_path / "missing")
    assert "\n" not in str(e.value) and "missing" in str(e.value)
    ar.check_root(tmp_path)


def test_default_root_is_relative_to_the_repository(ar, monkeypatch):
    monkeypatch.delenv("MEDFORENSICS_DATA", raising=False)
    assert ar.default_root() == SCRIPT.parents[2] / "shared" / "data"
    monkeypatch.setenv("MEDFORENSICS_DATA", "/elsewhere/data")
    assert ar.default_root() == Path("/elsewhere/data")


def test_pydicom_items_are_grouped_by_modality(ar, tmp_path):
    root, lib = tmp_path / "data", tmp_path / "site-packages" / "pydicom" / "test_files"
    images = {str(lib / "US1.dcm"): ("US", "1.2.3"), str(lib / "MR_a.dcm"): ("MR", "9.9")}
    rec = ar.record({"path": str(lib / "US1.dcm"), "modality": None, "label": None}, root, {}, images)
    assert rec["benchmark"] == {"source": "pydicom-data", "row": "pydicom-data/US", "status": "fitted"}
    # an unreadable series of codec variants (path: their folder) keeps its files' modality
    rec = ar.record({"path": str(lib), "uid": "9.9", "modality": None, "label": None}, root, {}, images)
    assert rec["benchmark"]["row"] == "pydicom-data/MR"
    rec = ar.record({"path": str(lib / "US1.dcm"), "modality": "OT", "label": "authentic"}, root, {}, images)
    assert rec["benchmark"]["row"] == "pydicom-data/OT"
    # without pydicom's list, a path outside the data root is nobody's source
    assert ar.record({"path": str(lib / "US1.dcm"), "label": None}, root, {})["benchmark"]["status"] == "outside"


# -------------------------------------------------------------------------------- demographics

def _metadata_root(tmp_path: Path) -> Path:
    (tmp_path / "xray/mhh-covid19").mkdir(parents=True)
    (tmp_path / "xray/ieee8023").mkdir(parents=True)
    (tmp_path / "xray/mhh-covid19/data.csv").write_text(
        "patient_id,image_id,sex,age,modality,projection\n"
        "p1,img1,m,,CR,ap\np2,img2,f,,CR,pa\np3,img3,w,,DX,ap\n")
    (tmp_path / "xray/ieee8023/metadata.csv").write_text(
        "path,label,view,sex,age\n"
        "eurorad/a.jpg,authentic,PA,M,35\n"
        "eurorad/b.jpg,authentic,AP Supine,F,59\n"
        "radiopaedia/c.jpeg,authentic,L,,60\n"
        "radiopaedia/d.jpeg,authentic,AP,F,84\n"
        "other-cc/e.png,authentic,PA,M,\n")
    return tmp_path


def test_demographics_are_read_and_normalised(ar, tmp_path):
    demo = ar.read_demographics(_metadata_root(tmp_path))
    assert demo["xray/mhh-covid19/images/img1.png"] == {"sex": "M", "age": "unknown", "view": "AP"}
    assert demo["xray/mhh-covid19/images/img3.png"]["sex"] == "F"          # "w" (weiblich) in MHH's dictionary
    assert demo["xray/ieee8023/eurorad/a.jpg"] == {"sex": "M", "age": "<40", "view": "PA"}
    assert demo["xray/ieee8023/eurorad/b.jpg"] == {"sex": "F", "age": "40-59", "view": "AP supine"}
    assert demo["xray/ieee8023/radiopaedia/c.jpeg"] == {"sex": "unknown", "age": "60-79", "view": "lateral"}
    assert demo["xray/ieee8023/radiopaedia/d.jpeg"]["age"] == "80+"
    assert demo["xray/ieee8023/other-cc/e.png"]["age"] == "unknown"
    assert ar.read_demographics(tmp_path / "nothing") == {}


def _verdict(path: str, label: str | None, evidence=(), modality="XR", kind="image", not_assessed=None) -> dict:
    return {"path": path, "kind": kind, "modality": modality, "label": label, "uid": None,
            "score": None if label is None else 0.0, "evidence": list(evidence), "not_assessed": not_assessed or {}}


def _ev(detector: str, score: float, raw=None, cal=None, group="native", **kw) -> dict:
    details = {} if raw is None else {"raw": raw, "calibration": cal, "size_group": group}
    return {"detector": detector, "score": score, "indicates": "manipulation", "confidence": "normal",
            "explanation": "", "details": details, **kw}


def test_false_alarms_by_group(ar, tmp_path, capsys):
    root = _metadata_root(tmp_path)
    demo = ar.read_demographics(root)
    alarm = [_ev("learned_2d", 0.7), _ev("container", 0.3)]
    verdicts = [
        _verdict(f"{root}/xray/ieee8023/eurorad/a.jpg", "suspicious", alarm),
        _verdict(f"{root}/xray/ieee8023/eurorad/b.jpg", "authentic"),
        _verdict(f"{root}/xray/ieee8023/radiopaedia/c.jpeg", "manipulated", [_ev("container", 0.9)]),
        _verdict(f"{root}/xray/ieee8023/radiopaedia/d.jpeg", "authentic"),
        _verdict(f"{root}/xray/ieee8023/other-cc/e.png", None),
        _verdict(f"{root}/xray/mhh-covid19/images/img1.png", "authentic"),
        _verdict(f"{root}/xray/mhh-covid19/images/img2.png", "suspicious", [_ev("noise_residual", 0.6)]),
    ]
    recs = [ar.record(v, root, demo) for v in verdicts]
    outside = [r for r in recs if r["benchmark"]["status"] == "outside"]
    by_sex = ar.summarise(outside, lambda r: r["benchmark"]["demographics"]["sex"])
    assert {g: (s["items"], s["errors"], s["false_alarms"]) for g, s in by_sex.items()} == {
        "M": (2, 1, 1), "F": (2, 0, 0), "unknown": (1, 0, 1)}
    assert ar.rate(by_sex["M"]) == 100.0                     # of the scored items: e.png has no verdict
    assert by_sex["M"]["culprits"] == {"learned_2d": 1}      # container at 0.3 was not behind it
    by_view = ar.summarise(outside, lambda r: r["benchmark"]["demographics"]["view"])
    assert by_view["lateral"]["culprits"] == {"container": 1}
    ar.print_demographics(recs)
    out = capsys.readouterr().out
    fitted, outside_part = out.split("Outside sources")
    assert "| view PA | 1 | 0 | 1 (100.0%) | noise_residual 1 |" in fitted
    assert "| age <40 | 1 | 0 | 1 (100.0%) | learned_2d 1 |" in outside_part
    assert outside_part.index("age <40") < outside_part.index("age 80+") < outside_part.index("age unknown")


def test_source_tables_count_labels_errors_and_not_assessed(ar, tmp_path, capsys):
    recs = [ar.record(v, tmp_path, {}) for v in [
        _verdict(f"{tmp_path}/xray/nih-cxr14/NIH1000/a.png", "authentic",
                 not_assessed={"learned_2d": "too small", "copy_move": "too small"}),
        _verdict(f"{tmp_path}/xray/nih-cxr14/NIH1000/b.png", "manipulated", [_ev("dicom_header", 0.95)],
                 not_assessed={"learned_2d": "too small"}),
        _verdict(f"{tmp_path}/xray/nih-cxr14/NIH1000/c.png", None),
    ]]
    stats = ar.summarise(recs, lambda r: r["benchmark"]["row"])
    s = stats["xray/nih-cxr14/NIH1000"]
    assert (s["items"], s["errors"], s["false_alarms"]) == (3, 1, 1)
    assert s["not_assessed"] == {"learned_2d": 2, "copy_move": 1}
    ar.print_sources("Fitted", stats)
    out = capsys.readouterr().out
    assert ("| xray/nih-cxr14/NIH1000 | 3 | 1 | 0 | 1 | 0 | 1 | 1 (50.0%) | dicom_header 1 | "
            "learned_2d 2, copy_move 1 |") in out


# ------------------------------------------------------------------------ leave-one-source-out

def _loso_records(ar, tmp_path) -> tuple[list[dict], dict]:
    """Three ordinary fitted radiograph sources (raws ~ N(0, 1)), one fitted source whose raws lie
    far above them (~ N(6, 1)), an outside source higher still; every item carries the shipped
    calibration fitted on the pooled fitted raws, so the odd source passes with it."""
    rng = np.random.default_rng(0)
    raws = {"xray/mhh-covid19": rng.normal(6.0, 1.0, 60), "xray/siim": rng.normal(0.0, 1.0, 30),
            "xray/nih-cxr14": rng.normal(0.0, 1.0, 30), "ct/slices/tcia-covid19-ny-sbu": rng.normal(0.0, 1.0, 30),
            "xray/ieee8023/eurorad": rng.normal(30.0, 1.0, 30)}
    shipped = fit_logistic(np.concatenate([raws[s] for s in ("xray/mhh-covid19", "xray/siim", "xray/nih-cxr14")]))
    cal = {"midpoint": shipped["midpoint"], "scale": shipped["scale"]}
    from medforensics.detectors.base import logistic
    recs = []
    for src, values in raws.items():
        modality = "CT" if src.startswith("ct/") else "XR"
        for i, raw in enumerate(values):
            evs = [_ev("learned_2d", logistic(raw, cal["midpoint"], cal["scale"]), raw=float(raw), cal=cal),
                   _ev("dicom_header", 0.3 if i % 2 else 0.05)]
            score, label = fuse([Evidence(e["detector"], e["score"], "") for e in evs])
            recs.append(ar.record({**_verdict(f"{tmp_path}/{src}/{i}.png", label, evs, modality), "score": score},
                                  tmp_path, {}))
    return recs, cal


def test_loso_shows_a_source_unlike_the_others(ar, tmp_path):
    recs, _ = _loso_records(ar, tmp_path)
    res = {r["source"]: r for r in ar.loso(recs)}
    assert set(res) == {"xray/mhh-covid19", "xray/siim", "xray/nih-cxr14", "ct/slices/tcia-covid19-ny-sbu"}
    odd = res["xray/mhh-covid19"]
    assert odd["items"] == odd["calibrated_items"] == 60
    assert odd["shipped"] <= 3 and odd["loso"] >= 50 and odd["loso"] > odd["shipped"]
    # the fit for it used the other two radiograph sources only: not itself, not CT, not outside
    (fit, shipped), = odd["fits"].values()
    assert fit["n_images"] == 60 and fit["midpoint"] < shipped["midpoint"]
    # an ordinary source refitted without the odd one gets a stricter calibration, not more alarms
    assert res["xray/siim"]["loso"] <= res["xray/siim"]["shipped"] + 1
    # CT has no other fitted CT source here: its items keep the shipped calibration, and say so
    ct = res["ct/slices/tcia-covid19-ny-sbu"]
    assert ct["kept_shipped"] == ct["calibrated_items"] == 30 and ct["loso"] == ct["shipped"]


def test_refit_pools_by_kind_and_size_group_and_skips_series(ar, tmp_path):
    recs, cal = _loso_records(ar, tmp_path)
    thumbs = [ar.record(_verdict(f"{tmp_path}/xray/nih-cxr14/NIH1000/{i}.png", "authentic",
                                 [_ev("learned_2d", 0.1, raw=100.0 + i, cal=cal, group="small")]), tmp_path, {})
              for i in range(6)]
    series = [ar.record(_verdict(f"{tmp_path}/ct/lidc-idri/S{i}", "authentic",
                                 [_ev("learned_2d", 0.1, raw=50.0, cal=cal)], "CT", kind="series"), tmp_path, {})
              for i in range(6)]
    cals = ar.refit(recs + thumbs + series, "xray/siim")
    assert cals[("learned_2d", "radiograph", "native")]["n_images"] == 90      # mhh 60 + nih-cxr14 30
    assert cals[("learned_2d", "radiograph", "small")]["n_images"] == 6
    assert cals[("learned_2d", "ct", "native")]["n_images"] == 30              # tcia slices, no series
    assert ("dicom_header", "radiograph", "native") not in cals                # hand-set: nothing to refit
    assert ("learned_2d", "radiograph", "small") not in ar.refit(recs + thumbs, "xray/nih-cxr14/NIH1000")


def test_refusion_reproduces_fuse(ar, tmp_path):
    recs, cal = _loso_records(ar, tmp_path)
    for r in recs[::7]:
        evs = [Evidence(e["detector"], e["score"], "", indicates=e["indicates"]) for e in r["evidence"]]
        assert ar.refuse(r) == fuse(evs)
        assert ar.refuse(r)[1] == r["label"]
        # refitting to the very calibration it shipped with changes nothing
        same = {("learned_2d", "ct" if r["modality"] == "CT" else "radiograph", "native"): cal}
        assert ar.refuse(r, same) == pytest.approx(fuse(evs), abs=1e-9)
    # rule-based evidence is kept as it is; calibrated evidence is rescored
    r = recs[1]
    evs, kept = ar.evidence_of(r, {("learned_2d", "radiograph", "native"): {"midpoint": -50.0, "scale": 1.0}})
    assert not kept
    assert [e.detector for e in evs] == ["learned_2d", "dicom_header"]
    assert evs[0].score == 1.0 and evs[1].score == r["evidence"][1]["score"]
    assert ar.evidence_of(r, {})[1] is True                                     # no fit: kept as shipped


def test_refusion_keeps_confidence_and_processing(ar, tmp_path):
    """Low-confidence evidence alone stops at suspicious and processing is not counted, in the
    re-fusion as in fuse; processing evidence is not "behind" a false alarm."""
    evs = [_ev("learned_2d", 0.95, confidence="low"), _ev("container", 0.99, indicates="processing")]
    rec = ar.record(_verdict(f"{tmp_path}/xray/siim/a.dcm", "suspicious", evs), tmp_path, {})
    want = fuse([Evidence(e["detector"], e["score"], "", indicates=e["indicates"], confidence=e["confidence"])
                 for e in evs])
    assert ar.refuse(rec) == want and want[1] == "suspicious"
    assert ar.culprits(rec) == {"learned_2d"}
