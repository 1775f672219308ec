"""Per-face quality: the signals, the model, its weights-file round trip, the report."""

import numpy as np
import pytest
import torch

from facealign.constants import INPUT_SIZE
from facealign.engine import GaussianRouter, LandmarkEngine, shipped_weights
from facealign.imageio import read_image
from facealign.quality import (
    QUALITY_KEYS,
    SIGNAL_NAMES,
    QualityModel,
    face_signals,
    over_limits,
)
from facealign.research.quality_fit import (
    DEFAULT_SIGNALS,
    QualitySample,
    error_reject_curve,
    fit_engine_quality,
    fit_quality_model,
    quality_report,
)
from facealign.research.training_weights import load_weights

#: A frontal face in 80 x 80 pixels: eyes level, nose and mouth centred.
FRONTAL = np.array([[30.0, 35.0], [50.0, 35.0], [40.0, 45.0], [32.0, 55.0], [48.0, 55.0]])


def _network(n: int, gap: float = 0.0) -> dict:
    return {
        "mirror_gap": np.full((n, 5, 2), gap),
        "gmm_log_likelihood": np.zeros(n),
        "gmm_posterior": np.ones(n),
    }


def test_signals_of_a_consistent_frontal_face_are_zero():
    box = np.array([[20.0, 20.0, 60.0, 60.0]])
    s = face_signals(FRONTAL[None], box, box, FRONTAL[None], _network(1))
    assert set(s) == set(SIGNAL_NAMES)
    for name in ("mirror_disagreement", "pass_disagreement", "rebox_shift", "rebox_scale", "nose_offset"):
        assert s[name][0] == pytest.approx(0.0, abs=1e-12), name
    assert s["box_size"][0] == pytest.approx(40.0)


def test_signals_are_normalised_as_documented():
    given = np.array([[20.0, 20.0, 60.0, 60.0]])  # size 40
    reboxed = np.array([[24.0, 17.0, 64.0, 57.0]])  # moved by (4, -3): 5 px, same size
    first = FRONTAL[None] + [2.0, 0.0]  # first pass 2 px to the right of the reported points
    turned = FRONTAL.copy()
    turned[2, 0] += 5.0  # nose 5 px = 0.25 IOD off the eyes' middle
    # A mirror gap of 0.01 box widths in x and y: 0.4 px each, 0.4 * sqrt(2) px per point.
    s = face_signals(turned[None], given, reboxed, first, _network(1, gap=0.01))
    iod = 20.0
    assert s["mirror_disagreement"][0] == pytest.approx(0.4 * np.sqrt(2) / iod)
    assert s["pass_disagreement"][0] == pytest.approx((4 * 2.0 + np.hypot(3.0, 0.0)) / 5 / iod)
    assert s["rebox_shift"][0] == pytest.approx(5.0 / 40.0)
    assert s["rebox_scale"][0] == pytest.approx(0.0, abs=1e-12)
    assert s["nose_offset"][0] == pytest.approx(0.25)


def test_signals_without_reboxing_are_nan():
    box = np.array([[20.0, 20.0, 60.0, 60.0]])
    s = face_signals(FRONTAL[None], box, box, None, _network(1))
    assert np.isnan([s["pass_disagreement"][0], s["rebox_shift"][0], s["rebox_scale"][0]]).all()


def test_router_fit_is_the_routed_gaussian_density():
    # Two 3-D components far apart. A point at a component's mean is routed to
    # it with posterior ~1 and gets its exact log density; a point far from both
    # gets a much lower likelihood (tolerance 1e-4 nats, float32).
    weights = np.array([0.3, 0.7])
    means = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    variances = np.array([[1.0, 2.0, 0.5], [1.0, 1.0, 1.0]])
    router = GaussianRouter(weights, means, variances)
    f = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0], [100.0, -100.0, 50.0]])
    cluster, log_density, posterior = router.routed_fit(router.log_posterior(f))
    assert cluster[:2].tolist() == [0, 1]
    expected = -0.5 * (3 * np.log(2 * np.pi) + np.log(variances).sum(1))
    np.testing.assert_allclose(log_density[:2], expected, atol=1e-4)
    np.testing.assert_allclose(posterior[:2], 1.0, atol=1e-6)
    assert log_density[2] < expected.min() - 1000


def test_mirror_disagreement_of_a_crop_equals_that_of_its_mirror_image():
    # Mirroring a crop swaps the roles of the direct and the mirrored pass, so
    # the disagreement is the same (float32 rounding, 1e-5 box widths).
    eng = LandmarkEngine("tcnn")
    crops = np.random.default_rng(3).integers(0, 256, (4, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    _, a = eng.predict_crops(crops, return_signals=True)
    _, b = eng.predict_crops(crops[:, :, ::-1].copy(), return_signals=True)
    np.testing.assert_allclose(
        np.linalg.norm(a["mirror_gap"], axis=2).mean(1), np.linalg.norm(b["mirror_gap"], axis=2).mean(1), atol=1e-5
    )


def test_signals_on_a_real_face_and_on_noise(shared_datasets):
    # A clean AFLW-test face (TCNN error 4.1% IOD, golden case 5) against uniform
    # noise in the same box. Measured with the shipped weights: mirror
    # disagreement 0.040 (face) and 0.114 (noise); GMM log likelihood 430 and 310
    # nats; expected error 3.6% and 15.4%; p_fail 0.001 and 0.92. Bounds keep a
    # wide margin: face disagreement < 0.06 and noise > 2x it, likelihood lower by
    # > 50 nats, expected error < 6% against > 10%, p_fail < 0.05 against > 0.5.
    image = read_image(shared_datasets / "mtfl" / "AFLW" / "0005-image15367.jpg")
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    box = np.array([[9.667, 15.333, 61.333, 67.167]])
    eng = LandmarkEngine("tcnn")
    _, face = eng.predict_faces([image], [0], box, return_quality=True)
    _, junk = eng.predict_faces([noise], [0], box, return_quality=True)
    assert set(face) == set(QUALITY_KEYS)
    assert face["mirror_disagreement"][0] < 0.06
    assert junk["mirror_disagreement"][0] > 2 * face["mirror_disagreement"][0]
    assert junk["gmm_log_likelihood"][0] < face["gmm_log_likelihood"][0] - 50
    assert face["expected_error"][0] < 6.0 and junk["expected_error"][0] > 10.0
    assert face["p_fail"][0] < 0.05 and junk["p_fail"][0] > 0.5


def _synthetic_sample(n: int = 400, seed: int = 0) -> QualitySample:
    """Signals that predict the error: log error = log(2 * mirror disagreement) + noise."""
    rng = np.random.default_rng(seed)
    signals = {name: rng.uniform(0.01, 0.1, n) for name in SIGNAL_NAMES}
    signals["gmm_log_likelihood"] = rng.normal(400, 20, n)
    errors = 2 * signals["mirror_disagreement"] * np.exp(rng.normal(0, 0.2, n))
    return QualitySample("validation", signals, errors, 0)


def test_model_fits_and_predicts_the_synthetic_error():
    sample = _synthetic_sample()
    model = fit_quality_model(sample.quality, sample.errors, ("mirror_disagreement", "gmm_log_likelihood"))
    pred = model.predict(sample.quality)
    # log error is linear in log(0.01 + mirror_disagreement) only approximately; the
    # rank correlation must still be high (> 0.9) and p_fail must order failures first.
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    assert spearmanr(pred["expected_error"], sample.errors).statistic > 0.9
    assert roc_auc_score(sample.errors > 0.1, pred["p_fail"]) > 0.9
    # Mean expected error matches the mean error (smearing), within 5%.
    assert pred["expected_error"].mean() == pytest.approx(100 * sample.errors.mean(), rel=0.05)


def test_model_round_trip_through_a_weights_file(tmp_path):
    sample = _synthetic_sample()
    out = tmp_path / "vanilla-quality.pt"
    model = fit_engine_quality(shipped_weights("vanilla"), out, "vanilla", sample, DEFAULT_SIGNALS["vanilla"])
    state, shipped = load_weights(out), load_weights(shipped_weights("vanilla"))
    for key in shipped:  # every earlier key kept
        assert key in state
    torch.testing.assert_close(state["vanilla"], shipped["vanilla"])
    loaded = LandmarkEngine("vanilla", weights=out).quality_model
    assert loaded.signals == DEFAULT_SIGNALS["vanilla"]
    for key, values in model.predict(sample.quality).items():
        np.testing.assert_allclose(loaded.predict(sample.quality)[key], values, rtol=1e-12)
    with pytest.raises(ValueError, match="validation split only"):
        fit_engine_quality(
            out, out, "vanilla", QualitySample("test", sample.quality, sample.errors, 0), ("nose_offset",)
        )


def test_model_rejects_bad_inputs():
    sample = _synthetic_sample()
    with pytest.raises(ValueError, match="both failures and successes"):
        fit_quality_model(sample.quality, np.full(len(sample.errors), 0.05), ("nose_offset",))
    nan = {**sample.quality, "rebox_shift": np.full(len(sample.errors), np.nan)}
    with pytest.raises(ValueError, match="finite"):
        fit_quality_model(nan, sample.errors, ("rebox_shift",))
    with pytest.raises(KeyError, match="missing"):
        fit_quality_model({}, sample.errors, ("rebox_shift",))
    with pytest.raises(ValueError, match="unknown quality signals"):
        QualityModel(("nope",), [0], [1], [0], [0], [0, 0], 1.0, [0, 0])


def test_extreme_signals_are_clipped_to_the_fitted_range():
    sample = _synthetic_sample()
    model = fit_quality_model(sample.quality, sample.errors, ("mirror_disagreement",))
    worst = sample.quality["mirror_disagreement"].max()
    at_edge = model.predict({"mirror_disagreement": np.array([worst, 1e6])})
    assert at_edge["expected_error"][0] == pytest.approx(at_edge["expected_error"][1])
    assert np.isnan(model.predict({"mirror_disagreement": np.array([np.nan])})["p_fail"][0])


def test_shipped_weights_carry_quality_models():
    for name in ("tcnn", "vanilla"):
        model = LandmarkEngine(name).quality_model
        assert model is not None and model.signals == DEFAULT_SIGNALS[name]
    # Without mirroring TCNN's model lacks a signal: figures unknown, not made up.
    _, q = LandmarkEngine("tcnn", mirror=False).predict_faces(
        [np.full((80, 80, 3), 128, np.uint8)], [0], np.array([[20.0, 20.0, 60.0, 60.0]]), return_quality=True
    )
    assert np.isnan(q["expected_error"]).all() and np.isnan(q["p_fail"]).all()


def test_over_limits():
    e, p = np.array([5.0, 12.0, np.nan]), np.array([0.01, 0.02, 0.5])
    assert over_limits(e, p, None, None).tolist() == [False, False, False]
    assert over_limits(e, p, 10.0, None).tolist() == [False, True, True]  # NaN counts as over
    assert over_limits(e, p, None, 0.015).tolist() == [False, True, True]


def test_report_of_a_perfect_predictor():
    rng = np.random.default_rng(1)
    errors = rng.uniform(0.01, 0.2, 500)
    quality = {"expected_error": 100 * errors, "p_fail": (errors > 0.1).astype(float)}
    report = quality_report(QualitySample("test", quality, errors, 3))
    assert report["auc_p_fail"] == pytest.approx(1.0)
    assert report["spearman_expected_error"] == pytest.approx(1.0)
    assert report["error_reject"] == report["oracle_reject"]
    assert report["detector_misses"] == 3
    assert sum(row["n"] for row in report["calibration_p_fail"]) == 500
    curve = error_reject_curve(100 * errors, errors)
    assert curve[0]["nme"] == pytest.approx(100 * errors.mean())
    assert all(a["nme"] > b["nme"] for a, b in zip(curve, curve[1:]))
