"""DICOM header forensics: what the header says against itself, its series and its pixels.

Each check yields findings with a severity weight:

* ``strong`` (3.0): alone enough to call the image manipulated — a missing or duplicated
  slice, a UID or patient identity that changes inside a series, pixel values that the header
  says cannot exist, an image editor named in the header.
* ``moderate`` (1.5): an acquisition parameter that changes on a few slices, instance numbers or
  acquisition times against the slice order, a date in the future, HU that do not look like
  CT, a window far outside the data.
* ``weak`` (0.5): traces that de-identification and conversion pipelines also leave (they are
  common in public data sets): research or scripting tools named in a single instance, dates
  that precede the StudyDate, a single instance whose SOPInstanceUID was made under another
  root than its series and study.

The raw statistic is the sum of the weights; the score is ``logistic(raw, 1.2, 0.3)``: nothing
gives 0.02, one weak trace 0.09, two weak traces 0.34, one moderate finding 0.73, one strong
finding or two moderate ones 0.99+. The constants were set so that every authentic DICOM file
and series in ../shared/data and in pydicom-data stays below 0.5
(``benchmarks/authentic_rate.py``).
"""
from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ..core import Evidence, Image
from .base import Detector, logistic, region_from_box

SEVERITY = {"strong": 3.0, "moderate": 1.5, "weak": 0.5}
MIDPOINT, SCALE = 1.2, 0.3

#: Attributes that must not change within one series, with the severity of a change.
CONSTANT_IN_SERIES = {
    "StudyInstanceUID": "strong", "SeriesInstanceUID": "strong", "FrameOfReferenceUID": "strong",
    "PatientID": "strong", "PatientName": "strong", "PatientBirthDate": "strong", "PatientSex": "strong",
    "StudyDate": "strong", "SeriesDate": "moderate", "Modality": "strong",
    "Manufacturer": "strong", "ManufacturerModelName": "strong", "StationName": "moderate",
    "DeviceSerialNumber": "strong", "SoftwareVersions": "moderate", "KVP": "moderate",
    "SliceThickness": "moderate", "ConvolutionKernel": "moderate", "PixelSpacing": "moderate",
    "BitsStored": "moderate", "BitsAllocated": "moderate", "PixelRepresentation": "moderate",
    "PhotometricInterpretation": "moderate", "SeriesNumber": "moderate", "BodyPartExamined": "moderate",
    "ReconstructionDiameter": "moderate", "PatientPosition": "moderate", "RescaleType": "moderate",
}

#: Software names in a header, and how much they say. De-identification and PACS tools
#: (pydicom, DCMTK, dcm4che, GDCM, CTP) are everyday infrastructure and are not listed.
EDITORS = {
    "strong": ["photoshop", "gimp", "paint.net", "affinity photo", "pixelmator", "ct-gan", "ctgan",
               "stable diffusion", "midjourney", "dall-e", "dall·e", "deepfake", "inpaint"],
    "moderate": ["matlab", "opencv", "pillow", "imagej", "fiji", "simpleitk", "scikit-image", "numpy",
                 "tensorflow", "pytorch", "torch"],
}
TEXT_FIELDS = ["SoftwareVersions", "DerivationDescription", "ImageComments", "SecondaryCaptureDeviceManufacturer",
               "SecondaryCaptureDeviceSoftwareVersions", "SeriesDescription", "ContributingEquipmentSequence",
               "ImplementationVersionName", "SourceApplicationEntityTitle"]


def _norm(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(_norm(x) for x in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    try:
        f = float(v)
        return f"{f:.4g}"
    except (TypeError, ValueError):
        return str(v).strip()


def _root(uid: str, n: int = 6) -> str:
    return ".".join(uid.split(".")[:n])


def _seconds(t: str) -> float | None:
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?", t.strip()) if t else None
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return h * 3600 + mi * 60 + s + (float(m.group(4)) if m.group(4) else 0.0)


def _date(d: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(d).strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


class DicomHeaderDetector(Detector):
    name = "dicom_header"
    description = ("Header forensics: series consistency (UIDs, gaps, order, parameters, dates), values beyond "
                   "BitsStored, editing-software traces, header-pixel mismatches.")
    formats = frozenset({"dicom"})

    def detect(self, image: Image) -> Evidence:
        findings: list[dict] = []
        dss = image.datasets
        n = len(dss)
        add = lambda check, severity, message, slices=None: findings.append(  # noqa: E731
            {"check": check, "severity": severity, "message": message, "slices": sorted(set(slices or []))})

        if n > 1:
            self._series_checks(image, dss, add)
        self._instance_checks(image, dss, add)

        raw = sum(SEVERITY[f["severity"]] for f in findings)
        score = logistic(raw, MIDPOINT, SCALE)
        findings.sort(key=lambda f: -SEVERITY[f["severity"]])
        regions = []
        shape = image.pixels.shape
        for f in findings:
            if f["severity"] == "weak":
                continue
            if image.pixels.ndim == 3 and f["slices"]:
                k0, k1 = min(f["slices"]), max(f["slices"]) + 1
                regions.append(region_from_box(image, (k0, 0, 0, k1, shape[1], shape[2]),
                                               score=SEVERITY[f["severity"]] / 3.0, note=f["message"]))
            elif image.pixels.ndim == 2:
                regions.append(region_from_box(image, (0, 0) + shape, score=SEVERITY[f["severity"]] / 3.0,
                                               note=f["message"]))
        if findings:
            top = findings[0]
            more = f" ({len(findings) - 1} more finding(s))" if len(findings) > 1 else ""
            explanation = top["message"].rstrip(".") + "." + more
        else:
            explanation = f"The header{'s of the series' if n > 1 else ''} show no inconsistency."
        return Evidence(self.name, score, explanation, regions=regions[:5],
                        details={"findings": findings, "raw": raw, "instances": n})

    # ------------------------------------------------------------------ series
    def _series_checks(self, image: Image, dss: list[Dataset], add) -> None:
        n = len(dss)
        for p in image.meta.get("series_problems", []):
            kind, idx = p["kind"], p.get("index")
            slices = [idx - 1, idx] if kind == "gap" and idx is not None else ([idx] if idx is not None else [])
            sev = "strong" if kind in ("gap", "duplicate_position", "mixed_size", "inconsistent_orientation") else "moderate"
            add(f"series_{kind}", sev, p["message"], slices)

        for key, sev in CONSTANT_IN_SERIES.items():
            values = [_norm(ds.get(key)) for ds in dss]
            present = [v for v in values if v]
            if len(set(values)) <= 1 or not present:
                continue
            common, count = Counter(values).most_common(1)[0]
            odd = [k for k, v in enumerate(values) if v != common]
            if len(odd) == n - count and count > n / 2:
                shown = ", ".join(sorted({values[k] or "(absent)" for k in odd})[:3])
                add(f"changes_{key}", sev, f"{key} is {common or '(absent)'} on {count} of {n} slices but "
                                          f"{shown} on slice(s) {_fmt(odd)}", odd)
            else:
                add(f"changes_{key}", sev, f"{key} takes {len(set(values))} different values within the series",
                    list(range(n)))

        sops = [str(ds.get("SOPInstanceUID", "")) for ds in dss]
        dup = [k for k, s in enumerate(sops) if s and sops.count(s) > 1]
        if dup:
            add("duplicate_sop_uid", "strong", f"SOPInstanceUID repeats on slices {_fmt(dup)} with different content", dup)
        roots = [_root(s) for s in sops if s]
        if len(roots) == n:
            common, count = Counter(roots).most_common(1)[0]
            odd = [k for k, r in enumerate(roots) if r != common]
            if odd and count > n / 2:
                add("uid_root", "strong", f"SOPInstanceUID of slice(s) {_fmt(odd)} was made under another UID root "
                                          f"({_root(sops[odd[0]], 8)}...) than the rest of the series ({common}...)", odd)

        inst = []
        for ds in dss:
            try:
                inst.append(int(ds.get("InstanceNumber")))
            except (TypeError, ValueError):
                inst.append(None)
        if all(v is not None for v in inst) and n >= 3:
            arr = np.array(inst)
            if len(set(inst)) < n:
                rep = [k for k, v in enumerate(inst) if inst.count(v) > 1]
                add("instance_number_repeats", "moderate", f"InstanceNumber repeats on slices {_fmt(rep)}", rep)
            else:
                d = np.sign(np.diff(arr))
                direction = 1 if (d > 0).sum() >= (d < 0).sum() else -1
                bad = [k + 1 for k, s in enumerate(d) if s != direction]
                if bad:
                    add("instance_order", "moderate", f"InstanceNumber goes against the slice position order at "
                                                      f"slice(s) {_fmt(bad)}", sum(([k - 1, k] for k in bad), []))

        for key in ("AcquisitionTime", "ContentTime"):
            secs = [_seconds(str(ds.get(key, ""))) for ds in dss]
            if n >= 5 and all(s is not None for s in secs) and len(set(secs)) > 2:
                odd = _time_outliers(np.array(secs, dtype=float))
                if odd:
                    add(f"{key}_order", "moderate", f"{key} of slice(s) {_fmt(odd)} does not fit the acquisition "
                                                    f"sequence of the other slices", odd)

    # ------------------------------------------------------------------ per instance
    def _instance_checks(self, image: Image, dss: list[Dataset], add) -> None:
        n = len(dss)
        today = dt.date.today()
        future: dict[str, list[int]] = {}
        before_study: dict[str, list[int]] = {}
        content_first: list[int] = []
        for k, ds in enumerate(dss):
            study = _date(ds.get("StudyDate", ""))
            for key in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
                d = _date(ds.get(key, ""))
                if d is None:
                    continue
                if d > today:
                    future.setdefault(key, []).append(k)
                if study is not None and d < study:
                    before_study.setdefault(key, []).append(k)
            acq, content = _date(ds.get("AcquisitionDate", "")), _date(ds.get("ContentDate", ""))
            if acq and content and content < acq:
                content_first.append(k)
        if future:
            add("date_in_future", "moderate", f"{', '.join(future)} lie(s) in the future",
                sorted({k for v in future.values() for k in v}))
        # De-identification often shifts some dates and not others, so dates out of order are weak
        # evidence on their own; they count when a series disagrees with itself (checked above).
        if before_study:
            add("date_before_study", "weak", f"{', '.join(before_study)} precede(s) the StudyDate",
                sorted({k for v in before_study.values() for k in v}))
        if content_first:
            add("content_before_acquisition", "weak", "ContentDate precedes AcquisitionDate", content_first)

        # values beyond what BitsStored allows
        odd = []
        for k, (ds, (lo, hi)) in enumerate(zip(dss if n == len(image.meta.get("stored_range", [])) else [],
                                               image.meta.get("stored_range", []))):
            bits = ds.get("BitsStored")
            if not bits:
                continue
            bits = int(bits)
            if int(ds.get("PixelRepresentation", 0)) == 1:
                vmin, vmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            else:
                vmin, vmax = 0, (1 << bits) - 1
            if lo < vmin or hi > vmax:
                odd.append(k)
        if odd:
            add("beyond_bits_stored", "strong", f"pixel values on {'slice(s) ' + _fmt(odd) if n > 1 else 'the image'} "
                                               f"lie outside the range BitsStored allows", odd)

        # editing software named in the header (first instance, and any instance that differs)
        texts: dict[str, set[int]] = {}
        for k, ds in enumerate(dss):
            blob = " ".join(_norm(ds.get(f)) for f in TEXT_FIELDS if f != "ImplementationVersionName")
            fm = getattr(ds, "file_meta", None)
            if fm is not None:
                blob += " " + _norm(fm.get("ImplementationVersionName")) + " " + _norm(fm.get("SourceApplicationEntityTitle"))
            blob += " " + " ".join(str(el.value) for el in ds if el.tag.is_private_creator)
            texts.setdefault(blob.lower(), set()).add(k)
        for blob, slices in texts.items():
            for sev, names in EDITORS.items():
                hit = next((nm for nm in names if nm in blob), None)
                if hit:
                    where = f" on slice(s) {_fmt(sorted(slices))}" if n > 1 and len(slices) < n else ""
                    add(f"editor_{sev}", sev if sev == "strong" else "weak" if n == 1 or len(slices) == n else "moderate",
                        f"the header names image-editing software ('{hit}'){where}", sorted(slices))
                    break

        # single instances: a SOPInstanceUID under another root than its own series and study
        if n == 1:
            ds = dss[0]
            sop, ser, stu = (str(ds.get(k, "")) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"))
            if sop and ser and stu and _root(ser) == _root(stu) and _root(sop) != _root(ser) \
                    and _root(sop, 4) != _root(ser, 4):
                add("uid_root", "weak", f"the SOPInstanceUID ({_root(sop, 8)}...) was made under another UID "
                                            f"root than its series and study ({_root(ser)}...)", [0])

        self._pixel_checks(image, dss, add)

    def _pixel_checks(self, image: Image, dss: list[Dataset], add) -> None:
        px = image.pixels
        sample = px[:: max(1, px.shape[0] // 8)] if px.ndim == 3 else px
        lo, hi = float(np.percentile(sample, 0.5)), float(np.percentile(sample, 99.5))
        if image.modality == "CT":
            inside = sample[sample > -1500]  # padding outside the field of view sits at -2000/-3024
            if inside.size and float(np.percentile(inside, 1)) > -400 and float(np.percentile(inside, 99)) - \
                    float(np.percentile(inside, 1)) < 400:
                add("ct_not_hu", "moderate", "the image is labelled CT but its values do not look like Hounsfield "
                                             "units (no air, narrow range)", [0])
            elif inside.size and float(inside.min()) >= 0 and float(inside.max()) <= 255:
                add("ct_8bit", "moderate", "the image is labelled CT but holds 8-bit display values, not Hounsfield "
                                           "units (a screenshot or export re-labelled)", [0])
        ds = dss[0]
        wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
        try:
            wc = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
            ww = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        except (TypeError, ValueError, IndexError):
            wc = ww = None
        if wc is not None and ww and ww > 0 and hi > lo:
            span = hi - lo
            if wc + ww / 2 < lo - 0.5 * span or wc - ww / 2 > hi + 0.5 * span:
                add("window_outside_data", "moderate", f"the stored window (centre {wc:g}, width {ww:g}) lies far "
                                                       f"outside the pixel values ({lo:.0f} to {hi:.0f})", [0])
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if rows and cols and (int(rows), int(cols)) != tuple(px.shape[-2:]):
            add("size_mismatch", "strong", f"Rows x Columns {rows}x{cols} differ from the pixel data "
                                           f"{px.shape[-2]}x{px.shape[-1]}", [0])


def _time_outliers(t: np.ndarray) -> list[int]:
    """Slices whose time breaks an otherwise smooth sequence (robust line fit on slice index)."""
    from scipy.stats import theilslopes

    k = np.arange(len(t))
    slope, intercept, _, _ = theilslopes(t, k)
    resid = t - (intercept + slope * k)
    mad = float(np.median(np.abs(resid - np.median(resid))))
    step = float(np.median(np.abs(np.diff(t)))) if len(t) > 1 else 0.0
    tol = max(10 * 1.4826 * mad, 5 * step, 5.0)
    odd = [int(i) for i in np.nonzero(np.abs(resid) > tol)[0]]
    return odd if len(odd) <= max(1, len(t) // 4) else []


def _fmt(idx: list[int]) -> str:
    idx = sorted(set(idx))
    return ", ".join(str(i) for i in idx[:6]) + (f" and {len(idx) - 6} more" if len(idx) > 6 else "")
