"""Evidence to verdict: a fused score and a label, with documented, configurable thresholds.

Each detector's score is already a calibrated probability that the image was manipulated or
synthesised, as far as that detector can tell. Fusion combines them with a noisy-OR over the
evidence that reaches ``min_evidence``::

    fused = 1 - prod(1 - s_i  for s_i >= min_evidence)       (max(s_i) when none does)

so one strong piece of evidence decides on its own and two moderate, independent ones add up
(0.45 and 0.45 give 0.70), while the many near-zero scores of a clean image do not. The label:

============  ===========================================================
authentic     fused < ``suspicious`` (default 0.5)
suspicious    ``suspicious`` <= fused < ``manipulated`` (default 0.8), or fused >= ``manipulated``
              without corroboration (below)
manipulated   fused >= ``manipulated``, strongest evidence points to an edit
synthetic     fused >= ``manipulated``, strongest evidence points to synthesis
============  ===========================================================

Independent evidence counts once, and not every trace is evidence of manipulation:

* Evidence that ``indicates`` ``processing`` (a JPEG saved twice, a resize: what every export
  does) is reported with the verdict but left out of the fused score.
* Evidence of ``low`` ``confidence`` (a rule or model whose alarms outside its fitted sources are
  not rare enough) counts in the score but cannot make an image ``manipulated`` or ``synthetic``
  alone: that takes corroboration -- normal-confidence evidence whose own fused score reaches
  ``suspicious``, or low-confidence evidence from at least two detectors that each reach
  ``suspicious``. Without it the label stops at ``suspicious``.

>>> from medforensics.core import Evidence
>>> fuse([Evidence("a", 0.45, ""), Evidence("b", 0.45, "")])[1]
'suspicious'
>>> fuse([Evidence("container", 0.99, "saved twice", indicates="processing")])
(0.0, 'authentic')
>>> fuse([Evidence("learned_2d", 0.95, "", confidence="low")])[1]
'suspicious'
>>> fuse([Evidence("learned_2d", 0.95, "", confidence="low"), Evidence("noise_residual", 0.9, "")])[1]
'manipulated'
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from .core import Confidence, Evidence, Indicates, Label, MedForensicsError


@dataclass(frozen=True)
class FusionConfig:
    """Thresholds of the fused score; see the module docstring."""

    suspicious: float = 0.5
    manipulated: float = 0.8
    min_evidence: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_evidence <= self.suspicious <= self.manipulated <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= min_evidence <= suspicious <= manipulated <= 1, got "
                             f"{self.min_evidence}, {self.suspicious}, {self.manipulated}")

    @classmethod
    def from_toml(cls, path: str | Path) -> "FusionConfig":
        """Read the ``[fusion]`` table of a TOML file (keys: suspicious, manipulated, min_evidence)."""
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f).get("fusion", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise MedForensicsError(path, f"cannot read configuration: {e}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(table) - known
        if unknown:
            raise MedForensicsError(path, f"unknown [fusion] keys: {', '.join(sorted(unknown))}")
        try:
            return cls(**{k: float(v) for k, v in table.items()})
        except (TypeError, ValueError) as e:
            raise MedForensicsError(path, str(e)) from None


def fuse(evidence: Sequence[Evidence], config: FusionConfig = FusionConfig()) -> tuple[float, Label]:
    """Fused score and label for a list of evidence (an empty list is authentic with score 0);
    see the module docstring for the rule."""
    counted = [e for e in evidence if e.counts]
    if not counted:
        return 0.0, Label.AUTHENTIC
    strong = [e.score for e in counted if e.score >= config.min_evidence]
    if strong:
        score = _noisy_or(strong)
    else:
        score = max(e.score for e in counted)
    if score < config.suspicious:
        return score, Label.AUTHENTIC
    if score < config.manipulated or not corroborated(counted, config):
        return score, Label.SUSPICIOUS
    top = max(counted, key=lambda e: e.score)
    return score, Label.SYNTHETIC if top.indicates == Indicates.SYNTHESIS else Label.MANIPULATED


def _noisy_or(scores: Sequence[float]) -> float:
    p_clean = 1.0
    for s in scores:
        p_clean *= 1.0 - s
    return 1.0 - p_clean


def corroborated(evidence: Sequence[Evidence], config: FusionConfig = FusionConfig()) -> bool:
    """Whether ``evidence`` may make an image manipulated or synthetic: its normal-confidence part
    alone reaches ``suspicious``, or low-confidence evidence of two detectors each does."""
    counted = [e for e in evidence if e.counts]
    firm = _noisy_or([e.score for e in counted if e.confidence == Confidence.NORMAL and e.score >= config.min_evidence])
    if firm >= config.suspicious:
        return True
    return len({e.detector for e in counted if e.confidence == Confidence.LOW and e.score >= config.suspicious}) >= 2
