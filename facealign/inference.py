"""onnxruntime sessions of the run-time networks: RetinaFace (:mod:`facealign.detection.retinaface`)
and the landmark engines' convolutional layers (:mod:`facealign.engine`).

One place sets how they run: the CPU provider, warnings only from onnxruntime's
log, and the thread count. ``threads=None`` leaves onnxruntime its own choice (a
thread per core), which was the fastest for one process on our 2-core machines,
even pinned to one core (``facealign crop --jobs 1`` on 1,000 photos, two
alternating rounds: README, Speed); the crop job's worker processes ask for one
thread each (they are parallel over processes).
"""

from __future__ import annotations

from typing import Any

__all__ = ["onnx_session"]


def onnx_session(model: bytes, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of the ONNX ``model`` bytes on the CPU, with ``threads``
    intra-op threads (None: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
