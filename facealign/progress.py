"""The one progress display of every long command (``crop``, ``analyze``, the ``recognition`` commands).

Long work reports through a ``progress(done, total)`` callback (``done`` and
``total`` in items); :class:`Progress` turns those calls into what suits where
stderr goes:

* a terminal: a ``click.progressbar`` (items done, percentage, ETA);
* a file or a pipe (a batch job's log): one line ``label: done/total`` at most
  every ``every`` seconds and at the end, so that logs stay short and still show
  that the job moves.

``total`` may change between calls (the crop job's total is an estimate until its
walk has finished): the bar's length follows it. Every command that uses it has
``--quiet`` (``enabled=False``): nothing is shown.

Messages of long research work (epochs, detection counts) go through stdlib
``logging`` (module loggers under ``facealign``); :func:`show_logs` sends them to
stderr for the commands.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import click

__all__ = ["Progress", "show_logs"]

#: The handler :func:`show_logs` installed on the ``facealign`` logger (one at a time).
_LOG_HANDLER: logging.Handler | None = None


def show_logs(quiet: bool = False) -> None:
    """Show the messages of facealign's loggers on the current stderr, one line each: INFO
    and above, or WARNING and above with ``quiet``. Every command calls it once (the
    research commands' ``--quiet`` calls it again); a second call replaces the first.
    """
    global _LOG_HANDLER
    root = logging.getLogger("facealign")
    if _LOG_HANDLER is not None:
        root.removeHandler(_LOG_HANDLER)
    _LOG_HANDLER = logging.StreamHandler(sys.stderr)
    _LOG_HANDLER.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(_LOG_HANDLER)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


class Progress:
    """A ``progress(done, total)`` callback shown on stderr (see the module docstring).

    Parameters
    ----------
    label : str
        What is counted, shown before the figures (``"Cropping"``, ``"detect"``).
    enabled : bool
        False shows nothing (``--quiet``).
    every : float
        Seconds between lines when stderr is not a terminal.
    stream : file, optional
        Where to write (default ``sys.stderr``, looked up at each call).

    Use it as a context manager, or call :meth:`close` at the end, to finish the bar.
    """

    def __init__(self, label: str, enabled: bool = True, every: float = 10.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.every = every
        self._stream = stream
        self._bar: Any = None  # a click progress bar, once a total is known on a terminal
        self._done = 0
        self._last_line = -float("inf")

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def __call__(self, done: int, total: int, item: str | None = None) -> None:
        """Report ``done`` of ``total`` items (``item``: what is being done now, shown on a terminal)."""
        if not self.enabled or total <= 0:
            return
        if self.stream.isatty():
            if self._bar is None:
                self._bar = click.progressbar(
                    length=total, label=self.label, file=self.stream, item_show_func=lambda shown: shown
                )
                self._bar.__enter__()
            self._bar.length = max(total, done)
            self._bar.update(done - self._done, item)
        else:
            now = time.monotonic()
            if done >= total or now - self._last_line >= self.every:
                self._last_line = now
                suffix = f" ({item})" if item else ""
                click.echo(f"{self.label}: {done}/{total}{suffix}", file=self.stream)
        self._done = done

    def close(self) -> None:
        """Finish the bar (a terminal) or do nothing (a log)."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
