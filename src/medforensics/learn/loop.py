"""The one training loop of the package: device, seed, threads, step and time budgets, progress.

Every trainer (the VAE synthesiser :mod:`medforensics.forge.synth`, the in-painting GAN
:mod:`medforensics.forge.gan`, the 2D classifiers :mod:`medforensics.learn.train`, the CT patch
model :mod:`medforensics.learn.ct3d`, the autoencoder :mod:`medforensics.learn.autoencoder` and
the generator zoo :mod:`medforensics.forge.zoo.families`) keeps its networks, losses and
optimisers to itself and hands this loop one function, ``step(i)``, that does one optimisation
step and returns the numbers to show (MONAI style: the networks stay apart from the loop).
:func:`fit` runs it for a number of steps or until a time budget is spent, shows a progress bar
(:func:`medforensics.progress.progress_bar`) or calls a progress function, and keeps a history.

>>> res = fit(lambda i: {"loss": 1.0 / (i + 1)}, steps=5, desc="toy", progress=False, log_every=2)
>>> res.steps_done, res.stopped_by, [h["step"] for h in res.history]
(5, 'steps', [1, 3, 5])
>>> def step(i):
...     if i == 2:
...         raise Converged
...     return {}
>>> fit(step, steps=10, progress=False).stopped_by
'converged'

The budget is checked after each step, so a run makes at least one step (when ``steps`` is not 0)
and ``stopped_by`` is ``max_minutes`` whenever the budget was spent when the run ended.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..core import MedForensicsError

__all__ = ["FitResult", "Converged", "fit", "pick_device", "seed_everything", "torch_threads"]


class Converged(Exception):
    """Raised by a step function to end :func:`fit` early (``stopped_by == "converged"``); the
    step that raises it is not counted."""


@dataclass
class FitResult:
    """What :func:`fit` did: ``steps_done``; ``stopped_by`` -- ``steps`` (all were done),
    ``max_minutes`` (the time budget ran out) or ``converged`` (the step function said so);
    ``wall_time_s`` since the budget's start; ``history`` -- the step's values every
    ``log_every`` steps, as ``{"step": n, **values}`` (floats rounded to 5 digits); ``device``."""

    steps_done: int = 0
    stopped_by: str = "steps"
    wall_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record a model card keeps: steps done, what stopped the run, wall time, history."""
        return {"steps_done": self.steps_done, "stopped_by": self.stopped_by, "wall_time_s": self.wall_time_s,
                "history": self.history}


def pick_device(name: "str | Any | None" = None):
    """The torch device called ``name``: ``None`` or ``auto`` is CUDA when available, else the
    CPU; asking for ``cuda`` (or ``cuda:N``) without a CUDA device is a :class:`MedForensicsError`."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise MedForensicsError(None, f"device {name} asked for, but no CUDA device is available")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise MedForensicsError.wrap(None, e, f"unknown device {name!r}") from None


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA) with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (``None`` or 0: leave torch's setting); the old
    setting is restored afterwards."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _text(values: Mapping[str, Any] | None) -> str:
    if not values:
        return ""
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def fit(step: Callable[[int], "Mapping[str, Any] | None"], *, steps: int | None = None, max_minutes: float = 0.0,
        desc: str = "training", progress: "bool | Callable[[int, int | None, str], None]" = True,
        device: "str | Any | None" = None, seed: int | None = None, log_every: int | None = None,
        start: float | None = None) -> FitResult:
    """Run ``step(0)``, ``step(1)``, ... until ``steps`` are done or ``max_minutes`` have passed.

    Parameters
    ----------
    step : callable
        ``step(i)`` does optimisation step ``i`` (from 0) and returns a dict of numbers to show and
        keep (losses), or None. Raising :class:`Converged` ends the run early.
    steps : int, optional
        How many steps; ``None`` runs until the time budget is spent (which must then be set).
    max_minutes : float
        Time budget in minutes (0: none), checked after every step, counted from ``start``.
    desc : str
        Label of the progress bar.
    progress : bool or callable
        ``True``: a progress bar (:func:`medforensics.progress.progress_bar`, shown on a terminal);
        ``False``: nothing; a callable: ``progress(steps_done, steps, text)`` after every step.
    device : str, optional
        Checked with :func:`pick_device` and recorded in the result (the step function moves its
        own tensors).
    seed : int, optional
        When given, :func:`seed_everything` is called before the first step.
    log_every : int, optional
        Keep the step's values in the history at the first step and every ``log_every`` steps
        after, and at the last of ``steps`` (default: a tenth of ``steps``; 100 without ``steps``).
    start : float, optional
        ``time.time()`` from which the budget counts (default: now), so that a trainer's budget can
        include loading its data.
    """
    if steps is None and not max_minutes:
        raise ValueError("fit needs steps or max_minutes (it would never end)")
    dev = str(pick_device(device)) if device is not None else None
    if seed is not None:
        seed_everything(seed)
    t0 = time.time() if start is None else float(start)
    every = max(1, int(log_every) if log_every else (steps // 10 if steps else 100))
    budget = 60.0 * max_minutes if max_minutes else 0.0
    res = FitResult(device=dev)
    bar_cm = contextlib.nullcontext(None)
    if progress is True:
        from ..progress import progress_bar
        bar_cm = progress_bar(desc, show=None)
    with bar_cm as bar:
        task = bar.add_task(desc, total=steps) if bar is not None else None
        i = 0
        while steps is None or i < steps:
            try:
                values = step(i)
            except Converged:
                res.stopped_by = "converged"
                break
            i += 1
            res.steps_done = i
            values = dict(values or {})
            if (i - 1) % every == 0 or i == steps:
                res.history.append({"step": i, **{k: round(float(v), 5) if isinstance(v, (float, np.floating)) else v
                                                  for k, v in values.items()}})
            if bar is not None:
                bar.update(task, completed=i, description=f"{desc} {_text(values)}".strip())
            elif callable(progress):
                progress(i, steps, _text(values))
            if budget and time.time() - t0 >= budget:
                res.stopped_by = "max_minutes"
                break
    res.wall_time_s = round(time.time() - t0, 1)
    return res
