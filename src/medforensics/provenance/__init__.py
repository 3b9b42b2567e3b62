"""Active protection: proof of where an image came from and that it is unchanged.

* :mod:`.keys` -- signing identities (private key, X.509 certificate, chain).
* :mod:`.signature` -- DICOM Digital Signatures (PS3.15 profiles, PS3.3 (FFFA,FFFA)),
  interoperable with DCMTK's ``dcmsign``.
* :mod:`.c2pa_manifest` -- PNG/JPEG exports carrying a C2PA manifest; reading incoming manifests.
* :mod:`.ledger` -- an append-only Merkle-tree transparency log (RFC 6962/9162 style) of image
  fingerprints, with signed tree heads, inclusion and consistency proofs.
* :mod:`.watermark` -- a reversible fragile watermark for 12-16-bit pixel data.

Each is a tool of its own (``medforensics sign|verify|export|ledger|watermark``, in
:mod:`medforensics.cli`) and a source of evidence in ``scan`` (the ``provenance`` and
``container`` detectors).
"""
