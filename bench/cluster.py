"""``facealign crop`` on a Dask cluster against local worker processes, and a projection to large clusters.

    python bench/cluster.py --images 1000 --repeats 1 --out runs/cluster.json

1. Both runs are fresh ``facealign crop`` processes on the same celeba_wild
   photos, start-up included (Python, torch, the weights; for the cluster also
   the LocalCluster): ``--jobs 2`` (joblib) and ``--cluster local:2`` (two Dask
   worker processes, one thread each). Prints images/s for both and the ratio.
2. The scheduler's cost per chunk: a LocalCluster of 2 one-thread workers runs
   ``--noop-chunks`` tasks that do nothing but take a chunk's task list
   (``--chunk-size`` images) and return as many manifest-like rows, submitted
   the way the crop job does (``as_completed``, 2 chunks per worker thread in
   flight). Seconds per chunk = wall time / chunks: the driver and scheduler
   handle chunks one after the other, so this bounds how many chunks per second
   a cluster of any size can complete.
3. A projection for 10, 100 and 1,000 workers (see ``project``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CELEBA_IMAGES, link_photos, machine_info, median, sample_paths  # noqa: E402
from bench.crop_speed import _wall  # noqa: E402
from facealign.imageio import write_json  # noqa: E402

#: Largest share of the driver and scheduler's time the chunks may take in the projection.
SCHEDULER_BUSY_SHARE = 0.1
WORKER_COUNTS = (10, 100, 1000)


def crop_speed(paths: list[Path], repeats: int, log=print) -> dict[str, list[float]]:
    """images/s of ``facealign crop --jobs 2`` and ``--cluster local:2`` per round (start-up included)."""
    work = Path(tempfile.mkdtemp(prefix="facealign-cluster-bench-"))
    runs: dict[str, list[float]] = {"jobs-2": [], "cluster-local-2": []}
    try:
        in_dir = link_photos(paths, work / "in")
        crop = [sys.executable, "-m", "facealign.cli", "crop", str(in_dir)]
        for r in range(repeats):
            for name, extra in (("jobs-2", ["--jobs", "2"]), ("cluster-local-2", ["--cluster", "local:2"])):
                seconds = _wall([crop + [str(work / f"{name}-{r}"), "-q", *extra]])
                runs[name].append(len(paths) / seconds)
                log(f"round {r + 1}: {name:16s} {len(paths) / seconds:6.1f} images/s ({seconds:.1f} s)")
        rows = {name: len((work / f"{name}-0" / "manifest.jsonl").read_text().splitlines()) for name in runs}
        if rows["jobs-2"] != rows["cluster-local-2"]:
            raise RuntimeError(f"the two runs wrote different numbers of manifest rows: {rows}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def _noop_chunk(tasks: list, out_dir: str) -> object:
    """A chunk that crops nothing: as many manifest-like rows as images, returned."""
    from facealign.batch.worker import _ChunkResult

    row = {"source": "", "face": 0, "num_faces": 1, "box": [0.0] * 4, "score": 1.0,
           "landmarks": [[0.0, 0.0]] * 5, "transform": [[0.0] * 3] * 2, "output": "", "size": [112, 112]}  # fmt: skip
    return _ChunkResult([([dict(row, source=t.source, output=t.output_stem)], None) for t in tasks])


def chunk_overhead(n_chunks: int, chunk_size: int) -> float:
    """Seconds per chunk that the driver and scheduler spend, measured on no-op chunks (see module notes)."""
    from distributed import Client, LocalCluster, as_completed

    from facealign.batch.job import _Task
    from facealign.cluster import CHUNKS_IN_FLIGHT_PER_THREAD

    chunk = [
        _Task(f"a/b/{i:08d}.jpg", f"/data/in/a/b/{i:08d}.jpg", f"a/b/{i:08d}", ".jpg", 123456, 1)
        for i in range(chunk_size)
    ]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.submit(_noop_chunk, chunk, "", pure=False).result()  # warm up: import facealign on a worker
        in_flight = CHUNKS_IN_FLIGHT_PER_THREAD * sum(client.nthreads().values())
        start = time.perf_counter()
        completed = as_completed([client.submit(_noop_chunk, chunk, "", pure=False) for _ in range(in_flight)])
        submitted = in_flight
        for future in completed:
            future.result()
            future.release()
            if submitted < n_chunks:
                completed.add(client.submit(_noop_chunk, chunk, "", pure=False))
                submitted += 1
        return (time.perf_counter() - start) / n_chunks


def project(per_worker_ips: float, overhead_s: float, chunk_size_now: int) -> list[dict]:
    """Throughput and chunk size at :data:`WORKER_COUNTS` workers.

    Assumptions: every worker is one core like these, cropping ``per_worker_ips``
    images/s (the local-cluster run / 2); the driver and scheduler handle chunks
    serially at ``overhead_s`` per chunk whatever their size (measured with
    ``chunk_size_now`` images; rows cost more for bigger chunks, ignored); the
    shared file system keeps up. The chunk size is the smallest multiple of 64
    that keeps the scheduler under :data:`SCHEDULER_BUSY_SHARE` busy, at least
    the default 256; throughput is ``min(workers x per-worker, chunk / overhead)``.
    """
    from facealign.cluster import CLUSTER_CHUNK_SIZE

    table = []
    for workers in WORKER_COUNTS:
        chunks_per_s = workers * per_worker_ips  # images/s of the workers, per image-chunk of 1
        needed = chunks_per_s * overhead_s / SCHEDULER_BUSY_SHARE
        chunk = max(CLUSTER_CHUNK_SIZE, 64 * int(-(-needed // 64)))
        ips = min(workers * per_worker_ips, chunk / overhead_s)
        table.append({"workers": workers, "chunk_size": chunk, "images_per_s": ips,
                      "scheduler_busy": workers * per_worker_ips * overhead_s / chunk,
                      "hours_per_10M": 1e7 / ips / 3600})  # fmt: skip
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--noop-chunks", type=int, default=400)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    paths = sample_paths(CELEBA_IMAGES, args.images)
    runs = crop_speed(paths, args.repeats, log)
    ips = {k: median(v) for k, v in runs.items()}
    overhead = chunk_overhead(args.noop_chunks, args.chunk_size)
    table = project(ips["cluster-local-2"] / 2, overhead, args.chunk_size)
    ratio = ips["cluster-local-2"] / ips["jobs-2"]
    print(f"\n{len(paths)} celeba_wild photos, 2 processes, start-up included, median of {args.repeats} round(s)")
    print("| run | images/s |")
    print("|---|---|")
    print(f"| `--jobs 2` (joblib) | {ips['jobs-2']:.1f} |")
    print(f"| `--cluster local:2` (Dask) | {ips['cluster-local-2']:.1f} |")
    print(f"| ratio cluster / joblib | **{ratio:.2f}x** |")
    print(f"\nscheduler and driver cost per chunk ({args.noop_chunks} no-op chunks of {args.chunk_size} images, "
          f"2 workers): {overhead * 1000:.1f} ms")  # fmt: skip
    print(f"\nprojection (per worker {ips['cluster-local-2'] / 2:.1f} images/s on one core; scheduler at most "
          f"{SCHEDULER_BUSY_SHARE:.0%} busy; shared file system keeps up)")  # fmt: skip
    print("| workers | chunk size | images/s | scheduler busy | hours per 10M photos |")
    print("|---|---|---|---|---|")
    for row in table:
        print(f"| {row['workers']:,} | {row['chunk_size']} | {row['images_per_s']:,.0f} | "
              f"{row['scheduler_busy']:.1%} | {row['hours_per_10M']:.1f} |")  # fmt: skip
    if args.out:
        result = {"runs": runs, "images_per_s": ips, "ratio": ratio, "chunk_overhead_s": overhead,
                  "projection": table, "machine": machine_info()}  # fmt: skip
        write_json(result, args.out)


if __name__ == "__main__":
    main()
