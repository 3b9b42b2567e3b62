"""medforensics: was this medical image generated or altered, where, and why.

>>> import medforensics as mf
>>> from medforensics.io import load
>>> from medforensics.scan import analyze
>>> from pydicom.data import get_testdata_file
>>> image = load(get_testdata_file("CT_small.dcm"))[0]
>>> verdict = analyze(image)
>>> verdict.kind, verdict.label in mf.LABELS, sorted(verdict.to_dict())[:3]
('image', True, ['assessed_by', 'errors', 'evidence'])

Folders and many files: :func:`medforensics.scan.scan` (a generator of verdicts, with worker
processes) or :func:`medforensics.scan.run_scan` (what ``medforensics scan`` does).
"""
from .core import LABELS, SCHEMA_VERSION, Evidence, Image, Label, MedForensicsError, Region, Verdict

__version__ = "0.1.0"
__all__ = ["Image", "Evidence", "Region", "Verdict", "Label", "LABELS", "MedForensicsError", "SCHEMA_VERSION",
           "__version__"]
