"""The crop job's write path: time and system calls per crop, now and as in facealign 0.5.0.

Both write the same crops (112 x 112 JPEGs of celeba_wild faces, encoded once
beforehand) into one OUT_DIR-like folder, in chunks of ``--chunk`` crops, and make
them durable before each chunk's manifest rows are appended (and flushed):

* ``0.5.0``: per crop, ``mkdir -p`` of its folder, a ``mkstemp`` temporary, write,
  ``fsync``, ``chmod``, ``rename``; per chunk, the rows appended and flushed. No
  folder is flushed (a power cut may lose the names).
* ``now`` (:mod:`facealign.batch.outdir`): per crop, a temporary written in its
  folder reached without following links; per chunk, one ``syncfs``, the journal
  appended and flushed, the renames, one ``syncfs`` (the folders), the rows
  appended and flushed.

Reports the median over ``--repeats`` alternating runs of each (milliseconds per
crop, and the ratio), and, with ``strace`` installed, the system calls per crop of
one run of each. The machine's other load changes the times (``fsync`` waits for
the disk), not the ratio's direction.

Usage: ``python bench/write_path.py [--crops 512] [--chunk 32] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CELEBA_IMAGES, REPO_ROOT

from facealign.batch.outdir import Journal, close_folders, commit_files, open_append, stage_file, sync
from facealign.imageio import encode_image, write_bytes_atomic


def _crops(n: int) -> list[bytes]:
    """``n`` JPEG crops of real photos (centre squares resized to 112 x 112)."""
    import numpy as np
    from PIL import Image

    names = sorted(os.listdir(CELEBA_IMAGES))[:n]
    out = []
    for name in names:
        with Image.open(CELEBA_IMAGES / name) as image:
            side = min(image.size)
            square = image.convert("RGB").crop((0, 0, side, side)).resize((112, 112))
        out.append(encode_image("x.jpg", np.asarray(square)))
    return out


def _row(output: str) -> str:
    return json.dumps({"source": output, "output": output, "box": [1.0, 2.0, 3.0, 4.0]}) + "\n"


def write_050(root: Path, crops: list[bytes], chunk: int) -> None:
    """The write path of facealign 0.5.0."""
    with open(root / "manifest.jsonl", "ab", buffering=0) as manifest:
        for start in range(0, len(crops), chunk):
            rows = []
            for k, data in enumerate(crops[start : start + chunk], start):
                path = root / f"f{k % 4}" / f"c{k}_0.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, data)  # mkstemp, write, fsync, chmod, rename
                rows.append(_row(path.relative_to(root).as_posix()))
            manifest.write("".join(rows).encode())
            os.fsync(manifest.fileno())


def write_now(root: Path, crops: list[bytes], chunk: int) -> None:
    """The write path of :mod:`facealign.batch.outdir`."""
    journal = Journal(root)
    with open_append(root / "manifest.jsonl") as manifest:
        for start in range(0, len(crops), chunk):
            folders: dict[str, int] = {}
            staged = []
            try:
                for k, data in enumerate(crops[start : start + chunk], start):
                    staged.append([stage_file(root, f"f{k % 4}/c{k}_0.jpg", data, folders)])
            finally:
                close_folders(folders)
            sync(root)  # the worker's one flush
            commit_files(root, journal, staged)
            manifest.write("".join(_row(s[0].output) for s in staged).encode())
            os.fsync(manifest.fileno())
    journal.close()


def _time(fn, crops: list[bytes], chunk: int, parent: Path) -> float:
    root = Path(tempfile.mkdtemp(dir=parent))
    try:
        start = time.perf_counter()
        fn(root, crops, chunk)
        return (time.perf_counter() - start) / len(crops) * 1000
    finally:
        shutil.rmtree(root)


def _syscalls(which: str, n: int, chunk: int) -> float | None:
    """System calls per crop of one run of ``which`` under ``strace -c`` (None without strace)."""
    if shutil.which("strace") is None:
        return None
    code = (
        "import sys, tempfile, pathlib; sys.path.insert(0, 'bench'); import write_path as w; "
        f"crops = w._crops({n}); root = pathlib.Path(tempfile.mkdtemp()); "
        "import os; os.write(2, b'START\\n'); "
        f"w.write_{which}(root, crops, {chunk}); os.write(2, b'END\\n')"
    )
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        subprocess.run(["strace", "-f", "-o", log.name, sys.executable, "-c", code], cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        lines = Path(log.name).read_text().splitlines()
    inside = False
    count = 0
    for line in lines:
        if "START" in line and "write(2" in line:
            inside = True
            continue
        if "END" in line and "write(2" in line:
            break
        if inside and "(" in line and not line.split(maxsplit=1)[-1].startswith(("+++", "---", "<...")):
            count += 1
    return count / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    crops = _crops(args.crops)
    parent = Path(tempfile.mkdtemp(prefix="write-path-"))
    times: dict[str, list[float]] = {"0.5.0": [], "now": []}
    try:
        for _ in range(args.repeats):
            times["0.5.0"].append(_time(write_050, crops, args.chunk, parent))
            times["now"].append(_time(write_now, crops, args.chunk, parent))
    finally:
        shutil.rmtree(parent)
    old, new = statistics.median(times["0.5.0"]), statistics.median(times["now"])
    print(f"{args.crops} crops of {sum(map(len, crops)) / len(crops) / 1024:.1f} KiB, chunks of {args.chunk}, "
          f"median of {args.repeats} alternating runs")  # fmt: skip
    print("| write path | ms per crop | system calls per crop |")
    print("|---|---|---|")
    for name, value, which in (("0.5.0", old, "050"), ("now", new, "now")):
        calls = _syscalls(which, min(args.crops, 128), args.chunk)
        print(f"| {name} | {value:.3f} | {'n/a' if calls is None else f'{calls:.1f}'} |")
    print(f"now / 0.5.0 time: {new / old:.3f}")


if __name__ == "__main__":
    main()
