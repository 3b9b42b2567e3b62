"""Reports for people: figures (thumbnails, overlays) and the self-contained HTML report."""
from .figures import overlay_png, render_figures
from .html import write_report

__all__ = ["render_figures", "overlay_png", "write_report"]
