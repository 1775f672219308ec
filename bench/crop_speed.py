"""End-to-end speed of ``facealign crop`` against the plain dlib pipeline, as whole processes.

    python bench/crop_speed.py --images 1000 --repeats 3 --out runs/crop_speed.json

Both sides run as fresh processes on the same celeba_wild photos, start-up
included, one after the other and alternating over ``--repeats`` rounds:

* 1 process: ``facealign crop IN OUT --jobs 1`` (defaults otherwise) against
  ``bench/dlib_pipeline.py`` (dlib HOG upsample 1 + 68-point predictor +
  ``get_face_chip(112)``), both pinned to one core (``taskset -c 0``): dlib is
  single-threaded, and facealign may not win by using a second core;
* 2 processes: ``facealign crop --jobs 2`` against two ``dlib_pipeline.py``
  processes, each on half of the photos, started together.

Prints images/s (median over the rounds) and facealign's ratio to dlib measured
in the same run; ``--detector`` and extra ``facealign crop`` options can be
passed through ``--crop-args``. Needs the ``bench`` extra (dlib's 68-point model).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CELEBA_IMAGES, link_photos, machine_info, median, sample_paths  # noqa: E402
from facealign.imageio import write_json  # noqa: E402

DLIB_SCRIPT = Path(__file__).with_name("dlib_pipeline.py")


def _wall(commands: list[list[str]], one_core: bool = False) -> float:
    """Seconds until every command (started together) has finished; raises on failure.

    ``one_core`` pins the commands to CPU 0 (``taskset``), so that a process
    that would use several threads gets no more CPU than single-threaded dlib.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if one_core and shutil.which("taskset"):
        commands = [["taskset", "-c", "0", *c] for c in commands]
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    for c, p in zip(commands, procs):
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(c)} failed ({p.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - start


def measure(paths: list[Path], crop_args: str = "", repeats: int = 3, log=print) -> dict:
    """images/s of ``facealign crop`` and the plain dlib pipeline with 1 and 2 processes (medians)."""
    work = Path(tempfile.mkdtemp(prefix="facealign-crop-speed-"))
    try:
        in_dir = link_photos(paths, work / "in")
        crop = [sys.executable, "-m", "facealign.cli", "crop", str(in_dir)]
        extra = shlex.split(crop_args)
        dlib = [sys.executable, str(DLIB_SCRIPT), str(in_dir)]
        runs: dict[str, list[float]] = {"facealign-1": [], "dlib-1": [], "facealign-2": [], "dlib-2": []}
        for r in range(repeats):
            for name, commands in [
                ("facealign-1", [crop + [str(work / f"fa1-{r}"), "--jobs", "1", "-q", *extra]]),
                ("dlib-1", [dlib + [str(work / f"dl1-{r}")]]),
                ("facealign-2", [crop + [str(work / f"fa2-{r}"), "--jobs", "2", "-q", *extra]]),
                ("dlib-2", [dlib + [str(work / f"dl2-{r}"), "--shard", f"{k}/2"] for k in range(2)]),
            ]:
                seconds = _wall(commands, one_core=name.endswith("-1"))
                runs[name].append(len(paths) / seconds)
                log(f"round {r + 1}: {name:12s} {len(paths) / seconds:7.1f} images/s ({seconds:.1f} s)")
        crops = {
            "facealign": sum(1 for _ in (work / "fa1-0").glob("*.jpg")),
            "dlib": sum(1 for _ in (work / "dl1-0").glob("*.jpg")),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ips = {k: median(v) for k, v in runs.items()}
    return {
        "images": len(paths),
        "crop_args": crop_args,
        "crops_written": crops,
        "images_per_s": ips,
        "ratio_1_process": ips["facealign-1"] / ips["dlib-1"],
        "ratio_2_processes": ips["facealign-2"] / ips["dlib-2"],
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--crop-args", default="", help="extra options for facealign crop, e.g. '--detector dlib'")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = sample_paths(CELEBA_IMAGES, args.images)
    result = measure(paths, args.crop_args, args.repeats, log=lambda s: print(s, flush=True))
    result["machine"] = machine_info()
    ips = result["images_per_s"]
    print(f"\n{len(paths)} celeba_wild photos, medians of {args.repeats} rounds, start-up included")
    print(f"crops written: facealign {result['crops_written']['facealign']}, dlib {result['crops_written']['dlib']}")
    print("| processes | facealign crop images/s | plain dlib images/s | ratio |")
    print("|---|---|---|---|")
    print(f"| 1 | {ips['facealign-1']:.1f} | {ips['dlib-1']:.1f} | **{result['ratio_1_process']:.2f}x** |")
    print(f"| 2 | {ips['facealign-2']:.1f} | {ips['dlib-2']:.1f} | **{result['ratio_2_processes']:.2f}x** |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out)


if __name__ == "__main__":
    main()
