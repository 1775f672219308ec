"""Compile training weights (``<engine>.pt``, torch) into run-time weights (``<engine>.npz``).

The run-time engine (:mod:`facealign.engine`) needs neither torch nor pickle:

* the normalisation by the training mean and std images and the convolutional
  layers CL1-CL4 become one ONNX graph (uint8 ``N x 40 x 40 x 3`` RGB crops in,
  the ``N x 256`` FC5 inputs out), traced from :class:`facealign.research.model.VanillaCNN`
  by torch's exporter and run by ``onnxruntime``;
* the fully connected layers (the vanilla FC5+FC6 and TCNN's K tweaked copies),
  the Gaussian mixture, the mirror shift, the box model and the quality model
  become numpy arrays (weights laid out input x output), and ``meta`` a JSON string.

Both go into one ``.npz`` (the graph as a ``uint8`` array), read with
``allow_pickle=False``; :mod:`facealign.runtime_weights` owns that format (its
writer and its reader). ``facealign export-engine`` writes the shipped files;
a test checks that they agree with the shipped ``.pt`` files.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runtime_weights import RUNTIME_FORMAT_VERSION, TRUNK_INPUT, TRUNK_OUTPUT
from ..runtime_weights import write_runtime_weights as write_runtime_arrays
from .compact import CompactCNN, is_compact_state
from .model import VanillaCNN
from .training_weights import load_weights

__all__ = [
    "load_network",
    "read_training_weights_as_runtime",
    "runtime_arrays",
    "trunk_onnx",
    "write_runtime_weights",
]

#: ONNX operator set of the exported graph (onnxruntime >= 1.16 runs it).
ONNX_OPSET = 17


class _NormalizedTrunk(nn.Module):
    """uint8 NHWC RGB crops -> normalised NCHW floats -> CL1-CL4 -> FC5 inputs."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: VanillaCNN | CompactCNN, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        s = model.input_size
        self.register_buffer("mean", mean.float().reshape(1, 3, s, s))
        self.register_buffer("std", std.float().reshape(1, 3, s, s))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = (crops.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.model.features(x)


def load_network(state: dict[str, Any]) -> tuple[VanillaCNN | CompactCNN, torch.Tensor, torch.Tensor]:
    """The landmark network (eval mode) and its mean and std images from a training weights dict.

    The network is under the key ``"vanilla"``: the paper's layout or, for the
    ``compact`` engine, :class:`facealign.research.compact.CompactCNN` (told apart by its keys).
    """
    net = state["vanilla"]
    model: VanillaCNN | CompactCNN = (
        CompactCNN.from_state_dict(net) if is_compact_state(net) else VanillaCNN.from_state_dict(net)
    )
    return model.eval(), state["mean"].float(), state["std"].float()


def trunk_onnx(state: dict[str, Any]) -> bytes:
    """The ONNX graph of the normalisation and CL1-CL4 of a training weights dict (see the module docstring)."""
    trunk = _NormalizedTrunk(*load_network(state)).eval()
    s = trunk.model.input_size
    example = torch.zeros(2, s, s, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer notes the constant input-shape check, and the legacy exporter its
        # own deprecation; neither matters for this fixed, loop-free graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            trunk, (example,), buffer,  # type: ignore[arg-type]  # a file object is accepted
            dynamo=False, opset_version=ONNX_OPSET,
            input_names=[TRUNK_INPUT], output_names=[TRUNK_OUTPUT],
            dynamic_axes={TRUNK_INPUT: {0: "faces"}, TRUNK_OUTPUT: {0: "faces"}},
        )  # fmt: skip
    return buffer.getvalue()


def _head_arrays(
    w5: torch.Tensor, b5: torch.Tensor, w6: torch.Tensor, b6: torch.Tensor, prefix: str
) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_{name}": t.detach().float().numpy().copy()
        for name, t in zip(("w5", "b5", "w6", "b6"), (w5, b5, w6, b6))
    }


def runtime_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The run-time weights of a training weights dict (what
    :func:`facealign.runtime_weights.load_runtime_weights` returns)."""
    vanilla = state["vanilla"]
    arrays: dict[str, np.ndarray] = {
        "format": np.array(RUNTIME_FORMAT_VERSION),
        "trunk_onnx": np.frombuffer(trunk_onnx(state), np.uint8),
        "meta": np.array(json.dumps(dict(state.get("meta", {})), sort_keys=True)),
        "mirror_shift": np.array(float(state.get("mirror_shift", 0.0))),
        "input_size": np.array(int(state["mean"].shape[-1])),  # the network's input side (mean image 3 x S x S)
        # nn.Linear keeps output x input; the run time multiplies input x output.
        **_head_arrays(
            vanilla["fc5.0.weight"].t(),
            vanilla["fc5.0.bias"],
            vanilla["fc6.weight"].t(),
            vanilla["fc6.bias"],
            "vanilla",
        ),
    }
    if "heads" in state:
        h = state["heads"]
        arrays.update(_head_arrays(h["w5"], h["b5"], h["w6"], h["b6"], "heads"))
        for key in ("weights", "means", "variances"):
            arrays[f"gmm_{key}"] = np.asarray(state["gmm"][key], np.float32)
    if "box_model" in state:
        arrays["box_model"] = np.asarray(state["box_model"], np.float64)
    if "quality" in state:
        for key, value in state["quality"].items():
            if key == "signals":
                arrays["quality_signals"] = np.array(json.dumps(list(value)))
            else:
                arrays[f"quality_{key}"] = np.asarray(value, np.float64)
    return arrays


def write_runtime_weights(weights: str | Path, out: str | Path) -> Path:
    """Compile the training weights file ``weights`` (``.pt``) into ``out`` (``.npz``), atomically."""
    return write_runtime_arrays(runtime_arrays(load_weights(weights)), out)


def read_training_weights_as_runtime(path: Path) -> dict[str, np.ndarray]:
    """The run-time arrays of a training weights file, compiled in memory (the ``.pt`` reader
    :mod:`facealign.research` registers with :func:`facealign.runtime_weights.register_weights_reader`)."""
    return runtime_arrays(load_weights(path))
