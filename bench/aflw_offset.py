"""Where the AFLW error comes from: signed point offsets, by face size. Prints figures; asserts nothing.

    python bench/aflw_offset.py [--engine tcnn] [--json runs/aflw_offset.json]

For the MTFL validation split and the AFLW test set (faces the dlib detector found),
it prints the mean signed error (prediction minus ground truth) per point, and by
detector-box width, in pixels of the 80 x 80 images and in box widths. A bias of
the network lives in box units (the network sees every face at 40 x 40), so it
would grow in pixels with the face; an offset of the annotations is the same in
pixels at every face size. It also prints where the ground-truth centroid sits in
the detector box on each set. This is a diagnostic: nothing here feeds back into
training or into the shipped weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MTFL_ROOT  # noqa: E402
from facealign.constants import DEFAULT_ENGINE, ENGINES, TRAINING_DETECTOR  # noqa: E402
from facealign.cropping import to_box_coordinates  # noqa: E402
from facealign.engine import LandmarkEngine  # noqa: E402
from facealign.imageio import write_json  # noqa: E402
from facealign.research.data import cached_boxes, default_cache_dir, load_mtfl, train_validation_split  # noqa: E402
from facealign.research.evaluation import normalized_errors  # noqa: E402

#: Detector-box width bins, pixels of the 80 x 80 images.
WIDTH_BINS = ((0, 35), (35, 45), (45, 55), (55, 65), (65, 1000))


def signed_offsets(engine: LandmarkEngine, split: str, cache: Path) -> dict:
    data = load_mtfl(MTFL_ROOT, split)
    images = data.load_images()
    boxes = cached_boxes(data, images, cache, TRAINING_DETECTOR)
    rows = np.arange(len(data)) if split == "test" else train_validation_split(len(data))[1]
    found = rows[np.isfinite(boxes[rows, 0])]
    box, truth = boxes[found, :4], data.points[found]
    pred = engine.predict_faces(images, found, box)
    diff = pred - truth
    width = box[:, 2] - box[:, 0]
    by_width = []
    for lo, hi in WIDTH_BINS:
        m = (width >= lo) & (width < hi)
        if m.sum() >= 20:
            px = diff[m].mean((0, 1))
            by_width.append(
                {
                    "box_width": [lo, hi],
                    "n": int(m.sum()),
                    "offset_px": px.tolist(),
                    "offset_box": (diff[m].mean(1) / width[m, None]).mean(0).tolist(),
                }
            )
    centroid = to_box_coordinates(truth, box).mean(1).mean(0)
    return {
        "n": len(found),
        "nme": float(100 * normalized_errors(pred, truth).mean()),
        "nme_offset_removed": float(100 * normalized_errors(pred - diff.mean((0, 1)), truth).mean()),
        "offset_px": diff.mean((0, 1)).tolist(),
        "offset_per_point_px": diff.mean(0).tolist(),
        "mean_box_width": float(width.mean()),
        "truth_centroid_in_box": centroid.tolist(),
        "by_box_width": by_width,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE)
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="detector-box cache [default: facealign's, facealign.research.data.default_cache_dir]",
    )
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()
    engine = LandmarkEngine(args.engine)
    out = {"engine": repr(engine)}
    for name, split in (("validation", "train"), ("aflw", "test")):
        r = out[name] = signed_offsets(engine, split, args.cache_dir)
        print(f"{name}: {r['n']} faces, box width {r['mean_box_width']:.1f} px, NME {r['nme']:.2f}%")
        print(f"  mean signed offset (x, y): {r['offset_px'][0]:+.2f} px, {r['offset_px'][1]:+.2f} px")
        print(
            "  ground-truth centroid in the box: "
            f"({r['truth_centroid_in_box'][0]:.4f}, {r['truth_centroid_in_box'][1]:.4f})"
        )
        for b in r["by_box_width"]:
            lo, hi = b["box_width"]
            print(
                f"  box {lo:>2}-{hi:<4} px  n={b['n']:>4}  offset {b['offset_px'][0]:+.2f}, {b['offset_px'][1]:+.2f} px"
                f"  = {b['offset_box'][0]:+.4f}, {b['offset_box'][1]:+.4f} box widths"
            )
        print(f"  (diagnostic only) NME with the mean offset removed: {r['nme_offset_removed']:.2f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, args.json)


if __name__ == "__main__":
    main()
