"""Detection rate and speed of each detector back-end on celeba_wild (README figures).

    python bench/detectors.py --images 0 --jobs 2 --out runs/detectors.json

Every celeba_wild photo shows its labelled person, so "detection rate" is the
fraction of photos with at least one face found; also reported: photos with more
than one face (extra faces may be real bystanders or false detections) and the
median milliseconds per photo in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CELEBA_IMAGES  # noqa: E402


def _run(name: str, paths: list[Path]) -> list[tuple[int, float]]:
    import cv2

    from facealign.detection import get_detector
    from facealign.imageio import read_image

    cv2.setNumThreads(1)
    det = get_detector(name)
    out = []
    for p in paths:
        image = read_image(p)
        t = time.perf_counter()
        n = len(det.detect(image))
        out.append((n, time.perf_counter() - t))
    return out


def main() -> None:
    from joblib import Parallel, delayed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=0, help="seeded sample size (0: all photos)")
    ap.add_argument("--detectors", default="dlib,haar")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = sorted(CELEBA_IMAGES.glob("*.jpg"))
    if args.images:
        paths = [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), args.images, replace=False))]
    chunks = [paths[i :: max(args.jobs, 1) * 4] for i in range(max(args.jobs, 1) * 4)]
    results = {}
    for name in args.detectors.split(","):
        parts = Parallel(n_jobs=args.jobs)(delayed(_run)(name, c) for c in chunks)
        flat = [r for part in parts for r in part]
        counts = np.array([n for n, _ in flat])
        ms = np.array([t for _, t in flat]) * 1000
        results[name] = {
            "photos": len(flat),
            "detection_rate": float((counts > 0).mean()),
            "several_faces": float((counts > 1).mean()),
            "median_ms": float(np.median(ms)),
        }
        r = results[name]
        print(
            f"{name}: {100 * r['detection_rate']:.1f}% of {r['photos']} photos with a face, "
            f"{100 * r['several_faces']:.1f}% with several, {r['median_ms']:.1f} ms/photo (median)",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
