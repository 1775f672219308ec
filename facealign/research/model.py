"""Network definitions: the paper's vanilla CNN (section 2.1) and TCNN heads (section 3.1).

The vanilla CNN maps a normalised ``3 x 40 x 40`` RGB crop of a face box to 10
numbers, the ``(x, y)`` of the five MTFL points in box-normalised coordinates
(``0`` at the box's left/top edge, ``1`` at its right/bottom edge), laid out
``x1, y1, ..., x5, y5``.

Layer sizes follow Fig. 2 of the paper::

    RGB 40x40x3 -> CL1 conv5x5x16 -> pool -> 18x18x16
                -> CL2 conv3x3x48 -> pool -> 8x8x48
                -> CL3 conv3x3x64 -> pool -> 3x3x64
                -> CL4 conv2x2x64         -> 2x2x64 (256 values: the FC5 input)
                -> FC5 100 -> FC6 10

The widths are the paper's by default (:data:`PAPER_CHANNELS`, FC5 100); wider
networks (``channels``, ``fc5_dim``: "beyond the paper", issue 16) keep the
layout, kernels and input size, and :meth:`VanillaCNN.from_state_dict` reads the
widths back from the weights' shapes, so every weights file says what it is.

Every layer but FC6 is followed by ``abs(tanh(.))``. In the pooled blocks
(CL1-CL3) the activation and the 2 x 2 max-pool are evaluated as
``tanh(maxpool(abs(.)))``: since ``abs(tanh(x)) = tanh(abs(x))`` and ``tanh`` is
increasing, ``maxpool(abs(tanh(x))) = tanh(maxpool(abs(x)))``, the same values and
gradients as the paper's order with ``tanh`` computed on a quarter of the values
(about 1.4x faster convolution stacks on our CPUs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..constants import INPUT_SIZE, NUM_POINTS

#: Names of the layers whose *inputs* :meth:`VanillaCNN.layer_inputs` returns,
#: in network order (paper section 2.2); the input of CL1 is the RGB crop.
LAYER_NAMES: tuple[str, ...] = ("CL1", "CL2", "CL3", "CL4", "FC5", "FC6")

#: Output channels of CL1-CL4 in the paper (Fig. 2).
PAPER_CHANNELS: tuple[int, int, int, int] = (16, 48, 64, 64)
#: Spatial size of the CL4 output (2 x 2) for the 40 x 40 input.
CL4_OUTPUT_PIXELS: int = 2 * 2
#: Size of the FC5 input of the paper's network (the CL4 output, flattened).
FC5_INPUT_DIM: int = PAPER_CHANNELS[3] * CL4_OUTPUT_PIXELS
FC5_DIM: int = 100
OUTPUT_DIM: int = 2 * NUM_POINTS


class AbsTanh(nn.Module):
    """``abs(tanh(x))``, the paper's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x).abs()


class Abs(nn.Module):
    """``abs(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


def _conv_block(cin: int, cout: int, kernel: int, pool: bool) -> nn.Sequential:
    """Convolution, ``abs(tanh(.))`` and, with ``pool``, a 2 x 2 max-pool (stride 2).

    The pooled block runs as conv -> abs -> max-pool -> tanh (see the module
    docstring); the convolution is always element 0, so weight names do not
    depend on the order.
    """
    if pool:
        return nn.Sequential(nn.Conv2d(cin, cout, kernel), Abs(), nn.MaxPool2d(2, 2), nn.Tanh())
    return nn.Sequential(nn.Conv2d(cin, cout, kernel), AbsTanh())


class VanillaCNN(nn.Module):
    """The vanilla landmark CNN of section 2.1.

    Parameters
    ----------
    fc5_dim : int
        Width of FC5 (100 in the paper).
    channels : tuple of 4 ints
        Output channels of CL1-CL4 (the paper's :data:`PAPER_CHANNELS` by default).
    """

    def __init__(self, fc5_dim: int = FC5_DIM, channels: tuple[int, ...] = PAPER_CHANNELS) -> None:
        super().__init__()
        if len(channels) != 4 or min(channels) < 1 or fc5_dim < 1:
            raise ValueError(f"channels must be 4 positive widths and fc5_dim positive, got {channels}, {fc5_dim}")
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.channels = (c1, c2, c3, c4)
        self.input_size = INPUT_SIZE
        self.fc5_input_dim = c4 * CL4_OUTPUT_PIXELS
        self.cl1 = _conv_block(3, c1, 5, pool=True)
        self.cl2 = _conv_block(c1, c2, 3, pool=True)
        self.cl3 = _conv_block(c2, c3, 3, pool=True)
        self.cl4 = _conv_block(c3, c4, 2, pool=False)
        self.fc5 = nn.Sequential(nn.Linear(self.fc5_input_dim, fc5_dim), AbsTanh())
        self.fc6 = nn.Linear(fc5_dim, OUTPUT_DIM)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> VanillaCNN:
        """The network of a ``state_dict`` (e.g. a weights file's ``"vanilla"``), widths read from its shapes."""
        channels = tuple(int(state[f"cl{i}.0.weight"].shape[0]) for i in range(1, 5))
        model = cls(int(state["fc5.0.weight"].shape[0]), channels)
        model.load_state_dict(state)
        return model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The FC5 inputs (``N x fc5_input_dim``, 256 in the paper) of normalised crops ``x`` (``N x 3 x 40 x 40``)."""
        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected N x 3 x {INPUT_SIZE} x {INPUT_SIZE} input, got {tuple(x.shape)}")
        return self.cl4(self.cl3(self.cl2(self.cl1(x)))).flatten(1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Map FC5 inputs to the 10 box-normalised coordinates."""
        return self.fc6(self.fc5(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def layer_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Representations at the *input* of every layer (section 2.2), flattened to ``N x D``.

        Keys are the names of the layer each representation feeds (:data:`LAYER_NAMES`):
        ``"CL1"`` is the normalised RGB crop, ``"FC5"`` the CL4 output that TCNN
        clusters, ``"FC6"`` the FC5 output.
        """
        out = {"CL1": x.flatten(1)}
        h = self.cl1(x)
        out["CL2"] = h.flatten(1)
        h = self.cl2(h)
        out["CL3"] = h.flatten(1)
        h = self.cl3(h)
        out["CL4"] = h.flatten(1)
        h = self.cl4(h).flatten(1)
        out["FC5"] = h
        out["FC6"] = self.fc5(h)
        return out


class TweakedHeads(nn.Module):
    """K copies of FC5+FC6 (section 3.1), evaluated in one batched pass.

    Each face carries the index of its cluster; faces are grouped by cluster and
    each group goes through its head in one matrix product, so a batch of mixed
    clusters never falls back to a Python loop over faces.
    """

    def __init__(self, num_clusters: int, fc5_dim: int = FC5_DIM, input_dim: int = FC5_INPUT_DIM) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.w5 = nn.Parameter(torch.zeros(num_clusters, input_dim, fc5_dim))
        self.b5 = nn.Parameter(torch.zeros(num_clusters, fc5_dim))
        self.w6 = nn.Parameter(torch.zeros(num_clusters, fc5_dim, OUTPUT_DIM))
        self.b6 = nn.Parameter(torch.zeros(num_clusters, OUTPUT_DIM))

    @classmethod
    def from_vanilla(cls, model: VanillaCNN, num_clusters: int) -> TweakedHeads:
        """Initialise every head with the vanilla FC5 and FC6 weights."""
        fc5: nn.Linear = model.fc5[0]  # type: ignore[assignment]
        heads = cls(num_clusters, fc5.out_features, fc5.in_features)
        with torch.no_grad():
            heads.w5.copy_(fc5.weight.t().unsqueeze(0).expand_as(heads.w5))
            heads.b5.copy_(fc5.bias.unsqueeze(0).expand_as(heads.b5))
            heads.w6.copy_(model.fc6.weight.t().unsqueeze(0).expand_as(heads.w6))
            heads.b6.copy_(model.fc6.bias.unsqueeze(0).expand_as(heads.b6))
        return heads

    def forward(self, f: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        """Apply head ``cluster[i]`` to feature ``f[i]`` for every face ``i``.

        Faces are grouped by cluster and each group goes through its head in one
        matrix product, so the cost is one product per cluster present in the
        batch (at most K), never a Python step per face.
        """
        out = f.new_empty(len(f), self.w6.shape[2])
        order = torch.argsort(cluster, stable=True)
        present, counts = torch.unique_consecutive(cluster[order], return_counts=True)
        start = 0
        for k, n in zip(present.tolist(), counts.tolist()):
            idx = order[start : start + n]
            start += n
            h = torch.tanh(torch.addmm(self.b5[k], f[idx], self.w5[k])).abs()
            out[idx] = torch.addmm(self.b6[k], h, self.w6[k])
        return out
