"""Forensic detectors: one module per detector family, all registered through entry points."""
from .base import Detector, DetectorOptions, available_detectors, load_detectors, logistic, region_from_box, regions_from_heatmap

__all__ = ["Detector", "DetectorOptions", "available_detectors", "load_detectors", "logistic", "regions_from_heatmap",
           "region_from_box"]
