"""Ablation of the TCNN ingredients on the same faces (README table).

    python bench/ablation.py --vanilla facealign/weights/vanilla.pt --noaug runs/tcnn/tcnn-noaug.pt \
        --paper-labels runs/final/tcnn-paperlabels.pt --detector-boxes runs/final/tcnn.pt \
        --tcnn facealign/weights/tcnn.pt --out runs/ablation

The first three TCNN files are tweaked on detector boxes (``facealign tweak --boxes
detector`` with ``--target 0``, ``--labels paper`` and the defaults); ``--tcnn`` is the
shipped one, tweaked on re-boxed crops. Weights without a box model borrow the
vanilla file's for the re-boxing rows.

Each row adds one ingredient. Columns: mean error (% inter-ocular distance) on the
MTFL validation split (faces the detector found) and on the MTFL AFLW test set
(detector misses are listed, and count as failures in the failure rate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MTFL_ROOT  # noqa: E402
from facealign.constants import TRAINING_DETECTOR  # noqa: E402
from facealign.engine import LandmarkEngine  # noqa: E402
from facealign.imageio import write_json  # noqa: E402
from facealign.research.data import cached_boxes, default_cache_dir, load_mtfl, train_validation_split  # noqa: E402
from facealign.research.evaluation import normalized_errors, summarize  # noqa: E402


def faces(split: str, cache: Path):
    data = load_mtfl(MTFL_ROOT, split)
    images = data.load_images()
    boxes = cached_boxes(data, images, cache, TRAINING_DETECTOR)
    rows = np.arange(len(data)) if split == "test" else train_validation_split(len(data))[1]
    found = rows[np.isfinite(boxes[rows, 0])]
    return images, found, boxes[found, :4], data.points[found], len(rows) - len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vanilla", type=Path, required=True)
    ap.add_argument("--noaug", type=Path, required=True, help="TCNN tweaked without augmentation (--target 0)")
    ap.add_argument("--paper-labels", type=Path, required=True, help="TCNN with augmentation, paper labels")
    ap.add_argument("--detector-boxes", type=Path, required=True, help="TCNN, warped labels, tweaked on detector boxes")
    ap.add_argument("--tcnn", type=Path, required=True, help="TCNN tweaked on re-boxed crops (shipped)")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="detector-box cache")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = ap.parse_args()

    box_model = LandmarkEngine("vanilla", weights=args.vanilla).box_model

    def engine(kind, path, mirror, refine=False, calibrated=True):
        e = LandmarkEngine(kind, weights=path, mirror=mirror, refine=False)
        if not calibrated:
            e.mirror_shift = 0.0
        if refine:
            e.box_model = e.box_model or box_model
            e.refine = True
        return e

    rows = [
        ("vanilla CNN (paper section 2.1)", engine("vanilla", args.vanilla, False)),
        ("+ tweaking, no augmentation", engine("tcnn", args.noaug, False)),
        ("+ augmentation, paper labels (B's landmarks)", engine("tcnn", args.paper_labels, False)),
        ("+ augmentation, exact labels (A's landmarks warped)", engine("tcnn", args.detector_boxes, False)),
        ("+ mirroring, as in the paper", engine("tcnn", args.detector_boxes, True, calibrated=False)),
        ("+ mirroring with calibrated shift", engine("tcnn", args.detector_boxes, True)),
        ("+ re-boxing at run time", engine("tcnn", args.detector_boxes, True, refine=True)),
        ("+ heads tweaked on re-boxed crops (shipped TCNN)", engine("tcnn", args.tcnn, True, refine=True)),
        ("vanilla + re-boxing (shipped vanilla)", engine("vanilla", args.vanilla, False, refine=True)),
        ("vanilla + calibrated mirroring, no re-boxing", engine("vanilla", args.vanilla, True)),
    ]
    sets = {split: faces(split, args.cache_dir) for split in ("train", "test")}
    table = []
    for label, eng in rows:
        row = {"configuration": label}
        for split, (images, found, boxes, truth, misses) in sets.items():
            pred = eng.predict_faces(images, found, boxes)
            res = summarize(normalized_errors(pred, truth), misses)
            name = "validation" if split == "train" else "aflw"
            row[f"{name}_nme"] = res["nme"]
            row[f"{name}_failure_rate"] = res["failure_rate"]
            row[f"{name}_misses"] = res["misses"]
        table.append(row)
        print(f"{label}: val {row['validation_nme']:.2f}%  AFLW {row['aflw_nme']:.2f}%", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(table, args.out / "ablation.json")
    lines = [
        "| configuration | validation NME | AFLW NME | AFLW failure rate |",
        "|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['configuration']} | {r['validation_nme']:.2f}% | {r['aflw_nme']:.2f}% "
            f"| {100 * r['aflw_failure_rate']:.1f}% |"
        )
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
