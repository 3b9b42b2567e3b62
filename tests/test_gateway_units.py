"""The gateway's parts without an archive: its settings file, its policy, the spool, the Storage SCP's
refusals (each followed by proof that it keeps serving), DICOM over TLS, and the ``gateway`` commands.

The SCP runs in this process on a free port with ``idle_seconds`` long enough that nothing is
checked or forwarded; a pynetdicom ``AE`` sends pydicom's own test files. End-to-end runs (an
archive, a crash, concurrent senders) are in tests/test_gateway.py.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (CTImageStorage, ModalityWorklistInformationFind, MRImageStorage,
                                  Verification)

from conftest import free_port
from medforensics.core import MedForensicsError, Verdict
from medforensics.gateway.config import Archive, GatewayConfig, load_config
from medforensics.gateway.policy import DEFAULT_POLICY, load_policy
from medforensics.gateway.queue import Queue
from medforensics.gateway.service import Gateway
from medforensics.gateway.spool import Spool

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT = get_testdata_file("CT_small.dcm")   # 39 kB, explicit VR little endian
MR = get_testdata_file("MR_small.dcm")   # 10 kB, explicit VR little endian
SUCCESS, NOT_AUTHORISED, OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0x0124, 0xA700, 0xA900, 0xC210


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def one_error(e: pytest.ExceptionInfo, *words: str) -> str:
    """The message of a MedForensicsError: one line naming every word of ``words``."""
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ---------------------------------------------------------------------------------------- settings
FULL_TOML = """
ae_title = "GW1"
host = "0.0.0.0"
port = 11200
spool = "spool"
queue = "db/queue.sqlite"
allow = ["CT_SCANNER", "CR_ROOM2@10.1.2.3"]
idle_seconds = 4.5
max_associations = 3
max_pdu = 32768
max_instance_mb = 12.5
workers = 2
policy = "policy.toml"
detectors = ["container", "ct_physics"]

[archive]
host = "pacs.example.org"
port = 4242
ae_title = "ORTHANC"
retry_seconds = 0.5
max_retry_seconds = 8

[tls]
cert = "tls/gw.pem"
key = "tls/gw.key"
ca = "tls/ca.pem"

[provenance]
trust = ["ca.pem", "other/ca2.pem"]
ledger = "postgresql://ledger@db/ledger"
watermark_key = "wm.key"
sign_with = ["signer.key", "signer.pem"]
log = "log.sqlite"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_settings_file_with_every_section(tmp_path):
    conf = write(tmp_path / "etc" / "gateway.toml", FULL_TOML)
    base = conf.parent
    cfg = load_config(conf)
    assert (cfg.ae_title, cfg.host, cfg.port) == ("GW1", "0.0.0.0", 11200)
    assert cfg.spool == base / "spool" and cfg.queue == str(base / "db" / "queue.sqlite")
    assert cfg.queue_location == str(base / "db" / "queue.sqlite")
    assert cfg.allow == ["CT_SCANNER", "CR_ROOM2@10.1.2.3"]
    assert (cfg.idle_seconds, cfg.max_associations, cfg.max_pdu, cfg.max_instance_mb, cfg.workers) == (4.5, 3, 32768,
                                                                                                       12.5, 2)
    assert cfg.policy == base / "policy.toml" and cfg.detectors == ["container", "ct_physics"]
    assert cfg.archive == Archive("pacs.example.org", 4242, "ORTHANC", 0.5, 8)
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == (base / "tls/gw.pem", base / "tls/gw.key", base / "tls/ca.pem")
    assert cfg.trust == [base / "ca.pem", base / "other/ca2.pem"]
    assert cfg.ledger == "postgresql://ledger@db/ledger"        # a URL stays a URL
    assert cfg.log == str(base / "log.sqlite")                   # a file is the file's folder's
    assert cfg.watermark_key == base / "wm.key"
    assert cfg.sign_with == (base / "signer.key", base / "signer.pem")


def test_defaults_without_a_file(tmp_path):
    cfg = load_config(None, spool=tmp_path)
    assert cfg == GatewayConfig(spool=tmp_path)
    assert cfg.queue_location == str(tmp_path / "queue.sqlite") and cfg.archive is None and cfg.allow == []


def test_command_line_overrides_the_file(tmp_path):
    conf = write(tmp_path / "g.toml", 'port = 11200\nae_title = "FROMFILE"\nallow = ["A"]\n[archive]\n'
                                      'host = "h"\nport = 1\n')
    cfg = load_config(conf, port=4000, ae_title=None, allow=["B@127.0.0.1"], archive=Archive.parse("pacs:104:PACS"),
                      spool=tmp_path / "cli-spool")
    assert cfg.port == 4000 and cfg.ae_title == "FROMFILE"      # None leaves the file's value
    assert cfg.allow == ["B@127.0.0.1"] and cfg.archive == Archive("pacs", 104, "PACS")
    assert cfg.spool == tmp_path / "cli-spool"


@pytest.mark.parametrize("text, words", [
    ("colour = 'blue'\n", ["unknown setting", "colour"]),
    ("port = 11112\nmax_instances = 3\n", ["unknown setting", "max_instances"]),
    ("port = \n", ["not valid TOML"]),
    ("[archive]\nhost = 'pacs'\n", ["[archive]", "host and port"]),
    ("[archive]\nhost = 'pacs'\nport = 104\ntitle = 'X'\n", ["[archive]", "title"]),
    ("idle_seconds = 'soon'\n", []),
])
def test_bad_settings_file_is_one_error_naming_the_file(tmp_path, text, words):
    conf = write(tmp_path / "bad.toml", text)
    with pytest.raises(MedForensicsError) as e:
        load_config(conf)
    one_error(e, str(conf), *words)


def test_settings_file_that_is_not_there_or_not_text(tmp_path):
    with pytest.raises(MedForensicsError) as e:
        load_config(tmp_path / "missing.toml")
    one_error(e, "missing.toml", "cannot be read")
    (tmp_path / "binary.toml").write_bytes(b"port = \xff\xfe\n")
    with pytest.raises(MedForensicsError) as e:
        load_config(tmp_path / "binary.toml")
    one_error(e, "binary.toml", "not valid TOML")


@pytest.mark.parametrize("text", ["[tls]\ncert = 'a.pem'\nkey = 'a.key'\nca_file = 'ca.pem'\n",
                                  "[provenance]\nsign-with = ['k', 'c']\n",
                                  "[provenance]\ntrusted = ['ca.pem']\n"])
def test_unknown_key_inside_a_section_is_refused(tmp_path, text):
    conf = write(tmp_path / "typo.toml", text)
    with pytest.raises(MedForensicsError) as e:
        load_config(conf)
    one_error(e, str(conf), "unknown")


@pytest.mark.parametrize("text, setting", [("port = true\n", "port"), ("allow = 'CT1'\n", "allow"),
                                           ("idle_seconds = '10'\n", "idle_seconds")])
def test_setting_of_the_wrong_type_is_refused_by_name(tmp_path, text, setting):
    conf = write(tmp_path / "types.toml", text)
    with pytest.raises(MedForensicsError) as e:
        load_config(conf)
    one_error(e, setting)


@pytest.mark.parametrize("overrides, words", [
    (dict(port=0), ["port", "not a TCP port"]),
    (dict(port=70000), ["port", "70000"]),
    (dict(ae_title="A" * 17), ["ae_title"]),
    (dict(ae_title="  "), ["ae_title"]),
    (dict(tls_cert="gw.pem"), ["tls", "both"]),
    (dict(tls_key="gw.key"), ["tls", "both"]),
    (dict(log="ledger.sqlite"), ["log", "sign_with"]),
    (dict(max_associations=0), ["max_associations"]),
    (dict(max_instance_mb=0), ["max_instance_mb"]),
    (dict(workers=0), ["workers"]),
])
def test_settings_that_cannot_work_name_the_setting(tmp_path, overrides, words):
    with pytest.raises(MedForensicsError) as e:
        load_config(None, spool=tmp_path, **overrides)
    one_error(e, *words)


def test_settings_checks_also_apply_to_the_file(tmp_path):
    for text, words in (("port = 99999\n", ["port"]), ("[tls]\ncert = 'gw.pem'\n", ["tls"]),
                        ("[provenance]\nlog = 'l.sqlite'\n", ["log", "sign_with"])):
        with pytest.raises(MedForensicsError) as e:
            load_config(write(tmp_path / "c.toml", text))
        one_error(e, *words)


def test_archive_parse():
    assert Archive.parse("pacs.example.org:104") == Archive("pacs.example.org", 104, "ANY-SCP")
    assert Archive.parse("10.0.0.1:4242:ORTHANC") == Archive("10.0.0.1", 4242, "ORTHANC")
    for bad in ("pacs", "pacs:", "pacs:http", "pacs:104:AE:extra", ":", "pacs:-1"):
        with pytest.raises(MedForensicsError) as e:
            Archive.parse(bad)
        one_error(e, "--archive", repr(bad))


def test_archive_port_out_of_range_is_refused(tmp_path):
    with pytest.raises(MedForensicsError):
        load_config(None, spool=tmp_path, archive=Archive.parse("pacs:99999"))


def test_allowed_by_ae_title_and_address():
    assert GatewayConfig().allowed("ANYONE", "192.0.2.1")                 # empty list: anyone
    cfg = GatewayConfig(allow=["CT1", "CR2@10.0.0.5"])
    assert cfg.allowed("CT1", "10.9.9.9") and cfg.allowed("CT1 ", "10.9.9.9")   # pynetdicom pads titles
    assert cfg.allowed("CR2", "10.0.0.5")
    assert not cfg.allowed("CR2", "10.0.0.50") and not cfg.allowed("CR2", "10.0.0.6")
    assert not cfg.allowed("CT2", "10.0.0.5") and not cfg.allowed("ct1", "10.9.9.9")


# ------------------------------------------------------------------------------------------ policy
def verdict(label, score=0.5, provenance="none", errors=()):
    return Verdict("s", "series", "1.2.3", 3, score, label, errors=list(errors), provenance=provenance)


@pytest.mark.parametrize("label, action", [("authentic", "forward_with_result"), ("suspicious", "quarantine"),
                                           ("manipulated", "quarantine"), ("synthetic", "quarantine")])
def test_default_policy_by_label(label, action):
    got, why = DEFAULT_POLICY.decide(verdict(label))
    assert got == action and f"label {label}" in why


def test_default_policy_holds_a_series_that_could_not_be_checked():
    # no score: the series could not be read or analysed, whatever label a caller put on it
    for v in (verdict(None, score=None, errors=["x.dcm: not a readable DICOM file"]),
              verdict("authentic", score=None, errors=["detector crashed"])):
        action, why = DEFAULT_POLICY.decide(v)
        assert action == "quarantine" and "label error" in why


@pytest.mark.parametrize("finding", ["signature:broken", "signature:untrusted", "watermark:tampered",
                                     "ledger:changed"])
def test_failed_proof_overrides_an_authentic_label(finding):
    action, why = DEFAULT_POLICY.decide(verdict("authentic", 0.01, provenance=f"signature:valid {finding}"))
    assert action == "quarantine" and f"provenance {finding}" in why and "label authentic" not in why
    assert DEFAULT_POLICY.decide(verdict("authentic", 0.01, provenance="signature:valid"))[0] == "forward_with_result"


def test_policy_file_changes_actions(tmp_path):
    p = write(tmp_path / "policy.toml", '[labels]\nsuspicious = "forward_with_result"\nauthentic = "forward"\n'
                                        '[provenance]\n"watermark:absent" = "quarantine"\n')
    policy = load_policy(p)
    assert policy.decide(verdict("suspicious"))[0] == "forward_with_result"
    assert policy.decide(verdict("authentic"))[0] == "forward"
    assert policy.decide(verdict("manipulated"))[0] == "quarantine"                 # left out: the default
    assert policy.decide(verdict("authentic", provenance="watermark:absent"))[0] == "quarantine"
    assert policy.decide(verdict("authentic", provenance="signature:broken"))[0] == "quarantine"
    assert load_policy(None) is DEFAULT_POLICY


@pytest.mark.parametrize("text, words", [
    ('[labels]\nforged = "quarantine"\n', ["unknown label", "forged"]),
    ('[labels]\nauthentic = "delete"\n', ["authentic", "'delete'", "forward"]),
    ('[provenance]\n"signature:broken" = "ignore"\n', ["signature:broken", "'ignore'"]),
    ('[rules]\nx = 1\n', ["unknown section", "rules"]),
    ('[labels\n', ["not valid TOML"]),
])
def test_bad_policy_file_is_one_line(tmp_path, text, words):
    p = write(tmp_path / "policy.toml", text)
    with pytest.raises(MedForensicsError) as e:
        load_policy(p)
    one_error(e, str(p), *words)
    with pytest.raises(MedForensicsError) as e:
        load_policy(tmp_path / "absent.toml")
    one_error(e, "absent.toml")


def test_gateway_refuses_a_bad_policy_before_it_listens(tmp_path):
    p = write(tmp_path / "policy.toml", '[labels]\nauthentic = "shrug"\n')
    with pytest.raises(MedForensicsError) as e:
        Gateway(load_config(None, spool=tmp_path / "spool", port=free_port(), policy=p))
    one_error(e, "policy.toml", "shrug")


# ------------------------------------------------------------------------------------------- spool
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.2", "1.2.826.0.1.3680043.2.1", "1.2.826.0.1.3680043.2.1.7"


def test_spool_keeps_the_bytes_and_never_replaces_a_copy(tmp_path):
    spool = Spool(tmp_path / "spool")
    data = Path(CT).read_bytes()
    first = spool.write(data, STUDY, SERIES, SOP)
    assert first == spool.root / "instances" / STUDY / SERIES / f"{SOP}.dcm"
    assert first.read_bytes() == data
    second = spool.write(b"another version", STUDY, SERIES, SOP)
    third = spool.write(b"and another", STUDY, SERIES, SOP)
    assert (second.name, third.name) == (f"{SOP}.2.dcm", f"{SOP}.3.dcm")
    assert first.read_bytes() == data and second.read_bytes() == b"another version"
    assert list((spool.root / "tmp").iterdir()) == []                  # no temporary left behind
    assert files_under(spool.instances) == {first, second, third}


@pytest.mark.parametrize("study, series, sop", [
    (STUDY, "..", SOP), (STUDY, SERIES, "../../../escaped"), ("..", "..", "x"), (STUDY, SERIES + "/..", SOP),
    (STUDY, "/tmp", SOP), (STUDY, SERIES, f"{SOP}/../../1"), (STUDY, SERIES, ""), (STUDY, SERIES, "1." + "2" * 70),
    (STUDY + "\n", SERIES, "1.2\x00.3"), ("1..2", SERIES, SOP),
])
def test_spool_refuses_a_uid_that_is_not_a_uid(tmp_path, study, series, sop):
    spool = Spool(tmp_path / "spool")
    before = files_under(tmp_path)
    folders = {p for p in tmp_path.rglob("*") if p.is_dir()}
    with pytest.raises(MedForensicsError) as e:
        spool.write(b"DICM", study, series, sop)
    one_error(e, "is not a DICOM UID")
    assert files_under(tmp_path) == before
    assert {p for p in tmp_path.rglob("*") if p.is_dir()} == folders


def test_spool_that_cannot_be_made_is_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MedForensicsError) as e:
        Spool(tmp_path / "file" / "spool")
    one_error(e, "cannot be used as the spool")


# ------------------------------------------------------------------------------------- the SCP
@pytest.fixture
def start_gateway(tmp_path):
    """``start_gateway(**settings)``: a running gateway on a free port, its spool in tmp_path,
    no archive, nothing checked (idle_seconds 3600); stopped at the end of the test."""
    running: list[Gateway] = []

    def start(**settings) -> Gateway:
        settings = {"spool": tmp_path / "spool", "port": free_port(), "idle_seconds": 3600, **settings}
        gw = Gateway(load_config(None, **settings))
        gw.start()
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()


def associate(gw: Gateway, ae_title: str = "MODALITY", contexts=(Verification, CTImageStorage, MRImageStorage),
              tls=None):
    """An association from ``ae_title`` to the gateway, offering each context in explicit VR
    little endian only (so that files are sent as they are)."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for cx in contexts:
        ae.add_requested_context(cx, EXPLICIT_LE)
    return ae.associate("127.0.0.1", gw.config.port, ae_title=gw.config.ae_title, tls_args=tls)


def status(response) -> int:
    assert response is not None and "Status" in response, f"no answer: {response!r}"
    return int(response.Status)


def store(assoc, path) -> int:
    return status(assoc.send_c_store(dcmread(path)))


def sop_of(path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def assert_still_serving(gw: Gateway, ae_title: str = "MODALITY", tls=None) -> None:
    """A new association: C-ECHO succeeds, and a good instance is stored and queued."""
    assoc = associate(gw, ae_title, tls=tls)
    assert assoc.is_established, "the gateway stopped accepting associations"
    try:
        assert status(assoc.send_c_echo()) == SUCCESS
        assert store(assoc, MR) == SUCCESS
    finally:
        assoc.release()
    row = gw.queue.instance(sop_of(MR))
    assert row is not None and dataset_bytes(row.path) == dataset_bytes(MR)


def dataset_bytes(path) -> bytes:
    """A DICOM file's bytes after its file meta: what went over the network (the preamble and
    file meta are the receiver's own)."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


def spooled(gw: Gateway) -> set[Path]:
    return files_under(gw.spool.instances)


def test_calling_ae_not_allowed_is_rejected_at_association(start_gateway):
    gw = start_gateway(allow=["MODALITY"])
    assoc = associate(gw, "INTRUDER")
    assert assoc.is_rejected and not assoc.is_established
    assert spooled(gw) == set()
    assert_still_serving(gw, "MODALITY")


def test_allowed_ae_from_another_address_is_not_authorised(start_gateway):
    gw = start_gateway(allow=["MODALITY", "CR2@192.0.2.7"])
    assoc = associate(gw, "CR2")          # the title is known, but it calls from 127.0.0.1
    assert assoc.is_established
    try:
        assert status(assoc.send_c_echo()) == NOT_AUTHORISED
        assert store(assoc, CT) == NOT_AUTHORISED
    finally:
        assoc.release()
    assert gw.queue.instance(sop_of(CT)) is None and spooled(gw) == set()
    assert gw.stats.refused == 1
    assert_still_serving(gw, "MODALITY")


def test_instance_larger_than_the_limit_is_refused(start_gateway):
    gw = start_gateway(max_instance_mb=0.02)     # 21 kB: CT_small (39 kB) is too large, MR_small (10 kB) is not
    assoc = associate(gw)
    try:
        assert store(assoc, CT) == OUT_OF_RESOURCES
    finally:
        assoc.release()
    assert gw.queue.instance(sop_of(CT)) is None and spooled(gw) == set()
    assert gw.queue.counts()["received"] == 0
    assert_still_serving(gw)


def test_dataset_without_series_uid_is_refused(start_gateway):
    gw = start_gateway()
    ds = dcmread(CT)
    del ds.SeriesInstanceUID
    assoc = associate(gw)
    try:
        assert status(assoc.send_c_store(ds)) == CANNOT_UNDERSTAND
    finally:
        assoc.release()
    assert gw.queue.instance(str(ds.SOPInstanceUID)) is None and spooled(gw) == set()
    assert_still_serving(gw)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")   # pydicom, on the sender's side
def test_dataset_with_a_path_for_a_uid_is_refused(start_gateway, tmp_path):
    gw = start_gateway()
    ds = dcmread(CT)
    ds.SeriesInstanceUID = "../../../../escaped"
    before = files_under(tmp_path)
    assoc = associate(gw)
    try:
        assert status(assoc.send_c_store(ds)) == CANNOT_UNDERSTAND
    finally:
        assoc.release()
    assert files_under(tmp_path) == before and not list(tmp_path.parent.glob("escaped*"))
    assert gw.queue.counts()["received"] == 0
    assert_still_serving(gw)


def _file_bytes(path) -> tuple[bytes, int]:
    """A DICOM file's bytes and where its dataset starts (after the file meta)."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes(), offset


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")   # pydicom, reading the garbage
def test_bytes_that_are_not_a_dataset_are_refused(start_gateway, tmp_path, monkeypatch):
    gw = start_gateway()
    data, offset = _file_bytes(CT)
    garbage = tmp_path / "garbage.dcm"          # CT_small's file meta, then bytes that are no dataset
    garbage.write_bytes(data[:offset] + b"\x08\x00\x16\x00" + bytes(range(256)) * 4)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)   # send the file's bytes as they are
    assoc = associate(gw)
    try:
        assert status(assoc.send_c_store(garbage)) == CANNOT_UNDERSTAND
    finally:
        assoc.release()
    assert gw.queue.counts()["received"] == 0 and spooled(gw) == set()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    assert_still_serving(gw)


@pytest.mark.parametrize("what", ["instance", "class"])
def test_request_that_differs_from_the_dataset_is_refused(start_gateway, tmp_path, monkeypatch, what):
    gw = start_gateway()
    data, offset = _file_bytes(CT)
    meta = data[:offset]
    if what == "instance":       # the file meta, hence the request, names another SOP instance
        real = sop_of(CT).encode()
        lie = real[:-1] + (b"9" if real[-1:] != b"9" else b"8")
    else:                        # ... or calls the CT image an MR image (the same length of UID)
        real, lie = CTImageStorage.encode(), MRImageStorage.encode()
    assert meta.count(real) == 1 and len(real) == len(lie)
    lying = tmp_path / "lying.dcm"
    lying.write_bytes(meta.replace(real, lie) + data[offset:])
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)   # send the file's bytes as they are
    assoc = associate(gw)
    try:
        assert status(assoc.send_c_store(lying)) == DOES_NOT_MATCH
    finally:
        assoc.release()
    assert gw.queue.counts()["received"] == 0 and spooled(gw) == set()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    assert_still_serving(gw)


def test_non_storage_sop_class_is_not_accepted(start_gateway):
    gw = start_gateway()
    assoc = associate(gw, contexts=(Verification, ModalityWorklistInformationFind, CTImageStorage))
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
        assert ModalityWorklistInformationFind not in accepted and ModalityWorklistInformationFind in rejected
        assert {Verification, CTImageStorage} <= accepted
        assert status(assoc.send_c_echo()) == SUCCESS
        assert store(assoc, CT) == SUCCESS
    finally:
        assoc.release()
    assert gw.queue.instance(sop_of(CT)).state == "received"


def test_associations_beyond_the_limit_are_rejected(start_gateway):
    gw = start_gateway(max_associations=1)
    first = associate(gw)
    assert first.is_established
    try:
        extra = associate(gw)
        assert extra.is_rejected and not extra.is_established
        assert status(first.send_c_echo()) == SUCCESS     # the first one is unaffected
        assert store(first, CT) == SUCCESS
    finally:
        first.release()
    assert gw.queue.instance(sop_of(CT)).state == "received"
    for _ in range(50):                                     # the slot is freed once the server sees the release
        if not gw._server.active_associations:
            break
        time.sleep(0.05)
    assert_still_serving(gw)


def test_success_only_after_the_instance_is_spooled_and_queued(start_gateway):
    gw = start_gateway()
    assoc = associate(gw, "CT_SCANNER")
    try:
        for path in (CT, MR):
            assert store(assoc, path) == SUCCESS
            # checked right after the answer, before anything else happens on this side
            row = gw.queue.instance(sop_of(path))
            assert row is not None and row.state == "received"
            assert Path(row.path).is_file() and dataset_bytes(row.path) == dataset_bytes(path)
            assert dcmread(row.path).file_meta.TransferSyntaxUID == EXPLICIT_LE
            assert Path(row.path).is_relative_to(gw.spool.instances)
            assert row.calling_ae == "CT_SCANNER" and row.peer == "127.0.0.1"
            assert row.transfer_syntax_uid == EXPLICIT_LE and row.size == Path(row.path).stat().st_size
    finally:
        assoc.release()
    assert [t.state for t in gw.queue.transitions(sop_of(CT))] == ["received"]
    assert gw.stats.received == 2 and gw.stats.refused == 0


def test_identical_resend_leaves_one_file_and_one_row(start_gateway):
    gw = start_gateway()
    assoc = associate(gw)
    try:
        assert store(assoc, CT) == SUCCESS
        assert store(assoc, CT) == SUCCESS
    finally:
        assoc.release()
    assoc = associate(gw)                     # and again on another association
    try:
        assert store(assoc, CT) == SUCCESS
    finally:
        assoc.release()
    assert len(spooled(gw)) == 1
    assert gw.queue.counts()["received"] == 1 and len(gw.queue.instances(str(dcmread(CT).SeriesInstanceUID))) == 1
    assert gw.stats.received == 1


def test_changed_resend_is_kept_beside_the_first_copy(start_gateway):
    gw = start_gateway()
    changed = dcmread(CT)
    changed.PatientName = "Changed^Afterwards"
    assoc = associate(gw)
    try:
        assert store(assoc, CT) == SUCCESS
        assert status(assoc.send_c_store(changed)) == SUCCESS
    finally:
        assoc.release()
    row = gw.queue.instance(sop_of(CT))
    assert dataset_bytes(row.path) == dataset_bytes(CT)                  # the queue keeps the first copy
    second = Path(row.path).with_name(f"{sop_of(CT)}.2.dcm")
    assert spooled(gw) == {Path(row.path), second}
    assert str(dcmread(second).PatientName) == "Changed^Afterwards"
    assert gw.queue.counts()["received"] == 1


def test_port_in_use_is_one_error_and_the_first_gateway_keeps_serving(start_gateway, tmp_path):
    gw = start_gateway()
    second = Gateway(load_config(None, spool=tmp_path / "other", port=gw.config.port, idle_seconds=3600))
    try:
        with pytest.raises(MedForensicsError) as e:
            second.start()
        one_error(e, f"127.0.0.1:{gw.config.port}", "cannot listen")
    finally:
        second.stop()
    assert_still_serving(gw)


@pytest.mark.parametrize("allow", [["A_TITLE_LONGER_THAN_16"], ["@10.0.0.5"]])
def test_allow_entry_that_is_not_an_ae_title_is_refused(tmp_path, allow):
    gw = None
    try:
        with pytest.raises(MedForensicsError) as e:
            gw = Gateway(load_config(None, spool=tmp_path / "spool", port=free_port(), allow=allow))
            gw.start()
        one_error(e, "allow")
    finally:
        if gw is not None:
            gw.stop()


# --------------------------------------------------------------------------------------------- TLS
def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medforensics gateway test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "gw.pem", folder / "gw.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_dicom_over_tls(start_gateway, tmp_path):
    cert, key = self_signed(tmp_path)
    gw = start_gateway(tls_cert=cert, tls_key=key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    tls = (client, "localhost")
    assoc = associate(gw, tls=tls)
    assert assoc.is_established
    try:
        assert status(assoc.send_c_echo()) == SUCCESS
        assert store(assoc, CT) == SUCCESS
    finally:
        assoc.release()
    assert gw.queue.instance(sop_of(CT)).state == "received"

    plain = associate(gw)                       # no TLS to a TLS port: no association
    assert not plain.is_established
    untrusting = associate(gw, tls=(ssl.create_default_context(ssl.Purpose.SERVER_AUTH), "localhost"))
    assert not untrusting.is_established        # a client that does not trust the certificate
    assert_still_serving(gw, tls=tls)


def test_tls_files_that_do_not_load_are_one_error(tmp_path):
    cert, key = self_signed(tmp_path)
    gw = Gateway(load_config(None, spool=tmp_path / "spool", port=free_port(), tls_cert=cert, tls_key=cert))
    try:
        with pytest.raises(MedForensicsError) as e:
            gw.start()
        one_error(e, "gw.pem", "TLS")
    finally:
        gw.stop()


# --------------------------------------------------------------------------------------------- CLI
def filled_queue(spool: Path) -> tuple[str, str]:
    """A queue in ``spool`` with one quarantined and one forwarding series: their UIDs."""
    q = Queue(spool / "queue.sqlite")
    try:
        for n, (series, decision, label) in enumerate((("1.2.9.1", "quarantine", "manipulated"),
                                                       ("1.2.9.2", "forward_with_result", "authentic"))):
            q.add_instance(sop_instance_uid=f"{series}.1", series_instance_uid=series, study_instance_uid="1.2.9",
                           sop_class_uid=CTImageStorage, transfer_syntax_uid=EXPLICIT_LE,
                           path=str(spool / f"{n}.dcm"), calling_ae="CT1", peer="127.0.0.1", size=10)
            q.record_check(series, label, 0.9 if decision == "quarantine" else 0.1, decision, {"why": "test"},
                           instances=[f"{series}.1"])
    finally:
        q.close()
    return "1.2.9.1", "1.2.9.2"


def assert_one_line_error(r, code: int, *words: str) -> None:
    assert r.code == code, (r.code, r.out, r.err)
    text = r.err.strip()
    assert "Traceback" not in r.err + r.out and len(text.splitlines()) == 1, r.err
    for w in words:
        assert w in text, (w, text)


def test_cli_list(run_cli, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    held, passing = filled_queue(spool)
    r = run_cli("gateway", "list", "--spool", spool)
    assert r.code == 0, r.err
    assert "2 series" in r.out and held in r.out and passing in r.out
    assert "quarantined" in r.out and "forwarding" in r.out and "manipulated" in r.out
    r = run_cli("gateway", "list", "--spool", spool, "--state", "quarantined")
    assert r.code == 0 and "1 series" in r.out and held in r.out and passing not in r.out, r.err
    assert_one_line_error(run_cli("gateway", "list", "--spool", spool, "--state", "lost"), 1, "lost")


def test_cli_list_json_lines(run_cli, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    held, passing = filled_queue(spool)
    r = run_cli("gateway", "list", "--spool", spool, "--json")
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines() if line.strip()]
    assert [(x["series_instance_uid"], x["state"], x["label"]) for x in rows] == [
        (held, "quarantined", "manipulated"), (passing, "forwarding", "authentic")]


def test_cli_release_and_reject_need_a_quarantined_series(run_cli, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    held, passing = filled_queue(spool)
    for action in ("release", "reject"):
        r = run_cli("gateway", action, passing, "--who", "dr.x", "--why", "looked", "--spool", spool)
        assert_one_line_error(r, 1, passing, "not quarantined")
        r = run_cli("gateway", action, "1.2.9.999", "--who", "dr.x", "--why", "looked", "--spool", spool)
        assert_one_line_error(r, 1, "1.2.9.999")
    r = run_cli("gateway", "reject", held, "--who", "dr.x", "--why", "edited after acquisition", "--spool", spool)
    assert r.code == 0 and held in r.out and "dr.x" in r.out, r.err
    assert_one_line_error(run_cli("gateway", "release", held, "--who", "dr.y", "--why", "oops", "--spool", spool),
                          1, "rejected, not quarantined")
    with Queue(spool / "queue.sqlite") as q:
        assert q.series(held).state == "rejected" and q.instance(f"{held}.1").state == "rejected"
        assert [(a.who, a.action) for a in q.audit()] == [("dr.x", "reject")]


def test_cli_reject_says_rejected(run_cli, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    held, _ = filled_queue(spool)
    r = run_cli("gateway", "reject", held, "--who", "dr.x", "--why", "edited", "--spool", spool)
    assert r.code == 0 and f"{held}: rejected by dr.x" in r.out, (r.out, r.err)


def test_cli_audit_export_writes_a_new_file_only(run_cli, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    held, _ = filled_queue(spool)
    assert run_cli("gateway", "release", held, "--who", "dr.x", "--why", "known artefact", "--spool", spool).code == 0
    r = run_cli("gateway", "audit", "--spool", spool)
    assert r.code == 0 and "dr.x" in r.out and "release" in r.out, r.err
    export = tmp_path / "audit.jsonl"
    r = run_cli("gateway", "audit", "--spool", spool, "--export", export)
    assert r.code == 0, r.err
    entries = [json.loads(line) for line in export.read_text().splitlines()]
    assert [(e["who"], e["action"], e["series_instance_uid"], e["why"], e["before"], e["after"]) for e in entries] \
        == [("dr.x", "release", held, "known artefact", "quarantined", "released")]
    before = export.read_bytes()
    assert_one_line_error(run_cli("gateway", "audit", "--spool", spool, "--export", export), 2, "already exists")
    assert export.read_bytes() == before


def test_cli_run_with_bad_settings_is_one_line(run_cli, tmp_path):
    bad = write(tmp_path / "gateway.toml", "port = 11112\n[tls]\ncert = 'gw.pem'\nkey = \n")
    assert_one_line_error(run_cli("gateway", "run", "--config", bad), 1, "gateway.toml", "not valid TOML")
    unknown = write(tmp_path / "unknown.toml", "listen = 11112\n")
    assert_one_line_error(run_cli("gateway", "run", "--config", unknown), 1, "unknown.toml", "listen")
    good = write(tmp_path / "good.toml", f"spool = 'spool'\nport = {free_port()}\n")
    assert_one_line_error(run_cli("gateway", "run", "--config", good, "--archive", "pacs-without-port"), 1,
                          "--archive")
    assert_one_line_error(run_cli("gateway", "run", "--config", good, "--port", "70000"), 1, "port")
    assert not (tmp_path / "spool").exists()          # refused before anything was made


def test_an_error_message_keeps_its_square_brackets(tmp_path, run_cli):
    """Rich would read "[labels]" in a message as markup and drop it."""
    bad = tmp_path / "policy.toml"
    bad.write_text('[labels]\nauthentic = "send"\n')
    r = run_cli("gateway", "run", "--policy", bad, "--spool", tmp_path / "spool")
    assert r.code == 1 and "policy [labels] authentic: 'send' is not one of" in r.err, r.err
    assert not (tmp_path / "spool").exists()
