"""The terminal side of training: a rich progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys


class Reporter:
    """A rich progress bar on a terminal, one plain line per epoch otherwise (SLURM logs)."""

    def __init__(
        self,
        title: str,
        epochs: int,
        steps: int,
        *,
        start_epoch: int = 0,
        live=None,
        progress=None,
        quiet: bool = False,
    ):
        self.live = progress is not None or (sys.stderr.isatty() if live is None else live)
        self.quiet = quiet and not self.live  # no plain line per epoch (a grid's log)
        self.title, self.steps = title, steps
        self._own = progress is None
        self._progress = progress
        if self.live:
            if self._own:
                self._progress = new_progress()
                self._progress.start()
            self._task = self._progress.add_task(
                title, total=epochs * steps, completed=start_epoch * steps, info=""
            )

    def step(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def epoch(self, row: dict, name: str | None = None) -> None:
        """Show an epoch's metrics line (`name`: the run's, when a bar shows several runs)."""
        info = (
            ("" if name is None else f"{name}: ")
            + f"epoch {row['epoch']} loss {row['train_loss']:.4f} train {row['train_acc']:.4f} "
            f"test {row['test_acc']:.4f} {row['images_per_s']:.0f} img/s"
        )
        if self._progress is not None:
            self._progress.update(self._task, info=info)
        elif not self.quiet:
            print(f"[{self.title}] {info} ({row['seconds']:.1f}s)", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(f"[{self.title}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is None:
            return
        if self._own:
            self._progress.stop()
        else:
            self._progress.remove_task(self._task)


def new_progress():
    """A rich Progress with a bar, a count, the time left and a free ``info`` field."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
