"""What the per-face quality figures cost (issue 15). Prints figures; asserts nothing.

Times the default TCNN engine's ``predict_many`` on ``--faces`` faces cut from
celeba_wild photos, with and without ``return_quality=True`` (what ``facealign
crop`` and ``FaceAligner.process`` run), round-robin within each repeat. CPU
time of this process (``time.process_time``) with ``--threads`` torch threads
(default 1), which other jobs on a shared machine disturb less than wall time.

Usage::

    python bench/quality_speed.py --repeats 9
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CELEBA_IMAGES, decode_and_detect, median, repeat_to_faces, sample_paths, set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="celeba_wild photos sampled")
    parser.add_argument("--faces", type=int, default=2048, help="faces per predict_many call")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from facealign.detection import get_detector
    from facealign.engine import LandmarkEngine

    set_threads(args.threads)
    images, boxes = decode_and_detect(sample_paths(CELEBA_IMAGES, args.images), get_detector("dlib"))
    many_images, many_boxes = repeat_to_faces(images, boxes, args.faces)
    faces = sum(len(b) for b in many_boxes)
    engine = LandmarkEngine("tcnn", threads=args.threads)
    runs = {
        "points only": lambda: engine.predict_many(many_images, many_boxes),
        "points and quality": lambda: engine.predict_many(many_images, many_boxes, return_quality=True),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    for run in runs.values():  # warm up
        run()
    for _ in range(args.repeats):
        for label, run in runs.items():
            start = time.process_time()
            run()
            times[label].append(time.process_time() - start)
    base = median(times["points only"])
    for label, values in times.items():
        print(
            f"{label:20s} {faces / median(values):7.0f} faces/s (CPU time, median of {args.repeats}; "
            f"{100 * (median(values) / base - 1):+.1f}% time)"
        )


if __name__ == "__main__":
    main()
