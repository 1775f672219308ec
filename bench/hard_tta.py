"""Rotation test-time augmentation (issue 16): accuracy by pose and cost. Prints figures; asserts nothing.

    python bench/hard_tta.py --split validation --cache-dir runs/cache [--engine tcnn] [--weights W] [--angles -10,0,10]

The same detected faces (default detector) go through the engine and through
:class:`facealign.research.tta.RotationTTA` around it; the wall time of each is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facealign.constants import ENGINES  # noqa: E402
from facealign.engine import LandmarkEngine  # noqa: E402
from facealign.imageio import write_json  # noqa: E402
from facealign.research.data import default_mtfl_root  # noqa: E402
from facealign.research.evaluation import evaluate_engines  # noqa: E402
from facealign.research.tta import RotationTTA  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="validation", choices=("validation", "test"))
    ap.add_argument("--engine", default="tcnn", choices=ENGINES)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--angles", default="-10,0,10")
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    engine = LandmarkEngine(args.engine, weights=args.weights)
    angles = tuple(float(a) for a in args.angles.split(","))
    out = {}
    for label, model in (
        (args.engine, engine),
        (f"{args.engine} + rotations {args.angles}", RotationTTA(engine, angles)),
    ):
        t0 = time.perf_counter()
        res = evaluate_engines({label: model}, default_mtfl_root(), args.cache_dir, split=args.split, by=("pose",))[
            label
        ]
        res.pop("errors")
        res["seconds"] = time.perf_counter() - t0
        out[label] = res
        p = res["by_pose"]
        print(
            f"{label}: NME {res['nme']:.2f}%, failures {100 * res['failure_rate']:.1f}%, profile "
            f"{p['profile (1, 5)']['nme']:.2f}%, half {p['half (2, 4)']['nme']:.2f}%, "
            f"frontal {p['frontal (3)']['nme']:.2f}% "
            f"({res['seconds']:.1f} s with detection cache and data loading)"
        )
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
