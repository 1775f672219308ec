"""Tests of recognition.training: one small epoch, checkpoint contents, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recognition.backbone import AlexNetBackbone, load_alexnet_checkpoint
from recognition.training import TrainingConfig, read_sample_list, train_alexnet


def make_crops(folder: Path, n_per_class: int = 16, classes: int = 4, size: int = 64) -> list[tuple[Path, str]]:
    """Synthetic 'aligned crops': per-class colour and stripe pattern plus noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for c in range(classes):
        for i in range(n_per_class):
            image = np.zeros((size, size, 3), np.float64)
            image[..., c % 3] = 180
            image[:, (c * 7) % size :: 9] = 255
            image += rng.normal(0, 20, image.shape)
            path = folder / f"c{c}_{i}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
            samples.append((path, f"person{c}"))
    return samples


def test_train_one_epoch_and_resume(tmp_path: Path) -> None:
    samples = make_crops(tmp_path / "crops")
    assert len(samples) == 64
    config = TrainingConfig(epochs=2, batch_size=16, lr=0.01, log_every=2, num_threads=1, seed=3)
    lines: list[str] = []
    small = dict(input_size=64, width=0.125)

    threads = torch.get_num_threads()
    one = train_alexnet(
        samples,
        tmp_path / "resumed.pt",
        **small,
        config=TrainingConfig(**{**config.__dict__, "epochs": 1}),
        log=lines.append,
    )
    assert torch.get_num_threads() == threads  # num_threads applies only while training
    assert one.epochs_completed == 1 and len(one.history) == 1
    assert np.isfinite(one.history[0]["loss"]) and 0 <= one.history[0]["accuracy"] <= 1
    assert sum("batch" in line for line in lines) == 2  # batches 2 and 4 of 4
    payload = load_alexnet_checkpoint(tmp_path / "resumed.pt")
    assert payload["epoch"] == 1 and payload["classes"] == ["person0", "person1", "person2", "person3"]
    assert {"optimizer", "generator_state", "torch_rng_state", "mean", "std"} <= payload.keys()

    resumed = train_alexnet(samples, tmp_path / "resumed.pt", **small, config=config, log=lines.append)
    assert any(line.startswith("resumed") for line in lines)
    assert resumed.epochs_completed == 2 and [h["epoch"] for h in resumed.history] == [1.0, 2.0]

    # Training 2 epochs in one go gives the same weights as 1 epoch + resume.
    straight = train_alexnet(samples, tmp_path / "straight.pt", **small, config=config, log=lambda _: None)
    a = load_alexnet_checkpoint(tmp_path / "resumed.pt")["state_dict"]
    b = load_alexnet_checkpoint(tmp_path / "straight.pt")["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert straight.history[1]["loss"] == pytest.approx(resumed.history[1]["loss"], rel=1e-5)

    backbone = AlexNetBackbone.load(tmp_path / "resumed.pt")
    crops = np.stack([np.asarray(Image.open(p)) for p, _ in samples[:3]])
    assert backbone.embed(crops).shape == (3, 512)

    with pytest.raises(ValueError, match="another network"):
        train_alexnet(samples, tmp_path / "resumed.pt", input_size=64, width=0.25, config=config)


def test_read_sample_list(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("path,identity\na/1.png,7\nb 2.png,8\n")
    assert read_sample_list(tmp_path / "list.csv") == [(tmp_path / "a/1.png", "7"), (tmp_path / "b 2.png", "8")]
    (tmp_path / "list.txt").write_text("# crops\na/1.png 7\nb 2.png 8\n")
    assert read_sample_list(tmp_path / "list.txt", root="/data") == [
        (Path("/data/a/1.png"), "7"),
        (Path("/data/b 2.png"), "8"),
    ]
    (tmp_path / "bad.csv").write_text("a.png\n")
    with pytest.raises(ValueError, match="path,identity"):
        read_sample_list(tmp_path / "bad.csv")
