"""Generation traces: how well ``spectral`` and ``radiograph_physics`` tell fakes from authentic radiographs.

    python benchmarks/generation_traces.py [DATA] [--n 120] [--json OUT.json] [--detectors spectral,radiograph_physics]

``DATA`` defaults to ``$MEDFORENSICS_DATA``, else ``../shared/data``. Measured on the Hannover
chest radiographs (``xray/mhh-covid19/images``, 8-bit PNG, about 640x524): a fitted source, never
the outside folders. The images are shuffled (``--seed``); the first ``AE_TRAIN`` train the small
autoencoders below, the next ``--n`` are the authentic set and the bases of the fakes.

Fake kinds (each also after one JPEG save at a quality drawn from 75-95, ``+jpeg``):

``synth``       whole synthetic radiographs of the shipped VAE (``forge synthesize``: bicubic up-sampling
                of a 256 px decoder output, histogram and noise matched to a real reference)
``resample``    ``forge edit --kind resample`` on an authentic base: a region zoomed/rotated in place
``tconv2x``     the base passed through a small conv encoder (one stride-2 stage) and a transposed-conv
                decoder (one stride-2 stage), trained for ``--ae-steps`` steps on other MHH images
``tconv4x``     the same with two stages (4x)
``nearest2x``   the base downsampled 2x (area) and up-sampled back with nearest neighbour
``bilinear2x``  the same with bilinear interpolation
``tconv_patch`` the base with one square region (96-160 px) replaced by its ``tconv2x`` reconstruction
                (a generated patch pasted in; for the heatmap)

Reported per detector and kind: AUC (authentic against fakes; ``+jpeg`` kinds against the authentic
images after the same kind of JPEG save), TPR at the score that 1% of those authentic images exceed
(the 99th percentile), the share of fakes not assessed (out of domain: counted as score 0), and for
``tconv_patch`` the share of detected fakes whose strongest region hits the patch. Prints a
markdown table; ``--json`` writes it with every score.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medforensics.core import Image
from medforensics.datapath import data_root
from medforensics.detectors.base import load_detectors
from medforensics.learn.export import jpeg

AE_TRAIN = 40
KINDS = ("synth", "resample", "tconv2x", "tconv4x", "nearest2x", "bilinear2x", "tconv_patch")


# ----------------------------------------------------------------------------------- fake makers

def down_up(a: np.ndarray, factor: int, how: str) -> np.ndarray:
    """``a`` downsampled by ``factor`` (area) and up-sampled back (``nearest`` or ``bilinear``),
    rounded to whole grey levels."""
    import cv2

    h, w = a.shape
    small = cv2.resize(a.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    flag = cv2.INTER_NEAREST if how == "nearest" else cv2.INTER_LINEAR
    up = cv2.resize(small, (w // factor * factor, h // factor * factor), interpolation=flag)
    out = a.astype(np.float32).copy()
    out[:up.shape[0], :up.shape[1]] = up
    return np.clip(np.round(out), 0, 255)


def train_autoencoder(images: list[np.ndarray], stages: int, steps: int, seed: int = 0):
    """A small conv encoder (``stages`` stride-2 convolutions) and transposed-conv decoder
    (``stages`` stride-2 transposed convolutions, kernel 4), trained with L1 on 64 px crops for
    ``steps`` steps of 16 crops (Adam, 2e-3); returns a function ``[0, 255] image -> reconstruction``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    ch = 32
    enc = [nn.Conv2d(1, ch, 3, padding=1), nn.ReLU()]
    for _ in range(stages):
        enc += [nn.Conv2d(ch, ch, 4, stride=2, padding=1), nn.ReLU()]
    dec = []
    for _ in range(stages):
        dec += [nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1), nn.ReLU()]
    dec += [nn.Conv2d(ch, 1, 3, padding=1)]
    net = nn.Sequential(*enc, *dec)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = []
        for _ in range(16):
            a = images[int(rng.integers(len(images)))]
            r, c = int(rng.integers(0, a.shape[0] - 64)), int(rng.integers(0, a.shape[1] - 64))
            batch.append(a[r:r + 64, c:c + 64])
        x = torch.from_numpy(np.stack(batch)[:, None].astype(np.float32) / 255.0)
        loss = (net(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def apply(a: np.ndarray) -> np.ndarray:
        m = 2 ** stages
        h, w = a.shape[0] // m * m, a.shape[1] // m * m
        with torch.no_grad():
            y = net(torch.from_numpy(a[None, None, :h, :w].astype(np.float32) / 255.0))[0, 0].numpy()
        out = a.astype(np.float32).copy()
        out[:h, :w] = y * 255.0
        return np.clip(np.round(out), 0, 255)

    apply.steps = steps  # type: ignore[attr-defined]
    return apply


def paste_patch(a: np.ndarray, fake: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``a`` with a square region (96-160 px, in the central 60%) taken from ``fake``; returns the
    image and the box ``(r0, c0, r1, c1)``."""
    h, w = a.shape
    s = int(rng.integers(96, 161))
    r0 = int(rng.integers(int(0.2 * h), int(0.8 * h) - s))
    c0 = int(rng.integers(int(0.2 * w), int(0.8 * w) - s))
    out = a.copy()
    out[r0:r0 + s, c0:c0 + s] = fake[r0:r0 + s, c0:c0 + s]
    return out, (r0, c0, r0 + s, c0 + s)


# ----------------------------------------------------------------------------------- metrics

def auc(neg: list[float], pos: list[float]) -> float:
    """Probability that a fake outscores an authentic image (ties count half).

    >>> auc([0.1, 0.2], [0.3, 0.2])
    0.875
    """
    n, p = np.asarray(neg, float), np.asarray(pos, float)
    if n.size == 0 or p.size == 0:
        return float("nan")
    gt = (p[:, None] > n[None, :]).mean()
    eq = (p[:, None] == n[None, :]).mean()
    return float(gt + 0.5 * eq)


def tpr_at_fpr(neg: list[float], pos: list[float], fpr: float = 0.01) -> tuple[float, float]:
    """Share of ``pos`` above the threshold that ``fpr`` of ``neg`` exceed (the (1 - fpr) quantile,
    higher interpolation), and that threshold.

    >>> tpr_at_fpr(list(np.linspace(0, 1, 101)), [0.995, 1.5, 0.5])
    (0.6666666666666666, 0.99)
    """
    thr = float(np.quantile(np.asarray(neg, float), 1 - fpr, method="higher"))
    return float(np.mean(np.asarray(pos, float) > thr)), thr


# ----------------------------------------------------------------------------------- run

def score(detectors, a: np.ndarray, fmt: str) -> dict:
    im = Image.from_array(a, modality="XR", format=fmt, name=f"x.{fmt}")
    out = {}
    for det in detectors:
        why = det.out_of_domain(im)
        if why:
            out[det.name] = {"score": 0.0, "abstained": why}
            continue
        t = time.perf_counter()
        ev = det.detect(im)
        out[det.name] = {"score": ev.score, "raw": ev.details.get("raw"), "seconds": round(time.perf_counter() - t, 4),
                         "region": list(ev.regions[0].bbox_voxel) if ev.regions else None,
                         "details": {k: v for k, v in ev.details.items() if isinstance(v, (int, float, bool, dict))}}
    return out


def hits(region, box) -> bool:
    if region is None:
        return False
    r0, c0, r1, c1 = region
    b0, b1, b2, b3 = box
    return r0 < b2 and b0 < r1 and c0 < b3 and b1 < c1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=None)
    ap.add_argument("--n", type=int, default=120, help="authentic images (and bases of each fake kind)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-steps", type=int, default=150)
    ap.add_argument("--detectors", default="spectral,radiograph_physics")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from PIL import Image as PILImage

    root = data_root(args.data)
    folder = root / "xray" / "mhh-covid19" / "images"
    files = sorted(folder.glob("*.png"))
    if not files:
        print(f"no radiographs in {folder}")
        return 2
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in rng.permutation(len(files))]
    load = lambda p: np.asarray(PILImage.open(p).convert("L"), np.float32)  # noqa: E731
    train = [load(p) for p in files[:AE_TRAIN]]
    bases = [load(p) for p in files[AE_TRAIN:AE_TRAIN + args.n]]
    detectors = load_detectors(args.detectors.split(","))
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"data: {folder} ({len(files)} images); authentic {len(bases)}, AE trained on {len(train)} others; "
          f"detectors {', '.join(d.name for d in detectors)}", flush=True)

    aes = {}
    for k in ("tconv2x", "tconv4x"):
        if k in kinds or (k == "tconv2x" and "tconv_patch" in kinds):
            aes[k] = train_autoencoder(train, 1 if k == "tconv2x" else 2, args.ae_steps, args.seed)
            print(f"{k}: autoencoder trained {aes[k].steps} steps", flush=True)

    def fakes(kind: str):
        if kind == "synth":
            from medforensics.forge.synth import synthesize

            for s in synthesize(len(bases), seed=args.seed + 1):
                px = s.pixels.astype(np.float32)
                if px.max() > 255:  # a 16-bit reference: to 8 bits like the rest
                    px = np.round(px / px.max() * 255)
                yield px, None
        elif kind == "resample":
            from medforensics.forge.edits import forge_resample

            for i, b in enumerate(bases):
                f = forge_resample(Image.from_array(b, modality="XR", format="png"), seed=args.seed + i)
                yield np.clip(np.round(f.pixels), 0, 255), None
        elif kind in ("tconv2x", "tconv4x"):
            for b in bases:
                yield aes[kind](b), None
        elif kind in ("nearest2x", "bilinear2x"):
            for b in bases:
                yield down_up(b, 2, kind[:-2]), None
        elif kind == "tconv_patch":
            prng = np.random.default_rng(args.seed + 7)
            for b in bases:
                yield paste_patch(b, aes["tconv2x"](b), prng)

    qrng = np.random.default_rng(args.seed + 3)
    qualities = [int(q) for q in qrng.integers(75, 96, size=len(bases) * (len(kinds) + 1))]
    qi = iter(qualities)
    records: dict[str, list] = {"authentic": [], "authentic+jpeg": []}
    for b in bases:
        records["authentic"].append(score(detectors, b, "png"))
        records["authentic+jpeg"].append(score(detectors, np.round(jpeg(b / 255.0, next(qi)) * 255), "jpeg"))
    boxes: dict[str, list] = {}
    for kind in kinds:
        t = time.time()
        records[kind], records[kind + "+jpeg"] = [], []
        for px, box in fakes(kind):
            records[kind].append(score(detectors, px, "png"))
            records[kind + "+jpeg"].append(score(detectors, np.round(jpeg(px / 255.0, next(qi)) * 255), "jpeg"))
            boxes.setdefault(kind, []).append(box)
        print(f"{kind}: {len(records[kind])} fakes, {time.time() - t:.0f} s", flush=True)

    table = []
    for det in detectors:
        for kind in kinds:
            for suffix in ("", "+jpeg"):
                neg = [r[det.name]["score"] for r in records["authentic" + suffix]]
                recs = records[kind + suffix]
                pos = [r[det.name]["score"] for r in recs]
                tpr, thr = tpr_at_fpr(neg, pos)
                row = {"detector": det.name, "kind": kind + suffix, "n_authentic": len(neg), "n_fake": len(pos),
                       "auc": round(auc(neg, pos), 3), "tpr_at_1pct_fpr": round(tpr, 3), "threshold": round(thr, 4),
                       "not_assessed": round(float(np.mean([("abstained" in r[det.name]) for r in recs])), 3),
                       "authentic_above_0.5": int(sum(s >= 0.5 for s in neg)),
                       "fakes_above_0.5": round(float(np.mean([s >= 0.5 for s in pos])), 3)}
                if kind == "tconv_patch":
                    flagged = [(r[det.name].get("region"), bx) for r, bx in zip(recs, boxes[kind])
                               if r[det.name]["score"] >= 0.5]
                    row["region_hits"] = round(float(np.mean([hits(rg, bx) for rg, bx in flagged])), 3) if flagged else None
                table.append(row)
    secs = [r[d.name]["seconds"] for d in detectors for r in records["authentic"] if "seconds" in r[d.name]]
    print()
    print("| detector | fake kind | AUC | TPR @ 1% FPR | fakes >= 0.5 | not assessed | authentic >= 0.5 | region hits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['detector']} | {r['kind']} | {r['auc']:.3f} | {r['tpr_at_1pct_fpr']:.2f} | {r['fakes_above_0.5']:.2f} | "
              f"{r['not_assessed']:.2f} | {r['authentic_above_0.5']}/{r['n_authentic']} | "
              f"{'' if r.get('region_hits') is None else format(r['region_hits'], '.2f')} |")
    if secs:
        print(f"\nmedian detect() time per authentic image: {np.median(secs):.3f} s (all detectors' calls pooled)")
    if args.json:
        args.json.write_text(json.dumps({"data": str(folder.relative_to(root)), "n_authentic": len(bases),
                                         "seed": args.seed, "ae_steps": args.ae_steps, "table": table,
                                         "records": records, "boxes": boxes}, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
