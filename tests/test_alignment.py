"""Tests for facealign.alignment: Umeyama similarity, templates and face warping."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from facealign.alignment import (
    LOOSE_SHRINK,
    TEMPLATES,
    Template,
    estimate_similarity,
    get_template,
    invert_affine,
    transform_points,
    warp_face,
)
from facealign.constants import ARCFACE_TEMPLATE_112, LEFT_EYE, RIGHT_EYE


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent closed form: linear least squares in (a, b, tx, ty), A = [[a, -b], [b, a]]."""
    rows = []
    for x, y in src:
        rows.append([x, -y, 1.0, 0.0])
        rows.append([y, x, 0.0, 1.0])
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def _sse(matrix: np.ndarray, src: np.ndarray, dst: np.ndarray) -> float:
    return float(np.sum((transform_points(matrix, src) - dst) ** 2))


# --------------------------------------------------------------------------- estimation


@pytest.mark.parametrize("seed", range(5))
def test_recovers_known_similarity_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 5.0), *rng.uniform(-200, 200, 2))
    src = rng.uniform(0, 250, (5, 2))
    dst = transform_points(truth, src)
    estimated = estimate_similarity(src, dst)
    assert estimated.shape == (2, 3) and estimated.dtype == np.float64
    np.testing.assert_allclose(estimated, truth, atol=1e-9)


def test_two_points_define_the_similarity() -> None:
    truth = _similarity(0.7, 1.9, 3.0, -4.0)
    src = np.array([[10.0, 20.0], [30.0, 5.0]])
    estimated = estimate_similarity(src, transform_points(truth, src))
    np.testing.assert_allclose(estimated, truth, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_fit_is_the_least_squares_similarity(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    truth = _similarity(rng.uniform(-1, 1), rng.uniform(0.5, 2.0), *rng.uniform(-50, 50, 2))
    src = rng.uniform(0, 100, (5, 2))
    dst = transform_points(truth, src) + rng.normal(0, 2.0, (5, 2))
    estimated = estimate_similarity(src, dst)
    np.testing.assert_allclose(estimated, _least_squares_similarity(src, dst), atol=1e-9)
    best = _sse(estimated, src, dst)
    assert best <= _sse(truth, src, dst)
    for _ in range(50):  # any other similarity fits worse
        angle, log_scale = rng.normal(0, 0.05, 2)
        other = _similarity(angle, np.exp(log_scale), *rng.normal(0, 1.0, 2))
        composed = np.vstack([other, [0, 0, 1]]) @ np.vstack([estimated, [0, 0, 1]])
        assert _sse(composed[:2], src, dst) >= best


@pytest.mark.parametrize("seed", range(5))
def test_similarity_matches_scikit_image(seed: int) -> None:
    """Oracle: scikit-image's SimilarityTransform (Umeyama) on noisy five-point sets (test extra)."""
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(200 + seed)
    truth = _similarity(rng.uniform(-1, 1), rng.uniform(0.3, 3.0), *rng.uniform(-80, 80, 2))
    src = ARCFACE_TEMPLATE_112 + rng.normal(0, 4.0, (5, 2))
    dst = transform_points(truth, src) + rng.normal(0, 3.0, (5, 2))
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        oracle = transform.SimilarityTransform.from_estimate(src, dst)
        assert oracle
    else:
        oracle = transform.SimilarityTransform()
        assert oracle.estimate(src, dst)
    np.testing.assert_allclose(estimate_similarity(src, dst), oracle.params[:2], atol=1e-9)


def test_reflected_points_do_not_give_a_reflection() -> None:
    src = ARCFACE_TEMPLATE_112.copy()
    dst = src * np.array([-1.0, 1.0]) + np.array([120.0, 0.0])  # mirror image
    estimated = estimate_similarity(src, dst)
    assert np.linalg.det(estimated[:, :2]) > 0
    # It is still the best non-reflective fit (not a reflection, not garbage).
    np.testing.assert_allclose(estimated, _least_squares_similarity(src, dst), atol=1e-9)
    reflection = np.array([[-1.0, 0.0, 120.0], [0.0, 1.0, 0.0]])
    assert _sse(reflection, src, dst) < 1e-18 < _sse(estimated, src, dst)


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        (np.ones((5, 2)), np.random.default_rng(0).random((5, 2)), "degenerate src"),
        (np.random.default_rng(0).random((5, 2)), np.full((5, 2), 3.0), "degenerate dst"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2"),
        (np.zeros((5, 3)), np.zeros((5, 3)), r"shape \(N, 2\)"),
        (np.arange(10.0).reshape(5, 2), np.arange(8.0).reshape(4, 2), "same shape"),
        ([[0, 0], [1, np.nan]], [[0, 0], [1, 1]], "non-finite"),
    ],
)
def test_estimate_rejects_bad_input(src: np.ndarray, dst: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate_similarity(src, dst)


# --------------------------------------------------------------------------- transforms


def test_transform_points_shapes_and_3x3() -> None:
    matrix = _similarity(0.3, 2.0, 5.0, -1.0)
    points = np.random.default_rng(1).random((4, 5, 2))
    out = transform_points(matrix, points)
    assert out.shape == (4, 5, 2)
    np.testing.assert_allclose(out[2, 3], matrix[:, :2] @ points[2, 3] + matrix[:, 2])
    np.testing.assert_allclose(transform_points(np.vstack([matrix, [0, 0, 1]]), points), out)
    np.testing.assert_allclose(transform_points(matrix, [1.0, 2.0]), matrix @ [1.0, 2.0, 1.0])
    with pytest.raises(ValueError):
        transform_points(matrix, np.zeros((5, 3)))
    with pytest.raises(ValueError):
        transform_points(np.zeros((2, 2)), points)


def test_invert_round_trip() -> None:
    rng = np.random.default_rng(2)
    matrix = np.hstack([rng.normal(size=(2, 2)) + 2 * np.eye(2), rng.normal(size=(2, 1)) * 30])
    inverse = invert_affine(matrix)
    points = rng.uniform(-100, 100, (10, 2))
    round_trip = transform_points(inverse, transform_points(matrix, points))
    np.testing.assert_allclose(round_trip, points, atol=1e-9)
    np.testing.assert_allclose(invert_affine(inverse), matrix, atol=1e-12)
    np.testing.assert_allclose(inverse, cv2.invertAffineTransform(matrix), atol=1e-12)
    with pytest.raises(ValueError, match="not invertible"):
        invert_affine([[1.0, 2.0, 0.0], [2.0, 4.0, 1.0]])


# --------------------------------------------------------------------------- templates


def test_builtin_arcface_template() -> None:
    arcface = TEMPLATES["arcface"]
    assert arcface.size == (112, 112)
    np.testing.assert_array_equal(arcface.points, ARCFACE_TEMPLATE_112)
    assert not arcface.points.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        arcface.name = "x"  # type: ignore[misc]


def test_scaling_keeps_pixel_centre_convention() -> None:
    arcface = TEMPLATES["arcface"]
    big = arcface.scaled(224)
    assert big.size == (224, 224)
    # Relative position within the crop extent [-0.5, W - 0.5] is unchanged...
    np.testing.assert_allclose((big.points + 0.5) / 224, (arcface.points + 0.5) / 112, atol=1e-12)
    # ...which is NOT the naive p * 2 (differs by 0.5 px).
    np.testing.assert_allclose(big.points, arcface.points * 2 + 0.5, atol=1e-12)
    np.testing.assert_allclose(big.scaled(112).points, arcface.points, atol=1e-12)
    wide = arcface.scaled((224, 112))
    assert wide.size == (224, 112)
    np.testing.assert_allclose(wide.points[:, 1], arcface.points[:, 1], atol=1e-12)
    np.testing.assert_allclose(wide.points[:, 0], big.points[:, 0], atol=1e-12)
    # Agrees with resizing a 112 crop to 224 (OpenCV's pixel-centre model).
    dots = _render_dots((112, 112), arcface.points, sigma=1.5)
    resized = cv2.resize(dots, (224, 224), interpolation=cv2.INTER_LINEAR)
    for point, naive in zip(big.points, arcface.points * 2):
        centre = _blob_centre(resized, point, radius=7)
        assert np.linalg.norm(centre - point) < 0.1
        assert np.linalg.norm(centre - naive) > 0.6
    with pytest.raises(ValueError):
        arcface.scaled(0)


def test_loose_template_geometry() -> None:
    arcface, loose = TEMPLATES["arcface"], TEMPLATES["loose"]
    assert loose.size == (224, 224)
    rel_arc = (arcface.points + 0.5) / 112
    rel_loose = (loose.points + 0.5) / 224
    np.testing.assert_allclose(rel_loose - 0.5, LOOSE_SHRINK * (rel_arc - 0.5), atol=1e-12)
    iod = np.linalg.norm(rel_loose[RIGHT_EYE] - rel_loose[LEFT_EYE])
    assert 2.2 * iod == pytest.approx(0.55, abs=0.01)  # face ~55% of the crop width
    assert abs(rel_loose[:, 0].mean() - 0.5) < 0.01  # horizontally centred
    assert np.all((rel_loose > 0.2) & (rel_loose < 0.8))


def test_template_validation_and_equality() -> None:
    with pytest.raises(ValueError, match="5 points"):
        Template("bad", np.zeros((4, 2)), (10, 10))
    with pytest.raises(ValueError, match="size"):
        Template("bad", np.zeros((5, 2)), (10, -1))
    a = Template("t", ARCFACE_TEMPLATE_112, 112)
    assert a.size == (112, 112)
    assert a == Template("t", ARCFACE_TEMPLATE_112.copy(), (112, 112))
    assert a != Template("t", ARCFACE_TEMPLATE_112 + 1e-9, (112, 112))
    assert len({a, Template("t", ARCFACE_TEMPLATE_112.copy(), (112, 112))}) == 1


def test_get_template_specs(tmp_path: Path) -> None:
    assert get_template("arcface") is TEMPLATES["arcface"]
    assert get_template("arcface", 112) is TEMPLATES["arcface"]
    assert get_template("arcface", 224) == TEMPLATES["arcface"].scaled(224)
    assert get_template("loose", (112, 112)) == TEMPLATES["loose"].scaled(112)
    custom = Template("mine", ARCFACE_TEMPLATE_112, (112, 112))
    assert get_template(custom) is custom
    from_array = get_template(ARCFACE_TEMPLATE_112.tolist(), size=(112, 112))
    np.testing.assert_array_equal(from_array.points, ARCFACE_TEMPLATE_112)
    assert from_array.size == (112, 112)

    path = tmp_path / "face96.json"
    points = (ARCFACE_TEMPLATE_112 - [8, 0]).tolist()
    path.write_text(json.dumps({"size": [96, 112], "points": points}))
    loaded = get_template(path)
    assert loaded.name == "face96" and loaded.size == (96, 112)
    np.testing.assert_allclose(loaded.points, ARCFACE_TEMPLATE_112 - [8, 0])
    assert get_template(str(path), 192).size == (192, 192)


def test_get_template_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown template 'nope'.*arcface, loose"):
        get_template("nope")
    with pytest.raises(ValueError, match="needs size"):
        get_template(ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="5 points"):
        get_template(np.zeros((4, 2)), size=10)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json.*arcface, loose"):
        get_template(broken)
    missing_key = tmp_path / "nokey.json"
    missing_key.write_text(json.dumps({"points": ARCFACE_TEMPLATE_112.tolist()}))
    with pytest.raises(ValueError, match="size"):
        get_template(missing_key)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"size": [112, 112], "points": [[1, 2]] * 4}))
    with pytest.raises(ValueError, match=r"short\.json.*5 points"):
        get_template(short)
    with pytest.raises(ValueError, match="unknown template"):
        get_template(tmp_path / "absent.json")


def test_a_template_file_nested_past_the_stack_is_a_clear_error(tmp_path: Path) -> None:
    # issue 22 item 8: a deeply nested --template JSON gave a RecursionError traceback.
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"cannot read template file .*nested\.json"):
        get_template(nested)


# --------------------------------------------------------------------------- warping


def _render_dots(shape: tuple[int, int], centres: np.ndarray, sigma: float) -> np.ndarray:
    """Grey image with Gaussian blobs at sub-pixel centres (pixel-centre convention)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for cx, cy in centres:
        image += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _blob_centre(gray: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
    x0, y0 = np.round(near).astype(int)
    window = gray[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(np.float64)
    window = np.clip(window - 10, 0, None)  # drop the interpolation floor
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([np.sum(xs * window), np.sum(ys * window)]) / window.sum()


@pytest.mark.parametrize(("name", "scale"), [("arcface", 2.5), ("loose", 1.6)])
def test_warp_face_puts_dots_on_template_points(name: str, scale: float) -> None:
    template = TEMPLATES[name]
    # Landmarks = the template under a known similarity, placed in a larger image.
    to_image = _similarity(np.deg2rad(25.0), scale, 90.3, 40.7)
    landmarks = transform_points(to_image, template.points)
    gray = _render_dots((480, 560), landmarks, sigma=2.0 * scale)
    image = np.repeat(gray[:, :, None], 3, axis=2)
    crop, matrix = warp_face(image, landmarks, template)
    assert crop.shape == (template.height, template.width, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(transform_points(matrix, landmarks), template.points, atol=1e-9)
    np.testing.assert_allclose(matrix, invert_affine(to_image), atol=1e-9)
    for point in template.points:
        centre = _blob_centre(crop[..., 1], point, radius=6)
        assert np.linalg.norm(centre - point) < 1.0, (point, centre)


def test_warp_face_grey_image_and_border_mode() -> None:
    template = TEMPLATES["arcface"]
    # A small face at the top-left corner: the crop magnifies it twice.
    landmarks = transform_points(_similarity(0.0, 0.5, 0.0, 0.0), template.points)
    image = np.full((40, 40), 200, np.uint8)  # the crop needs source pixels up to ~56
    crop, _ = warp_face(image, landmarks, "arcface")
    assert crop.shape == (112, 112)
    assert crop[2, 2] == 200  # inside the source
    assert crop[-1, -1] == 0  # outside the source -> black
    crop, _ = warp_face(image, landmarks, "arcface", border_mode=cv2.BORDER_REPLICATE)
    assert crop[-1, -1] == 200
    with pytest.raises(ValueError, match="landmarks"):
        warp_face(image, landmarks[:4], template)
    with pytest.raises(ValueError, match="image"):
        warp_face(np.zeros((5, 5, 2), np.uint8), landmarks, template)


def _mtfl_row(datasets: Path, image_name: str) -> tuple[Path, np.ndarray]:
    with open(datasets / "mtfl" / "train.txt", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields and fields[0] == image_name:
                values = np.array(fields[1:11], dtype=np.float64)
                return datasets / "mtfl" / fields[0], np.stack([values[:5], values[5:]], axis=1)
    raise AssertionError(f"{image_name} not in train.txt")


def test_warp_real_mtfl_face_levels_eyes(shared_datasets: Path) -> None:
    from facealign.imageio import read_image

    path, landmarks = _mtfl_row(shared_datasets, "lfw_5590/Aaron_Eckhart_0001.jpg")
    image = read_image(path)
    assert image.shape == (80, 80, 3)
    assert abs(landmarks[RIGHT_EYE, 1] - landmarks[LEFT_EYE, 1]) > 0.5  # tilted before
    crop, matrix = warp_face(image, landmarks, "arcface")
    aligned = transform_points(matrix, landmarks)
    assert abs(aligned[RIGHT_EYE, 1] - aligned[LEFT_EYE, 1]) < 0.5
    assert aligned[LEFT_EYE, 0] < aligned[RIGHT_EYE, 0]  # not mirrored
    np.testing.assert_allclose(aligned, ARCFACE_TEMPLATE_112, atol=6.0)
    # The face region of the crop comes from the photo, not from the black border.
    assert crop[40:100, 30:82].mean() > 30


# --------------------------------------------------------------------------- #
# The one anti-aliased warp (alignment.warp_affine)
# --------------------------------------------------------------------------- #


def _noise_face(reduction: int, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """White noise (std 73.9) and landmarks that make warp_face shrink it ``reduction`` times."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (size * reduction, size * reduction, 3), dtype=np.uint8)
    return noise, (TEMPLATES["arcface"].points + 0.5) * reduction - 0.5


def test_warp_face_does_not_alias_on_a_20x_reduction() -> None:
    # Area-averaging 20 x 20 pixels of white noise leaves std 73.9 / 20 = 3.7; plain
    # bilinear sampling reads 4 pixels of every 400 and left std 36.9 (issue 12).
    noise, landmarks = _noise_face(20)
    crop, matrix = warp_face(noise, landmarks, "arcface")
    assert matrix[0, 0] == pytest.approx(0.05)
    std = crop.astype(np.float64).std()
    assert 3.0 < std < 4.5, std  # measured 3.72 (36.93 before the anti-aliased warp)
    assert abs(crop.astype(np.float64).mean() - noise.mean()) < 1.0  # averaging keeps the level


def test_network_and_output_crops_share_the_warp() -> None:
    from facealign.alignment import warp_affine
    from facealign.cropping import warp_crop

    noise, landmarks = _noise_face(8)  # 896 x 896
    matrix = estimate_similarity(landmarks, TEMPLATES["arcface"].scaled(40).points)  # shrinks 22x
    np.testing.assert_array_equal(warp_crop(noise, matrix, 40), warp_affine(noise, matrix, 40, cv2.BORDER_REPLICATE))
    # A reduction under 2x: exactly OpenCV's bilinear warp.
    side = 500
    plain = estimate_similarity(landmarks, TEMPLATES["arcface"].scaled(side).points)
    assert plain[0, 0] > 0.5
    np.testing.assert_array_equal(
        warp_affine(noise, plain, side),
        cv2.warpAffine(noise, plain, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT),
    )


def test_anti_aliased_warp_keeps_the_border_mode() -> None:
    # A big face in the top-left corner, shrunk 10x: the crop reaches outside the image.
    template = TEMPLATES["arcface"]
    landmarks = transform_points(_similarity(0.0, 10.0, -300.0, -300.0), template.points)
    image = np.full((900, 900, 3), 200, np.uint8)
    crop, matrix = warp_face(image, landmarks, template)
    assert matrix[0, 0] == pytest.approx(0.1)
    assert crop[-1, -1].tolist() == [200] * 3 and crop[0, 0].tolist() == [0] * 3  # outside -> black
    crop, _ = warp_face(image, landmarks, template, border_mode=cv2.BORDER_REPLICATE)
    assert crop[0, 0].tolist() == [200] * 3
    grey, _ = warp_face(image[..., 0], landmarks, template)
    assert grey.shape == (112, 112) and grey[-1, -1] == 200


def _one_crop_oracle(image: np.ndarray, matrix: np.ndarray, size: int, border_mode: int) -> np.ndarray:
    """The anti-aliased warp of one crop written out step by step (0.5.0's code): the oracle of
    the vectorised geometry of warp_affines."""
    from facealign.geometry import from_resized_matrix

    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.5:
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
        src = corners @ inv.T
        h, w = image.shape[:2]
        x0 = int(np.clip(np.floor(src[:, 0].min()) - 1, 0, w - 1))
        y0 = int(np.clip(np.floor(src[:, 1].min()) - 1, 0, h - 1))
        x1 = int(np.clip(np.ceil(src[:, 0].max()) + 2, x0 + 1, w))
        y1 = int(np.clip(np.ceil(src[:, 1].max()) + 2, y0 + 1, h))
        roi = image[y0:y1, x0:x1]
        f = 0.5 / scale
        rw, rh = max(1, round(roi.shape[1] / f)), max(1, round(roi.shape[0] / f))
        small = cv2.resize(roi, (rw, rh), interpolation=cv2.INTER_AREA)
        to_image = from_resized_matrix((rw / roi.shape[1], rh / roi.shape[0]))
        to_image[:2, 2] += (x0, y0)
        matrix, image = matrix @ to_image, small
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border_mode)


@pytest.mark.parametrize("border_mode", [cv2.BORDER_CONSTANT, cv2.BORDER_REPLICATE])
def test_many_crops_warped_at_once_equal_each_crop_warped_alone(border_mode: int) -> None:
    """warp_affines on 60 crops of 3 images (shrunk 20x to enlarged 2x, rotated, partly outside the
    image) against warp_affine one crop at a time and the step-by-step oracle: bit for bit (no
    tolerance), whatever else is warped with a crop."""
    from facealign.alignment import warp_affine, warp_affines

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((300, 420), (97, 61), (1200, 900))]
    owner = rng.integers(0, 3, 60)
    scales = np.exp(rng.uniform(np.log(0.05), np.log(2.0), 60))
    maps = np.stack([_similarity(rng.uniform(-0.6, 0.6), s, *rng.uniform(-200 * s, 100, 2))[:2] for s in scales])
    together = warp_affines(images, maps, 40, owner, border_mode=border_mode)
    assert together.shape == (60, 40, 40, 3)
    assert (scales < 0.5).sum() > 20 and (scales >= 0.5).sum() > 10  # both paths taken
    for i in range(60):
        alone = warp_affine(images[owner[i]], maps[i], 40, border_mode)
        np.testing.assert_array_equal(together[i], alone)
        np.testing.assert_array_equal(together[i], _one_crop_oracle(images[owner[i]], maps[i], 40, border_mode))
    reversed_order = warp_affines(images, maps[::-1], 40, owner[::-1], border_mode=border_mode)
    np.testing.assert_array_equal(reversed_order[::-1], together)
    assert warp_affines(images, maps[:0], 40, owner[:0]).shape == (0, 40, 40, 3)
    with pytest.raises(ValueError, match="owners"):
        warp_affines(images, maps, 40, owner[:5])


def test_warping_many_crops_keeps_grey_images_types_and_3x3_maps() -> None:
    """warp_affines on grey (H, W) and (H, W, 1) images gives (N, h, w) crops as warp_affine
    gives (h, w); float32 images stay float32; (N, 3, 3) affine maps equal their (N, 2, 3)
    rows; malformed maps are refused with the shape in the message."""
    from facealign.alignment import warp_affine, warp_affines

    rng = np.random.default_rng(9)
    grey = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    maps = np.stack([_similarity(0.2, s, 5.0, -3.0) for s in (0.1, 0.8)])  # reduced and plain
    crops = warp_affines([grey], maps, 40, np.zeros(2, np.intp))
    assert crops.shape == (2, 40, 40) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[0], warp_affine(grey, maps[0], 40))
    one_channel = warp_affines([grey[..., None]], maps, 40, np.zeros(2, np.intp))
    np.testing.assert_array_equal(one_channel, crops)
    floats = warp_affines([grey.astype(np.float32)], maps, 40, np.zeros(2, np.intp))
    assert floats.dtype == np.float32 and np.abs(floats - crops).max() <= 1.0
    full = np.concatenate([maps, np.tile([[[0.0, 0.0, 1.0]]], (2, 1, 1))], axis=1)
    np.testing.assert_array_equal(warp_affines([grey], full, 40, np.zeros(2, np.intp)), crops)
    assert warp_affines([grey], maps[:0], 40, np.zeros(0, np.intp)).shape == (0, 40, 40)
    with pytest.raises(ValueError, match=r"\(N, 2, 3\)"):
        warp_affines([grey], maps[0], 40)
    with pytest.raises(ValueError, match="last row"):
        warp_affines([grey], full * 2, 40, np.zeros(2, np.intp))
