"""The crop batch job (:mod:`facealign.batch`): resuming, interruption, parallel runs, records."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import Stop, photo_folder, stop_after

from facealign.batch import CropJobError, CropSettings, get_aligner, run_crop_job
from facealign.batch.locks import _Lock
from facealign.batch.records import CSV_COLUMNS
from facealign.pipeline import iter_image_faces


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def crop_keys(rows: list[dict]) -> Counter:
    return Counter((r["source"], r["face"], r["output"]) for r in rows)


@pytest.fixture()
def small_input(face_photos, tmp_path) -> Path:
    """Five images: three one-face photos, a two-face photo, a blank one (no face)."""
    return photo_folder(face_photos, tmp_path / "in", blank=True)


@pytest.fixture()
def reference(small_input, tmp_path) -> list[dict]:
    """Manifest rows of one uninterrupted run."""
    summary = run_crop_job(small_input, tmp_path / "ref", jobs=1)
    assert (summary.images, summary.processed, summary.faces, summary.failures) == (5, 5, 5, 1)
    return read_jsonl(tmp_path / "ref" / "manifest.jsonl")


def test_interrupted_job_resumes_with_each_crop_once(small_input, reference, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run_crop_job(small_input, out, jobs=1, chunk_size=1, progress=stop_after(2))
    first = read_jsonl(out / "manifest.jsonl")
    assert len({r["source"] for r in first}) == 2
    # Simulate a kill in the middle of the last record: its crop is on disk, unrecorded.
    text = (out / "manifest.jsonl").read_text(encoding="utf-8")
    last = text.rstrip("\n").rpartition("\n")[2]
    (out / "manifest.jsonl").write_text(text[: len(text) - len(last) // 2 - 1], encoding="utf-8")
    summary = run_crop_job(small_input, out, jobs=1, chunk_size=1)
    assert (summary.skipped, summary.processed) == (1, 4)
    rows = read_jsonl(out / "manifest.jsonl")
    assert crop_keys(rows) == crop_keys(reference)
    assert max(crop_keys(rows).values()) == 1
    ref = {(r["source"], r["face"]): r for r in reference}
    for r in rows:
        np.testing.assert_allclose(r["box"], ref[r["source"], r["face"]]["box"], atol=0.01)
    assert [f["source"] for f in read_jsonl(out / "failures.jsonl")] == ["b/blank.png"]


def test_a_file_named_like_a_crop_that_the_job_did_not_write_is_kept(small_input, reference, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run_crop_job(small_input, out, jobs=1, chunk_size=1, progress=stop_after(2))
    # A file of the user's where the killed run would have written (its folder was planned).
    (out / "a" / "000149_0.jpg").write_bytes(b"the user's, unrecorded")
    summary = run_crop_job(small_input, out, jobs=1, chunk_size=1)
    assert (summary.skipped, summary.processed) == (2, 3)
    assert (out / "a" / "000149_0.jpg").read_bytes() == b"the user's, unrecorded"
    failures = {f["source"]: f["reason"] for f in read_jsonl(out / "failures.jsonl")}
    assert failures["a/000149.jpg"].startswith("output name taken: a/000149_0.jpg in OUT_DIR was not written")


def test_incomplete_image_record_is_redone(small_input, reference, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(small_input, out, jobs=1)
    rows = read_jsonl(out / "manifest.jsonl")
    # Keep only face 0 of the two-face photo: its record is incomplete.
    kept = [r for r in rows if not (r["source"] == "b/two.jpg" and r["face"] == 1)]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    summary = run_crop_job(small_input, out, jobs=1)
    assert (summary.processed, summary.faces) == (1, 2)
    assert crop_keys(read_jsonl(out / "manifest.jsonl")) == crop_keys(reference)


def test_changed_source_is_redone_and_old_crops_dropped(small_input, face_photos, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(small_input, out, jobs=1)
    # The two-face photo is replaced by a one-face photo under the same name.
    shutil.copy(face_photos[2], small_input / "b" / "two.jpg")
    summary = run_crop_job(small_input, out, jobs=1)
    assert (summary.processed, summary.skipped, summary.faces) == (1, 4, 1)
    rows = [r for r in read_jsonl(out / "manifest.jsonl") if r["source"] == "b/two.jpg"]
    assert [(r["face"], r["num_faces"]) for r in rows] == [(0, 1)]
    assert rows[0]["source_bytes"] == face_photos[2].stat().st_size
    assert not (out / "b" / "two_1.jpg").exists()
    # A failure is retried once its file changes.
    shutil.copy(face_photos[0], small_input / "b" / "blank.png")
    summary = run_crop_job(small_input, out, jobs=1)
    assert (summary.processed, summary.faces, summary.failures) == (1, 1, 0)
    assert read_jsonl(out / "failures.jsonl") == []


def test_two_jobs_match_one(small_input, reference, tmp_path) -> None:
    summary = run_crop_job(small_input, tmp_path / "par", jobs=2)
    assert (summary.processed, summary.faces, summary.failures) == (5, 5, 1)
    rows = read_jsonl(tmp_path / "par" / "manifest.jsonl")
    assert [(r["source"], r["face"]) for r in rows] == [(r["source"], r["face"]) for r in reference]
    for a, b in zip(rows, reference):
        np.testing.assert_allclose(a["box"], b["box"], atol=0.01)
        np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=0.05)  # thread count may change rounding


def test_csv_manifest_and_format_mismatch(small_input, reference, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(small_input, out, jobs=1, manifest_format="csv", fmt="png")
    with open(out / "manifest.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [(r["source"], int(r["face"])) for r in rows] == [(r["source"], r["face"]) for r in reference]
    for row, ref in zip(rows, reference):
        np.testing.assert_allclose([float(row[k]) for k in ("box_x1", "box_y1", "box_x2", "box_y2")], ref["box"])
        np.testing.assert_allclose(
            [float(row[k]) for k in ("m00", "m01", "m02", "m10", "m11", "m12")], np.ravel(ref["transform"])
        )
        assert row["output"].endswith(".png") and (out / row["output"]).is_file()
    again = run_crop_job(small_input, out, jobs=1, manifest_format="csv", fmt="png")
    assert (again.processed, again.skipped) == (0, 5)
    with pytest.raises(CropJobError, match="other format"):
        run_crop_job(small_input, out, jobs=1, manifest_format="jsonl")


def test_other_settings_need_overwrite(small_input, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(small_input, out, jobs=1)
    old = {r["output"] for r in read_jsonl(out / "manifest.jsonl")}
    with pytest.raises(CropJobError, match="other settings"):
        run_crop_job(small_input, out, jobs=1, template="loose")
    summary = run_crop_job(small_input, out, jobs=1, template="loose", fmt="png", overwrite=True)
    assert (summary.processed, summary.skipped) == (5, 0)
    rows = read_jsonl(out / "manifest.jsonl")
    assert {r["template"] for r in rows} == {"loose"} and len(rows) == 5
    assert all(not (out / o).exists() for o in old)  # the earlier crops were removed
    assert len(read_jsonl(out / "failures.jsonl")) == 1


def test_colliding_output_names(face_photos, tmp_path) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copy(face_photos[0], in_dir / "photo.jpg")
    shutil.copy(face_photos[1], in_dir / "photo.jpeg")
    shutil.copy(face_photos[2], in_dir / "other.jpg")
    run_crop_job(in_dir, tmp_path / "out", jobs=1)
    outputs = sorted(r["output"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl"))
    assert outputs == ["other_0.jpg", "photo.jpeg_0.jpg", "photo.jpg_0.jpg"]


def test_second_job_on_same_out_dir_is_refused(small_input, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with _Lock(out):
        with pytest.raises(CropJobError, match="another crop job"):
            run_crop_job(small_input, out, jobs=1)


def test_bad_arguments(small_input, tmp_path) -> None:
    with pytest.raises(CropJobError, match="unknown detector"):
        run_crop_job(small_input, tmp_path / "o", detector="nope")
    with pytest.raises(CropJobError, match="unknown engine"):
        run_crop_job(small_input, tmp_path / "o", engine="nope")
    with pytest.raises(CropJobError, match="jobs"):
        run_crop_job(small_input, tmp_path / "o", jobs=0)
    with pytest.raises(CropJobError, match="IN_DIR"):
        run_crop_job(small_input, small_input / "a" / "out")


def test_summary(small_input, tmp_path) -> None:
    calls = []
    summary = run_crop_job(
        small_input, tmp_path / "out", jobs=1, chunk_size=2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert summary.seconds > 0 and summary.images_per_second == pytest.approx(5 / summary.seconds)
    assert summary.line().startswith("5 images: 5 processed, 0 skipped; 5 faces cropped, 1 failures; ")


def test_batched_landmarks_match_one_by_one(small_input) -> None:
    aligner = get_aligner(CropSettings())
    paths = sorted(small_input.rglob("*.*"))
    batched = list(iter_image_faces(aligner, paths))
    single = list(iter_image_faces(aligner, paths, batch_pixels=1))
    assert [len(b.boxes) for b in batched] == [len(s.boxes) for s in single] == [1, 1, 1, 0, 2]
    # The network's own batch noise is ~1e-5 px (float32 sums in another order);
    # re-boxing cuts a new uint8 crop from the first pass's box, and a pixel whose
    # value sits at a rounding edge can flip by one grey level, so the reported
    # points may differ by up to a few hundredths of a pixel (seen: 0.014 px on a
    # 200-px face). 0.05 px is the golden landmarks' tolerance.
    for b, s in zip(batched, single):
        np.testing.assert_allclose(b.landmarks, s.landmarks, atol=0.05)
    # Working-resolution decode: faces() maps back to the original frame.
    reduced = list(iter_image_faces(aligner, paths[:1], max_side=160))
    assert reduced[0].scale == pytest.approx(0.5, abs=0.01)
    np.testing.assert_allclose(reduced[0].faces()[0].box, batched[0].faces()[0].box, atol=6)


def test_two_faces_one_over_the_limit_keeps_numbering_and_resumes(small_input, reference, tmp_path) -> None:
    # Limit just below the worst face's p_fail: that face is listed as low quality,
    # the faces kept are numbered 0..num_faces-1, and a rerun skips every image.
    limit = max(r["p_fail"] for r in reference) - 1e-4
    out = tmp_path / "out"
    summary = run_crop_job(small_input, out, jobs=1, max_p_fail=limit)
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == len(reference) - 1
    for source in {r["source"] for r in rows}:
        mine = [r for r in rows if r["source"] == source]
        assert sorted(r["face"] for r in mine) == list(range(mine[0]["num_faces"]))
    low = [f for f in read_jsonl(out / "failures.jsonl") if f["reason"] == "low quality"]
    assert len(low) == 1 and low[0]["faces"][0]["p_fail"] > limit
    assert summary.faces == len(rows)
    again = run_crop_job(small_input, out, jobs=1, max_p_fail=limit)
    assert (again.processed, again.skipped) == (0, 5)
    assert [f for f in read_jsonl(out / "failures.jsonl") if f["reason"] == "low quality"] == low


def test_quality_limits_need_a_quality_model(small_input, tmp_path, monkeypatch) -> None:
    from facealign import batch

    aligner = batch.get_aligner(batch.CropSettings(max_p_fail=0.5))
    monkeypatch.setattr(aligner.engine, "quality_model", None)
    with pytest.raises(CropJobError, match="no quality model"):
        run_crop_job(small_input, tmp_path / "out", jobs=1, max_p_fail=0.5)
