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
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from softmaso.config import FINAL, Baseline, Endpoint
from softmaso.errors import UserError
from softmaso.reporting.frame import BOOKKEEPING, UNFINISHED
from softmaso.reporting.paper import PAPER_SOURCE, paper_gain, paper_value
from softmaso.reporting.stats import Comparison, compare, holm

# Keys that never split a table: seeds are what a cell averages over; the other two only set
# how often checkpoints are written and how evaluation is chunked [ours].
NEVER_SPLIT = ("seed", "train.checkpoint_every", "train.eval_batch_size")
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


def footnote(endpoint: Endpoint) -> str:
    label = endpoint.label[0].upper() + endpoint.label[1:]
    return (
        f"{label} (endpoint {endpoint.text}); mean ± std over seeds, std with ddof=1 "
        "(none for n=1); n = finished runs. Diverged, damaged, failed, started, pending and "
        "missing runs are counted in their cell, never averaged in."
    )


# ----------------------------------------------------------------------------------- collect
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
    dirs: tuple[str, ...]
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
    cells: dict[tuple[tuple, Any], Cell]
    smoke: bool  # every run is a smoke run
    folded_keys: tuple[str, ...]  # varying keys that follow from the rows (e.g. batch size)
    warnings: tuple[str, ...]
    smoke_rows: frozenset = frozenset()  # rows of smoke runs, when smoke and real runs mix
    endpoint: Endpoint = FINAL
    baseline: Baseline = DEFAULT_BASELINE  # ((key, value), ...) of the cell gains are against
    # (row, col) -> (baseline cell's (row, col), its comparison, Holm-adjusted across the table)
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


def _distinct(values) -> set:
    return {clean(v) for v in values} - {None}


def _determined(records: list[dict], key: str, by: list[str]) -> bool:
    """Whether `key` has one value for each combination of the keys `by`."""
    if not by:
        return False
    seen: dict[tuple, set] = {}
    for r in records:
        seen.setdefault(tuple(clean(r.get(k)) for k in by), set()).update(_distinct([r.get(key)]))
    return all(len(values) <= 1 for values in seen.values())


def table_keys(runs) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """(row keys, column key, folded keys) from the config keys that vary across runs.

    optim.lr is the column key when it varies. A varying key that another row key (or the
    column) determines, like CIFAR-100's batch size, is folded away unless it is protected.
    """
    records = runs.to_dict("records")
    config = [k for k in runs.columns if k not in BOOKKEEPING and k not in NEVER_SPLIT]
    varying = [k for k in config if len(_distinct(runs[k])) > 1]
    col_key = COLUMN_KEY if COLUMN_KEY in varying else None
    first = [k for k in ROW_PRIORITY if k in varying]
    rows = first + [k for k in varying if k not in first and k != col_key]
    folded = []
    for key in reversed(rows[:]):  # least important first; recipe goes last
        others = [k for k in rows if k != key] + ([col_key] if col_key else [])
        if key not in PROTECTED and _determined(records, key, others):
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


def endpoint_value(run: dict, endpoint: Endpoint) -> float | None:
    """A finished run's accuracy (fraction) at `endpoint`; None where it has none (a run
    with fewer evaluated epochs than last:K needs)."""
    if endpoint.kind == "final":
        return clean(run["acc"])
    accs = tuple(run.get("test_accs") or ())
    if endpoint.kind == "best":
        return max(accs) if accs else None
    return statistics.fmean(accs[-endpoint.k :]) if len(accs) >= endpoint.k else None


def _cell(row: tuple, col: Any, members: list[dict], endpoint: Endpoint = FINAL) -> Cell:
    finished = [r for r in members if r["status"] == "finished"]
    at = {r["dir"]: endpoint_value(r, endpoint) for r in finished}
    done = sorted(
        (r for r in finished if at[r["dir"]] is not None),
        key=lambda r: rank("seed", clean(r.get("seed"))),
    )
    counts = {s: sum(r["status"] == s for r in members) for s in UNFINISHED}
    counts[SHORT] = len(finished) - len(done)
    keys = [k for k in members[0] if k not in BOOKKEEPING]
    settings = {}
    for k in keys:
        values = _distinct(r.get(k) for r in members)
        if len(values) == 1:
            settings[k] = values.pop()
    return Cell(
        row,
        col,
        tuple(100.0 * float(at[r["dir"]]) for r in done),
        tuple(clean(r.get("seed")) for r in done),
        counts,
        settings,
        tuple(r["dir"] for r in members),
        sum(bool(r.get("packed")) for r in done),
        tuple(float(r["epoch_s"]) for r in done if clean(r.get("epoch_s")) is not None),
    )


def _duplicate_seeds(cell: Cell, members: list[dict], label: str) -> list[str]:
    by_seed: dict[Any, list[str]] = {}
    for r in members:
        by_seed.setdefault(clean(r.get("seed")), []).append(r["dir"])
    return [
        f"{label}: seed {seed} appears {len(dirs)} times ({', '.join(dirs)}): mixed recipe "
        "versions or copied runs? All of them are counted."
        for seed, dirs in by_seed.items()
        if len(dirs) > 1
    ]


def summarize(runs, *, endpoint: Endpoint = FINAL, baseline: Baseline | None = None) -> Summary:
    """Cells of mean ± std (ddof=1) over seeds of each run's `endpoint`, rows and columns from
    the varying keys, and each cell's gain over its `baseline` ((key, value), ...): the cell
    with those values and otherwise the most row keys in common, in the same column unless the
    column key is a baseline key (default ortho.mode=none)."""
    if len(runs) == 0:
        raise UserError("RESULTS_DIR", "no runs to tabulate")
    row_keys, col_key, folded = table_keys(runs)
    groups: dict[tuple[tuple, Any], list[dict]] = {}
    for r in runs.to_dict("records"):
        row = tuple(clean(r.get(k)) for k in row_keys)
        col = clean(r.get(col_key)) if col_key else None
        groups.setdefault((row, col), []).append(r)
    rows = sorted({row for row, _ in groups}, key=lambda row: _row_rank(row_keys, row))
    cols = sorted({col for _, col in groups}, key=lambda col: rank(col_key, col))
    cells, warnings = {}, []
    for (row, col), members in groups.items():
        cells[(row, col)] = _cell(row, col, members, endpoint)
        where = _where(row_keys, row, col_key, col)
        warnings += _duplicate_seeds(cells[(row, col)], members, where)
        machines = sorted({m for r in members if r["status"] == "finished" for m in r["machines"]})
        if len(machines) > 1:
            warnings.append(
                f"{where}: its finished runs trained on {' and '.join(machines)} (env.json, "
                "launches.jsonl); on a CPU the thread count changes the sums, so the numbers"
            )
    for r in runs.to_dict("records"):
        if r["status"] == "damaged":
            warnings.append(f"damaged run {r['dir']}: {r['problem']}; not counted")
    warnings += [f"damaged run {u}; not counted" for u in runs.attrs.get("unplaced", [])]
    if foreign := runs.attrs.get("foreign"):
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        warnings.append(
            f"{len(foreign)} run director{'y' if len(foreign) == 1 else 'ies'} below this grid "
            f"that its grid.json does not list ({shown}): not counted"
        )
    summary = Summary(
        name=str(runs.attrs.get("name", "runs")),
        row_keys=row_keys,
        col_key=col_key,
        rows=tuple(rows),
        cols=tuple(cols),
        cells=cells,
        smoke=bool(runs["smoke"].all()),
        smoke_rows=_smoke_rows(runs, row_keys),
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


def _same(a: Any, b: Any) -> bool:
    """Equal settings: numbers up to rounding (0.001 == 1e-3), booleans only to booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b)
    return a == b


def _matches(summary: Summary, row: tuple, col: Any) -> bool:
    """Whether the cell at (row, col) has every baseline setting."""
    keys = summary.row_keys
    return all(
        _same(col, value) if key == summary.col_key else _same(row[keys.index(key)], value)
        for key, value in summary.baseline
    )


def _baseline_of(summary: Summary, row: tuple, col: Any) -> tuple[tuple, Any] | None:
    """The (row, col) of the baseline cell of a cell: None for a baseline cell itself, or
    when the table has no baseline cell for it (or two equally close)."""
    if _matches(summary, row, col):
        return None
    fixed = {summary.row_keys.index(k) for k, _ in summary.baseline if k in summary.row_keys}
    free_col = summary.col_key not in {k for k, _ in summary.baseline}
    scored = [
        (sum(a == b for j, (a, b) in enumerate(zip(r, row, strict=True)) if j not in fixed), (r, c))
        for r in summary.rows
        for c in ([col] if free_col else summary.cols)
        if summary.cell(r, c) is not None and _matches(summary, r, c)
    ]
    best = max((score for score, _ in scored), default=None)
    closest = [at for score, at in scored if score == best]
    return closest[0] if len(closest) == 1 else None


def _comparisons(summary: Summary):
    """Every cell's comparison with its baseline, Holm-adjusted over the table; and why
    there are none, where there are none."""
    text = _baseline_text(summary)
    keys = {*summary.row_keys, summary.col_key}
    missing = [key for key, _ in summary.baseline if key not in keys]
    if missing:
        return {}, f"baseline {text}: {missing[0]} is not a row or column key of this table"
    pairs = {}
    for (row, col), cell in summary.cells.items():
        base = _baseline_of(summary, row, col)
        if base is not None and (c := compare(cell.accs, summary.cells[base].accs)):
            pairs[(row, col)] = (base, c)
    if not pairs:
        return {}, f"baseline {text}: no cell of this table has it"
    order = list(pairs)
    adjusted = holm([pairs[k][1].p for k in order])
    return {
        k: (pairs[k][0], replace(pairs[k][1], p_holm=adj))
        for k, adj in zip(order, adjusted, strict=True)
    }, None


def _smoke_rows(runs, row_keys: tuple[str, ...]) -> frozenset:
    """The rows holding smoke runs, when a table mixes smoke and real runs (else empty)."""
    if runs["smoke"].all() or not runs["smoke"].any():
        return frozenset()
    return frozenset(
        tuple(clean(r.get(k)) for k in row_keys) for r in runs.to_dict("records") if r["smoke"]
    )


def _row_rank(keys: tuple[str, ...], row: tuple) -> list:
    return [rank(k, v) for k, v in zip(keys, row, strict=True)]


def _where(row_keys, row, col_key, col) -> str:
    parts = [f"{k}={v}" for k, v in zip(row_keys, row, strict=True)]
    if col_key:
        parts.append(f"{col_key}={col}")
    return ", ".join(parts) or "all runs"


# ---------------------------------------------------------------------------- the paper
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
    base = summary.cells[base_at] if base_at else None
    base_paper = paper_value(base) if base else None
    gain = gain_paper = p = None
    if comparison is not None:
        gain, p = _num(comparison.gain), comparison.p
        if paper and base_paper:
            gain_paper = paper[0] - base_paper[0]
    return Versus(
        paper_mean=paper[0] if paper else None,
        paper_std=paper[1] if paper else None,
        diff=_num(cell.mean - paper[0]) if paper else None,
        gain=gain,
        gain_paper=gain_paper,
        gain_p=p,
    )


def _paper_groups(summary: Summary) -> list[tuple[tuple, list[tuple]]]:
    """Rows grouped by everything but ortho.mode (a dataset, for Table 2), with paper cells."""
    i = summary.row_keys.index("ortho.mode") if "ortho.mode" in summary.row_keys else None
    groups: dict[tuple, list[tuple]] = {}
    for row in summary.rows:
        key = row if i is None else row[:i] + row[i + 1 :]
        groups.setdefault(key, []).append(row)
    return [
        (key, rows)
        for key, rows in groups.items()
        if any(
            (c := summary.cell(r, col)) is not None and paper_value(c)
            for r in rows
            for col in summary.cols
        )
    ]


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


def _notes(cell: Cell) -> str:
    notes = [f"{cell.counts[s]} {s}" for s in UNFINISHED if cell.counts.get(s)]
    if cell.counts.get(SHORT):
        notes.append(f"{cell.counts[SHORT]} finished too short for the endpoint")
    return ", ".join(notes + ([f"{cell.packed} packed"] if cell.packed else []))


def cell_text(cell: Cell | None, *, pm: str = "±", dash: str = "—", with_n: bool = True) -> str:
    """'80.3 ± 0.4 (n=5)', '79.9 ± 0.5 (n=4; 1 diverged)', '— (3 missing, 2 started)'."""
    if cell is None:
        return ""
    notes = _notes(cell)
    if cell.n == 0:
        return f"{dash} ({notes})" if notes else dash
    acc = f"{cell.mean:.1f}" + (f" {pm} {cell.std:.1f}" if cell.n > 1 else "")
    if not with_n:
        return acc
    return f"{acc} (n={cell.n}" + (f"; {notes})" if notes else ")")


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f}"


def _gain_text(v: Versus | None) -> str:
    return "" if v is None or v.gain is None else f"{_signed(v.gain)} (p={p_text(v.gain_p)})"


def _paper_text(v: Versus, pm: str) -> str:
    return "" if v.paper_mean is None else f"{v.paper_mean:.1f} {pm} {v.paper_std:.1f}"


def _block_lines(summary: Summary, rows: list[tuple], pm: str) -> list[list[str]]:
    """The comparison lines of one group: ours / paper / difference per row, then gains."""
    i = summary.row_keys.index("ortho.mode") if "ortho.mode" in summary.row_keys else None
    lines, gains = [], []
    for row in rows:
        cells = [summary.cell(row, col) for col in summary.cols]
        mode = row[i] if i is not None else next(c for c in cells if c).settings.get("ortho.mode")
        name = show("ortho.mode", mode)
        vs = [versus(summary, c) if c else None for c in cells]
        lines.append([f"{name}: ours", *(cell_text(c, pm=pm, with_n=False) for c in cells)])
        lines.append([f"{name}: paper", *(_paper_text(v, pm) if v else "" for v in vs)])
        lines.append([f"{name}: ours − paper", *(_signed(v.diff) if v else "" for v in vs)])
        if any(v and v.gain is not None for v in vs) or any(
            v and v.gain_paper is not None for v in vs
        ):
            gains.append(
                [
                    f"gain {name} − baseline: ours",
                    *(_gain_text(v) for v in vs),
                ]
            )
            gains.append(
                [
                    f"gain {name} − baseline: paper",
                    *(_signed(v.gain_paper) if v else "" for v in vs),
                ]
            )
    return lines + gains


def _group_title(summary: Summary, key: tuple, rows: list[tuple]) -> str:
    keys = [k for k in summary.row_keys if k != "ortho.mode"]
    parts = [
        show(k, v) if k in ("data.name", "recipe") else f"{k} = {show(k, v)}"
        for k, v in zip(keys, key, strict=True)
    ]
    if "data.name" not in keys:
        cell = next(c for c in (summary.cell(r, col) for r in rows for col in summary.cols) if c)
        parts.insert(0, show("data.name", cell.settings.get("data.name")))
    return ", ".join(parts)


PAPER_NOTE = (
    f"Against the paper: {PAPER_SOURCE}, mean ± std over 5 runs. Differences and gains in "
    "accuracy points; gain = ortho − baseline at the same learning rate; p = Welch's t-test "
    "(two-sided, unequal variances) on our runs, n/a when a side has fewer than 2."
)


GAIN_NOTE = (
    "Gains over the baseline, in accuracy points: mean − the baseline cell's mean (its row "
    "group and column); 95% CI: Welch's t interval; p: Welch's t-test, two-sided; Holm: p "
    "adjusted by Holm's step-down method over this table's gains; detectable: the smallest "
    "true gain these runs would detect with 80% power at alpha = 0.05 (noncentral t, the "
    "same spread). n/a where a side has fewer than 2 runs."
)
GAIN_STATS = ("gain", "95% CI", "p", "p (Holm)", "detectable (80%)")


def _fixed(x: float | None, digits: int = 2, signed: bool = True) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def p_text(p: float | None) -> str:
    """A p-value as tables print it: 3 significant digits (n/a for none)."""
    return "n/a" if p is None else f"{p:.3g}"


def comparison_cells(c: Comparison) -> list[str]:
    """gain, '[low, high]', p, Holm p, detectable: the cells of one gain line."""
    ci = "n/a" if c.ci_low is None else f"[{_fixed(c.ci_low)}, {_fixed(c.ci_high)}]"
    return [_fixed(c.gain), ci, p_text(c.p), p_text(c.p_holm), _fixed(c.detectable, 2, False)]


def gain_header(summary: Summary) -> list[str]:
    col = [("lr" if summary.col_key == COLUMN_KEY else summary.col_key)] if summary.col_key else []
    return [*(summary.row_keys or ["runs"]), *col, f"vs {_baseline_text(summary)}", *GAIN_STATS]


def _setting_text(baseline: Baseline) -> str:
    """((key, value), ...) as written in a recipe: key=value, comma-separated."""
    return ",".join(f"{key}={value}" for key, value in baseline)


def _baseline_text(summary: Summary) -> str:
    return ", ".join(
        f"{key}={show(key, value) if key != 'ortho.mode' else value}"
        for key, value in summary.baseline
    )


def gain_lines(summary: Summary) -> list[list[str]]:
    """One line per cell with a baseline: its row labels (and column), the baseline row's
    labels (its column where the baseline is a column), then gain, CI, p, Holm p and the
    detectable effect."""
    lines = []
    for row in summary.rows:
        for col in summary.cols:
            if (found := summary.comparisons.get((row, col))) is None:
                continue
            (base_row, base_col), c = found
            where = [show(summary.col_key, col)] if summary.col_key else []
            versus_label = ", ".join(_row_labels(summary, base_row))  # the baseline's row
            if base_col != col:
                versus_label = show(summary.col_key, base_col)
            lines.append(
                [
                    *(_row_labels(summary, row) or ["all"]),
                    *where,
                    versus_label,
                    *comparison_cells(c),
                ]
            )
    return lines


TIME_NOTE = (
    "Training time per epoch (s): each run's median over its epochs of the training pass's "
    "wall-clock seconds (metrics.jsonl's train_seconds, evaluation excluded), mean ± std over "
    "the finished runs. Compare only runs that shared a machine and its load (env.json names it)."
)


def time_lines(summary: Summary) -> list[list[str]]:
    """Per row: its labels, then the cell's mean ± std training seconds per epoch per column;
    [] when no finished run recorded them."""
    if not any(c.epoch_s for c in summary.cells.values()):
        return []
    return [
        [
            *(_row_labels(summary, row) or ["all"]),
            *(_seconds_text(summary.cell(row, c)) for c in summary.cols),
        ]
        for row in summary.rows
    ]


def _seconds_text(cell: Cell | None) -> str:
    if cell is None or not cell.epoch_s:
        return "—"
    mean = statistics.fmean(cell.epoch_s)
    if len(cell.epoch_s) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(cell.epoch_s):.1f}"


def _side_header(summary: Summary, what: str) -> list[str]:
    """The header of a table beside the main one: its rows' keys, then one column per column
    of the main table, or one column `what` where it has none."""
    if summary.col_key is None:
        return [*(summary.row_keys or ["runs"]), what]
    return [*summary.row_keys, *(column_label(summary.col_key, c) for c in summary.cols)]


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


# ------------------------------------------------------------------------------ renderers
def render(
    summary: Summary, fmt: Literal["markdown", "latex", "csv", "json"], *, paper: bool = False
) -> str:
    """The table as markdown, LaTeX (booktabs), tidy CSV or JSON; `paper` adds Table 2."""
    renderers = {"markdown": _markdown, "latex": _latex, "csv": _csv, "json": _json}
    if fmt not in renderers:
        raise UserError("--format", f"{fmt!r}; use markdown, latex, csv or json")
    return renderers[fmt](summary, paper)


def _header(summary: Summary) -> list[str]:
    return [*summary.row_keys, *(column_label(summary.col_key, c) for c in summary.cols)]


def _row_labels(summary: Summary, row: tuple) -> list[str]:
    labels = [show(k, v) for k, v in zip(summary.row_keys, row, strict=True)]
    if row in summary.smoke_rows and labels:
        labels[0] = f"{labels[0]} (SMOKE)"
    return labels


def _pipe(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _pipe_table(header: list[str], body: list[list[str]], left: int) -> list[str]:
    rule = ["---"] * left + ["---:"] * (len(header) - left)
    return [_pipe(header), _pipe(rule), *(_pipe(line) for line in body)]


def _markdown(summary: Summary, paper: bool) -> str:
    left = max(len(summary.row_keys), 1)
    header = _header(summary) if summary.row_keys else ["runs", *_header(summary)]
    body = [
        [
            *(_row_labels(summary, row) or ["all"]),
            *(cell_text(summary.cell(row, c)) for c in summary.cols),
        ]
        for row in summary.rows
    ]
    lines = [f"### {title(summary)}", "", *_pipe_table(header, body, left), ""]
    lines.append(footnote(summary.endpoint))
    if summary.folded_keys:
        lines.append(f"Also varying, fixed by the rows: {', '.join(summary.folded_keys)}.")
    if gains := gain_lines(summary):
        header = gain_header(summary)
        lines += ["", GAIN_NOTE, "", *_pipe_table(header, gains, len(header) - len(GAIN_STATS))]
    if note := conv1_note(summary):
        lines += ["", note]
    if times := time_lines(summary):
        lines += [
            "",
            TIME_NOTE,
            "",
            *_pipe_table(_side_header(summary, "training s per epoch"), times, left),
        ]
    lines += [f"> Warning: {w}" for w in summary.warnings]
    if paper:
        lines += ["", *_markdown_paper(summary)]
    return "\n".join(lines) + "\n"


PAPER_GAINS_NOTE = (
    f"The paper's gains at this table's learning rates ({PAPER_SOURCE}: its ortho row − its "
    "baseline, in points, on its datasets; our runs above are not among its settings)."
)


def paper_gain_lines(summary: Summary) -> list[list[str]]:
    """Where the table's columns are learning rates of Table 2 (and it holds a penalty
    comparison): a line per dataset of Table 2 with the paper's gain per column; else []."""
    has_penalty = any(c.settings.get("ortho.mode") == "penalty" for c in summary.cells.values())
    if summary.col_key != COLUMN_KEY or not has_penalty:
        return []
    lines = []
    for name in DATASETS:
        cells = [_signed(paper_gain(name, lr)) for lr in summary.cols]
        if any(cells):
            lines.append([f"{show('data.name', name)} (paper)", *cells])
    return lines


def _markdown_paper(summary: Summary) -> list[str]:
    groups = _paper_groups(summary)
    if not groups:
        lines = [f"No cell of this table has a counterpart in {PAPER_SOURCE}."]
        if gains := paper_gain_lines(summary):
            header = ["", *(column_label(summary.col_key, c) for c in summary.cols)]
            lines += ["", PAPER_GAINS_NOTE, "", *_pipe_table(header, gains, 1)]
        return lines
    lines = [f"**{PAPER_NOTE}**"]
    for key, rows in groups:
        header = [_group_title(summary, key, rows)]
        header += [column_label(summary.col_key, c) for c in summary.cols]
        lines += ["", *_pipe_table(header, _block_lines(summary, rows, "±"), 1)]
    return lines


TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text (special characters escaped, dashes and ± typeset)."""
    out = "".join(TEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("—", "---").replace("−", "$-$")


def _tex_rows(lines: list[list[str]]) -> list[str]:
    return [" & ".join(tex_escape(c) for c in line) + r" \\" for line in lines]


def _latex(summary: Summary, paper: bool) -> str:
    left = max(len(summary.row_keys), 1)
    header = _header(summary) if summary.row_keys else ["runs", *_header(summary)]
    caption = f"{title(summary)}. {footnote(summary.endpoint)}"
    if paper and _paper_groups(summary):
        caption += f" Below: {PAPER_NOTE}"
    lines = [
        r"% softmaso table; needs \usepackage{booktabs}",
        *(f"% warning: {w}" for w in summary.warnings),
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + tex_escape(caption) + "}",
        r"\begin{tabular}{" + "l" * left + "r" * len(summary.cols) + "}",
        r"\toprule",
        *_tex_rows([header]),
        r"\midrule",
    ]
    previous = None
    for row in summary.rows:
        if previous is not None and row[:1] != previous[:1]:
            lines.append(r"\midrule")
        label = _row_labels(summary, row) or ["all"]
        lines += _tex_rows([[*label, *(cell_text(summary.cell(row, c)) for c in summary.cols)]])
        previous = row
    lines += [r"\bottomrule", r"\end{tabular}"]
    if gains := gain_lines(summary):
        lines += [
            r"\par\medskip",
            tex_escape(GAIN_NOTE),
            r"\par\medskip",
            r"\begin{tabular}{"
            + "l" * (len(gain_header(summary)) - len(GAIN_STATS))
            + "r" * len(GAIN_STATS)
            + "}",
            r"\toprule",
            *_tex_rows([gain_header(summary)]),
            r"\midrule",
            *_tex_rows(gains),
            r"\bottomrule",
            r"\end{tabular}",
        ]
    if note := conv1_note(summary):
        lines += [r"\par\medskip", tex_escape(note)]
    if paper:
        lines += _latex_paper(summary)
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _latex_paper(summary: Summary) -> list[str]:
    groups = _paper_groups(summary)
    if not groups:
        return [f"% no cell has a counterpart in {PAPER_SOURCE}"]
    width = 1 + len(summary.cols)
    header = ["", *(column_label(summary.col_key, c) for c in summary.cols)]
    lines = [
        r"\par\medskip",
        r"\begin{tabular}{l" + "r" * len(summary.cols) + "}",
        r"\toprule",
        *_tex_rows([header]),
    ]
    for key, rows in groups:
        name = tex_escape(_group_title(summary, key, rows))
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{name}}}}} \\"]
        lines += _tex_rows(_block_lines(summary, rows, "±"))
    return [*lines, r"\bottomrule", r"\end{tabular}"]


def _records(summary: Summary, paper: bool) -> list[tuple[dict[str, Any], Cell]]:
    """One tidy record per cell: row keys, column key, statistics, counts (+ the paper).

    Accuracies and differences are rounded to 1e-6 points; p-values are not rounded."""
    out = []
    for row in summary.rows:
        for col in summary.cols:
            cell = summary.cell(row, col)
            if cell is None:
                continue
            rec: dict[str, Any] = dict(zip(summary.row_keys, row, strict=True))
            if summary.col_key:
                rec[summary.col_key] = col
            rec.update(mean=_num(cell.mean, 6), std=_num(cell.std, 6), n=cell.n, **cell.counts)
            rec["smoke"] = summary.smoke or row in summary.smoke_rows
            rec["epoch_s"] = _num(statistics.fmean(cell.epoch_s), 3) if cell.epoch_s else None
            rec["endpoint"] = summary.endpoint.text
            rec.update(_comparison_record(summary, row, col))
            v = versus(summary, cell)
            if paper:
                rec.update(
                    paper_mean=v.paper_mean,
                    paper_std=v.paper_std,
                    diff=_num(v.diff, 6),
                    gain_paper=_num(v.gain_paper, 6),
                )
            out.append((rec, cell))
    return out


def _comparison_record(summary: Summary, row: tuple, col: Any) -> dict[str, Any]:
    """The gain columns of a cell's record (None where it has no baseline)."""
    base_at, c = summary.comparisons.get((row, col), (None, None))
    if c is None:
        c = Comparison(math.nan)
    return {
        "baseline": _setting_text(summary.baseline) if base_at else None,
        "gain": _num(c.gain, 6),
        "gain_ci_low": _num(c.ci_low, 6) if c.ci_low is not None else None,
        "gain_ci_high": _num(c.ci_high, 6) if c.ci_high is not None else None,
        "gain_p": c.p,
        "gain_p_holm": c.p_holm,
        "gain_detectable": _num(c.detectable, 6) if c.detectable is not None else None,
    }


def _csv(summary: Summary, paper: bool) -> str:
    records = [rec for rec, _ in _records(summary, paper)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in rec.items()} for rec in records)
    return buf.getvalue()


def _json(summary: Summary, paper: bool) -> str:
    cells = []
    for rec, cell in _records(summary, paper):
        cells.append({**rec, "accs": [round(a, 6) for a in cell.accs], "seeds": list(cell.seeds)})
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
        "cells": cells,
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
