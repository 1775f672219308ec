"""onnxruntime sessions of the run-time networks: RetinaFace (:mod:`facealign.detection.retinaface`)
and the landmark engines' convolutional layers (:mod:`facealign.engine`).

One place sets how they run: the execution providers (the CPU by default), warnings only from onnxruntime's
log, and the threads. ``threads=None`` means one intra-op thread per CPU this
process may use (:func:`available_cpus`: its affinity mask and CPU quota, so a process
pinned to one core by ``taskset`` or a container runs one thread, where
onnxruntime's own default would start one per core of the machine and make
them fight over the one core), and the pool's threads do not spin while
waiting for work. On our loaded 2-core machine, pinned to one core,
RetinaFace on celeba_wild photos took 7-9 ms per photo so against 16 ms with
onnxruntime's defaults (``bench/crop_speed.py``). The crop job's worker
processes ask for one thread each (they are parallel over processes). Results
do not depend on the thread count (``tests/test_engine.py``,
``tests/test_detection.py``).

Execution providers
-------------------
By default the networks run on the CPU. ``providers`` (``FaceAligner(providers=...)``,
``--providers``, or the environment variable ``FACEALIGN_PROVIDERS``, comma-separated)
names others, most preferred first, by short name (``cuda``, ``tensorrt``,
``coreml``, ``openvino``, ``directml``, ``rocm``, ``cpu``) or by onnxruntime's
name (``CUDAExecutionProvider``, ...). The CPU is always added last, as the
fallback; a provider the installed onnxruntime lacks is skipped with one warning
that says so and how to get it (``pip install onnxruntime-gpu`` for CUDA and
TensorRT; the ``onnxruntime`` and ``onnxruntime-gpu`` packages must not be
installed together).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = [
    "PROVIDERS_ENV",
    "available_cpus",
    "PROVIDER_NAMES",
    "available_providers",
    "missing_providers_message",
    "onnx_session",
    "resolve_providers",
]

#: The environment variable that names the default execution providers (comma-separated).
PROVIDERS_ENV = "FACEALIGN_PROVIDERS"

#: Short names of onnxruntime's execution providers (lower case) -> onnxruntime's names.
PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
}

_CPU = "CPUExecutionProvider"

#: What installs each provider, for the message when one is missing.
_INSTALL_HINTS: dict[str, str] = {
    "CUDAExecutionProvider": "pip uninstall onnxruntime && pip install onnxruntime-gpu (and CUDA, cuDNN)",
    "TensorrtExecutionProvider": "pip uninstall onnxruntime && pip install onnxruntime-gpu (and TensorRT)",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
    "DmlExecutionProvider": "pip install onnxruntime-directml (Windows)",
    "CoreMLExecutionProvider": "the onnxruntime wheel for macOS",
    "ROCMExecutionProvider": "an onnxruntime build with ROCm",
}

#: Missing-provider messages already given in this process (each is given once).
_WARNED: set[str] = set()


def available_cpus() -> int:
    """CPUs this process may use: the fewest of the machine's, its affinity mask (``taskset``,
    a container's cpuset) and a container's CPU quota (``docker --cpus``), as joblib's
    ``cpu_count`` (loky's) counts them; at least one. The one count of facealign's threads and
    worker processes."""
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def resolve_providers(providers: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """onnxruntime's names of ``providers``, most preferred first, the CPU last.

    Parameters
    ----------
    providers : str, sequence of str or None
        Names (short or onnxruntime's, any case), or one comma-separated string;
        None reads :data:`PROVIDERS_ENV`, and without it the CPU alone.

    Raises
    ------
    ValueError
        For a name that is no execution provider, listing the short names.

    Examples
    --------
    >>> resolve_providers("cuda")
    ('CUDAExecutionProvider', 'CPUExecutionProvider')
    >>> resolve_providers(["TensorrtExecutionProvider", "cuda"])
    ('TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')
    """
    if providers is None:
        providers = os.environ.get(PROVIDERS_ENV, "")
    if isinstance(providers, str):
        providers = providers.split(",")
    full_names = {name.lower(): name for name in PROVIDER_NAMES.values()}
    resolved: list[str] = []
    for given in providers:
        key = given.strip().lower()
        if not key:
            continue
        name = PROVIDER_NAMES.get(key) or full_names.get(key)
        if name is None:
            raise ValueError(
                f"{given.strip()!r} is not an onnxruntime execution provider; choose among "
                f"{', '.join(sorted(set(PROVIDER_NAMES) - {'dml'}))} "
                "(or onnxruntime's names, e.g. CUDAExecutionProvider)"
            )
        if name not in resolved:
            resolved.append(name)
    if _CPU in resolved:
        resolved.remove(_CPU)
    return (*resolved, _CPU)


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def missing_providers_message(providers: Sequence[str]) -> str | None:
    """One line naming the providers of ``providers`` (resolved names) that the installed
    onnxruntime lacks, what they fall back to and how to install them; None when all are there."""
    available = available_providers()
    missing = [name for name in providers if name not in available]
    if not missing:
        return None
    used = [name for name in providers if name in available]
    hints = "; ".join(f"{name}: {_INSTALL_HINTS[name]}" for name in missing if name in _INSTALL_HINTS)
    return (
        f"onnxruntime execution provider{'s' if len(missing) > 1 else ''} {', '.join(missing)} not available "
        f"in this onnxruntime (it has {', '.join(available)}); running on {', '.join(used)}"
        + (f". To install: {hints}" if hints else "")
    )


def onnx_session(model: bytes, threads: int | None = None, providers: str | Sequence[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` of the ONNX ``model`` bytes on ``providers``
    (:func:`resolve_providers`; by default the CPU), with ``threads`` intra-op threads (None:
    :func:`available_cpus`), none of them spinning. Providers the installed onnxruntime lacks
    are left out, with one warning per process (:func:`missing_providers_message`)."""
    import onnxruntime as ort

    wanted = resolve_providers(providers)
    message = missing_providers_message(wanted)
    if message is not None and message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    available = set(available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads) if threads is not None else available_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=[name for name in wanted if name in available])
