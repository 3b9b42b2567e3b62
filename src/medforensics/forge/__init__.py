"""Forgeries with ground truth. ``edits``: local 2D manipulations that return a change mask."""
from .edits import copy_move, inpaint_region, rescale_region, splice

__all__ = ["copy_move", "splice", "rescale_region", "inpaint_region"]
