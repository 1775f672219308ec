"""Figures for the research commands and reports, with matplotlib's object API.

:func:`subplots` is :func:`matplotlib.pyplot.subplots` without pyplot: the figure
draws on its own Agg canvas, so library code never switches the process-wide
backend (``matplotlib.use("Agg")``) of a caller that has an interactive one, and
there is no pyplot figure to close. Needs matplotlib (the ``train`` or
``recognition`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["subplots"]


def subplots(nrows: int = 1, ncols: int = 1, **figure_kw: Any) -> tuple[Figure, Any]:
    """A new figure on an Agg canvas and its axes (one ``Axes`` or an array, as pyplot's ``subplots``).

    ``figure_kw`` goes to :class:`matplotlib.figure.Figure` (``figsize``, ``dpi``, ...);
    save with ``fig.savefig(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**figure_kw)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols)
