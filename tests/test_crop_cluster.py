"""``facealign crop`` on a Dask cluster (issue 13): a LocalCluster of 2 worker processes.

The cluster run must write what the joblib run writes: the same manifest and
failure rows (compared as sets: chunks complete in any order) and crops with
identical bytes (both runs use one torch thread per process, and one image per
chunk: the landmark network is batched over a chunk, and other batches change
the transform in the 7th digit, as between ``--jobs 1`` and ``--jobs 2``). One LocalCluster
serves the module; a test that kills a worker leaves it to its nanny to restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import child_pids, is_alive, photo_folder

from facealign.batch import CropJobError, run_crop_job
from facealign.batch.job import _CROP_NAME
from facealign.cli import main

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'facealign[dask]'")

from facealign.cluster import DASK_INSTALL, DaskExecutor, _worker_folder_problem, check_workers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def rows_of(path: Path) -> set[str]:
    """The rows of a JSON-lines record file, each as canonical JSON (order of rows ignored)."""
    if not path.exists():
        return set()
    return {json.dumps(json.loads(line), sort_keys=True) for line in path.read_text(encoding="utf-8").splitlines()}


def crops_of(out: Path) -> dict[str, bytes]:
    """Crop-named files under ``out`` and their bytes."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if _CROP_NAME.match(p.name)}


def assert_same_outputs(out: Path, reference: Path) -> None:
    """Same manifest rows, failure rows and crop bytes as ``reference``; no temporaries; each crop listed once."""
    assert rows_of(out / "manifest.jsonl") == rows_of(reference / "manifest.jsonl")
    assert rows_of(out / "failures.jsonl") == rows_of(reference / "failures.jsonl")
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines))  # no row written twice
    assert crops_of(out) == crops_of(reference)
    assert not list(out.rglob("*.part")) and not (out / ".facealign-crop.pending").exists()


@pytest.fixture(scope="module")
def photos_in(face_photos, tmp_path_factory) -> Path:
    """``a/`` three one-face photos, ``b/two.jpg`` two faces, ``b/blank.png`` none: 5 images, 5 crops, 1 failure."""
    return photo_folder(face_photos, tmp_path_factory.mktemp("cluster") / "in", blank=True)


@pytest.fixture(scope="module")
def reference(photos_in, tmp_path_factory) -> Path:
    """OUT_DIR of the joblib run (``--jobs 2``, which cuts these 5 images into chunks of 1) on ``photos_in``."""
    out = tmp_path_factory.mktemp("cluster") / "joblib"
    summary = run_crop_job(photos_in, out, jobs=2, chunk_size=1)
    assert (summary.processed, summary.faces, summary.failures) == (5, 5, 1)
    return out


@pytest.fixture(scope="module")
def client():
    """A client of a LocalCluster with 2 one-thread worker processes."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as dask_client:  # fmt: skip
        yield dask_client


def test_cluster_run_writes_what_the_joblib_run_writes(photos_in, reference, client, tmp_path) -> None:
    out = tmp_path / "out"
    seen = []
    summary = run_crop_job(
        photos_in, out, executor=DaskExecutor(client), chunk_size=1, progress=lambda d, t: seen.append((d, t))
    )
    assert (summary.images, summary.processed, summary.faces, summary.failures) == (5, 5, 5, 1)
    assert summary.chunks == 5 and "(5 chunks)" in summary.line()
    assert seen == [(d, 5) for d in range(6)]  # once before, then per chunk
    assert_same_outputs(out, reference)
    again = run_crop_job(photos_in, out, executor=DaskExecutor(client))  # resumes: nothing left to do
    assert (again.skipped, again.processed, again.chunks) == (5, 0, 0)


def test_the_first_chunks_go_out_before_the_walk_has_finished(face_photos, client, tmp_path, monkeypatch) -> None:
    """The driver's walk streams (not a timing test: the folders listed are counted at each submit)."""
    import facealign.imageio as imageio

    in_dir = tmp_path / "in"
    for i in range(12):
        (in_dir / f"f{i:02d}").mkdir(parents=True)
        (in_dir / f"f{i:02d}" / "p.jpg").symlink_to(face_photos[i % len(face_photos)])
    listed = []
    real_list = imageio.walk.list_image_folder
    monkeypatch.setattr(imageio.walk, "list_image_folder", lambda folder: listed.append(folder) or real_list(folder))
    at_submit = []
    real_submit = client.submit

    def submit(*args, **kwargs):
        at_submit.append(len(listed))
        return real_submit(*args, **kwargs)

    monkeypatch.setattr(client, "submit", submit)
    summary = run_crop_job(in_dir, tmp_path / "out", executor=DaskExecutor(client), chunk_size=1)
    assert (summary.images, summary.faces, summary.chunks) == (12, 12, 12)
    assert at_submit[:4] == [2, 3, 4, 5]  # 2 chunks per worker thread in flight; the root and a folder each
    assert len(listed) == 13 and at_submit == sorted(at_submit)


def test_a_worker_killed_mid_job_loses_nothing(photos_in, reference, client, tmp_path) -> None:
    killed = []

    def kill_a_busy_worker(done: int, total: int) -> None:
        if done == 0 or killed:
            return
        busy = [worker for worker, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = tmp_path / "out"
    summary = run_crop_job(photos_in, out, executor=DaskExecutor(client), chunk_size=1, progress=kill_a_busy_worker)
    assert killed, "no worker was busy after the first chunk"
    assert (summary.processed, summary.faces, summary.failures) == (5, 5, 1)
    assert_same_outputs(out, reference)
    client.wait_for_workers(2, timeout=120)  # the nanny restarts it, for the other tests


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_killing_the_driver_then_rerunning_resumes(face_photos, tmp_path) -> None:
    n = 24
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for i in range(n):
        (in_dir / f"p{i:02d}.jpg").symlink_to(face_photos[i % len(face_photos)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "facealign.cli", "crop", str(in_dir), str(out), "--cluster", "local:2",
               "--chunk-size", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    workers = child_pids(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    recorded = manifest.read_bytes().count(b"\n")
    assert 1 <= recorded < n, "the driver was not killed mid-job"
    deadline = time.monotonic() + 30  # a LocalCluster's worker processes end with the driver
    while any(is_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and not any(is_alive(pid) for pid in workers)
    deadline = time.monotonic() + 60
    while True:  # exit 75 while workers of the killed job still write (they die with it)
        done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=600)
        if done.returncode != 75 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stderr.decode()
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["source"] for r in rows) == [f"p{i:02d}.jpg" for i in range(n)]
    assert set(crops_of(out)) == {r["output"] for r in rows}
    by_photo = {}  # the same photo gives the same crop bytes, whichever run made it
    for r in rows:
        photo = face_photos[int(r["source"][1:3]) % len(face_photos)].name
        by_photo.setdefault(photo, set()).add((out / r["output"]).read_bytes())
    assert all(len(crops) == 1 for crops in by_photo.values())
    assert not list(out.rglob("*.part")) and not (out / ".facealign-crop.pending").exists()


def test_workers_that_cannot_see_the_folders_are_refused(photos_in, client, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CropJobError, match=r"2 of 2 Dask workers cannot use the folders: .*cannot list IN_DIR"):
        check_workers(client, tmp_path / "not-mounted", out)
    assert "is not the driver's folder" in _worker_folder_problem(str(photos_in), str(out), "nothing-here", "x")
    assert [p.name for p in out.iterdir()] == []  # the token and probes are removed


def test_cluster_without_the_dask_extra_is_a_one_line_error(photos_in, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    result = CliRunner().invoke(main, ["crop", str(photos_in), str(tmp_path / "out"), "--cluster", "local:2"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: --cluster needs Dask distributed, which is not installed: {DASK_INSTALL}"


def crash_on_crash_jpg(tasks, *args):
    """The cluster's chunk task, except that a chunk holding ``crash.jpg`` kills its worker
    process (as a crashing decoder would). Runs on the workers (pickled by reference)."""
    from facealign import cluster

    if any(t.source.endswith("crash.jpg") for t in tasks):
        os.kill(os.getpid(), signal.SIGKILL)
    return cluster._crop_chunk_on_worker(tasks, *args)


def test_an_image_that_kills_its_workers_is_a_failure(photos_in, tmp_path, monkeypatch) -> None:
    """A chunk that kills ``allowed-failures`` workers (here 1) is split into one task per
    image; the image that kills its worker again gets a failure, the others their crops."""
    import dask

    import facealign.cluster as cluster

    in_dir = tmp_path / "in"
    shutil.copytree(photos_in, in_dir)
    shutil.copy(in_dir / "a" / "000131.jpg", in_dir / "a" / "crash.jpg")
    monkeypatch.setattr(cluster, "_crop_chunk_on_worker", crash_on_crash_jpg)
    out = tmp_path / "out"
    # One worker: chunks keep their 3 images (a/000114 a/000131 a/000149, a/crash b/blank b/two).
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local, distributed.Client(local) as dask_client:  # fmt: skip
        summary = run_crop_job(in_dir, out, executor=DaskExecutor(dask_client), chunk_size=3)
    # The chunk with crash.jpg is split into its three images; the other one is too when it was
    # queued on the worker as it died (Dask counts the death against every task it held).
    assert summary.chunks in (1 + 3, 3 + 3)
    assert (summary.processed, summary.faces, summary.failures) == (6, 5, 2)
    failures = {r["source"]: r["reason"] for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert set(failures) == {"a/crash.jpg", "b/blank.png"} and "worker process died" in failures["a/crash.jpg"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert set(crops_of(out)) == {r["output"] for r in rows} and len(rows) == 5
    assert not list(out.rglob("*.part")) and not (out / ".facealign-crop.pending").exists()
