"""Measure where a detector's own five points lie in dlib's face chips (recognition ``retinaface`` aligner, issue 26).

The fit of ``bench/dlib_chip_template.py``, for a detector that gives five
points (RetinaFace): on the MTFL training faces that the dlib detector finds,
the detector runs on the whole image and the face whose box (in the training
box convention, :func:`facealign.reboxing.training_boxes`) overlaps the dlib
box most (IoU >= 0.5) is taken; dlib's 5-point predictor and
``dlib.get_face_chip(size=150, padding=0.25)`` give the image-to-chip map of
that face (:func:`recognition.dlib_resnet.face_chip_matrix`), and the
least-squares fixed layout of the detector's points in those chips is their
mean position (:func:`recognition.dlib_resnet.fit_chip_template`). Faces the
detector misses are left out (counted).

As a check the script also gives the layout in the frame where the face's
ground-truth MTFL points are aligned onto the chip template by a similarity
(the frame the landmark aligners target): the two agree to about a pixel when
the chip and the template agree.

Prints the constant to paste into ``recognition/dlib_resnet.py`` (``DETECTOR_CHIP_POINTS``) and writes
the fit as JSON (``docs/recognition/retinaface_chip_template.json``).

Usage::

    python bench/detector_chip_template.py --detector retinaface --limit 3000 \\
        --out docs/recognition/retinaface_chip_template.json
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

#: IoU a detector face needs with the dlib box to be taken as the same face.
MATCH_IOU = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", default="retinaface", help="a detector that gives five points")
    add_dlib_training_face_options(ap)
    args = ap.parse_args()

    from facealign.alignment import estimate_similarity, transform_points
    from facealign.detection import box_iou, get_detector
    from facealign.reboxing import training_boxes
    from recognition.dlib_resnet import DLIB_CHIP_PADDING, DLIB_CHIP_POINTS, DLIB_CHIP_SIZE, fit_chip_template

    data, images, boxes, found = dlib_training_faces(args)

    detector = get_detector(args.detector)
    kept, points = [], []
    for n, i in enumerate(found):
        result = detector.detect(images[i])
        if len(result) and result.landmarks is None:
            raise SystemExit(f"detector {args.detector!r} gives no landmarks")
        if len(result):
            framed = training_boxes(args.detector, result.boxes, result.landmarks)
            overlap = box_iou(boxes[i, :4], framed)
            best = int(np.argmax(overlap))
            if overlap[best] >= MATCH_IOU:
                kept.append(i)
                points.append(result.landmarks[best].astype(np.float64))
        if (n + 1) % 500 == 0:
            print(f"{args.detector}: {n + 1}/{len(found)}", file=sys.stderr, flush=True)
    kept_array = np.asarray(kept)
    detector_points = np.stack(points)
    print(f"{len(kept)} of {len(found)} faces matched by {args.detector}", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            print(f"chips: {done}/{total}", file=sys.stderr, flush=True)

    fit = fit_chip_template(
        [images[i] for i in kept_array],
        boxes[kept_array, :4],
        data.points[kept_array],
        progress=progress,
        other_points=detector_points,
    )
    assert fit.other_points is not None and fit.other_rms is not None
    # Check: the layout in the frame where the ground truth is aligned onto the chip template.
    in_gt_frame = np.stack(
        [
            transform_points(estimate_similarity(gt, DLIB_CHIP_POINTS), p)
            for gt, p in zip(data.points[kept_array], detector_points)
        ]
    )
    gt_layout = in_gt_frame.mean(0)
    result_json = {
        "detector": args.detector,
        "size": [DLIB_CHIP_SIZE, DLIB_CHIP_SIZE],
        "padding": DLIB_CHIP_PADDING,
        "points": np.round(fit.other_points, 4).tolist(),
        "rms_px": np.round(fit.other_rms, 3).tolist(),
        "mtfl_points": np.round(fit.points, 4).tolist(),
        "mtfl_rms_px": np.round(fit.rms, 3).tolist(),
        "points_in_ground_truth_frame": np.round(gt_layout, 4).tolist(),
        "ground_truth_frame_shift_px": np.round(np.hypot(*(gt_layout - fit.other_points).T), 3).tolist(),
        "faces": fit.faces,
        "faces_found_by_dlib": int(len(found)),
        "faces_in_sample": int(len(data)),
        "match_iou": MATCH_IOU,
        "data": f"MTFL train ({args.mtfl}), first {len(data)} faces; dlib detector boxes; "
        f"{args.detector} run on the whole image",
    }
    print(json.dumps(result_json, indent=2))
    rows = ", ".join(f"[{x:.4f}, {y:.4f}]" for x, y in fit.other_points)
    print(f"{args.detector!r}: np.array([{rows}])")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(result_json, args.out)


if __name__ == "__main__":
    main()
