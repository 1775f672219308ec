"""Engine v3 probes (issue 21): three cheap directions, each measured on the validation split.

    python bench/engine_v3_probes.py teacher --write-labels runs/pseudo/labels.npz
    python bench/engine_v3_probes.py refine --work-dir runs/refine
    python bench/engine_v3_probes.py student --work-dir runs/student-control
    python bench/engine_v3_probes.py student --work-dir runs/student-pseudo --pseudo-labels runs/pseudo/labels.npz
    python bench/engine_v3_probes.py student --work-dir runs/student-bn \
        --batch-norm 16,48,128,128 --epochs 100 --lr 3e-3

* ``teacher``: the pseudo-label teacher (the shipped ``tcnn``, averaged 1:1 with
  its mean over in-plane rotations of -10 and +10 degrees) on the validation
  faces, and the error of the labels it would keep at each ``p_fail`` cut, by
  pose (measured before trusting them, as the issue asks). With
  ``--write-labels`` it labels every celeba_wild photo (all faces) and
  ``--lfw`` LFW photos (the face nearest the centre; never a photo of the MTFL
  validation split) found by the default detector.
* ``refine``: a second pass on a similarity-normalised crop. The first pass
  (the shipped network's vanilla head, as re-boxing's) gives five points; the
  box they imply (re-boxing's box model) is turned by their Procrustes angle to
  the mean training shape, so the second network sees an upright face. The
  second network (0.5.0's wide layout, started from the shipped vanilla
  weights) is trained on such crops of the training faces, framed from the true
  points with the first pass's measured framing error added (times
  ``--noise``), then fine-tuned without degradations.
* ``student``: 0.5.0's wide network fine-tuned from the shipped vanilla weights
  on the training faces, alone (the control) or with the pseudo-labels; or,
  with ``--batch-norm``, the same layout with batch norm and ReLU trained from
  scratch. Scored one-pass on the training detector's validation boxes (the
  figure ``facealign train`` selects on).

Every subcommand adds its rows to ``--out`` (``docs/hard/engine-v3-probes.json``,
rendered in ``docs/hard/engine-v3.md``). Validation only: never the AFLW test set.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATASETS, DEFAULT_CACHE, MTFL_ROOT  # noqa: E402
from bench.engine_v3 import SIZE_BINS, row  # noqa: E402
from facealign.constants import DEFAULT_DETECTOR, LEFT_EYE, NUM_POINTS, RIGHT_EYE, shipped_weights  # noqa: E402
from facealign.cropping import box_matrices, crop_faces, from_box_coordinates, warp_crop  # noqa: E402
from facealign.engine import LandmarkEngine, mirror_coordinates  # noqa: E402
from facealign.imageio import write_json  # noqa: E402
from facealign.research.evaluation import DetectedFaces, detected_faces, score_points  # noqa: E402

OUT = Path("docs/hard/engine-v3-probes.json")
#: Second-pass crop side (0.5.0's network input).
SIDE = 40
#: Framing noise added to the true frames in training (standard deviations), rounded from the first
#: pass's framing error on validation faces (``refine`` prints it): centre in box widths, log size, radians.
FIRST_PASS_ERROR = (0.0095, 0.03, float(np.radians(1.25)))

logger = logging.getLogger("engine_v3_probes")


def command_line() -> str:
    return "python bench/engine_v3_probes.py " + shlex.join(sys.argv[1:])


def add_rows(out: Path, section: str, rows: dict) -> None:
    """Merge ``rows`` (label -> row) into ``section`` of the JSON file ``out``."""
    table = json.loads(out.read_text()) if out.exists() else {"detector": DEFAULT_DETECTOR}
    table.setdefault(section, {}).update(rows)
    write_json(table, out)


def validation_row(faces: DetectedFaces, points: np.ndarray, command: str) -> dict:
    result = score_points(faces, points, by=("pose", "size"), size_bins=SIZE_BINS)
    r = row(result, command)
    print(
        f"  NME {r['nme']:.3f}%  fail {r['failure_rate']:.1f}%  profile {r['profile_nme']:.2f}%  "
        f"frontal {r['frontal_nme']:.2f}%"
    )
    return r


# ----------------------------------------------------------------------------- teacher


def teacher_points(engine: LandmarkEngine, images, owner: np.ndarray, boxes: np.ndarray):
    """The teacher's points, its ``p_fail`` and the disagreement of its members (% IOD)."""
    from facealign.research.tta import RotationTTA

    direct, quality = engine.predict_faces(images, owner, boxes, return_quality=True)
    rotated = RotationTTA(engine, (-10.0, 10.0)).predict_faces(images, owner, boxes)
    iod = np.linalg.norm(direct[:, RIGHT_EYE] - direct[:, LEFT_EYE], axis=1)
    disagreement = 100 * np.linalg.norm(rotated - direct, axis=2).mean(1) / iod
    return 0.5 * (direct + rotated), quality["p_fail"], disagreement


def run_teacher(args: argparse.Namespace) -> None:
    engine = LandmarkEngine("tcnn")
    faces = detected_faces(MTFL_ROOT, DEFAULT_CACHE, DEFAULT_DETECTOR, "validation")
    points, p_fail, _ = teacher_points(engine, faces.images, faces.found, faces.boxes)
    print("tcnn 0.5.0, then the teacher, on the validation faces:")
    baseline = engine.predict_faces(faces.images, faces.found, faces.boxes)
    add_rows(args.out, "validation", {
        "tcnn 0.5.0 (baseline)": validation_row(faces, baseline, command_line()),
        "teacher (tcnn + rotations)": validation_row(faces, points, command_line()),
    })  # fmt: skip
    errors = np.asarray(score_points(faces, points)["errors"]) * 100
    pose = faces.data.attributes[faces.found, 3]
    profile = np.isin(pose, (1, 5))
    cuts = {}
    for cut in (1.0, 0.1, 0.05, 0.02):
        kept = p_fail <= cut
        cuts[f"p_fail <= {cut:g}"] = {
            "kept_share": float(kept.mean()),
            "nme": float(errors[kept].mean()),
            "failure_rate": float((errors[kept] > 10).mean() * 100),
            "profiles_kept": int((kept & profile).sum()),
            "profiles": int(profile.sum()),
            "profile_nme": float(errors[kept & profile].mean()) if (kept & profile).any() else None,
        }
        c = cuts[f"p_fail <= {cut:g}"]
        print(
            f"  p_fail <= {cut:g}: kept {100 * c['kept_share']:.0f}%, label NME {c['nme']:.2f}%, "
            f"profiles kept {c['profiles_kept']}/{c['profiles']}"
        )
    add_rows(args.out, "pseudo_label_error", cuts)
    if args.write_labels:
        write_labels(engine, args.write_labels, args.lfw)


def write_labels(engine: LandmarkEngine, path: Path, n_lfw: int) -> None:
    """Teacher labels of the default detector's faces in celeba_wild and ``n_lfw`` LFW photos."""
    from PIL import Image

    from facealign.detection import get_detector
    from facealign.reboxing import training_boxes
    from facealign.research.data import load_mtfl, train_validation_split

    mtfl = load_mtfl(MTFL_ROOT, "train")
    held_out = {Path(mtfl.paths[i]).name for i in train_validation_split(len(mtfl))[1]}
    lfw = [p for p in sorted((DATASETS / "lfw" / "lfw-deepfunneled").rglob("*.jpg")) if p.name not in held_out]
    pick = np.random.default_rng(0).choice(len(lfw), min(n_lfw, len(lfw)), replace=False)
    photos = sorted((DATASETS / "celeba_wild" / "images").glob("*.jpg")) + [lfw[i] for i in sorted(pick)]
    detector = get_detector(DEFAULT_DETECTOR)
    rows: dict[str, list] = {"paths": [], "boxes": [], "points": [], "p_fail": [], "disagreement": []}
    for k, photo in enumerate(photos):
        with Image.open(photo) as im:
            image = np.asarray(im.convert("RGB"))
        found = detector.detect(image)
        boxes = np.asarray(found.boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        marks = np.asarray(found.landmarks, np.float64).reshape(-1, NUM_POINTS, 2)
        if photo.is_relative_to(DATASETS / "lfw"):  # the face the photo is of
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2 - np.array(image.shape[1::-1]) / 2
            keep = [int(np.argmin((centre**2).sum(1)))]
            boxes, marks = boxes[keep], marks[keep]
        boxes = training_boxes(DEFAULT_DETECTOR, boxes, marks)
        points, p_fail, disagreement = teacher_points(engine, [image], np.zeros(len(boxes), np.intp), boxes)
        for key, values in zip(rows, ([str(photo)] * len(boxes), boxes, points, p_fail, disagreement)):
            rows[key].extend(values)
        if k % 1000 == 0:
            logger.info(f"labelled {k} of {len(photos)} photos, {len(rows['paths'])} faces")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in rows.items()})
    logger.info(f"wrote {len(rows['paths'])} faces to {path}")


# ----------------------------------------------------------------------------- refine


def procrustes_angles(points: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """Rotations (radians) that best map the centred ``mean_shape`` onto each centred point set."""
    p = points - points.mean(1, keepdims=True)
    m = mean_shape - mean_shape.mean(0)
    num = (m[None, :, 0] * p[..., 1] - m[None, :, 1] * p[..., 0]).sum(1)
    den = (m[None, :, 0] * p[..., 0] + m[None, :, 1] * p[..., 1]).sum(1)
    return np.arctan2(num, den)


def upright_matrices(centre: np.ndarray, size: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """``N x 3 x 3`` maps from image pixels to the ``SIDE`` px crop of the box (``centre``,
    ``size`` = width, height) turned by ``angle``: the face comes out upright."""
    n = len(centre)
    box = np.tile(np.eye(3), (n, 1, 1))
    box[:, :2] = box_matrices(np.concatenate([centre - size / 2, centre + size / 2], 1), SIDE)
    turn = np.tile(np.eye(3), (n, 1, 1))
    c, s = np.cos(angle), np.sin(angle)
    turn[:, 0, 0], turn[:, 0, 1], turn[:, 1, 0], turn[:, 1, 1] = c, s, -s, c
    turn[:, :2, 2] = centre - np.einsum("nij,nj->ni", turn[:, :2, :2], centre)
    return box @ turn


def apply(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.einsum("nij,nkj->nki", matrices[:, :2, :2], points) + matrices[:, None, :2, 2]


class UprightFrames:
    """The upright second-pass frame of five points: re-boxing's box, the Procrustes angle."""

    def __init__(self, engine: LandmarkEngine, mean_shape: np.ndarray) -> None:
        assert engine.box_model is not None
        self.box_model, self.mean_shape = engine.box_model, mean_shape

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = self.box_model.boxes_for(points)
        return (
            (boxes[:, :2] + boxes[:, 2:]) / 2,
            boxes[:, 2:] - boxes[:, :2],
            procrustes_angles(points, self.mean_shape),
        )


def cut(images, owner: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    return np.stack([warp_crop(images[o], m[:2], SIDE) for o, m in zip(owner, matrices)])


def run_refine(args: argparse.Namespace) -> None:
    import torch

    from facealign.research.data import load_mtfl, train_validation_split
    from facealign.research.hard_training import degrade
    from facealign.research.model import VanillaCNN
    from facealign.research.training import interocular_loss, mean_std_images, to_tensor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    engine = LandmarkEngine("tcnn")
    mtfl = load_mtfl(MTFL_ROOT, "train")
    rows = train_validation_split(len(mtfl))[0]
    images, truth = mtfl.load_images()[rows], mtfl.points[rows].astype(np.float64)
    centred = truth - truth.mean(1, keepdims=True)
    mean_shape = (centred / np.sqrt((centred**2).sum(2).mean(1))[:, None, None]).mean(0)
    frames = UprightFrames(engine, mean_shape)
    centre, size, angle = frames(truth)

    faces = detected_faces(MTFL_ROOT, DEFAULT_CACHE, DEFAULT_DETECTOR, "validation")
    first = from_box_coordinates(
        engine.first_pass_crops(crop_faces(faces.images, faces.boxes, faces.found)), faces.boxes
    )
    v_centre, v_size, v_angle = frames(first)
    t_centre, t_size, t_angle = frames(faces.data.points[faces.found].astype(np.float64))
    measured = (
        float(((v_centre - t_centre) / t_size[:, :1]).std()),
        float(np.log(v_size / t_size).std()),
        float((v_angle - t_angle).std()),
    )
    print(
        f"first-pass framing error on validation (centre, log size, degrees): {measured[0]:.4f}, "
        f"{measured[1]:.4f}, {np.degrees(measured[2]):.2f}"
    )
    v_mats = upright_matrices(v_centre, v_size, v_angle)
    v_crops = cut(faces.images, faces.found, v_mats)

    mean, std = mean_std_images(cut(images, np.arange(len(rows)), upright_matrices(centre, size, angle)))
    model = VanillaCNN(200, (16, 48, 128, 128))
    model.load_state_dict(torch.load(shipped_weights("vanilla"), weights_only=False)["vanilla"])

    def predict(crops: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            direct = model(to_tensor(crops, mean, std)).view(-1, NUM_POINTS, 2).double().numpy()
            flipped = model(to_tensor(crops[:, :, ::-1], mean, std)).view(-1, NUM_POINTS, 2).double().numpy()
        crop_points = 0.5 * (direct + mirror_coordinates(flipped)) * SIDE - 0.5
        return apply(np.linalg.inv(v_mats), crop_points)

    def stage(epochs: int, lr: float, p_degrade: float) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * -(-len(rows) // 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
        best, best_state = np.inf, None
        sd = np.asarray(FIRST_PASS_ERROR) * args.noise
        for epoch in range(epochs):
            model.train()
            order = rng.permutation(len(rows))
            for s in range(0, len(rows), 64):
                idx = order[s : s + 64]
                n = len(idx)
                mats = upright_matrices(
                    centre[idx] + rng.normal(0, sd[0], (n, 2)) * size[idx, :1],
                    size[idx] * np.exp(rng.normal(0, sd[1], (n, 1))),
                    angle[idx] + rng.normal(0, sd[2], n),
                )
                crops = cut(images, idx, mats)
                for i in range(n):
                    crops[i] = degrade(crops[i], rng, p_degrade, (10, 30), p_degrade, p_degrade, (20, 80), p_degrade)
                target = (apply(mats, truth[idx]) + 0.5) / SIDE
                flip = rng.random(n) < 0.5
                crops[flip], target[flip] = crops[flip, :, ::-1], mirror_coordinates(target[flip])
                crops = np.clip(
                    crops * rng.uniform(0.75, 1.25, (n, 1, 1, 1)) + rng.uniform(-20, 20, (n, 1, 1, 1)), 0, 255
                )
                loss = interocular_loss(
                    model(to_tensor(crops.astype(np.uint8), mean, std)), torch.from_numpy(target.reshape(n, -1)).float()
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            nme = float(np.mean(score_points(faces, predict(v_crops))["errors"])) * 100
            if nme < best:
                best, best_state = nme, {k: v.clone() for k, v in model.state_dict().items()}
            logger.info(f"epoch {epoch + 1}/{epochs}: validation NME {nme:.3f}% (best {best:.3f}%)")
        model.load_state_dict(best_state)
        return best

    stage(args.epochs, 5e-4, 0.1)
    stage(args.fine_tune_epochs, 2e-4, 0.0)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state": model.state_dict(), "mean": mean, "std": std, "mean_shape": mean_shape}, args.work_dir / "refine.pt"
    )
    refined = predict(v_crops)
    tcnn = engine.predict_faces(faces.images, faces.found, faces.boxes)
    out = {}
    for label, points in (
        ("refine: upright second pass", refined),
        ("refine 0.3 + tcnn 0.7", 0.3 * refined + 0.7 * tcnn),
    ):
        print(label)
        out[label] = validation_row(faces, points, command_line())
    add_rows(args.out, "validation", out)


# ----------------------------------------------------------------------------- student


def pseudo_faces(path: Path, max_p_fail: float):
    """The kept pseudo-labelled faces as 80 x 80 photos framed like MTFL's (box ~36 px)."""
    from PIL import Image

    from facealign.research.training import PreparedFaces

    labels = np.load(path)
    kept = labels["p_fail"] <= max_p_fail
    paths, boxes, points = labels["paths"][kept], labels["boxes"][kept], labels["points"][kept]
    photos = np.empty((len(paths), 80, 80, 3), np.uint8)
    new_boxes, new_points = np.empty_like(boxes), np.empty_like(points)
    image, last = None, None
    for i, (p, b, q) in enumerate(zip(paths, boxes, points)):
        if p != last:
            with Image.open(p) as im:
                image, last = np.asarray(im.convert("RGB")), p
        side = (b[2] - b[0]) * 80 / 36
        corner = (b[:2] + b[2:]) / 2 - side / 2
        scale = 80 / side
        photos[i] = warp_crop(
            image, np.array([[scale, 0, -corner[0] * scale - 0.5], [0, scale, -corner[1] * scale - 0.5]]), 80
        )
        new_boxes[i] = np.r_[(b[:2] - corner) * scale, (b[2:] - corner) * scale]
        new_points[i] = (q - corner) * scale
    logger.info(f"{len(paths)} of {len(kept)} pseudo-labelled faces kept (p_fail <= {max_p_fail})")
    return PreparedFaces(photos, new_boxes, new_points, -1 - np.arange(len(paths)))


def batch_norm_cnn(channels: tuple[int, ...], fc5: int):
    """0.5.0's layout (5x5, 3x3, 3x3, 2x2 convolutions, three 2x2 max-pools) with batch norm and ReLU."""
    from torch import nn

    def block(cin: int, cout: int, kernel: int, pool: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(cin, cout, kernel, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2, 2)] if pool else [])

    c = channels
    return nn.Sequential(
        *block(3, c[0], 5, True),
        *block(c[0], c[1], 3, True),
        *block(c[1], c[2], 3, True),
        *block(c[2], c[3], 2, False),
        nn.Flatten(),
        nn.Linear(4 * c[3], fc5),
        nn.BatchNorm1d(fc5),
        nn.ReLU(),
        nn.Linear(fc5, 2 * NUM_POINTS),
    )


def run_student(args: argparse.Namespace) -> None:
    import torch

    from facealign.constants import TRAINING_DETECTOR
    from facealign.research.model import VanillaCNN
    from facealign.research.training import (
        PreparedFaces,
        TrainConfig,
        augmented_batches,
        interocular_loss,
        load_train_validation,
        one_pass_validation,
        run_epochs,
        to_tensor,
    )

    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, val = load_train_validation(MTFL_ROOT, DEFAULT_CACHE, TRAINING_DETECTOR, None)
    if args.pseudo_labels:
        extra = pseudo_faces(args.pseudo_labels, args.max_p_fail)
        train = PreparedFaces(
            *(np.concatenate([getattr(train, f.name), getattr(extra, f.name)]) for f in fields(train))
        )
    shipped = torch.load(shipped_weights("vanilla"), weights_only=False)
    mean, std = shipped["mean"], shipped["std"]
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, channels=(16, 48, 128, 128), fc5_dim=200)
    if args.batch_norm:
        model = batch_norm_cnn(tuple(int(c) for c in args.batch_norm.split(",")), 256)
    else:
        model = VanillaCNN(cfg.fc5_dim, cfg.channels)
        model.load_state_dict(shipped["vanilla"])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr * 0.01)
    rng = np.random.default_rng(1)
    val_x = to_tensor(crop_faces(val.images, val.boxes), mean, std)
    n = len(train.index)
    validate = one_pass_validation(model, val_x, val)
    start = validate()["val_nme"]
    settings = {**asdict(cfg), "pseudo_labels": str(args.pseudo_labels), "batch_norm": args.batch_norm}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    best, best_epoch, _, _ = run_epochs(
        model,
        opt,
        sched,
        rng,
        args.epochs,
        augmented_batches(train, cfg, mean, std),
        interocular_loss,
        validate,
        args.work_dir / "checkpoint.pt",
        settings,
        n,
    )
    label = "student: " + (
        f"batch norm {args.batch_norm}, from scratch"
        if args.batch_norm
        else "fine-tuned on pseudo-labels too"
        if args.pseudo_labels
        else "fine-tuned (control)"
    )
    print(f"{label}: one-pass validation NME {best:.3f}% at epoch {best_epoch} (start {start:.3f}%)")
    add_rows(
        args.out,
        "training_runs",
        {
            label: {
                "command": command_line(),
                "faces": n,
                "start_nme": start,
                "best_nme": best,
                "best_epoch": best_epoch,
            }
        },
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    sub = ap.add_subparsers(dest="probe", required=True)
    teacher = sub.add_parser("teacher")
    teacher.add_argument("--write-labels", type=Path, help="also label celeba_wild and LFW photos into this .npz")
    teacher.add_argument("--lfw", type=int, default=7000, help="LFW photos to label (default 7000)")
    refine = sub.add_parser("refine")
    refine.add_argument("--work-dir", type=Path, required=True)
    refine.add_argument("--epochs", type=int, default=30)
    refine.add_argument("--fine-tune-epochs", type=int, default=15)
    refine.add_argument("--noise", type=float, default=1.3, help="framing noise, times the first pass's (default 1.3)")
    student = sub.add_parser("student")
    student.add_argument("--work-dir", type=Path, required=True)
    student.add_argument("--pseudo-labels", type=Path)
    student.add_argument("--max-p-fail", type=float, default=0.05)
    student.add_argument(
        "--batch-norm", help="channels of a batch-norm network trained from scratch, e.g. 16,48,128,128"
    )
    student.add_argument("--epochs", type=int, default=40)
    student.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    {"teacher": run_teacher, "refine": run_refine, "student": run_student}[args.probe](args)


if __name__ == "__main__":
    main()
