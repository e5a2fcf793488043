"""Runs as a DataFrame, read once per report: every run directory under a results folder, and
from ``grid.json`` the runs that were expected but never started, one row each (``collect``);
each run's evaluated epochs ride along in its row, and ``epochs`` spreads them out to one row
per run and epoch.

Each run gets a state: finished, diverged, damaged, failed (error.txt: training raised, or its
worker died), started (no result yet: training, or interrupted), pending (config only) or
missing; its config keys are columns (``optim.lr``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from softmaso import rundir
from softmaso.errors import UserError

UNFINISHED = ("diverged", "damaged", "started", "pending", "missing", "failed")
# acc: result.json's final test accuracy (fraction); epochs: one record per evaluated epoch of
# metrics.jsonl, in order (EPOCH_COLUMNS; see `epochs`); machines: the (device, threads) of
# each launch of the run, as "cpu AMD EPYC x1".
BOOKKEEPING = ("dir", "status", "acc", "smoke", "problem", "packed", "epochs", "machines")
# An epoch's record: test and training accuracy (fractions), training loss, the mean over
# layers of the orthogonality error, the training pass's wall-clock seconds; NaN where absent.
EPOCH_COLUMNS = (
    "epoch", "test_acc", "train_acc", "train_loss", "ortho_error_mean", "train_seconds"
)  # fmt: skip


def collect(results_dir: Path):
    """One row per run, found or expected: dir, status, acc (fraction), smoke, config keys.

    Where the folder has a grid.json listing runs, only those are the grid's: any other run
    directory below it (another experiment's folder nested inside, a `train --out` into it) is
    named in ``attrs["foreign"]`` and never counted."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError("RESULTS_DIR", f"{str(root)!r} does not exist or is not a directory")
    grid = rundir.read_grid(root)
    smoke = bool(grid.get("smoke", False)) if grid else False
    read = [_read_run(root, path.parent, smoke) for path in sorted(root.rglob(rundir.CONFIG))]
    found = [r for r in read if "config" not in r]
    unplaced = [r for r in read if "config" in r]  # damaged runs whose config cannot be read
    foreign = []  # run directories below a grid's root that its grid.json does not list
    if grid and grid["runs"]:
        listed = {Path(e["dir"]).as_posix() for e in grid["runs"]}
        foreign = [r["dir"] for r in found + unplaced if r["dir"] not in listed]
        found = [r for r in found if r["dir"] in listed]
        unplaced = [r for r in unplaced if r["dir"] in listed]
    damaged = {r["dir"]: r["problem"] for r in unplaced}
    expected = _missing_runs(root, grid, found, damaged) if grid else []
    placed = {r["dir"] for r in expected}
    unplaced = [r for r in unplaced if r["dir"] not in placed]  # in its cell, from grid.json
    if not found and not expected:
        if unplaced:
            shown = "; ".join(f"{r['dir']}: {r['problem']}" for r in unplaced[:3])
            raise UserError("RESULTS_DIR", f"no readable run in {str(root)!r} ({shown})")
        raise UserError(
            "RESULTS_DIR",
            f"{str(root)!r} is empty or not a softmaso results directory "
            f"(no run directory with {rundir.CONFIG}, no {rundir.GRID} listing runs)",
        )
    df = pd.DataFrame(found + expected)
    keys = dict.fromkeys(k for row in found + expected for k in row)
    df = df[[*BOOKKEEPING, *(k for k in keys if k not in BOOKKEEPING)]]
    df["acc"] = df["acc"].astype(float)
    df.attrs["name"] = (grid or {}).get("experiment") or root.resolve().name
    df.attrs["unplaced"] = [f"{r['dir']}: {r['problem']}" for r in unplaced]
    df.attrs["foreign"] = foreign
    return df


def epochs(runs):
    """One row per run and evaluated epoch: the run's columns (its epochs aside), then
    EPOCH_COLUMNS; runs without an evaluated epoch have no row."""
    spread = runs["epochs"].explode().dropna()  # a record per epoch, indexed by its run's row
    tidy = pd.DataFrame(list(spread), columns=list(EPOCH_COLUMNS))
    head = runs.drop(columns="epochs").loc[spread.index].reset_index(drop=True)
    return pd.concat([head, tidy], axis=1)


def _row(rel: str, status: str, smoke: bool, **values) -> dict[str, Any]:
    """A run's bookkeeping columns (a run that never finished: no accuracy, no epochs)."""
    row = {"dir": rel, "status": status, "acc": math.nan, "smoke": smoke, "problem": None}
    return {**row, "packed": False, "epochs": (), "machines": (), **values}


def _read_run(root: Path, run_dir: Path, grid_smoke: bool) -> dict[str, Any]:
    """A run's row: bookkeeping and config keys. A damaged run (unreadable result.json, an
    accuracy outside [0, 1], ...) has status 'damaged' and its reason in 'problem'; one whose
    config cannot be read has a 'config' entry (it cannot be placed in the table)."""
    rel = run_dir.relative_to(root).as_posix()
    tree = rundir.read_config(run_dir)
    if tree is None:
        problem = f"{rundir.CONFIG} cannot be read (not a YAML mapping)"
        return {"dir": rel, "status": "damaged", "problem": problem, "config": False}
    status, result, problem = rundir.status(run_dir)
    row = _row(rel, status, grid_smoke, problem=problem, machines=_machines(run_dir))
    if status != "damaged":
        row["epochs"] = _epochs(run_dir)
    if result is not None:
        row["packed"] = isinstance(result.get("packed_with"), int)
        if isinstance(result.get("smoke"), bool):
            row["smoke"] = result["smoke"]
        if status == "finished":
            row["acc"] = float(result["final_test_acc"])
    return {**row, **rundir.flatten(tree)}


def _machines(run_dir: Path) -> tuple[str, ...]:
    """The distinct device and CPU thread count of the run's launches ("cpu x1", "cuda NVIDIA
    H200 x8"): on a CPU the thread count changes the order of floating-point sums, and so the
    numbers."""
    seen = []
    for env in rundir.launches(run_dir):
        dev = env.get("device") if isinstance(env.get("device"), dict) else {}
        seen.append(f"{dev.get('type', '?')} {dev.get('name', '?')} x{dev.get('threads', '?')}")
    return tuple(dict.fromkeys(seen))


def number(value: Any) -> float:
    """A metric (from metrics.jsonl, result.json) as a float; NaN for anything that is not a
    real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _epochs(run_dir: Path) -> tuple[dict[str, float], ...]:
    """metrics.jsonl as one record (EPOCH_COLUMNS) per evaluated epoch, in order; an epoch
    given twice counts once, as its last row."""
    by_epoch = {r["epoch"]: r for r in rundir.read_metrics(run_dir)}
    out = []
    for epoch in sorted(by_epoch):
        row = by_epoch[epoch]
        errors = row.get("ortho_error")
        errors = [number(v) for v in (errors.values() if isinstance(errors, dict) else ())]
        errors = [v for v in errors if not math.isnan(v)]
        metrics = {k: number(row.get(k)) for k in EPOCH_COLUMNS[1:]}
        metrics["ortho_error_mean"] = math.fsum(errors) / len(errors) if errors else math.nan
        out.append({"epoch": epoch, **metrics})
    return tuple(out)


def _missing_runs(
    root: Path, grid: dict[str, Any], found: list[dict], damaged: dict[str, str]
) -> list[dict]:
    """Runs grid.json lists whose directory has no config.yaml, with their settings filled in:
    missing, or failed where the grid recorded why (error.txt) before the run could begin; and
    the runs in `damaged` ({dir: problem}: config.yaml unreadable), placed by their grid.json
    settings so that their cell counts them."""
    have = {row["dir"] for row in found}
    smoke = bool(grid.get("smoke", False))
    out = []
    for entry in grid["runs"]:
        rel = Path(str(entry.get("dir", ""))).as_posix()
        if rel in have or (rel not in damaged and (root / rel / rundir.CONFIG).exists()):
            continue
        settings = {"recipe": entry.get("recipe"), **(entry.get("settings") or {})}
        if isinstance(entry.get("config"), dict):  # recorded by the grid (newer grid.json)
            base = rundir.flatten(entry["config"])
        else:  # an older grid.json: from the recipe's started runs, or its file
            base = _recipe_values(settings, found, grid)
        failed = (root / rel / rundir.ERROR).exists()  # its job died before it began
        status = "damaged" if rel in damaged else "failed" if failed else "missing"
        out.append({**_row(rel, status, smoke, problem=damaged.get(rel)), **base, **settings})
    return out


def _recipe_values(settings: dict[str, Any], found: list[dict], grid: dict) -> dict[str, Any]:
    """The other config values of a missing run: those its recipe's started runs agree on,
    or else the recipe file's (with the grid's smoke variant)."""
    siblings = [row for row in found if row.get("recipe") == settings["recipe"]]
    if siblings:
        keys = [k for k in siblings[0] if k not in BOOKKEEPING]
        return {
            k: siblings[0][k]
            for k in keys
            if all(k in row and row[k] == siblings[0][k] for row in siblings)
        }
    from softmaso.config import read_recipe

    for path in _recipe_files(grid):
        if path.stem == settings["recipe"]:
            point = {k: v for k, v in settings.items() if k != "recipe"}
            try:
                cfg = read_recipe(path).config(smoke=bool(grid.get("smoke")), settings=point)
            except UserError:
                return {}
            return rundir.flatten(cfg.to_dict())
    return {}


def _recipe_files(grid: dict) -> list[Path]:
    """The recipe files of a grid: those its grid.json records, else its experiment's
    packaged recipes."""
    from softmaso import recipes

    if files := (grid.get("recipe_files") or {}).values():
        return [Path(str(f)) for f in files]
    return [recipes.path_of(n) for n in recipes.EXPERIMENTS.get(grid.get("experiment") or "", [])]


def declared_report(root: Path):
    """The report settings its recipe declared for the experiment in `root` (grid.json's
    recipe files, else its packaged recipes); the defaults where none declares any (or the
    recipes cannot be read). The first recipe that declares settings gives them."""
    from softmaso.config import ReportSettings, read_recipe

    try:
        grid = rundir.read_grid(Path(root)) or {}
    except UserError:
        return ReportSettings()
    for path in _recipe_files(grid):
        try:
            report = read_recipe(path).report
        except UserError:
            continue
        if report != ReportSettings():
            return report
    return ReportSettings()
