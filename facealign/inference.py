"""onnxruntime sessions of the run-time networks: RetinaFace (:mod:`facealign.detection.retinaface`)
and the landmark engines' convolutional layers (:mod:`facealign.engine`).

One place sets how they run: the CPU provider, warnings only from onnxruntime's
log, and the threads. ``threads=None`` means one intra-op thread per CPU this
process may run on (:func:`available_cpus`: its affinity mask, so a process
pinned to one core by ``taskset`` or a container runs one thread, where
onnxruntime's own default would start one per core of the machine and make
them fight over the one core), and the pool's threads do not spin while
waiting for work. On our loaded 2-core machine, pinned to one core,
RetinaFace on celeba_wild photos took 7-9 ms per photo so against 16 ms with
onnxruntime's defaults (``bench/crop_speed.py``). The crop job's worker
processes ask for one thread each (they are parallel over processes). Results
do not depend on the thread count (``tests/test_engine.py``,
``tests/test_detection.py``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["available_cpus", "onnx_session"]


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one, else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def onnx_session(model: bytes, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of the ONNX ``model`` bytes on the CPU, with ``threads``
    intra-op threads (None: :func:`available_cpus`), none of them spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads) if threads is not None else available_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
