"""Provenance commands of the ``medforensics`` command line. Each lives beside the code it drives
and registers itself on the top-level app when imported:

* ``keys new`` (:mod:`._cli_keys`) -- a signing identity for trying things out and for tests;
* ``sign`` and ``verify`` (:mod:`._cli_sign`) -- DICOM digital signatures (and C2PA manifests of
  PNG/JPEG files in ``verify``);
* ``export`` (:mod:`._cli_export`) -- PNG/JPEG exports carrying a C2PA manifest;
* ``ledger add|verify|prove|serve`` (:mod:`._cli_ledger`) -- the transparency log;
* ``watermark embed|check|restore`` (:mod:`._cli_watermark`) -- the reversible fragile watermark.
"""
from . import _cli_keys, _cli_sign, _cli_export, _cli_ledger, _cli_watermark  # noqa: F401
