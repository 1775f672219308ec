"""The dlib peers used by bench/compare.py, and the accuracy metric, on inputs with known answers.

Only the last tests load dlib's 68-point model; they are skipped when the
``bench`` extra (face-recognition-models) is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from facealign.research.evaluation import FAILURE_THRESHOLD, normalized_errors, summarize
from facealign.research.peers import BENCH_INSTALL_HINT, box_to_dlib_rect, dlib_model_path, reduce_68_to_5

# --------------------------------------------------------------------------- #
# 68 -> 5 reduction
# --------------------------------------------------------------------------- #

#: Expected MTFL points of the hand-made shape below.
LEFT_EYE = (30.0, 40.0)
RIGHT_EYE = (70.0, 41.0)
NOSE = (50.0, 60.0)
LEFT_MOUTH = (36.0, 80.0)
RIGHT_MOUTH = (64.0, 79.0)
#: Offsets of six eye-contour points around their centre; they sum to zero.
EYE_RING = np.array([[-6.0, 0.0], [-3.0, -2.0], [3.0, -2.5], [6.0, 0.0], [3.0, 2.0], [-3.0, 2.5]])


def hand_made_68(seed: int = 0) -> np.ndarray:
    """68 iBUG points: every point that must not matter is a far-off random value."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(500.0, 900.0, size=(68, 2))
    pts[36:42] = np.asarray(LEFT_EYE) + EYE_RING
    pts[42:48] = np.asarray(RIGHT_EYE) + EYE_RING[::-1]
    pts[30] = NOSE
    pts[48] = LEFT_MOUTH
    pts[54] = RIGHT_MOUTH
    return pts


def test_reduce_68_to_5_picks_the_documented_points() -> None:
    five = reduce_68_to_5(hand_made_68())
    expected = np.array([LEFT_EYE, RIGHT_EYE, NOSE, LEFT_MOUTH, RIGHT_MOUTH])
    assert five.shape == (5, 2)
    np.testing.assert_allclose(five, expected, atol=1e-12)


def test_reduce_68_to_5_batched_matches_single() -> None:
    shapes = np.stack([hand_made_68(s) + s for s in range(3)])  # each face shifted by (s, s)
    five = reduce_68_to_5(shapes)
    assert five.shape == (3, 5, 2)
    for s in range(3):
        np.testing.assert_allclose(five[s], reduce_68_to_5(shapes[s]), atol=1e-12)
        np.testing.assert_allclose(five[s, 0], np.asarray(LEFT_EYE) + s, atol=1e-12)


def test_reduce_68_to_5_keeps_image_left_first() -> None:
    # iBUG 36-41 (subject's right eye) and 48 lie on the image's left in a frontal photo:
    # they must come out first (MTFL order), whatever the other points are.
    five = reduce_68_to_5(hand_made_68())
    assert five[0, 0] < five[1, 0]  # eyes: image-left, then image-right
    assert five[3, 0] < five[4, 0]  # mouth corners likewise
    # Moving only the subject's left eye (42-47) must move only the image-right eye.
    moved = hand_made_68()
    moved[42:48] += (5.0, 0.0)
    delta = reduce_68_to_5(moved) - five
    np.testing.assert_allclose(delta[1], (5.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(np.delete(delta, 1, axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 2), (68, 3), (2, 67, 2), (1, 1, 68, 2)])
def test_reduce_68_to_5_rejects_other_shapes(shape) -> None:
    with pytest.raises(ValueError, match="68"):
        reduce_68_to_5(np.zeros(shape))


# --------------------------------------------------------------------------- #
# Box conversion and the missing-extra message
# --------------------------------------------------------------------------- #


def test_box_to_dlib_rect_inverts_the_detector_convention() -> None:
    # DlibHogDetector maps the dlib rectangle (l, t, r, b) to (l - .5, t - .5, r + .5, b + .5).
    for left, top, right, bottom in [(10, 20, 89, 99), (0, 0, 0, 0), (-5, 3, 40, 41)]:
        box = (left - 0.5, top - 0.5, right + 0.5, bottom + 0.5)
        assert box_to_dlib_rect(box) == (left, top, right, bottom)


@pytest.mark.parametrize("box", [(10, 10, 5, 20), (0, 0, 10, 0), (0, np.nan, 10, 10)])
def test_box_to_dlib_rect_rejects_bad_boxes(box) -> None:
    with pytest.raises(ValueError, match="box"):
        box_to_dlib_rect(box)


def test_missing_bench_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "face_recognition_models" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ImportError) as info:
        dlib_model_path(68)
    assert BENCH_INSTALL_HINT in str(info.value)
    assert BENCH_INSTALL_HINT == "pip install -e '.[bench]'"


# --------------------------------------------------------------------------- #
# The metric (facealign.research.evaluation) on hand-made inputs
# --------------------------------------------------------------------------- #


def truth_faces(n: int = 3) -> np.ndarray:
    """Faces whose eye centres are 40 px apart (IOD = 40)."""
    base = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [36.0, 80.0], [64.0, 80.0]])
    return np.stack([base + 7.0 * i for i in range(n)])


def test_shift_of_a_tenth_of_iod_gives_ten_percent() -> None:
    truth = truth_faces()
    errors = normalized_errors(truth + (4.0, 0.0), truth)  # 4 px = 0.1 * IOD
    np.testing.assert_allclose(errors, 0.1, rtol=1e-12)
    errors = normalized_errors(truth + (3.0, 4.0), truth)  # |(3, 4)| = 5 px = 0.125 * IOD
    np.testing.assert_allclose(errors, 0.125, rtol=1e-12)


def test_error_is_the_mean_over_points_normalised_by_the_true_iod() -> None:
    truth = truth_faces(1)
    pred = truth.copy()
    pred[0, 4] += (0.0, 10.0)  # one point off by 10 px: mean 2 px over 5 points
    np.testing.assert_allclose(normalized_errors(pred, truth), [2.0 / 40.0], rtol=1e-12)
    swapped = truth[:, [1, 0, 2, 3, 4]]  # eyes swapped: 40 px on two points; the IOD is the truth's
    np.testing.assert_allclose(normalized_errors(swapped, truth), [80.0 / 5 / 40.0], rtol=1e-12)


def test_normalized_errors_rejects_bad_input() -> None:
    truth = truth_faces(2)
    with pytest.raises(ValueError):
        normalized_errors(truth[:1], truth)
    coincident = truth.copy()
    coincident[:, 1] = coincident[:, 0]
    with pytest.raises(ValueError, match="eyes"):
        normalized_errors(truth, coincident)


def test_summarize_counts_misses_as_failures() -> None:
    res = summarize(np.array([0.05, 0.10, 0.15]), misses=2)
    assert res["n"] == 5 and res["detected"] == 3 and res["misses"] == 2
    assert res["nme"] == pytest.approx(10.0, abs=1e-12)  # over detected faces only, in %
    assert res["median"] == pytest.approx(10.0, abs=1e-12)
    # 0.10 is not above the threshold; 0.15 and the two misses are failures.
    assert FAILURE_THRESHOLD == 0.10
    assert res["failures"] == 3
    assert res["failure_rate"] == pytest.approx(3 / 5, abs=1e-12)


def test_summarize_with_every_face_missed() -> None:
    res = summarize(np.zeros(0), misses=4)
    assert res["failures"] == 4 and res["failure_rate"] == 1.0
    assert np.isnan(res["nme"]) and np.isnan(res["median"])


def test_shifted_prediction_end_to_end_through_the_metric() -> None:
    truth = truth_faces(4)
    pred = truth + np.array([[[4.0, 0.0]], [[0.0, 2.0]], [[0.0, 6.0]], [[8.0, 0.0]]])  # 10%, 5%, 15%, 20%
    res = summarize(normalized_errors(pred, truth), misses=1)
    assert res["nme"] == pytest.approx(12.5, rel=1e-12)
    assert res["median"] == pytest.approx(12.5, rel=1e-12)
    assert res["failures"] == 3  # 15%, 20% and the miss
    assert res["failure_rate"] == pytest.approx(3 / 5)


# --------------------------------------------------------------------------- #
# The real dlib model (bench extra)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def predictor():
    try:
        dlib_model_path(68)
    except ImportError as exc:
        pytest.skip(str(exc))
    from facealign.research.peers import DlibShapePredictor

    return DlibShapePredictor()


def test_dlib_predictor_on_mtfl_faces_keeps_mtfl_order(predictor, shared_datasets: Path) -> None:
    from facealign.detection import DlibHogDetector
    from facealign.research.data import load_mtfl, match_detection

    data = load_mtfl(shared_datasets / "mtfl", "test")
    data = data.subset(np.arange(0, 400, 20))  # 20 faces
    images = data.load_images()
    detector = DlibHogDetector()
    preds, truths = [], []
    for image, truth in zip(images, data.points):
        boxes = detector.detect(image).boxes
        k = match_detection(boxes, truth)
        if k >= 0:
            pts68 = predictor.predict68(image, boxes[k : k + 1])
            assert pts68.shape == (1, 68, 2)
            preds.append(predictor.predict(image, boxes[k : k + 1])[0])
            np.testing.assert_allclose(preds[-1], reduce_68_to_5(pts68[0]))
            truths.append(truth)
    assert len(preds) >= 15
    preds, truths = np.stack(preds), np.stack(truths)
    errors = normalized_errors(preds, truths)
    # dlib's ERT lands near MTFL's points (about 9% mean error on this test set) ...
    assert np.median(errors) < 0.15
    # ... and the left/right order matters: swapping it is far off.
    swapped = preds[:, [1, 0, 2, 4, 3]]
    assert np.median(normalized_errors(swapped, truths)) > 3 * np.median(errors)
