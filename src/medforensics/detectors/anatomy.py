"""What a radiograph shows, as far as the header can tell: for detectors whose models were
validated on chest radiographs only.

:func:`header_body_part` reads BodyPartExamined and the study, series, protocol and requested
procedure descriptions: a chest (CHEST, THORAX, LUNG, ...) named in any of them is a chest; else
another named part (HAND, KNEE, EXTREMITY, SPINE, SKULL, ...) is what the image shows.

:func:`chest_radiograph` adds the one pixel-free check that holds on every chest radiograph of the
fitted sources: the frame's aspect ratio (height over width 0.81-1.18 on the 243 Hannover
radiographs; :data:`CHEST_ASPECT` leaves a wide margin; the outside exports, measured only, lie at
0.69-1.28: ``python benchmarks/anatomy_frames.py``). A frame outside it is a spine, a long bone or
a panorama, not a chest.

Telling a chest from a hand or a knee by its pixels alone was tried and is *not* done: a
lung-field test (two dark regions either side of the mediastinum) failed on most of the authentic
Hannover radiographs (opacified COVID-19 lungs are not dark), and the share of air around the body
does not separate the pydicom-data tibia from chest exports. So a PNG or JPEG that names nothing
reaches the chest model; where a header says what it is, it decides.

>>> from medforensics.core import Image
>>> import numpy as np
>>> chest_radiograph(Image.from_array(np.zeros((500, 480)), modality="XR"))
(True, 'no body part named; a chest-shaped frame')
>>> chest_radiograph(Image.from_array(np.zeros((900, 300)), modality="XR"))[0]
False
"""
from __future__ import annotations

import re
from ..core import Image

CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "PULMO", "RIB", "TORSO", "CXR", "BRUST", "POUMON", "TORAX",
               "TÓRAX")
OTHER_PARTS = ("HAND", "FINGER", "WRIST", "ARM", "ELBOW", "SHOULDER", "CLAVICLE", "HUMERUS", "FOREARM", "KNEE",
               "LEG", "FOOT", "ANKLE", "TOE", "HIP", "FEMUR", "TIBIA", "FIBULA", "PELVIS", "EXTREMITY", "SPINE",
               "LSPINE", "CSPINE", "TSPINE", "VERTEBRA", "SKULL", "HEAD", "BRAIN", "FACE", "JAW", "TEETH", "DENTAL",
               "SINUS", "NECK", "ABDOMEN", "BREAST", "MAMMO", "HEEL", "PATELLA")
#: Parts whose images never hold lung (a CT of the abdomen or pelvis holds the lung bases).
NO_LUNG_PARTS = frozenset({"HAND", "FINGER", "WRIST", "ARM", "ELBOW", "FOREARM", "HUMERUS", "KNEE", "LEG", "FOOT",
                           "ANKLE", "TOE", "FEMUR", "TIBIA", "FIBULA", "HEEL", "PATELLA", "EXTREMITY", "SKULL", "HEAD",
                           "BRAIN", "FACE", "JAW", "TEETH", "DENTAL", "SINUS"})
#: Height over width of a chest radiograph's frame (0.81-1.18 on the fitted Hannover radiographs,
#: with a wide margin; benchmarks/anatomy_frames.py).
CHEST_ASPECT = (0.6, 1.6)


def header_body_part(image: Image) -> str | None:
    """``"chest"``, the named other part (e.g. ``"EXTREMITY"``), or None when the header names none."""
    if not image.datasets:
        return None
    ds = image.datasets[0]
    texts = [str(ds.get(k, "") or "") for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription",
                                                 "ProtocolName", "RequestedProcedureDescription")]
    parsed = [(up, set(re.findall(r"[^\W\d_]+", up))) for up in (t.upper() for t in texts)]
    for names, answer in ((CHEST_WORDS, "chest"), (OTHER_PARTS, None)):  # a chest named anywhere wins
        for up, words in parsed:
            hit = next((p for p in names if p in words or (len(p) > 4 and p in up)), None)
            if hit:
                return answer or hit
    return None


def chest_radiograph(image: Image) -> tuple[bool, str]:
    """Whether ``image`` may be a chest radiograph, and how that was told (or why not)."""
    part = header_body_part(image)
    if part == "chest":
        return True, "the header names the chest"
    if part is not None:
        return False, f"the header names {part}, not the chest"
    h, w = image.pixels.shape[-2:]
    aspect = h / max(w, 1)
    if not CHEST_ASPECT[0] <= aspect <= CHEST_ASPECT[1]:
        return False, f"a {h}x{w} frame (height/width {aspect:.2f}) is not shaped like a chest radiograph"
    return True, "no body part named; a chest-shaped frame"
