"""Forgeries with ground truth. ``edits``: local 2D manipulations that return a change mask."""
from .edits import copy_move, inpaint_region, rescale_region, splice
from .edits import (contrast_region, forge_contrast, forge_copymove, forge_inpaint, forge_intensity,  # noqa: E402
                    forge_resample, forge_splice, intensity_region, resample_region)

__all__ = ["copy_move", "splice", "rescale_region", "inpaint_region"]
__all__ += ["intensity_region", "contrast_region", "resample_region", "forge_copymove", "forge_splice",
            "forge_inpaint", "forge_intensity", "forge_contrast", "forge_resample"]
# ``ct``: 3D CT nodule injection and removal (CT-GAN style); ``lidc``: LIDC-IDRI annotations.
from . import ct, lidc  # noqa: E402
from .ct import inject, remove  # noqa: E402
from .lidc import nodules_for  # noqa: E402

__all__ += ["ct", "lidc", "inject", "remove", "nodules_for"]
# ``synth``: whole synthetic radiographs from a small generative model, finished like real files.
from . import synth  # noqa: E402
from .synth import synthesize, write_synthetic  # noqa: E402

__all__ += ["synth", "synthesize", "write_synthetic"]
