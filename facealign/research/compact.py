"""The ``compact`` landmark network (engine v3, beyond the paper) and its training.

The paper's network (:class:`facealign.research.model.VanillaCNN`) sees a ``40 x 40``
crop through four plain convolutions with ``abs(tanh)``. ``CompactCNN`` keeps the
paper's *head* (FC5 with ``abs(tanh)``, FC6 to the ten box-normalised
coordinates, so TCNN's routed heads, re-boxing, mirroring, the quality model and
the run-time engine apply unchanged) and replaces the trunk with a modern, cheap
one in the style of mobile landmark models (MobileNet-v1 blocks as in PFLD):

* a larger input, ``S x S`` (64 by default) cut from the detector box exactly as
  the paper's ``40 x 40`` crop is (:func:`facealign.cropping.box_matrices`);
* a 3 x 3 stride-2 stem, then depthwise-separable blocks (3 x 3 depthwise,
  1 x 1 pointwise), each convolution followed by batch norm and ReLU, with
  identity shortcuts where the shape allows (residual blocks); four stride-2
  steps bring ``S`` to ``S / 16``;
* a 1 x 1 convolution narrows the last stage before it is flattened into the FC5
  input, so FC5 keeps the spatial layout (where each part of the face is), which
  global pooling would discard.

At ``S = 64`` the network costs 9.0 M multiply-adds per face (0.5.0's wide network: 5.7 M),
and batch norm folds into the convolutions when exported.

Training (``facealign train-compact``) follows ``facealign train`` (MTFL training
split, the training detector's boxes, best epoch on the validation split) with a
stronger recipe: box shift and scale jitter, in-plane rotation (normal, clipped
at ``max_rotation``), mirroring, colour, and the degradations of
:func:`facealign.research.hard_training.degrade` (low resolution, blur, JPEG,
occlusion, grey), a robust loss (L1 of the coordinate errors over the
inter-ocular distance), AdamW with cosine decay. Validation runs as the engine
does: a first pass, re-boxing, the reported pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ..constants import NUM_POINTS
from ..cropping import box_matrices, crop_faces, from_box_coordinates, to_box_coordinates, warp_crop
from ..engine import mirror_coordinates
from ..imageio import write_json
from ..reboxing import BoxFromLandmarks
from .evaluation import normalized_errors
from .model import OUTPUT_DIM, AbsTanh
from .training_weights import save_weights

logger = logging.getLogger(__name__)

#: Default input side of the compact network, pixels.
COMPACT_INPUT_SIZE = 64
#: Output channels of the stem and of the four stages (stride 2 at the start of stages 1-4).
COMPACT_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 64)
#: Depthwise-separable blocks per stage (the first one strided).
COMPACT_DEPTHS: tuple[int, ...] = (2, 3, 2)
COMPACT_FC5 = 256


class SeparableBlock(nn.Module):
    """3 x 3 depthwise then 1 x 1 pointwise convolution, each with batch norm; ReLU after
    the depthwise one and after the (shortcut-added, where shapes allow) pointwise one."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        )
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = stride == 1 and cin == cout
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return self.relu(x + y if self.shortcut else y)


class CompactCNN(nn.Module):
    """The compact landmark network (see the module docstring).

    Parameters
    ----------
    input_size : int
        Side of the square RGB input (a multiple of 16).
    channels : tuple of 5 ints
        Stem, stage 2, stage 3, stage 4 and the narrowing 1 x 1 convolution.
    depths : tuple of 3 ints
        Separable blocks in stages 2-4 (the first of each strided).
    fc5_dim : int
        Width of FC5.
    """

    def __init__(
        self,
        input_size: int = COMPACT_INPUT_SIZE,
        channels: tuple[int, ...] = COMPACT_CHANNELS,
        depths: tuple[int, ...] = COMPACT_DEPTHS,
        fc5_dim: int = COMPACT_FC5,
    ) -> None:
        super().__init__()
        if input_size % 16 or input_size < 32:
            raise ValueError(f"input_size must be a multiple of 16 and at least 32, got {input_size}")
        if len(channels) != 5 or len(depths) != 3 or min(depths) < 1:
            raise ValueError(f"need 5 channel widths and 3 stage depths, got {channels}, {depths}")
        c0, c1, c2, c3, c4 = (int(c) for c in channels)
        self.input_size = int(input_size)
        self.channels = (c0, c1, c2, c3, c4)
        self.depths = tuple(int(d) for d in depths)
        self.stem = nn.Sequential(
            nn.Conv2d(3, c0, 3, 2, 1, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(inplace=True),
            SeparableBlock(c0, c0, 1),
        )
        blocks: list[nn.Module] = []
        cin = c0
        for cout, depth in zip((c1, c2, c3), self.depths):
            blocks.append(SeparableBlock(cin, cout, 2))
            blocks.extend(SeparableBlock(cout, cout, 1) for _ in range(depth - 1))
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.narrow = nn.Sequential(nn.Conv2d(c3, c4, 1, bias=False), nn.BatchNorm2d(c4), nn.ReLU(inplace=True))
        side = input_size // 16
        self.fc5_input_dim = c4 * side * side
        self.fc5 = nn.Sequential(nn.Linear(self.fc5_input_dim, fc5_dim), AbsTanh())
        self.fc6 = nn.Linear(fc5_dim, OUTPUT_DIM)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> CompactCNN:
        """The network of a ``state_dict``, its settings read back from the shapes."""
        c0 = int(state["stem.0.weight"].shape[0])
        # Each stage starts with the block that changes the width (widths grow stage by stage).
        pointwise = sorted(
            (int(k.split(".")[1]), tuple(v.shape[:2]))
            for k, v in state.items()
            if k.startswith("stages.") and k.endswith("pointwise.0.weight")
        )
        widths: list[int] = []
        depths: list[int] = []
        for _, (cout, cin) in pointwise:
            if cout != cin:
                widths.append(int(cout))
                depths.append(0)
            depths[-1] += 1
        c4 = int(state["narrow.0.weight"].shape[0])
        side = int(round((int(state["fc5.0.weight"].shape[1]) / c4) ** 0.5))
        model = cls(side * 16, (c0, *widths, c4), tuple(depths), int(state["fc5.0.weight"].shape[0]))
        model.load_state_dict(state)
        return model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The FC5 inputs (``N x fc5_input_dim``) of normalised crops ``x`` (``N x 3 x S x S``)."""
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"expected N x 3 x {s} x {s} input, got {tuple(x.shape)}")
        return self.narrow(self.stages(self.stem(x))).flatten(1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Map FC5 inputs to the 10 box-normalised coordinates."""
        return self.fc6(self.fc5(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def is_compact_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a network ``state_dict`` is a :class:`CompactCNN`'s (else the paper's layout)."""
    return "stem.0.weight" in state


# ---------------------------------------------------------------- training


@dataclass
class CompactTrainConfig:
    """Settings of :func:`train_compact` (all recorded in the weights' ``meta``)."""

    init: str | None = None  # weights to fine-tune from (their network, normalisation and box model)
    epochs: int = 80
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    input_size: int = COMPACT_INPUT_SIZE
    channels: tuple[int, ...] = COMPACT_CHANNELS
    depths: tuple[int, ...] = COMPACT_DEPTHS
    fc5_dim: int = COMPACT_FC5
    jitter_shift: float = 0.08  # fraction of the box size
    jitter_scale: float = 0.12  # largest log scale change
    rotation_sd: float = 15.0  # degrees, normal ...
    max_rotation: float = 45.0  # ... clipped here
    p_lowres: float = 0.2
    lowres_fraction: tuple[float, float] = (0.3, 0.75)  # of the input side
    p_blur: float = 0.15
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (20, 70)
    p_occlude: float = 0.2
    p_gray: float = 0.1
    loss: str = "l1"  # "l1": L1 over the inter-ocular distance; "eq1": the paper's Eq. 1
    detector: str = "dlib"
    seed: int = 0
    threads: int = 0
    extra: dict = field(default_factory=dict)


#: ``--augment light``: box jitter, small rotations, mirroring and colour only (for a
#: fine-tune on clean crops after training with the default, strong augmentation).
LIGHT_AUGMENTATION: dict[str, float] = {
    "jitter_shift": 0.05,
    "jitter_scale": 0.07,
    "rotation_sd": 6.0,
    "max_rotation": 20.0,
    "p_lowres": 0.0,
    "p_blur": 0.0,
    "p_jpeg": 0.0,
    "p_occlude": 0.0,
    "p_gray": 0.0,
}


def compact_batch(
    images: np.ndarray,
    boxes: np.ndarray,
    points: np.ndarray,
    idx: np.ndarray,
    cfg: CompactTrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented uint8 crops ``n x S x S x 3`` and box-normalised targets ``n x 5 x 2``."""
    from .hard_training import degrade
    from .training import jittered_boxes

    n, s = len(idx), cfg.input_size
    pts = points[idx].astype(np.float64).copy()
    jittered, centre = jittered_boxes(boxes[idx].astype(np.float64), cfg.jitter_shift, cfg.jitter_scale, rng)
    mats = box_matrices(jittered, s)
    angles = np.clip(rng.normal(0.0, cfg.rotation_sd, n), -cfg.max_rotation, cfg.max_rotation)
    crops = np.empty((n, s, s, 3), np.uint8)
    lowres = (cfg.lowres_fraction[0] * s, cfg.lowres_fraction[1] * s)
    for i in range(n):
        rot = np.vstack([cv2.getRotationMatrix2D(tuple(centre[i]), angles[i], 1.0), [0, 0, 1]])
        crop = warp_crop(images[idx[i]], mats[i] @ rot, s)
        pts[i] = pts[i] @ rot[:2, :2].T + rot[:2, 2]
        crops[i] = degrade(crop, rng, cfg.p_lowres, lowres, cfg.p_blur, cfg.p_jpeg, cfg.jpeg_quality, cfg.p_occlude)
    target = to_box_coordinates(pts, jittered)
    flip = rng.random(n) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    target[flip] = mirror_coordinates(target[flip])
    gain = rng.uniform(0.75, 1.25, (n, 1, 1, 1)) * rng.uniform(0.9, 1.1, (n, 1, 1, 3))
    bias = rng.uniform(-20, 20, (n, 1, 1, 1))
    out = np.clip(crops * gain + bias, 0, 255)
    gray = rng.random(n) < cfg.p_gray
    out[gray] = out[gray].mean(-1, keepdims=True)
    return out.astype(np.uint8), target


def l1_interocular_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of absolute coordinate errors over the ground-truth inter-ocular distance, averaged over faces."""
    t = target.view(-1, NUM_POINTS, 2)
    iod = ((t[:, 0] - t[:, 1]) ** 2).sum(1).clamp_min(1e-6).sqrt()
    return ((pred - target).abs().sum(1) / iod).mean()


def train_compact(
    mtfl_root: str | Path,
    out: str | Path,
    work_dir: str | Path,
    config: CompactTrainConfig | None = None,
    resume: bool = True,
    limit: int | None = None,
) -> dict:
    """Train the compact network on MTFL and write its training weights to ``out``; resumable through ``work_dir``."""
    from .training import (
        calibrate_mirror_shift,
        interocular_loss,
        load_train_validation,
        mean_std_images,
        run_epochs,
        to_tensor,
        weights_dict,
    )

    cfg = config or CompactTrainConfig()
    if cfg.loss not in ("l1", "eq1"):
        raise ValueError("loss must be 'l1' or 'eq1'")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work_dir, out = Path(work_dir), Path(out)
    train, val = load_train_validation(mtfl_root, work_dir, cfg.detector, limit)
    torch.manual_seed(cfg.seed)
    if cfg.init:
        from .training_weights import load_weights

        init = load_weights(cfg.init)
        if not is_compact_state(init["vanilla"]):
            raise ValueError(f"--init {cfg.init} is not a compact network")
        model = CompactCNN.from_state_dict(init["vanilla"])
        mean, std = init["mean"].float(), init["std"].float()
        box_model = BoxFromLandmarks.from_tensor(init["box_model"])
        s = model.input_size
    else:
        s = cfg.input_size
        model = CompactCNN(s, cfg.channels, cfg.depths, cfg.fc5_dim)
        mean, std = mean_std_images(crop_faces(train.images, train.boxes, size=s))
        box_model = BoxFromLandmarks.fit(train.points, train.boxes)
    if s != cfg.input_size:
        raise ValueError(f"--init {cfg.init} takes {s} px crops, not --input-size {cfg.input_size}")
    val_crops = crop_faces(val.images, val.boxes, size=s)
    val_x = to_tensor(val_crops, mean, std)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.01)
    rng = np.random.default_rng(cfg.seed)
    n = len(train.index)
    pose = load_pose(mtfl_root, val.index)

    def batches(rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.permutation(n)
        # Full batches only (batch norm), but at least one batch however few the faces.
        for start in range(0, max(n - cfg.batch_size, 0) + 1, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            crops, target = compact_batch(train.images, train.boxes, train.points, idx, cfg, rng)
            yield to_tensor(crops, mean, std), torch.from_numpy(target.reshape(len(idx), -1)).float()

    def validate() -> dict[str, float]:
        # As the engine runs: a first pass, re-boxing, the reported pass on the new box.
        model.eval()
        with torch.inference_mode():
            first = from_box_coordinates(model(val_x).view(-1, NUM_POINTS, 2).double().numpy(), val.boxes)
            boxes = box_model.rebox(first, val.boxes)
            x = to_tensor(crop_faces(val.images, boxes, size=s), mean, std)
            pred = from_box_coordinates(model(x).view(-1, NUM_POINTS, 2).double().numpy(), boxes)
        e = normalized_errors(pred, val.points) * 100
        prof = np.isin(pose, (1, 5))
        return {
            "val_nme": float(e.mean()),
            "val_profile_nme": float(e[prof].mean()) if prof.any() else float("nan"),
            "val_fail": float((e > 10).mean() * 100),
        }

    loss_fn = l1_interocular_loss if cfg.loss == "l1" else interocular_loss
    start: tuple[float, int, dict[str, Any] | None] = (float("inf"), -1, None)
    if cfg.init:  # a fine-tune keeps its starting point unless an epoch beats it
        first = validate()
        logger.info(f"start: validation NME {first['val_nme']:.3f}%")
        start = (first["val_nme"], 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
    best, best_epoch, best_state, history = run_epochs(
        model, opt, sched, rng, cfg.epochs, batches, loss_fn, validate,
        work_dir / "compact-checkpoint.pt", asdict(cfg), n, resume, best=start,
    )  # fmt: skip
    model.load_state_dict(best_state)
    meta = {
        "engine": "compact",
        "recipe": "train-compact",
        "config": asdict(cfg),
        "best_epoch": best_epoch,
        "val_nme": best,
        "n_train": n,
        "n_val": len(val.index),
    }
    save_weights(weights_dict(model, mean, std, meta, box_model), out)  # type: ignore[arg-type]
    shift = calibrate_mirror_shift(out, "compact", val_crops)
    logger.info(f"wrote {out} (validation NME {best:.3f}% at epoch {best_epoch}; mirror shift {shift:.4f})")
    write_json(history, work_dir / "history.json")
    return {"best_epoch": best_epoch, "val_nme": best, "history": history}


def load_pose(mtfl_root: str | Path, rows: np.ndarray) -> np.ndarray:
    """MTFL pose labels (1-5, -1 unknown) of ``train.txt`` rows."""
    from .data import load_mtfl

    return load_mtfl(mtfl_root, "train").attributes[np.asarray(rows), 3]
