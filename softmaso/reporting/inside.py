"""What trained networks do inside, reported (``softmaso analyze``): the statistics of
:mod:`softmaso.analysis` for one run or every finished run below a results folder, grouped as
``softmaso table`` groups them, compared across groups (mean +- std over seeds, Welch's p
against the baseline group), as CSV, markdown and figures."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from softmaso import rundir
from softmaso.analysis import STATISTICS, analyze_run
from softmaso.errors import UserError
from softmaso.io import check_output_dir
from softmaso.reporting import tables
from softmaso.reporting.frame import collect
from softmaso.reporting.stats import welch_p

log = logging.getLogger(__name__)
TAG = {"tag": "analyze"}  # its lines: [analyze] ...

LABELS = {
    "active_fraction": "decisions in the last (active) region",
    "dead_units": "units never active",
    "constant_units": "units that never change region",
    "svq_entropy": "soft-VQ entropy / log R (eq. 6, beta = 1/2)",
    "firing_correlation": "mean |corr| of two units' firing",
    "cross_ratio": "factorial cross terms / diagonal terms (Thm. 4)",
    "joint_map_changes": "decisions changed by the joint MAP of (10)",
    "prior_last": "Thm. 2 prior of the active region, trained",
    "prior_last_init": "Thm. 2 prior of the active region, at init (App. C)",
    "learned_beta": "learnt beta, mean over the layer's channels (eq. 8-9)",
}


def analyze(
    target: Path,
    *,
    out: Path | None = None,
    images: int = 500,
    decisions: int = 20_000,
    data_dir: Path | None = None,
) -> list[Path]:
    """Analyse a run directory, or every finished run below a results folder; write
    ``analysis.csv`` (a row per run and layer), ``analysis.md`` and one figure per statistic
    into `out` (default TARGET/analysis). Returns the paths written."""
    import pandas as pd

    target = Path(target)
    members, keys, skipped = _members(target)
    out = check_output_dir(out or target / "analysis", where="--out")
    rows = []
    for i, (run_dir, settings) in enumerate(members, 1):
        try:
            layers = analyze_run(run_dir, images=images, decisions=decisions, data_dir=data_dir)
        except UserError as e:
            if len(members) == 1:
                raise
            skipped.append(f"{run_dir}: {e}")  # a damaged run: named, the others go on
            log.warning(f"{i}/{len(members)} {run_dir}: skipped ({e})", extra=TAG)
            continue
        rows += [{"run": str(run_dir), **settings, **layer} for layer in layers]
        log.info(f"{i}/{len(members)} {run_dir}", extra=TAG)
    if not rows:
        raise UserError("TARGET", f"no run in {str(target)!r} could be analysed: {skipped[0]}")
    for line in skipped:
        log.warning(f"not analysed: {line}", extra=TAG)
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "analysis.csv"
    tables.write_table(frame.to_csv(index=False, float_format="%.6g"), csv)
    md = out / "analysis.md"
    title = (
        f"Trained-network VQ statistics of {target} ({images} test images; at most "
        f"{decisions} decisions per layer in the joint statistics)"
    )
    text = markdown(frame, keys, title=title)
    if skipped:
        text += f"\nNot analysed ({len(skipped)}):\n" + "".join(f"- {s}\n" for s in skipped)
    text += _stamp()
    tables.write_table(text, md)
    return [csv, md, *figures(frame, keys, out / "figures")]


def _members(target: Path) -> tuple[list[tuple[Path, dict]], list[str], list[str]]:
    """(run directory, its group's settings) of every run to analyse, the group keys, and the
    finished runs that cannot be (no weights: a clone of committed results has none)."""
    if (target / rundir.CONFIG).is_file():
        status, result, _ = rundir.status(target)
        acc = result["final_test_acc"] if status == "finished" else math.nan
        return [(target, {"acc": acc})], [], []
    frame = collect(target)  # UserError where there are no runs at all
    done = frame[frame["status"] == "finished"]
    weighed = done["dir"].map(lambda d: (target / d / rundir.WEIGHTS).is_file())
    skipped = [f"{target / d}: no {rundir.WEIGHTS}" for d in done.loc[~weighed, "dir"]]
    done = done[weighed]
    if done.empty:
        raise UserError(
            "TARGET", f"no finished run with {rundir.WEIGHTS} in {str(target)!r} to analyse"
        )
    row_keys, col_key, _ = tables.table_keys(done)
    keys = [k for k in (*row_keys, col_key) if k and k != "seed"]
    members = [
        (
            target / r["dir"],
            {**{k: tables.clean(r.get(k)) for k in [*keys, "seed"]}, "acc": r["acc"]},
        )
        for r in done.to_dict("records")
    ]
    members.sort(key=lambda m: [tables.rank(k, m[1][k]) for k in [*keys, "seed"]])
    return members, keys, skipped


def _stamp() -> str:
    """The command, commit, CPU and date that made the analysis."""
    import shlex
    import sys

    import torch

    env = rundir.environment(torch.device("cpu"))
    command = "softmaso " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return (
        f"\nMade by `{command}` at commit {env['git_commit'] or 'unknown'} on "
        f"{env['device']['name']} ({env['device']['threads']} threads), {env['date']}.\n"
    )


def _groups(frame, keys: list[str]) -> list:
    """(name, rows) of each group of runs sharing the `keys` ("mode none, lr 0.001")."""
    if not keys:
        return [("this run", frame)]
    return [
        (", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in zip(keys, values, strict=True)), g)
        for values, g in frame.groupby(keys, sort=False, dropna=False)
    ]


def _baselines(groups: list, keys: list[str]) -> dict[str, str]:
    """Each compared group -> the group it is compared with: the ortho.mode none group with
    the same other settings (the same learning rate, say), as in `softmaso table`; where
    ortho.mode does not vary, the first group. Baseline groups themselves are left out."""
    if "ortho.mode" not in keys:
        return {name: groups[0][0] for name, _ in groups[1:]}
    others = [k for k in keys if k != "ortho.mode"]
    found = [
        (name, tuple(tables.clean(g[k].iloc[0]) for k in others), (g["ortho.mode"] == "none").all())
        for name, g in groups
    ]
    bases = {setting: name for name, setting, is_base in found if is_base}
    return {
        name: bases[setting] for name, setting, is_base in found if not is_base and setting in bases
    }


def markdown(frame, keys: list[str], *, title: str) -> str:
    """One table per statistic: a row per layer, a column per group (mean +- std over runs,
    n), and Welch's p of each group against its baseline (the ortho.mode none group with its
    other settings)."""
    groups = _groups(frame, keys)
    versus = _baselines(groups, keys)
    lines = [f"### {title}", ""]
    accuracy = [
        f"{name}: {_mean_std(tuple(g.groupby('run')['acc'].first()))}" for name, g in groups
    ]
    lines += ["Final test accuracy (fraction): " + "; ".join(accuracy) + ".", ""]
    layers = list(dict.fromkeys(frame["layer"]))
    for stat in _present(frame):
        lines += [f"#### {stat}: {LABELS[stat]}", ""]
        head = ["layer", *(name for name, _ in groups)]
        head += [f"p, {name} vs {base}" for name, base in versus.items()]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for layer in layers:
            runs = [tuple(g.loc[g["layer"] == layer, stat].dropna()) for _, g in groups]
            values = dict(zip((name for name, _ in groups), runs, strict=True))
            ps = [welch_p(values[name], values[base]) for name, base in versus.items()]
            cells = [layer, *map(_mean_std, runs), *("—" if p is None else f"{p:.2g}" for p in ps)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Mean ± std over runs (ddof = 1), n runs; p: Welch's two-sided t-test. Statistics as "
        "defined in softmaso/analysis.py and docs/reference.md (softmaso analyze)."
    )
    return "\n".join(lines) + "\n"


def _present(frame) -> list[str]:
    """The statistics with at least one value (learned_beta only where betas are learnt)."""
    return [s for s in STATISTICS if frame[s].notna().any()]


def _mean_std(v: tuple[float, ...]) -> str:
    if not v:
        return "—"
    mean = sum(v) / len(v)
    if len(v) < 2:
        return f"{mean:.3f} (n=1)"
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    return f"{mean:.3f} ± {std:.3f} (n={len(v)})"


def figures(frame, keys: list[str], folder: Path) -> list[Path]:
    """One figure per statistic: its value by layer, a line per group (mean, +- std bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from softmaso.reporting.figure1 import save_figures

    folder.mkdir(parents=True, exist_ok=True)
    layers = list(dict.fromkeys(frame["layer"]))
    paths = []
    for stat in _present(frame):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for name, group in _groups(frame, keys):
            by = group.groupby("layer", sort=False)[stat]
            mean, std = by.mean().reindex(layers), by.std().reindex(layers).fillna(0.0)
            ax.errorbar(range(len(layers)), mean, yerr=std, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_ylabel(stat)
        ax.set_title(LABELS[stat], fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths += save_figures({folder / f"analysis_{stat}": fig})
    return paths
