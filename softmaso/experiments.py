"""Experiments: recipes with sweeps -> run directories -> launched once each, then reported.

``softmaso reproduce table2`` expands the sweeps of the packaged recipes table2/*.yaml into 90
runs, one directory each, named by its settings
(``results/table2/cifar10/lr-0.001_mode-none_seed-0``); ``softmaso reproduce my.yaml`` does the
same for any recipe with a ``sweep:`` (``results/my/my/...``).
``grid.json`` at the experiment's root records the runs it expects, so a table can show the
missing ones; :mod:`softmaso.launch` trains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmaso import recipes, rundir
from softmaso.config import RunConfig, read_recipe
from softmaso.errors import RunConflict, UserError


@dataclass(frozen=True)
class Run:
    """One point of an experiment: its config, its settings and its directory."""

    recipe: str
    settings: dict[str, Any]
    cfg: RunConfig
    dir: Path


def point_name(settings: dict[str, Any]) -> str:
    """Directory name from the swept settings: {'optim.lr': 0.001, 'seed': 0} -> lr-0.001_seed-0."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in settings.items()]
    return "_".join(parts) or "base"


def is_recipe_file(experiment: str) -> bool:
    """Whether `experiment` names a recipe file (``my.yaml``) rather than a named experiment."""
    return experiment.endswith((".yaml", ".yml"))


def experiment_name(experiment: str) -> str:
    """The results name of an experiment: its own name, or a recipe file's stem."""
    return Path(experiment).stem if is_recipe_file(experiment) else experiment


def recipe_paths(experiment: str) -> list[Path]:
    """The recipe files of a named experiment, or [the file] for a recipe file with a sweep."""
    if is_recipe_file(experiment):
        path = Path(experiment)
        if not path.is_file():
            raise UserError("EXPERIMENT", f"no such recipe file: {path}")
        if not read_recipe(path).sweep:
            raise UserError(
                "EXPERIMENT",
                f"{path} has no sweep: section, so it is one run: use `softmaso train {path}`",
            )
        return [path]
    if experiment not in recipes.EXPERIMENTS:
        raise UserError(
            "EXPERIMENT",
            f"unknown experiment {experiment!r}; use {', '.join(recipes.EXPERIMENTS)}, "
            "figure1, theory, all, or a recipe file with a sweep: (PATH.yaml)",
        )
    return [recipes.path_of(name) for name in recipes.EXPERIMENTS[experiment]]


def expand(
    experiment: str,
    root: Path,
    *,
    smoke: bool = False,
    datasets: list[str] | None = None,
    seeds: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> list[Run]:
    """The runs of an experiment (one per sweep point of each of its recipes): a named one
    (``recipes.EXPERIMENTS``) or a recipe file with a sweep.

    `datasets` keeps only recipes whose file stem is listed; `seeds` replaces the sweep's seed
    list by 0..seeds-1; `overrides` (--set) apply to every run.
    """
    out = []
    fixed = _fixed(overrides)
    for recipe in _recipes(experiment, datasets, seeds):
        for settings in recipe.points(fixed):
            cfg = recipe.config(overrides, smoke=smoke, settings=settings)
            out.append(
                Run(recipe.name, settings, cfg, Path(root) / recipe.name / point_name(settings))
            )
    return out


def grid_size(
    experiment: str,
    *,
    datasets: list[str] | None = None,
    seeds: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> int:
    """How many runs :func:`expand` would make (sweep points, repeats included), counted from
    the sweeps' lengths without building a config: cheap for any sweep."""
    import math

    fixed = _fixed(overrides)
    return sum(
        math.prod(len(r.sweep[k]) for k in r.sweep if k not in fixed)
        for r in _recipes(experiment, datasets, seeds)
    )


def _fixed(overrides) -> set[str]:
    """The keys --set gives every run: not swept."""
    return {key.partition("=")[0].strip() for key in overrides}


def _recipes(experiment: str, datasets: list[str] | None, seeds: int | None) -> list:
    """The experiment's recipes that `datasets` keeps (by file stem; UserError for one it does
    not have), each with its seed list replaced by 0..seeds-1 when `seeds` is given."""
    paths = recipe_paths(experiment)
    if datasets:
        known = {p.stem for p in paths}
        for d in datasets:
            if d not in known:
                raise UserError(
                    "--datasets", f"{d!r} is not in {experiment}; one of {', '.join(sorted(known))}"
                )
        paths = [p for p in paths if p.stem in datasets]
    recipes = [read_recipe(path) for path in paths]
    return recipes if seeds is None else [_with_seeds(r, seeds) for r in recipes]


def _with_seeds(recipe, n: int):
    from dataclasses import replace

    if n < 1:
        raise UserError("--runs", f"{n} runs per cell; need at least 1")
    return replace(recipe, sweep={**recipe.sweep, "seed": list(range(n))})


def write_grid(
    root: Path, experiment: str, todo: list[Run], *, smoke: bool, recipe_files=None
) -> None:
    """grid.json: what the experiment expects (each run's directory, settings and resolved
    config), so `softmaso table` can show missing runs without reading the recipes.

    One results folder holds one experiment: a folder holding another's grid is refused.
    `recipe_files` ({recipe name: file}) is recorded for experiments made from a recipe file.
    """
    root.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": experiment,
        "smoke": smoke,
        "created": rundir.now(),
        "runs": [
            {
                "dir": str(r.dir.relative_to(root)),
                "recipe": r.recipe,
                "settings": r.settings,
                "config": r.cfg.to_dict(),
            }
            for r in todo
        ],
    }
    if recipe_files:
        doc["recipe_files"] = {k: str(Path(v).absolute()) for k, v in recipe_files.items()}
    old = rundir.read_grid(root)
    if old is not None and "smoke" not in old:
        raise UserError(
            str(root / rundir.GRID),
            "has no 'smoke' key, so whether it holds smoke or real runs is unknown; remove it, "
            "or choose another results folder",
        )
    if old and old.get("experiment") != experiment:
        raise UserError(
            "--results",
            f"{root} holds the grid of experiment {old.get('experiment')!r}, not {experiment!r}; "
            "give each experiment its own results folder",
        )
    if old and old.get("smoke") != smoke:
        kind = "smoke" if old.get("smoke") else "real"
        raise UserError("--results", f"{root} holds {kind} runs; keep smoke and real results apart")
    if old and old.get("experiment") == experiment:  # keep runs of earlier, partial invocations
        new_dirs = {r["dir"] for r in doc["runs"]}
        doc["runs"] = [r for r in old.get("runs", []) if r["dir"] not in new_dirs] + doc["runs"]
        if doc["runs"] == old.get("runs"):
            return
        # what the first launch recorded stays: its date, the pack choice, recipe files
        doc = {**old, **doc, "created": old.get("created", doc["created"])}
        if recipe_files or old.get("recipe_files"):
            doc["recipe_files"] = {**old.get("recipe_files", {}), **doc.get("recipe_files", {})}
    rundir.write_json(root / rundir.GRID, doc)


def check_grid(todo: list[Run]) -> None:
    """RunConflict, before anything trains or is written, if any run directory holds a run
    with another config, finished or not: a grid never skips, nor relabels, a run it would
    not have made. Names the first conflicts and how many there are."""
    from softmaso.rundir import check_unfinished

    conflicts = []
    for run in todo:
        try:
            check_unfinished(run.cfg, run.dir)
        except RunConflict as e:
            conflicts.append(e.message)
        except UserError:  # damaged run files: that run fails when its turn comes
            pass
    if conflicts:
        more = f" (and {len(conflicts) - 1} more runs like it)" if len(conflicts) > 1 else ""
        raise RunConflict("--results", f"{conflicts[0]}{more}")


def plan_line(todo: list[Run], *, at_once: int = 1) -> str:
    """What a grid is about to do, said before it trains: "N runs to train (M finished
    already), about T", T from the seconds per epoch of its finished runs (their result.json's
    wall_seconds over epochs) times the epochs left, shared by `at_once` runs training together;
    unknown, and said so, until a run of the grid has finished (a run's speed depends on the
    machine, its load and the model far too much to guess it from the recipe)."""
    left = ended = diverged = 0
    epochs_left, seconds, epochs_done = 0, 0.0, 0
    for run in todo:
        state, result, _ = rundir.status(run.dir)
        if state == "finished":
            seconds += result.get("wall_seconds") or 0.0
            epochs_done += result.get("epochs") or 0
        done = result.get("epochs", 0) if result else len(rundir.read_metrics(run.dir))
        if state == "diverged" or (state == "finished" and done >= run.cfg.train.epochs):
            ended += 1
            diverged += state == "diverged"
            continue
        left += 1
        epochs_left += max(run.cfg.train.epochs - done, 0)
    also = f"{ended - diverged} finished" + (f", {diverged} diverged" if diverged else "")
    line = f"{left} run{'s' if left != 1 else ''} to train ({also} already)"
    if not left:
        return line
    if not seconds or not epochs_done:
        return f"{line}, time unknown until the first run ends"
    total = seconds / epochs_done * epochs_left / max(at_once, 1)
    shown = f"{total:.0f} s" if total < 90 else f"{total / 60:.0f} min"
    shown = f"{total / 3600:.1f} h" if total >= 90 * 60 else shown
    return f"{line}, about {shown} ({seconds / epochs_done:.1f} s per epoch so far)"
