"""Training the vanilla CNN (paper section 2.1) on MTFL, resumable, on CPU.

Recipe (``facealign train``):

* Faces: MTFL ``train.txt`` with the fixed 90/10 split of
  :func:`facealign.research.data.train_validation_split`; boxes from the default detector
  (faces it misses are dropped, as in the paper).
* Input: the box cropped to 40 x 40 RGB, minus the training mean image, divided
  by the training std image.
* Loss: Eq. 1, squared L2 over all points over the squared ground-truth
  inter-ocular distance. Adam.
* Augmentation: random box jitter (shift and scale) so that the engine tolerates
  boxes from other detectors. ``augment="full"`` (our default) adds horizontal
  mirroring with left/right swap, small rotations and brightness/contrast
  changes; ``augment="paper"`` keeps to the jitter alone.
* Model selection: the epoch with the lowest validation error is kept.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..constants import INPUT_SIZE, NUM_POINTS, TRAINING_DETECTOR
from ..cropping import box_matrices, crop_faces, to_box_coordinates, warp_crop
from ..engine import mirror_coordinates
from ..reboxing import BoxFromLandmarks
from .data import LandmarkSet, cached_boxes, load_mtfl, train_validation_split
from .evaluation import normalized_errors
from .model import FC5_DIM, PAPER_CHANNELS, VanillaCNN
from .training_weights import WEIGHTS_FORMAT_VERSION, save_weights

logger = logging.getLogger(__name__)

AUGMENTATIONS = ("paper", "full")


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_vanilla` (all recorded in the weights' ``meta``)."""

    epochs: int = 150
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    augment: str = "full"
    jitter_shift: float = 0.05  # fraction of the box size
    jitter_scale: float = 0.07  # relative
    rotation_deg: float = 12.0  # "full" only
    channels: tuple[int, ...] = PAPER_CHANNELS  # CL1-CL4 output channels
    fc5_dim: int = FC5_DIM
    seed: int = 0
    detector: str = TRAINING_DETECTOR
    threads: int = 1  # torch threads; 0: torch default


# ---------------------------------------------------------------- data preparation


@dataclass
class PreparedFaces:
    """Decoded images, matched detector boxes and ground truth of the faces kept."""

    images: np.ndarray  # N x H x W x 3 uint8
    boxes: np.ndarray  # N x 4
    points: np.ndarray  # N x 5 x 2
    index: np.ndarray  # rows of the original listing


def prepare_faces(
    data: LandmarkSet,
    cache_dir: str | Path,
    detector: str = TRAINING_DETECTOR,
    rows: np.ndarray | None = None,
    images: np.ndarray | None = None,
) -> tuple[PreparedFaces, np.ndarray]:
    """Decode, detect (cached) and keep the faces the detector found.

    Returns the kept faces and the full ``N x 5`` box array (NaN rows are misses).
    """
    if images is None:
        images = data.load_images()
    boxes = cached_boxes(data, images, cache_dir, detector)
    found = np.isfinite(boxes[:, 0])
    logger.info(f"{detector} found {found.sum()} of {len(found)} faces ({100 * found.mean():.1f}%)")
    keep = np.arange(len(data)) if rows is None else np.asarray(rows)
    keep = keep[found[keep]]
    return PreparedFaces(images[keep], boxes[keep, :4], data.points[keep], keep), boxes


def load_train_validation(
    mtfl_root: str | Path, cache_dir: str | Path, detector: str, limit: int | None
) -> tuple[PreparedFaces, PreparedFaces]:
    """The detected faces of the fixed training and validation splits of MTFL ``train.txt``."""
    data = load_mtfl(mtfl_root, "train")
    if limit is not None:
        data = data.subset(np.arange(min(limit, len(data))))
    train_rows, val_rows = train_validation_split(len(data))
    images = data.load_images()
    # Each split is detected (and cached) on its own, keyed like the caches of
    # ``fit-box-maps`` (training split) and ``evaluate --split validation``, so
    # the boxes are found once per split whichever command runs first.
    train, _ = prepare_faces(data.subset(train_rows), cache_dir, detector, None, images[train_rows])
    val, _ = prepare_faces(data.subset(val_rows), cache_dir, detector, None, images[val_rows])
    train.index, val.index = train_rows[train.index], val_rows[val.index]
    logger.info(f"training faces {len(train.index)}, validation faces {len(val.index)}")
    return train, val


def jittered_boxes(
    boxes: np.ndarray, shift: float, scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes moved by up to ``shift`` of their size and scaled by up to ``exp(+-scale)``, and their centres."""
    size = boxes[:, 2] - boxes[:, 0]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    centre = centre + rng.uniform(-shift, shift, (len(boxes), 2)) * size[:, None]
    size = size * np.exp(rng.uniform(-scale, scale, len(boxes)))
    return np.concatenate([centre - size[:, None] / 2, centre + size[:, None] / 2], 1), centre


def augmented_batch(
    faces: PreparedFaces, idx: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crops and box-normalised targets for the faces ``idx``, randomly perturbed."""
    n = len(idx)
    boxes = faces.boxes[idx].astype(np.float64)
    pts = faces.points[idx].astype(np.float64)
    jittered, centre = jittered_boxes(boxes, cfg.jitter_shift, cfg.jitter_scale, rng)
    mats = box_matrices(jittered)
    crops = np.empty((n, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    if cfg.augment == "full":
        angles = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, n)
        for i in range(n):
            rot = np.vstack([cv2.getRotationMatrix2D(tuple(centre[i]), angles[i], 1.0), [0, 0, 1]])
            m = mats[i] @ rot
            crops[i] = warp_crop(faces.images[idx[i]], m)
            pts[i] = pts[i] @ rot[:2, :2].T + rot[:2, 2]
    else:
        for i in range(n):
            crops[i] = warp_crop(faces.images[idx[i]], mats[i])
    target = to_box_coordinates(pts, jittered)
    if cfg.augment == "full":
        flip = rng.random(n) < 0.5
        crops[flip] = crops[flip, :, ::-1]
        target[flip] = mirror_coordinates(target[flip])
        gain = rng.uniform(0.75, 1.25, (n, 1, 1, 1))
        bias = rng.uniform(-20, 20, (n, 1, 1, 1))
        crops = np.clip(crops * gain + bias, 0, 255).astype(np.uint8)
    return crops, target


def augmented_batches(
    faces: PreparedFaces, cfg: TrainConfig, mean: torch.Tensor, std: torch.Tensor
) -> Callable[[np.random.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """:func:`run_epochs`' ``batches`` of ``facealign train``: every face once per epoch, in
    a random order, in batches of ``cfg.batch_size`` (:func:`augmented_batch`), normalised."""

    def batches(rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.permutation(len(faces.index))
        for s in range(0, len(order), cfg.batch_size):
            crops, target = augmented_batch(faces, order[s : s + cfg.batch_size], cfg, rng)
            yield to_tensor(crops, mean, std), torch.from_numpy(target.reshape(len(crops), -1)).float()

    return batches


def one_pass_validation(
    model: torch.nn.Module, crops: torch.Tensor, val: PreparedFaces
) -> Callable[[], dict[str, float]]:
    """:func:`run_epochs`' ``validate`` of ``facealign train``: the NME (%) of one pass of
    ``model`` on the normalised ``crops`` of ``val``'s boxes."""
    truth = to_box_coordinates(val.points, val.boxes)

    def validate() -> dict[str, float]:
        model.eval()
        with torch.inference_mode():
            pred = model(crops).view(-1, NUM_POINTS, 2).double().numpy()
        return {"val_nme": float(np.mean(normalized_errors(pred, truth))) * 100}

    return validate


def mean_std_images(crops: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and std images (``3 x 40 x 40``) of uint8 crops."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).double()
    return x.mean(0).float(), x.std(0).clamp_min(1.0).float()


def to_tensor(crops: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
    return (x - mean) / std


def interocular_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``||P - P_hat||^2 / ||p_hat_1 - p_hat_2||^2``, averaged over the batch.

    ``pred`` and ``target`` are ``N x 10`` (``x1, y1, ..., x5, y5``).
    """
    t = target.view(-1, NUM_POINTS, 2)
    iod2 = ((t[:, 0] - t[:, 1]) ** 2).sum(1).clamp_min(1e-6)
    return (((pred - target) ** 2).sum(1) / iod2).mean()


# ---------------------------------------------------------------- checkpoints


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` written atomically (:func:`facealign.imageio.write_bytes_atomic`): never a half-written file."""
    from ..imageio import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def weights_dict(
    model: VanillaCNN,
    mean: torch.Tensor,
    std: torch.Tensor,
    meta: dict,
    box_model: BoxFromLandmarks,
    heads: torch.nn.Module | None = None,
    gmm: dict[str, Any] | None = None,
) -> dict:
    """The training weights format (read by :func:`~facealign.research.training_weights.load_weights`, written by
    :func:`~facealign.research.training_weights.save_weights`), for the vanilla network or, with ``heads`` and
    ``gmm``, TCNN.

    ``box_model`` is re-boxing's (:mod:`facealign.reboxing`), fitted on the
    training faces; it depends on the data and the detector, not on the network.
    ``meta`` holds plain values; its ``"config"`` is the settings dict of the run.
    """
    state = {
        "format": WEIGHTS_FORMAT_VERSION,
        "vanilla": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "mean": mean.clone(),
        "std": std.clone(),
        "meta": meta,
        "box_model": torch.from_numpy(box_model.coef.copy()),
    }
    if heads is not None and gmm is not None:
        state["heads"] = {k: v.detach().clone() for k, v in heads.state_dict().items()}
        state["gmm"] = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in gmm.items()}
    return state


def calibrate_mirror_shift(path: Path, engine: str, crops: np.ndarray) -> float:
    """Measure the mirror shift on validation crops and store it in the weights at ``path``.

    See :func:`facealign.research.training_weights.estimate_mirror_shift`.
    """
    from ..engine import LandmarkEngine
    from .training_weights import estimate_mirror_shift, load_weights, predict_pair

    shift = estimate_mirror_shift(*predict_pair(LandmarkEngine(engine, weights=path), crops))
    state = load_weights(path)
    state["mirror_shift"] = shift
    save_weights(state, path)
    return shift


def run_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    epochs: int,
    batches: Callable[[np.random.Generator], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[], dict[str, float]],
    checkpoint: Path,
    settings: dict[str, Any],
    data: int,
    resume: bool = True,
    best: tuple[float, int, dict[str, Any] | None] = (float("inf"), -1, None),
) -> tuple[float, int, dict[str, Any], list[dict[str, float]]]:
    """The training loop of ``facealign train`` and ``train-hard``: epochs, the best one kept, resumable.

    Each epoch runs ``batches(rng)`` (``(x, y)`` tensors) through ``loss_fn`` and an
    optimizer step, steps the scheduler, then ``validate()`` (a dict whose
    ``"val_nme"`` picks the best epoch, % IOD; the other figures go to the
    history and the log) and writes ``checkpoint`` (atomically). A checkpoint of
    the same ``settings`` (the thread count aside) and ``data`` (e.g. the number
    of training faces) is resumed when ``resume``; another is an error. ``best``
    is the starting best (NME, epoch, state), e.g. the weights a fine-tune starts
    from. Returns the best NME, its epoch, its state and the history.
    """
    best_nme, best_epoch, best_state = best
    start, history = 0, []
    if resume and checkpoint.exists():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
        # The thread count does not change what is learned; every other setting does.
        same = {k: v for k, v in ck["config"].items() if k != "threads"} == {
            k: v for k, v in settings.items() if k != "threads"
        }
        if not same or ck.get("data") != data:
            raise ValueError(f"{checkpoint} was made with other settings; remove it or use another work dir")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        start, best_nme, best_epoch, history, best_state = (
            ck["epoch"], ck["best"], ck["best_epoch"], ck["history"], ck["best_state"]
        )  # fmt: skip
        logger.info(f"resuming after epoch {start}")
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        total, seen = 0.0, 0
        for x, y in batches(rng):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
        scheduler.step()
        scores = validate()
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), **scores})
        if scores["val_nme"] < best_nme:
            best_nme, best_epoch = scores["val_nme"], epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        extra = "".join(f", {k} {v:.2f}" for k, v in scores.items() if k != "val_nme")
        logger.info(
            f"epoch {epoch + 1}/{epochs} loss {total / max(seen, 1):.5f} val NME {scores['val_nme']:.3f}%{extra} "
            f"(best {best_nme:.3f}% @ {best_epoch}) {time.perf_counter() - t0:.1f}s"
        )
        atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "best": best_nme,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "history": history,
                "config": settings,
                "data": data,
            },
            checkpoint,
        )
    if best_state is None:
        raise ValueError("no epoch was run")
    return best_nme, best_epoch, best_state, history


def train_vanilla(
    mtfl_root: str | Path,
    out: str | Path,
    work_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = True,
    limit: int | None = None,
) -> dict:
    """Train the vanilla CNN and write its weights to ``out``.

    Parameters
    ----------
    mtfl_root : path
        The MTFL folder (``train.txt`` and images).
    out : path
        Weights file to write (the best validation epoch).
    work_dir : path
        Holds the detector-box cache and ``vanilla-checkpoint.pt``; a run with the
        same ``work_dir`` resumes from the last finished epoch.
    limit : int, optional
        Use only the first ``limit`` training faces (for quick tests).

    Returns
    -------
    dict
        Summary: epochs run, best epoch, best validation error (% IOD).
    """
    cfg = config or TrainConfig()
    if cfg.augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work_dir = Path(work_dir)
    out = Path(out)
    train, val = load_train_validation(mtfl_root, work_dir, cfg.detector, limit)
    mean, std = mean_std_images(crop_faces(train.images, train.boxes))
    val_x = to_tensor(crop_faces(val.images, val.boxes), mean, std)

    torch.manual_seed(cfg.seed)
    model = VanillaCNN(cfg.fc5_dim, cfg.channels)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.01)
    rng = np.random.default_rng(cfg.seed)
    n = len(train.index)

    best, best_epoch, best_state, history = run_epochs(
        model, opt, sched, rng, cfg.epochs, augmented_batches(train, cfg, mean, std), interocular_loss,
        one_pass_validation(model, val_x, val),
        work_dir / "vanilla-checkpoint.pt", asdict(cfg), n, resume,
    )  # fmt: skip
    model.load_state_dict(best_state)
    meta = {
        "engine": "vanilla",
        "config": asdict(cfg),
        "best_epoch": best_epoch,
        "val_nme": best,
        "n_train": n,
        "n_val": len(val.index),
    }
    save_weights(weights_dict(model, mean, std, meta, BoxFromLandmarks.fit(train.points, train.boxes)), out)
    shift = calibrate_mirror_shift(out, "vanilla", crop_faces(val.images, val.boxes))
    logger.info(f"wrote {out} (validation NME {best:.3f}% at epoch {best_epoch}; mirror shift {shift:.4f})")
    return {"epochs": cfg.epochs, "best_epoch": best_epoch, "val_nme": best, "history": history}
