"""A tamper-evident transparency log of image fingerprints: an append-only Merkle tree (RFC 6962 /
RFC 9162 style) with signed tree heads, inclusion and consistency proofs.

Each logged image is a :class:`Fingerprint` -- a key (the SOP Instance UID of a DICOM instance,
the pixel hash of a PNG/JPEG/TIFF/NIfTI), a hash of the decoded stored pixel values and a hash
of the identifying header attributes (:data:`HEADER_ATTRIBUTES`) -- written as canonical JSON
leaf bytes with a timestamp. The log lives in SQLite (a path or ``sqlite:///path``) or PostgreSQL
(``postgresql://...``); every batch of appends is one transaction that ends with a new tree head
signed by the log's key (Ed25519, ECDSA P-256 or RSA). Anyone holding the log's public key can
check a proof bundle (:func:`check_bundle`) without access to the log.

>>> import tempfile
>>> from pathlib import Path
>>> import pydicom
>>> from pydicom.data import get_testdata_file
>>> ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
>>> folder = tempfile.TemporaryDirectory()
>>> log = Ledger.create(Path(folder.name) / "fingerprints.db", generate_key())
>>> log.append([fingerprint(ct), fingerprint(mr)])
[0, 1]
>>> log.lookup(fingerprint(ct)).status, log.size
('unchanged', 2)

An edited copy of a logged instance (same SOP Instance UID) is found and named as changed:

>>> ds = pydicom.dcmread(ct)
>>> ds.PatientName = "Someone^Else"
>>> res = log.lookup(fingerprint(ds))
>>> res.status, res.changed, res.leaf_index
('changed', ('header',), 0)

A proof bundle is checked with the log's public key alone:

>>> bundle = log.prove(ct)
>>> check = check_bundle(bundle, log.public_key_pem(), image=ct)
>>> check.ok, check.leaf_index, check.tree_size
(True, 0, 2)
>>> log.close(); folder.cleanup()

Storage keeps the hash of every complete subtree (``ledger_nodes``), so an append reads at most
``log2 n`` nodes and writes about two rows per leaf, and a proof reads ``O(log n)`` nodes.

The package has one module per job: :mod:`~medforensics.provenance.ledger.log` (fingerprints,
the Merkle tree, signed tree heads, proofs, audits, write tokens, :class:`Ledger`),
:mod:`~medforensics.provenance.ledger.store` (SQLite and PostgreSQL storage),
:mod:`~medforensics.provenance.ledger.api` (the HTTP API, :func:`create_app`, whose writes need a
bearer token and stay within :class:`WriteLimits`) and
:mod:`~medforensics.provenance.ledger.client` (:class:`RemoteLog`, appending to a served log). Keys are loaded
with :mod:`medforensics.provenance.keys`.
"""
from __future__ import annotations

from .log import (BUNDLE_FORMAT, ENV_KEY, ENV_LOG, HEADER_ATTRIBUTES, KINDS, TOKEN_PREFIX, AuditReport,  # noqa: F401
                  BundleCheck, Entry, Fingerprint, Ledger, LookupResult, TokenInfo, TreeHead, check_bundle, default_log,
                  fingerprint, generate_key, load_private_key, verify_consistency, verify_inclusion, verify_tree_head)
from .api import WriteLimits, create_app, parse_entry
from .client import RemoteLog, is_remote

__all__ = ["Fingerprint", "fingerprint", "HEADER_ATTRIBUTES", "KINDS", "TreeHead", "Entry", "LookupResult",
           "AuditReport", "BundleCheck", "TokenInfo", "TOKEN_PREFIX", "Ledger", "verify_inclusion", "verify_consistency",
           "verify_tree_head", "check_bundle", "generate_key", "load_private_key", "default_log", "create_app",
           "WriteLimits", "parse_entry", "RemoteLog", "is_remote", "ENV_LOG", "ENV_KEY", "BUNDLE_FORMAT"]
