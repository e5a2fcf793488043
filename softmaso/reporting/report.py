"""An experiment's report: its table in every format and its learning curves, in its folder."""

from __future__ import annotations

import contextlib
from pathlib import Path

from softmaso import rundir
from softmaso.errors import UserError
from softmaso.reporting import curves, tables
from softmaso.reporting.frame import collect, declared_report


def write_report(root: Path, *, paper: bool, command: str) -> list[Path]:
    """Write the table (markdown, LaTeX, CSV) and the learning curves of an experiment, at
    the endpoint and against the baseline its recipe declares (report: section)."""
    report = declared_report(root)
    found = collect(root)  # once: the table and the curves read the same runs
    summary = tables.summarize(found, endpoint=report.endpoint, baseline=report.baseline)
    stamp = f"Made by `{command}` at commit {rundir.git_commit() or 'unknown'} on {rundir.now()}."
    paths = []
    for fmt, ext in (("markdown", "md"), ("latex", "tex"), ("csv", "csv")):
        text = tables.render(summary, fmt, paper=paper)
        if fmt == "markdown":
            text = text.rstrip("\n") + f"\n\n{stamp}\n"
        path = root / f"table.{ext}"
        tables.write_table(text, path)
        paths.append(path)
    with contextlib.suppress(UserError):  # no finished epoch yet: nothing to plot
        paths += curves.plot_curves(root, root / "figures", runs=found)
    return paths
