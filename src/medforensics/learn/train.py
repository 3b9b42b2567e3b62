"""Training the 2D classifiers on a forge dataset: :class:`TrainConfig` and :func:`train`.

>>> cfg = TrainConfig.from_toml(shipped_config("fast-cpu"), max_minutes=2)   # or your own TOML file
>>> cfg.model, cfg.task, cfg.image_size, cfg.epochs, cfg.max_minutes
('fastnet', 'ct4', 128, 5, 2.0)
>>> TrainConfig.from_toml(shipped_config("review")).model
'resnet50'
>>> TrainConfig(model="resnet18")
Traceback (most recent call last):
    ...
ValueError: model must be one of resnet50, efficientnet_b0, densenet121, vgg16, inception_v3, vit_b_16, fastnet, got 'resnet18'

Training itself takes minutes and a forge dataset (``medforensics forge dataset``):

>>> train(cfg, "forge-ds/manifest.csv", "fastnet-ct4.safetensors")         # doctest: +SKIP
PosixPath('fastnet-ct4.safetensors')

The loop: seeded model, Adam, weighted cross-entropy (inverse class frequency of the training
items as seen, augmentations included), one validation pass after each epoch; the weights of the
best validation epoch (accuracy, then loss) go to a safetensors checkpoint whose card says what,
on what, how and how well. A time budget (``max_minutes``) or a step budget (``max_steps``) stops
training cleanly: the partial epoch is validated and the card records what stopped it.
Training refuses to start when a patient appears in two splits of the manifest.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..core import MedForensicsError, one_line
from .checkpoint import save_checkpoint
from .calibration import fit_logistic, size_group
from .data import (RESIZES, TASKS, ItemDataset, TileDataset, default_preprocess, item_shape, read_manifest,
                   refuse_leaks, select_rows)
from .loop import fit, pick_device, seed_everything, torch_threads
from .models import MODELS, build_model

__all__ = ["TrainConfig", "train", "shipped_config", "SHIPPED_CONFIGS"]

SHIPPED_CONFIGS = ("review", "fast-cpu", "detector-ct", "detector-xray", "detector-ctpatch", "detector-zoo")
SELECT = ("accuracy", "balanced_accuracy", "auc")
AMP = ("auto", "none", "bf16", "fp16")
#: Export-chained copies of each authentic validation image in the tile calibration (export_chains > 0).
CALIBRATION_CHAINS = 3


@dataclass
class TrainConfig:
    """How to train. Read from the ``[train]`` table of a TOML file with :meth:`from_toml`.

    Defaults are the review's protocol (ResNet-50 on the CT-GAN classes).
    """

    model: str = "resnet50"
    task: str = "ct4"                   # ct4 | binary
    kinds: list[str] = field(default_factory=list)    # binary: ct-slice and/or radiograph; empty = all
    methods: list[str] = field(default_factory=list)  # binary: only fakes of these forge methods; empty = all
    manifest: str = ""                  # default manifest (the command line's --manifest wins)
    image_size: int = 224               # bilinear resize of the shorter side to this
    resize: str = "bilinear"            # bilinear | none (native-resolution tiles of crop x crop)
    crop: int = 224                     # then a centre crop of crop x crop
    tiles_per_item: int = 8             # resize = none: random tiles per item and epoch
    export_chains: float = 0.0          # resize = none: share of training tiles (real and fake alike) after a
                                        # random export chain (learn/export.py); calibration then also
                                        # scores chained copies of the authentic validation images
    stride: int = 0                     # resize = none: step of inference tiles, 0 = crop / 2
    min_size: int = 0                   # leave out items smaller than this on a side (e.g. 64 px thumbnails)
    levels: int = 0                     # round every [0, 1] image to this many steps first (255: 8-bit PNG)
    normalise: str = "dataset"          # dataset: mean/std of the training images; none: keep [0, 1]
    optimizer: str = "adam"
    lr: float = 0.001
    batch: int = 64
    epochs: int = 50
    weight_decay: float = 0.0001
    dropout: float = 0.5
    loss: str = "weighted-ce"           # weighted-ce (inverse class frequency) | ce
    augment_fakes: bool = True          # each fake also in the review's eight variants
    seed: int = 0
    max_minutes: float = 0.0            # time budget, 0 = none
    max_steps: int = 0                  # step budget, 0 = none
    max_validation: int = 0             # validate on at most this many items (evenly spaced), 0 = all
    select: str = "accuracy"            # best epoch by: accuracy | balanced_accuracy | auc (fake probability), then loss
    num_threads: int = 0                # torch CPU threads, 0 = torch's default
    device: str = "auto"                # auto (cuda if available) | cpu | cuda
    preload: bool = False               # whole-image mode: decode, augment and transform every training and
                                        # validation item once and hold the tensors on the device; epochs index
                                        # them (same batches as the DataLoader) instead of reading items again
    amp: str = "auto"                   # mixed precision: auto (bf16 autocast on CUDA, fp16 where bf16 is
                                        # missing; none on CPU) | none | bf16 | fp16 (CUDA only)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for a value out of range."""
        checks = [
            (self.model in MODELS, f"model must be one of {', '.join(MODELS)}, got {self.model!r}"),
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.resize in RESIZES, f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}"),
            (self.normalise in ("dataset", "none"), f"normalise must be 'dataset' or 'none', got {self.normalise!r}"),
            (self.optimizer == "adam", f"optimizer must be 'adam', got {self.optimizer!r}"),
            (self.loss in ("weighted-ce", "ce"), f"loss must be 'weighted-ce' or 'ce', got {self.loss!r}"),
            (self.select in SELECT, f"select must be one of {', '.join(SELECT)}, got {self.select!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.amp in AMP, f"amp must be one of {', '.join(AMP)}, got {self.amp!r}"),
            (16 <= self.crop and (self.resize == "none" or self.crop <= self.image_size),
             f"crop must be between 16 and image_size, got {self.crop}"),
            (self.tiles_per_item >= 1 and 0 <= self.stride <= self.crop,
             "tiles_per_item must be at least 1 and stride between 0 and crop"),
            (self.min_size >= 0, "min_size must be >= 0"),
            (0 <= self.levels <= 65535, f"levels must be between 0 and 65535, got {self.levels}"),
            (0.0 <= self.export_chains <= 1.0, f"export_chains must be in [0, 1], got {self.export_chains}"),
            (self.model != "vit_b_16" or self.crop % 16 == 0, "vit_b_16 needs a crop that is a multiple of 16"),
            (self.model != "inception_v3" or self.crop >= 75, "inception_v3 needs a crop of at least 75"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (self.batch >= 1 and self.epochs >= 1, "batch and epochs must be at least 1"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.max_minutes >= 0 and self.max_steps >= 0 and self.max_validation >= 0 and self.num_threads >= 0,
             "max_minutes, max_steps, max_validation and num_threads must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """The ``[train]`` table of a TOML file (keys: the fields of this class), then ``overrides``
        (those that are not None). Unknown keys or bad values raise MedForensicsError naming the file."""
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise MedForensicsError(path, f"cannot read training configuration: {one_line(e)}") from None
        extra = set(doc) - {"train"}
        if extra:
            raise MedForensicsError(path, f"unknown table(s) or key(s) outside [train]: {', '.join(sorted(extra))}")
        table = doc.get("train", {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise MedForensicsError(path, f"unknown [train] key(s): {', '.join(unknown)} "
                                    f"(known: {', '.join(sorted(known))})")
        values = {**table, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return cls(**_typed(values))
        except (TypeError, ValueError) as e:
            raise MedForensicsError(path, str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Check the types of TOML values against the fields (ints are fine where floats are wanted)."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out = {}
    for k, v in values.items():
        t = types[k]
        if t == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        want = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}[t]
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ValueError(f"{k} must be a {t}, got {v!r}")
        if t == "list[str]":
            v = [str(x) for x in v]
        out[k] = v
    return out


def shipped_config(name: str) -> Path:
    """The path of a shipped configuration (``review`` or ``fast-cpu``)."""
    from importlib.resources import files

    if name not in SHIPPED_CONFIGS:
        raise ValueError(f"no shipped configuration {name!r}; shipped: {', '.join(SHIPPED_CONFIGS)}")
    return Path(str(files("medforensics.learn") / "configs" / f"{name}.toml"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _device(name: str) -> torch.device:
    """:func:`medforensics.learn.loop.pick_device`, with a ValueError for a missing CUDA device (a bad
    configuration value, as :meth:`TrainConfig.validate` reports them)."""
    try:
        return pick_device(name)
    except MedForensicsError as e:
        raise ValueError(e.problem) from None


def _amp(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full precision). Mixed precision is for
    CUDA only: ``auto`` is bf16 there (fp16 where the GPU lacks bf16) and none on a CPU; asking for
    bf16 or fp16 on a CPU is an error."""
    if name == "none" or (name == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"amp {name} needs a CUDA device (training runs on {device.type})")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if name == "bf16" else torch.float16


class _HeldBatches:
    """A data set decoded, augmented and transformed once, held as two tensors on the device and
    served in batches like a DataLoader over it (:attr:`TrainConfig.preload`).

    With ``generator`` the order is drawn as ``DataLoader(shuffle=True, generator=...)`` draws it
    (one draw for the loader's base seed, then a RandomSampler), so a preloaded run sees exactly
    the batches of a DataLoader run with the same seed."""

    def __init__(self, ds: torch.utils.data.Dataset, batch: int, device: torch.device,
                 generator: torch.Generator | None = None,
                 progress: Optional[Callable[[int, int], None]] = None):
        xs, ys = [], []
        for i in range(len(ds)):
            x, y = ds[i]
            xs.append(x)
            ys.append(int(y))
            if progress and (i + 1) % 64 == 0:
                progress(i + 1, len(ds))
        self.x = torch.stack(xs).to(device)
        self.y = torch.tensor(ys, dtype=torch.long, device=device)
        self.batch, self.generator = int(batch), generator
        self.sampler = torch.utils.data.RandomSampler(range(len(ys)), generator=generator) if generator else None

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch)

    @property
    def nbytes(self) -> int:
        return self.x.element_size() * self.x.nelement()

    def __iter__(self):
        if self.sampler is not None:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the DataLoader's base seed
            order = torch.tensor(list(self.sampler), dtype=torch.long).to(self.y.device)
        else:
            order = torch.arange(len(self.y), device=self.y.device)
        for i in range(0, len(order), self.batch):
            idx = order[i:i + self.batch]
            yield self.x[idx], self.y[idx]


def _norm_stats(ds: ItemDataset, limit: int = 256) -> tuple[float, float]:
    """Mean and standard deviation of the (resized, cropped) training images, on up to ``limit`` rows."""
    from .data import to_tensor

    idx = np.linspace(0, len(ds.rows) - 1, num=min(limit, len(ds.rows))).round().astype(int)
    pre = {**ds.preprocess, "mean": 0.0, "std": 1.0}
    vals = torch.stack([to_tensor(ds.array(int(i)), pre) for i in np.unique(idx)])
    mean, std = float(vals.mean()), float(vals.std())
    return mean, (std if std > 1e-6 else 1.0)


def _evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
              n_classes: int, fake_targets: list[int], amp: torch.dtype | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over the classes present), the ROC-AUC of the fake
    probability (None with one kind only) and the (unweighted) mean cross-entropy of ``model`` on a
    loader, plus the confusion counts."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    ys: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x).float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(1)
            correct += int((pred == y).sum())
            n += int(y.numel())
            np.add.at(confusion, (y.cpu().numpy(), pred.cpu().numpy()), 1)
            ys.append(y.cpu().numpy())
            ps.append(torch.softmax(logits, 1)[:, fake_targets].sum(1).cpu().numpy())
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    present = confusion.sum(axis=1) > 0
    fake = np.isin(np.concatenate(ys), fake_targets) if ys else np.zeros(0, bool)
    auc = None
    if fake.any() and not fake.all():
        from sklearn.metrics import roc_auc_score
        auc = float(roc_auc_score(fake, np.concatenate(ps)))
    return {"accuracy": correct / max(n, 1), "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "auc": auc, "loss": loss_sum / max(n, 1), "n": n, "confusion": confusion.tolist()}


def _calibrate_tiles(model: torch.nn.Module, val_ds: TileDataset, preprocess: dict[str, Any],
                     classes: list[str], fake_classes: list[str], device: torch.device, *,
                     chained_copies: int = 0, seed: int = 0) -> dict[str, Any]:
    """Native tile mode: the logistic calibration of the image statistic (log-odds of the most
    suspicious tile) per size group, fitted on the validation split's *real* images only
    (:func:`medforensics.learn.calibration.fit_logistic`); fakes play no part. With
    ``chained_copies`` = k, each real image also counts k times after a random export chain
    (:func:`medforensics.learn.export.export_chain`), so exported authentic images are as
    authentic to the calibration as archive originals."""
    from .export import export_chain
    from .predict import Classifier

    clf = Classifier(model, {"classes": classes, "fake_classes": fake_classes, "preprocess": preprocess},
                     batch=256, device=device)
    groups: dict[str, list[float]] = {}
    for i, r in enumerate(val_ds.rows):
        if classes[int(r["_target"])] in fake_classes:
            continue
        a = val_ds.array(i)
        groups.setdefault(size_group(a.shape), []).append(clf.image_statistic(a))
        rng = np.random.default_rng([seed, 7, i])
        for _ in range(chained_copies):
            b = export_chain(a, None, rng)[0]
            groups.setdefault(size_group(b.shape), []).append(clf.image_statistic(b))
    out = {g: {**fit_logistic(v), "n_images": len(v)} for g, v in sorted(groups.items()) if len(v) >= 5}
    if not out:
        raise MedForensicsError(None, "too few real validation images to calibrate the tile model (5 per size group)")
    return out


def train(config: TrainConfig, manifest: str | Path, out: str | Path, *,
          progress: Optional[Callable[[int, int, str], None]] = None) -> Path:
    """Train ``config.model`` on the forge dataset ``manifest``; write the checkpoint ``out`` (a new
    file) and return its path.

    ``progress(step, total_steps, text)`` is called after every optimisation step (and with the
    validation result after each epoch). Raises MedForensicsError for a patient leak, an unusable
    manifest or no training/validation items; FileExistsError if ``out`` exists.
    """
    manifest, out = Path(manifest), Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    with torch_threads(config.num_threads):
        return _train(config, manifest, out, progress)


def _train(config: TrainConfig, manifest: Path, out: Path, progress: Optional[Callable[[int, int, str], None]]) -> Path:
    t0 = time.perf_counter()
    device = _device(config.device)
    rows = read_manifest(manifest)
    patients = refuse_leaks(rows, manifest)
    classes, fake_classes = TASKS[config.task]
    try:
        used = select_rows(rows, config.task, kinds=config.kinds, methods=config.methods)
    except ValueError as e:
        raise MedForensicsError(manifest, str(e)) from None
    if config.min_size:
        used = [r for r in used if min(item_shape(r["_path"])) >= config.min_size]
    split_rows = {s: [r for r in used if r["split"] == s] for s in ("train", "validation", "test")}
    for s in ("train", "validation"):
        if not split_rows[s]:
            raise MedForensicsError(manifest, f"no {s} items for task {config.task}"
                                    + (f" (kinds {config.kinds})" if config.kinds else "")
                                    + (f" (methods {config.methods})" if config.methods else ""))
    val_rows = [r for r in split_rows["validation"] if not r.get("augmentation")]
    if not val_rows:
        raise MedForensicsError(manifest, "no validation items left once augmented copies are set aside")
    if config.max_validation and len(val_rows) > config.max_validation:
        keep = np.linspace(0, len(val_rows) - 1, num=config.max_validation).round().astype(int)
        val_rows = [val_rows[i] for i in np.unique(keep)]

    seed_everything(config.seed)
    fake_targets = [classes.index(c) for c in fake_classes]
    native = config.resize == "none"
    preprocess = default_preprocess(config.image_size, config.crop, resize=config.resize, stride=config.stride,
                                    levels=config.levels)
    if native:
        train_ds = TileDataset(split_rows["train"], preprocess, fake_targets, tiles_per_item=config.tiles_per_item,
                               seed=config.seed, export_chains=config.export_chains)
    else:
        # held data are transformed once: keep the decoded items in float32 until then, as validation does
        train_ds = ItemDataset(split_rows["train"], preprocess, fake_targets, augment_fakes=config.augment_fakes,
                               cache_dtype=np.float32 if config.preload else np.float16)
    if config.normalise == "dataset":
        preprocess["mean"], preprocess["std"] = _norm_stats(train_ds)
        train_ds.preprocess = dict(preprocess)
    if native:
        val_ds = TileDataset(val_rows, preprocess, fake_targets, tiles_per_item=2, seed=config.seed + 1, fixed=True,
                             export_chains=config.export_chains)
    else:
        val_ds = ItemDataset(val_rows, preprocess, fake_targets, cache_dtype=np.float32)

    targets = np.array(train_ds.targets())
    counts = np.bincount(targets, minlength=len(classes)).astype(float)
    if config.loss == "weighted-ce":
        weights = np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0)
    else:
        weights = np.ones(len(classes))

    gen = torch.Generator().manual_seed(config.seed)
    amp = _amp(config.amp, device)
    preload = config.preload and not native  # random tiles are drawn anew each epoch: nothing fixed to hold
    t_load = time.perf_counter()
    if preload:
        def held(done: int, total: int) -> None:
            if progress:
                progress(done, total, f"holding items on {device.type}")

        train_loader = _HeldBatches(train_ds, config.batch, device, gen, held)
        val_loader = _HeldBatches(val_ds, config.batch, device)
        train_ds._cache.clear()  # the tensors are held now; the decoded items are not needed again
        val_ds._cache.clear()
    else:
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch, shuffle=True, generator=gen,
                                                   num_workers=0, drop_last=False)
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=config.batch, shuffle=False, num_workers=0)
    load_seconds = time.perf_counter() - t_load
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model_config = {"num_classes": len(classes), "dropout": config.dropout, "in_channels": 1}
    model = build_model(config.model, **model_config, image_size=config.crop).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))

    steps_per_epoch = len(train_loader)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state = None
    step, stopped_by, epochs_done = 0, "epochs", 0.0
    t_train = time.perf_counter()
    t_start = time.time() - (t_train - t0)  # the time budget counts from the start, data loading included
    for epoch in range(1, config.epochs + 1):
        if native:
            train_ds.set_epoch(epoch)
        model.train()
        batches = iter(train_loader)
        acc = {"loss_sum": 0.0, "seen": 0}

        def train_step(i: int, epoch: int = epoch) -> dict[str, float]:
            nonlocal step
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            acc["loss_sum"] += float(loss.detach()) * int(y.numel())
            acc["seen"] += int(y.numel())
            if progress:
                progress(step, total, f"epoch {epoch}/{config.epochs} loss {acc['loss_sum'] / acc['seen']:.4f}")
            return {"loss": float(loss.detach())}

        # the epoch's steps, cut short by the step budget (max_steps) or the time budget (max_minutes)
        n = len(train_loader) if not config.max_steps else min(len(train_loader), config.max_steps - step)
        run = fit(train_step, steps=n, max_minutes=config.max_minutes, start=t_start, progress=False,
                  desc=f"epoch {epoch}")
        stop = False
        if config.max_steps and step >= config.max_steps:
            stopped_by, stop = "max_steps", True
        elif run.stopped_by == "max_minutes":
            stopped_by, stop = "max_minutes", True
        loss_sum, seen = acc["loss_sum"], acc["seen"]
        epochs_done = epoch - 1 + seen / len(train_ds)
        val = _evaluate(model, val_loader, device, len(classes), fake_targets, amp)
        rec = {"epoch": epoch, "epochs_done": round(epochs_done, 4), "steps": step,
               "train_loss": loss_sum / max(seen, 1), "accuracy": val["accuracy"],
               "balanced_accuracy": val["balanced_accuracy"], "auc": val["auc"], "loss": val["loss"],
               "confusion": val["confusion"]}
        history.append(rec)
        if progress:
            progress(step, total, f"epoch {epoch} validation accuracy {val['accuracy']:.4f} loss {val['loss']:.4f}")
        if best is None or (rec[config.select] or 0.0, -rec["loss"]) > (best[config.select] or 0.0, -best["loss"]):
            best = rec
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if stop:
            break
    model.load_state_dict(best_state)
    calibration = (_calibrate_tiles(model, val_ds, preprocess, list(classes), list(fake_classes), device,
                                    chained_copies=CALIBRATION_CHAINS if config.export_chains else 0, seed=config.seed)
                   if native else None)
    seconds = time.perf_counter() - t0

    def split_counts(rs: list[dict[str, str]]) -> dict[str, int]:
        c = np.bincount([int(r["_target"]) for r in rs], minlength=len(classes))
        return {cls: int(n) for cls, n in zip(classes, c)}

    card = {
        "architecture": config.model,
        "config": model_config,
        "classes": list(classes),
        "fake_classes": list(fake_classes),
        "task": config.task,
        "preprocess": preprocess,
        "training": {
            "config": config.to_dict(), "seed": config.seed, "steps": step, "epochs_done": round(epochs_done, 4),
            "seconds": round(seconds, 2), "train_seconds": round(time.perf_counter() - t_train, 2),
            "device": str(device), "stopped_by": stopped_by,
            "amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "none"), "preload": preload,
            "preload_seconds": round(load_seconds, 2) if preload else None, "num_threads": torch.get_num_threads(),
            "class_weights": [round(float(w), 6) for w in weights], "torch": torch.__version__,
            "train_items_seen_per_epoch": len(train_ds),
        },
        "data": {
            # where the manifest lay is this machine's business: its folder and name, its hash, and the
            # source data sets of the rows used say what the model was fitted on
            "manifest": f"{manifest.resolve().parent.name}/{manifest.name}", "sha256": _sha256(manifest),
            "sources": sorted({r.get("source_dataset") or "?" for r in used}),
            "counts": {s: split_counts(rs) for s, rs in split_rows.items()},
            "validation_items_used": len(val_rows),
            "train_items_with_augmentation": (split_counts([train_ds.rows[i] for i, _ in train_ds.items])
                                              if not native else split_counts(train_ds.rows)),
            "patients": {s: sorted(p) for s, p in sorted(patients.items())},
            "kinds": config.kinds, "methods": config.methods,
        },
        "metrics": {
            "validation": history,
            "best": {k: best[k] for k in ("epoch", "epochs_done", "steps", "accuracy", "balanced_accuracy", "auc",
                                          "loss", "confusion")},
            "selected_by": config.select,
        },
    }
    if calibration is not None:
        card["calibration"] = calibration
    return save_checkpoint(model, out, card)
