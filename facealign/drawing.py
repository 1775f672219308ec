"""Pictures to check the work: faces drawn on photos, and contact sheets of crops.

Pillow and numpy only. Two pictures, each behind a command:

* :func:`draw_faces` (``facealign draw``): a photo with each face's box, its
  five landmarks and a label, in the colour of its quality (:func:`quality_colour`);
* :func:`contact_sheet` (``facealign sheet``): crops in a grid, each framed in
  its quality colour and captioned, a page at a time.

Quality colours follow the face's ``p_fail``, the probability that its landmark
error exceeds 10% of the inter-ocular distance (:mod:`facealign.quality`):
green up to :data:`P_FAIL_DOUBTFUL`, orange up to :data:`P_FAIL_POOR`, red
above, grey when unknown.

>>> import numpy as np
>>> from facealign.pipeline import Face
>>> face = Face(np.array([10.0, 10, 50, 60]), 0.99, np.array([[20.0, 25], [40, 25], [30, 35], [22, 48], [38, 48]]),
...             expected_error=4.0, p_fail=0.02)
>>> picture = draw_faces(np.zeros((80, 80, 3), np.uint8), [face])
>>> picture.shape, tuple(picture[10, 30]) == quality_colour(0.02)
((80, 80, 3), True)
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .constants import P_FAIL_POOR

__all__ = [
    "P_FAIL_DOUBTFUL",
    "P_FAIL_POOR",
    "QUALITY_COLOURS",
    "SHEET_HTML",
    "CropRecord",
    "by_doubt",
    "contact_sheet",
    "draw_faces",
    "quality_colour",
    "read_crop_records",
    "sheet_page_name",
    "write_contact_sheet",
]

#: ``p_fail`` above which a face is drawn as doubtful (orange).
P_FAIL_DOUBTFUL: float = 0.1

#: RGB colour of each quality class.
QUALITY_COLOURS: dict[str, tuple[int, int, int]] = {
    "good": (40, 200, 70),
    "doubtful": (255, 160, 0),
    "poor": (235, 40, 40),
    "unknown": (160, 160, 160),
}


class _FaceLike(Protocol):
    @property
    def box(self) -> np.ndarray: ...
    @property
    def score(self) -> float: ...
    @property
    def landmarks(self) -> np.ndarray: ...
    @property
    def p_fail(self) -> float: ...


def quality_colour(p_fail: float | None) -> tuple[int, int, int]:
    """The RGB colour of a face with this ``p_fail`` (see the module notes).

    >>> quality_colour(0.05), quality_colour(0.3), quality_colour(0.9), quality_colour(float("nan"))
    ((40, 200, 70), (255, 160, 0), (235, 40, 40), (160, 160, 160))
    """
    if p_fail is None or not math.isfinite(p_fail):
        return QUALITY_COLOURS["unknown"]
    if p_fail > P_FAIL_POOR:
        return QUALITY_COLOURS["poor"]
    if p_fail > P_FAIL_DOUBTFUL:
        return QUALITY_COLOURS["doubtful"]
    return QUALITY_COLOURS["good"]


def _font(size: int) -> Any:
    """Pillow's built-in font at ``size`` pixels (the bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int], font: Any
) -> None:
    """``text`` in black on a ``colour`` box whose lower-left corner is ``xy`` (moved inside the picture)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, draw.im.size[0] - width))
    y = xy[1] - height if xy[1] - height >= 0 else xy[1]
    draw.rectangle((x, y, x + width, y + height), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=(0, 0, 0), font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    """``text``, shortened from the left with ``...`` until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def draw_faces(image: np.ndarray, faces: Sequence[_FaceLike], labels: bool = True) -> np.ndarray:
    """A copy of an RGB image with each face's box, five landmarks and label drawn.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8
        The photo, RGB.
    faces : sequence of Face
        Anything with ``box`` (``x1, y1, x2, y2``), ``score``, ``landmarks``
        (5 x 2) and ``p_fail``, in pixels of ``image`` (e.g. the result of
        :meth:`facealign.FaceAligner.process`).
    labels : bool
        Write ``k: p_fail P`` (``k`` the face's index, largest first) above each box.

    Returns
    -------
    ndarray (H, W, 3) uint8
        The picture: box and points in the face's :func:`quality_colour`, the
        points ringed in black so that they show on any skin.
    """
    picture = Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    side = min(picture.size)
    width = max(2, round(side / 250))
    font = _font(max(10, round(side / 40)))
    for k, face in enumerate(faces):
        colour = quality_colour(float(face.p_fail))
        x1, y1, x2, y2 = (float(v) for v in face.box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        radius = max(2.0, 0.025 * (x2 - x1))
        for x, y in np.asarray(face.landmarks, np.float64).reshape(-1, 2):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0))
        if labels:
            p_fail = float(face.p_fail)
            text = f"{k}: p_fail {p_fail:.2f}" if math.isfinite(p_fail) else f"{k}: score {float(face.score):.2f}"
            _label(draw, (x1, y1), text, colour, font)
    return np.asarray(picture)


def contact_sheet(
    crops: Sequence[np.ndarray],
    captions: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    columns: int = 8,
    tile: int = 112,
) -> np.ndarray:
    """One page of crops in a grid, each resized to ``tile`` pixels, framed in its colour, captioned.

    Parameters
    ----------
    crops : sequence of ndarray (H, W, 3) uint8
        The crops, in reading order.
    captions : sequence of str
        One caption a crop (one or two short lines, ``\\n`` between them).
    colours : sequence of (r, g, b)
        One frame colour a crop (e.g. :func:`quality_colour` of its ``p_fail``).
    columns : int
        Crops a row.
    tile : int
        Side of each crop on the page, in pixels.

    Returns
    -------
    ndarray (H, W, 3) uint8
        The page, on white.

    >>> page = contact_sheet([np.zeros((112, 112, 3), np.uint8)] * 3, ["a", "b", "c"], [(255, 0, 0)] * 3, columns=2)
    >>> page.shape[1] == 2 * page.shape[1] // 2, page.dtype
    (True, dtype('uint8'))
    """
    if not (len(crops) == len(captions) == len(colours)):
        raise ValueError(f"{len(crops)} crops, {len(captions)} captions and {len(colours)} colours")
    if columns < 1 or tile < 8:
        raise ValueError(f"columns must be at least 1 and tile at least 8, got {columns} and {tile}")
    font = _font(max(9, tile // 10))
    frame = max(2, tile // 40)
    gap = max(4, tile // 14)
    line = font.getbbox("Ag")[3] + 2 if hasattr(font, "getbbox") else 12
    lines = max((caption.count("\n") + 1 for caption in captions), default=1)
    cell_w, cell_h = tile + 2 * frame + gap, tile + 2 * frame + lines * line + gap
    rows = max(1, math.ceil(len(crops) / columns))
    page = Image.new("RGB", (gap + min(columns, max(1, len(crops))) * cell_w, gap + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for index, (crop, caption, colour) in enumerate(zip(crops, captions, colours)):
        x = gap + (index % columns) * cell_w
        y = gap + (index // columns) * cell_h
        draw.rectangle((x, y, x + tile + 2 * frame - 1, y + tile + 2 * frame - 1), fill=colour)
        small = Image.fromarray(np.ascontiguousarray(crop, np.uint8), "RGB")
        if small.size != (tile, tile):
            small = small.resize((tile, tile), Image.Resampling.LANCZOS)
        page.paste(small, (x + frame, y + frame))
        for k, text in enumerate(caption.split("\n")):
            text = _fit(draw, text, font, tile + 2 * frame)
            draw.text((x, y + tile + 2 * frame + 1 + k * line), text, fill=(0, 0, 0), font=font)
    return np.asarray(page)


#: The contact sheet's HTML page in a crop job's OUT_DIR (:func:`write_contact_sheet`).
SHEET_HTML = "sheet.html"
#: Crops a contact-sheet page holds by default.
SHEET_PER_PAGE = 48


def sheet_page_name(number: int) -> str:
    """File name of contact-sheet page ``number`` (from 1): ``sheet-001.png``, ... (never the
    name of a crop, ``<stem>_<k>.<ext>``)."""
    return f"sheet-{number:03d}.png"


@dataclass(frozen=True)
class CropRecord:
    """What the contact sheet shows of one manifest row."""

    output: str
    source: str
    face: int
    score: float
    p_fail: float


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_crop_records(out_dir: str | os.PathLike[str]) -> list[CropRecord]:
    """The crops listed in a crop job's manifest (``manifest.jsonl`` or ``manifest.csv``).

    Rows that cannot be read are skipped. Raises ``FileNotFoundError`` when
    ``out_dir`` holds no manifest.
    """
    out = Path(out_dir)
    records: list[CropRecord] = []
    jsonl, csv_path = out / "manifest.jsonl", out / "manifest.csv"
    if jsonl.is_file():
        rows: list[dict[str, Any]] = []
        for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    elif csv_path.is_file():
        with open(csv_path, encoding="utf-8", errors="replace", newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise FileNotFoundError(f"no manifest.jsonl or manifest.csv in {str(out)!r}: run facealign crop first")
    for row in rows:
        try:
            records.append(
                CropRecord(
                    str(row["output"]), str(row["source"]), int(row["face"]), _number(row.get("score")),
                    _number(row.get("p_fail")),
                )
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            continue
    return records


def by_doubt(records: Sequence[CropRecord]) -> list[CropRecord]:
    """``records`` sorted by ``p_fail``, highest first (unknown last), then by source and face."""
    return sorted(
        records,
        key=lambda r: (not math.isfinite(r.p_fail), -r.p_fail if math.isfinite(r.p_fail) else 0.0, r.source, r.face),
    )


def write_contact_sheet(
    out_dir: str | os.PathLike[str],
    per_page: int = SHEET_PER_PAGE,
    columns: int = 8,
    tile: int = 112,
    html: bool = True,
) -> tuple[list[Path], int]:
    """Contact-sheet pages of a crop job's crops, the most doubtful first (:func:`by_doubt`).

    Writes ``sheet-001.png``, ... into ``out_dir`` (earlier pages beyond the new
    last one are deleted) and, with ``html``, ``sheet.html`` showing them with
    the crops of each page listed and linked. Each crop is framed in its
    :func:`quality_colour` and captioned with its ``p_fail``, detector score and
    file name.

    Returns
    -------
    (list of Path, int)
        The files written (the HTML page last), and the manifest's crops whose
        file is missing (left out).
    """
    from .imageio import read_image, write_bytes_atomic, write_image_atomic

    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    out = Path(out_dir)
    records = by_doubt(read_crop_records(out))
    present = [r for r in records if (out / r.output).is_file()]
    missing = len(records) - len(present)
    pages = [present[s : s + per_page] for s in range(0, len(present), per_page)]
    written: list[Path] = []
    for number, page in enumerate(pages, 1):
        crops = [read_image(out / r.output) for r in page]
        captions = [f"p_fail {r.p_fail:.2f}  score {r.score:.2f}\n{Path(r.output).name}" for r in page]
        picture = contact_sheet(crops, captions, [quality_colour(r.p_fail) for r in page], columns, tile)
        written.append(write_image_atomic(out / sheet_page_name(number), picture))
    for old in out.glob("sheet-[0-9][0-9][0-9]*.png"):  # pages of an earlier, longer sheet
        digits = old.name[len("sheet-") : -len(".png")]
        if digits.isdigit() and old.name == sheet_page_name(int(digits)) and int(digits) > len(pages):
            old.unlink()
    if html:
        written.append(write_bytes_atomic(out / SHEET_HTML, _sheet_html(pages, len(records), missing).encode()))
    return written, missing


def _sheet_html(pages: list[list[CropRecord]], total: int, missing: int) -> str:
    poor = sum(1 for page in pages for r in page if r.p_fail > P_FAIL_POOR)
    parts = [
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>facealign contact sheet</title>",
        "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%}li{font-size:90%}"
        ".poor{color:#b00}</style></head><body>",
        f"<h1>Crops by p_fail, highest first</h1><p>{total} crops; {poor} with p_fail above {P_FAIL_POOR} "
        f"(red frames; <code>facealign crop --max-p-fail {P_FAIL_POOR}</code> leaves them out); "
        f"orange: above {P_FAIL_DOUBTFUL}; grey: unknown.",
    ]
    if missing:
        parts.append(f" {missing} crops listed in the manifest have no file and are not shown.")
    parts.append("</p>")
    start = 1
    for number, page in enumerate(pages, 1):
        name = sheet_page_name(number)
        parts.append(f"<h2>Page {number}</h2><img src='{name}' alt='{name}'><ol start='{start}'>")
        for r in page:
            style = " class='poor'" if r.p_fail > P_FAIL_POOR else ""
            link = escape(quote(r.output), quote=True)
            parts.append(
                f"<li{style}><a href='{link}'>{escape(r.output)}</a> p_fail {r.p_fail:.3f}, score {r.score:.3f}, "
                f"face {r.face} of {escape(r.source)}</li>"
            )
        parts.append("</ol>")
        start += len(page)
    parts.append("</body></html>\n")
    return "\n".join(parts)
