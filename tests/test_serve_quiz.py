"""The quiz of the review service: a set of authentic and forged images that nothing but the
pixels tells apart, ground truth that covers exactly what changed, the order of a round, and
the scores against the study's 75 %."""
from __future__ import annotations

from collections import Counter, defaultdict
from types import SimpleNamespace as S

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from medforensics.core import MedForensicsError
from medforensics.serve import quiz

SEED = 3
UID_KEYWORDS = {"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "MediaStorageSOPInstanceUID"}


@pytest.fixture(scope="module")
def quiz_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("quiz") / "set"
    calls = []
    specs = quiz.make_quiz_images(out, per_kind=1, seed=SEED, progress=lambda done, total: calls.append((done, total)))
    return out, specs, calls


def _elements(ds: pydicom.Dataset) -> dict[str, object]:
    """Every keyword of the file (meta included) with its value, pixel data left out."""
    values = {e.keyword: e.value for e in ds.file_meta}
    values.update({e.keyword: e.value for e in ds if e.keyword != "PixelData"})
    return values


def test_kinds_sources_and_names(quiz_set):
    out, specs, calls = quiz_set
    assert Counter(s.kind for s in specs) == {**{k: 1 for k in quiz.KINDS}, quiz.AUTHENTIC: len(quiz.KINDS)}
    assert [p.name for p in sorted(out.iterdir())] == [f"q{i:03d}.dcm" for i in range(1, len(specs) + 1)]
    assert sorted(s.path for s in specs) == sorted(out.iterdir())
    assert calls == [(i, len(specs)) for i in range(1, len(specs) + 1)]
    for s in specs:
        assert s.source in quiz.SOURCES
        if s.kind == quiz.AUTHENTIC:
            assert s.truth_box is None
        else:
            r0, c0, r1, c1 = s.truth_box
            assert 0 <= r0 < r1 <= quiz.SIZE and 0 <= c0 < c1 <= quiz.SIZE
            assert all(isinstance(v, int) for v in s.truth_box)
    # the order is shuffled: not all fakes first or all authentic first
    kinds = [s.kind == quiz.AUTHENTIC for s in specs]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_same_size_format_and_header_for_every_answer(quiz_set):
    _, specs, _ = quiz_set
    sizes, values = {}, {}
    for s in specs:
        ds = pydicom.dcmread(s.path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.pixel_array.shape == (quiz.SIZE, quiz.SIZE) and ds.pixel_array.dtype == np.uint16
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation, ds.SamplesPerPixel) == (16, 16, 0, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.Modality == quiz.SOURCES[s.source]
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
        header = s.path.read_bytes()[:-quiz.SIZE * quiz.SIZE * 2].lower()
        for word in (b"derived", b"forge", b"medforensics", b"splice", b"inpaint", b"copy", b"authentic"):
            assert word not in header, (s.path.name, word)
        sizes[s.path] = s.path.stat().st_size
        values[s.path] = _elements(ds)
    keywords = {frozenset(v) for v in values.values()}
    assert len(keywords) == 1, "every quiz image has the same set of attributes"
    assert not keywords.pop() & {"Manufacturer", "SoftwareVersions", "StudyDate", "SeriesDate", "ContentDate",
                                 "AcquisitionDate", "StationName", "DerivationDescription", "SourceImageSequence"}
    by_modality = defaultdict(list)
    for s in specs:
        by_modality[quiz.SOURCES[s.source]].append(s)
    mixed = 0
    for group in by_modality.values():
        first = values[group[0].path]
        for s in group[1:]:
            differ = {k for k, v in values[s.path].items() if v != first[k]}
            assert differ == UID_KEYWORDS, (s.path.name, differ)
            assert sizes[s.path] == sizes[group[0].path]
        mixed += len({s.kind == quiz.AUTHENTIC for s in group}) == 2
    assert mixed, "some modality holds both authentic and forged images"
    assert max(sizes.values()) - min(sizes.values()) <= 16
    uids = [v[k] for v in values.values() for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")]
    assert len(set(uids)) == len(uids) and {len(u) for u in uids} == {44}


def test_truth_box_covers_exactly_the_changes(quiz_set):
    out, specs, _ = quiz_set
    plans = quiz._plans(1, SEED)
    assert [(p.kind, p.source) for p in plans] == [(s.kind, s.source) for s in specs]
    cache: dict = {}
    for plan, spec in zip(plans, specs):
        px = quiz._pixels(plan, cache)
        stored = pydicom.dcmread(spec.path).pixel_array
        assert np.array_equal(stored, px.after)
        changed = stored != px.before
        if spec.kind == quiz.AUTHENTIC:
            assert not changed.any()
            continue
        r0, c0, r1, c1 = spec.truth_box
        inside = np.zeros(changed.shape, bool)
        inside[r0:r1, c0:c1] = True
        assert changed.any() and not (changed & ~inside).any(), spec.kind
        assert changed[inside].mean() > 0.25, "the box is the edit's, not a loose frame around it"
        rows, cols = np.nonzero(px.mask)
        assert spec.truth_box == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)


def test_deterministic_for_a_seed(quiz_set, tmp_path):
    _, specs, _ = quiz_set
    again = quiz.make_quiz_images(tmp_path / "again", per_kind=1, seed=SEED)
    assert [(s.path.name, s.kind, s.truth_box, s.source) for s in again] == \
           [(s.path.name, s.kind, s.truth_box, s.source) for s in specs]
    for a, b in zip(specs, again):
        da, db = pydicom.dcmread(a.path), pydicom.dcmread(b.path)
        assert np.array_equal(da.pixel_array, db.pixel_array)
        assert da.SOPInstanceUID != db.SOPInstanceUID   # fresh UIDs every time
    other = [(p.kind, p.source, p.seed) for p in quiz._plans(1, SEED + 1)]
    assert other != [(p.kind, p.source, p.seed) for p in quiz._plans(1, SEED)]


def test_plans_balance_kinds_and_sources():
    plans = quiz._plans(3, 11)
    assert Counter(p.kind for p in plans) == {**{k: 3 for k in quiz.KINDS}, quiz.AUTHENTIC: 12}
    for fake in (True, False):
        used = Counter(p.source for p in plans if (p.kind != quiz.AUTHENTIC) == fake)
        assert set(used) == set(quiz.SOURCES) and max(used.values()) - min(used.values()) <= 1
    assert sorted(p.index for p in plans) == list(range(len(plans)))


def test_refusals(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(MedForensicsError) as e:
        quiz.make_quiz_images(busy, per_kind=1)
    assert "not empty" in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(MedForensicsError, match="per_kind"):
            quiz.make_quiz_images(tmp_path / f"new{bad}", per_kind=bad)
        assert not (tmp_path / f"new{bad}").exists()


def test_quiz_round_order():
    images = [S(id=i) for i in (5, 3, 9, 1, 7, 2, 8, 4, 6, 10)]
    answered = {3, 7, 10, 99}
    order = quiz.quiz_round(images, answered, seed="ann")
    assert sorted(order) == list(range(1, 11))
    assert set(order[:7]) == {1, 2, 4, 5, 6, 8, 9} and set(order[7:]) == {3, 7, 10}
    assert order == quiz.quiz_round(list(reversed(images)), set(answered), seed="ann")   # input order does not matter
    assert order != quiz.quiz_round(images, answered, seed="bob")
    assert quiz.quiz_round(images, set(), seed=7) == quiz.quiz_round(images, set(), seed=7)
    assert quiz.quiz_round([], {1}, seed=0) == []


def test_summarise_maths():
    rows = [S(user="ann", kind="authentic", n=4, correct=3, hits=0),
            S(user="ann", kind="splice", n=2, correct=2, hits=1),
            S(user="ann", kind="copymove", n=2, correct=1, hits=1),
            S(user="bob", kind="authentic", n=2, correct=1, hits=0),
            S(user="bob", kind="inpaint", n=2, correct=0, hits=0),
            S(user="cid", kind="splice", n=0, correct=0, hits=0)]
    s = quiz.summarise(rows)
    assert quiz.STUDY_ACCURACY == 0.75 and s["benchmark"] == 0.75
    ann, bob = s["users"]["ann"], s["users"]["bob"]
    assert set(s["users"]) == {"ann", "bob"}
    assert (ann["n"], ann["correct"], ann["accuracy"]) == (8, 6, 0.75)
    assert (ann["sensitivity"], ann["specificity"], ann["hits"]) == (0.75, 0.75, 2)
    assert ann["localised"] == 0.5
    assert ann["kinds"]["copymove"]["accuracy"] == 0.5 and ann["kinds"]["authentic"]["sensitivity"] is None
    assert (bob["accuracy"], bob["sensitivity"], bob["specificity"], bob["localised"]) == (0.25, 0.0, 0.5, 0.0)
    d = s["department"]
    assert (d["n"], d["correct"], d["users"]) == (12, 7, 2)
    assert d["accuracy"] == pytest.approx(7 / 12) and d["difference"] == pytest.approx(7 / 12 - 0.75)
    assert d["sensitivity"] == pytest.approx(3 / 6) and d["specificity"] == pytest.approx(4 / 6)
    assert d["hits"] == 2 and d["localised"] == pytest.approx(2 / 6)
    assert s["kinds"]["authentic"]["localised"] is None
    assert s["kinds"]["authentic"]["accuracy"] == pytest.approx(4 / 6) and s["kinds"]["splice"]["accuracy"] == 1.0
    empty = quiz.summarise([])
    assert empty["users"] == {} and empty["department"]["accuracy"] is None and empty["department"]["difference"] is None
