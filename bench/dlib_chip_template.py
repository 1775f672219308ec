"""Measure dlib's face-chip layout as a five-point template (recognition.dlib_resnet, issue 14).

On the MTFL training faces that the dlib detector finds (boxes cached with
:func:`facealign.research.data.cached_boxes`), dlib's 5-point predictor runs on the box,
the image-to-chip map of ``dlib.get_face_chip(size=150, padding=0.25)`` is
measured (:func:`recognition.dlib_resnet.face_chip_matrix`), and the mean chip
position of the ground-truth MTFL points and of dlib's own points is the
template (:func:`recognition.dlib_resnet.fit_chip_template`). Prints the
constants to paste into ``recognition/dlib_resnet.py`` and writes them as JSON.

Usage::

    python bench/dlib_chip_template.py --out runs/dlib_chip_template.json   # ~11 min on a loaded 2-core machine
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import add_dlib_training_face_options, dlib_training_faces  # noqa: E402
from facealign.imageio import write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dlib_training_face_options(ap)
    args = ap.parse_args()

    from recognition.dlib_resnet import DLIB_CHIP_PADDING, DLIB_CHIP_SIZE, fit_chip_template

    data, images, boxes, found = dlib_training_faces(args)

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            print(f"chips: {done}/{total}", file=sys.stderr, flush=True)

    fit = fit_chip_template(images[found], boxes[found, :4], data.points[found], progress=progress)
    result = {
        "size": [DLIB_CHIP_SIZE, DLIB_CHIP_SIZE],
        "padding": DLIB_CHIP_PADDING,
        "points": np.round(fit.points, 4).tolist(),
        "dlib5_points": np.round(fit.dlib5_points, 4).tolist(),
        "rms_px": np.round(fit.rms, 3).tolist(),
        "dlib5_rms_px": np.round(fit.dlib5_rms, 3).tolist(),
        "faces": fit.faces,
        "data": f"MTFL train ({args.mtfl}), ground-truth points, dlib detector boxes",
    }
    print(json.dumps(result, indent=2))
    for name, values in (("DLIB_CHIP_POINTS", fit.points), ("DLIB_CHIP_DLIB5_POINTS", fit.dlib5_points)):
        rows = ", ".join(f"[{x:.4f}, {y:.4f}]" for x, y in values)
        print(f"{name} = np.array([{rows}])")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out)


if __name__ == "__main__":
    main()
