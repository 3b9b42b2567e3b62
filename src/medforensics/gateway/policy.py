"""What the gateway does with a checked series: forward it, forward it with its result, or hold it.

A policy file (TOML) names an action per label of the fused verdict, and per provenance
finding (the words of ``Verdict.provenance``, such as ``signature:broken``). The most cautious
action that applies wins: ``quarantine`` over ``forward_with_result`` over ``forward``.

.. code-block:: toml

    [labels]                      # authentic, suspicious, manipulated, synthetic, error
    authentic = "forward_with_result"
    suspicious = "quarantine"
    manipulated = "quarantine"
    synthetic = "quarantine"
    error = "quarantine"          # the series could not be read or checked

    [provenance]                  # a proof that fails holds the series whatever the label
    "signature:broken" = "quarantine"
    "watermark:tampered" = "quarantine"
    "ledger:changed" = "quarantine"

A label or finding the file leaves out keeps the default below.

>>> from medforensics.core import Verdict
>>> v = Verdict("s", "series", "1.2.3", 3, 0.2, "authentic", provenance="signature:broken")
>>> DEFAULT_POLICY.decide(v)
('quarantine', 'provenance signature:broken: quarantine')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core import LABELS, MedForensicsError, Verdict
from .config import read_toml

__all__ = ["ACTIONS", "DEFAULT_POLICY", "Policy", "load_policy"]

#: Actions, least cautious first.
ACTIONS = ("forward", "forward_with_result", "quarantine")

_DEFAULT_LABELS = {"authentic": "forward_with_result", "suspicious": "quarantine",
                   "manipulated": "quarantine", "synthetic": "quarantine", "error": "quarantine"}
_DEFAULT_PROVENANCE = {"signature:broken": "quarantine", "signature:untrusted": "quarantine",
                       "watermark:tampered": "quarantine", "ledger:changed": "quarantine"}


@dataclass(frozen=True)
class Policy:
    """An action per label and per provenance finding (see the module's description)."""

    labels: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_LABELS))
    provenance: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_PROVENANCE))

    def __post_init__(self) -> None:
        for where, table in (("labels", self.labels), ("provenance", self.provenance)):
            for key, action in table.items():
                if action not in ACTIONS:
                    raise MedForensicsError(f"policy [{where}] {key}", f"{action!r} is not one of {', '.join(ACTIONS)}")
        unknown = set(self.labels) - set(LABELS) - {"error"}
        if unknown:
            raise MedForensicsError("policy [labels]", f"unknown label(s) {', '.join(sorted(unknown))}; "
                                    f"known: {', '.join(LABELS)}, error")

    def decide(self, verdict: Verdict) -> tuple[str, str]:
        """The action for ``verdict`` and why (the rules that chose it)."""
        label = verdict.label or "error"
        if verdict.errors and verdict.score is None:
            label = "error"
        rules = [(self.labels.get(label, _DEFAULT_LABELS.get(label, "quarantine")), f"label {label}")]
        for word in (verdict.provenance or "").split():
            if word in self.provenance:
                rules.append((self.provenance[word], f"provenance {word}"))
        action = max((a for a, _ in rules), key=ACTIONS.index)
        return action, "; ".join(f"{why}: {a}" for a, why in rules if a == action)


DEFAULT_POLICY = Policy()


def load_policy(path: str | Path | None) -> Policy:
    """The policy of a TOML file over the defaults (``None``: the defaults)."""
    if path is None:
        return DEFAULT_POLICY
    path = Path(path)
    raw = read_toml(path)
    unknown = set(raw) - {"labels", "provenance"}
    if unknown:
        raise MedForensicsError(path, f"unknown section(s) {', '.join(sorted(unknown))}: [labels] and [provenance]")
    try:
        return Policy({**_DEFAULT_LABELS, **raw.get("labels", {})}, {**_DEFAULT_PROVENANCE, **raw.get("provenance", {})})
    except MedForensicsError as e:
        raise MedForensicsError(path, str(e)) from None
