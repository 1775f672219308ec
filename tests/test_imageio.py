"""Tests for facealign.imageio: decoding every Pillow mode, strictness, atomic writes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from facealign import imageio
from facealign.imageio import (
    ImageReadError,
    find_images,
    read_image,
    read_image_reduced,
    write_image_atomic,
)


def _pattern(height: int = 24, width: int = 32) -> np.ndarray:
    """A deterministic RGB pattern with distinct values per pixel and channel."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7) % 256, (y * 11) % 256, (x * 3 + y * 5) % 256], axis=2).astype(np.uint8)


def _check_rgb(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.shape == (*shape, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous


# --------------------------------------------------------------------------- modes


def test_rgb_png_roundtrip_exact(tmp_path: Path) -> None:
    rgb = _pattern()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _check_rgb(out, rgb.shape[:2])
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_l_is_replicated(tmp_path: Path) -> None:
    gray = _pattern()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    _check_rgb(out, gray.shape)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_la_composited_on_white(tmp_path: Path) -> None:
    gray = np.array([[0, 100, 200, 50]], np.uint8)
    alpha = np.array([[255, 0, 128, 64]], np.uint8)
    Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    _check_rgb(out, (1, 4))
    g, a = gray.astype(int), alpha.astype(int)
    expected = (g * a + 255 * (255 - a) + 127) // 255
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))  # fully transparent -> white


def test_one_bit(tmp_path: Path) -> None:
    bits = _pattern()[..., 0] > 100
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "1"
    out = read_image(tmp_path / "b.png")
    _check_rgb(out, bits.shape)
    np.testing.assert_array_equal(out[..., 1], np.where(bits, 255, 0))


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.fromarray(_pattern()).quantize(colors=16)
    image.save(tmp_path / "p.png")
    expected = np.asarray(image.convert("RGB"))
    out = read_image(tmp_path / "p.png")
    _check_rgb(out, expected.shape[:2])
    np.testing.assert_array_equal(out, expected)


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0  # index 0 (red) transparent
    image.save(tmp_path / "pt.png", transparency=0)
    out = read_image(tmp_path / "pt.png")
    _check_rgb(out, (2, 4))
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 1], (0, 0, 255))


def test_rgba_alpha_dropped_onto_white(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 255], [200, 0, 0, 0], [0, 0, 0, 128], [100, 150, 200, 64]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    _check_rgb(out, (1, 4))
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 2], (127, 127, 127))  # 255 * 127 / 255
    expected = (np.array([100, 150, 200]) * 64 + 255 * 191 + 127) // 255
    np.testing.assert_array_equal(out[0, 3], expected)


def test_cmyk_converted(tmp_path: Path) -> None:
    cmyk = np.zeros((1, 4, 4), np.uint8)
    cmyk[0, 0] = (0, 0, 0, 0)  # white
    cmyk[0, 1] = (255, 0, 0, 0)  # cyan
    cmyk[0, 2] = (0, 255, 255, 0)  # red
    cmyk[0, 3] = (0, 0, 0, 255)  # black
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    _check_rgb(out, (1, 4))
    expected = np.array([[255, 255, 255], [0, 255, 255], [255, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(out[0].astype(int), expected, atol=1)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 1] = 255
    cmyk[..., 2] = 255  # magenta + yellow = red
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    _check_rgb(out, (16, 16))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), (255, 0, 0), atol=4)


_RAMP16 = np.array([[0, 255, 256, 1000, 40000, 65535]], np.uint16)


@pytest.mark.parametrize(
    ("name", "array", "mode"),
    [
        ("i16.png", _RAMP16, "I;16"),
        ("i16b.tif", _RAMP16.astype(">u2"), "I;16B"),
        ("i32.tif", _RAMP16.astype(np.int32), "I"),
    ],
)
def test_sixteen_bit_scaled_not_clipped(tmp_path: Path, name: str, array: np.ndarray, mode: str) -> None:
    Image.fromarray(array).save(tmp_path / name)
    with Image.open(tmp_path / name) as im:
        assert im.mode == mode
    out = read_image(tmp_path / name)
    _check_rgb(out, (1, 6))
    # v >> 8: 40000 -> 156 (clipping would give 255), 1000 -> 3.
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 3, 156, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_mode_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif")
    _check_rgb(out, (1, 4))
    np.testing.assert_allclose(out[0, :, 1].astype(int), [0, 64, 128, 255], atol=1)


def test_multiframe_gif_first_frame(tmp_path: Path) -> None:
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    blue = Image.new("RGB", (8, 6), (0, 0, 255))
    red.save(tmp_path / "anim.gif", save_all=True, append_images=[blue], duration=100)
    with Image.open(tmp_path / "anim.gif") as im:
        assert im.n_frames == 2
    out = read_image(tmp_path / "anim.gif")
    _check_rgb(out, (6, 8))
    np.testing.assert_array_equal(out.reshape(-1, 3), np.tile([255, 0, 0], (48, 1)))


# --------------------------------------------------------------------------- EXIF


def _oriented(tmp_path: Path, suffix: str) -> tuple[Path, np.ndarray]:
    stored = np.full((20, 40, 3), 128, np.uint8)  # H=20, W=40
    stored[0:8, 0:8] = (255, 0, 0)  # red block at the stored top-left
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / f"o{suffix}"
    image.save(path, exif=exif, **({"quality": 95} if suffix == ".jpg" else {}))
    return path, stored


def test_exif_orientation_6_png_exact(tmp_path: Path) -> None:
    path, stored = _oriented(tmp_path, ".png")
    out = read_image(path)
    _check_rgb(out, (40, 20))
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))
    np.testing.assert_array_equal(out[0, 19], (255, 0, 0))  # top-left went to top-right


def test_exif_orientation_6_jpeg(tmp_path: Path) -> None:
    path, _ = _oriented(tmp_path, ".jpg")
    out = read_image(path).astype(int)
    _check_rgb(out.astype(np.uint8), (40, 20))
    assert out[3, 16, 0] > 200 and out[3, 16, 2] < 60  # red block at the top-right
    assert abs(out[3, 3] - 128).max() < 20  # grey at the top-left
    assert abs(out[36, 16] - 128).max() < 20  # grey at the bottom-right


# --------------------------------------------------------------------------- errors


def _noise_jpeg(path: Path, size: int = 256) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def test_zero_byte_raises(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_jpeg_raises(tmp_path: Path, fraction: float) -> None:
    good = tmp_path / "good.jpg"
    _noise_jpeg(good)
    data = good.read_bytes()
    assert read_image(good).shape == (256, 256, 3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(bad)


def test_truncated_jpeg_raises_even_if_pillow_global_is_lenient(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    _noise_jpeg(good)
    (tmp_path / "bad.jpg").write_bytes(good.read_bytes()[:5000])
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageReadError):
            read_image(tmp_path / "bad.jpg")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def test_truncated_png_raises(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "t.png")


def test_text_file_named_jpg_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not an image\n" * 10)
    with pytest.raises(ImageReadError, match="not a recognised image format"):
        read_image(tmp_path / "notes.jpg")


def test_missing_file_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_max_pixels_enforced(tmp_path: Path) -> None:
    Image.new("RGB", (100, 60)).save(tmp_path / "s.png")
    assert read_image(tmp_path / "s.png", max_pixels=6000).shape == (60, 100, 3)
    with pytest.raises(ImageReadError, match="max_pixels=5999"):
        read_image(tmp_path / "s.png", max_pixels=5999)


# --------------------------------------------------------------------------- large


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12000 x 9000 grey JPEG (108 Mpx, above Pillow's 89 Mpx bomb warning)."""
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    gray = np.zeros((9000, 12000), np.uint8)
    gray[3000:6000, 6000:9000] = 255
    Image.fromarray(gray, mode="L").save(path, quality=90)
    return path


def test_large_photo_reads_without_bomb_error(large_jpeg: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(large_jpeg)
    assert Image.MAX_IMAGE_PIXELS == before  # global setting untouched afterwards
    _check_rgb(out, (9000, 12000))
    assert out[4500, 7500].min() > 240 and out[4500, 3000].max() < 15
    del out
    with pytest.raises(ImageReadError, match="exceeds max_pixels"):
        read_image(large_jpeg, max_pixels=100_000_000)


def test_read_reduced_uses_exact_uniform_scale(large_jpeg: Path) -> None:
    out, scale = read_image_reduced(large_jpeg, 1000)
    _check_rgb(out, (750, 1000))
    assert scale == pytest.approx(1000 / 12000, rel=1e-12)
    # The white square spans x in [6000, 9000), y in [3000, 6000) (continuous
    # coordinates), i.e. [500, 750) x [250, 500) at scale 1/12.
    assert out[375, 600].min() > 240
    assert out[375, 450].max() < 15 and out[200, 600].max() < 15
    col = out[375, :, 0].astype(int)
    edges = np.flatnonzero(np.diff(col > 127))
    np.testing.assert_allclose(edges + 1, [500, 750], atol=1)
    # Decoding at reduced DCT scale fits a small max_pixels that the full image exceeds.
    small, _ = read_image_reduced(large_jpeg, 1000, max_pixels=10_000_000)
    assert small.shape == (750, 1000, 3)


def test_read_reduced_small_and_png(tmp_path: Path) -> None:
    rgb = _pattern(30, 40)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    same, scale = read_image_reduced(tmp_path / "p.png", 40)
    assert scale == 1.0
    np.testing.assert_array_equal(same, rgb)
    half, scale = read_image_reduced(tmp_path / "p.png", 20)
    assert scale == pytest.approx(0.5)
    _check_rgb(half, (15, 20))
    expected = rgb.reshape(15, 2, 20, 2, 3).astype(float).mean(axis=(1, 3))
    np.testing.assert_allclose(half, expected, atol=1)
    with pytest.raises(ValueError):
        read_image_reduced(tmp_path / "p.png", 0)


# --------------------------------------------------------------------------- writing


def _all_entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_write_atomic_png_exact_and_no_part(tmp_path: Path) -> None:
    rgb = _pattern()
    target = tmp_path / "nested" / "dir" / "out.png"
    assert write_image_atomic(target, rgb) == target
    assert _all_entries(target.parent) == ["out.png"]
    np.testing.assert_array_equal(read_image(target), rgb)
    # Channel order on disk is standard: OpenCV reads BGR.
    np.testing.assert_array_equal(cv2.imread(str(target))[..., ::-1], rgb)


def test_write_atomic_jpeg_quality(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[...] = (200, 30, 60)
    target = tmp_path / "out.JPG"
    write_image_atomic(target, rgb, quality=95)
    assert _all_entries(tmp_path) == ["out.JPG"]
    np.testing.assert_allclose(read_image(target).astype(int), rgb.astype(int), atol=4)
    with pytest.raises(ValueError, match="quality"):
        write_image_atomic(tmp_path / "q.jpg", rgb, quality=101)


def test_write_atomic_interrupted_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    old = _pattern()
    write_image_atomic(target, old)

    def failing_replace(src: str, dst: str) -> None:
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        write_image_atomic(target, np.zeros_like(old))
    monkeypatch.undo()
    assert _all_entries(tmp_path) == ["out.png"]  # temporary removed
    np.testing.assert_array_equal(read_image(target), old)


def test_write_atomic_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extension"):
        write_image_atomic(tmp_path / "out.txt", _pattern())
    with pytest.raises(ValueError, match="uint8"):
        write_image_atomic(tmp_path / "out.png", _pattern().astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_image_atomic(tmp_path / "out.png", np.zeros((4, 4, 4), np.uint8))
    assert _all_entries(tmp_path) == []


# --------------------------------------------------------------------------- find_images


def test_find_images_order_and_filters(tmp_path: Path) -> None:
    files = [
        "b.png",
        "a/B.JPG",
        "a/c.jpeg",
        "a/sub/deep.Tiff",
        "a/notes.txt",
        "a/.hidden.jpg",
        ".cache/x.jpg",
        "a/.out.jpg.abc123.part",
        "z.jpg.part",
        "C.webp",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = find_images(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["C.webp", "a/B.JPG", "a/c.jpeg", "a/sub/deep.Tiff", "b.png"]
    assert all(p.is_absolute() == tmp_path.is_absolute() for p in found)
    assert find_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    assert find_images(tmp_path / "a" / "notes.txt") == []
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")


def test_find_images_skips_part_files_written_by_writer(tmp_path: Path) -> None:
    write_image_atomic(tmp_path / "x.png", _pattern())
    (tmp_path / ".x.png.tmp1.part").write_bytes(b"partial")
    assert find_images(tmp_path) == [tmp_path / "x.png"]


_POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n"


@pytest.mark.parametrize("name", ["page.jpg", "page.png", "page.eps"])
def test_postscript_is_an_unsupported_format_and_never_reaches_ghostscript(tmp_path: Path, monkeypatch, name) -> None:
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a decoder started a program")

    for call in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, call, no_subprocess)
    path = tmp_path / name
    path.write_bytes(_POSTSCRIPT)
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert caught.value.reason == "unsupported format EPS"
    with pytest.raises(ImageReadError, match="unsupported format EPS"):
        imageio.decode_image_bytes(_POSTSCRIPT)


def test_icon_named_png_is_an_unsupported_format(tmp_path: Path) -> None:
    Image.fromarray(_pattern(16, 16)).save(tmp_path / "icon.ico")
    (tmp_path / "icon.ico").rename(tmp_path / "icon.png")
    with pytest.raises(ImageReadError) as caught:
        read_image(tmp_path / "icon.png")
    assert caught.value.reason == "unsupported format ICO"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"])
def test_every_promised_format_decodes_whatever_its_extension(tmp_path: Path, fmt: str) -> None:
    rgb = _pattern()
    path = tmp_path / "image.jpg"  # the content decides
    Image.fromarray(rgb).save(path, format=fmt)
    assert read_image(path).shape == rgb.shape
