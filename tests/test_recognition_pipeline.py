"""Tests of the recognition pipeline (caches, aligners, backbones, features, evaluate, report),
recognition.lfw and the ``recognition`` CLI.

The end-to-end tests run the real detector and landmark engines on a small
celeba_wild subset (10 people, 4 photos each, plus one blank image) with a
tiny random-init AlexNet: they check the plumbing and the reports, not the
accuracy.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from facealign.alignment import get_template, transform_points
from recognition.aligners import (
    BOX_MEAN_SHAPE,
    LandmarkAligner,
    box_alignment_matrix,
    choose_face_box,
    choose_face_boxes,
    read_landmark_manifest,
)
from recognition.backbone import AlexNet, AlexNetBackbone, AlexNetConfig, export_backbone, save_alexnet
from recognition.caches import DetectionCache, DetectionRecord
from recognition.cli import main
from recognition.face_inputs import FaceInput
from recognition.lfw import lfw_accuracy
from recognition.report import format_tar

N_PEOPLE = 10
PER_PERSON = 4
BLANK = "blank.png"


def record(file: str, boxes: list[list[float]], size: tuple[float, float] = (200.0, 100.0)) -> DetectionRecord:
    return DetectionRecord(file, size, np.asarray(boxes, np.float64).reshape(-1, 4), np.ones(len(boxes)))


# --------------------------------------------------------------------------- unit tests (no data)


def test_choose_face_box_rules() -> None:
    big, small = [10, 10, 90, 90], [120, 20, 150, 50]
    box, source = choose_face_box(record("a.jpg", [big, small]))
    assert source == "detector" and box.tolist() == big  # detections come largest first
    # A protocol box selects the detection it overlaps (IoU >= 0.3) ...
    box, source = choose_face_box(record("a.jpg", [big, small]), protocol_box=(118, 18, 152, 52))
    assert source == "detector" and box.tolist() == small
    # ... but not one it barely touches.
    box, _ = choose_face_box(record("a.jpg", [big, small]), protocol_box=(140, 40, 190, 90))
    assert box.tolist() == big
    box, source = choose_face_box(record("a.jpg", []), protocol_box=(1, 2, 30, 40))
    assert source == "protocol" and box.tolist() == [1, 2, 30, 40]
    box, source = choose_face_box(record("a.jpg", []))
    assert source == "image" and box.tolist() == [-0.5, -0.5, 199.5, 99.5]

    faces = choose_face_boxes(
        {"a": record("a", [big, small]), "b": record("b", []), "c": record("c", [])}, {"b": (0, 0, 10, 10)}
    )
    assert faces.counts() == {"images": 3, "detector": 1, "protocol": 1, "image": 1, "multiple_faces": 1}
    broken = DetectionRecord("d.jpg", (0, 0), np.zeros((0, 4)), np.zeros(0), error="truncated")
    with pytest.raises(ValueError, match="could not be read"):
        choose_face_boxes({"d.jpg": broken})


def test_detection_cache_is_keyed_by_the_detector_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed detector setting misses the cache (no stale boxes); the same settings hit it."""
    from facealign.detection import DETECTORS
    from facealign.detection.base import Detections

    calls: list[float] = []

    class Fake:
        def __init__(self, threshold: float = 0.5) -> None:
            self.threshold = threshold

        def detect(self, image: np.ndarray) -> Detections:
            calls.append(self.threshold)
            h, w = image.shape[:2]
            box = [w * self.threshold / 4, h / 4, w * 3 / 4, h * 3 / 4]  # the boxes depend on the setting
            return Detections(np.array([box], np.float32), np.array([0.9], np.float32))

    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(root / name)
    monkeypatch.setitem(DETECTORS, "fake", Fake)
    first = DetectionCache(root, "fake", tmp_path / "cache")
    boxes = {f: r.boxes for f, r in first.ensure(["a.png", "b.png"]).items()}
    assert calls == [0.5, 0.5] and first.path.is_file()
    assert first.path.name.startswith("detections-fake-") and first.path.name.endswith(".jsonl")
    same = DetectionCache(root, "fake", tmp_path / "cache")
    assert same.path == first.path
    assert {f: r.boxes.tolist() for f, r in same.ensure(["a.png", "b.png"]).items()} == {
        f: b.tolist() for f, b in boxes.items()
    }
    assert calls == [0.5, 0.5]  # served from the cache
    monkeypatch.setitem(DETECTORS, "fake", lambda **kwargs: Fake(threshold=0.25, **kwargs))
    changed = DetectionCache(root, "fake", tmp_path / "cache")
    assert changed.path != first.path and changed.load() == {}
    records = changed.ensure(["a.png", "b.png"])
    assert calls == [0.5, 0.5, 0.25, 0.25]  # detected again with the new setting
    assert records["a.png"].boxes[0, 0] != boxes["a.png"][0, 0]
    assert first.path.is_file() and len(first.load()) == 2  # the old settings' boxes stay under their own key


def test_detection_record_json_round_trip() -> None:
    rec = record("x/y.jpg", [[1.25, 2.5, 30.125, 40.0]])
    back = DetectionRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert back.file == rec.file and back.size == rec.size and back.error is None
    np.testing.assert_allclose(back.boxes, rec.boxes, atol=1e-3)


def test_box_alignment_maps_mean_shape_onto_template() -> None:
    template = get_template("loose", 112)
    for box in ([40.0, 30.0, 140.0, 130.0], [0.0, 0.0, 60.0, 90.0]):
        matrix = box_alignment_matrix(box, template)
        assert matrix[0, 1] == 0 and matrix[1, 0] == 0 and matrix[0, 0] == matrix[1, 1] > 0  # scale + shift
        x1, y1, x2, y2 = box
        side = np.sqrt((x2 - x1) * (y2 - y1))
        corner = np.array([(x1 + x2 - side) / 2, (y1 + y2 - side) / 2])
        mapped = transform_points(matrix, corner + BOX_MEAN_SHAPE * side)
        # The mean shape is not exactly the template's shape; it fits within a few pixels of 112.
        assert np.abs(mapped - template.points).max() < 4.0
        # The square box is centred horizontally and covers about 60% of the crop width
        # (the loose template leaves room for hair, ears and chin).
        centre = transform_points(matrix, [[(x1 + x2) / 2, (y1 + y2) / 2]])[0]
        assert abs(centre[0] - 55.5) < 2
        assert 0.5 < matrix[0, 0] * side / 112 < 0.75
    with pytest.raises(ValueError):
        box_alignment_matrix([5, 5, 5, 10], template)


def test_read_landmark_manifest_shapes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "sub/c.jpg", "d.jpg"):
        (root / name).write_bytes(b"")
    pts = np.arange(10, dtype=float).reshape(5, 2) + 20
    lines = [
        # facealign landmarks --json, absolute path, two faces
        {
            "image": str(root / "a.jpg"),
            "faces": [
                {"box": [0, 0, 9, 9], "score": 1.0, "landmarks": pts.tolist()},
                {"box": [0, 0, 9, 9], "score": 0.5, "landmarks": (pts + 100).tolist()},
            ],
        },
        {"image": str(root / "d.jpg"), "error": "unreadable image: truncated"},
        {"image": str(root / "e.jpg"), "faces": []},
        # facealign crop manifest rows (relative "source", face rank given; out of order)
        {"source": "sub/c.jpg", "face": 1, "landmarks": (pts + 7).tolist(), "box": [0, 0, 1, 1]},
        {"source": "sub/c.jpg", "face": 0, "landmarks": (pts + 5).tolist(), "box": [0, 0, 1, 1]},
        # the simple shape
        {"image": "b.jpg", "landmarks": (pts + 1).tolist()},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    points = read_landmark_manifest(manifest, root)
    assert sorted(points) == ["a.jpg", "b.jpg", "d.jpg", "e.jpg", "sub/c.jpg"]
    assert len(points["a.jpg"]) == 2 and np.array_equal(points["a.jpg"][1], pts + 100)
    assert points["d.jpg"] == [] and points["e.jpg"] == []
    assert [p[0, 0] for p in points["sub/c.jpg"]] == [25.0, 27.0]  # sorted by face rank
    assert np.array_equal(points["b.jpg"][0], pts + 1)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.jpg", "landmarks": [[1, 2]] * 4}) + "\n")
    with pytest.raises(ValueError, match="5 finite"):
        read_landmark_manifest(bad, root)
    bad.write_text(json.dumps({"image": "a.jpg"}) + "\n")
    with pytest.raises(ValueError, match="no 'landmarks'"):
        read_landmark_manifest(bad, root)


def tiny_backbone(path: Path, input_size: int = 64, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = AlexNet(AlexNetConfig(num_classes=3, input_size=input_size, width=0.125))
    save_alexnet(path, model, mean=[0.5, 0.45, 0.4], std=[0.25, 0.25, 0.25], extra={"epoch": 1})
    return path


def test_export_backbone_half_without_classifier(tmp_path: Path) -> None:
    ckpt = tiny_backbone(tmp_path / "ckpt.pt")
    info = export_backbone(ckpt, tmp_path / "small.pt")
    assert info["half"] and not info["classifier"]
    assert info["bytes"] < 0.6 * ckpt.stat().st_size
    full, small = AlexNetBackbone.load(ckpt), AlexNetBackbone.load(tmp_path / "small.pt")
    assert small.model.config.num_classes == 1
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    a, b = full.embed(crops), small.embed(crops)
    assert np.abs(a - b).max() <= 2e-3 * max(1.0, float(np.abs(a).max()))  # float16 storage error


def test_lfw_accuracy_on_synthetic_pairs(tmp_path: Path) -> None:
    """10 folds of 2 matched + 2 mismatched pairs; identical features for a person -> 100%."""
    lines, people = ["10 2"], []
    for fold in range(10):
        a, b, c = f"P{fold}a", f"P{fold}b", f"P{fold}c"
        people += [a, b, c]
        lines += [f"{a} 1 2", f"{b} 1 2", f"{a} 1 {c} 1", f"{b} 2 {c} 1"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(1)
    centre = {p: rng.random(64) for p in people}

    def features(files: list[str]) -> np.ndarray:
        return np.stack([centre[Path(f).parent.name] + 0.01 * rng.random(64) for f in files])

    accuracy, info = lfw_accuracy(features, pairs)
    assert info["pairs"] == 40 and len(info["pca_components"]) == 10
    assert accuracy.mean == 1.0 and len(accuracy.accuracies) == 10


def test_format_tar() -> None:
    assert format_tar(0.718, 0.0123) == ".718 ± .01"
    assert format_tar(1.0, 0.0) == "1.000 ± .00"


# --------------------------------------------------------------------------- end to end (real images)


@pytest.fixture(scope="module")
def bench(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small image root (symlinks to celeba_wild + one blank image), its list, a tiny backbone."""
    celeba = shared_datasets / "celeba_wild"
    by_person: dict[str, list[str]] = defaultdict(list)
    for line in (celeba / "identities.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            image, person = line.split()
            by_person[person].append(image)
    people = sorted(p for p, images in by_person.items() if len(images) >= PER_PERSON)[:N_PEOPLE]
    base = tmp_path_factory.mktemp("recognition")
    root = base / "images"
    root.mkdir()
    rows = []
    for person in people:
        for image in sorted(by_person[person])[:PER_PERSON]:
            os.symlink(celeba / "images" / image, root / image)
            rows.append(f"{image} {person}")
    Image.new("RGB", (160, 120), (120, 130, 140)).save(root / BLANK)
    rows.append(f"{BLANK} {people[0]}")
    identities = base / "identities.txt"
    identities.write_text("# image identity\n" + "\n".join(rows) + "\n")
    return {
        "base": base,
        "root": root,
        "identities": identities,
        "backbone": tiny_backbone(base / "tiny.pt"),
        "cache": base / "cache",
    }


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def protocol(bench: dict[str, Path]) -> Path:
    out = bench["base"] / "protocol"
    invoke(
        ["make-protocol", bench["identities"], "--images-root", bench["root"], "--splits", 3, "--seed", 1, "--out", out]
    )
    return out


def test_make_protocol_cli(protocol: Path, bench: dict[str, Path]) -> None:
    summary = json.loads((protocol / "protocol.json").read_text())
    assert summary["images_root"] == str(bench["root"].resolve())
    assert summary["n_splits"] == 3 and summary["images"] == N_PEOPLE * PER_PERSON + 1
    assert sorted(p.name for p in protocol.iterdir() if p.is_dir()) == ["split1", "split2", "split3"]
    # A listed image that does not exist is a user error.
    bad = bench["base"] / "bad.txt"
    bad.write_text("missing.jpg 1\nother.jpg 2\n")
    result = CliRunner().invoke(
        main, ["make-protocol", str(bad), "--images-root", str(bench["root"]), "--out", str(bench["base"] / "bad")]
    )
    assert result.exit_code != 0 and "not found" in result.output


def test_compare_aligners_end_to_end(protocol: Path, bench: dict[str, Path]) -> None:
    out = bench["base"] / "compare"
    text = invoke(
        [
            "compare-aligners",
            "--protocol",
            protocol,
            "--aligners",
            "box,tcnn",
            "--out",
            out,
            "--backbone",
            bench["backbone"],
            "--cache-dir",
            bench["cache"],
            "--beta",
            0,
            "--beta",
            10,
            "--bootstrap",
            20,
            "--quiet",
        ]
    )
    assert "| TAR @ | box | tcnn |" in text
    table = json.loads((out / "table.json").read_text())
    assert [a["aligner"] for a in table["aligners"]] == ["box", "tcnn"]
    for entry in table["aligners"]:
        assert entry["betas"] == [0.0, 10.0]
        for far in ("1e-03", "1e-02", "1e-01"):
            values = entry["tar_at_far"][far]["splits"]
            assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
            assert entry["tar_at_far"][far]["mean"] == pytest.approx(np.mean(values))
    assert table["face_boxes"]["images"] == N_PEOPLE * PER_PERSON + 1
    assert table["face_boxes"]["image"] >= 1  # the blank image: whole-image box
    sizes = json.loads((protocol / "protocol.json").read_text())["splits"]
    per_split = table["protocol_sizes"]["per_split"]
    assert [(s["genuine"], s["impostor"], s["test_templates"]) for s in per_split] == [
        (s["genuine"], s["impostor"], s["test_templates"]) for s in sizes
    ]
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| FAR=")]
    assert len(rows) == 3 and all(row.count("±") == 2 for row in rows)
    # One pair, three FARs: paired differences with p-values and a bootstrap interval.
    pairs = json.loads((out / "pairs.json").read_text())
    assert pairs["bootstrap_resamples"] == 20 and len(pairs["pairs"]) == 3
    for pair, far in zip(pairs["pairs"], (1e-3, 1e-2, 1e-1)):
        box_splits = table["aligners"][0]["tar_at_far"][f"{far:.0e}"]["splits"]
        tcnn_splits = table["aligners"][1]["tar_at_far"][f"{far:.0e}"]["splits"]
        assert (pair["a"], pair["b"], pair["far"]) == ("box", "tcnn", far)
        assert pair["mean"] == pytest.approx(np.mean(np.subtract(box_splits, tcnn_splits)))
        assert 0.25 <= pair["p_sign_flip"] <= 1.0  # 3 splits: the smallest exact p-value is 2/8
        assert pair["ci95"][0] <= pair["ci95"][1]
    assert text.count("| box - tcnn |") == 3
    for name in ("roc.png", "roc.json", "box/results.json", "tcnn/roc.json"):
        assert (out / name).is_file(), name
    roc = json.loads((out / "roc.json").read_text())["tcnn"]
    assert np.all(np.diff(roc["tar_mean"]) >= -1e-12) and roc["tar_mean"][-1] == pytest.approx(1.0)

    # The detections and features are cached: a second run detects nothing new and
    # reproduces the numbers.
    caches = sorted(p.name for p in bench["cache"].iterdir())
    assert sum(n.startswith("detections-dlib-") for n in caches) == 1
    assert sum(n.startswith("features-") for n in caches) == 2
    again = bench["base"] / "again"
    invoke(
        [
            "verify",
            "--protocol",
            protocol,
            "--aligner",
            "tcnn",
            "--out",
            again,
            "--backbone",
            bench["backbone"],
            "--cache-dir",
            bench["cache"],
            "--beta",
            0,
            "--beta",
            10,
            "--quiet",
        ]
    )
    result = json.loads((again / "results.json").read_text())
    assert result["tar_at_far"] == table["aligners"][1]["tar_at_far"]
    assert (again / "roc.png").stat().st_size > 1000


def test_manifest_aligner_both_shapes(protocol: Path, bench: dict[str, Path]) -> None:
    """tcnn landmarks written as manifests give the tcnn result; a missing image falls back to the box."""
    records = DetectionCache(bench["root"], "dlib", bench["cache"]).ensure(
        sorted(p.name for p in bench["root"].iterdir())
    )
    faces = choose_face_boxes(records)
    tcnn = LandmarkAligner.from_name("tcnn", get_template("loose", 64))
    from facealign.imageio import read_image

    files = sorted(records)
    inputs = [FaceInput(f, read_image(bench["root"] / f), 1.0, faces.boxes[f]) for f in files]
    points = tcnn.landmarks(inputs)
    landmarks_json = bench["base"] / "landmarks.jsonl"
    with landmarks_json.open("w") as handle:
        for f, p in zip(files, points):  # `facealign landmarks --json` shape, absolute paths
            face = {"box": faces.boxes[f].tolist(), "score": 1.0, "landmarks": p.tolist()}
            handle.write(json.dumps({"image": str(bench["root"] / f), "faces": [face]}) + "\n")
    crop_manifest = bench["base"] / "manifest.jsonl"
    with crop_manifest.open("w") as handle:
        for f, p in list(zip(files, points))[1:]:  # `facealign crop` shape; first image left out
            handle.write(
                json.dumps(
                    {
                        "source": f,
                        "face": 0,
                        "num_faces": 1,
                        "box": faces.boxes[f].tolist(),
                        "landmarks": p.tolist(),
                        "output": f"{f}_0.jpg",
                    }
                )
                + "\n"
            )

    base = [
        "--protocol",
        protocol,
        "--backbone",
        bench["backbone"],
        "--cache-dir",
        bench["cache"],
        "--quiet",
        "--beta",
        0,
        "--beta",
        10,
    ]
    invoke(["verify", "--aligner", "tcnn", "--out", bench["base"] / "v_tcnn", *base])
    invoke(["verify", "--aligner", f"manifest:{landmarks_json}", "--out", bench["base"] / "v_json", *base])
    text = invoke(["verify", "--aligner", f"manifest:{crop_manifest}", "--out", bench["base"] / "v_crop", *base])
    assert "1 images had no landmarks in the manifest" in text
    tcnn_result = json.loads((bench["base"] / "v_tcnn" / "results.json").read_text())
    json_result = json.loads((bench["base"] / "v_json" / "results.json").read_text())
    crop_result = json.loads((bench["base"] / "v_crop" / "results.json").read_text())
    assert json_result["manifest_missing"] == 0 and crop_result["manifest_missing"] == 1
    for far in ("1e-02", "1e-01"):
        np.testing.assert_allclose(
            json_result["tar_at_far"][far]["splits"], tcnn_result["tar_at_far"][far]["splits"], atol=1e-9
        )
        assert all(0 <= v <= 1 for v in crop_result["tar_at_far"][far]["splits"])


def test_cli_errors(protocol: Path, bench: dict[str, Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "verify",
            "--protocol",
            str(protocol),
            "--aligner",
            "nope",
            "--out",
            str(bench["base"] / "x"),
            "--backbone",
            str(bench["backbone"]),
        ],
    )
    assert result.exit_code != 0 and "unknown aligner 'nope'" in result.output
    result = runner.invoke(
        main,
        [
            "verify",
            "--protocol",
            str(protocol),
            "--aligner",
            "box",
            "--out",
            str(bench["base"] / "x"),
            "--backbone",
            str(bench["base"] / "none.pt"),
        ],
    )
    assert result.exit_code != 0 and "no backbone weights" in result.output
    assert runner.invoke(main, ["--version"]).output.startswith("recognition ")


def test_lfw_accuracy_cli(shared_datasets: Path, bench: dict[str, Path]) -> None:
    """A miniature LFW root (10 folds of 1 matched + 1 mismatched pair) through the CLI."""
    lfw = shared_datasets / "lfw" / "lfw-deepfunneled"
    people = sorted(p.name for p in lfw.iterdir() if len(list(p.glob("*.jpg"))) >= 2)[:20]
    root = bench["base"] / "lfw"
    lines = ["10 1"]
    for fold in range(10):
        a, b = people[2 * fold], people[2 * fold + 1]
        lines += [f"{a} 1 2", f"{a} 1 {b} 1"]
        for name, numbers in ((a, (1, 2)), (b, (1,))):
            (root / "lfw-deepfunneled" / name).mkdir(parents=True, exist_ok=True)
            for n in numbers:
                os.symlink(lfw / name / f"{name}_{n:04d}.jpg", root / "lfw-deepfunneled" / name / f"{name}_{n:04d}.jpg")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    out = bench["base"] / "lfw_out"
    text = invoke(
        [
            "lfw-accuracy",
            "--aligner",
            "box",
            "--lfw-root",
            root,
            "--out",
            out,
            "--backbone",
            bench["backbone"],
            "--cache-dir",
            bench["cache"],
            "--quiet",
        ]
    )
    assert "caveat" in text
    result = json.loads((out / "lfw_accuracy.json").read_text())
    assert result["pairs"] == 20 and result["images"] == 30 and len(result["folds"]) == 10
    assert all(acc in (0.0, 0.5, 1.0) for acc in result["folds"])  # two pairs per fold
    assert result["mean"] == pytest.approx(np.mean(result["folds"]))


def test_feature_cache_key_changes_with_every_setting(
    bench: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features are cached per (aligner and template, backbone weights, detector and its settings, image root)."""
    from facealign.detection import DETECTORS
    from recognition.aligners import BoxAligner
    from recognition.backbones import load_backbone
    from recognition.features import feature_cache_path

    alexnet = load_backbone(bench["backbone"])
    other_weights = load_backbone(tiny_backbone(tmp_path / "other.pt", seed=1))
    box = BoxAligner(get_template("loose", 64))
    detections = DetectionCache(bench["root"], "dlib", tmp_path)
    reference = feature_cache_path(tmp_path, box, alexnet, detections)
    assert reference == feature_cache_path(
        tmp_path, BoxAligner(get_template("loose", 64)), alexnet, DetectionCache(bench["root"], "dlib", tmp_path)
    )
    variants = [
        feature_cache_path(tmp_path, BoxAligner(get_template("arcface", 64)), alexnet, detections),
        feature_cache_path(tmp_path, box, other_weights, detections),
        feature_cache_path(tmp_path, box, alexnet, DetectionCache(bench["root"], "dlib-fast", tmp_path)),
        feature_cache_path(tmp_path, box, alexnet, DetectionCache(bench["base"], "dlib", tmp_path)),
    ]
    original = DETECTORS["dlib"]

    def upsampling_dlib(**kwargs):  # the same detector name with another setting
        detector = original(**kwargs)
        detector.upsample += 1
        return detector

    monkeypatch.setitem(DETECTORS, "dlib", upsampling_dlib)
    variants.append(feature_cache_path(tmp_path, box, alexnet, DetectionCache(bench["root"], "dlib", tmp_path)))
    assert len({reference, *variants}) == len(variants) + 1


def test_compare_aligners_dlib_resnet(protocol: Path, bench: dict[str, Path]) -> None:
    """--backbone dlib-resnet with dlib's own aligners: 150 px chips, 128-D features, a real table."""
    try:
        from recognition.dlib_resnet import dlib_resnet_model_path

        dlib_resnet_model_path()
    except ImportError as exc:
        pytest.skip(f"dlib models absent: {exc}")
    out = bench["base"] / "compare_dlib"
    text = invoke(
        [
            "compare-aligners",
            "--protocol",
            protocol,
            "--aligners",
            "dlib-5pt,dlib-ert",
            "--out",
            out,
            "--backbone",
            "dlib-resnet",
            "--cache-dir",
            bench["cache"],
            "--bootstrap",
            10,
            "--quiet",
        ]
    )
    assert "backbone dlib-resnet" in text and "| dlib-5pt - dlib-ert |" in text
    table = json.loads((out / "table.json").read_text())
    assert table["backbone"]["name"] == "dlib-resnet" and table["backbone"]["input_size"] == 150
    assert table["backbone"]["template"] == "dlib-chip"
    for entry in table["aligners"]:
        assert entry["splits"][0]["pca_components"] <= 128  # capped by the descriptor's dimension
        # A real face model on 10 people: far better than chance (TAR = FAR) at FAR 1e-1.
        assert entry["tar_at_far"]["1e-01"]["mean"] > 0.5
    caches = [p.name for p in bench["cache"].iterdir() if p.name.startswith("features-dlib-5pt-")]
    assert len(caches) == 1 and "dlib-resnet-" in caches[0]
