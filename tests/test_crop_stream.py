"""The crop job's input walk streams (issue 13): folders are planned as the walk reaches them,
and chunks go out before the walk has finished, with the names and records of planning the
whole tree at once."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import photo_folder

import facealign.batch as batch
import facealign.imageio as imageio
from facealign.batch import Summary, run_crop_job
from facealign.batch.plan import _plan, _Planner
from facealign.batch.records import _failure, _Records
from facealign.batch.worker import _ChunkResult
from facealign.imageio import scan_folder, walk_images

#: Names that collide in one folder: by case, by extension, by both.
COLLIDING = ("a.jpg", "A.JPG", "a.png", "a.jpeg", "b.jpg", "photo.jpg", "Photo.jpeg", "z.png")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def colliding_tree(root: Path, write) -> Path:
    """Folders whose own names collide (``X``/``x``, a name that is not UTF-8 and its ``%XX``
    spelling), nested, each holding colliding file names; ``write(path, i)`` makes file ``i``."""
    folders = [b"", b"x", b"X", b"x/sub", b"X/SUB", b"x/sub/deep", b"m", b"m/a.jpg_dir", b"caf\xe9", b"caf%E9",
               b"caf%e9", b"caf\xe9/in", b"caf%E9/in", b"empty"]  # fmt: skip
    i = 0
    for k, folder in enumerate(folders):
        path = os.path.join(os.fsencode(root), folder)
        os.makedirs(path, exist_ok=True)
        if folder == b"empty":
            continue
        for name in COLLIDING[: 2 + k % 3] + COLLIDING[4 + k % 4 : 5 + k % 4]:
            write(Path(os.fsdecode(os.path.join(path, name.encode()))), i)
            i += 1
    (root / "x" / "broken.jpg").symlink_to(root / "nowhere.jpg")
    (root / "x" / "notes.txt").write_text("not an image")
    (root / "x" / ".hidden.jpg").write_bytes(b"")
    return root


def planned_tasks(src: Path, dst: Path, fmt: str | None = None) -> tuple[list, Summary]:
    """The tasks the streaming planner yields for ``src`` (nothing recorded yet)."""
    dst.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    with open(dst / "failures.jsonl", "ab", buffering=0) as failures:
        planner = _Planner(src, dst, fmt, _Records(), failures, summary, 0)
        try:
            tasks = list(planner.tasks(walk_images(src, planner.plan_folder)))
            planner.finish()
        finally:
            planner.close()
    return tasks, summary


def test_walk_images_lists_what_scan_folder_lists_in_the_same_order(tmp_path, monkeypatch) -> None:
    src = colliding_tree(tmp_path / "in", lambda path, i: path.write_bytes(b""))
    (src / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if os.fsdecode(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    seen = []

    def plan(folder, scan):
        seen.append((folder, scan))
        return scan.images

    walked = list(walk_images(src, plan))
    whole = scan_folder(src)
    assert walked == whole.images
    assert sum((scan.ignored for _, scan in seen), Counter()) == whole.ignored
    assert [f for _, scan in seen for f in scan.unreadable_folders] == whole.unreadable_folders == [src / "locked"]
    assert len({folder for folder, _ in seen}) == len(seen) == 15  # every folder listed once
    assert imageio.count_images(src) == (len(whole.images), 1)


@pytest.mark.parametrize("fmt", [None, "png"])
def test_streaming_plan_gives_the_names_of_planning_the_whole_tree(tmp_path, fmt) -> None:
    src = colliding_tree(tmp_path / "in", lambda path, i: path.write_bytes(b"x" * i))
    reference, unreadable = _plan(src, scan_folder(src), fmt)
    tasks, summary = planned_tasks(src, tmp_path / "out", fmt)
    assert tasks == reference  # same order, stems (with ~n), extensions, sizes
    names = {t.source: t.output_stem + t.ext for t in tasks}
    assert len({n.lower() for n in names.values()}) == len(names)  # no two collide, even ignoring case
    assert sum("~" in n for n in names.values()) >= 4  # names shared by folders that differ in case
    assert [f["source"] for f in read_jsonl(tmp_path / "out" / "failures.jsonl")] == ["x/broken.jpg"]
    assert [t.source for t, _ in unreadable] == ["x/broken.jpg"]
    assert summary.images == len(reference) + 1


def test_first_chunk_runs_before_the_walk_has_finished(tmp_path, monkeypatch) -> None:
    """Not a timing test: the walk is counted, and the first chunk looks at the count."""
    src = tmp_path / "in"
    for i in range(40):
        (src / f"f{i:02d}").mkdir(parents=True)
        for name in ("p.jpg", "q.jpg"):
            (src / f"f{i:02d}" / name).write_bytes(b"not decoded: the chunk is faked")
    listed: list[Path] = []
    real_list = imageio.walk.list_image_folder

    def counted(folder):
        listed.append(folder)
        return real_list(folder)

    at_chunks: list[tuple[int, int]] = []  # (folders listed, pending lines) when each chunk runs
    out = tmp_path / "out"

    def fake_chunks(chunks, chunk_size, settings, largest_only, out_dir):  # one process: one stream of chunks
        for tasks in chunks:
            pending = (out / batch.job._PENDING_NAME).read_text().splitlines()
            assert {(t.output_stem, t.ext) for t in tasks} <= {tuple(json.loads(p)) for p in pending}  # written first
            at_chunks.append((len(listed), len(pending)))
            yield tasks, _ChunkResult([([], _failure(t, "no face found")) for t in tasks])

    monkeypatch.setattr(imageio.walk, "list_image_folder", counted)
    monkeypatch.setattr(batch.plan, "list_image_folder", counted)
    monkeypatch.setattr(batch.run, "_process_chunks_here", fake_chunks)
    totals = []
    summary = run_crop_job(src, out, jobs=1, chunk_size=4, progress=lambda done, total: totals.append((done, total)))
    assert (summary.images, summary.processed, summary.failures, summary.chunks) == (80, 80, 80, 20)
    assert at_chunks[0] == (3, 4)  # the root and two folders of 41 listed; their 4 images pending
    assert len(listed) == 41 and at_chunks[-1] == (41, 80)
    assert totals[0] == (0, 80) and totals[-1] == (80, 80)  # the total comes from the name count


def test_first_chunk_goes_to_worker_processes_before_the_walk_has_finished(tmp_path, monkeypatch) -> None:
    """The same with ``jobs=2``: a pool that runs chunks at once stands in for loky's."""
    from concurrent.futures import Future

    src = tmp_path / "in"
    for i in range(30):
        (src / f"f{i:02d}").mkdir(parents=True)
        (src / f"f{i:02d}" / "p.jpg").write_bytes(b"x")
    listed: list[Path] = []
    real_list = imageio.walk.list_image_folder
    monkeypatch.setattr(imageio.walk, "list_image_folder", lambda folder: listed.append(folder) or real_list(folder))
    submitted: list[int] = []

    class Pool:
        def submit(self, fn, tasks, *args):
            submitted.append(len(listed))
            future = Future()
            future.set_result(_ChunkResult([([], _failure(t, "no face found")) for t in tasks]))
            return future

    monkeypatch.setattr(batch.run, "_worker_pool", lambda n_jobs: Pool())
    summary = run_crop_job(src, tmp_path / "out", jobs=2, chunk_size=1)
    assert (summary.images, summary.failures, summary.chunks) == (30, 30, 30)
    assert submitted[0] <= 3 and len(listed) == 31  # 2 x 2 chunks in flight, one image per folder
    assert submitted == sorted(submitted) and submitted[3] <= 5


def test_a_worker_dying_before_the_next_submit_loses_no_chunk(tmp_path, monkeypatch) -> None:
    """loky raises at ``submit`` when a worker died since the last one (a broken pool): the chunk
    not submitted goes out again on a new pool, the lost ones too, and every image is processed once."""
    from concurrent.futures import Future

    from joblib.externals.loky.process_executor import TerminatedWorkerError

    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        (src / f"p{i:02d}.jpg").write_bytes(b"x")
    pools: list[int] = []
    done: list[str] = []

    class Pool:
        def __init__(self) -> None:
            self.number = len(pools)
            self.calls = 0
            pools.append(self.number)

        def submit(self, fn, tasks, *args):
            self.calls += 1
            future: Future = Future()
            if self.number == 0 and self.calls == 2:  # the first pool's worker dies on its second chunk ...
                future.set_exception(TerminatedWorkerError("a worker died"))
            elif self.number == 0 and self.calls == 3:  # ... and the pool is broken at the next submit
                raise TerminatedWorkerError("a worker died")
            else:
                done.extend(t.source for t in tasks)
                future.set_result(_ChunkResult([([], _failure(t, "no face found")) for t in tasks]))
            return future

        def terminate(self, kill_workers: bool = False) -> None:
            pass

    monkeypatch.setattr(batch.run, "_worker_pool", lambda n_jobs: Pool())

    def isolated(tasks, *args):  # stands in for redoing the suspects one per process
        if tasks:
            yield tasks, _ChunkResult([([], _failure(t, "failed: the worker process died on it")) for t in tasks])

    monkeypatch.setattr(batch.run, "_process_isolated", isolated)
    summary = run_crop_job(src, tmp_path / "out", jobs=2, chunk_size=1)
    assert len(pools) >= 2  # a new pool after the broken one
    assert (summary.images, summary.processed, summary.failures) == (12, 12, 12)
    records = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in records) == [f"p{i:02d}.jpg" for i in range(12)]  # each image once


@pytest.fixture()
def colliding_photos(face_photos, tmp_path) -> Path:
    """A nested tree of real photos whose names collide (see :func:`colliding_tree`)."""
    return colliding_tree(tmp_path / "photos", lambda path, i: shutil.copy(face_photos[i % 3], path))


def test_manifest_of_a_colliding_tree_is_that_of_whole_tree_planning(colliding_photos, tmp_path) -> None:
    tasks, _ = _plan(colliding_photos, scan_folder(colliding_photos), None)
    out = tmp_path / "out"
    summary = run_crop_job(colliding_photos, out, jobs=1)
    rows = read_jsonl(out / "manifest.jsonl")
    assert [(r["source"], r["output"]) for r in rows] == [
        (imageio.portable_name(t.source), f"{t.output_stem}_0{t.ext}") for t in tasks
    ]
    assert (summary.images, summary.faces, summary.failures) == (len(tasks) + 1, len(tasks), 1)
    par = tmp_path / "par"  # worker processes: results in the same order
    run_crop_job(colliding_photos, par, jobs=2)
    assert [(r["source"], r["output"]) for r in read_jsonl(par / "manifest.jsonl")] == [
        (r["source"], r["output"]) for r in rows
    ]


def test_sources_gone_or_changed_resume_after_a_kill_before_the_records_were_rewritten(
    colliding_photos, face_photos, tmp_path, monkeypatch
) -> None:
    out, clean = tmp_path / "out", tmp_path / "clean"
    run_crop_job(colliding_photos, out, jobs=1)
    shutil.copytree(out, clean)
    (colliding_photos / "x" / "a.jpg").unlink()  # a source gone
    shutil.rmtree(colliding_photos / "m" / "a.jpg_dir")  # a folder gone
    changed = colliding_photos / "a.jpg"  # a source changed
    shutil.copy(face_photos[1] if changed.read_bytes() == face_photos[0].read_bytes() else face_photos[0], changed)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    expected = run_crop_job(colliding_photos, clean, jobs=1, prune=True)  # uninterrupted
    assert expected.gone >= 3 and expected.processed == 2  # the changed photo and the broken link (retried)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the driver dies after dropping records, before rewriting the files

    monkeypatch.setattr(batch.run, "_filter_records", killed)
    with pytest.raises(KeyboardInterrupt):
        run_crop_job(colliding_photos, out, jobs=1, prune=True)
    assert (out / batch.job._DROPPED_NAME).exists()
    monkeypatch.undo()
    again = run_crop_job(colliding_photos, out, jobs=1, prune=True)
    assert (again.processed, again.gone) == (1, 0)  # the broken link
    assert not (out / batch.job._DROPPED_NAME).exists()
    assert (out / "manifest.jsonl").read_bytes() == (clean / "manifest.jsonl").read_bytes()
    assert (out / "failures.jsonl").read_bytes() == (clean / "failures.jsonl").read_bytes()
    crops = {p.relative_to(out).as_posix() for p in out.rglob("*_[0-9].*")}
    assert crops == {r["output"] for r in read_jsonl(out / "manifest.jsonl")}


def test_empty_in_dir_with_records_is_refused_before_anything_is_dropped(face_photos, tmp_path) -> None:
    src = photo_folder(face_photos, tmp_path / "in")
    out = tmp_path / "out"
    run_crop_job(src, out, jobs=1)
    before = (out / "manifest.jsonl").read_bytes()
    for child in src.iterdir():
        shutil.rmtree(child)
    (src / "still-a-folder").mkdir()
    with pytest.raises(batch.CropJobError, match="holds no images"):
        run_crop_job(src, out, jobs=1)
    assert (out / "manifest.jsonl").read_bytes() == before and not (out / batch.job._DROPPED_NAME).exists()
