"""facealign against dlib's own landmarks, one command, one process, the same images (issue 6).

Pipelines (detector + landmark step):

* ``ours-tcnn``      dlib HOG + our TCNN (mirror on)          -- facealign's default
* ``ours-vanilla``   dlib HOG + our vanilla CNN
* ``dlib``           dlib HOG + dlib's 68-point ERT reduced to 5 points  (the reference)
* ``haar+tcnn``      OpenCV Haar + our TCNN                   -- the "other detector" crosses,
* ``haar+dlib-ert``  OpenCV Haar + dlib's 68-point ERT           isolating the landmark step

facealign's default detector *is* dlib HOG, so "dlib HOG + our engine" is the
``ours-*`` rows; it is not run twice.

Accuracy, MTFL AFLW test set (2,995 faces; ``--quick``: every 10th):
each detector's box for the annotated face
(:func:`facealign.research.data.match_detection`, cached with
:func:`facealign.research.data.cached_boxes` in ``--cache-dir``), then each landmark
step; mean and median error (% of inter-ocular distance), failure rate (error
> 10% or face missed) and misses, also on the faces every detector found.

Speed, celeba_wild sample (``--images``, default 300; ``--quick`` 100):
the batch job's pipeline (:func:`bench.common.process_images`: decode, detect,
landmarks per chunk of images, warp, JPEG encode in memory) run with 1 and
with 2 processes (joblib/loky), each process with ``--threads`` compute threads
(default 1: dlib is single-threaded, so every figure is per core); detection
and landmark ms/image come from the 1-process runs. Landmark faces/s is also
measured apart: batched for our engines (the network on ``--batch`` crops
already cut, and the same number of faces cut from whole images) and per face
for dlib's ERT. Figures are medians over ``--repeats`` runs, pipelines
interleaved within each repeat; ``x dlib`` is the speed-up against the
``dlib`` pipeline measured in the same run (> 1: faster than dlib).

Usage::

    python bench/compare.py --quick            # a few minutes
    python bench/compare.py --out runs/compare # the full comparison (< 30 min on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import (  # noqa: E402
    CELEBA_IMAGES,
    DEFAULT_CACHE,
    DLIB_ERT,
    MTFL_ROOT,
    PipelineSpec,
    StageTimes,
    decode_and_detect,
    face_crops,
    fmt,
    get_pipeline,
    load_average,
    machine_info,
    machine_lines,
    markdown_table,
    median,
    process_images,
    repeat_to_faces,
    sample_paths,
    set_threads,
)
from facealign.imageio import to_jsonable  # noqa: E402

PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec("ours-tcnn", "retinaface", "tcnn"),
    PipelineSpec("ours-vanilla", "retinaface", "vanilla"),
    PipelineSpec("dlib", "dlib", DLIB_ERT),
    PipelineSpec("dlib-hog+tcnn", "dlib", "tcnn"),
    PipelineSpec("retinaface+dlib-ert", "retinaface", DLIB_ERT),
    PipelineSpec("haar+tcnn", "haar", "tcnn"),
    PipelineSpec("haar+dlib-ert", "haar", DLIB_ERT),
)
DESCRIPTIONS = {
    "ours-tcnn": "RetinaFace + TCNN (ours, default)",
    "ours-vanilla": "RetinaFace + vanilla CNN (ours)",
    "dlib": "dlib HOG + dlib ERT-68 -> 5 (reference)",
    "dlib-hog+tcnn": "dlib HOG + TCNN (0.2.0 default)",
    "retinaface+dlib-ert": "RetinaFace (mapped to dlib boxes) + dlib ERT-68 -> 5",
    "haar+tcnn": "Haar + TCNN",
    "haar+dlib-ert": "Haar + dlib ERT-68 -> 5",
}
REFERENCE = "dlib"
SAME_AS_OURS_NOTE = (
    "Every landmark step is given the detector's faces in dlib's box convention "
    "(facealign.reboxing.training_boxes), as facealign does at run time."
)
QUICK_MTFL_STEP = 10
QUICK_IMAGES = 100
#: celeba_wild images of the full run: the Haar crosses take ~2/3 of its time (Haar ~150 ms/image).
FULL_IMAGES = 300

#: Options of the loky pool: one task per dispatch, workers kept alive between repeats.
_POOL = {"backend": "loky", "batch_size": 1, "idle_worker_timeout": 3600}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peers_available() -> str | None:
    """None when the dlib peers can run, else why not."""
    try:
        from facealign.research.peers import dlib_model_path

        dlib_model_path(68)
    except ImportError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------- #
# Accuracy
# --------------------------------------------------------------------------- #


def accuracy(pipelines: list[PipelineSpec], mtfl_root: Path, cache_dir: Path, quick: bool) -> dict:
    """Per pipeline: :func:`facealign.research.evaluation.summarize` on all faces and on the common subset."""
    from facealign.reboxing import training_boxes
    from facealign.research.data import cached_boxes, detection_points, load_mtfl
    from facealign.research.evaluation import normalized_errors, summarize

    data = load_mtfl(mtfl_root, "test")
    if quick:
        data = data.subset(np.arange(0, len(data), QUICK_MTFL_STEP))
    images = data.load_images()
    boxes, found = {}, {}
    for det in sorted({p.detector for p in pipelines}):
        t = time.perf_counter()
        boxes[det] = cached_boxes(data, images, cache_dir, det)
        found[det] = np.isfinite(boxes[det][:, 0])
        log(f"  {det}: {found[det].sum()} of {len(data)} faces detected ({time.perf_counter() - t:.0f} s incl. cache)")
    common = np.logical_and.reduce(list(found.values()))
    out = {"faces": len(data), "common_faces": int(common.sum()), "pipelines": {}}
    for spec in pipelines:
        landmarker = get_pipeline(spec)[1]
        idx = np.flatnonzero(found[spec.detector])
        points = detection_points(boxes[spec.detector])
        # Both landmark steps were trained on dlib boxes: other detectors' faces are
        # mapped to that convention first, as facealign does at run time.
        given = training_boxes(spec.detector, boxes[spec.detector][idx, :4], None if points is None else points[idx])
        pred = landmarker.predict_many([images[i] for i in idx], [b[None] for b in given])
        pred = np.stack(pred)[:, 0] if len(idx) else np.zeros((0, 5, 2))
        errors = normalized_errors(pred, data.points[idx]) if len(idx) else np.zeros(0)
        res = summarize(errors, len(data) - len(idx))
        res["common"] = summarize(errors[common[idx]], 0)
        out["pipelines"][spec.name] = res
        log(f"  {spec.name}: NME {res['nme']:.2f}%  failures {100 * res['failure_rate']:.1f}%  misses {res['misses']}")
    return out


# --------------------------------------------------------------------------- #
# Speed
# --------------------------------------------------------------------------- #


def _e2e_chunk(spec: PipelineSpec, paths: list[Path], threads: int) -> StageTimes:
    set_threads(threads)
    return process_images(spec, paths)


def _warm_worker(spec: PipelineSpec, threads: int, pause: float) -> None:
    set_threads(threads)
    get_pipeline(spec)
    time.sleep(pause)  # keep this worker busy so that the next task goes to the other one


def run_e2e(spec: PipelineSpec, paths: list[Path], jobs: int, threads: int) -> tuple[float, StageTimes]:
    """Wall seconds and summed stage times of the crop loop over ``paths`` with ``jobs`` processes."""
    from joblib import Parallel, delayed

    from facealign.batch import CHUNK_SIZE

    chunks = [paths[i : i + CHUNK_SIZE] for i in range(0, len(paths), CHUNK_SIZE)]
    t = time.perf_counter()
    parts = Parallel(n_jobs=jobs, **_POOL)(delayed(_e2e_chunk)(spec, c, threads) for c in chunks)
    wall = time.perf_counter() - t
    total = StageTimes()
    for p in parts:
        total.add(p)
    return wall, total


def landmark_throughput(pipelines: list[PipelineSpec], paths: list[Path], batch: int, repeats: int) -> dict:
    """faces/s of each landmark step: on ``batch`` crops cut (our engines) and on whole images."""
    detector = get_pipeline(PipelineSpec("probe", "dlib", "vanilla"))[0]
    images, boxes = decode_and_detect(paths[:200], detector)
    crops = face_crops(images, boxes, batch)
    many_images, many_boxes = repeat_to_faces(images, boxes, batch)
    n_faces = sum(len(b) for b in many_boxes)
    kinds = {}
    for spec in pipelines:
        kinds.setdefault((spec.landmarks, spec.mirror), get_pipeline(spec)[1])
    times = {k: {"crops": [], "images": []} for k in kinds}
    for lm in kinds.values():  # warm up
        if hasattr(lm, "predict_crops"):
            lm.predict_crops(crops[:64])
        lm.predict_many(many_images[:16], many_boxes[:16])
    for _ in range(repeats):
        for k, lm in kinds.items():
            if hasattr(lm, "predict_crops"):
                t = time.perf_counter()
                lm.predict_crops(crops)
                times[k]["crops"].append(time.perf_counter() - t)
            t = time.perf_counter()
            lm.predict_many(many_images, many_boxes)
            times[k]["images"].append(time.perf_counter() - t)
    out = {}
    for (kind, _), tk in times.items():
        out[kind] = {
            "crops_faces_per_s": batch / median(tk["crops"]) if tk["crops"] else None,
            "images_faces_per_s": n_faces / median(tk["images"]),
            "batch": batch,
            "faces_in_images": n_faces,
        }
    return out


def speed(
    pipelines: list[PipelineSpec], paths: list[Path], repeats: int, threads: int, batch: int, jobs_list=(1, 2)
) -> dict:
    from joblib import Parallel, delayed

    log("  landmark throughput ...")
    lm = landmark_throughput(pipelines, paths, batch, repeats)
    log("  warming up the worker processes ...")
    for spec in pipelines:
        process_images(spec, paths[:4])
        for jobs in jobs_list:
            if jobs > 1:
                Parallel(n_jobs=jobs, **_POOL)(delayed(_warm_worker)(spec, threads, 1.0) for _ in range(jobs))
    runs: dict[str, dict[int, list[tuple[float, StageTimes]]]] = {s.name: {j: [] for j in jobs_list} for s in pipelines}
    for r in range(repeats):
        t = time.perf_counter()
        for spec in pipelines:
            for jobs in jobs_list:
                wall, st = run_e2e(spec, paths, jobs, threads)
                runs[spec.name][jobs].append((wall, st))
                log(f"  repeat {r + 1}/{repeats} {spec.name} jobs={jobs}: {st.images / wall:.1f} images/s")
        log(f"  repeat {r + 1}/{repeats} took {time.perf_counter() - t:.0f} s")
    out = {}
    for spec in pipelines:
        one = runs[spec.name][jobs_list[0]]
        n = one[0][1].images
        res = {
            "images": n,
            "faces": one[0][1].faces,
            "no_face": one[0][1].failures,
            "detect_ms_per_image": 1000 * median([st.detect for _, st in one]) / n,
            "landmarks_ms_per_image": 1000 * median([st.landmarks for _, st in one]) / n,
            "landmarks_ms_per_face": 1000 * median([st.landmarks / max(st.faces, 1) for _, st in one]),
            "stages_ms_per_image": {
                s: 1000 * median([getattr(st, s) for _, st in one]) / n
                for s in ("decode", "detect", "landmarks", "warp", "encode")
            },
            "landmark_faces_per_s_batched": lm[spec.landmarks]["crops_faces_per_s"],
            "landmark_faces_per_s_images": lm[spec.landmarks]["images_faces_per_s"],
        }
        for jobs in jobs_list:
            res[f"images_per_s_{jobs}proc"] = n / median([w for w, _ in runs[spec.name][jobs]])
            res[f"runs_seconds_{jobs}proc"] = [w for w, _ in runs[spec.name][jobs]]
        out[spec.name] = res
    return {"pipelines": out, "landmark_batch": batch, "threads_per_process": threads, "jobs": list(jobs_list)}


def add_ratios(speed_res: dict) -> None:
    """Speed-up of every figure against the reference pipeline (> 1: faster than dlib)."""
    ref = speed_res["pipelines"].get(REFERENCE)
    for res in speed_res["pipelines"].values():
        ratios = {}
        for key, value in list(res.items()):
            if not isinstance(value, float) or key.endswith("_batched"):
                continue
            base = None if ref is None else ref.get(key)
            if not base or not value:
                ratios[key] = None
            elif "_ms_" in key:
                ratios[key] = base / value
            else:
                ratios[key] = value / base
        if ref is not None and res.get("landmark_faces_per_s_batched"):
            # Batched network vs dlib per face: the reference has no batched figure.
            ratios["landmark_faces_per_s_batched"] = (
                res["landmark_faces_per_s_batched"] / ref["landmark_faces_per_s_images"]
            )
        res["x_dlib"] = ratios


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def _cell(res: dict, key: str, digits: int = 1) -> str:
    value = res.get(key)
    if value is None:
        return "—"
    ratio = res.get("x_dlib", {}).get(key)
    return fmt(value, digits) + ("" if ratio is None else f" ({ratio:.2f}×)")


def report(result: dict) -> str:
    lines = ["# facealign vs dlib", "", machine_lines(result["machine"])]
    lines.append(f"- mode: {'--quick' if result['quick'] else 'full'}; {SAME_AS_OURS_NOTE}")
    if result.get("peers_skipped"):
        lines.append(f"- dlib peers skipped: {result['peers_skipped']}")
    lines.append("")
    acc = result.get("accuracy")
    if acc:
        lines += [
            f"## Accuracy, MTFL AFLW test set ({acc['faces']} faces; {acc['common_faces']} found by every detector)",
            "",
            "Errors in % of the inter-ocular distance; failure: error > 10% or face missed.",
            "",
        ]
        rows = []
        for name, r in acc["pipelines"].items():
            c = r["common"]
            rows.append(
                [
                    f"{name}: {DESCRIPTIONS.get(name, '')}",
                    r["detected"],
                    r["misses"],
                    fmt(r["nme"], 2),
                    fmt(r["median"], 2),
                    fmt(100 * r["failure_rate"], 1),
                    fmt(c["nme"], 2),
                    fmt(c["median"], 2),
                    fmt(100 * c["failure_rate"], 1),
                ]
            )
        lines += [
            markdown_table(
                [
                    "pipeline",
                    "detected",
                    "misses",
                    "mean %",
                    "median %",
                    "failure %",
                    "common: mean %",
                    "common: median %",
                    "common: failure %",
                ],
                rows,
            ),
            "",
        ]
    sp = result.get("speed")
    if sp:
        any_res = next(iter(sp["pipelines"].values()))
        lines += [
            f"## Speed, {any_res['images']} celeba_wild images, {sp['threads_per_process']} thread(s) per process",
            "",
            f"Medians of {result['repeats']} runs; (N×) = speed-up against the `dlib` pipeline in this run "
            "(> 1: faster). ms/image from the 1-process runs. Landmark faces/s: 'batched' is our network on "
            f"{sp['landmark_batch']} crops already cut (compared with dlib's per-face rate, as dlib cannot batch); "
            "'in images' includes cutting the crops (ours) and is one face at a time for dlib.",
            "",
        ]
        rows = []
        for name, r in sp["pipelines"].items():
            rows.append(
                [
                    name,
                    _cell(r, "detect_ms_per_image"),
                    _cell(r, "landmarks_ms_per_image", 2),
                    _cell(r, "landmark_faces_per_s_batched", 0),
                    _cell(r, "landmark_faces_per_s_images", 0),
                    *[_cell(r, f"images_per_s_{j}proc") for j in sp["jobs"]],
                ]
            )
        lines += [
            markdown_table(
                [
                    "pipeline",
                    "detect ms/img",
                    "landmarks ms/img",
                    "landmark faces/s batched",
                    "landmark faces/s in images",
                    *[f"end-to-end img/s, {j} proc" for j in sp["jobs"]],
                ],
                rows,
            ),
            "",
            "Detection time is measured per pipeline although pipelines with the same detector share it; "
            "the differences between such rows show the timing noise.",
            "",
        ]
    lines.append(f"Load average at the end: {result.get('load_average_end')}; wall time {result['seconds']:.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"small subset: every {QUICK_MTFL_STEP}th MTFL test face, {QUICK_IMAGES} celeba_wild images, 2 repeats",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/compare"), help="folder for compare.md and compare.json")
    ap.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"detector box cache (default {DEFAULT_CACHE})"
    )
    ap.add_argument("--mtfl", type=Path, default=MTFL_ROOT, help="MTFL root")
    ap.add_argument("--celeba", type=Path, default=CELEBA_IMAGES, help="celeba_wild image folder")
    ap.add_argument("--images", type=int, default=None, help="celeba_wild images for speed (default 300; quick 100)")
    ap.add_argument("--all", action="store_true", help="every celeba_wild image for speed")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3; quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="compute threads per process (default 1)")
    ap.add_argument(
        "--batch", type=int, default=None, help="crops per batched landmark timing (default 2048; quick 512)"
    )
    ap.add_argument("--no-accuracy", action="store_true", help="skip the MTFL accuracy part")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed part")
    args = ap.parse_args(argv)
    n_images = None if args.all else (args.images or (QUICK_IMAGES if args.quick else FULL_IMAGES))
    repeats = args.repeats or (2 if args.quick else 3)
    batch = args.batch or (512 if args.quick else 2048)
    if repeats < 1 or batch < 1 or args.threads < 1:
        ap.error("--repeats, --batch and --threads must be positive")

    start = time.perf_counter()
    set_threads(args.threads)
    result: dict = {
        "machine": machine_info(),
        "quick": args.quick,
        "repeats": repeats,
        "note": SAME_AS_OURS_NOTE,
        "descriptions": DESCRIPTIONS,
    }
    pipelines = list(PIPELINES)
    why = peers_available()
    if why is not None:
        log(f"dlib peers skipped: {why}")
        result["peers_skipped"] = why
        pipelines = [p for p in pipelines if not p.is_peer]
    result["pipelines"] = [p.name for p in pipelines]

    if not args.no_accuracy:
        if (args.mtfl / "test_aflw.txt").is_file():
            log("accuracy on the MTFL AFLW test set ...")
            result["accuracy"] = accuracy(pipelines, args.mtfl, args.cache_dir, args.quick)
        else:
            log(f"accuracy skipped: no MTFL test listing at {args.mtfl / 'test_aflw.txt'}")
    if not args.no_speed:
        if args.celeba.is_dir():
            paths = sample_paths(args.celeba, n_images)
            log(f"speed on {len(paths)} images of {args.celeba} ...")
            result["speed"] = speed(pipelines, paths, repeats, args.threads, batch)
            add_ratios(result["speed"])
        else:
            log(f"speed skipped: no image folder at {args.celeba}")
    result["load_average_end"] = load_average()
    result["seconds"] = time.perf_counter() - start

    text = report(result)
    print(text)
    from facealign.imageio import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(text + "\n")
    write_json(to_jsonable(result), args.out / "compare.json")
    log(f"wrote {args.out / 'compare.md'} and {args.out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
