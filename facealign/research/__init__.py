"""Research code that the run time does not need: comparisons with other landmark
detectors (:mod:`~facealign.research.peers`), the figure helper
(:mod:`~facealign.research.figures`), the section 2.2 analysis (``facealign analyze``,
:mod:`~facealign.research.analysis`) and the fitting and evaluation of the per-face
quality model (:mod:`~facealign.research.quality_fit`).

Nothing here is imported by ``facealign crop``, ``facealign landmarks`` or
:class:`~facealign.FaceAligner`. The research commands (``train``, ``tweak``,
``evaluate``, ``analyze``, ``fit-quality``, ...) need the ``train`` extra
(:data:`TRAIN_INSTALL_HINT`); :func:`missing_train_modules` says, without importing
anything, whether it is installed.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TRAIN_INSTALL_HINT", "TRAIN_MODULES", "missing_train_modules"]

#: How to install what the research commands need.
TRAIN_INSTALL_HINT = "pip install 'facealign[train]'"
#: The importable modules the ``train`` extra brings (setup.cfg, ``[options.extras_require]``).
TRAIN_MODULES: tuple[str, ...] = ("torch", "onnx", "sklearn", "scipy", "matplotlib")


def missing_train_modules() -> list[str]:
    """The modules of the ``train`` extra that cannot be imported here (found, not imported)."""
    missing = []
    for name in TRAIN_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing
