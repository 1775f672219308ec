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
