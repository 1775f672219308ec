"""Training and tweaking: the loss, the augmentation geometry, and tiny end-to-end runs."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facealign.cli import main
from facealign.constants import INPUT_SIZE
from facealign.cropping import to_box_coordinates
from facealign.engine import LandmarkEngine
from facealign.research.training import interocular_loss
from facealign.research.tweak import warp_pair


def test_interocular_loss_matches_eq1():
    # Eyes 0.5 apart; every coordinate off by 0.1: ||P - P_hat||^2 = 10 * 0.01 = 0.1,
    # divided by 0.25 gives 0.4.
    target = torch.tensor([[0.25, 0.4, 0.75, 0.4, 0.5, 0.6, 0.3, 0.8, 0.7, 0.8]])
    assert float(interocular_loss(target + 0.1, target)) == pytest.approx(0.4, rel=1e-6)
    assert float(interocular_loss(target, target)) == 0.0


def test_augmentation_warp_lands_landmarks_where_the_transform_says():
    # Face B's landmarks are an exact similarity image of face A's; dots drawn at A's
    # landmarks must appear at B's landmarks in the crop of B's box (within 1 crop px).
    pts_a = np.array([[30, 32], [50, 31], [40, 44], [32, 55], [49, 54]], float)
    angle, scale, shift = np.deg2rad(12), 1.15, np.array([4.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts_b = (pts_a - 40) @ rot.T + 40 + shift
    box_b = np.array([18.0, 18.0, 66.0, 66.0])
    expected = to_box_coordinates(pts_b[None], box_b[None])[0] * INPUT_SIZE - 0.5
    for k, (x, y) in enumerate(np.round(pts_a).astype(int)):
        img = np.zeros((80, 80, 3), np.uint8)
        img[y - 1 : y + 2, x - 1 : x + 2] = 255
        crop, warped = warp_pair(img, np.round(pts_a), pts_b, box_b)
        np.testing.assert_allclose(warped, pts_b, atol=0.6)  # exact up to the rounding of A's dots
        crop = crop[..., 0].astype(float)
        ys, xs = np.indices(crop.shape)
        cx, cy = (xs * crop).sum() / crop.sum(), (ys * crop).sum() / crop.sum()
        assert abs(cx - expected[k, 0]) < 0.5 and abs(cy - expected[k, 1]) < 0.5, (k, cx, cy, expected[k])


@pytest.mark.slow
def test_train_and_tweak_end_to_end(shared_datasets, tmp_path):
    """A few hundred faces through `facealign train` and `facealign tweak`, then inference."""
    runner = CliRunner()
    mtfl = str(shared_datasets / "mtfl")
    work = tmp_path / "work"
    res = runner.invoke(
        main,
        [
            "train",
            "--data",
            mtfl,
            "--out",
            str(tmp_path / "v.pt"),
            "--work-dir",
            str(work),
            "--epochs",
            "2",
            "--limit",
            "300",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert LandmarkEngine("vanilla", weights=tmp_path / "v.pt").num_clusters == 1
    # Rerunning resumes: the checkpoint says all epochs are done, so it only rewrites.
    res = runner.invoke(
        main,
        [
            "train",
            "--data",
            mtfl,
            "--out",
            str(tmp_path / "v.pt"),
            "--work-dir",
            str(work),
            "--epochs",
            "2",
            "--limit",
            "300",
        ],
    )
    assert res.exit_code == 0 and "resuming after epoch 2" in res.output
    res = runner.invoke(
        main,
        [
            "tweak",
            "--data",
            mtfl,
            "--vanilla",
            str(tmp_path / "v.pt"),
            "--out",
            str(tmp_path / "t.pt"),
            "--work-dir",
            str(work),
            "-k",
            "2",
            "--target",
            "150",
            "--max-epochs",
            "3",
            "--patience",
            "2",
            "--limit",
            "300",
            "--jobs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    run_dir = work / "heads-K2-T150-warped-refined-s0"
    report = json.loads((run_dir / "tweak-report.json").read_text())
    assert (run_dir / "cluster-errors.png").stat().st_size > 0
    assert len(report["clusters"]) == 2 and sum(report["cluster_sizes"]) > 200
    assert 0 <= report["same_cluster_acceptance"] <= 1
    for rec in report["clusters"]:
        if rec["n_val"]:
            assert rec["val_after"] <= rec["val_before"] + 1e-9  # early stopping keeps the best
    eng = LandmarkEngine("tcnn", weights=tmp_path / "t.pt")
    assert eng.num_clusters == 2 and eng.refine  # the box model travels from train to tweak
    out = eng.predict_crops(np.full((3, INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8))
    assert out.shape == (3, 5, 2) and np.isfinite(out).all()


def test_train_refuses_a_folder_that_is_not_mtfl(tmp_path):
    res = CliRunner().invoke(
        main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "v.pt"), "--work-dir", str(tmp_path)]
    )
    assert res.exit_code != 0 and "not an MTFL folder" in res.output


def test_tweak_refuses_unknown_modes(tmp_path):
    from facealign.engine import shipped_weights
    from facealign.research.tweak import TweakConfig, tweak

    for cfg, word in ((TweakConfig(boxes="tight"), "boxes"), (TweakConfig(labels="mine"), "labels")):
        with pytest.raises(ValueError, match=word):
            tweak(shipped_weights("vanilla"), tmp_path, tmp_path / "t.pt", tmp_path / "work", cfg)
    assert not (tmp_path / "t.pt").exists()


def test_sweep_k_refuses_a_bad_list_of_k(tmp_path, shared_datasets):
    from facealign.engine import shipped_weights

    res = CliRunner().invoke(
        main,
        [
            "sweep-k",
            "--data",
            str(shared_datasets / "mtfl"),
            "--vanilla",
            str(shipped_weights("vanilla")),
            "--work-dir",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "o"),
            "--ks",
            "8,many",
        ],
    )
    assert res.exit_code != 0 and "--ks must be integers" in res.output
    assert not (tmp_path / "o").exists()
