"""Training and inference speed of the 2D classifiers on this CPU (images per second).

    python benchmarks/model_speed.py [--threads 2] [--size 224] [--batch 8] [--models resnet50,fastnet]

For each model: one warm-up step, then ``--repeat`` timed training steps (forward, weighted
cross-entropy, backward, Adam step; train mode) and ``--repeat`` timed inference batches
(eval mode, no_grad) on random 1-channel images of ``--size`` px. Prints a markdown table; with
``--json FILE`` also writes the numbers. Timings on a shared machine vary: run it alone.

    python benchmarks/model_speed.py --frontend-ablation forge-ds/manifest.csv [--epochs 3] [--size 128]

trains fastnet twice with the same seed, data and settings -- with its fixed high-pass
(noise-residual) front end and with a plain trainable first convolution instead -- on the
binary real/fake radiograph task of a forge dataset (train split, no augmentation, weighted CE,
Adam 0.001, batch 64), and reports validation accuracy and ROC-AUC after each epoch.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from medforensics.learn.models import MODELS, build_model


def bench(name: str, size: int, batch: int, repeat: int) -> dict:
    torch.manual_seed(0)
    net = build_model(name, 4, image_size=size)
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.rand(batch, 1, size, size)
    y = torch.randint(0, 4, (batch,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.ones(4))
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        step()
    train_ips = batch * repeat / (time.perf_counter() - t)
    net.eval()
    with torch.no_grad():
        net(x)  # warm-up
        t = time.perf_counter()
        for _ in range(repeat):
            net(x)
        infer_ips = batch * repeat / (time.perf_counter() - t)
    return {"model": name, "params_M": round(n_params / 1e6, 2), "train_img_s": round(train_ips, 2),
            "infer_img_s": round(infer_ips, 2)}


def frontend_ablation(manifest: str, size: int, epochs: int, seed: int = 0) -> list[dict]:
    """Validation accuracy and ROC-AUC of fastnet with and without its high-pass front end."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from medforensics.learn.data import ItemDataset, default_preprocess, read_manifest, refuse_leaks, select_rows
    from medforensics.learn.models import FastNet

    rows = read_manifest(manifest)
    refuse_leaks(rows, manifest)
    used = select_rows(rows, "binary", kinds=["radiograph"])
    pre = default_preprocess(size, size, mean=0.5, std=0.25)
    tr = ItemDataset([r for r in used if r["split"] == "train"], pre, [1])
    va = ItemDataset([r for r in used if r["split"] == "validation"], pre, [1])
    counts = np.bincount(tr.targets(), minlength=2)
    weights = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)
    out = []
    for highpass in (True, False):
        torch.manual_seed(seed)
        net = FastNet(2, highpass=highpass)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        loader = torch.utils.data.DataLoader(tr, batch_size=64, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            net.train()
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x), y, weight=weights).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                p = torch.cat([torch.softmax(net(x), 1)[:, 1] for x, _ in
                               torch.utils.data.DataLoader(va, batch_size=128)]).numpy()
            y = np.array(va.targets())
            r = {"front_end": "high-pass" if highpass else "plain conv", "epoch": epoch,
                 "accuracy": round(float(((p > 0.5) == y).mean()), 4), "roc_auc": round(float(roc_auc_score(y, p)), 4),
                 "seconds": round(time.perf_counter() - t0, 1), "n_train": len(tr), "n_val": len(va)}
            out.append(r)
            print(f"| {r['front_end']} | {epoch} | {r['accuracy']} | {r['roc_auc']} | {r['seconds']} |", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--frontend-ablation", metavar="MANIFEST", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.frontend_ablation:
        print(f"fastnet front-end ablation on {a.frontend_ablation}: binary radiographs, {a.size} px, {a.threads} threads")
        print("| front end | epoch | validation accuracy | validation ROC-AUC | seconds |")
        print("|---|---:|---:|---:|---:|")
        rows = frontend_ablation(a.frontend_ablation, a.size, a.epochs)
        if a.json:
            with open(a.json, "x") as f:
                json.dump({"ablation": rows, "size": a.size, "threads": a.threads}, f, indent=1)
        return
    rows = []
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads, "
          f"{a.size} px, batch {a.batch}, {a.repeat} timed batches")
    print("| model | parameters (M) | training images/s | inference images/s |")
    print("|---|---:|---:|---:|")
    for name in a.models.split(","):
        r = bench(name, a.size, a.batch, a.repeat)
        rows.append(r)
        print(f"| {r['model']} | {r['params_M']} | {r['train_img_s']} | {r['infer_img_s']} |", flush=True)
    if a.json:
        with open(a.json, "x") as f:
            json.dump({"threads": a.threads, "size": a.size, "batch": a.batch, "repeat": a.repeat,
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
