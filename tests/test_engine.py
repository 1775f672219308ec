"""Landmark engines: routing, batched heads, mirroring and the shipped weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facealign.constants import INPUT_SIZE, MIRROR_PERMUTATION
from facealign.engine import GaussianRouter, LandmarkEngine, load_weights, mirror_coordinates, shipped_weights
from facealign.evaluation import normalized_errors
from facealign.imageio import read_image
from facealign.model import FC5_INPUT_DIM, TweakedHeads, VanillaCNN

GOLDEN = Path(__file__).parent / "data" / "golden_landmarks.json"


def test_router_matches_sklearn_gmm():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, s, (200, 6)) for m, s in [(0, 1), (3, 0.5), (-2, 2)]])
    gmm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(x)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    router = GaussianRouter(t(gmm.weights_), t(gmm.means_), t(gmm.covariances_))
    ours = router(t(x)).numpy()
    assert (ours == gmm.predict(x)).mean() == 1.0


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
    pts = torch.rand(7, 5, 2)
    back = mirror_coordinates(mirror_coordinates(pts))
    torch.testing.assert_close(back, pts)
    m = mirror_coordinates(pts)
    torch.testing.assert_close(m[:, 0, 0], 1 - pts[:, MIRROR_PERMUTATION[0], 0])


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
    b = mirror_coordinates(torch.from_numpy(eng.predict_crops(crops[:, :, ::-1].copy()))).numpy()
    b[..., 0] += eng.mirror_shift
    np.testing.assert_allclose(b, a, atol=1e-4)
    direct, flipped = eng.predict_pair(crops)
    np.testing.assert_allclose(a, (direct + flipped + [eng.mirror_shift, 0]) / 2, atol=1e-5)


def test_batched_prediction_matches_one_by_one():
    eng = LandmarkEngine("tcnn", batch_size=4)
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (9, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    together = eng.predict_crops(crops)
    single = np.concatenate([eng.predict_crops(crops[i : i + 1]) for i in range(9)])
    np.testing.assert_allclose(together, single, atol=1e-5)


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
    from facealign.engine import estimate_mirror_shift

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
