"""LFW for the recognition benchmark: aligned training crops and the View 2 accuracy.

Training data (:func:`prepare_lfw`)
-----------------------------------
The backbone is trained on the LFW identities with at least two images
(``lfw-deepfunneled``: 1,680 people, 9,164 images), aligned exactly as the
benchmark aligns test faces: dlib detection (shared :class:`~recognition.caches.DetectionCache`,
largest face), five points from the *vanilla* landmark engine, similarity
alignment onto the ``loose`` template at the backbone input side. Images in
which the detector finds no face are left out of training (listed in
``no_face.txt``). Crops go to ``OUT/crops/<Name>/<Name>_NNNN.jpg`` and the
list ``OUT/samples.txt`` holds ``crops/<Name>/<Name>_NNNN.jpg <Name>`` lines
(paths relative to the list, as :func:`recognition.training.read_sample_list`
reads them). Existing crops are kept, so an interrupted run resumes.

Caveats: the evaluation set (celeba_wild) labels people by CelebA numbers, so
an overlap with LFW people (both are collections of celebrities) cannot be
ruled out by name. The crops are aligned with the vanilla engine, which may
favour that aligner slightly at test time.

View 2 accuracy (:func:`lfw_accuracy`)
--------------------------------------
A secondary figure: the 6,000 ``pairs.txt`` pairs in their 10 folds. For each
fold the PCA is fitted on the images of the other nine folds' pairs; a pair's
score is the Pearson correlation of the power-normalised, projected features;
the threshold is chosen on the other nine folds
(:func:`recognition.metrics.verification_accuracy_10fold`). **It is not an
independent figure** when the backbone was trained by :func:`prepare_lfw`
crops: the training identities include the people of ``pairs.txt``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facealign.alignment import get_template
from facealign.constants import TRAINING_DETECTOR
from facealign.imageio import write_image_atomic

from .aligners import LandmarkAligner, choose_face_boxes
from .caches import DetectionCache
from .face_inputs import read_face_inputs
from .matching import fit_pca, power_normalize, template_scores
from .metrics import FoldAccuracy, read_lfw_pairs, verification_accuracy_10fold
from .protocol import items_from_folders

__all__ = [
    "LFW_FOLDER",
    "default_lfw_root",
    "lfw_training_items",
    "PrepareSummary",
    "prepare_lfw",
    "lfw_accuracy",
]

#: Image folder inside the LFW root (paths in ``pairs.txt`` are read into it).
LFW_FOLDER = "lfw-deepfunneled"

_ALIGN_BATCH = 64


def default_lfw_root() -> Path:
    """``lfw/`` in the data sets folder (:func:`facealign.research.data.default_datasets_root`:
    ``$FACEALIGN_DATASETS``, else ``../shared/datasets``)."""
    from facealign.research.data import default_datasets_root

    return default_datasets_root() / "lfw"


def lfw_training_items(lfw_root: str | Path, min_images: int = 2) -> list[tuple[str, str]]:
    """``(path relative to lfw_root, name)`` of the people with at least ``min_images`` images."""
    items = items_from_folders(Path(lfw_root) / LFW_FOLDER)
    counts = Counter(name for _, name in items)
    return [(f"{LFW_FOLDER}/{path}", name) for path, name in items if counts[name] >= min_images]


@dataclass
class PrepareSummary:
    """Counts of :func:`prepare_lfw`."""

    images: int
    identities: int
    written: int
    existing: int
    no_face: int
    samples: int
    samples_path: Path

    def line(self) -> str:
        return (
            f"{self.images} images of {self.identities} people: {self.written} crops written, "
            f"{self.existing} already there, {self.no_face} without a detected face (left out); "
            f"{self.samples} samples listed in {self.samples_path}"
        )


def prepare_lfw(
    out_dir: str | Path,
    lfw_root: str | Path | None = None,
    *,
    size: int = 112,
    detector: str = TRAINING_DETECTOR,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    jobs: int = 1,
    min_images: int = 2,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PrepareSummary:
    """Align the LFW training identities into ``out_dir`` (see the module notes).

    Parameters
    ----------
    out_dir : path
        Output folder (``crops/``, ``samples.txt``, ``no_face.txt``).
    lfw_root : path, optional
        Folder holding ``lfw-deepfunneled/``; :func:`default_lfw_root` by default.
    size : int
        Crop side (the backbone input side).
    detector : str
        Face detector.
    weights : path, optional
        Vanilla engine weights (the shipped ones by default).
    cache_dir : path, optional
        Detection cache folder.
    jobs : int
        Detection worker processes (joblib); -1 for all cores.
    min_images : int
        Keep people with at least this many images.
    limit : int, optional
        Keep only the first ``limit`` people (sorted by name), for quick trials.
    progress : callable, optional
        ``progress(stage, done, total)`` with stage ``"detect"`` or ``"align"``.
    """
    root = Path(lfw_root) if lfw_root is not None else default_lfw_root()
    out = Path(out_dir)
    items = lfw_training_items(root, min_images)
    if limit is not None:
        keep = set(sorted({name for _, name in items})[:limit])
        items = [(p, n) for p, n in items if n in keep]
    if not items:
        raise ValueError(f"no LFW people with >= {min_images} images under {root / LFW_FOLDER}")
    identity = dict(items)
    files = [p for p, _ in items]
    cache = DetectionCache(root, detector, cache_dir)
    records = cache.ensure(
        files, jobs=jobs, progress=None if progress is None else (lambda d, t: progress("detect", d, t))
    )
    faces = choose_face_boxes(records)
    detected = [f for f in files if faces.sources[f] == "detector"]
    no_face = [f for f in files if faces.sources[f] != "detector"]

    def crop_path(file: str) -> Path:
        return out / "crops" / Path(file).relative_to(LFW_FOLDER)

    todo = [f for f in detected if not crop_path(f).is_file()]
    aligner = LandmarkAligner.from_name("vanilla", get_template("loose", size), weights)
    if progress is not None:
        progress("align", 0, len(todo))
    for start in range(0, len(todo), _ALIGN_BATCH):
        batch = todo[start : start + _ALIGN_BATCH]
        inputs = read_face_inputs(root, batch, faces.boxes)
        for file, crop in zip(batch, aligner.align(inputs)):
            write_image_atomic(crop_path(file), crop, quality=95)
        if progress is not None:
            progress("align", start + len(batch), len(todo))

    samples = out / "samples.txt"
    lines = [f"{crop_path(f).relative_to(out).as_posix()} {identity[f]}" for f in detected]
    samples.write_text(
        f"# path identity (LFW people with >= {min_images} images, aligned crops)\n"
        + "".join(line + "\n" for line in lines),
        encoding="utf-8",
    )
    (out / "no_face.txt").write_text("".join(f + "\n" for f in no_face), encoding="utf-8")
    return PrepareSummary(
        images=len(files),
        identities=len(set(identity.values())),
        written=len(todo),
        existing=len(detected) - len(todo),
        no_face=len(no_face),
        samples=len(lines),
        samples_path=samples,
    )


def lfw_accuracy(
    features_of: Callable[[Sequence[str]], np.ndarray],
    pairs_path: str | Path,
    n_components: int = 4000,
) -> tuple[FoldAccuracy, dict[str, Any]]:
    """LFW View 2 verification accuracy (see the module notes).

    Parameters
    ----------
    features_of : callable
        Maps image paths relative to the LFW root (``lfw-deepfunneled/...``)
        to raw feature rows.
    pairs_path : path
        ``pairs.txt``.
    n_components : int
        Requested PCA dimension (capped by the training images of each fold).

    Returns
    -------
    FoldAccuracy
        Mean and std over the 10 folds.
    dict
        ``pairs``, ``images`` and the per-fold PCA dimensions.
    """
    pairs = read_lfw_pairs(pairs_path, folder=LFW_FOLDER)
    files = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
    row = {f: i for i, f in enumerate(files)}
    raw = power_normalize(np.asarray(features_of(files), np.float64))
    left = np.array([row[p.path1] for p in pairs])
    right = np.array([row[p.path2] for p in pairs])
    fold = np.array([p.fold for p in pairs])
    same = np.array([p.same for p in pairs])
    scores = np.empty(len(pairs))
    components = []
    for k in np.unique(fold):
        test = fold == k
        train_rows = np.unique(np.concatenate([left[~test], right[~test]]))
        pca = fit_pca(raw[train_rows], n_components)
        components.append(int(pca.n_components_))
        used = np.unique(np.concatenate([left[test], right[test]]))
        projected = pca.transform(raw[used])
        by_image = {int(i): projected[n : n + 1] for n, i in enumerate(used)}
        scores[test] = template_scores(by_image, np.stack([left[test], right[test]], 1), (0.0,))
    accuracy = verification_accuracy_10fold(scores, same, folds=fold)
    return accuracy, {"pairs": len(pairs), "images": len(files), "pca_components": components}
