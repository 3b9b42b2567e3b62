"""Provenance in ``scan``: signatures, watermark and log membership as evidence, pointing to the
changed region when a proof breaks."""
from __future__ import annotations

import json
import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medforensics.detectors.provenance import ProvenanceDetector
from medforensics.io import load
from medforensics.provenance.keys import new_identity
from medforensics.provenance.ledger import Ledger, fingerprint, generate_key
from medforensics.provenance.signature import sign_file
from medforensics.provenance.watermark import embed_file
from medforensics.scan import analyze

CT = get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def identity():
    return new_identity("Radiology signer", algorithm="ec")


def _protect(tmp_path, identity, key=None):
    """CT_small, watermarked then signed (the signature covers the watermarked pixels)."""
    embed_file(CT, tmp_path / "wm.dcm", key=key)
    sign_file(tmp_path / "wm.dcm", tmp_path / "signed.dcm", identity)
    return tmp_path / "signed.dcm"


def _edit(src, dst, rows, cols, delta=40, name=None):
    ds = pydicom.dcmread(src)
    if rows is not None:
        a = ds.pixel_array.copy()
        a[rows, cols] += delta
        ds.PixelData = a.tobytes()
    if name is not None:
        ds.PatientName = name
    ds.save_as(dst)
    return dst


def _evidence(path, **kw):
    image = load(path)[0]
    return image, ProvenanceDetector(**kw).detect(image)


def test_intact_proofs_are_no_evidence_of_manipulation(tmp_path, identity):
    signed = _protect(tmp_path, identity)
    with Ledger.create(tmp_path / "log.sqlite", generate_key()) as lg:
        lg.append([fingerprint(signed)])
    ca = identity.save(tmp_path / "keys")["ca"]
    _, ev = _evidence(signed, trust=[ca], ledger=str(tmp_path / "log.sqlite"))
    assert ev.score == 0.0
    assert ev.details["status"] == {"signature": {"trusted": 1}, "watermark": {"intact": 1}, "ledger": {"unchanged": 1}}
    assert ev.provenance == "signature:trusted watermark:intact ledger:unchanged"
    assert ev.explanation.startswith("provenance holds")
    # without trust anchors the intact signature is no evidence either way, and the signer is named
    _, ev = _evidence(signed, trust=[], ledger=str(tmp_path / "log.sqlite"))
    assert ev.score == 0.0
    assert ev.details["status"]["signature"] == {"not-checked": 1}
    assert ev.provenance == "signature:not-checked watermark:intact ledger:unchanged"
    assert "not checked against any trust anchor" in ev.explanation and "CN=Radiology signer" in ev.explanation
    assert not ev.regions


def test_unprotected_image_gets_no_evidence():
    image = load(CT)[0]
    assert ProvenanceDetector(trust=[], ledger=None).detect(image) is None
    # an unknown image in a log is no evidence either
    verdict = analyze(image, [ProvenanceDetector(trust=[], ledger=None)])
    assert verdict.label == "authentic" and verdict.provenance == "none"


def test_changed_pixels_point_to_the_changed_blocks(tmp_path, identity):
    signed = _protect(tmp_path, identity)
    with Ledger.create(tmp_path / "log.sqlite", generate_key()) as lg:
        lg.append([fingerprint(signed)])
    bad = _edit(signed, tmp_path / "bad.dcm", slice(40, 50), slice(70, 80))
    image, ev = _evidence(bad, trust=[], ledger=str(tmp_path / "log.sqlite"))
    assert ev.score >= 0.97
    assert ev.details["status"] == {"signature": {"broken": 1}, "watermark": {"tampered": 1}, "ledger": {"changed": 1}}
    assert "pixel data changed" in ev.explanation
    r0, c0, r1, c1 = ev.regions[0].bbox_voxel
    assert r0 <= 40 and r1 >= 50 and c0 <= 70 and c1 >= 80          # covers the edit
    assert (r1 - r0) * (c1 - c0) <= 64 * 64                           # and not much more
    assert ev.heatmap.shape == image.pixels.shape and ev.heatmap[45, 75] == 1.0 and ev.heatmap[5, 5] == 0.0
    verdict = analyze(image, [ProvenanceDetector(trust=[], ledger=str(tmp_path / "log.sqlite"))])
    assert verdict.label == "manipulated" and "signature:broken" in verdict.provenance


def test_changed_header_is_named(tmp_path, identity):
    signed = _protect(tmp_path, identity)
    with Ledger.create(tmp_path / "log.sqlite", generate_key()) as lg:
        lg.append([fingerprint(signed)])
    bad = _edit(signed, tmp_path / "renamed.dcm", None, None, name="Someone^Else")
    _, ev = _evidence(bad, trust=[], ledger=str(tmp_path / "log.sqlite"))
    assert ev.score >= 0.99
    assert "PatientName" in ev.explanation
    assert ev.details["status"]["watermark"] == {"intact": 1}         # pixels untouched
    assert any("other header" in m for m in ev.details["findings"])


def test_untrusted_signer_is_suspicious_only_when_anchors_are_given(tmp_path, identity):
    signed = _protect(tmp_path, identity)
    other = new_identity("Other hospital", algorithm="ec")
    (tmp_path / "other-ca.pem").write_bytes(other.cert_pem() + b"")
    other.save(tmp_path / "other")
    _, ev = _evidence(signed, trust=[str(tmp_path / "other" / "ca.pem")], ledger=None)
    assert ev.score == pytest.approx(0.6)
    assert ev.details["status"]["signature"] == {"untrusted": 1}
    _, ev = _evidence(signed, trust=[], ledger=None)
    assert ev.score == 0.0


def test_keyed_watermark_needs_its_key(tmp_path, identity):
    embed_file(CT, tmp_path / "keyed.dcm", key=b"hospital secret")
    _, ev = _evidence(tmp_path / "keyed.dcm", trust=[], ledger=None)
    assert ev.details["status"]["watermark"] == {"vanished": 1} and ev.score == pytest.approx(0.5)
    assert "--watermark-key" in ev.explanation
    _, ev = _evidence(tmp_path / "keyed.dcm", trust=[], ledger=None, watermark_key=b"hospital secret")
    assert ev.details["status"]["watermark"] == {"intact": 1} and ev.score == 0.0


def test_series_region_lands_on_the_edited_slice(tmp_path, identity, lidc_series_dir):
    headers = [(pydicom.dcmread(f, stop_before_pixels=True), f) for f in lidc_series_dir.glob("*.dcm")]
    files = [f for _, f in sorted(headers, key=lambda t: float(t[0].ImagePositionPatient[2]))][60:66]  # contiguous
    series = tmp_path / "series"
    series.mkdir()
    for f in files:
        sign_file(f, series / f.name, identity)
    image = load(series)[0]
    k = 3
    target = image.sources[k]
    edited = tmp_path / "edited"
    shutil.copytree(series, edited)
    _edit(target, edited / target.name, slice(200, 230), slice(300, 330), delta=300)
    image = load(edited)[0]
    ev = ProvenanceDetector(trust=[], ledger=None).detect(image)
    assert ev.details["status"]["signature"] == {"not-checked": 5, "broken": 1}
    (reg,) = ev.regions
    s0, r0, c0, s1, r1, c1 = reg.bbox_voxel
    assert (s0, s1) == (k, k + 1)
    assert r0 <= 200 and r1 >= 230 and c0 <= 300 and c1 >= 330
    assert reg.center_mm is not None


def test_scan_cli_reports_provenance(tmp_path, identity, run_cli):
    signed = _protect(tmp_path, identity)
    paths = identity.save(tmp_path / "keys")
    init = run_cli("ledger", "init", tmp_path / "log.sqlite")
    assert init.returncode == 0, init.stderr
    add = run_cli("ledger", "add", signed, "--log", tmp_path / "log.sqlite")
    assert add.returncode == 0, add.stderr
    (tmp_path / "copy").mkdir()  # another folder: two versions of one instance in one folder are one series
    bad = _edit(signed, tmp_path / "copy" / "bad.dcm", slice(10, 20), slice(10, 20))
    out = tmp_path / "scan.jsonl"
    r = run_cli("scan", signed, bad, "--detectors", "provenance", "--trust", paths["ca"], "--ledger",
             tmp_path / "log.sqlite", "--json", out)
    assert r.returncode == 0, r.stderr
    recs = {rec["path"].rsplit("/", 1)[-1]: rec for rec in map(json.loads, out.read_text().splitlines())}
    assert recs["signed.dcm"]["label"] == "authentic"
    assert recs["signed.dcm"]["provenance"] == "signature:trusted watermark:intact ledger:unchanged"
    assert recs["bad.dcm"]["label"] == "manipulated"
    (ev,) = recs["bad.dcm"]["evidence"]
    assert ev["detector"] == "provenance" and ev["regions"][0]["bbox_voxel"] == [0, 0, 32, 32]


def test_scan_cli_bad_provenance_options_are_one_line_errors(tmp_path, run_cli):
    (tmp_path / "not-a-cert.pem").write_text("hello")
    r = run_cli("scan", CT, "--trust", tmp_path / "not-a-cert.pem")
    assert r.returncode == 1 and "not-a-cert.pem" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("scan", CT, "--ledger", tmp_path / "missing.sqlite")
    assert r.returncode == 1 and "missing.sqlite" in r.stderr and "Traceback" not in r.stderr
