"""The run-time weights format (``<engine>.npz``): its one owner, read by the engine, written by export.

A run-time weights file is one ``.npz`` (read with ``allow_pickle=False``) of

* ``format``: :data:`RUNTIME_FORMAT_VERSION`;
* ``trunk_onnx``: the normalisation and the convolutional layers CL1-CL4 as an
  ONNX graph (a ``uint8`` array; input :data:`TRUNK_INPUT`, uint8 ``N x 40 x 40 x 3``
  RGB crops; output :data:`TRUNK_OUTPUT`, the ``N x 256`` FC5 inputs), run by ``onnxruntime``;
* ``meta``: a JSON string; ``mirror_shift``: a number;
* ``vanilla_{w5,b5,w6,b6}`` and, for TCNN, ``heads_{w5,b5,w6,b6}`` and
  ``gmm_{weights,means,variances}``: the fully connected layers (input x output)
  and the Gaussian mixture;
* optionally ``box_model`` (:mod:`facealign.reboxing`) and ``quality_*``
  (:mod:`facealign.quality`).

:func:`write_runtime_weights` writes such a file from the arrays
(:mod:`facealign.research.export` compiles them from the torch training weights,
``facealign export-engine``); :func:`load_runtime_weights` reads it. Files of
another format (the training ``<engine>.pt``) are read through a reader
registered for their suffix (:func:`register_weights_reader`): the research
package registers the ``.pt`` reader, so the run time never imports it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "RUNTIME_FORMAT_VERSION",
    "TRUNK_INPUT",
    "TRUNK_OUTPUT",
    "load_runtime_weights",
    "register_weights_reader",
    "write_runtime_weights",
]

#: Version of the run-time weights layout.
RUNTIME_FORMAT_VERSION = 1
#: Name of the ONNX graph's input (uint8 ``N x 40 x 40 x 3`` RGB crops) and output (``N x 256`` FC5 inputs).
TRUNK_INPUT, TRUNK_OUTPUT = "crops", "fc5_input"

#: Readers of other weights files by suffix, each returning the run-time arrays.
_READERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {}


def register_weights_reader(suffix: str, reader: Callable[[Path], dict[str, np.ndarray]]) -> None:
    """Let :func:`load_runtime_weights` read files ending in ``suffix`` with ``reader``.

    :mod:`facealign.research` registers ``.pt`` (training weights compiled in
    memory; needs torch) when it is imported.
    """
    _READERS[suffix] = reader


def load_runtime_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The run-time arrays (see the module docstring) of the weights file ``path``.

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    ValueError
        When it is not a run-time weights file of this or an older format (or
        a training ``.pt`` file while :mod:`facealign.research` is not imported).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    reader = _READERS.get(path.suffix)
    if reader is not None:
        return reader(path)
    if path.suffix == ".pt":
        raise ValueError(
            f"{path} is a training weights file: compile it with "
            f"facealign export-engine --weights {path} --out {path.with_suffix('.npz')}, "
            "or import facealign.research first (needs the train extra)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a facealign weights file ({exc})") from None
    if "trunk_onnx" not in arrays or "format" not in arrays:
        raise ValueError(f"{path} is not a facealign run-time weights file")
    if int(arrays["format"]) > RUNTIME_FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer facealign (format {int(arrays['format'])})")
    return arrays


def write_runtime_weights(arrays: Mapping[str, np.ndarray], out: str | Path) -> Path:
    """Write the run-time ``arrays`` to ``out`` (``.npz``), atomically; the one writer of these files.

    Raises
    ------
    ValueError
        When ``arrays`` lacks ``format`` or ``trunk_onnx``.
    """
    from .imageio import write_bytes_atomic

    missing = [key for key in ("format", "trunk_onnx") if key not in arrays]
    if missing:
        raise ValueError(f"not run-time weights: no {', '.join(missing)}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    return write_bytes_atomic(Path(out), buffer.getvalue())
