"""Landmark error when the face box is misplaced, with and without re-boxing. Prints figures.

    python bench/box_robustness.py [--cache-dir DIR]

On the MTFL validation split (faces the dlib detector found), each engine runs on
the dlib box and on three deliberately misplaced versions of it (shifted by 10%
of its width right and down, shrunk to 80%, grown to 130% about its centre), once
with one pass (``refine=False``) and once with re-boxing (the default). Prints a
Markdown table of the mean error (% inter-ocular distance).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MTFL_ROOT  # noqa: E402
from facealign.constants import ENGINES, TRAINING_DETECTOR  # noqa: E402
from facealign.engine import LandmarkEngine  # noqa: E402
from facealign.research.data import cached_boxes, default_cache_dir, load_mtfl, train_validation_split  # noqa: E402
from facealign.research.evaluation import normalized_errors  # noqa: E402


def misplaced_boxes(boxes: np.ndarray) -> dict[str, np.ndarray]:
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    return {
        "dlib box": boxes,
        "shifted 10% right and down": boxes + 0.1 * w,
        "shrunk to 80%": np.concatenate([c - 0.4 * w, c + 0.4 * w], axis=1),
        "grown to 130%": np.concatenate([c - 0.65 * w, c + 0.65 * w], axis=1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="detector-box cache [default: facealign's, facealign.research.data.default_cache_dir]",
    )
    args = ap.parse_args()
    data = load_mtfl(MTFL_ROOT, "train")
    images = data.load_images()
    boxes = cached_boxes(data, images, args.cache_dir, TRAINING_DETECTOR)
    rows = train_validation_split(len(data))[1]
    found = rows[np.isfinite(boxes[rows, 0])]
    truth = data.points[found]
    print(f"{len(found)} validation faces\n")
    print("| engine | box | one pass | re-boxing |\n|---|---|---|---|")
    for name in ENGINES:
        engines = [LandmarkEngine(name, refine=refine) for refine in (False, True)]
        for label, b in misplaced_boxes(boxes[found, :4]).items():
            errs = [100 * normalized_errors(e.predict_faces(images, found, b), truth).mean() for e in engines]
            print(f"| {name} | {label} | {errs[0]:.2f}% | {errs[1]:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
