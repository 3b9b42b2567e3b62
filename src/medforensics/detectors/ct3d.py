"""Learned CT patch detector: the 3D patch model (:mod:`medforensics.learn.ct3d`) scanned over a
series' lungs by sliding window, giving a heatmap and regions of cubes that look manipulated
(a tumour injected or removed, CT-GAN style)."""
from __future__ import annotations

from pathlib import Path

from ..core import Evidence, Image
from .base import Detector


class CTPatch3DDetector(Detector):
    """Sliding-window 3D patch model over the lungs of a CT series (shipped checkpoint
    ``models/ct3d.safetensors``, loaded once per process)."""

    name = "ct_patch3d"
    description = "learned 3D patch model: cubes of the lungs that look like an injected or removed tumour"
    modalities = frozenset({"CT"})
    needs_physical_units = True   # CT crops are read in HU
    dims = frozenset({3})
    formats = frozenset({"dicom", "nifti"})
    # Not in the default scan yet: trained on one patient, it flags a real 31 mm tumour of a held-out
    # patient and finds 2-4 false regions per authentic series (docs/learn/ct3d.md).
    default = False

    def __init__(self, checkpoint: str | Path | None = None, threshold: float = 0.5):
        self.checkpoint = checkpoint
        self.threshold = threshold

    def detect(self, image: Image) -> Evidence:
        from ..learn.ct3d import load_model, scan

        _, card = load_model(self.checkpoint)
        s = scan(image, model_path=self.checkpoint, threshold=self.threshold)
        details = {"n_windows": s.n_windows, "n_refined": s.n_refined, "seconds": round(s.seconds, 2),
                   "threshold": self.threshold, "cell_voxels": [4, 16, 16],
                   "model": {"trained_on": card.get("data", {}).get("patients"),
                             "validation_auc": card.get("metrics", {}).get("validation_auc")}}
        if not s.lung_found:
            return Evidence(self.name, 0.0, "no lung parenchyma found, so the CT patch model has nothing to scan",
                            details=details)
        heatmap = s.heatmap(image.pixels.shape)
        if s.regions:
            top = s.regions[0]
            k, i, j = top.center_voxel
            expl = (f"{len(s.regions)} cube(s) of the lungs look manipulated to the 3D patch model; the strongest "
                    f"(p={top.score:.2f}) is centred at slice {k}, row {i}, column {j}")
        else:
            expl = f"no cube of the lungs looks manipulated to the 3D patch model (highest p={s.score:.2f} over {s.n_windows} windows)"
        return Evidence(self.name, s.score, expl, heatmap=heatmap, regions=s.regions, details=details)
