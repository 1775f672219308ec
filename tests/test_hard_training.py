"""Training for hard faces (issue 16): wing loss, pose-balanced sampling, the hard augmentation, a tiny run."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facealign.cli import main
from facealign.constants import shipped_weights
from facealign.cropping import to_box_coordinates
from facealign.engine import LandmarkEngine
from facealign.research.hard_training import HardTrainConfig, MultiBoxFaces, hard_batch, pose_weights, wing_loss


def test_wing_loss_is_log_then_linear_in_interocular_units():
    target = torch.tensor([[0.25, 0.4, 0.75, 0.4, 0.5, 0.6, 0.3, 0.8, 0.7, 0.8]])  # IOD 0.5
    assert float(wing_loss(target, target)) == 0.0
    small = float(wing_loss(target + 0.005, target, w=0.1, eps=0.02))  # 1% of the IOD per coordinate
    assert small == pytest.approx(10 * 0.1 * np.log1p(0.01 / 0.02), rel=1e-5)
    # Beyond w the loss grows linearly with slope 1 per coordinate, continuous at w.
    a, b = (float(wing_loss(target + d * 0.5, target)) for d in (0.3, 0.4))
    assert b - a == pytest.approx(10 * 0.1, rel=1e-4)
    at_w = float(wing_loss(target + 0.1 * 0.5, target))
    assert at_w == pytest.approx(10 * 0.1 * np.log1p(0.1 / 0.02), rel=1e-4)


def test_pose_weights_balance_the_poses():
    pose = np.array([3] * 90 + [1] * 10)
    p = pose_weights(pose, 1.0)
    assert p.sum() == pytest.approx(1) and p[pose == 1].sum() == pytest.approx(0.5)
    assert np.allclose(pose_weights(pose, 0.0), 0.01)
    half = pose_weights(pose, 0.5)
    assert half[pose == 1].sum() == pytest.approx(np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))


def _faces(n=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 80, 80, 3), dtype=np.uint8)
    points = np.array([[30, 32], [50, 31], [40, 44], [32, 55], [49, 54]], float)[None].repeat(n, 0)
    boxes = np.full((n, 2, 4), np.nan)
    boxes[:, 0] = [20, 20, 60, 60]
    boxes[::2, 1] = [18, 22, 62, 66]  # the second detector found every other face
    return MultiBoxFaces(images, boxes, points, np.array([1, 2, 3, 3, 3, 4, 5, -1][:n]))


def test_hard_batch_without_perturbation_gives_the_box_targets():
    faces = _faces()
    cfg = HardTrainConfig(augment="full", jitter_shift=0.0, jitter_scale=0.0, rotation_deg=0.0)
    crops, target = hard_batch(faces, np.arange(8), cfg, np.random.default_rng(1))
    assert crops.shape == (8, 40, 40, 3) and crops.dtype == np.uint8
    # Every face drew one of its valid boxes; mirrored faces have mirrored targets.
    for i in range(8):
        options = [to_box_coordinates(faces.points[i : i + 1], b[None])[0] for b in faces.boxes[i] if np.isfinite(b[0])]
        mirrored = []
        for t in options:
            m = t[[1, 0, 2, 4, 3]].copy()
            m[:, 0] = 1 - m[:, 0]
            mirrored.append(m)
        assert any(np.allclose(target[i], t) for t in options + mirrored)


def test_hard_batch_keeps_labels_under_rotation_and_degradation():
    faces = _faces()
    cfg = replace(HardTrainConfig(), p_lowres=1.0, p_blur=1.0, p_jpeg=1.0, p_occlude=1.0, p_gray=1.0)
    crops, target = hard_batch(faces, np.arange(8), cfg, np.random.default_rng(2))
    assert crops.shape == (8, 40, 40, 3)
    assert np.allclose(crops[..., 0], crops[..., 1])  # all grey
    iod = np.linalg.norm(target[:, 1] - target[:, 0], axis=1)
    assert np.allclose(iod, iod[0], rtol=0.35)  # a rotation keeps distances; only the jittered scale changes them


@pytest.mark.slow
def test_train_hard_end_to_end(shared_datasets, tmp_path):
    mtfl = str(shared_datasets / "mtfl")
    args = [
        "train-hard",
        "--data",
        mtfl,
        "--out",
        str(tmp_path / "h.pt"),
        "--work-dir",
        str(tmp_path / "w"),
        "--init",
        str(shipped_weights("vanilla")),
        "--epochs",
        "1",
        "--limit",
        "60",
        "--loss",
        "wing",
        "-q",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    engine = LandmarkEngine("vanilla", weights=tmp_path / "h.pt")
    assert engine.refine and engine.meta["recipe"] == "train-hard"
    res = CliRunner().invoke(main, args[:-1] + ["--loss", "eq1", "-q"])  # other settings, same folder: refused
    assert res.exit_code != 0 and "other settings" in res.output
