"""Issue 12: trustworthy outside the lab -- processing is not manipulation, low-confidence evidence
needs corroboration, detectors say what they did not assess, shipped models were fitted on fitted
sources only, export chains for training."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medforensics.core import Evidence, Image
from medforensics.fusion import FusionConfig, corroborated, fuse
from medforensics.io import load
from medforensics.scan import analyze

OUTSIDE = ("ieee8023", "dcm-qa-ct", "emp-news")
#: An absolute path of some machine: a home, a work or temporary folder, a Windows drive.
MACHINE_PATH = r"(?<![\w.])/(work|root|home|Users|tmp|mnt|opt|srv)/|\b[A-Z]:\\\\"
REPO = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).resolve().parents[1] / "src" / "medforensics" / "models"


# ----------------------------------------------------------------------------------- fusion

def test_processing_evidence_is_reported_but_not_counted():
    ev = [Evidence("container", 0.99, "saved twice", indicates="processing"), Evidence("copy_move", 0.1, "")]
    score, label = fuse(ev)
    assert label == "authentic" and score == pytest.approx(0.1)


def test_low_confidence_evidence_alone_stops_at_suspicious():
    assert fuse([Evidence("learned_2d", 0.99, "", confidence="low")]) == (pytest.approx(0.99), "suspicious")
    # a normal-confidence detector that reaches `suspicious` corroborates it
    assert fuse([Evidence("learned_2d", 0.9, "", confidence="low"), Evidence("noise_residual", 0.6, "")])[1] == "manipulated"
    # ... one that stays below does not
    assert fuse([Evidence("learned_2d", 0.95, "", confidence="low"), Evidence("noise_residual", 0.3, "")])[1] == "suspicious"
    # two low-confidence detectors that each reach `suspicious` corroborate each other; one detector twice does not
    two = [Evidence("learned_2d", 0.7, "", confidence="low"), Evidence("autoencoder", 0.7, "", confidence="low")]
    assert corroborated(two) and fuse(two)[1] == "manipulated"
    same = [Evidence("learned_2d", 0.7, "", confidence="low"), Evidence("learned_2d", 0.7, "", confidence="low")]
    assert not corroborated(same)


def test_normal_evidence_still_decides_alone_and_moderate_pieces_add_up():
    assert fuse([Evidence("dicom_header", 0.99, "")])[1] == "manipulated"
    assert fuse([Evidence("a", 0.45, ""), Evidence("b", 0.45, ""), Evidence("c", 0.45, "")])[1] == "manipulated"
    assert fuse([Evidence("g", 0.95, "", indicates="synthesis")])[1] == "synthetic"
    assert fuse([], FusionConfig()) == (0.0, "authentic")


def test_evidence_refuses_unknown_indicates_and_confidence():
    with pytest.raises(ValueError, match="indicates"):
        Evidence("x", 0.5, "", indicates="resaved")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="confidence"):
        Evidence("x", 0.5, "", confidence="high")  # type: ignore[arg-type]
    d = Evidence("x", 0.5, "", indicates="processing", confidence="low").to_dict()
    assert d["indicates"] == "processing" and d["confidence"] == "low"


# ----------------------------------------------------------------------------------- container

def test_double_jpeg_alone_is_processing_and_the_verdict_stays_authentic(shared_data, tmp_path):
    from medforensics.detectors.container import ContainerDetector

    det = ContainerDetector()
    files = sorted((shared_data / "xray" / "mhh-covid19" / "images").glob("*.png"))[:12]
    seen_double = 0
    for i, f in enumerate(files):
        a = PILImage.open(f).convert("L")
        a.save(tmp_path / f"{i}a.jpg", quality=60)
        PILImage.open(tmp_path / f"{i}a.jpg").save(tmp_path / f"{i}.jpg", quality=90)
        image = load(tmp_path / f"{i}.jpg")[0]
        ev = det.detect(image)
        if any(fd["check"] == "jpeg_double" for fd in ev.details["findings"]):
            seen_double += 1
            assert ev.indicates == "processing" and "re-saved" in ev.explanation
        verdict = analyze(image, [det])
        assert verdict.label == "authentic", (f, ev.explanation)
    assert seen_double >= 4  # the trace is still found and reported


def test_editor_trace_is_processing_but_a_generator_claim_still_counts(shared_data, tmp_path):
    from medforensics.detectors.container import ContainerDetector

    f = sorted((shared_data / "xray" / "mhh-covid19" / "images").glob("*.png"))[0]
    a = PILImage.open(f).convert("L")
    a.save(tmp_path / "a.jpg", quality=55)
    exif = PILImage.Exif()
    exif[305] = "Adobe Photoshop 25.0"
    PILImage.open(tmp_path / "a.jpg").save(tmp_path / "b.jpg", quality=92, exif=exif)
    image = load(tmp_path / "b.jpg")[0]
    ev = ContainerDetector().detect(image)
    assert ev.indicates == "processing" and "photoshop" in ev.explanation.lower()
    assert analyze(image, [ContainerDetector()]).label == "authentic"
    exif[305] = "DALL-E 3"
    PILImage.open(tmp_path / "a.jpg").save(tmp_path / "c.jpg", quality=92, exif=exif)
    ev = ContainerDetector().detect(load(tmp_path / "c.jpg")[0])
    assert ev.indicates == "synthesis" and ev.score > 0.8


# ----------------------------------------------------------------------------------- domain

def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed (pip install pydicom-data)")
    return Path(path)


def test_header_body_part_and_chest_frame():
    import pydicom

    from medforensics.detectors.anatomy import chest_radiograph, header_body_part

    def img(shape=(400, 400), **attrs):
        ds = pydicom.Dataset()
        for k, v in attrs.items():
            setattr(ds, k, v)
        return Image.from_array(np.zeros(shape), modality="CR", datasets=[ds], format="dicom")

    assert header_body_part(img(BodyPartExamined="CHEST")) == "chest"
    assert header_body_part(img(StudyDescription="XR THORAX PA")) == "chest"
    assert header_body_part(img(BodyPartExamined="HAND")) == "HAND"
    assert header_body_part(img(StudyDescription="Fibroma of distal tibia")) == "TIBIA"
    assert header_body_part(img(StudyDescription="DESCRIBE")) is None  # no part hidden inside a word
    assert chest_radiograph(img(BodyPartExamined="KNEE"))[0] is False
    assert chest_radiograph(img((1200, 400)))[0] is False        # a spine or a long bone's frame
    assert chest_radiograph(img((500, 460)))[0] is True


def test_learned_2d_does_not_assess_an_extremity_and_says_so():
    from medforensics.detectors.learned2d import Learned2DDetector

    det = Learned2DDetector()
    extremity = load(_pydicom_file("RG3_UNCI.dcm"))[0]
    chest = load(_pydicom_file("RG1_UNCI.dcm"))[0]
    assert det.applies(extremity) and "EXTREMITY" in det.out_of_domain(extremity)
    assert det.out_of_domain(chest) is None
    v = analyze(extremity, [det])
    assert v.not_assessed == {"learned_2d": det.out_of_domain(extremity)} and v.assessed == []
    assert v.label == "authentic" and v.evidence == []
    rec = v.to_dict()
    assert rec["not_assessed"]["learned_2d"].startswith("the header names EXTREMITY") and rec["assessed_by"] == []
    assert analyze(chest, [det]).assessed == ["learned_2d"]


def test_secondary_capture_is_not_read_as_a_radiograph():
    from medforensics.detectors.learned2d import Learned2DDetector

    image = load(_pydicom_file("vlut_04.dcm"))[0]  # an OT test pattern
    assert image.modality == "OT"
    assert "modality OT" in Learned2DDetector().out_of_domain(image)


def test_abstaining_detectors_are_listed_not_fused():
    from medforensics.detectors.copy_move import CopyMoveDetector

    v = analyze(Image.from_array(np.random.default_rng(0).random((20, 20)), modality="XR"), [CopyMoveDetector()])
    assert "copy_move" in v.not_assessed and v.evidence == [] and v.assessed == []


def test_report_and_summary_show_what_was_not_assessed(tmp_path, capsys):
    from medforensics.report.summary import print_summary
    from medforensics.detectors.learned2d import Learned2DDetector
    from medforensics.report.html import write_report

    v = analyze(load(_pydicom_file("RG3_UNCI.dcm"))[0], [Learned2DDetector()])
    write_report([v], tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "not assessed by" in html and "EXTREMITY" in html
    print_summary([v], 1.0)
    assert "not assessed" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- shipped models

@pytest.mark.parametrize("path", sorted(MODELS.glob("*.safetensors")), ids=lambda p: p.name)
def test_model_cards_name_only_fitted_sources_and_no_machine_path(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        card_text = (f.metadata() or {}).get("medforensics.model_card", "")
    card = json.loads(card_text)
    sources = card.get("data", {}).get("sources")
    assert sources, f"{path.name}: the card does not list the data sources it was fitted on"
    for word in OUTSIDE:
        assert word not in card_text, f"{path.name}: the card names the outside source {word}"
    assert not re.search(MACHINE_PATH, card_text), f"{path.name}: a machine's absolute path in the card"


# ----------------------------------------------------------------------------------- export chains

def test_export_chain_ends_8_bit_moves_the_mask_and_repeats_by_seed():
    from medforensics.learn.export import export_chain

    a = np.random.default_rng(0).random((200, 240)).astype(np.float32)
    m = np.zeros(a.shape, bool)
    m[80:120, 100:140] = True
    out, mask, steps = export_chain(a, m, np.random.default_rng(1), steps=["resize", "annotate", "jpeg", "jpeg2"])
    assert steps == ["resize", "annotate", "jpeg", "jpeg2"]
    assert out.shape == mask.shape and out.dtype == np.float32
    assert np.allclose(out * 255, np.rint(out * 255), atol=1e-4) and 0 <= out.min() and out.max() <= 1
    assert 0.2 < mask.mean() / m.mean() * 1.0 < 5 and mask.any()
    again = export_chain(a, m, np.random.default_rng(1), steps=["resize", "annotate", "jpeg", "jpeg2"])
    assert np.array_equal(again[0], out)
    # jpeg2 alone is meaningless: it needs a first save
    assert export_chain(a, None, np.random.default_rng(2), steps=["jpeg2"])[2] == []


def test_training_tiles_are_chained_for_both_classes_and_fakes_keep_their_mask():
    from medforensics.learn.data import _exported_tile

    a = np.random.default_rng(0).random((300, 300)).astype(np.float32)
    m = np.zeros(a.shape, bool)
    m[140:160, 140:160] = True
    rng = np.random.default_rng(3)
    tiles = [_exported_tile(a, m, 118, 118, 64, rng, need_mask=True) for _ in range(40)]
    got = [t for t in tiles if t is not None]
    assert len(got) >= 30 and all(t.shape == (64, 64) for t in got)
    assert any(not np.allclose(t, a[118:182, 118:182], atol=1 / 255) for t in got)


def test_ct_of_the_head_is_out_of_the_ct_models_domain_but_abdomen_with_lung_bases_is_not():
    import pydicom

    from medforensics.detectors.learned2d import Learned2DDetector

    def ct(**attrs):
        ds = pydicom.Dataset()
        for k, v in attrs.items():
            setattr(ds, k, v)
        return Image.from_array(np.zeros((256, 256)), modality="CT", datasets=[ds], format="dicom")

    det = Learned2DDetector()
    assert "HEAD" in det.out_of_domain(ct(BodyPartExamined="HEAD"))
    assert det.out_of_domain(ct(StudyDescription="CT ABD AND PELVIS WO IV CONT", SeriesDescription="CHEST SAGITTAL")) is None
    assert det.out_of_domain(ct(BodyPartExamined="ABDOMEN")) is None


@pytest.mark.parametrize("module", ["medforensics.fusion", "medforensics.learn.export", "medforensics.detectors.anatomy", "medforensics.datapath",
                                    "medforensics.io.dicom"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_summary_and_report_lead_with_counted_evidence():
    from medforensics.core import Verdict
    from medforensics.report.html import top_evidence

    v = Verdict(path="x.jpg", kind="image", uid="u", n_instances=1, score=0.3, label="authentic",
                evidence=[Evidence("container", 0.94, "re-saved", indicates="processing"),
                          Evidence("learned_2d", 0.3, "tiles", confidence="low")])
    assert top_evidence(v).detector == "learned_2d"
    v.evidence = [Evidence("container", 0.94, "re-saved", indicates="processing"), Evidence("copy_move", 0.0, "")]
    assert top_evidence(v).detector == "container"


def test_no_machine_path_in_code_docs_or_benchmarks():
    """Issue 14, item 4: the product names no absolute path of any machine (the data root is
    ``medforensics.datapath.data_root``: --data, $MEDFORENSICS_DATA, ../shared/data)."""
    files = [REPO / "README.md"] + [p for d in ("src", "benchmarks", "docs") for p in (REPO / d).rglob("*")
                                    if p.suffix in (".py", ".md", ".toml", ".html", ".txt")]
    found = []
    for p in files:
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if re.search(MACHINE_PATH, line):
                found.append(f"{p.relative_to(REPO)}:{i}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_data_root_is_defined_once(monkeypatch, tmp_path):
    from medforensics.datapath import REPOSITORY, data_root

    monkeypatch.delenv("MEDFORENSICS_DATA", raising=False)
    assert data_root() == REPOSITORY.parent / "shared" / "data"
    monkeypatch.setenv("MEDFORENSICS_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root(tmp_path / "x") == tmp_path / "x"
