"""Speed figures of facealign on this machine (issues 2 and 3). Prints figures; asserts nothing.

1. Landmark throughput, faces/s, with ``--threads`` engine threads (default 2):
   a batch of ``--batch`` face crops already cut (``predict_crops``, the network
   alone) and the same number of faces cut from celeba_wild images
   (``predict_many``, crop cutting included), for TCNN with and without the
   mirrored pass and for the vanilla CNN, with the TCNN / vanilla time ratios.
   Engines are timed round-robin within each repeat, so slow phases of a shared
   machine hit them alike; figures are medians over ``--repeats`` runs. A sweep
   over the engine's ``batch_size`` (faces per network pass), with 1 thread and
   with ``--threads``, shows where the default sits.
2. End-to-end crop throughput on a celeba_wild sample, one process: the batch
   job's own pipeline (:mod:`facealign.pipeline`) timed per stage through its
   timing hook (:func:`bench.common.process_images`), split into decode,
   detect, landmarks, warp and encode (+ atomic write), and
   the real :func:`facealign.batch.run_crop_job` with ``jobs=1`` and ``jobs=2``.

Usage::

    python bench/speed.py                      # 300 celeba_wild images
    python bench/speed.py --all --json speed.json
    python bench/speed.py --baseline old-weights/    # also time another release's weights, same run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.common import (  # noqa: E402
    CELEBA_IMAGES,
    STAGES,
    PipelineSpec,
    StageTimes,
    decode_and_detect,
    face_crops,
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
    spread,
    timed_runs,
)
from facealign.constants import DEFAULT_DETECTOR, DEFAULT_ENGINE, ENGINES  # noqa: E402
from facealign.imageio import to_jsonable  # noqa: E402

#: (label, engine, mirror, refine) of the landmark configurations timed; the first
#: is facealign's default. With re-boxing, the "crops" figure times the network's
#: two passes on crops already cut (the re-cut is counted in the "images" figure).
ENGINE_CONFIGS = (
    ("tcnn, re-boxing, mirror (default)", "tcnn", True, True),
    ("tcnn, mirror, no re-boxing", "tcnn", True, False),
    ("tcnn, no mirror, no re-boxing", "tcnn", False, False),
    ("vanilla, re-boxing (vanilla default)", "vanilla", False, True),
    ("vanilla, no re-boxing", "vanilla", False, False),
)
#: The reference of the time ratios: the shipped vanilla network, one pass.
REFERENCE_CONFIG = "vanilla, no re-boxing"
#: Configurations timed with the weights of ``--baseline DIR`` (another release's
#: ``tcnn`` / ``vanilla`` files) in the same run: label suffix, engine, mirror, refine.
BASELINE_CONFIGS = (
    ("tcnn, re-boxing, mirror (default)", "tcnn", True, True),
    ("vanilla, no re-boxing", "vanilla", False, False),
)
#: Engine batch sizes (faces per network pass) of the sweep.
SWEEP_SIZES = (8, 16, 64, 256, 2048)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def network_passes(engine, crops):
    """The network work of ``engine`` on crops already cut: with re-boxing, both passes."""
    if engine.refine:
        engine.first_pass_crops(crops)
    return engine.predict_crops(crops)


def baseline_weights(folder: Path, engine: str) -> Path:
    """The weights file of ``engine`` in a ``--baseline`` folder (``.npz`` preferred, else ``.pt``)."""
    for suffix in (".npz", ".pt"):
        if (folder / f"{engine}{suffix}").is_file():
            return folder / f"{engine}{suffix}"
    raise SystemExit(f"--baseline {folder}: no {engine}.npz or {engine}.pt")


def landmark_throughput(images, boxes, batch: int, repeats: int, baseline: Path | None = None) -> dict:
    """faces/s of each engine configuration on ``batch`` crops and on ``batch`` faces of whole images.

    With ``baseline`` (a folder of another release's weights), the
    :data:`BASELINE_CONFIGS` are timed with those weights too, round-robin with
    the shipped ones.
    """
    from facealign.engine import LandmarkEngine

    crops = face_crops(images, boxes, batch)
    many_images, many_boxes = repeat_to_faces(images, boxes, batch)
    many_faces = sum(len(b) for b in many_boxes)
    engines = {
        label: LandmarkEngine(name, mirror=mirror, refine=refine, threads=common.ENGINE_THREADS)
        for label, name, mirror, refine in ENGINE_CONFIGS
    }
    if baseline is not None:
        for label, name, mirror, refine in BASELINE_CONFIGS:
            weights = baseline_weights(baseline, name)
            engines[f"{label}, baseline {baseline.name}"] = LandmarkEngine(
                name, weights=weights, mirror=mirror, refine=refine, threads=common.ENGINE_THREADS
            )
    times: dict[str, dict[str, list[float]]] = {label: {"crops": [], "many": []} for label in engines}
    for engine in engines.values():  # warm up
        network_passes(engine, crops)
        engine.predict_many(many_images, many_boxes)
    for r in range(repeats):
        for label, engine in engines.items():
            t = time.perf_counter()
            network_passes(engine, crops)
            times[label]["crops"].append(time.perf_counter() - t)
            t = time.perf_counter()
            engine.predict_many(many_images, many_boxes)
            times[label]["many"].append(time.perf_counter() - t)
        log(f"  landmark repeat {r + 1}/{repeats} done")
    out = {
        "batch_crops": batch,
        "faces_in_images": many_faces,
        "images": len(many_images),
        "engine_batch_size": next(iter(engines.values())).batch_size,
        "engines": {},
    }
    for label in engines:
        tc, tm = median(times[label]["crops"]), median(times[label]["many"])
        out["engines"][label] = {
            "crops_seconds": times[label]["crops"],
            "images_seconds": times[label]["many"],
            "crops_faces_per_s": batch / tc,
            "images_faces_per_s": many_faces / tm,
            "crops_spread": spread(times[label]["crops"]),
            "images_spread": spread(times[label]["many"]),
        }
    van = out["engines"][REFERENCE_CONFIG]
    for label in engines:
        e = out["engines"][label]
        e["time_ratio_vs_vanilla_crops"] = van["crops_faces_per_s"] / e["crops_faces_per_s"]
        e["time_ratio_vs_vanilla_images"] = van["images_faces_per_s"] / e["images_faces_per_s"]
    return out


def torch_reference(images, boxes, batch: int, repeats: int, threads: int) -> dict:
    """The run-time engine (onnxruntime) against the training code's torch network, in one run.

    Both evaluate the paper's vanilla network once (one pass, no mirror, no
    re-boxing) on the same ``batch`` crops, 64 faces per convolution pass, with
    ``threads`` threads, alternating over ``repeats``; the torch side is
    :class:`facealign.research.model.VanillaCNN` in channels-last memory, as the engine ran
    it before onnxruntime. Returns faces/s of each and their ratio.
    """
    import torch

    from facealign.engine import LandmarkEngine, shipped_weights
    from facealign.research.export import load_network
    from facealign.research.training import to_tensor
    from facealign.research.training_weights import load_weights

    crops = face_crops(images, boxes, batch)
    engine = LandmarkEngine("vanilla", mirror=False, refine=False, threads=threads)
    model, mean, std = load_network(load_weights(shipped_weights("vanilla")))
    model = model.to(memory_format=torch.channels_last)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)

    def torch_pass() -> None:
        with torch.inference_mode():
            x = to_tensor(crops, mean, std).contiguous(memory_format=torch.channels_last)
            for s in range(0, len(x), engine.batch_size):
                model(x[s : s + engine.batch_size])

    try:
        seconds: dict[str, list[float]] = {"onnxruntime": [], "torch": []}
        for fn in (lambda: engine.predict_crops(crops), torch_pass):  # warm up
            fn()
        for _ in range(repeats):
            for label, fn in (("onnxruntime", lambda: engine.predict_crops(crops)), ("torch", torch_pass)):
                t = time.perf_counter()
                fn()
                seconds[label].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)
    out = {label: batch / median(s) for label, s in seconds.items()}
    return {"faces_per_s": out, "ratio": out["onnxruntime"] / out["torch"], "threads": threads, "seconds": seconds}


def batch_size_sweep(images, boxes, batch: int, repeats: int, threads_list, sizes=SWEEP_SIZES) -> list[dict]:
    """faces/s on ``batch`` crops for each engine ``batch_size`` (faces per network pass) and thread count."""
    from facealign.engine import LandmarkEngine

    crops = face_crops(images, boxes, batch)
    rows = []
    for threads in threads_list:
        for label, name, mirror, refine in (ENGINE_CONFIGS[0], ENGINE_CONFIGS[-1]):
            for size in sizes:
                engine = LandmarkEngine(name, mirror=mirror, refine=refine, batch_size=size, threads=threads)
                seconds = timed_runs(lambda engine=engine: network_passes(engine, crops), repeats)
                rows.append(
                    {
                        "engine": label,
                        "threads": threads,
                        "batch_size": size,
                        "faces_per_s": batch / median(seconds),
                        "seconds": seconds,
                    }
                )
                log(f"  sweep {label} threads={threads} batch_size={size}: {rows[-1]['faces_per_s']:.0f} faces/s")
    return rows


def end_to_end(paths: list[Path], engine: str, repeats: int, detector: str = DEFAULT_DETECTOR) -> dict:
    """The instrumented single-process loop, ``repeats`` times; per-stage ms/image medians."""
    spec = PipelineSpec(f"{detector} + {engine}", detector, engine)
    get_pipeline(spec)
    runs: list[StageTimes] = []
    with tempfile.TemporaryDirectory(prefix="facealign-speed-") as tmp:
        process_images(spec, paths[:8], out_dir=tmp)  # warm up
        for r in range(repeats):
            out = Path(tmp) / f"run{r}"
            out.mkdir()
            runs.append(process_images(spec, paths, out_dir=out))
            log(f"  instrumented loop {r + 1}/{repeats}: {runs[-1].images / runs[-1].wall:.1f} images/s")
    n = runs[0].images
    res = {
        "pipeline": spec.name,
        "images": n,
        "faces": runs[0].faces,
        "no_face": runs[0].failures,
        "images_per_s": n / median([r.wall for r in runs]),
        "wall_seconds": [r.wall for r in runs],
        "ms_per_image": {s: 1000 * median([getattr(r, s) for r in runs]) / n for s in STAGES},
    }
    res["ms_per_image"]["total"] = 1000 * median([r.wall for r in runs]) / n
    return res


def crop_jobs(paths: list[Path], folder: Path | None, engine: str, repeats: int, jobs_list=(1, 2)) -> dict:
    """images/s of the real ``run_crop_job`` for each ``jobs``; the first (cold) run is reported apart."""
    from facealign.batch import run_crop_job

    results: dict[int, list[float]] = {j: [] for j in jobs_list}
    faces: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="facealign-speed-job-") as tmp:
        if folder is None:
            folder = Path(tmp) / "in"
            folder.mkdir()
            for p in paths:
                (folder / p.name).symlink_to(p.resolve())
        for r in range(repeats + 1):  # run 0 is cold (worker start-up, model loading)
            for jobs in jobs_list:
                out = Path(tmp) / f"out-{jobs}-{r}"
                summary = run_crop_job(folder, out, engine=engine, jobs=jobs)
                results[jobs].append(summary.images_per_second)
                faces[jobs] = summary.faces
                log(f"  run_crop_job jobs={jobs} run {r}: {summary.line()}")
    return {
        str(j): {
            "images": len(paths),
            "faces": faces[j],
            "cold_images_per_s": v[0],
            "images_per_s": median(v[1:]),
            "runs_images_per_s": v[1:],
        }
        for j, v in results.items()
    }


def report(res: dict) -> str:
    lm = res["landmarks"]
    rows = []
    for label, e in lm["engines"].items():
        rows.append(
            [
                label,
                e["crops_faces_per_s"],
                f"{e['time_ratio_vs_vanilla_crops']:.2f}",
                e["images_faces_per_s"],
                f"{e['time_ratio_vs_vanilla_images']:.2f}",
                f"{100 * max(e['crops_spread'], e['images_spread']):.0f}%",
            ]
        )
    text = [
        "# facealign speed",
        "",
        machine_lines(res["machine"]),
        f"## Landmarks, {res['threads']} engine threads (median of {res['repeats']} runs)",
        "",
        markdown_table(
            [
                "engine",
                f"faces/s, {lm['batch_crops']} crops cut",
                "time / vanilla",
                f"faces/s, {lm['faces_in_images']} faces in {lm['images']} images (with cropping)",
                "time / vanilla",
                "spread",
            ],
            rows,
        ),
        "",
        f"spread: (max - min) / median over the repeats. Engines at their default batch_size "
        f"({lm['engine_batch_size']} faces per network pass).",
        "",
    ]
    if res.get("torch_reference"):
        text += [
            "## The run-time engine against the torch network (vanilla, one pass, same crops, same run)",
            "",
            markdown_table(
                ["threads", "onnxruntime faces/s", "torch faces/s", "ratio"],
                [
                    [t, r["faces_per_s"]["onnxruntime"], r["faces_per_s"]["torch"], f"{r['ratio']:.2f}x"]
                    for t, r in res["torch_reference"].items()
                ],
            ),
            "",
        ]
    if res.get("batch_sweep"):
        sweep = res["batch_sweep"]
        sizes = sorted({r["batch_size"] for r in sweep})
        keys = list(dict.fromkeys((r["engine"], r["threads"]) for r in sweep))
        table = {(r["engine"], r["threads"], r["batch_size"]): r["faces_per_s"] for r in sweep}
        text += [
            f"### faces/s on {lm['batch_crops']} crops by engine batch_size (faces per network pass)",
            "",
            markdown_table(
                ["engine", "threads", *[f"batch_size {b}" for b in sizes]],
                [[e, str(t), *[table[(e, t, b)] for b in sizes]] for e, t in keys],
            ),
            "",
        ]
    e2e = res["end_to_end"]
    text += [
        f"## End to end, {e2e['images']} celeba_wild images ({e2e['faces']} faces, {e2e['no_face']} without one), "
        f"one process, {res['threads']} threads",
        "",
        f"Instrumented loop ({e2e['pipeline']}): **{e2e['images_per_s']:.1f} images/s** "
        f"(median of {res['e2e_repeats']} runs)",
        "",
        markdown_table(
            ["stage", "ms / image", "share"],
            [
                [s, e2e["ms_per_image"][s], f"{100 * e2e['ms_per_image'][s] / e2e['ms_per_image']['total']:.0f}%"]
                for s in STAGES
            ]
            + [["total (wall)", e2e["ms_per_image"]["total"], "100%"]],
        ),
        "",
        "encode includes the atomic write (fsync) of each crop, as in the batch job. "
        f"The landmark step takes {100 * e2e['ms_per_image']['landmarks'] / e2e['ms_per_image']['detect']:.0f}% "
        "of the detection time.",
        "",
    ]
    if res.get("crop_job"):
        rows = [
            [f"jobs={j}", v["images_per_s"], v["cold_images_per_s"], v["faces"]] for j, v in res["crop_job"].items()
        ]
        text += [
            f"### `run_crop_job` (median of {res['e2e_repeats']} warm runs; the cold first run apart)",
            "",
            markdown_table(["", "images/s", "cold first run, images/s", "faces"], rows),
            "",
            "With jobs=2 each worker runs the networks and OpenCV single-threaded; jobs=1 runs in this process with "
            f"{res['threads']} threads.",
            "",
        ]
    text.append(f"Load average at the end: {res['load_average_end']}")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=300, help="celeba_wild images in the sample (default 300)")
    ap.add_argument("--all", action="store_true", help="use every celeba_wild image")
    ap.add_argument("--folder", type=Path, default=CELEBA_IMAGES, help="image folder (default celeba_wild/images)")
    ap.add_argument("--batch", type=int, default=2048, help="faces per landmark batch (default 2048)")
    ap.add_argument("--repeats", type=int, default=5, help="landmark timing repeats (default 5)")
    ap.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end repeats (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="landmark engine / OpenCV threads (default 2)")
    ap.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINES, help="engine of the end-to-end runs")
    ap.add_argument("--detector", default=DEFAULT_DETECTOR, help=f"detector of every run (default {DEFAULT_DETECTOR})")
    ap.add_argument("--no-sweep", action="store_true", help="skip the engine batch_size sweep")
    ap.add_argument("--no-job", action="store_true", help="skip the run_crop_job timings")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="folder with another release's tcnn/vanilla weights (.npz or .pt), timed in the same run",
    )
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.e2e_repeats < 1 or args.batch < 1:
        ap.error("--repeats, --e2e-repeats and --batch must be positive")

    set_threads(args.threads)
    paths = sample_paths(args.folder, None if args.all else args.images)
    res: dict = {
        "machine": machine_info(),
        "threads": args.threads,
        "repeats": args.repeats,
        "e2e_repeats": args.e2e_repeats,
        "sample": {"folder": str(args.folder), "images": len(paths)},
    }
    log(f"{len(paths)} images from {args.folder}")

    log("decoding and detecting the sample for the landmark batches ...")
    detector = get_pipeline(PipelineSpec("ours", args.detector, args.engine))[0]
    images, boxes = decode_and_detect(paths, detector)
    log("landmark throughput ...")
    res["landmarks"] = landmark_throughput(images, boxes, args.batch, args.repeats, args.baseline)
    log("onnxruntime against torch ...")
    thread_counts = sorted({1, args.threads})
    res["torch_reference"] = {t: torch_reference(images, boxes, args.batch, args.repeats, t) for t in thread_counts}
    if not args.no_sweep:
        log("engine batch_size sweep ...")
        res["batch_sweep"] = batch_size_sweep(images, boxes, args.batch, args.repeats, sorted({1, args.threads}))
    del images, boxes

    log("end to end, instrumented ...")
    res["end_to_end"] = end_to_end(paths, args.engine, args.e2e_repeats, args.detector)
    if not args.no_job:
        log("end to end, run_crop_job ...")
        res["crop_job"] = crop_jobs(paths, args.folder if args.all else None, args.engine, args.e2e_repeats)
    res["load_average_end"] = load_average()

    print(report(res))
    if args.json:
        from facealign.imageio import write_json

        write_json(to_jsonable(res), args.json)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
