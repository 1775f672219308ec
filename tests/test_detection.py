"""Detector back-ends (facealign.detection)."""

import numpy as np
import pytest

from facealign.detection import DETECTORS, Detections, ScaledDetector, get_detector, register_detector
from facealign.imageio import read_image
from facealign.research.data import load_mtfl, match_detection


def test_scale_policy():
    d = ScaledDetector(min_side=480, max_side=1280)
    assert d.scale_for(80, 80) == pytest.approx(6.0)  # small images are upscaled
    assert d.scale_for(9000, 12000) == pytest.approx(1280 / 12000)  # huge ones are reduced
    assert d.scale_for(600, 800) == 1.0


@pytest.mark.parametrize("name", ["dlib", "dlib-fast", "haar"])
def test_finds_the_face_in_80px_mtfl_images(shared_datasets, name):
    # Faces in 80x80 MTFL images are ~35 px wide: the detector must upscale to find them.
    data = load_mtfl(shared_datasets / "mtfl", "train").subset(np.arange(20))
    det = get_detector(name)
    hits = 0
    for path, pts in zip(data.paths, data.points):
        d = det.detect(read_image(data.root / path))
        hits += match_detection(d.boxes, pts) >= 0
    assert hits >= 16, f"{name} found {hits} of 20 MTFL faces"


def test_dlib_box_covers_the_landmarks(shared_datasets):
    data = load_mtfl(shared_datasets / "mtfl", "train").subset(np.arange(5))
    det = get_detector("dlib")
    for path, pts in zip(data.paths, data.points):
        d = det.detect(read_image(data.root / path))
        k = match_detection(d.boxes, pts)
        assert k >= 0
        x1, y1, x2, y2 = d.boxes[k]
        assert x1 < pts[:, 0].min() and pts[:, 0].max() < x2
        assert y1 < pts[:, 1].min() and pts[:, 1].max() < y2


def test_blank_image_has_no_face():
    img = np.full((240, 320, 3), 127, np.uint8)
    assert len(get_detector("dlib").detect(img)) == 0


def test_rejects_bad_images_and_names():
    det = get_detector("dlib")
    with pytest.raises(ValueError, match="uint8 RGB"):
        det.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        det.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="unknown detector"):
        get_detector("nope")
    with pytest.raises(TypeError):
        get_detector(42)


def test_plugin_detector_and_sorting():
    class Fixed:
        name = "fixed"

        def detect(self, image):
            return Detections(np.array([[0, 0, 10, 10], [0, 0, 50, 50]]), np.array([1.0, 0.5])).sorted_by_area()

    register_detector("fixed", Fixed)
    try:
        d = get_detector("fixed").detect(np.zeros((60, 60, 3), np.uint8))
        assert d.boxes[0].tolist() == [0, 0, 50, 50]  # largest first
        assert d.scores.tolist() == [0.5, 1.0]
    finally:
        DETECTORS.pop("fixed")


def test_a_plugin_factory_gets_the_options_its_signature_takes():
    """FaceAligner passes ``det_threshold`` (with no rescue) and ``providers`` only to a factory
    whose signature takes them, each group whole; an option a factory does not take is named."""
    from facealign import FaceAligner

    seen: dict[str, dict] = {}

    def thresholded(min_face=None, threshold=0.5, rescue_threshold=0.1):
        seen["thresholded"] = {"threshold": threshold, "rescue_threshold": rescue_threshold}
        return get_detector("haar")

    def onnx_like(providers=None, **kwargs):
        seen["onnx_like"] = {"providers": providers, **kwargs}
        return get_detector("haar")

    register_detector("thresholded", thresholded)
    register_detector("onnx_like", onnx_like)
    try:
        FaceAligner("thresholded", det_threshold=0.7, providers="cpu")
        assert seen["thresholded"] == {"threshold": 0.7, "rescue_threshold": None}
        FaceAligner("onnx_like", det_threshold=0.7, providers="cpu")
        assert seen["onnx_like"]["threshold"] == 0.7 and seen["onnx_like"]["providers"] is not None
        with pytest.raises(ValueError, match="'thresholded' does not take providers$"):
            get_detector("thresholded", providers="cpu")
    finally:
        DETECTORS.pop("thresholded")
        DETECTORS.pop("onnx_like")


def test_an_error_inside_a_plugin_factory_is_not_taken_for_a_refused_option():
    """A factory that takes ``min_face`` but fails inside with a TypeError: that error reaches
    the caller as it is (it used to read as 'does not take min_face', and FaceAligner retried)."""

    def broken(min_face=None):
        raise TypeError("unsupported operand type(s) inside the plug-in")

    register_detector("broken", broken)
    try:
        with pytest.raises(TypeError, match="inside the plug-in"):
            get_detector("broken", min_face=30)
    finally:
        DETECTORS.pop("broken")


def test_match_detection_picks_the_box_holding_the_face():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 60, 60], [15, 15, 70, 70]], float)
    pts = np.array([[38, 38], [42, 38], [40, 40], [38, 42], [42, 42]], float)
    assert match_detection(boxes, pts) == 1  # both contain it; box 1's centre is closer
    assert match_detection(boxes[:1], pts) == -1
    assert match_detection(np.zeros((0, 4)), pts) == -1


class _SizeRecorder(ScaledDetector):
    """Finds one face only in images at least ``face_at`` pixels wide; records the widths it saw."""

    def __init__(self, face_at: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.face_at, self.widths = face_at, []

    def _detect_gray(self, gray):
        self.widths.append(gray.shape[1])
        if gray.shape[1] >= self.face_at:
            return np.array([[10.0, 10.0, 50.0, 50.0]]), np.array([1.0])
        return np.zeros((0, 4)), np.zeros(0)


def test_upscale_when_empty_searches_the_own_size_first():
    image = np.zeros((240, 320, 3), np.uint8)  # upscaled 2x by min_side=480
    # A face at the image's own size: found there, no upscaled search.
    det = _SizeRecorder(face_at=320, upscale="when-empty")
    found = det.detect(image)
    assert det.widths == [320] and len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [10, 10, 50, 50])
    # Only the upscaled image shows a face: searched at 320, then at 640; the box
    # is mapped back to the original frame ((x + 0.5) / 2 - 0.5).
    det = _SizeRecorder(face_at=640, upscale="when-empty")
    found = det.detect(image)
    assert det.widths == [320, 640] and len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [4.75, 4.75, 24.75, 24.75])
    # "always" goes straight to the upscaled image.
    det = _SizeRecorder(face_at=320)
    det.detect(image)
    assert det.widths == [640]
    with pytest.raises(ValueError, match="upscale"):
        ScaledDetector(upscale="sometimes")
    assert get_detector("dlib-fast").upscale == "when-empty" and get_detector("dlib").upscale == "always"


def test_retinaface_finds_the_same_boxes_with_one_or_two_threads(face_photos):
    """Tolerance: none (bit-identical boxes, scores and points), as ``--jobs 1`` (threads
    for the CPUs available) and ``--jobs 2`` workers (one thread each) must agree."""
    one, two = get_detector("retinaface", threads=1), get_detector("retinaface", threads=2)
    for path in face_photos:
        image = read_image(path)
        a, b = one.detect(image), two.detect(image)
        assert len(a) >= 1
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_threads_that_detect_at_once_on_a_new_retinaface_open_one_session(monkeypatch):
    """Four threads detect at once on a detector that has not opened its onnxruntime session
    (as the detection threads of ``crop --jobs 1`` start): the session is opened once, and
    every thread finds the same (no) faces on a blank image."""
    import threading
    import time

    import facealign.inference as inference

    real, opened = inference.onnx_session, []

    def slow_open(*args, **kwargs):  # widen the window in which a second thread could open one too
        opened.append(threading.get_ident())
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "onnx_session", slow_open)
    detector = get_detector("retinaface", threads=1)
    blank = np.zeros((64, 64, 3), np.uint8)
    found: list[int] = []
    threads = [threading.Thread(target=lambda: found.append(len(detector.detect(blank)))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1 and found == [0] * 4
