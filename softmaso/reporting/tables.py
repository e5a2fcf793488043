"""Tables of runs: a frame of runs (:func:`softmaso.reporting.frame.collect`) -> mean ± std
over seeds per cell. ``summarize`` picks the table's rows and columns from the config
keys that vary across runs (``optim.lr`` becomes the columns, as in the paper's Table 2), and
``render`` writes markdown, LaTeX, CSV or JSON, optionally beside the paper's Table 2.

Every cell shows mean ± std over seeds (std with ddof=1) and n, the number of finished runs;
diverged, started, pending and missing runs are counted in the cell, never averaged in. The
accuracy of a run is the table's endpoint (:class:`softmaso.config.Endpoint`: final, best or
the mean of the last K evaluated epochs). Each cell that has a baseline (by default the
``ortho.mode=none`` cell of its row group and column; any setting can be) gets a gain with its
95% interval, Welch's p, Holm's p over the table's gains and the detectable effect
(:mod:`softmaso.reporting.stats`).

Each part of a rendered table (the accuracies, the gains, the training times, the paper's
Table 2) is a frame of text cells whose columns are its header; markdown and LaTeX lay those
frames out, and CSV and JSON write the frame of cell records (``records``).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from softmaso.config import FINAL, Baseline, Endpoint
from softmaso.errors import UserError
from softmaso.reporting.frame import BOOKKEEPING, UNFINISHED, epochs
from softmaso.reporting.paper import PAPER_SOURCE, paper_gain, paper_value
from softmaso.reporting.stats import Comparison, compare, holm

# Keys that never split a table: seeds are what a cell averages over; checkpoint_every and
# eval_batch_size change no number, and compile only the rounding (like threads and devices: a
# grid begun on a CPU, eager, and finished on a GPU, compiled, is one experiment) [ours].
NEVER_SPLIT = ("seed", "train.checkpoint_every", "train.eval_batch_size", "train.compile")
# Keys always shown when they vary, even when another key determines them.
PROTECTED = ("data.name", "ortho.mode", "model.activation")
ROW_PRIORITY = ("data.name", "recipe", "ortho.mode", "model.activation")
COLUMN_KEY = "optim.lr"
DATASETS = ("svhn", "cifar10", "cifar100")  # the paper's row order
ORTHO_MODES = ("penalty", "exact", "so", "srip", "torch")
ORDER = {
    "data.name": DATASETS,
    "recipe": DATASETS,
    "ortho.mode": ("none", *ORTHO_MODES),
    "model.activation": ("relu", "swish", "beta"),
    "model.spec": ("relu", "abs", "leaky_relu", "pieces"),
}
DESCENDING = ("optim.lr",)
DISPLAY = {
    "data.name": {"svhn": "SVHN", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"},
    "ortho.mode": {
        "none": "baseline",
        "penalty": "ortho (penalty)",
        "exact": "ortho (exact)",
        "so": "SO (Bansal)",
        "srip": "SRIP (Bansal)",
        "torch": "exact (torch)",
    },
}
SMOKE_TITLE = "SMOKE RUN — synthetic stand-in data, not the paper's numbers"
DEFAULT_BASELINE = (("ortho.mode", "none"),)
SHORT = "short"  # finished runs with fewer evaluated epochs than the endpoint needs
GAIN_STATS = ("gain", "95% CI", "p", "p (Holm)", "detectable (80%)")
GAIN_NOTE = (
    "Gains over the baseline, in accuracy points: mean − the baseline cell's mean (its row "
    "group and column); 95% CI: Welch's t interval; p: Welch's t-test, two-sided; Holm: p "
    "adjusted by Holm's step-down method over this table's gains; detectable: the smallest "
    "true gain these runs would detect with 80% power at alpha = 0.05 (noncentral t, the "
    "same spread). n/a where a side has fewer than 2 runs."
)
TIME_NOTE = (
    "Training time per epoch (s): each run's median over its epochs of the training pass's "
    "wall-clock seconds (metrics.jsonl's train_seconds, evaluation excluded), mean ± std over "
    "the finished runs. Compare only runs that shared a machine and its load (env.json names it)."
)
PAPER_NOTE = (
    f"Against the paper: {PAPER_SOURCE}, mean ± std over 5 runs. Differences and gains in "
    "accuracy points; gain = ortho − baseline at the same learning rate; p = Welch's t-test "
    "(two-sided, unequal variances) on our runs, n/a when a side has fewer than 2."
)
PAPER_GAINS_NOTE = (
    f"The paper's gains at this table's learning rates ({PAPER_SOURCE}: its ortho row − its "
    "baseline, in points, on its datasets; our runs above are not among its settings)."
)


def footnote(endpoint: Endpoint) -> str:
    label = endpoint.label[0].upper() + endpoint.label[1:]
    return (
        f"{label} (endpoint {endpoint.text}); mean ± std over seeds, std with ddof=1 "
        "(none for n=1); n = finished runs. Diverged, damaged, failed, started, pending and "
        "missing runs are counted in their cell, never averaged in."
    )


# --------------------------------------------------------------------------------- summarize
@dataclass(frozen=True)
class Cell:
    """The runs sharing one row and column: finished accuracies (%) and the others' count."""

    row: tuple
    col: Any
    accs: tuple[float, ...]  # the endpoint's test accuracy (%) of each finished run, by seed
    seeds: tuple[int, ...]  # their seeds
    counts: dict[str, int]  # diverged, started, pending, missing, short -> number of runs
    settings: dict[str, Any]  # every config key with one value over the cell's runs
    packed: int = 0  # finished runs that trained in a pack
    epoch_s: tuple[float, ...] = ()  # each finished run's median training seconds per epoch

    @property
    def n(self) -> int:
        return len(self.accs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accs) if self.accs else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN for fewer than two runs."""
        return statistics.stdev(self.accs) if len(self.accs) > 1 else math.nan


@dataclass(frozen=True)
class Summary:
    """A table: rows x columns of cells, with what it was built from."""

    name: str
    row_keys: tuple[str, ...]
    col_key: str | None
    rows: tuple[tuple, ...]
    cols: tuple
    cells: dict[tuple[tuple, Any], Cell]  # in the table's row and column order
    smoke: bool  # every run is a smoke run
    folded_keys: tuple[str, ...]  # varying keys that follow from the rows (e.g. batch size)
    warnings: tuple[str, ...]
    smoke_rows: frozenset = frozenset()  # rows of smoke runs, when smoke and real runs mix
    endpoint: Endpoint = FINAL
    baseline: Baseline = DEFAULT_BASELINE  # ((key, value), ...) of the cell gains are against
    # (row, col) -> (baseline cell's (row, col), its comparison, Holm-adjusted across the
    # table), in the cells' order
    comparisons: dict[tuple[tuple, Any], tuple[tuple[tuple, Any], Comparison]] = field(
        default_factory=dict
    )

    def cell(self, row: tuple, col: Any) -> Cell | None:
        return self.cells.get((row, col))


def clean(value: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, so values compare and hash reliably."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def table_keys(runs) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """(row keys, column key, folded keys) from the config keys that vary across runs.

    optim.lr is the column key when it varies. A varying key that another row key (or the
    column) determines, like CIFAR-100's batch size, is folded away unless it is protected.
    """
    config = [k for k in runs.columns if k not in BOOKKEEPING and k not in NEVER_SPLIT]
    varying = [k for k in config if runs[k].nunique() > 1]
    col_key = COLUMN_KEY if COLUMN_KEY in varying else None
    first = [k for k in ROW_PRIORITY if k in varying]
    rows = first + [k for k in varying if k not in first and k != col_key]
    folded = []
    for key in reversed(rows[:]):  # least important first; recipe goes last
        others = [k for k in rows if k != key] + ([col_key] if col_key else [])
        if key in PROTECTED or not others:
            continue
        if runs.groupby(others, dropna=False)[key].nunique().le(1).all():  # one per combination
            rows.remove(key)
            folded.append(key)
    return tuple(rows), col_key, tuple(reversed(folded))


def rank(key: str | None, value: Any) -> tuple:
    """Sort key of one value: the paper's order where known, numbers, then text, None last."""
    if value is None:
        return (2, 0, "")
    order = ORDER.get(key or "", ())
    if value in order:
        return (0, order.index(value), "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, -value if key in DESCENDING else value, "")
    return (1, 0, str(value))


def per_run(runs, endpoint: Endpoint):
    """(accuracy (%) at `endpoint`, median training seconds per epoch) of each finished run,
    as two Series beside `runs`: NaN for the other runs, an accuracy of NaN for a run with
    fewer evaluated epochs than last:K needs, seconds of NaN where none were recorded."""
    finished = runs["status"] == "finished"
    tidy = epochs(runs[finished])  # a row per run and epoch
    seconds = runs["dir"].map(tidy.groupby("dir")["train_seconds"].median())
    tested = tidy.dropna(subset=["test_acc"]).groupby("dir")["test_acc"]
    if endpoint.kind == "final":
        value = runs["acc"]
    elif endpoint.kind == "best":
        value = runs["dir"].map(tested.max())
    else:
        k = endpoint.k
        value = runs["dir"].map(
            tested.agg(lambda a: statistics.fmean(a.iloc[-k:]) if len(a) >= k else math.nan)
        )
    return 100.0 * value.where(finished), seconds.where(finished)


def summarize(runs, *, endpoint: Endpoint = FINAL, baseline: Baseline | None = None) -> Summary:
    """Cells of mean ± std (ddof=1) over seeds of each run's `endpoint`, rows and columns from
    the varying keys, and each cell's gain over its `baseline` ((key, value), ...): the cell
    with those values and otherwise the most row keys in common, in the same column unless the
    column key is a baseline key (default ortho.mode=none)."""
    if len(runs) == 0:
        raise UserError("RESULTS_DIR", "no runs to tabulate")
    row_keys, col_key, folded = table_keys(runs)
    config = [k for k in runs.columns if k not in BOOKKEEPING]
    value, seconds = per_run(runs, endpoint)
    values = runs[list(row_keys)].astype(object).to_numpy().tolist()  # Python values
    keyed = runs.assign(
        row=[tuple(map(clean, v)) for v in values],
        col=runs[col_key] if col_key else None,
        value=value,
        seconds=seconds,
    )
    cells, warnings = {}, _folder_warnings(runs)
    for (row, col), members in keyed.groupby(["row", "col"], sort=False, dropna=False):
        col = clean(col)
        pairs = zip((*row_keys, col_key), (*row, col), strict=True)
        where = ", ".join(f"{k}={v}" for k, v in pairs if k) or "all runs"
        cells[(row, col)] = _cell(row, col, members, config)
        warnings += _cell_warnings(members, where)
    mixed = runs["smoke"].any() and not runs["smoke"].all()
    rows = tuple(sorted({r for r, _ in cells}, key=lambda r: list(map(rank, row_keys, r))))
    cols = tuple(sorted({c for _, c in cells}, key=lambda c: rank(col_key, c)))
    summary = Summary(
        name=str(runs.attrs.get("name", "runs")),
        row_keys=row_keys,
        col_key=col_key,
        rows=rows,
        cols=cols,
        cells={(r, c): cells[(r, c)] for r in rows for c in cols if (r, c) in cells},
        smoke=bool(runs["smoke"].all()),
        smoke_rows=frozenset(keyed.loc[keyed["smoke"].astype(bool), "row"] if mixed else ()),
        folded_keys=folded,
        warnings=(),
        endpoint=endpoint,
        baseline=baseline or DEFAULT_BASELINE,
    )
    comparisons, why = _comparisons(summary)
    if baseline is not None and why:
        warnings.append(why)
    if endpoint.kind == "best":
        warnings.append(
            "endpoint best: each run's highest test accuracy over its epochs, chosen on the "
            "test set itself, so it is optimistic"
        )
    return replace(summary, comparisons=comparisons, warnings=tuple(sorted(warnings)))


def _cell(row: tuple, col: Any, members, config: list[str]) -> Cell:
    """The cell of `members`, its runs (with their endpoint `value` and `seconds`)."""
    done = members[members["value"].notna()].sort_values("seed", kind="stable")
    states = members["status"].value_counts()
    counts = {s: int(states.get(s, 0)) for s in UNFINISHED}
    counts[SHORT] = int(states.get("finished", 0)) - len(done)
    one = members[config].nunique() == 1  # the keys with one value (missing ones aside)
    return Cell(
        row,
        col,
        accs=tuple(map(float, done["value"])),
        seeds=tuple(map(clean, done["seed"])),
        counts=counts,
        settings={k: clean(members[k].dropna().iloc[0]) for k in one.index[one]},
        packed=int(done["packed"].sum()),
        epoch_s=tuple(map(float, done["seconds"].dropna())),
    )


def _folder_warnings(runs) -> list[str]:
    """Damaged runs, and run directories below the grid that its grid.json does not list."""
    damaged = runs[runs["status"] == "damaged"]
    out = [f"damaged run {r.dir}: {r.problem}; not counted" for r in damaged.itertuples()]
    out += [f"damaged run {u}; not counted" for u in runs.attrs.get("unplaced", [])]
    if foreign := runs.attrs.get("foreign"):
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        out.append(
            f"{len(foreign)} run director{'y' if len(foreign) == 1 else 'ies'} below this grid "
            f"that its grid.json does not list ({', '.join(foreign[:3])}{more}): not counted"
        )
    return out


def _cell_warnings(members, where: str) -> list[str]:
    """A seed given twice in one cell; finished runs of one cell on different machines."""
    dirs = members.groupby("seed", sort=False, dropna=False)["dir"].agg(list)
    out = [
        f"{where}: seed {clean(seed)} appears {len(d)} times ({', '.join(d)}): mixed recipe "
        "versions or copied runs? All of them are counted."
        for seed, d in dirs.items()
        if len(d) > 1
    ]
    finished = members.loc[members["status"] == "finished", "machines"]
    machines = sorted({m for ms in finished for m in ms})
    if len(machines) > 1:
        out.append(
            f"{where}: its finished runs trained on {' and '.join(machines)} (env.json, "
            "launches.jsonl); on a CPU the thread count changes the order of floating-point "
            "sums, and so the numbers can differ"
        )
    return out


# ------------------------------------------------------------------------------- the gains
def _same(a: Any, b: Any) -> bool:
    """Equal settings: numbers up to rounding (0.001 == 1e-3), booleans only to booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b)
    return a == b


def _comparisons(summary: Summary):
    """Every cell's comparison with its baseline cell, Holm-adjusted over the table; and why
    there are none, where there are none. A cell's baseline cell has the baseline settings
    and, of those, the most row keys in common with it (in its column unless the column key
    is a baseline key); a cell with two equally close has none."""
    text = _baseline_text(summary)
    keys = (*summary.row_keys, summary.col_key)
    base_keys = {k for k, _ in summary.baseline}
    missing = [k for k, _ in summary.baseline if k not in keys]
    if missing:
        return {}, f"baseline {text}: {missing[0]} is not a row or column key of this table"
    bases = []  # the cells with every baseline setting
    for row, col in summary.cells:
        values = dict(zip(keys, (*row, col), strict=True))
        if all(_same(values[k], v) for k, v in summary.baseline):
            bases.append((row, col))
    free = [j for j, k in enumerate(summary.row_keys) if k not in base_keys]
    pairs = {}
    for (row, col), cell in summary.cells.items():
        if (row, col) in bases:
            continue
        scores = {
            (r, c): sum(r[j] == row[j] for j in free)
            for r, c in bases
            if c == col or summary.col_key in base_keys
        }
        best = max(scores.values(), default=None)
        closest = [at for at, score in scores.items() if score == best]
        if len(closest) == 1 and (comparison := compare(cell.accs, summary.cells[closest[0]].accs)):
            pairs[(row, col)] = (closest[0], comparison)
    if not pairs:
        return {}, f"baseline {text}: no cell of this table has it"
    adjusted = holm([c.p for _, c in pairs.values()])
    return {
        at: (base, replace(c, p_holm=p))
        for (at, (base, c)), p in zip(pairs.items(), adjusted, strict=True)
    }, None


# ------------------------------------------------------------------------------- the paper
@dataclass(frozen=True)
class Versus:
    """One cell beside the paper's Table 2; all numbers in accuracy points (%)."""

    paper_mean: float | None
    paper_std: float | None
    diff: float | None  # ours - paper
    gain: float | None  # ours: this ortho mode's mean - the baseline's (same row, column)
    gain_paper: float | None  # the paper's ortho - baseline
    gain_p: float | None  # Welch's t-test of our gain, two-sided; None when a side has n < 2


def _num(x: float | None, digits: int | None = None) -> float | None:
    """NaN -> None; optionally rounded (to `digits` decimals) for files people read."""
    if x is None or math.isnan(x):
        return None
    return float(x) if digits is None else round(float(x), digits)


def versus(summary: Summary, cell: Cell) -> Versus:
    paper = paper_value(cell)
    base_at, comparison = summary.comparisons.get((cell.row, cell.col), (None, None))
    base_paper = paper_value(summary.cells[base_at]) if base_at else None
    return Versus(
        paper_mean=paper[0] if paper else None,
        paper_std=paper[1] if paper else None,
        diff=_num(cell.mean - paper[0]) if paper else None,
        gain=_num(comparison.gain) if comparison else None,
        gain_paper=paper[0] - base_paper[0] if comparison and paper and base_paper else None,
        gain_p=comparison.p if comparison else None,
    )


def _paper_groups(summary: Summary) -> list[tuple[str, list[tuple]]]:
    """(title, rows) of each group of rows with a cell in Table 2: the rows grouped by every
    row key but ortho.mode (a dataset, for Table 2)."""
    keys = [k for k in summary.row_keys if k != "ortho.mode"]
    groups: dict[tuple, list[tuple]] = {}
    for row in summary.rows:
        key = tuple(v for k, v in zip(summary.row_keys, row, strict=True) if k != "ortho.mode")
        groups.setdefault(key, []).append(row)
    out = []
    for key, rows in groups.items():
        cells = [c for r in rows for col in summary.cols if (c := summary.cell(r, col))]
        if not any(paper_value(c) for c in cells):
            continue
        parts = [
            show(k, v) if k in ("data.name", "recipe") else f"{k} = {show(k, v)}"
            for k, v in zip(keys, key, strict=True)
        ]
        if "data.name" not in keys:
            parts.insert(0, show("data.name", cells[0].settings.get("data.name")))
        out.append((", ".join(parts), rows))
    return out


def _block(summary: Summary, rows: list[tuple]) -> list[list[str]]:
    """The comparison lines of one group: ours / paper / difference per row, then gains."""
    lines, gains = [], []
    for row in rows:
        cells = [summary.cell(row, col) for col in summary.cols]
        name = show("ortho.mode", next(c for c in cells if c).settings.get("ortho.mode"))
        vs = [versus(summary, c) if c else None for c in cells]
        paper = [
            f"{v.paper_mean:.1f} ± {v.paper_std:.1f}" if v and v.paper_mean is not None else ""
            for v in vs
        ]
        lines.append([f"{name}: ours", *(cell_text(c, with_n=False) for c in cells)])
        lines.append([f"{name}: paper", *paper])
        lines.append([f"{name}: ours − paper", *(_signed(v.diff) if v else "" for v in vs)])
        if any(v and (v.gain is not None or v.gain_paper is not None) for v in vs):
            ours = [
                "" if v is None or v.gain is None else f"{_signed(v.gain)} (p={p_text(v.gain_p)})"
                for v in vs
            ]
            gains.append([f"gain {name} − baseline: ours", *ours])
            paper = [_signed(v.gain_paper) if v else "" for v in vs]
            gains.append([f"gain {name} − baseline: paper", *paper])
    return lines + gains


# ---------------------------------------------------------------------------- formatting
def show(key: str | None, value: Any) -> str:
    """A key's value for people: dataset and ortho names as in the paper, numbers short."""
    if value is None:
        return "?"
    if key in DISPLAY and value in DISPLAY[key]:
        return DISPLAY[key][value]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def column_label(key: str | None, value: Any) -> str:
    if key is None:
        return "test accuracy (%)"
    if key == "optim.lr":
        return f"lr {show(key, value)}"
    return f"{key} = {show(key, value)}"


def title(summary: Summary) -> str:
    text = f"{summary.name}: {summary.endpoint.label}"
    if summary.smoke_rows:
        return f"{text}; rows marked SMOKE are synthetic stand-in data, not the paper's numbers"
    return f"{SMOKE_TITLE}. {text}" if summary.smoke else text


def cell_text(cell: Cell | None, *, with_n: bool = True) -> str:
    """'80.3 ± 0.4 (n=5)', '79.9 ± 0.5 (n=4; 1 diverged)', '— (3 missing, 2 started)'."""
    if cell is None:
        return ""
    notes = [f"{cell.counts[s]} {s}" for s in UNFINISHED if cell.counts.get(s)]
    if cell.counts.get(SHORT):
        notes.append(f"{cell.counts[SHORT]} finished too short for the endpoint")
    notes = ", ".join(notes + ([f"{cell.packed} packed"] if cell.packed else []))
    if cell.n == 0:
        return f"— ({notes})" if notes else "—"
    acc = _mean_std(cell.accs)
    if not with_n:
        return acc
    return f"{acc} (n={cell.n}" + (f"; {notes})" if notes else ")")


def _mean_std(values: tuple[float, ...]) -> str:
    """'80.3 ± 0.4': mean ± std (ddof=1); the mean alone for one value."""
    mean = f"{statistics.fmean(values):.1f}"
    return f"{mean} ± {statistics.stdev(values):.1f}" if len(values) > 1 else mean


def _seconds_text(cell: Cell | None) -> str:
    """A cell's training seconds per epoch, mean ± std."""
    return _mean_std(cell.epoch_s) if cell and cell.epoch_s else "—"


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f}"


def _fixed(x: float | None, signed: bool = True) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def p_text(p: float | None) -> str:
    """A p-value as tables print it: 3 significant digits (n/a for none)."""
    return "n/a" if p is None else f"{p:.3g}"


def _setting_text(baseline: Baseline) -> str:
    """((key, value), ...) as written in a recipe: key=value, comma-separated."""
    return ",".join(f"{key}={value}" for key, value in baseline)


def _baseline_text(summary: Summary) -> str:
    return ", ".join(
        f"{key}={show(key, value) if key != 'ortho.mode' else value}"
        for key, value in summary.baseline
    )


def _row_labels(summary: Summary, row: tuple) -> list[str]:
    """The row's labels (["all"] for a table without row keys), SMOKE marked."""
    labels = [show(k, v) for k, v in zip(summary.row_keys, row, strict=True)]
    if row in summary.smoke_rows and labels:
        labels[0] = f"{labels[0]} (SMOKE)"
    return labels or ["all"]


# -------------------------------------------------------------------------- the parts as frames
def grid(summary: Summary, text=None, what: str | None = None):
    """The table's rows x columns as a frame: a row's labels, then `text` of each cell
    (default: its accuracy); `what` heads the one column of a table without a column key."""
    labels = [column_label(summary.col_key, c) for c in summary.cols]
    header = [
        *(summary.row_keys or ["runs"]),
        *([what] if what and not summary.col_key else labels),
    ]
    text = text or cell_text
    lines = [
        [*_row_labels(summary, row), *(text(summary.cell(row, c)) for c in summary.cols)]
        for row in summary.rows
    ]
    return pd.DataFrame(lines, columns=header, dtype=object)


def gain_frame(summary: Summary):
    """One line per cell with a baseline: its row labels (and column), the baseline row's
    labels (its column where the baseline is a column), then gain, CI, p, Holm p and the
    detectable effect; None where no cell has a baseline."""
    lines = []
    for (row, col), ((base_row, base_col), c) in summary.comparisons.items():
        where = [show(summary.col_key, col)] if summary.col_key else []
        base = ", ".join(_row_labels(summary, base_row)[: len(summary.row_keys)])
        if base_col != col:
            base = show(summary.col_key, base_col)
        ci = "n/a" if c.ci_low is None else f"[{_fixed(c.ci_low)}, {_fixed(c.ci_high)}]"
        stats = [_fixed(c.gain), ci, p_text(c.p), p_text(c.p_holm), _fixed(c.detectable, False)]
        lines.append([*_row_labels(summary, row), *where, base, *stats])
    col = [("lr" if summary.col_key == COLUMN_KEY else summary.col_key)] if summary.col_key else []
    header = [*(summary.row_keys or ["runs"]), *col, f"vs {_baseline_text(summary)}", *GAIN_STATS]
    return pd.DataFrame(lines, columns=header, dtype=object) if lines else None


def conv1_note(summary: Summary) -> str | None:
    """What orthogonality does to largeCNN's first layer where its rows cannot be orthogonal
    (more filters than values per filter), for tables with penalty or exact runs."""
    cells = [c for c in summary.cells.values() if c.settings.get("ortho.mode") in ORTHO_MODES]
    shapes = set()
    for c in cells:
        width, name = c.settings.get("model.width"), c.settings.get("data.name")
        if not isinstance(width, (int, float)) or name in (None, "npz"):
            continue
        c_in = 1 if name in ("fashion-mnist", "mnist", "kmnist") else 3
        c_out = max(1, round(96 * width))
        if c_out > 9 * c_in:
            shapes.add(f"{c_out} x {9 * c_in}")
    if not shapes:
        return None
    return (
        f"conv1 has more filters than values per filter ({', '.join(sorted(shapes))}), so its "
        "filters cannot be orthogonal: exact makes its columns orthonormal instead (and "
        "ortho_error measures columns there), as do so, srip and torch where they appear; "
        "the penalty (eq. 11) acts on its rows and can "
        "lower itself by shrinking them, which batch norm undoes: compare filter_norm and "
        "row_energy per layer in each run's metrics.jsonl."
    )


def records(summary: Summary, paper: bool):
    """One tidy record per cell: row keys, column key, statistics, counts (+ the paper), and
    the cell's accuracies and seeds. Accuracies and differences are rounded to 1e-6 points;
    p-values are not rounded."""
    out = []
    for (row, col), cell in summary.cells.items():
        rec: dict[str, Any] = dict(zip(summary.row_keys, row, strict=True))
        if summary.col_key:
            rec[summary.col_key] = col
        rec.update(mean=_num(cell.mean, 6), std=_num(cell.std, 6), n=cell.n, **cell.counts)
        rec["smoke"] = summary.smoke or row in summary.smoke_rows
        rec["epoch_s"] = _num(statistics.fmean(cell.epoch_s), 3) if cell.epoch_s else None
        rec["endpoint"] = summary.endpoint.text
        base_at, c = summary.comparisons.get((row, col), (None, Comparison(math.nan)))
        rec["baseline"] = _setting_text(summary.baseline) if base_at else None
        rec.update(gain=_num(c.gain, 6), gain_ci_low=_num(c.ci_low, 6))
        rec.update(gain_ci_high=_num(c.ci_high, 6), gain_p=c.p, gain_p_holm=c.p_holm)
        rec["gain_detectable"] = _num(c.detectable, 6)
        if paper:
            v = versus(summary, cell)
            rec.update(paper_mean=v.paper_mean, paper_std=v.paper_std)
            rec.update(diff=_num(v.diff, 6), gain_paper=_num(v.gain_paper, 6))
        rec.update(accs=[round(a, 6) for a in cell.accs], seeds=list(cell.seeds))
        out.append(rec)
    return pd.DataFrame(out, dtype=object)


# ------------------------------------------------------------------------------ renderers
def render(
    summary: Summary, fmt: Literal["markdown", "latex", "csv", "json"], *, paper: bool = False
) -> str:
    """The table as markdown, LaTeX (booktabs), tidy CSV or JSON; `paper` adds Table 2."""
    renderers = {"markdown": _markdown, "latex": _latex, "csv": _csv, "json": _json}
    if fmt not in renderers:
        raise UserError("--format", f"{fmt!r}; use markdown, latex, csv or json")
    return renderers[fmt](summary, paper)


def _pipe(frame, left: int) -> list[str]:
    """A frame as a markdown pipe table: `left` label columns, then right-aligned ones."""
    rule = ["---"] * left + ["---:"] * (frame.shape[1] - left)
    lines = [frame.columns, rule, *frame.itertuples(index=False)]
    return ["| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |" for line in lines]


def _markdown(summary: Summary, paper: bool) -> str:
    left = max(len(summary.row_keys), 1)
    lines = [f"### {title(summary)}", "", *_pipe(grid(summary), left), ""]
    lines.append(footnote(summary.endpoint))
    if summary.folded_keys:
        lines.append(f"Also varying, fixed by the rows: {', '.join(summary.folded_keys)}.")
    if (gains := gain_frame(summary)) is not None:
        lines += ["", GAIN_NOTE, "", *_pipe(gains, gains.shape[1] - len(GAIN_STATS))]
    if note := conv1_note(summary):
        lines += ["", note]
    if any(c.epoch_s for c in summary.cells.values()):  # a table of training seconds
        times = grid(summary, _seconds_text, "training s per epoch")
        lines += ["", TIME_NOTE, "", *_pipe(times, left)]
    lines += [f"> Warning: {w}" for w in summary.warnings]
    if paper:
        lines += ["", *_markdown_paper(summary)]
    return "\n".join(lines) + "\n"


def _markdown_paper(summary: Summary) -> list[str]:
    """Our cells beside Table 2's; where none is one of its settings, the paper's gains at
    this table's learning rates (for a table that holds a penalty comparison)."""
    labels = [column_label(summary.col_key, c) for c in summary.cols]
    if groups := _paper_groups(summary):
        lines = [f"**{PAPER_NOTE}**"]
        for name, rows in groups:
            block = pd.DataFrame(_block(summary, rows), columns=[name, *labels], dtype=object)
            lines += ["", *_pipe(block, 1)]
        return lines
    lines = [f"No cell of this table has a counterpart in {PAPER_SOURCE}."]
    modes = {c.settings.get("ortho.mode") for c in summary.cells.values()}
    if summary.col_key == COLUMN_KEY and "penalty" in modes:
        gains = [
            [
                f"{show('data.name', name)} (paper)",
                *(_signed(paper_gain(name, lr)) for lr in summary.cols),
            ]
            for name in DATASETS
        ]
        if gains := [line for line in gains if any(line[1:])]:
            gains = pd.DataFrame(gains, columns=["", *labels], dtype=object)
            lines += ["", PAPER_GAINS_NOTE, "", *_pipe(gains, 1)]
    return lines


TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text (special characters escaped, dashes and ± typeset)."""
    out = "".join(TEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("—", "---").replace("−", "$-$")


def _tex_rows(lines) -> list[str]:
    return [" & ".join(tex_escape(str(c)) for c in line) + r" \\" for line in lines]


def _tabular(frame, left: int, body: list[str]) -> list[str]:
    """A booktabs tabular of `frame`'s header and the `body` lines."""
    spec = "l" * left + "r" * (frame.shape[1] - left)
    head = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *_tex_rows([frame.columns])]
    return [*head, *body, r"\bottomrule", r"\end{tabular}"]


def _latex(summary: Summary, paper: bool) -> str:
    caption = f"{title(summary)}. {footnote(summary.endpoint)}"
    if paper and _paper_groups(summary):
        caption += f" Below: {PAPER_NOTE}"
    frame = grid(summary)
    body = []
    for i, line in enumerate(frame.itertuples(index=False)):  # a rule between row groups
        if i and summary.rows[i][:1] != summary.rows[i - 1][:1]:
            body.append(r"\midrule")
        body += _tex_rows([line])
    lines = [
        r"% softmaso table; needs \usepackage{booktabs}",
        *(f"% warning: {w}" for w in summary.warnings),
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + tex_escape(caption) + "}",
        *_tabular(frame, max(len(summary.row_keys), 1), [r"\midrule", *body]),
    ]
    if (gains := gain_frame(summary)) is not None:
        rows = [r"\midrule", *_tex_rows(gains.itertuples(index=False))]
        lines += [r"\par\medskip", tex_escape(GAIN_NOTE), r"\par\medskip"]
        lines += _tabular(gains, gains.shape[1] - len(GAIN_STATS), rows)
    if note := conv1_note(summary):
        lines += [r"\par\medskip", tex_escape(note)]
    if paper:
        lines += _latex_paper(summary)
    return "\n".join([*lines, r"\end{table}"]) + "\n"


def _latex_paper(summary: Summary) -> list[str]:
    groups = _paper_groups(summary)
    if not groups:
        return [f"% no cell has a counterpart in {PAPER_SOURCE}"]
    header = pd.DataFrame(columns=["", *(column_label(summary.col_key, c) for c in summary.cols)])
    body = []
    for name, rows in groups:
        name = tex_escape(name)
        body += [r"\midrule", rf"\multicolumn{{{header.shape[1]}}}{{l}}{{\textit{{{name}}}}} \\"]
        body += _tex_rows(_block(summary, rows))
    return [r"\par\medskip", *_tabular(header, 1, body)]


def _csv(summary: Summary, paper: bool) -> str:
    frame = records(summary, paper).drop(columns=["accs", "seeds"])
    return frame.to_csv(index=False, lineterminator="\n", na_rep="")


def _json(summary: Summary, paper: bool) -> str:
    doc = {
        "name": summary.name,
        "title": title(summary),
        "smoke": summary.smoke,
        "unit": f"{summary.endpoint.label}, percent",
        "endpoint": summary.endpoint.text,
        "baseline": _setting_text(summary.baseline),
        "std_ddof": 1,
        "row_keys": list(summary.row_keys),
        "col_key": summary.col_key,
        "folded_keys": list(summary.folded_keys),
        "footnote": footnote(summary.endpoint),
        "gain_note": GAIN_NOTE,
        "warnings": list(summary.warnings),
        "cells": records(summary, paper).to_dict("records"),
    }
    if paper:
        doc["paper"] = {"source": PAPER_SOURCE, "note": PAPER_NOTE}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def write_table(text: str, out: Path | None) -> None:
    """Write the table atomically to `out`, or to stdout when `out` is None."""
    if out is None:
        sys.stdout.write(text)
        return
    from softmaso.io import atomic_write, ensure_writable_dir

    ensure_writable_dir(Path(out).parent, where="--out")
    atomic_write(Path(out), lambda tmp: tmp.write_text(text))
