"""The layer inputs of the vanilla CNN that the section 2.2 analysis clusters.

Which layers (:data:`PAPER_LAYERS`, :data:`EXTRA_LAYERS`), their display names
(:data:`LAYER_LABELS`), and :func:`extract_layer_inputs`, which runs the network
on the crops. Needs torch.
"""

from __future__ import annotations

import numpy as np

#: Layers of the paper's Table 1 / Figs 3 and 4 (the inputs of these layers).
PAPER_LAYERS: tuple[str, ...] = ("CL1", "CL2", "CL3", "CL4", "FC5")
#: Extra layer input we also analyse (FC5 output), not in the paper.
EXTRA_LAYERS: tuple[str, ...] = ("FC6",)
#: Display names of the layer inputs.
LAYER_LABELS: dict[str, str] = {
    "CL1": "RGB (CL1 input)",
    "CL2": "CL2",
    "CL3": "CL3",
    "CL4": "CL4",
    "FC5": "FC5",
    "FC6": "FC6 (extra)",
}


def extract_layer_inputs(
    weights, crops: np.ndarray, layers: tuple[str, ...], batch_size: int = 500
) -> dict[str, np.ndarray]:
    """Representations at the input of ``layers`` for uint8 crops (``N x 40 x 40 x 3``).

    ``weights`` is a training weights file (``.pt``) of the vanilla network; its
    normalisation (training mean and std images) is applied, as for a
    prediction. Returns ``layer -> N x D`` float32 arrays.
    """
    import torch

    from ..export import load_network
    from ..model import VanillaCNN
    from ..training_weights import load_weights
    from ..tweak import to_tensor

    model, mean, std = load_network(load_weights(weights))
    if not isinstance(model, VanillaCNN):
        raise ValueError(f"{weights}: the layer analysis (paper section 2.2) is for the paper's network")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    with torch.inference_mode():
        for s in range(0, len(crops), batch_size):
            feats = model.layer_inputs(to_tensor(crops[s : s + batch_size], mean, std))
            for name in layers:
                parts[name].append(feats[name].float().numpy())
    return {name: np.concatenate(p) if p else np.zeros((0, 0), np.float32) for name, p in parts.items()}
