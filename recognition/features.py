"""Backbone features of the aligned faces, cached per aligner.

Crops are embedded by the backbone (:func:`recognition.backbones.load_backbone`:
the shipped AlexNet, another AlexNet checkpoint, or ``dlib-resnet``). Features
are cached per aligner in an ``.npz`` keyed by the aligner (with a hash of its
weights or manifest and its template), the backbone (a hash of its weights),
the detector with a hash of its settings, and the image root
(:func:`feature_cache_path`); a row is reused only if the face box it was
computed from is the same. So adding an aligner costs one pass over the images.

A low-resolution condition (:class:`recognition.conditions.ProbeReduction`)
has its own cache files (the reduction's and the reduced detections' keys are
in the name): adding a condition costs one pass per aligner over the reduced
images, and the full-resolution features are reused.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facealign.imageio import write_bytes_atomic

from .aligners import Aligner, get_aligner
from .backbones import BackboneChoice, load_backbone
from .caches import DetectionCache
from .face_inputs import read_face_inputs

if TYPE_CHECKING:
    from .backbone import Backbone
    from .conditions import ProbeReduction

__all__ = [
    "FeatureTable",
    "extract_features",
    "feature_cache_path",
    "FeatureJob",
    "fill_feature_caches",
]

_FEATURE_BATCH = 64
_FEATURE_SAVE_EVERY = 1024


@dataclass
class FeatureTable:
    """Features of a set of images.

    Attributes
    ----------
    files : list of str
        Image paths (relative to the image root).
    features : numpy.ndarray
        ``(N, D)`` float32 raw backbone features, row ``i`` for ``files[i]``.
    """

    files: list[str]
    features: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {f: i for i, f in enumerate(self.files)}

    def rows(self, files: Sequence[str]) -> np.ndarray:
        """Feature rows of ``files`` (in that order)."""
        try:
            return self.features[[self.index[f] for f in files]]
        except KeyError as exc:
            raise ValueError(f"no features for image {exc.args[0]!r}") from None


def _save_features(path: Path, files: list[str], boxes: np.ndarray, features: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, files=np.asarray(files, dtype=str), boxes=boxes, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())


def extract_features(
    files: Sequence[str],
    images_root: str | Path,
    boxes: Mapping[str, np.ndarray],
    aligner: Aligner,
    backbone: Backbone,
    cache_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    reduction: ProbeReduction | None = None,
) -> FeatureTable:
    """Raw backbone features of the aligned face of every image.

    Parameters
    ----------
    files : sequence of str
        Images relative to ``images_root``.
    images_root : path
        Image root.
    boxes : mapping
        ``file -> (4,)`` face box in original-image pixels.
    aligner : Aligner
        Alignment under test.
    backbone : Backbone
        Embedding network; crops are made at its input side.
    cache_path : path, optional
        ``.npz`` cache (``files``, ``boxes``, ``features``). Rows whose file
        and box match are reused; the others are computed and the file is
        rewritten (every :data:`_FEATURE_SAVE_EVERY` images and at the end).
    progress : callable, optional
        ``progress(done, total)`` over the images computed by this call.
    reduction : ProbeReduction, optional
        Decode the images reduced (low-resolution probes); ``boxes`` then are
        the boxes found on the reduced images, in original pixels.

    Returns
    -------
    FeatureTable
        Rows in the order of ``files`` (duplicates removed).

    Raises
    ------
    ValueError
        If the aligner's crop size differs from the backbone input side, or an
        image cannot be read.
    """
    if aligner.template.size != (backbone.input_size, backbone.input_size):
        raise ValueError(f"aligner crops are {aligner.template.size}, backbone expects {backbone.input_size}")
    files = list(dict.fromkeys(files))
    root = Path(images_root)
    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cache = Path(cache_path) if cache_path is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            for f, b, x in zip(data["files"].tolist(), data["boxes"], data["features"]):
                cached[f] = (b, x)
    known: dict[str, np.ndarray] = {}
    for f in files:
        if f in cached and np.allclose(cached[f][0], boxes[f], atol=1e-3):
            known[f] = cached[f][1]
    todo = [f for f in files if f not in known]

    def save() -> None:
        if cache is None:
            return
        merged = {f: cached[f] for f in cached}
        merged.update({f: (np.asarray(boxes[f], np.float64), known[f]) for f in known})
        names = sorted(merged)
        _save_features(
            cache,
            names,
            np.stack([merged[n][0] for n in names]),
            np.stack([merged[n][1] for n in names]).astype(np.float32),
        )

    if progress is not None and todo:
        progress(0, len(todo))
    since_save = 0
    for start in range(0, len(todo), _FEATURE_BATCH):
        batch = todo[start : start + _FEATURE_BATCH]
        faces = read_face_inputs(root, batch, boxes, reduction)
        features = backbone.embed(aligner.align(faces))
        for f, x in zip(batch, features):
            known[f] = x
        since_save += len(batch)
        if since_save >= _FEATURE_SAVE_EVERY:
            save()
            since_save = 0
        if progress is not None:
            progress(start + len(batch), len(todo))
    if todo:
        save()
    if not files:
        return FeatureTable([], np.zeros((0, 0), np.float32))
    return FeatureTable(files, np.stack([known[f] for f in files]).astype(np.float32))


def feature_cache_path(
    cache_dir: Path,
    aligner: Aligner,
    backbone: BackboneChoice,
    detections: DetectionCache,
) -> Path:
    """Cache file of the features of ``aligner`` through ``backbone`` on these detections (module notes).

    ``detections`` are those the face boxes come from (the reduced images' for
    a low-resolution condition, whose key holds the reduction's).
    """
    return cache_dir / f"features-{aligner.key}-{backbone.key}-{detections.key}.npz"


@dataclass
class FeatureJob:
    """One aligner's features to compute in a worker (:func:`fill_feature_caches`).

    Attributes
    ----------
    spec : str
        Aligner name, rebuilt in the worker.
    files : list of str
        Images.
    boxes : dict
        Their face boxes (original pixels).
    cache_path : pathlib.Path
        The aligner's feature cache.
    reduction : ProbeReduction or None
        Low-resolution probes.
    """

    spec: str
    files: list[str]
    boxes: Mapping[str, np.ndarray]
    cache_path: Path
    reduction: ProbeReduction | None = None


def _fill_one_cache(
    job: FeatureJob,
    backbone_spec: str | Path | None,
    images_root: Path,
    weights: Mapping[str, str | Path | None],
    cache_dir: Path,
) -> None:
    """Worker: the features of one aligner into its cache file (one torch thread; the caller's
    thread counts come back when it runs in the calling process)."""
    import torch  # noqa: F401  (loaded first, so that single_threaded limits it)

    from facealign.research.parallel import single_threaded

    with single_threaded():
        choice = load_backbone(backbone_spec)
        aligner = get_aligner(
            job.spec,
            choice.template,
            images_root=images_root,
            weights=weights,
            cache_dir=cache_dir,
            reduction=job.reduction,
        )
        extract_features(
            job.files, images_root, job.boxes, aligner, choice.network, job.cache_path, reduction=job.reduction
        )


def fill_feature_caches(
    jobs_list: Sequence[FeatureJob],
    backbone_spec: str | Path | None,
    images_root: Path,
    weights: Mapping[str, str | Path | None],
    cache_dir: Path,
    jobs: int,
    quiet: bool = False,
) -> None:
    """Compute the features of several aligners (and conditions) in parallel processes, one each.

    Each worker builds its aligner and backbone from their names and fills the
    aligner's feature cache (:func:`feature_cache_path`), so that
    :func:`recognition.evaluate.run_aligner` then only evaluates. Aligners whose cache is complete
    cost nothing. Parallel over aligners rather than images: the dlib models do
    not pickle, and each aligner's pass is the same size.
    """
    from facealign.progress import Progress
    from facealign.research.parallel import parallel_map

    tasks = [(job, backbone_spec, images_root, weights, cache_dir) for job in jobs_list]
    with Progress("features, aligners done", enabled=not quiet, every=0) as progress:
        for done, _ in enumerate(parallel_map(_fill_one_cache, tasks, jobs), 1):
            progress(done, len(tasks))
