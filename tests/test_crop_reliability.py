"""``facealign crop`` against what real photo folders and real clusters do to it (issue 11).

Each test names the item of the issue it covers. Tests about processes, signals
and the file system run the command in a subprocess; disk-full is an injected
``OSError(ENOSPC)``. The machine may run these as root, so an unreadable folder
is simulated by making ``os.scandir`` raise ``PermissionError`` for it.
"""

from __future__ import annotations

import base64
import csv
import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Stop, child_pids, is_alive, photo_folder, stop_after, two_face_photo
from PIL import Image

import facealign.batch as batch
from facealign.batch import CropJobError, CropJobTransientError, run_crop_job
from facealign.batch.run import _resolve_jobs
from facealign.cli import EXIT_TEMPORARY, main

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    # Strict UTF-8: a lone surrogate or a stray byte fails here.
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").splitlines()]


def run_cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_consistent(out: Path) -> list[dict]:
    """Every crop-named file under ``out`` is listed once in the manifest, and every listed crop exists."""
    rows = read_jsonl(out / "manifest.jsonl")
    listed = Counter(r["output"] for r in rows)
    assert max(listed.values(), default=1) == 1
    on_disk = {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and batch.job._CROP_NAME.match(p.name)
    }
    assert on_disk == set(listed)
    assert not list(out.rglob("*.part"))
    return rows


@pytest.fixture()
def photos_in(face_photos, tmp_path) -> Path:
    """``in/a/`` with the three one-face photos and ``in/b/two.jpg`` with two faces."""
    return photo_folder(face_photos, tmp_path / "in")


# --------------------------------------------------------------------------- 1. names that are not UTF-8


def test_names_that_are_not_utf8_round_trip(face_photos, tmp_path) -> None:
    in_dir = tmp_path / "in"
    raw_dir = os.fsencode(in_dir / "caf") + b"\xe9"
    os.makedirs(raw_dir)
    data = face_photos[0].read_bytes()
    with open(raw_dir + b"/na\xefve.jpg", "wb") as handle:
        handle.write(data)
    with open(os.fsencode(in_dir) + b"/plain.jpg", "wb") as handle:
        handle.write(data)
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out-{fmt}"
        summary = run_crop_job(in_dir, out, jobs=1, manifest_format=fmt)
        assert (summary.processed, summary.faces, summary.failures) == (2, 2, 0)
        if fmt == "jsonl":
            rows = {r["source"]: r for r in assert_consistent(out)}
        else:
            text = (out / "manifest.csv").read_bytes().decode("utf-8")  # strict
            rows = {r["source"]: r for r in csv.DictReader(io.StringIO(text))}
        odd = rows["caf%E9/na%EFve.jpg"]
        assert base64.b64decode(odd["source_b64"]) == b"caf\xe9/na\xefve.jpg"
        assert odd["output"] == "caf%E9/na%EFve_0.jpg" and (out / odd["output"]).is_file()
        assert not rows["plain.jpg"].get("source_b64")  # only names that need it
        again = run_crop_job(in_dir, out, jobs=1, manifest_format=fmt)
        assert (again.processed, again.skipped) == (0, 2)
    # landmarks --json prints valid UTF-8 JSON, with the exact bytes beside the text.
    result = run_cli("landmarks", "--json", os.fsdecode(raw_dir))
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.stdout_bytes.decode("utf-8").splitlines()]
    assert line["image"].endswith("caf%E9/na%EFve.jpg")
    assert base64.b64decode(line["image_b64"]).endswith(b"caf\xe9/na\xefve.jpg")
    assert len(line["faces"]) == 1


# --------------------------------------------------------------------------- 2 and 8. entries that are not images


def _lock_folder(monkeypatch, name: str) -> None:
    """Make ``os.scandir`` fail on folders called ``name`` as on a folder without read permission."""
    real = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_broken_links_fifos_and_skips_never_stop_the_job(photos_in, tmp_path, monkeypatch) -> None:
    (photos_in / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (photos_in / "loop.jpg").symlink_to(photos_in / "loop.jpg")
    os.mkfifo(photos_in / "fifo.jpg")  # opening it would block forever
    (photos_in / "dirlink").symlink_to(photos_in / "a", target_is_directory=True)
    (photos_in / "broken_link").symlink_to(tmp_path / "nothing")
    (photos_in / "notes.txt").write_text("x")
    (photos_in / "photo.heic").write_bytes(b"x")
    (photos_in / "locked").mkdir()
    shutil.copy(photos_in / "a" / "000114.jpg", photos_in / "locked" / "kept.jpg")
    out = tmp_path / "out"
    first = run_crop_job(photos_in, out, jobs=1)
    assert first.failures == 3 and first.faces == 6  # 3 photos + 2 faces + locked/kept.jpg
    # The folder becomes unreadable: its images are unknown, their records stay.
    _lock_folder(monkeypatch, "locked")
    again = run_crop_job(photos_in, out, jobs=1)
    assert again.ignored == Counter(
        {"unknown extension": 2, "directory symlink": 1, "broken symlink": 1, "unreadable folder": 1}
    )
    assert "ignored: 1 broken symlink, 1 directory symlink, 2 unknown extension, 1 unreadable folder" in again.line()
    assert (again.processed, again.skipped, again.failures, again.gone) == (3, 4, 3, 0)  # the 3 are retried
    failures = {r["source"]: r["reason"] for r in read_jsonl(out / "failures.jsonl")}
    assert failures == {
        "fifo.jpg": "unreadable file: not a regular file",
        "gone.jpg": "unreadable file: broken symbolic link",
        "loop.jpg": "unreadable file: broken symbolic link",
    }
    monkeypatch.undo()
    rows = assert_consistent(out)
    assert "locked/kept.jpg" in {r["source"] for r in rows}


# --------------------------------------------------------------------------- 3. transient errors


def test_disk_full_writing_a_crop_stops_the_job_and_a_rerun_retries(photos_in, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    real = batch.worker.stage_file
    written = []

    def full_after_two(root, output, data, folders):
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", output)
        written.append(output)
        return real(root, output, data, folders)

    monkeypatch.setattr(batch.worker, "stage_file", full_after_two)
    with pytest.raises(CropJobTransientError, match="No space left on device"):
        run_crop_job(photos_in, out, jobs=1)
    assert read_jsonl(out / "failures.jsonl") == []  # not recorded as the images' failure
    assert len(read_jsonl(out / "manifest.jsonl")) == 2
    monkeypatch.setattr(batch.worker, "stage_file", real)
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.skipped, summary.processed, summary.failures) == (2, 2, 0)
    assert len(assert_consistent(out)) == 5


def test_disk_full_writing_the_manifest_exits_75_with_one_line(photos_in, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    real = batch.run._append

    def torn(handle, text):  # half a line reaches the disk, then the disk is full
        if '"face"' in text:
            real(handle, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, text)

    monkeypatch.setattr(batch.run, "_append", torn)
    result = run_cli("crop", photos_in, out, "-j", "1", "-q")
    assert result.exit_code == EXIT_TEMPORARY == 75
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setattr(batch.run, "_append", real)
    result = run_cli("crop", photos_in, out, "-j", "1", "-q")
    assert result.exit_code == 0, result.output
    assert len(assert_consistent(out)) == 5


def test_unwritable_out_dir_is_temporary(photos_in, tmp_path, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    result = run_cli("crop", photos_in, tmp_path / "out", "-j", "1")
    assert result.exit_code == 75 and "cannot write to OUT_DIR" in result.output


# --------------------------------------------------------------------------- 4. the job owns its workers


def _many_photos(face_photos, folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"p{i:03d}.jpg").symlink_to(face_photos[i % len(face_photos)])
    return folder


def _start_crop(in_dir: Path, out: Path) -> tuple[subprocess.Popen, set[int]]:
    """Start ``facealign crop --jobs 2`` and wait until its workers write crops."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(out), "--jobs", "2", "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= child_pids(proc.pid)
        if out.is_dir() and any(out.glob("p*_0.jpg")):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    workers |= child_pids(proc.pid)
    assert workers, "no worker processes seen"
    return proc, workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_with_the_job(face_photos, tmp_path, sig) -> None:
    in_dir = _many_photos(face_photos, tmp_path / "in", 150)
    out = tmp_path / "out"
    proc, workers = _start_crop(in_dir, out)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert b"terminated; rerun" in stderr and b"Traceback" not in stderr
    deadline = time.monotonic() + 10  # SIGTERM: gone before the parent exits; SIGKILL: PDEATHSIG
    while any(is_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(is_alive(w) for w in workers)
    crops = sorted(out.rglob("*.jpg"))
    time.sleep(1.5)
    assert sorted(out.rglob("*.jpg")) == crops  # nothing writes any more
    done = subprocess.run(
        [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(out), "--jobs", "1", "--quiet"],
        cwd=REPO, capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(assert_consistent(out)) == 150


def test_workers_of_a_killed_job_block_a_new_one(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with batch.locks._WorkersLock(out, shared=True):  # what an orphaned worker holds while it writes
        with pytest.raises(CropJobTransientError, match="still writing"):
            run_crop_job(photos_in, out, jobs=1)
    assert run_crop_job(photos_in, out, jobs=1).faces == 5


# --------------------------------------------------------------------------- 5 and 6. refused folders and settings


def test_out_dir_containing_in_dir_is_refused(face_photos, tmp_path) -> None:
    parent = tmp_path / "P"
    (parent / "in").mkdir(parents=True)
    shutil.copy(face_photos[0], parent / "in")
    result = run_cli("crop", parent / "in", parent, "-j", "1")
    assert result.exit_code == 1 and "contains IN_DIR" in result.output
    assert sorted(p.relative_to(parent).as_posix() for p in parent.rglob("*")) == ["in", f"in/{face_photos[0].name}"]


@pytest.mark.parametrize(
    "first, second, changed",
    [((), ("--largest-only",), "largest_only"), (("--format", "png"), (), "format")],
)
def test_resuming_with_other_largest_only_or_format_is_refused(photos_in, tmp_path, first, second, changed) -> None:
    out = tmp_path / "out"
    assert run_cli("crop", photos_in, out, "-j", "1", "-q", *first).exit_code == 0
    result = run_cli("crop", photos_in, out, "-j", "1", "-q", *second)
    assert result.exit_code == 1 and "other settings" in result.output and changed in result.output
    assert run_cli("crop", photos_in, out, "-j", "1", "-q", *second, "--overwrite").exit_code == 0
    assert_consistent(out)


# ------------------------------------------------------------- 9 and 12. OUT_DIR holds only recorded crops


def test_unrecorded_crops_are_removed_on_resume(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Stop):
        run_crop_job(photos_in, out, jobs=1, chunk_size=1, progress=stop_after(1))
    # What a kill leaves: crops the job wrote (its journal lists them) but did not record, and
    # a temporary, in the folder the walk had planned (the pending list names its images).
    crop = b"crop written, never recorded"
    (out / "a" / "000131_7.jpg").write_bytes(crop)
    batch.outdir.Journal(out.resolve()).append([("a/000131_7.jpg", len(crop), batch.outdir.digest(crop))])
    (out / "a" / ".000131_1.jpg.x1y2.part").write_bytes(b"half")
    # The user's files: other names, or crop names of no image of the job.
    (out / "a" / "notes.jpg").write_bytes(b"mine")
    (out / "b").mkdir(exist_ok=True)
    (out / "b" / "holiday_0.jpg").write_bytes(b"mine")
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.skipped, summary.processed) == (1, 3)
    assert not (out / "a" / "000131_7.jpg").exists() and not (out / "a" / ".000131_1.jpg.x1y2.part").exists()
    assert (out / "a" / "notes.jpg").read_bytes() == (out / "b" / "holiday_0.jpg").read_bytes() == b"mine"
    rows = read_jsonl(out / "manifest.jsonl")
    assert len(rows) == 5 and all((out / r["output"]).stat().st_size > 100 for r in rows)
    assert not (out / batch.job._PENDING_NAME).exists()


def test_a_users_file_named_like_a_crop_is_never_overwritten(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "000114_0.jpg").write_bytes(b"my own file")
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.faces, summary.failures) == (4, 1)
    assert (out / "a" / "000114_0.jpg").read_bytes() == b"my own file"
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["source"] == "a/000114.jpg" and failure["reason"].startswith("output name taken: a/000114_0.jpg")
    (out / "a" / "000114_0.jpg").unlink()  # the user moves it away: the rerun crops the photo
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.processed, summary.faces, summary.failures) == (1, 1, 0)
    assert read_jsonl(out / "failures.jsonl") == [] and len(assert_consistent(out)) == 5


def test_a_deleted_source_loses_its_rows_and_crops_with_prune(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    (photos_in / "b" / "two.jpg").unlink()
    summary = run_crop_job(photos_in, out, jobs=1, prune=True)
    assert (summary.gone, summary.processed, summary.skipped) == (1, 0, 3)
    assert "records of 1 deleted sources dropped" in summary.line()
    rows = assert_consistent(out)
    assert {r["source"] for r in rows} == {"a/000114.jpg", "a/000131.jpg", "a/000149.jpg"}
    # An IN_DIR with no image at all (not mounted?) never empties OUT_DIR.
    shutil.rmtree(photos_in / "a")
    with pytest.raises(CropJobError, match="holds no images"):
        run_crop_job(photos_in, out, jobs=1)
    assert len(assert_consistent(out)) == 3


# --------------------------------------------------------------------------- 10. decoder warnings


def _jpeg_with_corrupt_exif(source: Path, path: Path) -> Path:
    """A JPEG that decodes, but whose EXIF tag 0x0110 points past the end of the data."""
    exif = Image.Exif()
    exif[0x0110] = "M" * 40
    raw = bytearray(exif.tobytes())  # b"Exif\0\0" + big-endian TIFF
    ifd = 6 + struct.unpack_from(">I", raw, 10)[0]
    assert struct.unpack_from(">H", raw, ifd + 2)[0] == 0x0110
    struct.pack_into(">I", raw, ifd + 2 + 8, 0xFFFFF0)
    Image.open(source).convert("RGB").save(path, exif=bytes(raw), quality=95)
    return path


def test_decoder_warnings_go_to_the_rows_and_quiet_is_quiet(face_photos, tmp_path) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    _jpeg_with_corrupt_exif(face_photos[0], in_dir / "warned.jpg")
    shutil.copy(face_photos[1], in_dir / "clean.jpg")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(out), "--jobs", "1", "--quiet"],
        cwd=REPO, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b"", done.stderr
    rows = {r["source"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert rows["warned.jpg"]["warnings"] == ["Truncated File Read"]
    assert rows["clean.jpg"]["warnings"] == []


# --------------------------------------------------------------------------- 11. --jobs auto


def test_jobs_auto_runs_a_small_job_in_one_process(photos_in, tmp_path, monkeypatch) -> None:
    import joblib

    def no_pool(*args, **kwargs):
        raise AssertionError("a 4-image job must not start worker processes")

    monkeypatch.setattr(batch.run, "_worker_pool", no_pool)
    assert run_crop_job(photos_in, tmp_path / "out").faces == 5  # the default is "auto"
    assert run_cli("crop", photos_in, tmp_path / "cli", "-q").exit_code == 0
    cores = joblib.cpu_count()
    assert _resolve_jobs("auto", batch.job.AUTO_IMAGES_PER_PROCESS - 1) == 1
    assert _resolve_jobs("auto", 100 * batch.job.AUTO_IMAGES_PER_PROCESS) == cores
    assert _resolve_jobs(-1, 1) == cores and _resolve_jobs(3, 1) == 3
    bad = run_cli("crop", photos_in, tmp_path / "x", "--jobs", "many")
    assert bad.exit_code == 2 and "'auto'" in bad.output


def test_csv_manifest_of_an_earlier_version_is_resumed(photos_in, tmp_path) -> None:
    """A CSV manifest of 0.2.0 (without ``warnings``, ``source_b64``, ``expected_error``,
    ``p_fail``) resumes: nothing is redone, and it is rewritten with the new header,
    the old rows kept with those columns empty."""
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1, manifest_format="csv")
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0][-4:]) == ("warnings", "source_b64", "expected_error", "p_fail")
    with open(out / "manifest.csv", "w", newline="") as handle:  # 0.2.0 named the points left_eye_x, ...
        old_header = [name.removeprefix("image_") for name in rows[0][:-4]]
        csv.writer(handle, lineterminator="\n").writerows([old_header] + [row[:-4] for row in rows[1:]])
    summary = run_crop_job(photos_in, out, jobs=1, manifest_format="csv")
    assert (summary.processed, summary.skipped) == (0, 4)
    with open(out / "manifest.csv", newline="") as handle:
        upgraded = list(csv.reader(handle))
    assert upgraded[0] == rows[0]
    assert [row[:-4] + [""] * 4 for row in rows[1:]] == upgraded[1:]


def test_ctrl_c_exits_130_with_one_line(photos_in, tmp_path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "run_crop_job", interrupted)
    result = run_cli("crop", photos_in, tmp_path / "out", "-q")
    assert result.exit_code == 130 and result.output.strip() == "interrupted; rerun the same command to continue"


def test_an_image_that_kills_its_worker_is_a_failure(photos_in, tmp_path, monkeypatch) -> None:
    """A crash in a decoder (or the out-of-memory killer) ends one worker, not the job."""
    shutil.copy(photos_in / "a" / "000131.jpg", photos_in / "a" / "crash.jpg")
    real = batch.run._process_chunk

    def crashing(tasks, *args):  # pickled by value: runs in the worker processes
        if len(args) > 4 and args[4] is not None and any(t.source.endswith("crash.jpg") for t in tasks):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tasks, *args)

    monkeypatch.setattr(batch.run, "_process_chunk", crashing)
    out = tmp_path / "out"
    summary = run_crop_job(photos_in, out, jobs=2, chunk_size=1)
    assert (summary.processed, summary.faces, summary.failures) == (5, 5, 1)
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["source"] == "a/crash.jpg" and "worker process died" in failure["reason"]
    assert len(assert_consistent(out)) == 5


# --------------------------------------------------------------------------- #
# Issue 22: folders an attacker or a careless operator controls. Each test names the
# item of the issue it covers.
# --------------------------------------------------------------------------- #


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): its type, and its bytes or link target."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir",)
        else:
            found[rel] = ("file", path.read_bytes())
    return found


@pytest.mark.parametrize("name", ["manifest.jsonl", "failures.jsonl", ".facealign-crop.lock"])
def test_a_record_file_planted_as_a_link_is_refused_and_not_written_through(photos_in, tmp_path, name) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "file").write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(elsewhere / "file")
    (out / "manifest.csv").symlink_to(elsewhere / "new")  # a link to nothing yet
    before = _tree(elsewhere)
    result = run_cli("crop", photos_in, out, "-q", "--jobs", "1")
    assert result.exit_code == 1
    assert "is a symbolic link; facealign writes only inside OUT_DIR" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _tree(elsewhere) == before  # not created, not appended, not truncated


@pytest.mark.parametrize("target", ["in", "elsewhere"])
def test_an_output_folder_planted_as_a_link_gets_no_crops(photos_in, tmp_path, target) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").symlink_to(photos_in / "b" if target == "in" else elsewhere)
    before_in, before_elsewhere = _tree(photos_in), _tree(elsewhere)
    for faces in (3, 0):  # a rerun must not crop the crops either
        summary = run_crop_job(photos_in, out, jobs=1)
        assert (summary.faces, summary.failures) == (faces, 1)
        assert _tree(photos_in) == before_in and _tree(elsewhere) == before_elsewhere
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["source"] == "b/two.jpg"
    assert failure["reason"] == (
        "output name taken: OUT_DIR/b is a symbolic link; facealign writes only inside OUT_DIR: "
        "remove the link and rerun"
    )
    (out / "b").unlink()  # the user removes the link: the image is retried
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.processed, summary.faces, summary.failures) == (1, 2, 0)


def test_resuming_never_deletes_inside_a_folder_planted_as_a_link(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Stop):  # killed after the first image: the pending list names a/
        run_crop_job(photos_in, out, jobs=1, chunk_size=1, progress=stop_after(1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".000131_0.jpg.abcd.part").write_bytes(b"someone's temporary")
    (elsewhere / "000131_0.jpg").write_bytes(b"someone's file")
    (elsewhere / "000149_0.jpg").write_bytes(b"someone's file")
    shutil.move(out / "a", tmp_path / "a-moved")
    (out / "a").symlink_to(elsewhere)
    before = _tree(elsewhere)
    summary = run_crop_job(photos_in, out, jobs=1)
    assert _tree(elsewhere) == before
    assert summary.failures == 2  # the two images of a/ not done yet: their folder is a link


def test_a_postscript_file_named_jpg_is_an_unsupported_format(photos_in, tmp_path) -> None:
    (photos_in / "a" / "page.jpg").write_bytes(b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    out = tmp_path / "out"
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.faces, summary.failures) == (5, 1)
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["source"] == "a/page.jpg" and failure["reason"] == "unreadable image: unsupported format EPS"


#: Every character that some reader takes for a line or record break, or that is a control.
_CONTROL_AND_SEPARATOR_CHARS = [chr(c) for c in [*range(1, 0x20), 0x7F, *range(0x80, 0xA0)] if chr(c) != "/"] + [
    "\u2028", "\u2029", "\ufeff", '"', ",", "\\",
]  # fmt: skip
#: Those that break lines for str.splitlines, csv, editors or JavaScript.
_LINE_BREAKING_CHARS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_records_of_names_with_any_control_or_separator_read_back_as_written(tmp_path, fmt) -> None:
    from facealign.batch.records import _encode_rows, _failure, _manifest_entries, manifest_name

    rows = []
    for n, char in enumerate(_CONTROL_AND_SEPARATOR_CHARS):
        task = batch.job._Task(f"d{char}/a{char}b.jpg", "", f"d{char}/a{char}b", ".jpg", 100 + n, 7)
        rows.append({**_failure(task, "r"), "face": 0, "num_faces": 1, "box": [0, 0, 1, 1], "score": 1.0,
                     "landmarks": [[0, 0]] * 5, "transform": [[1, 0, 0], [0, 1, 0]],
                     "output": f"d{char}/a{char}b_0.jpg", "size": [112, 112], "template": "arcface",
                     "engine": "tcnn", "detector": "retinaface", "decode_scale": 1.0, "warnings": [f"w{char}"],
                     "expected_error": 1.0, "p_fail": 0.0})  # fmt: skip
    path = tmp_path / manifest_name(fmt)
    header = ",".join(batch.records.CSV_COLUMNS) + "\n" if fmt == "csv" else ""
    path.write_text(header + _encode_rows(rows, fmt), encoding="utf-8", newline="")
    if fmt == "jsonl":
        lines = path.read_bytes().split(b"\n")[:-1]
        assert len(lines) == len(rows)
        assert all(len(line.decode("utf-8").splitlines()) == 1 for line in lines)  # no reader splits a row
    entries, dropped = _manifest_entries(path, fmt)
    assert not dropped
    assert [info["source"] for info, _ in entries] == [r["source"] for r in rows]
    assert [info["output"] for info, _ in entries] == [r["output"] for r in rows]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_images_named_with_line_breaks_keep_their_rows_on_rerun(face_photos, tmp_path, fmt) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for char in _LINE_BREAKING_CHARS:
        shutil.copy(face_photos[0], in_dir / f"x{char}y.jpg")
    out = tmp_path / "out"
    first = run_crop_job(in_dir, out, jobs=1, manifest_format=fmt)
    assert (first.faces, first.failures) == (len(_LINE_BREAKING_CHARS), 0)
    again = run_crop_job(in_dir, out, jobs=1, manifest_format=fmt)
    assert (again.skipped, again.processed, again.failures) == (len(_LINE_BREAKING_CHARS), 0, 0)
    if fmt == "jsonl":
        rows = assert_consistent(out)
    else:
        with open(out / "manifest.csv", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    assert sorted(r["source"] for r in rows) == sorted(f"x{c}y.jpg" for c in _LINE_BREAKING_CHARS)


def test_a_vanished_sub_folder_keeps_its_records_and_crops_unless_pruned(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    reference = _tree(out)
    unmounted = tmp_path / "b-unmounted"
    shutil.move(photos_in / "b", unmounted)  # a share not mounted for a while
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.missing, summary.gone, summary.processed, summary.skipped) == (1, 0, 0, 3)
    assert "1 recorded sources missing from IN_DIR (records and crops kept; --prune drops them)" in summary.line()
    assert _tree(out) == reference  # nothing dropped, nothing deleted
    result = run_cli("crop", photos_in, out, "--jobs", "1")  # the command line says so too
    assert result.exit_code == 0 and "1 recorded sources missing from IN_DIR" in result.output
    # A new source may not take the crop names of a missing one.
    (photos_in / "b").mkdir()
    shutil.copy(unmounted / "two.jpg", photos_in / "b" / "two.jpeg")
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.faces, summary.failures) == (0, 1)
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["reason"] == (
        "output name taken: b/two_0.jpg is the crop of b/two.jpg, which is missing from IN_DIR; "
        "rerun with --prune to drop its records"
    )
    assert {k: v for k, v in _tree(out).items() if k != "failures.jsonl"} == {
        k: v for k, v in reference.items() if k != "failures.jsonl"
    }
    shutil.rmtree(photos_in / "b")
    shutil.move(unmounted, photos_in / "b")  # mounted again: nothing to redo
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.missing, summary.processed) == (0, 0)
    shutil.move(photos_in / "b", unmounted)
    summary = run_crop_job(photos_in, out, jobs=1, prune=True)
    assert (summary.gone, summary.missing) == (1, 0)
    assert {r["source"] for r in assert_consistent(out)} == {"a/000114.jpg", "a/000131.jpg", "a/000149.jpg"}


def test_a_hand_edited_manifest_never_deletes_files(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    rows = {r["source"]: r for r in read_jsonl(out / "manifest.jsonl")}
    (out / "notes.txt").write_bytes(b"the user's notes")
    edited = [
        {**rows["a/000114.jpg"], "source": "gone/photo.jpg", "output": "notes.txt"},  # a missing source
        {**rows["a/000149.jpg"], "source": "ghost.jpg", "output": "a/000131_0.jpg"},  # another image's crop
        {**rows["a/000149.jpg"], "face": 1, "num_faces": 2, "output": "notes.txt"},  # makes an image incomplete
    ]
    with open(out / "manifest.jsonl", "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in edited))
    crop_131 = (out / "a" / "000131_0.jpg").read_bytes()
    for prune in (False, True):
        summary = run_crop_job(photos_in, out, jobs=1, prune=prune)
        assert (out / "notes.txt").read_bytes() == b"the user's notes"
        assert (out / "a" / "000131_0.jpg").read_bytes() == crop_131
        assert summary.processed == (1 if not prune else 0)  # a/000149.jpg, whose record was made incomplete
    assert {r["source"] for r in read_jsonl(out / "manifest.jsonl")} == set(rows)


@pytest.mark.parametrize("damage", ["deleted", "bom_and_crlf", "torn_last_line"])
def test_a_damaged_manifest_heals_without_failures(photos_in, tmp_path, damage) -> None:
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    reference = read_jsonl(out / "manifest.jsonl")
    manifest = out / "manifest.jsonl"
    text = manifest.read_bytes()
    if damage == "deleted":
        manifest.unlink()
        redone = 4  # every image with a crop; its crops, written by the job, are recognised
    elif damage == "bom_and_crlf":  # re-saved by an editor
        manifest.write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
        redone = 0
    else:  # a crash or a full disk in the middle of the rows of the last image (b/two.jpg, two faces)
        start = text.index(b'{"source": "b/two.jpg"')
        manifest.write_bytes(text[: start + 40])
        redone = 1
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.processed, summary.failures) == (redone, 0)
    rows = assert_consistent(out)
    key = lambda r: (r["source"], r["face"], r["output"])  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, reference))
    assert read_jsonl(out / "failures.jsonl") == []


@pytest.fixture()
def twelve_photos(shared_datasets, face_photos, tmp_path) -> Path:
    """Twelve celeba_wild photos in two folders, and the two-face photo."""
    names = sorted(os.listdir(shared_datasets / "celeba_wild" / "images"))[:12]
    root = tmp_path / "in"
    for n, name in enumerate(names):
        (root / "ab"[n % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_datasets / "celeba_wild" / "images" / name, root / "ab"[n % 2] / name)
    two_face_photo(face_photos, root / "b" / "two.jpg")
    return root


def _outputs(out: Path) -> tuple[list[str], dict[str, bytes]]:
    rows = sorted((out / "manifest.jsonl").read_text(encoding="utf-8").splitlines())
    crops = {r["output"]: (out / r["output"]).read_bytes() for r in read_jsonl(out / "manifest.jsonl")}
    return rows, crops


def test_same_crops_and_rows_whatever_the_jobs_chunks_or_resume(twelve_photos, tmp_path) -> None:
    """Byte-identical crops and identical manifest rows (order aside) with one process,
    two processes, other chunk sizes, and a run stopped after its first chunk and resumed."""
    run_crop_job(twelve_photos, tmp_path / "one", jobs=1)
    reference = _outputs(tmp_path / "one")
    assert len(reference[1]) >= 12
    run_crop_job(twelve_photos, tmp_path / "two", jobs=2, chunk_size=3)
    assert _outputs(tmp_path / "two") == reference
    with pytest.raises(Stop):
        run_crop_job(twelve_photos, tmp_path / "resumed", jobs=1, chunk_size=5, progress=stop_after(1))
    run_crop_job(twelve_photos, tmp_path / "resumed", jobs=2, chunk_size=2)
    assert _outputs(tmp_path / "resumed") == reference


@pytest.mark.parametrize("lookahead_images", [None, 0])
def test_one_process_detects_past_the_chunk_boundaries_a_bounded_way_ahead(
    twelve_photos, tmp_path, monkeypatch, lookahead_images
):
    """``jobs=1`` with two detection threads and chunks of 2 (13 images): when a chunk's result
    comes, the detection has taken the next chunks already (it does not wait at each chunk
    boundary): all 13 images under the default LOOKAHEAD_IMAGES; with none, at most 2 x 2 + 1
    images past the chunk being cropped. The crops and rows are those of chunks of 32."""
    import facealign.pipeline

    run_crop_job(twelve_photos, tmp_path / "reference", jobs=1)
    monkeypatch.setattr(batch.worker, "detection_threads", lambda aligner, threads=None: 2)
    if lookahead_images is not None:
        monkeypatch.setattr(facealign.pipeline, "LOOKAHEAD_IMAGES", lookahead_images)
    real = batch.run._process_chunks_here
    taken_at_result: list[int] = []

    def spied(chunks, *args):
        taken = []

        def counted():
            for chunk in chunks:
                taken.append(chunk)
                yield chunk

        for tasks, result in real(counted(), *args):
            taken_at_result.append(len(taken))
            yield tasks, result

    monkeypatch.setattr(batch.run, "_process_chunks_here", spied)
    run_crop_job(twelve_photos, tmp_path / "out", jobs=1, chunk_size=2)
    assert len(taken_at_result) == 7  # chunks
    if lookahead_images is None:
        assert taken_at_result == [7] * 7
    else:
        assert taken_at_result[0] > 1
        assert all(taken - (k + 1) <= 3 for k, taken in enumerate(taken_at_result)), taken_at_result
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "reference")


def test_a_planning_error_in_one_process_comes_after_the_chunks_taken_before_it(twelve_photos, tmp_path, monkeypatch):
    """``jobs=1``: the walk's planning runs while a chunk is cropped. When it fails (here OUT_DIR
    full while planning the third chunk), the two chunks taken before are cropped and recorded
    (4 images), no temporary is left, and then the job stops with the error; a rerun finishes."""
    real = batch.run._batched

    def failing(items, size):
        for n, chunk in enumerate(real(items, size)):
            if n == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield chunk

    monkeypatch.setattr(batch.run, "_batched", failing)
    out = tmp_path / "out"
    with pytest.raises(CropJobTransientError, match="No space left"):
        run_crop_job(twelve_photos, out, jobs=1, chunk_size=2)
    rows = assert_consistent(out)
    assert len({r["source"] for r in rows}) == 4
    assert not list(out.rglob("*.part"))
    monkeypatch.undo()
    summary = run_crop_job(twelve_photos, out, jobs=1)
    assert summary.processed == 9 and len({r["source"] for r in assert_consistent(out)}) == 13


def test_worker_processes_share_the_cores_out_in_detection_threads(twelve_photos, tmp_path, monkeypatch) -> None:
    """``jobs=2`` where the job may run on 4 CPUs: each worker process is told to detect 2
    images at a time (its share of the cores), and the crops and rows are those of one process."""
    import facealign.inference as inference

    run_crop_job(twelve_photos, tmp_path / "one", jobs=1)
    monkeypatch.setattr(inference, "available_cpus", lambda: 4)
    real = batch.run._process_chunk
    marks = tmp_path / "marks"
    marks.mkdir()

    def noted(tasks, settings, largest_only, out_dir, threads, *rest):  # pickled by value
        (marks / f"{os.getpid()}-{threads}").touch()
        return real(tasks, settings, largest_only, out_dir, threads, *rest)

    monkeypatch.setattr(batch.run, "_process_chunk", noted)
    run_crop_job(twelve_photos, tmp_path / "two", jobs=2, chunk_size=2)
    assert {mark.name.split("-")[1] for mark in marks.iterdir()} == {"2"}
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one")


def test_detection_threads_follow_the_share_and_the_detector(monkeypatch) -> None:
    """A worker's share is the CPUs over the processes, at least one; a detector that is not
    thread-safe detects one image at a time whatever the share."""
    import facealign.inference as inference
    from facealign.batch.worker import detection_threads, worker_threads

    monkeypatch.setattr(inference, "available_cpus", lambda: 16)
    assert [worker_threads(n) for n in (1, 2, 3, 16, 40)] == [16, 8, 5, 1, 1]

    class Unsafe:
        thread_safe = False

    class Aligner:
        detector = Unsafe()

    assert detection_threads(Aligner(), 8) == 1 and detection_threads(Aligner()) == 1
    from facealign.detection import get_detector

    Aligner.detector = get_detector("retinaface", threads=2)  # RetinaFace is thread-safe
    assert detection_threads(Aligner(), 3) == 3 and detection_threads(Aligner()) == 16
    assert Aligner.detector.threads == 1  # each detection on one onnxruntime thread


def test_out_of_memory_while_decoding_is_retried_by_the_next_run(photos_in, tmp_path, monkeypatch) -> None:
    import facealign.pipeline as pipeline

    real = pipeline.read_image_reduced

    def short_of_memory(path, *args, **kwargs):
        if str(path).endswith("000131.jpg"):
            raise MemoryError
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_image_reduced", short_of_memory)
    out = tmp_path / "out"
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.faces, summary.failures) == (4, 1)
    monkeypatch.undo()  # memory is back
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.processed, summary.faces, summary.failures) == (1, 1, 0)
    assert len(assert_consistent(out)) == 5


def test_crop_names_of_up_to_255_bytes_are_written(face_photos, tmp_path) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    stem = "n" * (255 - len("_0.jpg"))  # the crop name is 255 bytes, the longest a file system takes
    shutil.copy(face_photos[0], in_dir / f"{stem}.jpg")
    out = tmp_path / "out"
    summary = run_crop_job(in_dir, out, jobs=1)
    assert (summary.faces, summary.failures) == (1, 0)
    assert (out / f"{stem}_0.jpg").is_file()


def test_a_second_job_on_the_same_out_dir_exits_75(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with batch.locks._Lock(out.resolve()):
        result = run_cli("crop", photos_in, out, "-q")
    assert result.exit_code == EXIT_TEMPORARY
    assert "another crop job is writing to" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_missing_scheduler_file_is_a_quick_one_line_error(photos_in, tmp_path) -> None:
    pytest.importorskip("distributed", reason="needs the dask extra")
    start = time.monotonic()
    result = run_cli("crop", photos_in, tmp_path / "out", "-q", "--cluster", tmp_path / "scheduler.json")
    assert time.monotonic() - start < 20  # Dask itself waits for the file without end
    assert result.exit_code == 1
    assert "cannot read the Dask scheduler file" in result.output and "No such file" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_full_disk_while_checking_cluster_workers_exits_75_and_leaves_nothing(
    photos_in, tmp_path, monkeypatch
) -> None:
    pytest.importorskip("distributed", reason="needs the dask extra")
    from facealign.cluster import DaskExecutor

    class Client:  # a cluster with one worker; the disk fills before anything runs on it
        def nthreads(self):
            return {"tcp://worker": 1}

    def full(path, data, *args, **kwargs):
        with open(path, "w") as handle:
            handle.write(data[:3])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    with pytest.raises(CropJobTransientError, match="No space left on device"):
        run_crop_job(photos_in, out, executor=DaskExecutor(Client()))
    monkeypatch.undo()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".facealign-probe")]


def test_num_faces_edited_to_a_huge_number_redoes_the_image(photos_in, tmp_path) -> None:
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    text = (out / "manifest.jsonl").read_text(encoding="utf-8")
    (out / "manifest.jsonl").write_text(text.replace('"num_faces": 1,', '"num_faces": 1000000000000,', 1))
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.processed, summary.faces, summary.failures) == (1, 1, 0)
    assert len(assert_consistent(out)) == 5


def test_an_image_under_a_path_longer_than_path_max_is_listed(face_photos, tmp_path) -> None:
    in_dir = tmp_path / "in"
    deep = os.fsencode(in_dir)
    os.makedirs(deep)
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(22):  # 22 x 201 bytes: past PATH_MAX (4096), reached through descriptors
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        image = os.open("p.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(image, face_photos[0].read_bytes())
        os.close(image)
    finally:
        os.close(fd)
    out = tmp_path / "out"
    summary = run_crop_job(in_dir, out, jobs=1)
    assert (summary.images, summary.failures) == (1, 1)
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["source"] == "/".join(["d" * 200] * 22 + ["p.jpg"])
    assert failure["reason"] == "unreadable file: file name too long"
    shutil.rmtree(in_dir, ignore_errors=True)  # (rmtree copes with long paths)


def test_an_out_dir_made_before_the_journal_is_resumed_and_its_crops_still_replaced(
    photos_in, face_photos, tmp_path
) -> None:
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    (out / batch.outdir.JOURNAL_NAME).unlink()  # as facealign 0.5.0 left it
    changed = photos_in / "a" / "000114.jpg"
    shutil.copy(face_photos[1], changed)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    summary = run_crop_job(photos_in, out, jobs=1)
    assert (summary.processed, summary.failures) == (1, 0)  # its old crop was recognised, and replaced
    rows = assert_consistent(out)
    assert len(rows) == 5
    assert (out / "a" / "000114_0.jpg").read_bytes() == (out / "a" / "000131_0.jpg").read_bytes()


def test_the_journal_is_compacted_to_the_crops_listed(photos_in, face_photos, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(batch.run, "JOURNAL_SLACK_LINES", -100)  # compact at the end of every run
    out = tmp_path / "out"
    run_crop_job(photos_in, out, jobs=1)
    changed = photos_in / "a" / "000114.jpg"
    for n, photo in enumerate([face_photos[1], face_photos[2]]):  # redone twice: lines for old crops
        shutil.copy(photo, changed)
        os.utime(changed, ns=(10**9 * (n + 1),) * 2)
        assert run_crop_job(photos_in, out, jobs=1).processed == 1
    journal = [json.loads(line) for line in (out / batch.outdir.JOURNAL_NAME).read_text().splitlines()]
    rows = assert_consistent(out)
    assert sorted(entry[0] for entry in journal) == sorted(r["output"] for r in rows)
    assert all(entry[1] == (out / entry[0]).stat().st_size for entry in journal)
