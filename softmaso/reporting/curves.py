"""Learning curves of an experiment: test accuracy and orthogonality error per epoch.

``load_curves(dir)`` is the runs :func:`~softmaso.reporting.frame.collect` read (with their
metrics.jsonl) as one tidy frame, a row per run and epoch. ``plot_curves(dir, out)`` draws
two figures with one panel per combination of the keys that vary across runs, ortho.mode
and seed aside (for Table 2: dataset x learning rate):

    curves.png/.pdf        test accuracy (%) per epoch (solid) and training accuracy (dashed:
                           the running accuracy of the epoch's training pass, in train mode),
                           mean line and ± std band over seeds (ddof=1), baseline (ortho.mode
                           none) against each ortho mode
    ortho_error.png/.pdf   mean over layers of the orthogonality error per epoch (log scale)

Diverged runs are left out of the bands (their count is in the title); started runs (no result
yet) are drawn up to their last finished epoch, so the band of a late epoch may rest on fewer
seeds.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from softmaso import rundir
from softmaso.errors import UserError
from softmaso.reporting import tables
from softmaso.reporting.figure1 import save_figures
from softmaso.reporting.frame import collect, epochs

COLORS = {
    "none": "tab:blue",
    "penalty": "tab:red",
    "exact": "tab:green",
    "so": "tab:orange",
    "srip": "tab:brown",
    "torch": "tab:olive",
}
COLUMNS = (
    "dir", "status", "seed", "epoch", "test_acc", "train_acc", "train_loss", "ortho_error_mean",
    "smoke",
)  # fmt: skip
# The two figures: file stem -> (column, y label, what the title names, how it is drawn).
FIGURES = {
    "curves": (
        "test_acc",
        "accuracy (%)",
        "test (solid) and training (dashed) accuracy",
        {"scale": 100.0, "dashed": "train_acc"},
    ),
    "ortho_error": (
        "ortho_error_mean",
        "orthogonality error (mean over layers)",
        "orthogonality error",
        {"log": True},
    ),
}


def _curves(results_dir: Path, found=None):
    """(tidy frame, panel keys, column key, name) of an experiment directory (`found`: its
    runs, :func:`collect`ed already)."""
    found = collect(results_dir) if found is None else found
    row_keys, col_key, _ = tables.table_keys(found)
    keys = [*row_keys, *([col_key] if col_key else [])]
    if "ortho.mode" not in keys:
        keys.append("ortho.mode")
    df = epochs(found)[[*keys, *COLUMNS]]
    panel_keys = [k for k in row_keys if k != "ortho.mode"]
    return df, panel_keys, col_key, str(found.attrs.get("name", Path(results_dir).name))


def load_curves(results_dir: Path):
    """One row per (run, epoch): the varying keys, seed, epoch, test_acc, train_acc, train_loss,
    ortho_error_mean (mean over layers), smoke; plus dir and status."""
    return _curves(results_dir)[0]


def _panels(df, panel_keys: list[str], col_key: str | None):
    """[(row index, column index, title, frame)] and the grid's shape."""
    import pandas as pd

    rank = tables.rank
    combos = sorted(
        {tuple(tables.clean(v) for v in r) for r in df[panel_keys].itertuples(index=False)},
        key=lambda c: [rank(k, v) for k, v in zip(panel_keys, c, strict=True)],
    ) or [()]  # no key varies between panels (pandas yields no rows for no columns): one panel
    cols = sorted(set(df[col_key]), key=lambda c: rank(col_key, c)) if col_key else [None]
    cells = [(combo, col) for combo in combos for col in cols]
    ncols = len(cols) if col_key else min(3, len(cells))
    out = []
    for i, (combo, col) in enumerate(cells):
        # compared value by value: a missing value (None) never equals under pandas' ==
        mask = pd.Series(True, index=df.index)
        if col_key:
            mask &= df[col_key].map(lambda x, c=tables.clean(col): tables.clean(x) == c)
        for k, v in zip(panel_keys, combo, strict=True):
            mask &= df[k].map(lambda x, v=v: tables.clean(x) == v)
        names = [_panel_label(k, v) for k, v in zip(panel_keys, combo, strict=True)]
        if col_key:
            names.append(tables.column_label(col_key, col))
        out.append((i // ncols, i % ncols, ", ".join(names) or "all runs", df[mask]))
    nrows = math.ceil(len(cells) / ncols)
    return out, (nrows, ncols)


def _panel_label(key: str, value) -> str:
    """A named value as the tables show it (CIFAR-10, baseline); others with their key's last
    part (activation=beta, learn_beta=True), so a panel of several keys reads on its own."""
    if key in tables.DISPLAY:
        return tables.show(key, value)
    return f"{key.rsplit('.', 1)[-1]}={tables.show(key, value)}"


def _draw(ax, panel, column: str, scale: float, dashed: str | None = None) -> None:
    """Mean line and ± std band (ddof=1) over seeds per epoch, one colour per ortho mode;
    `dashed`, a second column drawn the same way with dashed lines (no legend entry)."""
    from matplotlib.ticker import MaxNLocator

    if panel.empty:
        ax.text(0.5, 0.5, "no finished epoch yet", transform=ax.transAxes, ha="center")
        return
    modes = sorted(set(panel["ortho.mode"]), key=lambda m: tables.rank("ortho.mode", m))
    for mode in modes:
        sub = panel[panel["ortho.mode"] == mode]
        color = COLORS.get(mode, "tab:purple")
        label = f"{tables.show('ortho.mode', mode)} (n={sub['dir'].nunique()})"
        _band(ax, sub, column, scale, color, label=label)
        if dashed is not None and sub[dashed].notna().any():
            _band(ax, sub, dashed, scale, color, dashed=True)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _band(ax, runs, column: str, scale: float, color, *, label=None, dashed=False) -> None:
    """One column's mean line and ± std band (ddof=1) over the runs, per epoch."""
    stats = runs.groupby("epoch")[column].agg(["mean", "std"]).sort_index() * scale
    x, mean, std = stats.index.to_numpy(), stats["mean"], stats["std"].fillna(0.0)
    ax.plot(
        x, mean, color=color, lw=1.2 if dashed else 1.6, ls="--" if dashed else "-", label=label
    )
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.1 if dashed else 0.2, lw=0)


def _figure(df, layout, column, ylabel, suptitle, *, scale=1.0, log=False, dashed=None):
    """One figure of `column`, a subplot per panel of `layout` (:func:`_panels`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels, (nrows, ncols) = layout
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.2 * ncols, 3.2 * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    mixed = bool(df["smoke"].any()) and not bool(df["smoke"].all())
    for r, c, name, frame in panels:
        if mixed and bool(frame["smoke"].any()):
            name = f"{name} (SMOKE)"
        ax = axes[r][c]
        _draw(ax, frame, column, scale, dashed)
        ax.set_title(name, fontsize=10)
        if c == 0:
            ax.set_ylabel(ylabel)
        if log and (frame[column] > 0).any():  # a log axis needs a positive value
            ax.set_yscale("log")
    width = max(40, int(11 * ncols))  # characters a line of the title can hold
    title = "\n".join(textwrap.fill(line, width) for line in suptitle.split("\n"))
    fig.suptitle(title, fontsize=11 if ncols > 1 else 10)
    return fig


def _suptitle(name: str, what: str, smoke: bool, diverged: int) -> str:
    text = f"{name}: {what} per epoch, mean ± std over seeds (ddof=1)"
    if diverged:
        text += f"; {diverged} diverged run(s) left out"
    return f"{tables.SMOKE_TITLE}\n{text}" if smoke else text


def plot_curves(results_dir: Path, out_dir: Path, *, runs=None) -> list[Path]:
    """Write curves.png/.pdf and ortho_error.png/.pdf under `out_dir` (all four, or none);
    `runs`: the folder's runs, :func:`collect`ed already (a report reads the folder once)."""
    from softmaso.io import ensure_writable_dir

    df, panel_keys, col_key, name = _curves(results_dir, runs)
    diverged = df.loc[df.status == "diverged", "dir"].nunique()
    df = df[df.status != "diverged"]
    if df.empty:
        raise UserError(
            "RESULTS_DIR",
            f"{str(results_dir)!r} has no finished epoch to plot (no {rundir.METRICS} with an "
            "epoch outside diverged runs)",
        )
    out = ensure_writable_dir(Path(out_dir), where="--out")
    smoke = bool(df["smoke"].all())  # mixed: the smoke panels say so
    layout = _panels(df, panel_keys, col_key)
    figures = {
        out / stem: _figure(
            df, layout, column, ylabel, _suptitle(name, what, smoke, diverged), **how
        )
        for stem, (column, ylabel, what, how) in FIGURES.items()
    }
    return save_figures(figures)
