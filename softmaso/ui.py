"""What the terminal shows: messages through Python's `logging` (the ``softmaso`` logger, on
stderr) and one rich progress bar, to which a run or a grid adds its line.

The library only logs and adds :class:`Task` lines; the command line decides what is shown
(:func:`setup_logging`: ``--quiet`` and ``--verbose`` are log levels) and whether a bar is
(:func:`progress`: on a terminal). Without a bar, a run's epochs are log lines (logger
``softmaso.epochs``), which a grid keeps to ``--verbose`` (:func:`epoch_lines`); its own
line per run says enough.
"""

from __future__ import annotations

import contextlib
import logging
import sys

LOGGER = "softmaso"
EPOCHS = "softmaso.epochs"  # a run's line per epoch
GRID = {"tag": "grid"}  # log(..., extra=GRID): a line a grid says of itself, "[grid] ..."

_bar = None  # the one rich Progress while it is shown


class _Handler(logging.Handler):
    """Each record as one line, ``[tag] message`` where the record has a tag (a run, ``grid``):
    on stderr as it is at that moment (a test runner swaps it), or above the bar while one is
    shown."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tag, text = getattr(record, "tag", None), record.getMessage()
            if tag:
                text = f"[{tag}] {text}"
            if _bar is not None:
                _bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                print(text, file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Show softmaso's messages at `level` and above on stderr (once per process; a second call
    only changes the level)."""
    log = logging.getLogger(LOGGER)
    log.setLevel(level)
    if not any(isinstance(h, _Handler) for h in log.handlers):
        log.addHandler(_Handler())


def log_level() -> int:
    """The level softmaso's messages are shown at (for worker processes to use the same)."""
    return logging.getLogger(LOGGER).getEffectiveLevel()


@contextlib.contextmanager
def epoch_lines(show: bool | None = None):
    """Within the block, a run's line per epoch is shown only if `show` (None: only when
    softmaso logs at DEBUG, i.e. ``--verbose``): a grid's own line per run says enough."""
    log = logging.getLogger(EPOCHS)
    before = log.level
    if show is None:
        show = log_level() <= logging.DEBUG
    log.setLevel(logging.NOTSET if show else logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(before)


@contextlib.contextmanager
def progress(show: bool | None = None):
    """Show one rich progress bar while the block runs: on a terminal (None), or as `show` says.
    Inside a block that already shows one, the same bar is used."""
    global _bar
    if _bar is not None or not (sys.stderr.isatty() if show is None else show):
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    _bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(file=sys.stderr),
    )
    _bar.start()
    try:
        yield
    finally:
        _bar.stop()
        _bar = None


class Task:
    """One line of the bar (a run, a grid); nothing at all when no bar is shown."""

    def __init__(self, title: str, total: int, completed: int = 0):
        self.id = None
        if _bar is not None:
            self.id = _bar.add_task(title, total=total, completed=completed, info="")

    @property
    def shown(self) -> bool:
        return self.id is not None and _bar is not None

    def advance(self, n: int = 1) -> None:
        if self.shown:
            _bar.advance(self.id, n)

    def note(self, info: str) -> None:
        """Text after the bar (a run's last epoch, a grid's failures)."""
        if self.shown:
            _bar.update(self.id, info=info)

    def close(self) -> None:
        """Hide the line if others share the bar (a grid's finished run); the last one stays."""
        if self.shown and sum(t.visible for t in _bar.tasks) > 1:
            _bar.update(self.id, visible=False)
