"""The one input planner (medforensics.io.plan): one walker, one rule per command, one output
layout, one never-overwrite check -- and the commands that use it."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

from medforensics.io import KINDS, OutputCollision, discover, kind_of, new_file, new_folder, plan, walk

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """study/{ct.dcm, export.png, README.txt, .DS_Store, .git/x.dcm, s1/mr.dcm, s1/.hidden.dcm}"""
    d = tmp_path / "study"
    (d / "s1").mkdir(parents=True)
    shutil.copy(CT, d / "ct.dcm")
    shutil.copy(MR, d / "s1" / "mr.dcm")
    shutil.copy(MR, d / "s1" / ".hidden.dcm")
    _png(d / "export.png")
    (d / "README.txt").write_text("notes")
    (d / ".DS_Store").write_bytes(b"\0\1")
    (d / ".git").mkdir()
    shutil.copy(CT, d / ".git" / "x.dcm")
    return d


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from medforensics.provenance.keys import new_identity
    return new_identity("plan test signer", algorithm="ec").save(tmp_path_factory.mktemp("keys") / "k")


# ----------------------------------------------------------------------------- the walker

def test_hidden_files_and_folders_are_skipped_and_counted(study):
    w = walk([study])
    names = [rel.as_posix() for _, rel, _ in w.files]
    assert names == ["README.txt", "ct.dcm", "export.png", "s1/mr.dcm"]
    assert w.hidden == 3  # .DS_Store, .git/ (not entered), s1/.hidden.dcm
    p = plan([study], "sign")
    assert "3 hidden name(s)" in p.note()
    # a hidden file given by name is taken: the user asked for it
    assert [i.path.name for i in plan([study / "s1" / ".hidden.dcm"], "sign").inputs] == [".hidden.dcm"]


def test_order_is_deterministic(tmp_path):
    names = [f"{c}{n}.dcm" for c in "bca" for n in (2, 10, 1)] + ["z/a.dcm", "a/z.dcm", "m/k/q.dcm"]
    for order in (names, list(reversed(names)), random.Random(3).sample(names, len(names))):
        d = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        for n in order:
            (d / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(CT, d / n)
        got = [i.rel.as_posix() for i in plan([d], "sign").inputs]
        # a folder's files, sorted, before its sub-folders, sorted
        assert got == ["a1.dcm", "a10.dcm", "a2.dcm", "b1.dcm", "b10.dcm", "b2.dcm", "c1.dcm", "c10.dcm", "c2.dcm",
                       "a/z.dcm", "m/k/q.dcm", "z/a.dcm"]
    # the paths in the order given
    assert [i.path.name for i in plan([d / "c1.dcm", d / "a1.dcm"], "sign").inputs] == ["c1.dcm", "a1.dcm"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_symlink_loops_are_safe(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    shutil.copy(CT, d / "sub" / "ct.dcm")
    os.symlink(d, d / "sub" / "loop")  # a link back up: not followed
    assert [rel.as_posix() for _, rel, _ in walk([d]).files] == ["sub/ct.dcm"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_a_broken_link_is_an_error_not_a_skipped_file(tmp_path, run_cli):
    """Issue 18: a dangling symbolic link was counted among "non-image file(s) skipped"."""
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(CT, d / "ct.dcm")
    os.symlink(tmp_path / "gone.dcm", d / "link.dcm")
    p = plan([d], "scan")
    assert not p.skipped
    broken, = [i for i in p.inputs if i.problem]
    assert broken.path == d / "link.dcm" and broken.problem.startswith("broken symbolic link (its target")
    assert "gone.dcm" in broken.problem
    r = run_cli("scan", d, "-q", "--detectors", "dicom_header")
    assert r.code == 1 and "link.dcm: broken symbolic link" in r.err and "skipped" not in r.err
    named = run_cli("scan", d / "link.dcm", "-q")
    assert named.code == 1 and "broken symbolic link" in named.err


# ----------------------------------------------------------------------------- one rule per command

def test_kinds_are_data_and_kinds_come_from_content(tmp_path):
    assert KINDS["sign"] == {"dicom"} and KINDS["verify"] == {"dicom", "png", "jpeg"}
    assert KINDS["scan"] == KINDS["ledger"] == {"dicom", "png", "jpeg", "tiff", "nifti"}
    assert KINDS["export"] == {"dicom", "png", "jpeg", "tiff"} and KINDS["watermark"] == {"dicom"}
    jpeg_named_png = tmp_path / "x.png"
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(jpeg_named_png, format="JPEG")
    assert kind_of(jpeg_named_png) == "jpeg" and kind_of(CT) == "dicom"
    (tmp_path / "e.dcm").write_bytes(b"")
    assert kind_of(tmp_path / "e.dcm") == "empty"


def test_found_in_a_folder_is_skipped_by_name_is_an_error(study):
    p = plan([study], "sign")
    assert [i.rel.as_posix() for i in p.inputs] == ["ct.dcm", "s1/mr.dcm"]
    assert all(i.problem is None for i in p.inputs)
    assert sorted(x.name for x in p.skipped) == ["README.txt", "export.png"]
    assert "2 file(s) that sign does not take" in p.note()
    # verify takes the PNG (C2PA), export too; the text file is skipped by every command
    assert [i.path.name for i in plan([study], "verify").inputs] == ["ct.dcm", "export.png", "mr.dcm"]
    assert all("README.txt" not in str(i.path) for c in KINDS for i in plan([study], c).inputs)
    # given by name: an input with a one-line problem naming what is wrong
    (bad,) = plan([study / "export.png"], "sign").inputs
    assert bad.problem == "a PNG file; sign takes DICOM only"
    (txt,) = plan([study / "README.txt"], "export").inputs
    assert txt.problem == "not a recognised medical image (expected DICOM, PNG, JPEG or TIFF)"
    (missing,) = plan([study / "nope.dcm"], "ledger").inputs
    assert missing.problem == "no such file or directory" and missing.rel is None


def test_empty_files(tmp_path):
    (tmp_path / "1.2.3").write_bytes(b"")
    (tmp_path / "e.dcm").write_bytes(b"")
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    p = plan([tmp_path], "sign")
    assert {i.path.name: i.problem for i in p.inputs} == {"1.2.3": "file is empty", "e.dcm": "file is empty"}
    assert sorted(x.name for x in p.skipped) == ["e.png", "notes.txt"]
    assert plan([tmp_path / "notes.txt"], "sign").inputs[0].problem == "file is empty"


def test_scan_discovers_through_the_planner(study):
    sources, skipped = discover([study, study / "README.txt"])
    assert [x.name for x in skipped] == ["README.txt"]
    err = [s for s in sources if s.error]
    assert len(err) == 1 and err[0].path.name == "README.txt" and "not a recognised medical image" in err[0].error
    assert sorted(f.name for s in sources if not s.error for f in s.files) == ["ct.dcm", "export.png", "mr.dcm"]


def test_cli_sign_skips_a_stray_png_in_a_folder_but_refuses_one_by_name(study, keys, tmp_path, run_cli):
    k = ["--key", keys["key"], "--cert", keys["cert"]]
    r = run_cli("sign", study, *k, "--out", tmp_path / "signed")
    assert r.code == 0, r.err
    assert "signed 2 of 2" in r.err and "skipped 2 file(s) that sign does not take" in r.err
    assert "3 hidden name(s)" in r.err
    r = run_cli("sign", study / "export.png", study / "ct.dcm", *k, "--out", tmp_path / "s2")
    assert r.code == 1 and "export.png: a PNG file; sign takes DICOM only" in r.err and "signed 1 of 2" in r.err


def test_cli_ledger_and_watermark_check_follow_the_rule(study, tmp_path, run_cli):
    log = tmp_path / "l.db"
    assert run_cli("ledger", "init", log).code == 0
    r = run_cli("ledger", "add", study, "--log", log)
    assert r.code == 0 and "3 added" in r.out and "skipped 1 file(s) that ledger does not take" in r.err
    r = run_cli("ledger", "add", study / "README.txt", "--log", log)
    assert r.code == 1 and "README.txt: not a recognised medical image" in r.err
    r = run_cli("watermark", "check", study / "export.png")
    assert r.code == 1 and "a PNG file; watermark takes DICOM only" in r.out


# ----------------------------------------------------------------------------- one output layout

def test_layout_keeps_nested_folders_and_puts_named_files_at_the_top(study, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(CT, extra / "named.dcm")
    out = tmp_path / "out"
    pairs = plan([study, extra / "named.dcm"], "sign").targets(out)
    assert [(i.path.name, d.relative_to(out).as_posix()) for i, d in pairs] == \
        [("ct.dcm", "ct.dcm"), ("mr.dcm", "s1/mr.dcm"), ("named.dcm", "named.dcm")]
    renamed = plan([study], "export").targets(out, rename=lambda rel: rel.with_suffix(".png"))
    assert [d.relative_to(out).as_posix() for _, d in renamed] == ["ct.png", "export.png", "s1/mr.png"]
    assert not out.exists()  # planning writes nothing


def test_cli_layout_is_the_same_for_sign_watermark_and_export(study, keys, tmp_path, run_cli):
    k = ["--key", keys["key"], "--cert", keys["cert"]]
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(CT, extra / "named.dcm")
    runs = {"sign": ("sign", study, extra / "named.dcm", *k, "--out", tmp_path / "o-sign"),
            "watermark": ("watermark", "embed", study, extra / "named.dcm", "--out", tmp_path / "o-watermark"),
            "export": ("export", study, extra / "named.dcm", "--no-manifest", "--out", tmp_path / "o-export")}
    made = {}
    for name, args in runs.items():
        r = run_cli(*args)
        assert r.code == 0, (name, r.err)
        root = tmp_path / f"o-{name}"
        made[name] = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*") if p.is_file())
    assert made["sign"] == made["watermark"] == ["ct", "named", "s1/mr"]
    assert made["export"] == ["ct", "export", "named", "s1/mr"]  # export takes the PNG too


def test_collision_is_found_before_anything_is_written(tmp_path, keys, run_cli):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "s").mkdir(parents=True)
        shutil.copy(CT, d / "s" / "ct.dcm")
    shutil.copy(MR, a / "first.dcm")
    out = tmp_path / "out"
    with pytest.raises(OutputCollision, match="both be written to"):
        plan([a, b], "sign").targets(out)
    k = ["--key", keys["key"], "--cert", keys["cert"]]
    for args in (("sign", a, b, *k), ("watermark", "embed", a, b), ("export", a, b, "--no-manifest")):
        r = run_cli(*args, "--out", out)
        assert r.code == 2, (args[0], r.err)
        assert str(a / "s" / "ct.dcm") in r.err and str(b / "s" / "ct.dcm") in r.err
        assert not out.exists(), args[0]
    # a file given by name and a folder's file of the same name; x.dcm and x.png exported to x.png
    shutil.copy(CT, tmp_path / "first.dcm")
    with pytest.raises(OutputCollision):
        plan([a, tmp_path / "first.dcm"], "sign").targets(out)
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(CT, c / "x.dcm")
    _png(c / "x.png")
    with pytest.raises(OutputCollision):
        plan([c], "export").targets(out, rename=lambda rel: rel.with_suffix(".png"))


def test_existing_outputs_are_refused_before_anything_is_written(study, keys, tmp_path, run_cli):
    out = tmp_path / "out"
    (out / "s1").mkdir(parents=True)
    (out / "s1" / "mr.dcm").write_text("someone's file")
    with pytest.raises(FileExistsError, match="mr.dcm: already exists"):
        plan([study], "sign").targets(out)
    r = run_cli("sign", study, "--key", keys["key"], "--cert", keys["cert"], "--out", out)
    assert r.code == 2 and "mr.dcm: already exists" in r.err and len(r.err.strip().splitlines()) <= 2
    assert sorted(p.name for p in out.rglob("*")) == ["mr.dcm", "s1"]  # ct.dcm not written either
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        plan([study], "sign").targets(tmp_path / "afile")


# ----------------------------------------------------------------------------- never overwrite

def test_new_folder_and_new_file(tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert new_folder(empty) == empty
    assert new_folder(tmp_path / "a" / "b").is_dir()  # created, parents too
    (empty / "f").write_text("x")
    with pytest.raises(FileExistsError, match="empty: folder exists and is not empty"):
        new_folder(empty)
    with pytest.raises(FileExistsError, match="not a folder"):
        new_folder(empty / "f")
    assert not new_folder(tmp_path / "c", create=False).exists()
    with pytest.raises(FileExistsError, match="f: already exists"):
        new_file(empty / "f")
    assert new_file(empty / "g") == empty / "g"
    # the command line: exit 2, one line naming the folder
    r = run_cli("keys", "new", empty)
    assert r.code == 2 and "folder exists and is not empty" in r.err and str(empty) in r.err
    assert run_cli("keys", "new", tmp_path / "empty2").code == 0
    e3 = tmp_path / "e3"
    e3.mkdir()
    assert run_cli("keys", "new", e3).code == 0 and (e3 / "key.pem").is_file()
