"""Tests of recognition.backbone: AlexNet layout and the Backbone wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recognition.backbone import (
    MIN_INPUT_SIZE,
    AlexNet,
    AlexNetBackbone,
    AlexNetConfig,
    Backbone,
    load_alexnet_checkpoint,
    save_alexnet,
)


@pytest.mark.parametrize("size", [112, 227])
def test_alexnet_shapes_standard_width(size: int) -> None:
    torch.manual_seed(0)
    model = AlexNet(AlexNetConfig(num_classes=7, input_size=size)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        features = model.extract_features(x)
    assert features.shape == (2, 4096) and model.feature_dim == 4096
    assert torch.all(features >= 0)  # taken after the ReLU
    # Layer layout of the standard AlexNet.
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (64, 11, 4),
        (192, 5, 1),
        (384, 3, 1),
        (256, 3, 1),
        (256, 3, 1),
    ]
    assert model.embedding[1].in_features == 256 * 6 * 6
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 3


def test_alexnet_width_and_input_checks() -> None:
    model = AlexNet(AlexNetConfig(num_classes=3, input_size=MIN_INPUT_SIZE, width=0.25)).eval()
    with torch.no_grad():
        assert model.extract_features(torch.zeros(1, 3, 63, 63)).shape == (1, 1024)
    with pytest.raises(ValueError, match="input_size"):
        AlexNetConfig(num_classes=3, input_size=62)
    with pytest.raises(ValueError, match="width"):
        AlexNetConfig(num_classes=3, width=0)


def test_backbone_embed_and_save_load(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = AlexNet(AlexNetConfig(num_classes=4, input_size=64, width=0.125))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    backbone = AlexNetBackbone(model, mean, std, batch_size=3)
    assert isinstance(backbone, Backbone) and backbone.input_size == 64
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    features = backbone.embed(crops)
    assert features.shape == (5, 512) and features.dtype == np.float32
    # Batching does not change results; eval mode makes embedding deterministic.
    np.testing.assert_allclose(features, AlexNetBackbone(model, mean, std, batch_size=5).embed(crops), atol=1e-5)
    np.testing.assert_allclose(features[2:3], backbone.embed(crops[2:3]), atol=1e-5)
    # Normalisation is applied: direct forward of the normalised tensor gives the same features.
    x = (
        torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)
    ) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(features, model.eval().extract_features(x).numpy(), atol=1e-5)

    path = tmp_path / "w" / "alexnet.pt"
    save_alexnet(path, model, mean, std, extra={"classes": ["a", "b", "c", "d"]})
    payload = load_alexnet_checkpoint(path)
    assert payload["classes"] == ["a", "b", "c", "d"] and payload["mean"] == pytest.approx(mean)
    loaded = AlexNetBackbone.load(path)
    np.testing.assert_allclose(loaded.embed(crops), features, atol=1e-6)
    # Crops of another size are resized; empty input gives an empty result; bad input is refused.
    assert loaded.embed(np.zeros((2, 80, 80, 3), np.uint8)).shape == (2, 512)
    assert loaded.embed(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 512)
    with pytest.raises(ValueError, match="uint8"):
        loaded.embed(np.zeros((1, 64, 64, 3), np.float32))
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a"):
        AlexNetBackbone.load(tmp_path / "bad.pt")
