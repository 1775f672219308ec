"""``FaceAligner.crop_many`` against a loop of ``crop_faces`` (issue 25). Prints figures; asserts nothing.

Decodes ``--images`` celeba_wild photos (spread over the listing) into arrays
first, then times, alternating in each of ``--repeats`` rounds, ``crop_faces``
called once per array and ``crop_many`` over the same arrays
(``--batch-size``), in one process with onnxruntime's default threads. Reports
the median wall time of each, their ratio, and how the crops of the two
compare (faces per image, largest landmark difference, mean grey-level
difference of the crops); then runs the crop job (``run_crop_job``, PNG crops,
one process) on the same files and compares its crops with ``crop_many``'s.

Usage::

    python bench/crop_many.py --images 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import CELEBA_IMAGES, median, sample_paths  # noqa: E402
from facealign.imageio import read_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="celeba_wild photos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from facealign import FaceAligner

    paths = sample_paths(CELEBA_IMAGES, args.images)
    arrays = [read_image(p) for p in paths]
    aligner = FaceAligner()
    aligner.crop_faces(arrays[0])  # open the sessions
    runs = {
        "crop_faces loop": lambda: [aligner.crop_faces(a) for a in arrays],
        "crop_many": lambda: list(aligner.crop_many(arrays, batch_size=args.batch_size)),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    results = {}
    for _ in range(args.repeats):
        for label, run in runs.items():
            start = time.perf_counter()
            results[label] = run()
            times[label].append(time.perf_counter() - start)
    loop, many = results["crop_faces loop"], results["crop_many"]
    same_count = sum(len(a) == len(b) for a, b in zip(loop, many))
    pairs = [(a, b) for x, y in zip(loop, many) for a, b in zip(x, y)]
    points = max((np.abs(a.face.landmarks - b.face.landmarks).max() for a, b in pairs), default=0.0)
    grey = [np.abs(a.crop.astype(int) - b.crop.astype(int)).mean() for a, b in pairs]
    identical = sum(np.array_equal(a.crop, b.crop) for a, b in pairs)
    base = median(times["crop_faces loop"])
    print(f"{len(arrays)} arrays, {len(pairs)} faces, batch_size {args.batch_size}, median of {args.repeats}:")
    for label, values in times.items():
        print(
            f"  {label:16s} {median(values):6.1f} s  {len(arrays) / median(values):6.1f} images/s  "
            f"({base / median(values):.2f}x the loop)"
        )
    print(
        f"  same face count on {same_count}/{len(arrays)} images; landmarks differ by at most {points:.4f} px; "
        f"{identical}/{len(pairs)} crops identical, mean grey difference at most {max(grey, default=0):.3f}"
    )
    _compare_with_crop_job(paths, many)


def _compare_with_crop_job(paths, many) -> None:
    """Crop the same files with ``run_crop_job`` (PNG) and count the crops equal to ``crop_many``'s."""
    import json
    import os
    import tempfile

    from facealign.batch import run_crop_job

    with tempfile.TemporaryDirectory() as tmp:
        in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
        in_dir.mkdir()
        for path in paths:
            os.symlink(path.resolve(), in_dir / path.name)
        run_crop_job(in_dir, out_dir, jobs=1, fmt="png")
        rows = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
        by_source = {}
        for row in rows:
            by_source.setdefault(row["source"], {})[row["face"]] = row["output"]
        same = total = 0
        for path, faces in zip(paths, many):
            written = by_source.get(path.name, {})
            total += max(len(faces), len(written))
            for k, aligned in enumerate(faces):
                if k in written:
                    same += np.array_equal(read_image(out_dir / written[k]), aligned.crop)
    print(f"  facealign crop (run_crop_job, PNG) on the same files: {same}/{total} crops identical to crop_many's")


if __name__ == "__main__":
    main()
