"""The research extra from the run time's side: how to install it and whether it is there.

The run time (the CLI's research command group included) needs to say how to
get the research commands without importing :mod:`facealign.research`; it reads
these here. :mod:`facealign.research` re-exports them.
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
