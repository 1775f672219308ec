"""The one image pipeline (:mod:`facealign.pipeline`) and the paths that use it."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import FACE_IMAGES

from facealign.batch import CropSettings, get_aligner
from facealign.pipeline import STAGES, Pipeline, iter_image_faces


@pytest.fixture(scope="module")
def aligner():
    return get_aligner(CropSettings())


def test_stage_timer_sees_every_stage_and_one_landmark_pass_per_batch(aligner, face_photos) -> None:
    seen: Counter = Counter()
    seconds: Counter = Counter()

    def timer(stage: str, elapsed: float) -> None:
        seen[stage] += 1
        seconds[stage] += elapsed

    items = list(iter_image_faces(aligner, face_photos, timer=timer))
    assert [len(item.boxes) for item in items] == [1, 1, 1]
    crops = [face for item in items for face in aligner.align_faces(item, timer)]
    assert set(seen) == set(STAGES)
    assert seen["decode"] == seen["detect"] == len(face_photos)
    assert seen["landmarks"] == 1  # the faces of the batch in one network pass
    assert seen["warp"] == len(crops) == 3
    assert all(v >= 0 for v in seconds.values())
    # Without a hook the same results.
    again = list(iter_image_faces(aligner, face_photos))
    for a, b in zip(items, again):
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_face_aligner_process_is_the_pipeline(aligner, face_photos) -> None:
    from facealign import FaceAligner, read_image

    assert isinstance(aligner, FaceAligner) and isinstance(aligner, Pipeline)
    item = next(iter_image_faces(aligner, face_photos[:1]))
    assert item.scale == 1.0
    faces = aligner.process(read_image(face_photos[0]))
    [face] = item.faces()
    np.testing.assert_array_equal(faces[0].box, face.box)
    np.testing.assert_array_equal(faces[0].landmarks, face.landmarks)
    assert (faces[0].score, faces[0].p_fail) == (face.score, face.p_fail)
    # The crop step is FaceAligner.align on each face (full-size decode: same matrix).
    [aligned] = list(aligner.align_faces(item))
    crop, matrix = aligner.align(item.image, item.landmarks[0])
    np.testing.assert_array_equal(aligned.crop, crop)
    np.testing.assert_array_equal(aligned.transform, matrix)


def test_reduced_decode_maps_transform_to_original_pixels(aligner, face_photos) -> None:
    from facealign.alignment import transform_points

    [item] = list(iter_image_faces(aligner, face_photos[:1], max_side=160))
    assert item.scale < 1.0
    [aligned] = list(aligner.align_faces(item))
    [face] = item.faces()
    # Working-image matrix on working points == original-pixel transform on original points.
    np.testing.assert_allclose(
        transform_points(aligned.transform, face.landmarks),
        transform_points(aligned.matrix, item.landmarks[0]),
        atol=1e-9,
    )


def test_errors_are_reported_not_raised(aligner, tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    [item] = list(iter_image_faces(aligner, [bad]))
    assert item.image is None and item.error.startswith("unreadable image: ")
    assert list(aligner.align_faces(item)) == []


def test_bench_times_the_pipeline(face_photos, tmp_path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from bench.common import STAGES as BENCH_STAGES
        from bench.common import PipelineSpec, process_images
    finally:
        sys.path.pop(0)
    assert BENCH_STAGES[:-1] == STAGES and BENCH_STAGES[-1] == "encode"
    times = process_images(PipelineSpec("ours", "retinaface", "tcnn"), face_photos, out_dir=tmp_path)
    assert (times.images, times.faces, times.failures) == (3, 3, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{Path(n).stem}_0.jpg" for n in FACE_IMAGES)
    assert all(getattr(times, s) > 0 for s in BENCH_STAGES) and times.total <= times.wall


def _enlarged(photo: Path, factor: float, out: Path) -> Path:
    from PIL import Image

    with Image.open(photo) as image:
        rgb = image.convert("RGB")
    rgb.resize((round(rgb.width * factor), round(rgb.height * factor)), Image.Resampling.BICUBIC).save(out, quality=92)
    return out


def test_large_photos_are_decoded_at_the_dct_scale_their_crops_need(face_photos, tmp_path) -> None:
    """A 2,560 px photo: at the default minimum face (80 px there) the crops need the full
    resolution; at ``min_face=200`` a face on the 112 px crop (80 px) needs 0.4 of it, so the
    JPEG is decoded at 1/2 (DCT scaling) and the detector, told the scale, still finds the face
    (box within 2% of its width of the full-resolution one)."""
    from facealign.detection import get_detector
    from facealign.imageio import read_image

    big = _enlarged(face_photos[0], 8, tmp_path / "big.jpg")
    [full] = list(iter_image_faces(get_aligner(CropSettings()), [big]))
    [half] = list(iter_image_faces(get_aligner(CropSettings(min_face=200)), [big]))
    assert full.scale == 1.0 and half.scale == 0.5
    assert half.image is not None and max(half.image.shape) == 1280
    [face_half] = half.faces()
    [truth] = get_detector("retinaface", min_face=200).detect(read_image(big)).boxes  # the full photo
    np.testing.assert_allclose(face_half.box, truth, atol=0.02 * (truth[2] - truth[0]))


def test_crop_side_keeps_the_smallest_face_as_wide_as_on_the_template(aligner) -> None:
    # ArcFace 112: a face is about 80 px wide on the crop (2.25 eye distances).
    assert aligner.crop_side(4032, 3024) > 4032 / 2  # default minimum face there, 80 px: no DCT reduction
    assert aligner.crop_side(320, 240) == 320
    wide = get_aligner(CropSettings(min_face=320))
    assert wide.crop_side(4032, 3024) == pytest.approx(4032 / 4, abs=20)


def test_the_pipeline_needs_of_its_landmark_step_only_the_landmarks_method(aligner, face_photos) -> None:
    """Any LandmarkPredictor (one method, one result type) runs the pipeline, quality figures optional."""
    from facealign.landmarks import LandmarkPredictor, Landmarks

    class Centres:  # puts all five points at the centre of each box
        def landmarks(self, images, boxes):
            return [Landmarks(np.repeat(((b[:, :2] + b[:, 2:]) / 2)[:, None], 5, 1)) for b in boxes]

    assert isinstance(aligner.engine, LandmarkPredictor) and isinstance(Centres(), LandmarkPredictor)
    pipeline = Pipeline(aligner.detector, Centres(), aligner.template)
    [item] = list(iter_image_faces(pipeline, face_photos[:1]))
    [face] = item.faces()
    box = item.engine_boxes[0] / item.scale
    np.testing.assert_allclose(face.landmarks, np.repeat([(box[:2] + box[2:]) / 2], 5, 0), atol=1.0)
    assert np.isnan(face.p_fail) and np.isnan(face.expected_error)


def test_the_engines_landmarks_are_predict_many_with_quality_in_one_result(aligner, face_photos) -> None:
    from facealign.quality import QUALITY_KEYS

    items = list(iter_image_faces(aligner, face_photos))
    images, boxes = [item.image for item in items], [item.engine_boxes for item in items]
    results = aligner.engine.landmarks(images, boxes)
    points, quality = aligner.engine.predict_many(images, boxes, return_quality=True)
    assert len(results) == len(items)
    for result, pts, figures, item in zip(results, points, quality, items):
        np.testing.assert_array_equal(result.points, pts)  # bit for bit
        np.testing.assert_array_equal(result.points, item.landmarks)
        assert set(result.quality) == set(QUALITY_KEYS) == set(figures)
        for key in QUALITY_KEYS:
            np.testing.assert_array_equal(result.quality[key], figures[key])


def test_threaded_detection_yields_the_same_faces_in_the_same_order(face_photos, tmp_path) -> None:
    """``threads=3`` decodes and detects images in threads; what comes out, and in which order,
    is what one thread gives: the same points to the bit, failures in their place. Closing
    the generator early returns at once (nothing waits for images never asked for)."""
    from facealign import FaceAligner

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [*face_photos, bad, *face_photos, tmp_path / "missing.jpg", *reversed(face_photos)] * 2
    one = list(iter_image_faces(FaceAligner(), paths))
    three = list(iter_image_faces(FaceAligner(), paths, threads=3, batch_pixels=300_000))
    assert [i.path for i in three] == [i.path for i in one] == [Path(p) for p in paths]
    assert [i.error for i in three] == [i.error for i in one]
    assert sum(i.error is not None for i in one) == 4
    for a, b in zip(one, three):
        assert np.array_equal(a.landmarks, b.landmarks) and np.array_equal(a.boxes, b.boxes)
    stream = iter_image_faces(FaceAligner(), paths * 50, threads=2)
    assert next(stream).error is None
    stream.close()


def test_a_detector_that_is_not_thread_safe_detects_one_image_at_a_time(face_photos) -> None:
    """``threads`` is ignored for a detector without ``thread_safe`` (e.g. a plug-in)."""
    import threading

    from facealign import FaceAligner
    from facealign.detection import get_detector

    class Guarded:
        name = "guarded"

        def __init__(self) -> None:
            self.inner, self.busy, self.overlaps = get_detector("retinaface"), threading.Lock(), 0

        def detect(self, image):
            if not self.busy.acquire(blocking=False):
                self.overlaps += 1
                self.busy.acquire()
            try:
                return self.inner.detect(image)
            finally:
                self.busy.release()

    guarded = Guarded()
    items = list(iter_image_faces(FaceAligner(guarded), list(face_photos) * 4, threads=4))
    assert guarded.overlaps == 0 and all(len(i.boxes) == 1 for i in items)


@pytest.mark.parametrize("budget", [1_000_000, 0])
def test_detection_threads_hold_at_most_the_lookahead_pixels_whatever_sizes_come(monkeypatch, budget) -> None:
    """Two threads load 30 small images (100 x 100) then 30 large ones (1000 x 1000) for a slow
    consumer: the results loaded and not yet yielded never hold more than LOOKAHEAD_PIXELS plus
    three large images (two threads and the next to yield; no tolerance beyond that bound), and
    they come in order. Without the budget the 30 large ones were all loaded at once (30 M
    pixels); with a budget of 0 the images still come, one by one."""
    import threading
    import time

    import facealign.pipeline as pipeline
    from facealign.pipeline import ImageFaces

    class AnyThread:  # a detector that may run in threads; never called (load_and_detect is faked)
        thread_safe = True

    monkeypatch.setattr(pipeline, "LOOKAHEAD_PIXELS", budget)
    sides = [100] * 30 + [1000] * 30
    lock, held, peak = threading.Lock(), [0], [0]

    def load(self, index, **options):
        item = ImageFaces(Path(str(index)), image=np.zeros((sides[index], sides[index], 3), np.uint8))
        with lock:
            held[0] += sides[index] ** 2
            peak[0] = max(peak[0], held[0])
        return item

    monkeypatch.setattr(Pipeline, "load_and_detect", load)
    order = []
    for item in iter_image_faces(Pipeline(AnyThread(), None, None), range(len(sides)), threads=2, batch_images=1):
        with lock:
            held[0] -= item.image.shape[0] * item.image.shape[1]
        order.append(int(str(item.path)))
        time.sleep(0.002)  # a consumer slower than the loads
    assert order == list(range(len(sides)))
    assert peak[0] <= budget + 3 * 1000**2, peak[0]


def test_landmark_batches_end_at_every_batch_images_even_after_a_pixel_flush(face_photos, monkeypatch) -> None:
    """``batch_images=4`` with a pixel limit that flushes every two photos: no landmark batch
    spans a multiple of 4 images (the crop job's chunks), whatever the pixel flushes."""
    from facealign import FaceAligner
    from facealign.imageio import read_image

    ends: list[int] = []
    real = Pipeline.add_landmarks

    def recorded(self, items, timer=None):
        ends.append((ends[-1] if ends else 0) + len(items))
        return real(self, items, timer)

    monkeypatch.setattr(Pipeline, "add_landmarks", recorded)
    pixels = max(read_image(p).shape[0] * read_image(p).shape[1] for p in face_photos)
    items = list(iter_image_faces(FaceAligner(), list(face_photos) * 4, batch_pixels=pixels + 1, batch_images=4))
    assert len(items) == 12 and all(len(i.boxes) == 1 for i in items)
    assert {4, 8, 12} <= set(ends) and len(ends) > 3, ends
