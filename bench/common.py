"""What ``bench/speed.py`` and ``bench/compare.py`` share.

* :class:`PipelineSpec` / :func:`get_pipeline` -- a detector plus a landmark
  step (one of our engines or the dlib 68-point peer), built once per process.
* :func:`process_images` -- the crop job's pipeline (:mod:`facealign.pipeline`:
  decode at the working resolution, detect, landmark the faces of a chunk of
  images in one batch, warp onto the template), timed per stage through the
  pipeline's timing hook, then encode.
* Timing helpers, the celeba_wild sample, machine information, markdown tables.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facealign.landmarks import Landmarks
from facealign.research.data import default_cache_dir, default_datasets_root

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The read-only data sets beside the checkout (``$FACEALIGN_DATASETS`` overrides).
DATASETS = default_datasets_root(beside=REPO_ROOT)
CELEBA_IMAGES = DATASETS / "celeba_wild" / "images"
MTFL_ROOT = DATASETS / "mtfl"
#: Detector-box caches: facealign's default (``$FACEALIGN_CACHE``, else ``~/.cache/facealign``).
DEFAULT_CACHE = default_cache_dir()

#: Landmark steps: our two engines and dlib's 68-point ERT reduced to 5 points.
DLIB_ERT = "dlib-ert68"
LANDMARK_KINDS = ("tcnn", "vanilla", DLIB_ERT)


# --------------------------------------------------------------------------- #
# Threads, timing, statistics
# --------------------------------------------------------------------------- #


#: Threads of the landmark engines the benches build (:func:`set_threads`); None: onnxruntime's choice.
ENGINE_THREADS: int | None = None


def set_threads(n: int) -> None:
    """Compute threads of OpenCV in this process and of the landmark engines built after
    this call (:data:`ENGINE_THREADS`); dlib is single-threaded."""
    import cv2

    global ENGINE_THREADS
    ENGINE_THREADS = int(n)
    cv2.setNumThreads(int(n))


def timed_runs(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if len(values) else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of repeated timings: how noisy they were."""
    m = median(values)
    return float((max(values) - min(values)) / m) if len(values) and m > 0 else float("nan")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def add_dlib_training_face_options(ap: Any) -> None:
    """The options of :func:`dlib_training_faces` on an ``argparse`` parser (and ``--out``)."""
    ap.add_argument("--mtfl", type=Path, default=MTFL_ROOT, help="MTFL root")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="detector box cache")
    ap.add_argument("--limit", type=int, default=None, help="only the first N training faces")
    ap.add_argument("--jobs", type=int, default=2, help="dlib detection processes")
    ap.add_argument("--out", type=Path, default=None, help="write the fit as JSON")


def dlib_training_faces(args: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The MTFL training faces (the first ``args.limit``), their images, the dlib detector's
    boxes (cached) and the indices of the faces it found, as the chip-template fits use them."""
    from facealign.research.data import cached_boxes, load_mtfl

    data = load_mtfl(args.mtfl, "train")
    if args.limit is not None:
        data = data.subset(np.arange(min(args.limit, len(data))))
    images = data.load_images()
    boxes = cached_boxes(data, images, args.cache_dir, "dlib", jobs=args.jobs)
    found = np.flatnonzero(np.isfinite(boxes[:, 0]))
    print(f"{len(found)} of {len(data)} MTFL training faces found by the dlib detector", file=sys.stderr)
    return data, images, boxes, found


def link_photos(paths: Sequence[Path], folder: Path) -> Path:
    """``folder`` (created) holding a symbolic link to each of ``paths``: an IN_DIR without copies."""
    folder.mkdir(parents=True)
    for p in paths:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def sample_paths(folder: str | Path, n: int | None) -> list[Path]:
    """``n`` images spread evenly over the sorted listing of ``folder`` (all when ``n`` is None)."""
    from facealign.imageio import find_images

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}; set FACEALIGN_DATASETS or pass the folder")
    paths = find_images(folder)
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    if n is None or n >= len(paths):
        return paths
    if n < 1:
        raise ValueError(f"sample size must be positive, got {n}")
    index = np.unique(np.linspace(0, len(paths) - 1, n).round().astype(int))
    return [paths[i] for i in index]


def decode_and_detect(paths: Sequence[Path], detector) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Working-resolution images and their detected boxes, by the crop job's own decode and
    detect steps (:meth:`facealign.pipeline.Pipeline.load_and_detect`)."""
    from facealign.alignment import get_template
    from facealign.pipeline import Pipeline

    # decode and detect only; the template sets the decoding resolution, as in the crop job
    pipeline = Pipeline(detector, None, get_template("arcface"))
    images, boxes = [], []
    for p in paths:
        item = pipeline.load_and_detect(p)
        if item.image is None:
            raise RuntimeError(f"{p}: {item.error}")
        images.append(item.image)
        boxes.append(item.boxes)
    return images, boxes


def face_crops(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], count: int) -> np.ndarray:
    """``count`` network-input crops of the detected faces, repeated cyclically to fill the batch."""
    from facealign.cropping import crop_boxes

    crops = [crop_boxes(im, b) for im, b in zip(images, boxes) if len(b)]
    if not crops:
        raise RuntimeError("no face was detected in the sample; cannot build a batch of face crops")
    crops = np.concatenate(crops)
    return crops[np.arange(count) % len(crops)]


def repeat_to_faces(
    images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], count: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images with faces, repeated until they hold at least ``count`` faces (for batched timing)."""
    pairs = [(im, b) for im, b in zip(images, boxes) if len(b)]
    if not pairs:
        raise RuntimeError("no face was detected in the sample")
    out_im, out_b, faces = [], [], 0
    while faces < count:
        for im, b in pairs:
            out_im.append(im)
            out_b.append(b)
            faces += len(b)
            if faces >= count:
                break
    return out_im, out_b


# --------------------------------------------------------------------------- #
# Pipelines
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class PipelineSpec:
    """A detector and a landmark step.

    ``landmarks`` is ``"tcnn"``, ``"vanilla"`` (our engines; ``mirror`` None is the
    engine default) or ``"dlib-ert68"`` (:class:`facealign.research.peers.DlibShapePredictor`).
    """

    name: str
    detector: str
    landmarks: str
    mirror: bool | None = None

    def __post_init__(self) -> None:
        if self.landmarks not in LANDMARK_KINDS:
            raise ValueError(f"unknown landmark step {self.landmarks!r}; choose one of {list(LANDMARK_KINDS)}")

    @property
    def is_peer(self) -> bool:
        return self.landmarks == DLIB_ERT


def build_landmarker(kind: str, mirror: bool | None = None):
    """A landmark step (:class:`facealign.landmarks.LandmarkPredictor`, with the engines'
    ``predict_many`` too): a LandmarkEngine or the dlib peer (:class:`PeerLandmarks`)."""
    if kind == DLIB_ERT:
        from facealign.research.peers import DlibShapePredictor

        return PeerLandmarks(DlibShapePredictor())
    from facealign.engine import LandmarkEngine

    return LandmarkEngine(kind, mirror=mirror, threads=ENGINE_THREADS)


class PeerLandmarks:
    """dlib's 68-point ERT as the pipeline's landmark step: ``landmarks`` and ``predict_many``
    with the engine's signatures (no quality figures: they are NaN in the faces)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def predict_many(self, images: list[np.ndarray], boxes: list[np.ndarray], return_quality: bool = False):
        points = self.predictor.predict_many(images, boxes)
        return (points, [{} for _ in points]) if return_quality else points

    def landmarks(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[Landmarks]:
        return [Landmarks(np.asarray(p, np.float64)) for p in self.predictor.predict_many(images, boxes)]

    def __repr__(self) -> str:
        return f"PeerLandmarks({self.predictor!r})"


_PIPELINES: dict[PipelineSpec, tuple[Any, Any, Any]] = {}


def get_pipeline(spec: PipelineSpec, template: str = "arcface"):
    """``(detector, landmarker, template)`` for ``spec``, built once per process."""
    built = _PIPELINES.get(spec)
    if built is None:
        from facealign.alignment import get_template
        from facealign.detection import get_detector

        built = (get_detector(spec.detector), build_landmarker(spec.landmarks, spec.mirror), get_template(template))
        _PIPELINES[spec] = built
    return built


#: Stages timed by :func:`process_images`: the pipeline's (:data:`facealign.pipeline.STAGES`) and encode.
STAGES = ("decode", "detect", "landmarks", "warp", "encode")


@dataclass
class StageTimes:
    """Seconds spent per stage by :func:`process_images`, and what was processed."""

    images: int = 0
    faces: int = 0
    failures: int = 0
    decode: float = 0.0
    detect: float = 0.0
    landmarks: float = 0.0
    warp: float = 0.0
    encode: float = 0.0
    wall: float = 0.0

    def add(self, other: StageTimes) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    @property
    def total(self) -> float:
        return sum(getattr(self, s) for s in STAGES)


def process_images(
    spec: PipelineSpec,
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    chunk_size: int | None = None,
) -> StageTimes:
    """Crop every face of ``paths`` with the crop job's code, timing each stage.

    Not a copy of the job's loop: per chunk of ``chunk_size`` images (the job's
    ``CHUNK_SIZE`` by default), the job's own pipeline runs
    (:meth:`facealign.pipeline.Pipeline.iter_image_faces`: decode at the
    working resolution, detect, landmarks once per batch of images;
    :meth:`~facealign.pipeline.Pipeline.align_faces`: warp), timed through the
    pipeline's timing hook; then each crop is encoded as the job writes it,
    ``write_image_atomic`` into ``out_dir``, or, without one, JPEG-encoded in
    memory (encode).
    """
    import cv2

    from facealign.batch import CHUNK_SIZE
    from facealign.imageio import write_image_atomic
    from facealign.pipeline import Pipeline

    pipeline = Pipeline(*get_pipeline(spec))
    chunk_size = chunk_size or CHUNK_SIZE
    st = StageTimes()

    def timer(stage: str, seconds: float) -> None:
        setattr(st, stage, getattr(st, stage) + seconds)

    start = time.perf_counter()
    clock = time.perf_counter
    for s in range(0, len(paths), chunk_size):
        for item in pipeline.iter_image_faces(paths[s : s + chunk_size], timer=timer):
            if item.image is None:
                st.failures += 1
                continue
            st.images += 1
            if not len(item.boxes):
                st.failures += 1
                continue
            name = item.path.stem
            for k, aligned in enumerate(pipeline.align_faces(item, timer)):
                t0 = clock()
                if out_dir is None:
                    ok, _ = cv2.imencode(
                        ".jpg", cv2.cvtColor(aligned.crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
                    )
                    if not ok:
                        raise RuntimeError("OpenCV could not encode a crop")
                else:
                    write_image_atomic(Path(out_dir) / f"{name}_{k}.jpg", aligned.crop)
                st.encode += clock() - t0
                st.faces += 1
            item.image = None  # as the job: release the decoded pixels early
    st.wall = time.perf_counter() - start
    return st


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", getattr(mod, "DLIB_VERSION", "?")))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """Date, CPU, cores, load and library versions, for the JSON and markdown headers."""
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "opencv": _version("cv2"),
        "dlib": _version("dlib"),
    }
    info["load_average"] = load_average()
    return info


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers rounded, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "—"
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are converted with :func:`fmt` unless already strings."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def machine_lines(info: dict[str, Any]) -> str:
    load = info.get("load_average")
    return (
        f"- date: {info['date']}\n"
        f"- CPU: {info['cpu']} ({info['usable_cores']} usable cores of {info['cpu_count']})\n"
        f"- torch {info['torch']}, numpy {info['numpy']}, OpenCV {info['opencv']}, dlib {info['dlib']}, "
        f"Python {info['python']}\n" + (f"- load average at start (1, 5, 15 min): {load}\n" if load else "")
    )
