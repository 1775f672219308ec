"""The compact landmark network (engine v3): its layout survives the weights file, the
run-time engine runs it as torch does, its training batches keep their labels, a tiny run."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facealign.cli import main
from facealign.cropping import crop_faces, to_box_coordinates
from facealign.engine import LandmarkEngine, mirror_coordinates
from facealign.reboxing import NUM_FEATURES, NUM_OUTPUTS, BoxFromLandmarks
from facealign.research.compact import CompactCNN, CompactTrainConfig, compact_batch, l1_interocular_loss
from facealign.research.training import to_tensor, weights_dict
from facealign.research.training_weights import load_weights, save_weights


def _random_compact(input_size: int = 48) -> CompactCNN:
    torch.manual_seed(3)
    model = CompactCNN(input_size, channels=(8, 16, 24, 32, 8), depths=(1, 2, 3), fc5_dim=20)
    # Batch-norm statistics away from (0, 1), so that folding them on export is checked.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_compact_layout_is_read_back_from_the_weights_shapes():
    model = _random_compact(80)
    back = CompactCNN.from_state_dict(model.state_dict())
    assert (back.input_size, back.channels, back.depths) == (80, (8, 16, 24, 32, 8), (1, 2, 3))
    assert back.fc5_input_dim == 8 * 5 * 5 and back.fc6.in_features == 20


def test_compact_network_runs_in_the_runtime_engine_as_in_torch(tmp_path):
    # Exported through ONNX (batch norm folded), the engine gives torch's points to
    # 1e-4 box widths (float32 rounding), on crops of the network's own size.
    model = _random_compact(48)
    mean = torch.full((3, 48, 48), 120.0)
    std = torch.full((3, 48, 48), 50.0)
    box_model = BoxFromLandmarks(np.zeros((NUM_FEATURES, NUM_OUTPUTS)))
    path = tmp_path / "compact.pt"
    save_weights(weights_dict(model, mean, std, {"engine": "compact"}, box_model), path)  # type: ignore[arg-type]
    assert CompactCNN.from_state_dict(load_weights(path)["vanilla"]).input_size == 48
    crops = np.random.default_rng(8).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = model(to_tensor(crops, mean, std)).numpy()
    engine = LandmarkEngine("compact", weights=path, mirror=False, refine=False)
    assert engine.input_size == 48
    np.testing.assert_allclose(engine.predict_crops(crops).reshape(-1, 10), expected, atol=1e-4)
    with pytest.raises(ValueError, match="48 x 48"):
        engine.predict_crops(np.zeros((1, 40, 40, 3), np.uint8))
    # Given boxes, it cuts crops of its own size.
    image = np.random.default_rng(9).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    points = engine.predict(image, np.array([[10.0, 20.0, 70.0, 90.0]]))
    assert points.shape == (1, 5, 2) and np.isfinite(points).all()


def test_compact_engine_needs_a_weights_file():
    # No compact weights ship (it has not beaten tcnn on validation): a clear error, not a missing file.
    with pytest.raises(ValueError, match="ships no weights"):
        LandmarkEngine("compact")


def test_compact_input_size_must_be_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        CompactCNN(50)


def _faces(n: int = 6):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 80, 80, 3), dtype=np.uint8)
    boxes = np.tile([[20.0, 22.0, 60.0, 62.0]], (n, 1))  # square: jittering keeps the width only
    points = np.array([[30, 35], [50, 35], [40, 45], [32, 55], [48, 55]], float)[None] + rng.normal(0, 1, (n, 5, 2))
    return images, boxes, points


def test_compact_batch_without_perturbation_gives_the_box_targets():
    images, boxes, points = _faces()
    cfg = replace(
        CompactTrainConfig(input_size=64),
        jitter_shift=0.0, jitter_scale=0.0, rotation_sd=0.0,
        p_lowres=0.0, p_blur=0.0, p_jpeg=0.0, p_occlude=0.0, p_gray=0.0,
    )  # fmt: skip
    crops, target = compact_batch(images, boxes, points, np.arange(6), cfg, np.random.default_rng(1))
    assert crops.shape == (6, 64, 64, 3) and crops.dtype == np.uint8
    truth = to_box_coordinates(points, boxes)
    plain = crop_faces(images, boxes, size=64).astype(float)
    for i in range(6):
        flipped = np.allclose(target[i], mirror_coordinates(truth[i : i + 1])[0])
        assert flipped or np.allclose(target[i], truth[i])
        # The crop is the box's crop (mirrored with its targets), up to the colour change.
        reference = plain[i, :, ::-1] if flipped else plain[i]
        assert np.corrcoef(crops[i].astype(float).ravel(), reference.ravel())[0, 1] > 0.95


def test_compact_batch_keeps_labels_under_rotation_and_degradation():
    images, boxes, points = _faces()
    cfg = replace(
        CompactTrainConfig(), p_lowres=1.0, p_blur=1.0, p_jpeg=1.0, p_occlude=1.0, p_gray=1.0, jitter_scale=0.0
    )
    crops, target = compact_batch(images, boxes, points, np.arange(6), cfg, np.random.default_rng(2))
    assert np.allclose(crops[..., 0], crops[..., 1])  # all grey
    iod = np.linalg.norm(target[:, 1] - target[:, 0], axis=1)
    true_iod = np.linalg.norm(to_box_coordinates(points, boxes)[:, 1] - to_box_coordinates(points, boxes)[:, 0], axis=1)
    # A rotation keeps distances (the box shift moves them; no scale jitter here).
    np.testing.assert_allclose(iod, true_iod, rtol=1e-9)


def test_l1_interocular_loss_is_in_units_of_the_interocular_distance():
    target = torch.tensor([[0.2, 0.4, 0.6, 0.4, 0.4, 0.6, 0.3, 0.8, 0.5, 0.8]])  # eyes 0.4 apart
    pred = target.clone()
    pred[0, 4] += 0.04  # the nose 0.1 IOD off
    assert float(l1_interocular_loss(pred, target)) == pytest.approx(0.1)


@pytest.mark.slow
def test_train_compact_end_to_end(shared_datasets, tmp_path):
    args = ["train-compact", "--data", str(shared_datasets / "mtfl"), "--out", str(tmp_path / "c.pt")]
    args += ["--work-dir", str(tmp_path / "w"), "--epochs", "1", "--limit", "60", "--input-size", "48", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    engine = LandmarkEngine("compact", weights=tmp_path / "c.pt")
    assert engine.refine and engine.mirror and engine.input_size == 48
    assert engine.meta["recipe"] == "train-compact" and np.isfinite(engine.mirror_shift)
