"""Identity-classification training of :class:`~recognition.backbone.AlexNet`.

The network is trained with cross-entropy to classify the identities of
already-aligned face crops (the paper fine-tunes AlexNet on CASIA WebFace);
its penultimate layer is then used as the verification feature. Training is
resumable: after every epoch a checkpoint with the model, optimizer, epoch,
random-generator states and history is written atomically, and
:func:`train_alexnet` continues from it when called again.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from recognition.backbone import AlexNet, AlexNetConfig, load_alexnet_checkpoint, save_alexnet
from recognition.protocol import items_from_identity_list

__all__ = [
    "TrainingConfig",
    "TrainResult",
    "CropDataset",
    "read_sample_list",
    "channel_statistics",
    "train_alexnet",
]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of :func:`train_alexnet`.

    Attributes
    ----------
    epochs : int
        Total number of epochs (a resumed run stops at this epoch count).
    batch_size : int
        Crops per step.
    optimizer : str
        ``"sgd"`` (with momentum) or ``"adamw"``.
    lr : float
        Initial learning rate.
    momentum : float
        SGD momentum.
    weight_decay : float
        L2 (SGD) or decoupled (AdamW) weight decay.
    lr_schedule : str
        ``"cosine"`` (cosine decay from ``lr`` towards 0 over ``epochs``, set
        at the start of every epoch) or ``"constant"``.
    flip : bool
        Random horizontal flips (probability 1/2).
    jitter : int
        Crop jitter in pixels: each crop is reflect-padded by ``jitter`` and a
        random ``input_size`` window is taken (0 disables).
    log_every : int
        Progress line every this many batches (and at the end of each epoch).
    num_threads : int or None
        Passed to :func:`torch.set_num_threads` for the duration of the
        training (the previous value is restored afterwards); ``None`` keeps
        the current setting.
    num_workers : int
        :class:`torch.utils.data.DataLoader` worker processes for image decoding.
    seed : int
        Seed of the initial weights, shuffling and augmentation.
    """

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    flip: bool = True
    jitter: int = 4
    log_every: int = 50
    num_threads: int | None = None
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("epochs, batch_size and log_every must be >= 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 <= momentum < 1")
        if self.jitter < 0 or self.num_workers < 0:
            raise ValueError("jitter and num_workers must be >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")

    def learning_rate(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``."""
        if self.lr_schedule == "constant":
            return self.lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))


@dataclass
class TrainResult:
    """Outcome of :func:`train_alexnet`.

    Attributes
    ----------
    checkpoint : pathlib.Path
        Checkpoint file (loadable by :meth:`AlexNetBackbone.load`).
    epochs_completed : int
        Epochs done in total, including resumed ones.
    classes : list of str
        Identity of every class index.
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``accuracy`` (training, with
        augmentation), ``lr``, ``seconds``; includes epochs of earlier runs.
    """

    checkpoint: Path
    epochs_completed: int
    classes: list[str]
    history: list[dict[str, float]] = field(default_factory=list)


def read_sample_list(path: str | Path, root: str | Path | None = None) -> list[tuple[Path, str]]:
    """Read a list of aligned crops and their identities.

    ``.csv`` files are read as CSV with two columns ``path, identity`` (a
    first row ``path,identity`` / ``image,identity`` is taken as a header);
    other files as whitespace-separated ``path identity`` lines, where ``#``
    lines are comments and the path may contain spaces (split at the last
    whitespace run).

    Parameters
    ----------
    path : str or pathlib.Path
        The list file.
    root : str or pathlib.Path, optional
        Folder relative paths are resolved against; the list's folder by default.

    Returns
    -------
    list of (pathlib.Path, str)
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for line_no, values in enumerate(csv.reader(handle), start=1):
                values = [v.strip() for v in values]
                if not any(values):
                    continue
                if len(values) < 2 or not values[0] or not values[1]:
                    raise ValueError(f"{path}:{line_no}: expected 'path,identity', got {values}")
                if (
                    line_no == 1
                    and values[0].lower() in ("path", "image", "file")
                    and values[1].lower() in ("identity", "label", "subject", "subject_id")
                ):
                    continue
                rows.append((values[0], values[1]))
    else:
        rows = items_from_identity_list(path)
    return [(base / p, identity) for p, identity in rows]


def _load_rgb(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8)  # writable copy


class CropDataset(Dataset[tuple[torch.Tensor, int]]):
    """Aligned crops read from disk as ``3 x S x S`` uint8 tensors with their class index.

    Images whose size is not ``S x S`` are resized (bilinear) to it.
    """

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], size: int) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = _load_rgb(self.paths[index], self.size)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), self.labels[index]


def channel_statistics(dataset: CropDataset, max_images: int = 256, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of pixels in ``[0, 1]``, on a seeded sample."""
    rng = np.random.default_rng(seed)
    count = min(max_images, len(dataset))
    chosen = np.sort(rng.choice(len(dataset), size=count, replace=False))
    pixels = torch.stack([dataset[int(i)][0] for i in chosen]).float().div_(255.0)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def _augment(x: torch.Tensor, config: TrainingConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flip and reflect-padded crop jitter of a float batch ``(N, 3, S, S)``."""
    n, _, size, _ = x.shape
    if config.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if config.jitter > 0:
        j = config.jitter
        padded = F.pad(x, (j, j, j, j), mode="reflect" if j < size else "replicate")
        offsets = torch.randint(0, 2 * j + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets)])
    return x


def _make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train_alexnet(
    samples: Sequence[tuple[str | Path, str | int]],
    checkpoint: str | Path,
    *,
    input_size: int = 112,
    width: float = 1.0,
    dropout: float = 0.5,
    config: TrainingConfig | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train an :class:`AlexNet` to classify the identities of aligned crops.

    Parameters
    ----------
    samples : sequence of (path, label)
        Already-aligned face crops (any size; resized to ``input_size``) and
        their identity labels; labels are mapped to class indices in sorted
        order of their string form.
    checkpoint : str or pathlib.Path
        Checkpoint file, rewritten atomically after every epoch. It holds the
        model (loadable by :meth:`AlexNetBackbone.load`), optimizer state,
        epoch count, random-generator states, class names and history.
    input_size, width, dropout : see :class:`AlexNetConfig`.
    config : TrainingConfig, optional
        Optimisation settings (defaults of :class:`TrainingConfig`).
    resume : bool
        Continue from ``checkpoint`` when it exists (it must describe the same
        network and classes); otherwise start afresh and overwrite it.
    log : callable, optional
        Receives progress lines; the module logger (INFO) by default.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If ``samples`` is empty, has fewer than two identities, or the
        checkpoint to resume does not match the requested network/classes.

    Notes
    -----
    The global torch random generator is seeded (fresh start) or restored
    (resume) so that dropout is reproducible; 1 epoch + resume gives the same
    weights as 2 epochs in one call (with ``num_workers = 0``).
    """
    config = config or TrainingConfig()
    emit = log or _LOG.info
    if not samples:
        raise ValueError("no training samples")
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(samples, Path(checkpoint), input_size, width, dropout, config, resume, emit)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    samples: Sequence[tuple[str | Path, str | int]],
    checkpoint: Path,
    input_size: int,
    width: float,
    dropout: float,
    config: TrainingConfig,
    resume: bool,
    emit: Callable[[str], None],
) -> TrainResult:
    """Body of :func:`train_alexnet` (thread count already set)."""
    classes = sorted({str(label) for _, label in samples})
    if len(classes) < 2:
        raise ValueError(f"need at least two identities, got {classes}")
    index_of = {name: i for i, name in enumerate(classes)}
    dataset = CropDataset([p for p, _ in samples], [index_of[str(label)] for _, label in samples], input_size)
    model_config = AlexNetConfig(num_classes=len(classes), input_size=input_size, width=width, dropout=dropout)

    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint.is_file():
        payload = load_alexnet_checkpoint(checkpoint)
        if payload["config"] != asdict(model_config) or payload.get("classes") != classes:
            raise ValueError(
                f"{checkpoint}: checkpoint describes another network or class list; use resume=False or another path"
            )
        if payload.get("optimizer_name") != config.optimizer:
            raise ValueError(
                f"{checkpoint}: was trained with {payload.get('optimizer_name')!r}, not {config.optimizer!r}"
            )
        model = AlexNet(model_config)
        model.load_state_dict(payload["state_dict"])
        optimizer = _make_optimizer(model, config)
        optimizer.load_state_dict(payload["optimizer"])
        generator.set_state(payload["generator_state"])
        torch.set_rng_state(payload["torch_rng_state"])
        mean, std = payload["mean"], payload["std"]
        start_epoch = int(payload["epoch"])
        history = list(payload.get("history", []))
        emit(f"resumed {checkpoint} at epoch {start_epoch}")
    else:
        torch.manual_seed(config.seed)
        model = AlexNet(model_config)
        optimizer = _make_optimizer(model, config)
        mean, std = channel_statistics(dataset, seed=config.seed)

    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    n_batches = math.ceil(len(dataset) / config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        lr = config.learning_rate(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(dataset), generator=generator).tolist()
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=order, num_workers=config.num_workers)
        model.train()
        started = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch, (images, labels) in enumerate(loader, start=1):
            x = _augment(images.float().div_(255.0), config, generator)
            logits = model((x - mean_t) / std_t)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
            if batch % config.log_every == 0 or batch == n_batches:
                rate = seen / max(time.perf_counter() - started, 1e-9)
                emit(
                    f"epoch {epoch + 1}/{config.epochs} batch {batch}/{n_batches} loss {loss_sum / seen:.4f} "
                    f"acc {correct / seen:.3f} lr {lr:.2e} {rate:.1f} img/s"
                )
        history.append(
            {
                "epoch": float(epoch + 1),
                "loss": loss_sum / seen,
                "accuracy": correct / seen,
                "lr": lr,
                "seconds": time.perf_counter() - started,
            }
        )
        save_alexnet(
            checkpoint,
            model,
            mean,
            std,
            extra={
                "optimizer": optimizer.state_dict(),
                "optimizer_name": config.optimizer,
                "epoch": epoch + 1,
                "generator_state": generator.get_state(),
                "torch_rng_state": torch.get_rng_state(),
                "classes": classes,
                "training": asdict(config),
                "history": history,
            },
        )
        emit(f"epoch {epoch + 1} done: loss {loss_sum / seen:.4f} acc {correct / seen:.3f}; saved {checkpoint}")
    return TrainResult(
        checkpoint=checkpoint, epochs_completed=max(start_epoch, config.epochs), classes=classes, history=history
    )
