"""Matching and metrics of one aligner on a protocol (paper, section 5.2).

Per split (:func:`evaluate_split`): power normalisation, PCA fitted on that
split's training images only (:func:`recognition.matching.fit_pca`), Pearson
correlation of every image pair of two templates, SoftMax fusion averaged over
:data:`DEFAULT_BETAS`, then TAR at :data:`FAR_TARGETS` and the ROC on a
log-spaced FAR grid (:func:`recognition.metrics.tar_at_far`). Results are mean
and (population) standard deviation over the splits; the per-split scores are
kept for the paired statistics of :mod:`recognition.statistics`.
:func:`run_aligner` is the whole of one aligner: its (cached) features, then
the evaluation.

With a low-resolution condition (:class:`ProbeCondition`) the test templates
are made of the reduced images' features and the PCA is fitted on the
full-resolution training images, as without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .aligners import Aligner, DetectorAligner, FaceBoxes, ManifestAligner
from .backbones import BackboneChoice
from .caches import DetectionCache
from .features import FeatureTable, extract_features, feature_cache_path
from .matching import fit_pca, power_normalize, template_scores
from .metrics import tar_at_far
from .protocol import Protocol, Split, protocol_files
from .statistics import SplitComparisons

if TYPE_CHECKING:
    from .conditions import ProbeReduction

__all__ = [
    "DEFAULT_BETAS",
    "FAR_TARGETS",
    "ROC_GRID",
    "SplitResult",
    "VerificationResult",
    "evaluate_split",
    "evaluate_protocol",
    "AlignerRun",
    "ProbeCondition",
    "probe_files",
    "run_aligner",
]


#: SoftMax temperatures averaged by the template fusion: 0 (mean of the pair
#: scores) to 20 (close to their maximum) in steps of 1, as in the Janus CS2
#: systems the paper's pipeline comes from, which average SoftMax scores over a
#: range of temperatures instead of tuning one.
DEFAULT_BETAS: tuple[float, ...] = tuple(float(b) for b in range(21))

#: FARs at which the TAR is reported (Table 2 of the paper gives 1e-2 and 1e-1).
FAR_TARGETS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)

#: FAR grid of the stored ROC (log-spaced, 1e-4 to 1, 10 points per decade).
ROC_GRID: np.ndarray = np.logspace(-4, 0, 41)


@dataclass
class SplitResult:
    """Verification result of one split.

    Attributes
    ----------
    index : int
        Split number.
    tar : dict
        ``FAR -> TAR`` at :data:`FAR_TARGETS`.
    roc_tar : numpy.ndarray
        TAR at every FAR of :data:`ROC_GRID`.
    genuine, impostor : int
        Numbers of comparisons.
    train_images : int
        Images the PCA was fitted on.
    pca_components : int
        Fitted PCA dimension.
    scores : numpy.ndarray
        ``(M,)`` fused score of every comparison of the split (protocol order).
    comparisons : SplitComparisons
        Subjects and genuine flags of those comparisons (for the paired statistics).
    """

    index: int
    tar: dict[float, float]
    roc_tar: np.ndarray
    genuine: int
    impostor: int
    train_images: int
    pca_components: int
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    comparisons: SplitComparisons | None = field(default=None, repr=False)


@dataclass
class VerificationResult:
    """Verification over all splits: TAR at FAR as mean and std, and the mean ROC."""

    splits: list[SplitResult]
    betas: tuple[float, ...]

    @property
    def tar_mean(self) -> dict[float, float]:
        return {far: float(np.mean([s.tar[far] for s in self.splits])) for far in FAR_TARGETS}

    @property
    def tar_std(self) -> dict[float, float]:
        return {far: float(np.std([s.tar[far] for s in self.splits])) for far in FAR_TARGETS}

    def summary(self) -> dict[str, Any]:
        """JSON-ready TAR figures (``"1e-02"`` style keys)."""
        return {
            "tar_at_far": {
                f"{far:.0e}": {
                    "mean": self.tar_mean[far],
                    "std": self.tar_std[far],
                    "splits": [s.tar[far] for s in self.splits],
                }
                for far in FAR_TARGETS
            },
            "betas": list(self.betas),
            "splits": [
                {
                    "split": s.index,
                    "genuine": s.genuine,
                    "impostor": s.impostor,
                    "train_images": s.train_images,
                    "pca_components": s.pca_components,
                    **{f"tar@{far:.0e}": s.tar[far] for far in FAR_TARGETS},
                }
                for s in self.splits
            ],
        }

    def roc(self) -> dict[str, Any]:
        """Mean ROC over splits on :data:`ROC_GRID` (JSON-ready)."""
        tars = np.stack([s.roc_tar for s in self.splits])
        return {
            "far": ROC_GRID.tolist(),
            "tar_mean": tars.mean(0).tolist(),
            "tar_std": tars.std(0).tolist(),
            "tar_per_split": {str(s.index): s.roc_tar.tolist() for s in self.splits},
        }


def evaluate_split(
    split: Split,
    features: FeatureTable,
    betas: Sequence[float] = DEFAULT_BETAS,
    n_components: int = 4000,
    test_features: FeatureTable | None = None,
) -> SplitResult:
    """Power normalisation, PCA on the split's training images, Pearson + SoftMax, TAR at FAR.

    ``test_features`` (e.g. of low-resolution probes) replace ``features`` for
    the test templates; the PCA is fitted on ``features`` either way.

    Raises
    ------
    ValueError
        If the split has no training image or lacks genuine or impostor comparisons.
    """
    train_files = split.train_files
    if not train_files:
        raise ValueError(f"split {split.index} has no training images to fit the PCA on")
    pca = fit_pca(power_normalize(features.rows(train_files).astype(np.float64)), n_components)
    test_files = split.test_files
    test_table = features if test_features is None else test_features
    projected = pca.transform(power_normalize(test_table.rows(test_files).astype(np.float64)))
    row_of = {f: i for i, f in enumerate(test_files)}
    by_template = {tid: projected[[row_of[r.file] for r in rows]] for tid, rows in split.templates.items()}
    scores = np.asarray(template_scores(by_template, split.comparisons, tuple(betas)), np.float64)
    tar = tar_at_far(scores, split.genuine, list(FAR_TARGETS))
    roc_tar = np.asarray(tar_at_far(scores, split.genuine, ROC_GRID), np.float64)
    subjects = np.array(
        [
            [split.template_subject(int(a)), split.template_subject(int(b))]
            for a, b in np.asarray(split.comparisons).reshape(-1, 2)
        ]
    )
    return SplitResult(
        index=split.index,
        tar={far: float(v) for far, v in zip(FAR_TARGETS, np.atleast_1d(tar))},
        roc_tar=roc_tar,
        genuine=int(split.genuine.sum()),
        impostor=int((~split.genuine).sum()),
        train_images=len(train_files),
        pca_components=int(pca.n_components_),
        scores=scores,
        comparisons=SplitComparisons(subjects, np.asarray(split.genuine, bool)),
    )


def evaluate_protocol(
    protocol: Protocol,
    features: FeatureTable,
    betas: Sequence[float] = DEFAULT_BETAS,
    n_components: int = 4000,
    test_features: FeatureTable | None = None,
) -> VerificationResult:
    """:func:`evaluate_split` on every split of ``protocol``."""
    if not betas:
        raise ValueError("need at least one beta")
    return VerificationResult(
        [evaluate_split(s, features, betas, n_components, test_features) for s in protocol.splits],
        tuple(float(b) for b in betas),
    )


@dataclass
class ProbeCondition:
    """Low-resolution probes of one aligner (``compare-aligners --probe-iod``).

    Attributes
    ----------
    aligner : Aligner
        The aligner, built for the reduced images (a detector aligner detects on them).
    faces : FaceBoxes
        Face boxes found on the reduced images (original pixels).
    detections : DetectionCache
        The detections of the reduced images (their key names the feature cache).
    reduction : ProbeReduction
        The reduction.
    """

    aligner: Aligner
    faces: FaceBoxes
    detections: DetectionCache
    reduction: ProbeReduction


def probe_files(protocol: Protocol) -> list[str]:
    """Sorted unique images of the test templates of all splits (those a probe condition reduces)."""
    return sorted({f for s in protocol.splits for f in s.test_files})


@dataclass
class AlignerRun:
    """Everything :func:`run_aligner` produced for one aligner."""

    aligner: str
    key: str
    result: VerificationResult
    manifest_missing: int = 0
    seconds: float = 0.0
    detector_missing: int = 0
    probe_detector_missing: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "aligner": self.aligner,
            "key": self.key,
            **self.result.summary(),
            "manifest_missing": self.manifest_missing,
            "detector_missing": self.detector_missing,
            "probe_detector_missing": self.probe_detector_missing,
            "feature_seconds": round(self.seconds, 1),
        }


def run_aligner(
    protocol: Protocol,
    faces: FaceBoxes,
    aligner: Aligner,
    backbone: BackboneChoice,
    detections: DetectionCache,
    cache_dir: Path,
    betas: Sequence[float] = DEFAULT_BETAS,
    n_components: int = 4000,
    progress: Callable[[int, int], None] | None = None,
    probe: ProbeCondition | None = None,
) -> AlignerRun:
    """Features (cached) and verification of one aligner on a protocol (with low-resolution probes)."""
    started = time.perf_counter()
    files = protocol_files(protocol)
    table = extract_features(
        files,
        detections.images_root,
        faces.boxes,
        aligner,
        backbone.network,
        feature_cache_path(cache_dir, aligner, backbone, detections),
        progress,
    )
    probe_table = None
    probe_missing = 0
    if probe is not None:
        probes = probe_files(protocol)
        probe_table = extract_features(
            probes,
            detections.images_root,
            probe.faces.boxes,
            probe.aligner,
            backbone.network,
            feature_cache_path(cache_dir, probe.aligner, backbone, probe.detections),
            progress,
            reduction=probe.reduction,
        )
        if isinstance(probe.aligner, DetectorAligner):
            probe_missing = len(probe.aligner.missing(probes, probe.faces.boxes))
    seconds = time.perf_counter() - started
    result = evaluate_protocol(protocol, table, betas, n_components, probe_table)
    missing = len(aligner.missing(files)) if isinstance(aligner, ManifestAligner) else 0
    detector_missing = len(aligner.missing(files, faces.boxes)) if isinstance(aligner, DetectorAligner) else 0
    return AlignerRun(aligner.name, aligner.key, result, missing, seconds, detector_missing, probe_missing)
