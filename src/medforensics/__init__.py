"""medforensics: was this medical image generated or altered, where, and why.

>>> import medforensics as mf
>>> images = mf.io.load("study/")          # doctest: +SKIP
>>> verdicts = [mf.analyze(im) for im in images]   # doctest: +SKIP
"""
from .core import SCHEMA_VERSION, Evidence, Image, MedForensicsError, Region, Verdict

__version__ = "0.1.0"
__all__ = ["Image", "Evidence", "Region", "Verdict", "MedForensicsError", "SCHEMA_VERSION", "__version__"]
