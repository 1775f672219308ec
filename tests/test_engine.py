"""Landmark engines: routing, batched heads, mirroring and the shipped weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facealign.constants import INPUT_SIZE, MIRROR_PERMUTATION
from facealign.engine import GaussianRouter, LandmarkEngine, mirror_coordinates, shipped_weights
from facealign.imageio import read_image
from facealign.research.evaluation import normalized_errors
from facealign.research.model import FC5_INPUT_DIM, TweakedHeads, VanillaCNN
from facealign.research.training_weights import load_weights, predict_pair

GOLDEN = Path(__file__).parent / "data" / "golden_landmarks.json"


def test_router_matches_sklearn_gmm():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, s, (200, 6)) for m, s in [(0, 1), (3, 0.5), (-2, 2)]])
    gmm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
    router = GaussianRouter(gmm.weights_, gmm.means_, gmm.covariances_)
    assert (router(x) == gmm.predict(x)).mean() == 1.0


def test_each_face_goes_through_its_own_head():
    torch.manual_seed(0)
    heads = TweakedHeads(4)
    for p in heads.parameters():
        torch.nn.init.normal_(p, std=0.1)
    f = torch.rand(10, FC5_INPUT_DIM)
    cluster = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 2, 2])
    out = heads(f, cluster)
    for i in range(10):
        k = cluster[i]
        h = torch.tanh(f[i] @ heads.w5[k] + heads.b5[k]).abs()
        expected = h @ heads.w6[k] + heads.b6[k]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


def test_heads_from_vanilla_reproduce_vanilla():
    torch.manual_seed(0)
    model = VanillaCNN()
    heads = TweakedHeads.from_vanilla(model, 3)
    x = torch.randn(5, 3, INPUT_SIZE, INPUT_SIZE)
    f = model.features(x)
    torch.testing.assert_close(heads(f, torch.tensor([0, 1, 2, 1, 0])), model(x), atol=1e-5, rtol=1e-5)


def test_mirror_coordinates_is_an_involution_that_swaps_sides():
    pts = np.random.default_rng(0).random((7, 5, 2))
    back = mirror_coordinates(mirror_coordinates(pts))
    np.testing.assert_allclose(back, pts, atol=1e-15)
    m = mirror_coordinates(pts)
    np.testing.assert_allclose(m[:, 0, 0], 1 - pts[:, MIRROR_PERMUTATION[0], 0])


@pytest.mark.parametrize("engine", ["tcnn", "vanilla"])
def test_flipping_the_image_flips_the_prediction(engine):
    # With mirror averaging, predicting on a flipped crop and un-flipping gives the
    # same points up to float rounding (tolerance 1e-4 of the box size), once the
    # calibrated mirror shift s is accounted for: un-flipping moves it to -s, so the
    # two differ by exactly s in x.
    eng = LandmarkEngine(engine, mirror=True)
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (6, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    a = eng.predict_crops(crops)
    b = mirror_coordinates(eng.predict_crops(crops[:, :, ::-1]))
    b[..., 0] += eng.mirror_shift
    np.testing.assert_allclose(b, a, atol=1e-4)
    direct, flipped = predict_pair(eng, crops)
    assert eng.mirror  # the calibration leaves the engine as it was
    np.testing.assert_allclose(a, (direct + flipped + [eng.mirror_shift, 0]) / 2, atol=1e-5)


def test_batched_prediction_matches_one_by_one():
    eng = LandmarkEngine("tcnn", batch_size=4)
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (9, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    together = eng.predict_crops(crops)
    single = np.concatenate([eng.predict_crops(crops[i : i + 1]) for i in range(9)])
    np.testing.assert_allclose(together, single, atol=1e-5)


def test_a_faces_points_are_bit_identical_alone_and_among_37_other_faces():
    """Tolerance: none (bit-identical points, routing figures), at every position in the batch."""
    eng = LandmarkEngine("tcnn")
    rng = np.random.default_rng(7)
    crops = rng.integers(0, 256, (38, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    alone, alone_signals = eng.predict_crops(crops[:1], return_signals=True)
    for position in (0, 17, 37):
        batch = np.concatenate([crops[1 : position + 1], crops[:1], crops[position + 1 :]])
        points, signals = eng.predict_crops(batch, return_signals=True)
        np.testing.assert_array_equal(points[position], alone[0])
        for name, values in signals.items():
            np.testing.assert_array_equal(values[position], alone_signals[name][0], err_msg=name)


def test_real_faces_get_the_same_bytes_alone_and_in_a_batch_of_38(shared_datasets):
    """Detected faces of 38 celeba_wild photos: each photo landmarked alone and all together give
    bit-identical points and quality figures (re-boxing and the quality model included)."""
    from facealign.detection import get_detector
    from facealign.reboxing import training_boxes

    folder = shared_datasets / "celeba_wild" / "images"
    names = sorted(p.name for p in folder.glob("*.jpg"))[:38]
    detector = get_detector("retinaface")
    images, boxes = [], []
    for name in names:
        image = read_image(folder / name)
        found = detector.detect(image)
        images.append(image)
        boxes.append(training_boxes("retinaface", found.boxes, found.landmarks))
    assert sum(len(b) for b in boxes) >= 38
    eng = LandmarkEngine("tcnn")
    together, together_quality = eng.predict_many(images, boxes, return_quality=True)
    for image, box, points, quality in zip(images, boxes, together, together_quality):
        alone, alone_quality = eng.predict_many([image], [box], return_quality=True)
        np.testing.assert_array_equal(alone[0], points)
        for name, values in quality.items():
            np.testing.assert_array_equal(alone_quality[0][name], values, err_msg=name)


def test_points_do_not_depend_on_the_thread_counts(tmp_path):
    """The same crops in a process with one BLAS and onnxruntime thread and in one with the
    defaults (as ``--jobs 2`` workers and ``--jobs 1`` run): bit-identical points."""
    import subprocess
    import sys

    crops = np.random.default_rng(8).integers(0, 256, (45, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    np.save(tmp_path / "crops.npy", crops)
    script = (
        "import sys, numpy as np; from facealign.engine import LandmarkEngine; "
        "e = LandmarkEngine('tcnn', threads=int(sys.argv[1]) or None); "
        "np.save(sys.argv[2], e.predict_crops(np.load(sys.argv[3])))"
    )
    import os

    for threads, env in (("1", {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}), ("0", {})):
        subprocess.run(
            [sys.executable, "-c", script, threads, str(tmp_path / f"out{threads}.npy"), str(tmp_path / "crops.npy")],
            check=True,
            env={**{k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}, **env},
            cwd=Path(__file__).parents[1],
        )
    np.testing.assert_array_equal(np.load(tmp_path / "out1.npy"), np.load(tmp_path / "out0.npy"))


def test_shipped_weights_load_safely():
    for name in ("vanilla", "tcnn"):
        state = load_weights(shipped_weights(name))  # weights_only=True inside
        assert state["mean"].shape == (3, INPUT_SIZE, INPUT_SIZE)
        assert not state["meta"].get("placeholder", False), f"{name} weights are a placeholder"
    eng = LandmarkEngine("tcnn")
    assert eng.num_clusters >= 2 and eng.mirror
    assert LandmarkEngine("vanilla").num_clusters == 1


def test_bad_weights_and_names(tmp_path):
    with pytest.raises(ValueError, match="unknown engine"):
        LandmarkEngine("nope")
    with pytest.raises(FileNotFoundError):
        LandmarkEngine("vanilla", weights=tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a facealign weights file"):
        LandmarkEngine("vanilla", weights=tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no TCNN heads"):
        LandmarkEngine("tcnn", weights=shipped_weights("vanilla"))
    with pytest.raises(ValueError, match="crops"):
        LandmarkEngine("vanilla").predict_crops(np.zeros((2, 32, 32, 3), np.uint8))


def _golden_cases(shared_datasets):
    spec = json.loads(GOLDEN.read_text())
    for case in spec["cases"]:
        yield case, read_image(shared_datasets / "mtfl" / case["image"])


@pytest.mark.parametrize("engine", ["tcnn", "vanilla"])
def test_golden_landmarks_on_real_images(shared_datasets, engine):
    """Shipped weights on five AFLW test faces with fixed boxes.

    Tolerances: within 0.05 px of the recorded output (regenerate with
    ``python tests/data/make_golden.py`` after retraining), and within 10% of the
    inter-ocular distance of the ground truth on average.
    """
    eng = LandmarkEngine(engine)
    preds, truths = [], []
    for case, image in _golden_cases(shared_datasets):
        pred = eng.predict(image, np.array([case["box"]]))[0]
        np.testing.assert_allclose(pred, case[engine], atol=0.05)
        preds.append(pred)
        truths.append(case["truth"])
    assert normalized_errors(np.array(preds), np.array(truths)).mean() < 0.10


def test_mirror_shift_estimate_is_the_mean_x_gap():
    from facealign.research.training_weights import estimate_mirror_shift

    direct = np.zeros((3, 5, 2))
    flipped = np.zeros((3, 5, 2))
    flipped[..., 0] = -0.02  # un-mirrored predictions sit 0.02 box widths to the left
    flipped[..., 1] = 0.5  # y never enters the estimate
    assert estimate_mirror_shift(direct, flipped) == pytest.approx(0.02)


def test_pooled_blocks_equal_the_papers_order():
    # conv -> abs -> pool -> tanh must give what conv -> abs(tanh) -> pool gives,
    # values and input gradients, to float32 rounding (1e-6).
    torch.manual_seed(0)
    model = VanillaCNN()
    x = torch.randn(8, 3, INPUT_SIZE, INPUT_SIZE, requires_grad=True)

    def papers_order(z):
        for block in (model.cl1, model.cl2, model.cl3):
            z = torch.nn.functional.max_pool2d(torch.tanh(block[0](z)).abs(), 2, 2)
        return torch.tanh(model.cl4[0](z)).abs().flatten(1)

    ours = model.features(x)
    theirs = papers_order(x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("engine", ["tcnn", "vanilla"])
def test_runtime_engine_matches_the_torch_networks(engine):
    # The run-time engine (onnxruntime + numpy, from the shipped .npz) against the
    # torch modules of the shipped training weights (.pt), evaluated here directly:
    # box-normalised points agree to 1e-5 box widths (float32 rounding), so the
    # shipped .npz was compiled from the shipped .pt and the graph is faithful.
    from facealign.engine import shipped_runtime_weights
    from facealign.research.export import load_network
    from facealign.research.training import to_tensor

    state = load_weights(shipped_weights(engine))
    model, mean, std = load_network(state)
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (70, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    eng = LandmarkEngine(engine, mirror=False, refine=False)
    assert eng.weights_path == shipped_runtime_weights(engine)
    with torch.inference_mode():
        f = model.features(to_tensor(crops, mean, std))
        if engine == "vanilla":
            expected = model.head(f)
        else:
            k, input_dim, fc5_dim = state["heads"]["w5"].shape
            heads = TweakedHeads(k, fc5_dim, input_dim)
            heads.load_state_dict(state["heads"])
            g = state["gmm"]
            router = GaussianRouter(g["weights"].numpy(), g["means"].numpy(), g["variances"].numpy())
            expected = heads(f, torch.from_numpy(router(f.numpy())))
        first = model.head(f)
    np.testing.assert_allclose(eng.predict_crops(crops).reshape(-1, 10), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(eng.first_pass_crops(crops).reshape(-1, 10), first.numpy(), atol=1e-5)
    assert eng.mirror_shift == pytest.approx(float(state["mirror_shift"]))
    np.testing.assert_array_equal(eng.box_model.coef, state["box_model"].numpy())


def test_training_weights_compile_in_memory_to_the_same_engine():
    # A .pt passed as weights is compiled on the fly: the same points as the shipped
    # .npz (1e-6 box widths), quality model included.
    crops = np.random.default_rng(4).integers(0, 256, (5, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    from_pt = LandmarkEngine("tcnn", weights=shipped_weights("tcnn"))
    shipped = LandmarkEngine("tcnn")
    np.testing.assert_allclose(from_pt.predict_crops(crops), shipped.predict_crops(crops), atol=1e-6)
    assert from_pt.quality_model is not None and shipped.quality_model is not None
    assert from_pt.quality_model.signals == shipped.quality_model.signals


def test_engine_threads_and_pickling_keep_the_results():
    import pickle

    crops = np.random.default_rng(5).integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    eng = LandmarkEngine("tcnn")
    before = eng.predict_crops(crops)
    eng.set_threads(1)
    np.testing.assert_allclose(eng.predict_crops(crops), before, atol=1e-6)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(eng)).predict_crops(crops), before, atol=1e-6)


def test_runtime_weights_reject_other_files(tmp_path):
    bad = tmp_path / "other.npz"
    np.savez(bad, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a facealign run-time weights file"):
        LandmarkEngine("vanilla", weights=bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a facealign weights file"):
        LandmarkEngine("vanilla", weights=tmp_path / "junk.npz")


def test_export_engine_command_writes_a_loadable_file(tmp_path):
    from click.testing import CliRunner

    from facealign.cli import main

    out = tmp_path / "v.npz"
    args = ["export-engine", "--weights", str(shipped_weights("vanilla")), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    crops = np.random.default_rng(6).integers(0, 256, (2, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    compiled, shipped = LandmarkEngine("vanilla", weights=out), LandmarkEngine("vanilla")
    np.testing.assert_allclose(compiled.predict_crops(crops), shipped.predict_crops(crops), atol=1e-6)
    result = CliRunner().invoke(main, ["export-engine", "--out", str(out)])
    assert result.exit_code != 0 and "go together" in result.output


def test_wider_networks_round_trip_through_weights_and_the_runtime_engine(tmp_path):
    # A network wider than the paper's ("beyond the paper", issue 16) needs no
    # setting anywhere downstream: its widths are read back from the weights'
    # shapes, and the run-time engine compiled from them gives the torch
    # network's points to 1e-5 box widths (float32 rounding).
    from facealign.reboxing import NUM_FEATURES, NUM_OUTPUTS, BoxFromLandmarks
    from facealign.research.training import to_tensor, weights_dict
    from facealign.research.training_weights import save_weights

    torch.manual_seed(7)
    model = VanillaCNN(fc5_dim=40, channels=(8, 24, 96, 80)).eval()
    mean = torch.full((3, INPUT_SIZE, INPUT_SIZE), 127.0)
    std = torch.full((3, INPUT_SIZE, INPUT_SIZE), 60.0)
    box_model = BoxFromLandmarks(np.zeros((NUM_FEATURES, NUM_OUTPUTS)))
    path = tmp_path / "wide.pt"
    save_weights(weights_dict(model, mean, std, {"engine": "vanilla"}, box_model), path)
    back = VanillaCNN.from_state_dict(load_weights(path)["vanilla"])
    assert back.channels == (8, 24, 96, 80) and back.fc5_input_dim == 320 and back.fc6.in_features == 40
    crops = np.random.default_rng(8).integers(0, 256, (9, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = model(to_tensor(crops, mean, std)).numpy()
    eng = LandmarkEngine("vanilla", weights=path, mirror=False, refine=False)
    np.testing.assert_allclose(eng.predict_crops(crops).reshape(-1, 10), expected, atol=1e-5)
    heads = TweakedHeads.from_vanilla(model, 2)
    assert heads.w5.shape == (2, 320, 40)


def test_network_widths_are_checked():
    with pytest.raises(ValueError, match="4 positive widths"):
        VanillaCNN(channels=(16, 48, 64))


def test_a_missing_shipped_training_weights_file_says_where_they_come_from(monkeypatch, tmp_path) -> None:
    # As in a wheel install: the .pt files are not there.
    import facealign.research.training_weights as tw

    monkeypatch.setattr(tw, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"come with a source checkout: pip install -e"):
        tw.load_weights(tmp_path / "tcnn.pt")
    with pytest.raises(FileNotFoundError, match=r"^no weights file at .*other\.pt$"):
        tw.load_weights(tmp_path / "sub" / "other.pt")
