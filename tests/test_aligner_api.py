"""The Python API of :class:`facealign.FaceAligner`: image inputs, ``crop_faces``, ``crop_many``
and the docstring examples (run here as doctests)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FACE_IMAGES
from PIL import Image

import facealign.aligner
from facealign import FaceAligner, ImageReadError, read_image
from facealign.alignment import transform_points
from facealign.batch import CropSettings, get_aligner


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return get_aligner(CropSettings())


@pytest.fixture(scope="module")
def photos(shared_datasets: Path) -> list[Path]:
    """Twelve celeba_wild photos, the three one-face photos first."""
    folder = shared_datasets / "celeba_wild" / "images"
    others = sorted(p for p in folder.glob("*.jpg") if p.name not in FACE_IMAGES)[:9]
    return [folder / name for name in FACE_IMAGES] + others


def test_every_image_method_takes_an_array_a_path_bytes_and_a_pil_image(aligner, photos) -> None:
    path = photos[0]
    array = read_image(path)
    inputs = {
        "array": array,
        "str": str(path),
        "path": path,
        "bytes": path.read_bytes(),
        "pil": Image.open(path),
    }
    [reference] = aligner.process(array)
    for name, image in inputs.items():
        [face] = aligner.process(image)
        np.testing.assert_array_equal(face.landmarks, reference.landmarks, err_msg=name)
        np.testing.assert_array_equal(aligner.detect(image).boxes, aligner.detect(array).boxes, err_msg=name)
        crop, _ = aligner.align(image, reference.landmarks)
        np.testing.assert_array_equal(crop, aligner.align(array, reference.landmarks)[0], err_msg=name)
        np.testing.assert_array_equal(
            aligner.landmarks(image, reference.box[None]), aligner.landmarks(array, reference.box[None])
        )
        [aligned] = aligner.crop_faces(image)
        np.testing.assert_array_equal(aligned.face.landmarks, reference.landmarks, err_msg=name)


def test_a_pil_image_is_upright_as_a_file_is(aligner, photos, tmp_path) -> None:
    rotated = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown after a 90-degree clockwise turn
    Image.open(photos[0]).rotate(90, expand=True).save(rotated, exif=exif.tobytes(), quality=95)
    expected = read_image(rotated)
    assert np.array_equal(facealign.aligner.to_rgb(Image.open(rotated)), expected)
    assert np.array_equal(facealign.aligner.to_rgb(rotated.read_bytes()), expected)


def test_what_is_not_an_image_gets_a_clear_error(aligner, tmp_path) -> None:
    with pytest.raises(TypeError, match="expected an image: an H x W x 3 uint8 RGB array, a file path, .* got int"):
        aligner.crop_faces(3)
    with pytest.raises(ValueError, match="expected an H x W x 3 uint8 RGB image, got shape \\(4, 4\\) dtype float64"):
        aligner.process(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="is a URL; facealign reads local files only"):
        aligner.process("https://example.com/face.jpg")
    with pytest.raises(ImageReadError, match="'<bytes>': not a recognised image format"):
        aligner.detect(b"not an image")
    with pytest.raises(ImageReadError, match="no such file"):
        aligner.crop_faces(tmp_path / "missing.jpg")


def test_crop_faces_gives_face_crop_and_transform(aligner, photos) -> None:
    image = read_image(photos[0])
    [aligned] = aligner.crop_faces(image)
    [face] = aligner.process(image)
    np.testing.assert_array_equal(aligned.face.box, face.box)
    assert aligned.face.score == face.score and aligned.face.p_fail == face.p_fail
    crop, matrix = aligner.align(image, face.landmarks)
    np.testing.assert_array_equal(aligned.crop, crop)
    np.testing.assert_array_equal(aligned.transform, matrix)
    # The transform takes the face's points near the template's (a similarity fit of 5 points).
    moved = transform_points(aligned.transform, face.landmarks)
    assert np.abs(moved - aligner.template.points).max() < 0.1 * aligner.template.size[0]


def test_crop_faces_of_an_image_without_faces_is_empty(aligner) -> None:
    assert aligner.crop_faces(np.full((120, 160, 3), 128, np.uint8)) == []


def _assert_same_crops(batched, alone, label: str) -> None:
    """The same faces and crops, bit for bit (a face's landmarks do not depend on its batch)."""
    assert len(batched) == len(alone), label
    for a, b in zip(batched, alone):
        np.testing.assert_array_equal(a.face.box, b.face.box, err_msg=label)
        np.testing.assert_array_equal(a.face.landmarks, b.face.landmarks, err_msg=label)
        assert a.face.p_fail == b.face.p_fail, label
        np.testing.assert_array_equal(a.crop, b.crop, err_msg=label)
        np.testing.assert_array_equal(a.transform, b.transform, err_msg=label)


def test_crop_many_gives_the_crops_of_crop_faces_in_order(aligner, photos) -> None:
    alone = [aligner.crop_faces(p) for p in photos]
    assert sum(map(len, alone)) >= len(photos)
    # A generator of mixed inputs, batches that do not divide the count.
    inputs = (read_image(p) if k % 2 else p for k, p in enumerate(photos))
    batched = list(aligner.crop_many(inputs, batch_size=5))
    assert len(batched) == len(photos)
    for path, many, one in zip(photos, batched, alone):
        _assert_same_crops(many, one, path.name)
    largest = list(aligner.crop_many(photos, batch_size=4, largest_only=True))
    assert [len(faces) for faces in largest] == [min(1, len(faces)) for faces in alone]


def test_crop_many_gives_the_crops_of_the_crop_command(aligner, photos, tmp_path) -> None:
    from facealign.cli import main

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for path in photos:
        (in_dir / path.name).write_bytes(path.read_bytes())
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(main, ["crop", str(in_dir), str(out_dir), "--format", "png", "-q"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
    sources = sorted(p.name for p in photos)
    for source, faces in zip(sources, aligner.crop_many([in_dir / s for s in sources], batch_size=32)):
        mine = sorted((r for r in rows if r["source"] == source), key=lambda r: r["face"])
        assert len(mine) == len(faces), source
        for row, aligned in zip(mine, faces):
            written = np.asarray(Image.open(out_dir / row["output"]).convert("RGB"))  # PNG: lossless
            np.testing.assert_array_equal(written, aligned.crop, err_msg=row["output"])
            np.testing.assert_allclose(row["landmarks"], aligned.face.landmarks, atol=0.005)  # rounded to 0.01


def test_crop_many_refuses_a_batch_size_below_one(aligner) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(aligner.crop_many([], batch_size=0))


def test_crop_many_of_nothing_yields_nothing(aligner) -> None:
    assert list(aligner.crop_many([])) == []


def test_docstring_examples_run(photos) -> None:
    failed, attempted = doctest.testmod(
        facealign.aligner,
        extraglobs={"photo": str(photos[0])},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=False,
        verbose=False,
    )
    assert attempted >= 20
    assert failed == 0, f"{failed} of {attempted} doctest examples failed (printed above)"
