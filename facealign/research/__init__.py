"""Research code that the run time does not need: the MTFL data and detection caches
(:mod:`~facealign.research.data`), the torch networks (:mod:`~facealign.research.model`),
training and tweaking (:mod:`~facealign.research.training`, :mod:`~facealign.research.tweak`,
:mod:`~facealign.research.hard_training`), evaluation (:mod:`~facealign.research.evaluation`),
the compiler of the run-time weights (:mod:`~facealign.research.export`), the research
commands (:mod:`~facealign.research.model_cli`), comparisons with other landmark
detectors (:mod:`~facealign.research.peers`), the figure helper
(:mod:`~facealign.research.figures`), the section 2.2 analysis (``facealign analyze``,
:mod:`~facealign.research.analysis`), the fitting and evaluation of the per-face
quality model (:mod:`~facealign.research.quality_fit`), rotation TTA
(:mod:`~facealign.research.tta`) and worker processes (:mod:`~facealign.research.parallel`).

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
