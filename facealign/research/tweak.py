"""Tweaking: from the vanilla CNN to the Tweaked CNN (paper section 3).

Steps of :func:`tweak` (``facealign tweak``):

1. **Features.** The trained vanilla CNN gives the FC5 input (the 256 CL4
   outputs) of every training face. With ``boxes="refined"`` (our default) the
   face is cropped by the box that re-boxing (:mod:`facealign.reboxing`) gives
   after a vanilla first pass, the crop the tweaked heads see at run time; with
   ``boxes="detector"`` (the paper) by its detector box.
2. **Clustering (Eq. 2).** A K-component Gaussian mixture is fitted by EM
   (scikit-learn) on the training features; each face goes to its most probable
   component. Covariances are *diagonal*: with 10,000 faces and K = 48 a cluster
   holds ~190 faces, too few for a full 256 x 256 covariance, and a diagonal
   mixture routes a batch with two matrix products at inference time
   (:class:`facealign.engine.GaussianRouter`).
3. **Alignment-sensitive augmentation (section 3.2, Eq. 5).** For two faces A, B of
   one cluster, the non-reflective similarity mapping A's landmarks onto B's is
   estimated by least squares; A's image is warped into B's frame, cropped by B's
   box and labelled with B's landmarks. It is kept only if its own FC5 input is
   routed to the same cluster. Each cluster grows to ``target`` faces.
4. **Fine-tuning.** For each cluster, a copy of FC5 + FC6, initialised with the
   vanilla weights, is fine-tuned on the cluster's (augmented) faces with the
   convolutional layers frozen; training stops when the error on the cluster's
   share of the validation split has not improved for ``patience`` epochs, and
   the best epoch is kept (the vanilla head itself is epoch 0, so a tweaked head
   never validates worse than the vanilla one). Because the convolutional layers
   are frozen, each face's FC5 input is computed once and the heads train on
   features alone. Clusters are independent and run in parallel (joblib), each
   saved as it finishes so that an interrupted run resumes cluster by cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..alignment import estimate_similarity
from ..constants import NUM_POINTS, TRAINING_DETECTOR
from ..cropping import box_matrices, crop_faces, to_box_coordinates, warp_crop
from ..engine import GaussianRouter, LandmarkEngine
from ..imageio import write_json
from ..reboxing import BoxFromLandmarks
from .evaluation import normalized_errors
from .model import TweakedHeads, VanillaCNN
from .parallel import parallel_map, single_threaded
from .training import (
    PreparedFaces,
    atomic_save,
    calibrate_mirror_shift,
    interocular_loss,
    load_train_validation,
    to_tensor,
    weights_dict,
)
from .training_weights import load_weights, save_weights

logger = logging.getLogger(__name__)

#: How augmented crops are labelled (see :func:`warp_pair`).
LABEL_MODES = ("warped", "paper")
#: Which boxes the heads are tweaked on (see the module docstring).
BOX_MODES = ("refined", "detector")


@dataclass
class TweakConfig:
    """Settings of :func:`tweak` (recorded in the weights' ``meta``)."""

    clusters: int = 48
    target: int = 5000  # faces per cluster after augmentation; 0 disables augmentation
    lr: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 300
    patience: int = 50  # epochs without validation improvement (paper: 50)
    seed: int = 0
    detector: str = TRAINING_DETECTOR
    reg_covar: float = 1e-3
    labels: str = "warped"  # "warped": A's landmarks warped by H (exact); "paper": B's landmarks
    boxes: str = "refined"  # "refined": re-boxed from a vanilla first pass (see reboxing); "detector": the paper's


# ---------------------------------------------------------------- features and clusters


@torch.inference_mode()
def fc5_inputs(
    model: VanillaCNN, crops: np.ndarray, mean: torch.Tensor, std: torch.Tensor, batch: int = 4096
) -> np.ndarray:
    """FC5-input features (``N x 256`` float32) of uint8 crops."""
    out = [model.features(to_tensor(crops[s : s + batch], mean, std)).numpy() for s in range(0, len(crops), batch)]
    return np.concatenate(out) if out else np.zeros((0, 256), np.float32)


def fit_gmm(features: np.ndarray, k: int, seed: int = 0, reg_covar: float = 1e-3) -> dict[str, np.ndarray]:
    """EM fit of a diagonal Gaussian mixture; returns ``weights``, ``means``, ``variances``."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(
        n_components=k, covariance_type="diag", reg_covar=reg_covar, max_iter=300, n_init=1, random_state=seed
    )
    gmm.fit(features.astype(np.float64))
    return {"weights": gmm.weights_, "means": gmm.means_, "variances": gmm.covariances_}


def make_router(gmm: dict[str, np.ndarray]) -> GaussianRouter:
    return GaussianRouter(gmm["weights"], gmm["means"], gmm["variances"])


def route(router: GaussianRouter, features: np.ndarray) -> np.ndarray:
    return router(features)


# ---------------------------------------------------------------- augmentation


def warp_pair(
    image_a: np.ndarray, points_a: np.ndarray, points_b: np.ndarray, box_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5: warp image A into face B's frame and crop it by B's box.

    The least-squares non-reflective similarity ``H`` maps A's landmarks onto B's.

    Returns
    -------
    crop : ndarray (40, 40, 3) uint8
    warped_points : ndarray (5, 2)
        ``H(points_a)``: where A's landmarks really are in B's frame. The paper
        labels the crop with ``points_b`` instead; the two differ by the residual
        of the similarity fit.
    """
    h = estimate_similarity(points_a, points_b)
    m = box_matrices(box_b[None])[0]
    crop = warp_crop(image_a, m @ np.vstack([h, [0, 0, 1]]))
    return crop, points_a @ h[:, :2].T + h[:, 2]


def warp_pairs(images: np.ndarray, points: np.ndarray, boxes: np.ndarray, a: np.ndarray, b: np.ndarray):
    """:func:`warp_pair` for index pairs ``(a[i], b[i])``: crops and warped landmarks."""
    pairs = [warp_pair(images[i], points[i], points[j], boxes[j]) for i, j in zip(a, b)]
    return np.stack([c for c, _ in pairs]), np.stack([p for _, p in pairs])


@dataclass
class AugmentedCluster:
    features: np.ndarray  # M x 256
    targets: np.ndarray  # M x 10, box-normalised
    proposed: int
    accepted: int


def augment_cluster(
    k: int,
    members: np.ndarray,
    images: np.ndarray,
    points: np.ndarray,
    boxes: np.ndarray,
    model: VanillaCNN,
    mean: torch.Tensor,
    std: torch.Tensor,
    router: GaussianRouter,
    target: int,
    rng: np.random.Generator,
    warped_labels: bool = True,
    max_rounds: int = 8,
) -> AugmentedCluster:
    """Grow cluster ``k`` (faces ``members``) to ``target`` faces by Eq. 5 with the same-cluster check.

    ``warped_labels`` labels each new crop with A's warped landmarks (exact);
    otherwise with B's landmarks, as in the paper.
    """
    need = target - len(members)
    feats, targs = [], []
    proposed = accepted = 0
    for _ in range(max_rounds):
        if need <= 0 or len(members) < 2:
            break
        n = int(need * 1.6) + 16
        a = rng.choice(members, n)
        b = rng.choice(members, n)
        ok = a != b
        a, b = a[ok], b[ok]
        crops, warped = warp_pairs(images, points, boxes, a, b)
        labels = warped if warped_labels else points[b]
        f = fc5_inputs(model, crops, mean, std)
        keep = route(router, f) == k
        proposed += len(a)
        accepted += int(keep.sum())
        idx = np.flatnonzero(keep)[:need]
        feats.append(f[idx])
        targs.append(to_box_coordinates(labels[idx], boxes[b[idx]]).reshape(len(idx), -1))
        need -= len(idx)
    if feats:
        return AugmentedCluster(np.concatenate(feats), np.concatenate(targs), proposed, accepted)
    return AugmentedCluster(np.zeros((0, 256), np.float32), np.zeros((0, 2 * NUM_POINTS)), proposed, accepted)


def cross_cluster_acceptance(
    labels: np.ndarray,
    images: np.ndarray,
    points: np.ndarray,
    boxes: np.ndarray,
    model: VanillaCNN,
    mean: torch.Tensor,
    std: torch.Tensor,
    router: GaussianRouter,
    n: int,
    rng: np.random.Generator,
) -> float:
    """Fraction of warps between faces of *different* clusters that land in B's cluster.

    The paper reports that over 96% of such warps are rejected.
    """
    a = rng.integers(0, len(labels), n)
    b = rng.integers(0, len(labels), n)
    ok = labels[a] != labels[b]
    a, b = a[ok], b[ok]
    crops, _ = warp_pairs(images, points, boxes, a, b)
    return float((route(router, fc5_inputs(model, crops, mean, std)) == labels[b]).mean())


# ---------------------------------------------------------------- fine-tuning


def finetune_head(
    vanilla_state: dict,
    train_f: np.ndarray,
    train_t: np.ndarray,
    val_f: np.ndarray,
    val_t: np.ndarray,
    cfg: TweakConfig,
    seed: int,
) -> tuple[dict, dict]:
    """Fine-tune FC5 + FC6 on features; returns the best head's state and a record."""
    torch.manual_seed(seed)
    model = VanillaCNN.from_state_dict(vanilla_state)
    head = torch.nn.Sequential(model.fc5, model.fc6)
    xf = torch.tensor(train_f, dtype=torch.float32)
    xt = torch.tensor(train_t, dtype=torch.float32)
    vf = torch.tensor(val_f, dtype=torch.float32)
    vt = val_t.reshape(-1, NUM_POINTS, 2)

    def val_error() -> float:
        if len(vf) == 0:
            with torch.no_grad():
                return float(interocular_loss(head(xf), xt))
        with torch.no_grad():
            pred = head(vf).double().numpy().reshape(-1, NUM_POINTS, 2)
        return float(normalized_errors(pred, vt).mean() * 100)

    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    best = start = val_error()
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    best_epoch, epoch = 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        order = torch.randperm(len(xf), generator=g)
        for s in range(0, len(xf), cfg.batch_size):
            i = order[s : s + cfg.batch_size]
            loss = interocular_loss(head(xf[i]), xt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        err = val_error()
        if err < best - 1e-6:
            best, best_epoch = err, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    record = {
        "val_before": start,
        "val_after": best,
        "best_epoch": best_epoch,
        "epochs": epoch,
        "n_train": len(xf),
        "n_val": len(vf),
    }
    return best_state, record


def heads_from_states(vanilla: VanillaCNN, states: list[dict]) -> TweakedHeads:
    """Stack per-cluster ``Sequential(fc5, fc6)`` states into :class:`TweakedHeads`."""
    heads = TweakedHeads.from_vanilla(vanilla, len(states))
    with torch.no_grad():
        for k, st in enumerate(states):
            heads.w5[k] = st["0.0.weight"].t()
            heads.b5[k] = st["0.0.bias"]
            heads.w6[k] = st["1.weight"].t()
            heads.b6[k] = st["1.bias"]
    return heads


@dataclass
class ClusterData:
    """Everything one cluster's tweak needs (shipped to a worker process)."""

    k: int
    images: np.ndarray
    points: np.ndarray
    boxes: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    val_features: np.ndarray
    val_targets: np.ndarray


def refined_faces(first_pass: LandmarkEngine, box_model: BoxFromLandmarks, faces: PreparedFaces) -> PreparedFaces:
    """``faces`` with their detector boxes replaced by re-boxing's boxes (the crops the heads will see).

    ``first_pass`` is the vanilla engine without mirror or re-boxing, as in
    :meth:`facealign.engine.LandmarkEngine.predict_faces`.
    """
    points = first_pass.predict_faces(faces.images, np.arange(len(faces.boxes)), faces.boxes)
    return replace(faces, boxes=box_model.rebox(points, faces.boxes))


def _tweak_cluster(path: Path, c: ClusterData, state: dict, gmm: dict, cfg: TweakConfig) -> dict:
    """Augment and fine-tune one cluster's head, or load it if an earlier run finished it
    (one thread: clusters run side by side in worker processes; the caller's thread
    counts come back when it runs in the calling process)."""
    if path.exists():
        return torch.load(path, weights_only=True)
    with single_threaded():
        return _tweak_cluster_now(path, c, state, gmm, cfg)


def _tweak_cluster_now(path: Path, c: ClusterData, state: dict, gmm: dict, cfg: TweakConfig) -> dict:
    model = VanillaCNN.from_state_dict(state["vanilla"])
    model.eval()
    f, t = c.features, c.targets
    proposed = accepted = 0
    if cfg.target > len(f):
        aug = augment_cluster(
            c.k,
            np.arange(len(f)),
            c.images,
            c.points,
            c.boxes,
            model,
            state["mean"].float(),
            state["std"].float(),
            make_router(gmm),
            cfg.target,
            np.random.default_rng([cfg.seed, c.k]),
            warped_labels=cfg.labels == "warped",
        )
        f, t = np.concatenate([f, aug.features]), np.concatenate([t, aug.targets])
        proposed, accepted = aug.proposed, aug.accepted
    st, rec = finetune_head(state["vanilla"], f, t, c.val_features, c.val_targets, cfg, cfg.seed * 1000 + c.k)
    rec.update(proposed=proposed, accepted=accepted, n_original=len(c.features))
    res = {"state": st, "record": rec}
    atomic_save(res, path)
    return res


# ---------------------------------------------------------------- the whole procedure


def tweak(
    vanilla_weights: str | Path,
    mtfl_root: str | Path,
    out: str | Path,
    work_dir: str | Path,
    config: TweakConfig | None = None,
    jobs: int = -1,
    limit: int | None = None,
) -> dict:
    """Build TCNN weights from vanilla weights; see the module docstring.

    Returns a report dict (cluster sizes, augmentation acceptance, per-cluster
    validation errors before and after tweaking), also written as
    ``tweak-report.json`` with the paper's Fig. 6 (``cluster-errors.png`` and
    ``.json``) in the run's folder ``work_dir/heads-K<K>-T<target>-<labels>-s<seed>``.
    """
    cfg = config or TweakConfig()
    work_dir = Path(work_dir)
    if cfg.labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {cfg.labels!r}")
    if cfg.boxes not in BOX_MODES:
        raise ValueError(f"boxes must be one of {BOX_MODES}, got {cfg.boxes!r}")
    heads_dir = work_dir / f"heads-K{cfg.clusters}-T{cfg.target}-{cfg.labels}-{cfg.boxes}-s{cfg.seed}"
    heads_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    state = load_weights(vanilla_weights)
    model = VanillaCNN.from_state_dict(state["vanilla"])
    model.eval()
    mean, std = state["mean"].float(), state["std"].float()

    train, val = load_train_validation(mtfl_root, work_dir, cfg.detector, limit)
    box_model = (
        BoxFromLandmarks.from_tensor(state["box_model"])
        if "box_model" in state
        else BoxFromLandmarks.fit(train.points, train.boxes)
    )
    if cfg.boxes == "refined":
        logger.info("re-boxing the training and validation faces from a vanilla first pass")
        first_pass = LandmarkEngine("vanilla", weights=vanilla_weights, mirror=False, refine=False)
        train, val = (refined_faces(first_pass, box_model, faces) for faces in (train, val))
    tr_f = fc5_inputs(model, crop_faces(train.images, train.boxes), mean, std)
    va_f = fc5_inputs(model, crop_faces(val.images, val.boxes), mean, std)
    tr_t = to_box_coordinates(train.points, train.boxes).reshape(len(tr_f), -1)
    va_t = to_box_coordinates(val.points, val.boxes).reshape(len(va_f), -1)

    gmm_path = heads_dir / "gmm.npz"
    if gmm_path.exists():
        gmm = dict(np.load(gmm_path))
    else:
        logger.info(f"fitting a {cfg.clusters}-component diagonal GMM on {len(tr_f)} FC5 inputs")
        gmm = fit_gmm(tr_f, cfg.clusters, cfg.seed, cfg.reg_covar)
        np.savez(gmm_path, **gmm)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    router = make_router(gmm)
    tr_k = route(router, tr_f)
    va_k = route(router, va_f)
    sizes = np.bincount(tr_k, minlength=cfg.clusters)
    logger.info(f"cluster sizes: median {np.median(sizes):.0f}, min {sizes.min()}, max {sizes.max()}")

    logger.info(f"augmenting and fine-tuning {cfg.clusters} heads (target {cfg.target} faces, patience {cfg.patience})")
    tasks = []
    for k in range(cfg.clusters):
        members = np.flatnonzero(tr_k == k)
        cluster = ClusterData(
            k,
            train.images[members],
            train.points[members],
            train.boxes[members],
            tr_f[members],
            tr_t[members],
            va_f[va_k == k],
            va_t[va_k == k],
        )
        tasks.append((heads_dir / f"head-{k}.pt", cluster, state, gmm, cfg))
    results = list(parallel_map(_tweak_cluster, tasks, jobs))
    proposed = sum(r["record"]["proposed"] for r in results)
    same_rate = sum(r["record"]["accepted"] for r in results) / max(proposed, 1)
    cross_rate = (
        cross_cluster_acceptance(
            tr_k,
            train.images,
            train.points,
            train.boxes,
            model,
            mean,
            std,
            router,
            2000,
            np.random.default_rng(cfg.seed),
        )
        if cfg.clusters > 1
        else float("nan")
    )
    if proposed:
        logger.info(
            f"augmentation: {100 * (1 - same_rate):.1f}% of same-cluster warps rejected, "
            f"{100 * (1 - cross_rate):.1f}% of cross-cluster warps rejected"
        )
    heads = heads_from_states(model, [r["state"] for r in results])
    records = [r["record"] for r in results]

    meta = {
        "engine": "tcnn",
        "config": asdict(cfg),
        "vanilla_meta": dict(state.get("meta", {})),
        "same_cluster_acceptance": same_rate,
        "cross_cluster_acceptance": cross_rate,
    }
    save_weights(weights_dict(model, mean, std, meta, box_model, heads=heads, gmm=gmm), out)
    shift = calibrate_mirror_shift(Path(out), "tcnn", crop_faces(val.images, val.boxes))
    report = {
        "config": asdict(cfg),
        "cluster_sizes": sizes.tolist(),
        "validation_sizes": np.bincount(va_k, minlength=cfg.clusters).tolist(),
        "same_cluster_acceptance": same_rate,
        "cross_cluster_acceptance": cross_rate,
        "mirror_shift": shift,
        "augmentation_proposed": proposed,
        "clusters": records,
        "seconds": time.perf_counter() - t0,
    }
    write_json(report, heads_dir / "tweak-report.json")
    plot_cluster_errors(records, heads_dir / "cluster-errors.png")
    before = np.mean([r["val_before"] for r in records if r["n_val"]])
    after = np.mean([r["val_after"] for r in records if r["n_val"]])
    logger.info(
        f"wrote {out}: mean per-cluster validation error {before:.3f}% -> {after:.3f}% in {report['seconds']:.0f}s"
    )
    return report


# ---------------------------------------------------------------- reports


def plot_cluster_errors(records: list[dict], path: str | Path) -> dict:
    """The paper's Fig. 6: per-cluster validation error, vanilla vs TCNN, sorted by TCNN.

    Writes the PNG at ``path`` and the same numbers as JSON beside it; returns them.
    """
    from .figures import subplots

    rows = [(k, r["val_before"], r["val_after"], r["n_val"]) for k, r in enumerate(records) if r["n_val"]]
    rows.sort(key=lambda r: r[2])
    table = {
        "cluster": [r[0] for r in rows],
        "vanilla": [r[1] for r in rows],
        "tcnn": [r[2] for r in rows],
        "n_val": [r[3] for r in rows],
    }
    fig, ax = subplots(figsize=(8, 3.6), dpi=120)
    x = np.arange(len(rows))
    ax.plot(x, table["vanilla"], "o-", color="tab:red", ms=3, label="vanilla CNN")
    ax.plot(x, table["tcnn"], "o-", color="tab:blue", ms=3, label="TCNN (tweaked head)")
    ax.set_xticks(x)
    ax.set_xticklabels(table["cluster"], fontsize=6, rotation=90)
    ax.set_xlabel("cluster (sorted by TCNN error)")
    ax.set_ylabel("validation mean error (% IOD)")
    ax.set_title("Effect of tweaking, per FC5 cluster (validation split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    write_json(table, path.with_suffix(".json"))
    return table
