"""Forgeries with ground truth. ``edits``: local 2D manipulations that return a change mask."""
from .edits import copy_move, inpaint_region, rescale_region, splice
from .edits import (contrast_region, forge_contrast, forge_copymove, forge_inpaint, forge_intensity,  # noqa: E402
                    forge_resample, forge_splice, intensity_region, resample_region)

__all__ = ["copy_move", "splice", "rescale_region", "inpaint_region"]
__all__ += ["intensity_region", "contrast_region", "resample_region", "forge_copymove", "forge_splice",
            "forge_inpaint", "forge_intensity", "forge_contrast", "forge_resample"]
