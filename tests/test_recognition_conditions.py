"""Tests of the hard conditions and the detector aligner (issue 26): the fitted layout of a
detector's points, low-resolution probes, cross-pose protocols, and the CLI's guard rails
(the missing extra, a protocol too small for a FAR).

The tests on real photos use ../shared (MTFL's LFW faces with ground-truth eyes, a few
celeba_wild people) with the dlib detector and dlib-ert; the others are synthetic.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facealign.alignment import estimate_similarity, get_template
from recognition.aligners import DetectorAligner, choose_face_boxes, get_aligner
from recognition.caches import DetectionCache
from recognition.cli import _size_warnings, main
from recognition.conditions import (
    ReferenceLandmarks,
    probe_reduction,
    reference_landmarks,
    yaw_from_68,
)
from recognition.dlib_resnet import DETECTOR_CHIP_POINTS, DLIB_CHIP_POINTS, detector_template, mean_chip_points
from recognition.protocol import make_protocol, read_protocol

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recognition"


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


# --------------------------------------------------------------------------- the detector's layout


def test_fitted_detector_layout_round_trip() -> None:
    """Points placed at a known chip layout (plus noise) in random faces: the least-squares fit gives the
    layout back (0.5 px), and aligning a face's detector points onto the layout carried into another
    template puts the face where aligning its true MTFL points there would (1e-6 px)."""
    rng = np.random.default_rng(0)
    layout = DETECTOR_CHIP_POINTS["retinaface"]
    matrices, detector_points, true_points = [], [], []
    for _ in range(400):
        angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(0.5, 3.0)
        chip_to_image = np.array(
            [
                [scale * np.cos(angle), -scale * np.sin(angle), rng.uniform(0, 500)],
                [scale * np.sin(angle), scale * np.cos(angle), rng.uniform(0, 500)],
            ]
        )
        matrices.append(_invert(chip_to_image))
        detector_points.append(_apply(chip_to_image, layout + rng.normal(0, 2.0, (5, 2))))
        true_points.append(_apply(chip_to_image, DLIB_CHIP_POINTS))
    fitted, rms = mean_chip_points(np.stack(matrices), np.stack(detector_points))
    assert np.abs(fitted - layout).max() < 0.5
    assert np.all(np.abs(rms - 2.0 * np.sqrt(2)) < 0.4)  # 2 px per axis

    loose = get_template("loose", 112)
    carried = detector_template(layout, loose, "retinaface")
    noiseless = _apply(_invert(matrices[0]), layout)
    by_detector = estimate_similarity(noiseless, carried.points)
    by_truth = estimate_similarity(true_points[0], loose.points)
    assert np.allclose(by_detector, by_truth, atol=1e-6)
    # In the chip the layout was measured in, the carried template is the layout itself.
    chip = get_template(carried.__class__("dlib-chip", DLIB_CHIP_POINTS, (150, 150)), None)
    assert np.allclose(detector_template(layout, chip, "retinaface").points, layout, atol=1e-9)


def test_shipped_retinaface_layout_is_the_documented_fit(tmp_path: Path) -> None:
    """The constant is the fit stored in docs/recognition/retinaface_chip_template.json, and
    'detector:retinaface=FIT.json' reads the same layout back."""
    fit_path = DOCS / "retinaface_chip_template.json"
    fit = json.loads(fit_path.read_text())
    assert fit["detector"] == "retinaface" and fit["faces"] >= 1000
    assert np.allclose(fit["points"], DETECTOR_CHIP_POINTS["retinaface"], atol=1e-4)
    template = get_template("loose", 112)
    named = get_aligner("retinaface", template, images_root=tmp_path, cache_dir=tmp_path)
    from_file = get_aligner(f"detector:retinaface={fit_path}", template, images_root=tmp_path, cache_dir=tmp_path)
    assert isinstance(named, DetectorAligner) and isinstance(from_file, DetectorAligner)
    assert np.allclose(named.point_template.points, from_file.point_template.points, atol=1e-3)
    assert named.key == from_file.key  # same layout, same detections: same features
    with pytest.raises(ValueError, match="bench/detector_chip_template.py"):
        get_aligner("detector:haar", template, images_root=tmp_path, cache_dir=tmp_path)


# --------------------------------------------------------------------------- low resolution


def _reference_with_iod(files: dict[str, tuple[float, float, float]]) -> ReferenceLandmarks:
    """68-point shapes whose eye centres are at (x, y) and (x + iod, y)."""
    points = {}
    for name, (x, y, iod) in files.items():
        shape = np.zeros((68, 2))
        shape[36:42] = (x, y)
        shape[42:48] = (x + iod, y)
        points[name] = shape
    return ReferenceLandmarks("synthetic", points)


@pytest.mark.parametrize("target", [16, 24, 32])
def test_probe_reduction_hits_the_target_iod(tmp_path: Path, target: int) -> None:
    """A reduced image's face has the target inter-ocular distance within 10% (here within 1%:
    only the rounding of the image side); a face already smaller is left as it is."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), np.uint8)).save(tmp_path / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), np.uint8)).save(tmp_path / "small.png")
    reference = _reference_with_iod({"big.jpg": (400.0, 300.0, 137.0), "small.png": (40.0, 30.0, 10.0)})
    reduction = probe_reduction(target, reference, ["big.jpg", "small.png"])
    image, scale = reduction.read(tmp_path, "big.jpg")
    assert abs(137.0 * scale - target) <= 0.1 * target
    assert abs(137.0 * scale - target) <= 0.01 * target
    assert image.shape[1] == pytest.approx(1200 * scale, abs=1)
    small, small_scale = reduction.read(tmp_path, "small.png")
    assert small_scale == 1.0 and small.shape == (90, 120, 3)
    assert reduction.summary()["already_small"] == 1 and f"iod{target}" in reduction.key


def test_probe_reduction_on_real_faces(shared_datasets: Path, tmp_path: Path) -> None:
    """On faces with ground-truth eyes (MTFL's 80 x 80 photos, about 19 px between the eyes), the
    reduction chosen from dlib-ert's eyes brings the true inter-ocular distance to the target (12 px)
    within 10%, and the detector still finds most faces on the reduced image (boxes back in original
    pixels, IoU >= 0.5 with the full-resolution box)."""
    mtfl = shared_datasets / "mtfl"
    rows = [line.split() for line in (mtfl / "train.txt").read_text().splitlines() if line.startswith("net_7876/")]
    rows = rows[:: max(1, len(rows) // 8)][:8]
    files = [r[0] for r in rows]
    true_iod = {r[0]: float(np.hypot(float(r[2]) - float(r[1]), float(r[7]) - float(r[6]))) for r in rows}
    detections = DetectionCache(mtfl, "dlib", tmp_path)
    faces = choose_face_boxes(detections.ensure(files))
    assert all(faces.sources[f] == "detector" for f in files)
    reference = reference_landmarks(files, mtfl, faces.boxes, tmp_path, detections.key)
    target = 12
    reduction = probe_reduction(target, reference, files)
    for f in files:
        _, scale = reduction.read(mtfl, f)
        assert scale < 1
        assert abs(true_iod[f] * scale - target) <= 0.1 * target, (f, true_iod[f] * scale)
    reduced = DetectionCache(mtfl, "dlib", tmp_path, reduction)
    assert reduced.key != detections.key and reduction.key in reduced.path.name
    probe_faces = choose_face_boxes(reduced.ensure(files), faces.boxes)
    found = [f for f in files if probe_faces.sources[f] == "detector"]
    assert len(found) >= len(files) // 2
    for f in found:
        a, b = probe_faces.boxes[f], faces.boxes[f]
        inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        assert inter / union >= 0.5


# --------------------------------------------------------------------------- pose


def test_yaw_from_68_cylinder_model() -> None:
    """Nose midway between the jaw ends: 0 degrees; moved by R sin(30 deg) towards the image right: +30."""
    shape = np.zeros((68, 2))
    shape[36:42] = (-30.0, 0.0)
    shape[42:48] = (30.0, 0.0)
    shape[0], shape[16] = (-60.0, 5.0), (60.0, 5.0)
    shape[30] = (0.0, 40.0)
    assert abs(float(yaw_from_68(shape))) < 1e-9
    shape[30] = (60.0 * np.sin(np.radians(30)), 40.0)
    assert float(yaw_from_68(shape)) == pytest.approx(30.0, abs=1e-6)
    shape[30] = (-60.0 * np.sin(np.radians(30)), 40.0)
    assert float(yaw_from_68(shape)) == pytest.approx(-30.0, abs=1e-6)


def _metadata_rows(protocol: Path, k: int) -> list[dict[str, str]]:
    with (protocol / f"split{k}" / f"verify_metadata_{k}.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_cross_pose_protocol_pairs_templates_of_different_yaw_bins(tmp_path: Path) -> None:
    """Every comparison (genuine and impostor) joins templates of different |yaw| bins; templates hold
    one bin; the yaw written is the one given; all cross-bin genuine pairs are there."""
    rng = np.random.default_rng(3)
    items, yaw = [], {}
    for subject in range(12):
        for n in range(9):
            path = f"s{subject}/{n}.jpg"
            items.append((path, str(subject)))
            yaw[path] = float(rng.choice([-1, 1]) * rng.uniform(0, 60))
    yaw["s0/0.jpg"] = -22.25
    out = tmp_path / "protocol"
    summary = make_protocol(items, out, n_splits=2, seed=0, yaw=yaw, yaw_bins=(15, 30))
    assert summary["cross_pose"]["bin_labels"] == ["0-15", "15-30", "30-90"]
    protocol = read_protocol(out)
    for split in protocol.splits:
        bins = {}
        for tid, rows in split.templates.items():
            labels = {r.extra["YAW_BIN"] for r in rows}
            assert len(labels) == 1
            bins[tid] = labels.pop()
            for r in rows:
                assert float(r.extra["YAW"]) == pytest.approx(yaw[r.file], abs=0.051)
                expected = "0-15" if abs(yaw[r.file]) < 15 else "15-30" if abs(yaw[r.file]) < 30 else "30-90"
                assert bins[tid] == expected
        for a, b in split.comparisons:
            assert bins[int(a)] != bins[int(b)]
        subject_of = {tid: rows[0].subject_id for tid, rows in split.templates.items()}
        cross_genuine = sum(
            1 for a in bins for b in bins if a < b and subject_of[a] == subject_of[b] and bins[a] != bins[b]
        )
        assert int(split.genuine.sum()) == cross_genuine > 0
        assert int((~split.genuine).sum()) > 0
    # Without a yaw the protocol is the plain one (no YAW columns).
    plain = make_protocol(items, tmp_path / "plain", n_splits=1, seed=0)
    assert "cross_pose" not in plain and "YAW" not in _metadata_rows(tmp_path / "plain", 1)[0]


def test_cross_pose_cli_uses_only_the_reference_aligner(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make-protocol --cross-pose takes the yaw from dlib-ert's 68 points on the dlib box (recomputed
    here independently), and never builds an aligner under test."""
    from facealign.research.peers import DlibShapePredictor
    from recognition import aligners as aligners_module

    def forbidden(*args, **kwargs):
        raise AssertionError("make-protocol must not build an aligner under test")

    monkeypatch.setattr(aligners_module, "get_aligner", forbidden)
    monkeypatch.setattr(aligners_module.LandmarkAligner, "from_name", forbidden)
    monkeypatch.setattr("facealign.engine.LandmarkEngine.__init__", forbidden)

    celeba = shared_datasets / "celeba_wild"
    by_person: dict[str, list[str]] = defaultdict(list)
    for line in (celeba / "identities.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            image, person = line.split()
            by_person[person].append(image)
    people = sorted(p for p, images in by_person.items() if len(images) >= 6)[:6]
    root = tmp_path / "images"
    root.mkdir()
    lines = []
    for person in people:
        for image in sorted(by_person[person])[:6]:
            os.symlink(celeba / "images" / image, root / image)
            lines.append(f"{image} {person}")
    identities = tmp_path / "identities.txt"
    identities.write_text("\n".join(lines) + "\n")
    out = tmp_path / "protocol"
    cache = tmp_path / "cache"
    args = ["make-protocol", identities, "--images-root", root, "--splits", 2, "--out", out]
    args += ["--cross-pose", "--yaw-bins", "10", "--cache-dir", cache]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "protocol.json").read_text())
    assert summary["cross_pose"]["reference"] == "dlib-ert" and summary["cross_pose"]["yaw_bins"] == [10.0]

    records = DetectionCache(root, "dlib", cache).load()
    predictor = DlibShapePredictor()
    rows = _metadata_rows(out, 1)
    assert rows
    for row in rows:
        box = records[row["FILE"]].boxes[0]
        image = np.asarray(Image.open(root / row["FILE"]).convert("RGB"))
        expected = float(yaw_from_68(predictor.predict68(image, box[None])[0]))
        assert float(row["YAW"]) == pytest.approx(expected, abs=0.051)
        assert row["YAW_BIN"] == ("0-10" if abs(expected) < 10 else "10-90")


# --------------------------------------------------------------------------- guard rails


@pytest.mark.parametrize(
    ("module", "reimported", "command"),
    [
        ("torch", ("recognition.backbone", "recognition.training"), "train"),
        ("sklearn", ("recognition.matching", "recognition.evaluate"), "compare-aligners"),
    ],
)
def test_missing_extra_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, reimported: tuple[str, ...], command: str
) -> None:
    """Without a module of the recognition extra, a command says which extra to install, in one line."""
    monkeypatch.setitem(sys.modules, module, None)  # import MODULE -> ModuleNotFoundError
    for loaded in [name for name in sys.modules if name.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, loaded)  # else `from MODULE.sub import x` finds it cached
    for name in reimported:
        monkeypatch.delitem(sys.modules, name, raising=False)
    samples = tmp_path / "samples.txt"
    samples.write_text("a.jpg 1\n")
    args = {
        "train": ["train", "--samples", str(samples), "--out", str(tmp_path / "x.pt")],
        "compare-aligners": ["compare-aligners", "--protocol", str(tmp_path), "--images-root", str(tmp_path)],
    }[command] + (["--out", str(tmp_path / "out")] if command == "compare-aligners" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "'recognition' extra" in lines[0] and repr(module) in lines[0]
    assert "pip install 'facealign[recognition]'" in lines[0]


def test_protocol_too_small_for_a_far_is_warned() -> None:
    """Fewer impostor comparisons per split than 10 / FAR: a warning names those FARs."""
    small = _size_warnings({"protocol_sizes": {"mean": {"impostor": 4796.0}}})
    assert len(small) == 1 and "1e-03" in small[0] and "1e-02" not in small[0] and "10000" in small[0]
    tiny = _size_warnings({"protocol_sizes": {"mean": {"impostor": 150.0}}})
    assert "1e-03, 1e-02" in tiny[0]
    assert _size_warnings({"protocol_sizes": {"mean": {"impostor": 10000.0}}}) == []
