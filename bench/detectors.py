"""Every detector back-end, measured in one run (README "Face detection").

    python bench/detectors.py --out runs/detectors.json            # ~30 min on 2 cores
    python bench/detectors.py --detectors retinaface,dlib --e2e-images 0   # no end-to-end part

Three parts, each against a reference measured in the same run:

1. **celeba_wild** (all 4,174 photos, or ``--images N``): photos with a face,
   photos with several (every photo shows its labelled person, so extra faces
   are bystanders or false detections), and the median milliseconds of
   ``detect`` per photo in one single-threaded process, as a ratio to dlib's
   HOG detector called as a user would (``detector(gray, 1)``: one pyramid
   upsampling). Each photo is decoded once and handed to every detector in
   turn, so a busy machine slows all of them alike.
2. **MTFL AFLW test set** (2,995 faces) and the **validation split**: detection
   rate, and the TCNN engine's mean error and failure rate (> 10% of the
   inter-ocular distance, misses counted) on each detector's faces
   (``facealign evaluate --detector NAME``).
3. **End to end**: ``facealign crop --detector NAME`` with 1 and 2 processes
   against the plain dlib pipeline (``bench/dlib_pipeline.py``), as whole
   processes, start-up included (``bench/crop_speed.py``), on ``--e2e-images``
   photos.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CELEBA_IMAGES, DEFAULT_CACHE, MTFL_ROOT, machine_info, sample_paths  # noqa: E402
from facealign.imageio import write_json  # noqa: E402
from facealign.progress import show_logs  # noqa: E402

REFERENCE = "dlib HOG, upsample 1"


def _celeba(names: list[str], paths: list[Path], log) -> dict:
    import cv2
    import dlib

    from facealign.detection import get_detector
    from facealign.imageio import read_image

    cv2.setNumThreads(1)
    hog = dlib.get_frontal_face_detector()
    detectors = {name: get_detector(name) for name in names}
    for det in detectors.values():
        if hasattr(det, "set_threads"):
            det.set_threads(1)
    counts = {name: [] for name in [REFERENCE, *names]}
    times = {name: [] for name in counts}
    for i, p in enumerate(paths):
        image = read_image(p)
        t = time.perf_counter()
        found = hog(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 1)
        times[REFERENCE].append(time.perf_counter() - t)
        counts[REFERENCE].append(len(found))
        for name, det in detectors.items():
            t = time.perf_counter()
            n = len(det.detect(image))
            times[name].append(time.perf_counter() - t)
            counts[name].append(n)
        if (i + 1) % 500 == 0:
            log(f"  celeba_wild: {i + 1} of {len(paths)} photos")
    ref_ms = 1000 * float(np.median(times[REFERENCE]))
    out = {}
    for name in counts:
        c = np.array(counts[name])
        ms = 1000 * float(np.median(times[name]))
        out[name] = {
            "photos": len(c),
            "with_face": float((c > 0).mean()),
            "several_faces": float((c > 1).mean()),
            "median_ms": ms,
            "time_vs_reference": ms / ref_ms,
        }
    names_by_photo = [p.name for p in paths]
    if "000093.jpg" in names_by_photo:
        k = names_by_photo.index("000093.jpg")
        for name in counts:
            out[name]["finds_000093"] = bool(counts[name][k] > 0)
    return out


def _aflw(names: list[str], cache: Path, log) -> dict:
    from facealign.engine import LandmarkEngine
    from facealign.research.evaluation import evaluate_engines

    engine = LandmarkEngine("tcnn")
    out = {}
    for name in names:
        out[name] = {}
        for split in ("validation", "test"):
            res = evaluate_engines({"tcnn": engine}, MTFL_ROOT, cache, name, split)["tcnn"]
            res.pop("errors")
            out[name][split] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detectors", default="retinaface,libfacedetection,dlib,dlib-fast,haar")
    ap.add_argument("--images", type=int, default=0, help="celeba_wild photos (0: all 4,174)")
    ap.add_argument("--e2e-images", type=int, default=1000, help="photos for the end-to-end part (0: skip it)")
    ap.add_argument("--e2e-repeats", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    show_logs()  # the evaluation's detection counts

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    names = args.detectors.split(",")
    paths = sample_paths(CELEBA_IMAGES, args.images or None)
    result = {"machine": machine_info(), "reference": REFERENCE}
    log(f"celeba_wild: {len(paths)} photos, {len(names)} detectors and the reference")
    result["celeba_wild"] = _celeba(names, paths, log)
    log("MTFL: validation split and AFLW test set")
    result["mtfl"] = _aflw(names, args.cache_dir, log)
    if args.e2e_images:
        from bench.crop_speed import measure_against_dlib

        e2e_paths = sample_paths(CELEBA_IMAGES, args.e2e_images)
        result["end_to_end"] = {}
        for name in names:
            log(f"end to end: facealign crop --detector {name} against plain dlib, {len(e2e_paths)} photos")
            result["end_to_end"][name] = measure_against_dlib(
                e2e_paths, f"--detector {name}", args.e2e_repeats, log=log
            )

    print(
        f"\nceleba_wild ({len(paths)} photos; time: median ms of detect() per photo, one thread, "
        f"and its ratio to {REFERENCE} in the same run)\n"
    )
    print(
        "| detector | photos with a face | with several faces | finds 000093.jpg | ms per photo "
        "| time vs dlib HOG up-1 |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in result["celeba_wild"].items():
        print(
            f"| {name} | {100 * r['with_face']:.1f}% | {100 * r['several_faces']:.1f}% | "
            f"{'yes' if r.get('finds_000093') else 'no'} | {r['median_ms']:.1f} | {r['time_vs_reference']:.2f} |"
        )
    print("\nMTFL, TCNN on each detector's faces (misses count as failures)\n")
    print("| detector | validation: detected | NME | failures | AFLW: detected | NME | failures |")
    print("|---|---|---|---|---|---|---|")
    for name, r in result["mtfl"].items():
        v, t = r["validation"], r["test"]
        print(
            f"| {name} | {v['detected']}/{v['n']} | {v['nme']:.2f}% | {100 * v['failure_rate']:.1f}% | "
            f"{t['detected']}/{t['n']} | {t['nme']:.2f}% | {100 * t['failure_rate']:.1f}% |"
        )
    if "end_to_end" in result:
        print(f"\nEnd to end, {args.e2e_images} celeba_wild photos, whole processes (images/s; ratio to plain dlib)\n")
        print("| detector | crop --jobs 1 | dlib, 1 process | ratio | crop --jobs 2 | dlib, 2 processes | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name, r in result["end_to_end"].items():
            i = r["images_per_s"]
            print(
                f"| {name} | {i['facealign-1']:.1f} | {i['dlib-1']:.1f} | {r['ratio_1_process']:.2f}x | "
                f"{i['facealign-2']:.1f} | {i['dlib-2']:.1f} | {r['ratio_2_processes']:.2f}x |"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
