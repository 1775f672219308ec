"""Training for hard faces (issue 16): profiles, small, blurred and occluded faces.

Same network as the paper's vanilla CNN (:class:`facealign.research.model.VanillaCNN`,
40 x 40 input; the paper's widths unless ``channels`` / ``fc5_dim`` say otherwise),
trained differently (``facealign train-hard``);
the paper-faithful recipe (:mod:`facealign.research.training`, ``facealign train``) is
untouched. What changes, each switchable so that it can be measured alone:

* **Boxes of the default detector as well as dlib's** (``detectors``): every
  training face carries the box of each listed detector that found it, mapped
  to the training convention by :func:`facealign.reboxing.training_boxes`; a
  batch draws one of them per face. Faces dlib misses but RetinaFace finds (the
  hard ones) are trained on too.
* **Stronger augmentation** (``augment="hard"``): in-plane rotation up to
  ``rotation_deg`` (30), larger shift and scale jitter, downscale-then-upscale
  (the face seen at 12-30 px, then brought back to 40 x 40), Gaussian blur,
  JPEG re-encoding, occlusion patches, per-channel colour gains and grey, on top
  of the mirroring and brightness/contrast of ``augment="full"``.
* **Pose-balanced sampling** (``pose_balance``): each epoch draws faces with
  probability proportional to ``count(pose) ** -pose_balance`` (0: uniform; 1:
  every pose equally often; 0.5 by default), as many draws as faces.
* **Loss** (``loss``): ``"eq1"`` (the paper's Eq. 1) or ``"wing"`` (Feng et al.,
  CVPR 2018) on the coordinate errors divided by the inter-ocular distance, with
  ``wing_w`` and ``wing_eps`` in those units (0.1 and 0.02: linear beyond 10% of
  the inter-ocular distance, logarithmic below).
* **Start** (``init``): fine-tune from existing weights (their mean and std
  images and box model are kept) instead of training from scratch.

Model selection: the epoch (0: the ``init`` weights) with the lowest validation
error on the validation split's boxes from the first listed detector, mapped
(the boxes the engine gets at run time with the default detector), re-boxed as
at run time (first pass, :class:`~facealign.reboxing.BoxFromLandmarks`, second
pass; no mirror). The output is a vanilla-format weights
file; ``facealign tweak`` builds TCNN heads on top of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..constants import DEFAULT_DETECTOR, INPUT_SIZE, NUM_POINTS, TRAINING_DETECTOR
from ..cropping import box_matrices, crop_faces, from_box_coordinates, to_box_coordinates, warp_crop
from ..engine import mirror_coordinates
from ..imageio import write_json
from ..reboxing import BoxFromLandmarks, training_boxes
from .data import cached_boxes, detection_points, load_mtfl, train_validation_split
from .evaluation import normalized_errors
from .model import FC5_DIM, PAPER_CHANNELS, VanillaCNN
from .training import (
    calibrate_mirror_shift,
    interocular_loss,
    jittered_boxes,
    mean_std_images,
    run_epochs,
    to_tensor,
    weights_dict,
)
from .training_weights import save_weights

logger = logging.getLogger(__name__)

LOSSES = ("eq1", "wing")
HARD_AUGMENTATIONS = ("full", "hard")


@dataclass
class HardTrainConfig:
    """Settings of :func:`train_hard` (all recorded in the weights' ``meta``)."""

    init: str | None = None  # weights to fine-tune from; None: from scratch
    epochs: int = 40
    batch_size: int = 128
    lr: float = 5e-4
    detectors: tuple[str, ...] = (DEFAULT_DETECTOR, TRAINING_DETECTOR)
    augment: str = "hard"
    jitter_shift: float = 0.08
    jitter_scale: float = 0.15
    rotation_deg: float = 30.0
    p_lowres: float = 0.3  # downscale to lowres_px wide, then back up
    lowres_px: tuple[float, float] = (12.0, 30.0)
    p_blur: float = 0.2
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (15, 60)
    p_occlude: float = 0.25
    p_gray: float = 0.1
    pose_balance: float = 0.5
    loss: str = "eq1"
    wing_w: float = 0.1
    wing_eps: float = 0.02
    channels: tuple[int, ...] = PAPER_CHANNELS  # from scratch; a fine-tune keeps init's (others: an error)
    fc5_dim: int = FC5_DIM
    seed: int = 0
    threads: int = 1
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- data


@dataclass
class MultiBoxFaces:
    """Training faces with one box per detector (NaN where that detector missed)."""

    images: np.ndarray  # N x H x W x 3
    boxes: np.ndarray  # N x D x 4 (training convention)
    points: np.ndarray  # N x 5 x 2
    pose: np.ndarray  # N


def _split_boxes(data, images, cache_dir, detector: str) -> np.ndarray:
    det = cached_boxes(data, images, cache_dir, detector)
    out = np.full((len(det), 4), np.nan)
    found = np.isfinite(det[:, 0])
    pts = detection_points(det)
    if found.any():
        out[found] = training_boxes(detector, det[found, :4], None if pts is None else pts[found])
    return out


def load_multibox(mtfl_root, cache_dir, detectors, limit=None) -> tuple[MultiBoxFaces, MultiBoxFaces]:
    """Training and validation faces of the fixed split with every detector's mapped box."""
    data = load_mtfl(mtfl_root, "train")
    if limit is not None:
        data = data.subset(np.arange(min(limit, len(data))))
    images = data.load_images()
    parts = []
    for rows in train_validation_split(len(data)):
        sub = data.subset(rows)
        boxes = np.stack([_split_boxes(sub, images[rows], cache_dir, d) for d in detectors], 1)
        keep = np.isfinite(boxes[:, :, 0]).any(1)
        parts.append(MultiBoxFaces(images[rows][keep], boxes[keep], sub.points[keep], sub.attributes[keep, 3]))
        logger.info(
            f"{len(rows)} faces: "
            + ", ".join(f"{d} {int(np.isfinite(boxes[:, i, 0]).sum())}" for i, d in enumerate(detectors))
            + f"; kept {int(keep.sum())} (found by any)"
        )
    return parts[0], parts[1]


def pose_weights(pose: np.ndarray, power: float) -> np.ndarray:
    """Sampling probabilities ``count(pose) ** -power``, normalised (unknown pose: a group of its own)."""
    values, inverse, counts = np.unique(pose, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** -power
    return w / w.sum()


# ---------------------------------------------------------------- augmentation


def _pick_boxes(faces: MultiBoxFaces, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    boxes = faces.boxes[idx]  # n x D x 4
    valid = np.isfinite(boxes[:, :, 0])
    r = rng.random(valid.shape) * valid  # a random valid column per row
    return boxes[np.arange(len(idx)), r.argmax(1)]


def hard_batch(faces: MultiBoxFaces, idx: np.ndarray, cfg: HardTrainConfig, rng: np.random.Generator):
    """Crops (uint8 ``n x 40 x 40 x 3``) and box-normalised targets, randomly perturbed."""
    n = len(idx)
    boxes = _pick_boxes(faces, idx, rng).astype(np.float64)
    pts = faces.points[idx].astype(np.float64).copy()
    jittered, centre = jittered_boxes(boxes, cfg.jitter_shift, cfg.jitter_scale, rng)
    mats = box_matrices(jittered)
    angles = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, n)
    crops = np.empty((n, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    hard = cfg.augment == "hard"
    for i in range(n):
        rot = np.vstack([cv2.getRotationMatrix2D(tuple(centre[i]), angles[i], 1.0), [0, 0, 1]])
        crop = warp_crop(faces.images[idx[i]], mats[i] @ rot)
        pts[i] = pts[i] @ rot[:2, :2].T + rot[:2, 2]
        if hard:
            crop = degrade(
                crop, rng, cfg.p_lowres, cfg.lowres_px, cfg.p_blur, cfg.p_jpeg, cfg.jpeg_quality, cfg.p_occlude
            )
        crops[i] = crop
    target = to_box_coordinates(pts, jittered)
    flip = rng.random(n) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    target[flip] = mirror_coordinates(target[flip])
    gain = rng.uniform(0.75, 1.25, (n, 1, 1, 1))
    if hard:
        gain = gain * rng.uniform(0.88, 1.12, (n, 1, 1, 3))
    bias = rng.uniform(-20, 20, (n, 1, 1, 1))
    out = np.clip(crops * gain + bias, 0, 255)
    if hard:
        gray = rng.random(n) < cfg.p_gray
        out[gray] = out[gray].mean(-1, keepdims=True)
    return out.astype(np.uint8), target


def degrade(
    crop: np.ndarray,
    rng: np.random.Generator,
    p_lowres: float,
    lowres_px: tuple[float, float],
    p_blur: float,
    p_jpeg: float,
    jpeg_quality: tuple[int, int],
    p_occlude: float,
) -> np.ndarray:
    """Low resolution (down to ``lowres_px`` wide and back), blur, JPEG and an occlusion
    patch, each with its probability, on a square uint8 crop."""
    s = crop.shape[0]
    if rng.random() < p_lowres:
        w = int(round(rng.uniform(*lowres_px)))
        small = cv2.resize(crop, (w, w), interpolation=cv2.INTER_AREA)
        crop = cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
    if rng.random() < p_blur:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < p_jpeg:
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*jpeg_quality))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            crop = decoded
    if rng.random() < p_occlude:
        crop = crop.copy()
        h, w = rng.integers(s // 5, s // 2, 2)
        y, x = rng.integers(0, s - h), rng.integers(0, s - w)
        if rng.random() < 0.5:
            crop[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        else:
            crop[y : y + h, x : x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return crop


def wing_loss(pred: torch.Tensor, target: torch.Tensor, w: float = 0.1, eps: float = 0.02) -> torch.Tensor:
    """Wing loss on coordinate errors in units of the ground-truth inter-ocular distance.

    ``pred`` and ``target`` are ``N x 10``; summed over coordinates, averaged over faces.
    """
    t = target.view(-1, NUM_POINTS, 2)
    iod = ((t[:, 0] - t[:, 1]) ** 2).sum(1).clamp_min(1e-6).sqrt()
    x = (pred - target).abs() / iod[:, None]
    c = w - w * np.log1p(w / eps)
    return torch.where(x < w, w * torch.log1p(x / eps), x - c).sum(1).mean()


# ---------------------------------------------------------------- training


def train_hard(
    mtfl_root: str | Path,
    out: str | Path,
    work_dir: str | Path,
    config: HardTrainConfig | None = None,
    limit: int | None = None,
) -> dict:
    """Train (or fine-tune) the vanilla network for hard faces; resumable through ``work_dir``."""
    cfg = config or HardTrainConfig()
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}")
    if cfg.augment not in HARD_AUGMENTATIONS:
        raise ValueError(f"augment must be one of {HARD_AUGMENTATIONS}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work_dir, out = Path(work_dir), Path(out)
    train, val = load_multibox(mtfl_root, work_dir, cfg.detectors, limit)
    torch.manual_seed(cfg.seed)
    if cfg.init:
        from .training_weights import load_weights

        init = load_weights(cfg.init)
        model = VanillaCNN.from_state_dict(init["vanilla"])
        asked = (tuple(cfg.channels), cfg.fc5_dim)
        if asked != (PAPER_CHANNELS, FC5_DIM) and asked != (model.channels, model.fc6.in_features):
            raise ValueError(
                f"--init {cfg.init} has widths {model.channels}, FC5 {model.fc6.in_features}; "
                "a fine-tune keeps them (leave out --channels/--fc5)"
            )
        mean, std = init["mean"].float(), init["std"].float()
        box_model = BoxFromLandmarks.from_tensor(init["box_model"])
    else:
        model = VanillaCNN(cfg.fc5_dim, cfg.channels)
        first = np.isfinite(train.boxes[:, 0, 0])
        mean, std = mean_std_images(crop_faces(train.images[first], train.boxes[first, 0]))
        ref = np.isfinite(train.boxes[:, -1, 0])
        box_model = BoxFromLandmarks.fit(train.points[ref], train.boxes[ref, -1])
    vsel = np.isfinite(val.boxes[:, 0, 0])
    val_images, val_boxes = val.images[vsel], val.boxes[vsel, 0]
    val_x = to_tensor(crop_faces(val_images, val_boxes), mean, std)
    val_pose = val.pose[vsel]

    def validate() -> dict[str, float]:
        # As at run time: a first pass, re-boxing, and the reported pass on the new box.
        model.eval()
        with torch.inference_mode():
            first = from_box_coordinates(model(val_x).view(-1, NUM_POINTS, 2).double().numpy(), val_boxes)
            boxes = box_model.rebox(first, val_boxes)
            x = to_tensor(crop_faces(val_images, boxes), mean, std)
            pred = from_box_coordinates(model(x).view(-1, NUM_POINTS, 2).double().numpy(), boxes)
        e = normalized_errors(pred, val.points[vsel]) * 100
        prof = np.isin(val_pose, (1, 5))
        return {"val_nme": float(e.mean()), "val_profile_nme": float(e[prof].mean()) if prof.any() else float("nan")}

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.01)
    rng = np.random.default_rng(cfg.seed)
    probs = pose_weights(train.pose, cfg.pose_balance)
    start_nme = validate()
    logger.info(f"start: validation NME {start_nme['val_nme']:.3f}%")
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss_fn = interocular_loss if cfg.loss == "eq1" else (lambda p, t: wing_loss(p, t, cfg.wing_w, cfg.wing_eps))
    n = len(train.points)

    def batches(rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.choice(n, n, replace=True, p=probs) if cfg.pose_balance else rng.permutation(n)
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            crops, target = hard_batch(train, idx, cfg, rng)
            yield to_tensor(crops, mean, std), torch.from_numpy(target.reshape(len(idx), -1)).float()

    best, best_epoch, best_state, history = run_epochs(
        model, opt, sched, rng, cfg.epochs, batches, loss_fn, validate, work_dir / "hard-checkpoint.pt",
        asdict(cfg), n, best=(start_nme["val_nme"], 0, start_state),
    )  # fmt: skip
    model.load_state_dict(best_state)
    meta = {
        "engine": "vanilla",
        "recipe": "train-hard",
        "config": asdict(cfg),
        "best_epoch": best_epoch,
        "val_nme": best,
        "n_train": n,
        "n_val": int(vsel.sum()),
    }
    save_weights(weights_dict(model, mean, std, meta, box_model), out)
    shift = calibrate_mirror_shift(out, "vanilla", crop_faces(val.images[vsel], val.boxes[vsel, 0]))
    logger.info(f"wrote {out} (validation NME {best:.3f}% at epoch {best_epoch}; mirror shift {shift:.4f})")
    write_json(history, work_dir / "history.json")
    return {"best_epoch": best_epoch, "val_nme": best, "history": history}
