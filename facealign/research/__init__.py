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
anything, whether it is installed (both live in :mod:`facealign.extras`, for the
run time). Importing this package lets the engines read training ``.pt`` weights
(:mod:`~facealign.research.training_weights`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..extras import TRAIN_INSTALL_HINT, TRAIN_MODULES, missing_train_modules
from ..runtime_weights import register_weights_reader

__all__ = ["TRAIN_INSTALL_HINT", "TRAIN_MODULES", "missing_train_modules"]


def _read_training_weights(path: Path) -> dict[str, np.ndarray]:
    from .export import read_training_weights_as_runtime

    return read_training_weights_as_runtime(path)


# A training ``.pt`` given to LandmarkEngine is compiled in memory (needs torch).
register_weights_reader(".pt", _read_training_weights)
