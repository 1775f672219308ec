"""Face-embedding backbones: the :class:`Backbone` protocol and an AlexNet.

The paper (section 5.2) embeds aligned faces with the standard AlexNet
(Krizhevsky et al.) fine-tuned for identity classification and uses the
penultimate fully connected layer as the raw feature. :class:`AlexNet` is that
layout written here (torchvision is not a dependency), with a configurable
input size and width multiplier so that it can be trained on a CPU.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from facealign.imageio import write_bytes_atomic

__all__ = [
    "CHECKPOINT_FORMAT",
    "MIN_INPUT_SIZE",
    "Backbone",
    "AlexNetConfig",
    "AlexNet",
    "AlexNetBackbone",
    "save_alexnet",
    "load_alexnet_checkpoint",
    "export_backbone",
]

#: Value of ``"format"`` in files written by :func:`save_alexnet`.
CHECKPOINT_FORMAT = "recognition-alexnet-v1"

#: Smallest input side for which every layer of :class:`AlexNet` has a
#: non-empty output (see :class:`AlexNet`).
MIN_INPUT_SIZE = 63


@runtime_checkable
class Backbone(Protocol):
    """Anything that turns aligned face crops into feature vectors.

    Attributes
    ----------
    input_size : int
        Side of the square crops the network expects, in pixels.
    """

    input_size: int

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed crops.

        Parameters
        ----------
        crops : numpy.ndarray
            ``N x H x W x 3`` uint8 RGB aligned face crops.

        Returns
        -------
        numpy.ndarray
            ``N x D`` float32 features.
        """
        ...


@dataclass(frozen=True)
class AlexNetConfig:
    """Hyper-parameters that define an :class:`AlexNet`.

    Attributes
    ----------
    num_classes : int
        Number of identities of the classification head.
    input_size : int
        Input side in pixels (>= :data:`MIN_INPUT_SIZE`).
    width : float
        Multiplier of every channel and hidden-unit count (1.0 = standard).
    dropout : float
        Dropout probability before the two hidden fully connected layers.
    """

    num_classes: int
    input_size: int = 112
    width: float = 1.0
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"input_size must be >= {MIN_INPUT_SIZE}, got {self.input_size}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def channels(self, base: int) -> int:
        """Scaled channel / unit count ``max(1, round(base * width))``."""
        return max(1, int(round(base * self.width)))

    @property
    def feature_dim(self) -> int:
        """Dimension of the penultimate feature (4,096 at width 1)."""
        return self.channels(4096)


def _conv_block(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=padding), nn.ReLU(inplace=True)]


class AlexNet(nn.Module):
    """The standard AlexNet layout with configurable input size and width.

    Layers (channel counts at ``width = 1``)::

        features:   conv 11x11/4 pad 2 -> 64, ReLU, maxpool 3/2
                    conv 5x5 pad 2 -> 192, ReLU, maxpool 3/2
                    conv 3x3 pad 1 -> 384, ReLU
                    conv 3x3 pad 1 -> 256, ReLU
                    conv 3x3 pad 1 -> 256, ReLU, maxpool 3/2
        avgpool:    adaptive average pool to 6 x 6
        embedding:  dropout, fc 9216 -> 4096, ReLU, dropout, fc 4096 -> 4096, ReLU
        classifier: fc 4096 -> num_classes

    The feature used for verification is the output of ``embedding`` (the
    second 4,096-unit layer after its ReLU), see :meth:`extract_features`.

    Input size: the stride-4 first convolution and the three 3/2 max-pools
    reduce a side ``s`` to ``27 -> 13 -> 6`` for ``s = 224 or 227`` and to
    ``27 -> 13 -> 6 -> 2`` for ``s = 112``. The adaptive average pool then
    always produces a 6 x 6 map (replicating cells when the map is smaller,
    averaging when larger), so the fully connected layers, and therefore the
    weights, have the same shapes for every input size. Any ``s >= 63`` keeps
    every intermediate map non-empty (63 is the smallest side whose last
    max-pool still gets a 3 x 3 input).

    Parameters
    ----------
    config : AlexNetConfig
        Hyper-parameters.
    """

    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.features: nn.Sequential = nn.Sequential(
            *_conv_block(3, c(64), 11, 4, 2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_block(c(64), c(192), 5, 1, 2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_block(c(192), c(384), 3, 1, 1),
            *_conv_block(c(384), c(256), 3, 1, 1),
            *_conv_block(c(256), c(256), 3, 1, 1),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool: nn.AdaptiveAvgPool2d = nn.AdaptiveAvgPool2d((6, 6))
        self.embedding: nn.Sequential = nn.Sequential(
            nn.Dropout(p=config.dropout),
            nn.Linear(c(256) * 6 * 6, c(4096)),
            nn.ReLU(inplace=True),
            nn.Dropout(p=config.dropout),
            nn.Linear(c(4096), c(4096)),
            nn.ReLU(inplace=True),
        )
        self.classifier: nn.Linear = nn.Linear(c(4096), config.num_classes)

    @property
    def input_size(self) -> int:
        """Expected input side in pixels."""
        return self.config.input_size

    @property
    def feature_dim(self) -> int:
        """Dimension of :meth:`extract_features` output."""
        return self.config.feature_dim

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(N, feature_dim)`` of normalised input ``(N, 3, S, S)``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input of shape (N, 3, H, W), got {tuple(x.shape)}")
        x = self.avgpool(self.features(x))
        return self.embedding(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)``."""
        return self.classifier(self.extract_features(x))


def save_alexnet(
    path: str | Path,
    model: AlexNet,
    mean: Sequence[float],
    std: Sequence[float],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save an :class:`AlexNet` with its input normalisation, atomically.

    The file is a plain dict loadable with ``torch.load(weights_only=True)``:
    ``format``, ``config`` (dict of :class:`AlexNetConfig`), ``state_dict``,
    ``mean`` and ``std`` (per RGB channel, for pixels scaled to ``[0, 1]``),
    plus the entries of ``extra`` (e.g. optimizer state, epoch, class names).
    """
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values, std > 0; got {mean}, {std}")
    payload: dict[str, Any] = dict(extra or {})
    payload.update(
        format=CHECKPOINT_FORMAT,
        config=asdict(model.config),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
    )
    _write_checkpoint(payload, path)


def _write_checkpoint(payload: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically (:func:`facealign.imageio.write_bytes_atomic`)."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def load_alexnet_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a file written by :func:`save_alexnet` (``weights_only=True``) and check its keys."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [k for k in ("config", "state_dict", "mean", "std") if k not in payload]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    return payload


def export_backbone(
    checkpoint: str | Path, out: str | Path, half: bool = True, keep_classifier: bool = False
) -> dict[str, Any]:
    """Write a small, inference-only copy of a training checkpoint.

    The optimizer state, random-generator states and history are dropped.
    Unless ``keep_classifier``, the identity classifier (not used for
    verification features) is replaced by a one-class placeholder of zeros
    (``config.num_classes = 1``; the trained class count is kept as
    ``trained_num_classes``). With ``half``, tensors are stored as float16;
    :meth:`AlexNetBackbone.load` casts them back to float32 when loading.

    Returns
    -------
    dict
        ``{"path", "bytes", "parameters", "half", "classifier"}``.
    """
    payload = load_alexnet_checkpoint(checkpoint)
    config = dict(payload["config"])
    state = {k: v.detach().clone() for k, v in payload["state_dict"].items()}
    extra: dict[str, Any] = {}
    if not keep_classifier:
        extra["trained_num_classes"] = int(config["num_classes"])
        config["num_classes"] = 1
        state["classifier.weight"] = torch.zeros(1, state["classifier.weight"].shape[1])
        state["classifier.bias"] = torch.zeros(1)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    for key in ("epoch", "history", "training"):
        if key in payload:
            extra[key] = payload[key]
    result = dict(
        extra,
        format=CHECKPOINT_FORMAT,
        config=config,
        state_dict=state,
        mean=list(payload["mean"]),
        std=list(payload["std"]),
        storage="float16" if half else "float32",
    )
    out = Path(out)
    _write_checkpoint(result, out)
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "parameters": int(sum(v.numel() for v in state.values())),
        "half": half,
        "classifier": keep_classifier,
    }


class AlexNetBackbone:
    """:class:`Backbone` around a trained :class:`AlexNet`.

    Crops are converted to float in ``[0, 1]``, resized (bilinear,
    antialiased) to ``input_size`` when their size differs, normalised with
    the stored per-channel ``mean``/``std`` and passed through the network in
    evaluation mode; the penultimate layer is returned.

    Parameters
    ----------
    model : AlexNet
        Trained network.
    mean, std : sequence of float
        Per-channel RGB normalisation used in training.
    device : str or torch.device
        Where to run the network.
    batch_size : int
        Crops per forward pass.
    """

    def __init__(
        self,
        model: AlexNet,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.batch_size = batch_size
        self.input_size: int = model.input_size

    @property
    def feature_dim(self) -> int:
        """Dimension ``D`` of the embeddings."""
        return self.model.feature_dim

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> AlexNetBackbone:
        """Load a :func:`save_alexnet` file (a training checkpoint works too)."""
        payload = load_alexnet_checkpoint(path)
        model = AlexNet(AlexNetConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return cls(model, payload["mean"], payload["std"], device=device, batch_size=batch_size)

    @staticmethod
    def _check_crops(crops: np.ndarray) -> np.ndarray:
        array = np.asarray(crops)
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"crops must be an N x H x W x 3 uint8 RGB array, got {array.dtype} {array.shape}")
        return array

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """Turn ``N x H x W x 3`` uint8 RGB crops into a normalised ``N x 3 x S x S`` tensor."""
        array = self._check_crops(crops)
        x = torch.from_numpy(np.ascontiguousarray(array)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed ``N x H x W x 3`` uint8 RGB crops into ``N x D`` float32 features."""
        array = self._check_crops(crops)
        if array.shape[0] == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        out = [
            self.model.extract_features(self.preprocess(array[i : i + self.batch_size])).float().cpu().numpy()
            for i in range(0, len(array), self.batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)
