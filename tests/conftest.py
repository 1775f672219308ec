"""Shared pytest fixtures."""

from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that reads ../shared (through the ``shared_datasets`` fixture, directly
    or through another fixture) with ``data``: ``pytest -m "not data"`` runs the rest, and
    without ../shared they are reported as skipped with the reason."""
    for item in items:
        if "shared_datasets" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The read-only datasets folder beside the checkout; skip the test if absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


# --------------------------------------------------------------------------- #
# Folders of test images for the crop job and the CLI (tests/test_batch.py,
# tests/test_cli.py).
# --------------------------------------------------------------------------- #

#: celeba_wild photos on which the dlib detector finds exactly one face.
FACE_IMAGES = ("000114.jpg", "000131.jpg", "000149.jpg")


@pytest.fixture(scope="session")
def face_photos(shared_datasets: Path) -> list[Path]:
    """Three real photos with one detectable face each."""
    folder = shared_datasets / "celeba_wild" / "images"
    paths = [folder / name for name in FACE_IMAGES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"celeba_wild images missing: {missing}")
    return paths


def _save_variants(source: Path, folder: Path) -> dict[str, str]:
    """Odd but valid encodings of one face photo, and broken files; name -> expectation.

    Expectations: ``"face"`` (gives at least one crop), ``"noface"`` (failure
    ``no face found``), ``"unreadable"`` (failure ``unreadable image: ...``).
    """
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(source).convert("RGB")
    rgb.convert("L").save(folder / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 255))
    rgba.save(folder / "rgba.png")
    gray16 = np.asarray(rgb.convert("L"), np.uint16) * 257
    Image.fromarray(gray16).save(folder / "gray16.png")
    assert Image.open(folder / "gray16.png").mode.startswith("I")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(folder / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after a 90-degree clockwise turn
    rgb.rotate(90, expand=True).save(folder / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (300, 240), (90, 140, 200)).save(folder / "blank.png")
    (folder / "zero.jpg").write_bytes(b"")
    data = source.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    return {
        "gray.png": "face",
        "rgba.png": "face",
        "gray16.png": "face",
        "cmyk.jpg": "face",
        "palette.gif": "face",
        "exif_rotated.jpg": "face",
        "blank.png": "noface",
        "zero.jpg": "unreadable",
        "truncated.jpg": "unreadable",
        "text.png": "unreadable",
    }


def two_face_photo(face_photos: list[Path], path: Path) -> Path:
    """Two photos side by side: one image with two faces of different sizes."""
    from PIL import Image

    a = Image.open(face_photos[0]).convert("RGB")
    b = Image.open(face_photos[1]).convert("RGB")
    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), (128, 128, 128))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def crop_input(face_photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A read-only-by-convention input folder: ``in/sub/`` with real photos and odd files.

    Returns the folder and ``{relative path: expectation}`` (see :func:`_save_variants`).
    Tests must not write into it; copy it when a test changes files.
    """
    import shutil

    root = tmp_path_factory.mktemp("crop") / "in"
    sub = root / "sub"
    sub.mkdir(parents=True)
    expect = {}
    for photo in face_photos:
        shutil.copy(photo, sub / photo.name)
        expect[f"sub/{photo.name}"] = "face"
    for name, kind in _save_variants(face_photos[0], sub / "odd").items():
        expect[f"sub/odd/{name}"] = kind
    two_face_photo(face_photos, root / "two.jpg")
    expect["two.jpg"] = "face"
    return root, expect


class Stop(Exception):
    """Raised by :func:`stop_after` to interrupt a crop job between chunks."""


def stop_after(n: int):
    """A ``progress`` callback that stops the job once ``n`` images are done."""

    def progress(done: int, total: int) -> None:
        if done >= n:
            raise Stop

    return progress


def photo_folder(face_photos: list[Path], root: Path, blank: bool = False) -> Path:
    """``root/a/`` with the three one-face photos, ``root/b/two.jpg`` with two faces and,
    with ``blank``, ``root/b/blank.png`` without a face."""
    import shutil

    from PIL import Image

    (root / "a").mkdir(parents=True)
    for photo in face_photos:
        shutil.copy(photo, root / "a" / photo.name)
    two_face_photo(face_photos, root / "b" / "two.jpg")
    if blank:
        Image.new("RGB", (200, 160), (30, 30, 30)).save(root / "b" / "blank.png")
    return root


def child_pids(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux ``/proc``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie; Linux ``/proc``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
