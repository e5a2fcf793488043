"""Fixtures and helpers shared by the tests: the CLI runner, a tiny training config, metrics
rows without timings."""

import json

import pytest
import torch
from typer.testing import CliRunner

from softmaso import rundir
from softmaso.config import RunConfig

torch.set_num_threads(2)


@pytest.fixture
def cli():
    """Run `softmaso ARGS...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from softmaso.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def finished_files() -> set[str]:
    """The files a finished run directory holds (the run directory's contract)."""
    from softmaso import rundir

    return {
        rundir.CONFIG,
        rundir.ENV,
        rundir.LAUNCHES,
        rundir.METRICS,
        rundir.CHECKPOINT,
        rundir.RESULT,
        rundir.WEIGHTS,
    }


FAST = ["train.epochs=1", "data.synthetic_train=200", "model.width=0.0625"]  # grid overrides


def tiny(**over) -> RunConfig:
    """A narrow model on a small synthetic set: seconds per epoch on 2 CPU cores."""
    cfg = RunConfig.model_validate(
        {
            "recipe": "test",
            "data": {"name": "synthetic", "synthetic_train": 1000, "subset": 600},
            "model": {"width": 0.125},
            "optim": {"lr": 0.003, "batch_size": 50},
            "train": {"epochs": 3, "eval_batch_size": 500},
        }
    )
    return cfg.with_overrides(**over) if over else cfg


def metric_rows(run_dir):
    """A run's metrics.jsonl rows without what differs between identical runs (timings, memory)."""
    rows = [json.loads(line) for line in (run_dir / rundir.METRICS).read_text().splitlines()]
    for r in rows:  # timings and memory differ between runs; everything else must not
        for key in ("seconds", "train_seconds", "eval_seconds", "images_per_s", "peak_rss_mib"):
            r.pop(key)
    return rows


SMALLEST = {  # the smallest run there is: a second per epoch, as a recipe file's body too
    "recipe": "t",
    "data": {"name": "synthetic", "synthetic_train": 100},
    "model": {"width": 0.0625},
    "optim": {"batch_size": 50},
}


def smallest(epochs: int) -> RunConfig:
    """:data:`SMALLEST`, trained for `epochs`."""
    return RunConfig.model_validate({**SMALLEST, "train": {"epochs": epochs}})


def file_bytes(run_dir) -> dict[str, bytes]:
    """Every file of a folder by name: to assert that nothing in it changed."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def pack_trio(**over) -> list[RunConfig]:
    """Three runs that differ in everything a pack allows: seed, lr, weight decay, penalty.

    Learning rates at most 1e-3 keep Adam from amplifying float32 rounding (it turns the sign
    of near-zero gradients into steps of size lr) faster than the packing tests allow.
    """
    return [
        tiny(seed=0, **{"optim.lr": 0.001}, **over),
        tiny(seed=1, **{"optim.lr": 0.0005, "ortho.mode": "penalty", "ortho.weight": 0.01}, **over),
        tiny(seed=2, **{"optim.lr": 0.001, "optim.weight_decay": 1e-4}, **over),
    ]
