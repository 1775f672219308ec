"""Pictures to check the work: :mod:`facealign.drawing`, ``facealign draw`` and ``facealign sheet``."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import FACE_IMAGES
from PIL import Image

import facealign.drawing
from facealign.cli import main
from facealign.drawing import QUALITY_COLOURS, contact_sheet, draw_faces, quality_colour
from facealign.imageio import read_image
from facealign.pipeline import Face

#: A celeba_wild photo whose one face the shipped quality model finds doubtful
#: (p_fail 0.99 with the 0.5.0 weights): the contact sheet must show it first.
DOUBTFUL_IMAGE = "051840.jpg"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _face(p_fail: float, box=(20.0, 30.0, 80.0, 100.0)) -> Face:
    x1, y1, x2, y2 = box
    cx, w, h = (x1 + x2) / 2, x2 - x1, y2 - y1
    points = np.array([[cx - w / 5, y1 + h / 3], [cx + w / 5, y1 + h / 3], [cx, y1 + h / 2],
                       [cx - w / 6, y1 + 0.75 * h], [cx + w / 6, y1 + 0.75 * h]])  # fmt: skip
    return Face(np.array(box), 0.99, points, 5.0, p_fail)


def test_quality_colour_classes() -> None:
    assert quality_colour(0.0) == quality_colour(0.1) == QUALITY_COLOURS["good"]
    assert quality_colour(0.11) == quality_colour(0.5) == QUALITY_COLOURS["doubtful"]
    assert quality_colour(0.51) == quality_colour(1.0) == QUALITY_COLOURS["poor"]
    assert quality_colour(float("nan")) == quality_colour(None) == QUALITY_COLOURS["unknown"]


def test_draw_faces_draws_box_and_points_in_the_quality_colour() -> None:
    image = np.full((160, 200, 3), 60, np.uint8)
    before = image.copy()
    good, poor = _face(0.02), _face(0.9, box=(120.0, 30.0, 180.0, 100.0))
    picture = draw_faces(image, [good, poor], labels=False)
    np.testing.assert_array_equal(image, before)  # a copy is drawn
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert tuple(picture[60, 20]) == QUALITY_COLOURS["good"]  # left edge of the first box
    assert tuple(picture[60, 120]) == QUALITY_COLOURS["poor"]
    for face in (good, poor):
        x, y = np.rint(face.landmarks[2]).astype(int)  # the nose, filled
        assert tuple(picture[y, x]) == quality_colour(face.p_fail)
    assert tuple(picture[150, 100]) == (60, 60, 60)  # away from the faces, untouched
    labelled = draw_faces(image, [good])
    assert not np.array_equal(labelled, draw_faces(image, [good], labels=False))


def test_contact_sheet_frames_each_crop_in_its_colour() -> None:
    crops = [np.full((112, 112, 3), v, np.uint8) for v in (0, 100, 200)]
    colours = [quality_colour(p) for p in (0.9, 0.3, 0.0)]
    page = contact_sheet(crops, ["a", "b", "c"], colours, columns=2, tile=64)
    assert page.dtype == np.uint8 and page.shape[1] < page.shape[0] * 3
    # Two columns, two rows: the frames' corner pixels, then each crop's middle.
    frame, gap = 2, 4
    cell = 64 + 2 * frame + gap
    assert tuple(page[gap, gap]) == colours[0]
    assert tuple(page[gap, gap + cell]) == colours[1]
    assert tuple(page[gap + 32, gap + 32]) == (0, 0, 0)
    assert tuple(page[gap + 32, gap + cell + 32]) == (100, 100, 100)
    with pytest.raises(ValueError, match="3 crops, 2 captions"):
        contact_sheet(crops, ["a", "b"], colours)


def test_drawing_docstring_examples_run() -> None:
    failed, attempted = doctest.testmod(facealign.drawing, optionflags=doctest.ELLIPSIS, report=False)
    assert attempted >= 5 and failed == 0


def test_drawing_needs_only_pillow_and_numpy() -> None:
    imports = re.findall(r"^\s*(?:from|import) (\S+)", Path(facealign.drawing.__file__).read_text(), re.M)
    assert {name.split(".")[0] for name in imports} <= {
        "__future__", "csv", "json", "math", "os", "collections", "dataclasses", "html", "pathlib", "typing",
        "urllib", "numpy", "PIL", "",
    }  # fmt: skip


@pytest.fixture(scope="module")
def photos(shared_datasets: Path, tmp_path_factory) -> Path:
    """A folder of real photos: the three one-face photos and a doubtful one, one in a sub-folder."""
    folder = tmp_path_factory.mktemp("draw") / "in"
    (folder / "sub").mkdir(parents=True)
    images = shared_datasets / "celeba_wild" / "images"
    for name in (*FACE_IMAGES[:2], DOUBTFUL_IMAGE):
        (folder / name).write_bytes((images / name).read_bytes())
    (folder / "sub" / FACE_IMAGES[2]).write_bytes((images / FACE_IMAGES[2]).read_bytes())
    return folder


def test_draw_a_folder_writes_each_photo_with_its_faces(photos, tmp_path) -> None:
    from facealign import FaceAligner

    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    try:
        result = run("draw", photos, tmp_path / "out")
    finally:
        (photos / "broken.jpg").unlink()
    assert result.exit_code == 0, result.output  # an unreadable photo in a folder is reported
    assert "broken.jpg\terror: unreadable image" in result.stderr
    assert "4 pictures written" in result.stderr
    names = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.jpg"))
    assert names == sorted([*FACE_IMAGES[:2], DOUBTFUL_IMAGE, f"sub/{FACE_IMAGES[2]}"])
    aligner = FaceAligner()
    for name in (FACE_IMAGES[0], DOUBTFUL_IMAGE):
        original, drawn = read_image(photos / name), read_image(tmp_path / "out" / name)
        assert drawn.shape == original.shape
        [face] = aligner.process(original)
        x1, y1, x2, y2 = np.rint(face.box).astype(int)
        edge = drawn[(y1 + y2) // 2, x1].astype(int)  # the box's left edge, mid-height
        # JPEG blurs the line: its colour is nearest its quality class's of the three.
        nearest = min(("good", "doubtful", "poor"), key=lambda c: np.abs(edge - QUALITY_COLOURS[c]).sum())
        assert QUALITY_COLOURS[nearest] == quality_colour(face.p_fail), (name, edge, face.p_fail)


def test_draw_one_photo_to_a_png(photos, tmp_path) -> None:
    target = tmp_path / "drawn.png"
    result = run("draw", photos / FACE_IMAGES[0], target, "--no-labels")
    assert result.exit_code == 0, result.output
    assert Image.open(target).size == Image.open(photos / FACE_IMAGES[0]).size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("https://example.com/a.jpg", "out.png"), "is a URL; facealign reads local files only"),
        (("missing.jpg", "out.png"), "no such file or folder"),
        (("{photo}", "out.txt"), "cannot write .txt"),
        (("{photo}", "{photo}"), "OUT is IN"),
        (("{folder}", "{folder}/drawn"), "OUT must not be IN or lie inside it"),
    ],
)
def test_draw_refuses_what_it_cannot_do_with_a_usage_error(photos, tmp_path, args, message) -> None:
    values = {"photo": photos / FACE_IMAGES[0], "folder": photos}
    args = [a.format(**values) if "{" in a else str(tmp_path / a) if a.startswith("out") else a for a in args]
    result = run("draw", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_draw_exits_1_when_the_photo_it_was_given_cannot_be_read(tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    result = run("draw", bad, tmp_path / "out.png")
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and not (tmp_path / "out.png").exists()


@pytest.fixture(scope="module")
def cropped(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sheet") / "crops"
    result = run("crop", photos, out, "-q", "--jobs", "1")
    assert result.exit_code == 0, result.output
    return out


def _sheet_rows(html: str) -> list[tuple[str, float]]:
    return [(m[0], float(m[1])) for m in re.findall(r"<a href='([^']+)'>[^<]*</a> p_fail ([0-9.]+)", html)]


def test_sheet_shows_the_crops_by_p_fail_highest_first(cropped, tmp_path) -> None:
    out = tmp_path / "crops"
    out.mkdir()
    for path in cropped.rglob("*"):
        if path.is_file():
            (out / path.relative_to(cropped)).parent.mkdir(parents=True, exist_ok=True)
            (out / path.relative_to(cropped)).write_bytes(path.read_bytes())
    (out / "sheet-009.png").write_bytes(b"an old page")
    result = run("sheet", out, "--per-page", "3", "--columns", "2", "--tile", "64")
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert "2 pages written" in result.stderr
    assert sorted(p.name for p in out.glob("sheet-*.png")) == ["sheet-001.png", "sheet-002.png"]
    rows = _sheet_rows((out / "sheet.html").read_text())
    assert sorted(name for name, _ in rows) == sorted(r["output"] for r in manifest)
    assert [p for _, p in rows] == sorted((round(r["p_fail"], 3) for r in manifest), reverse=True)
    assert rows[0][0].startswith(DOUBTFUL_IMAGE[:-4]) and rows[0][1] > 0.5
    # The first crop's frame is in its quality colour.
    page = np.asarray(Image.open(out / "sheet-001.png").convert("RGB"))
    assert tuple(page[4, 4]) == quality_colour(rows[0][1])


def test_sheet_pages_alone_and_from_a_csv_manifest(photos, tmp_path) -> None:
    out = tmp_path / "crops"
    assert run("crop", photos, out, "-q", "--jobs", "1", "--manifest-format", "csv").exit_code == 0
    result = run("sheet", out, "--no-html")
    assert result.exit_code == 0, result.output
    assert (out / "sheet-001.png").is_file() and not (out / "sheet.html").exists()


def test_sheet_without_a_manifest_is_an_error(tmp_path) -> None:
    result = run("sheet", tmp_path)
    assert result.exit_code == 1 and "run facealign crop first" in result.stderr
