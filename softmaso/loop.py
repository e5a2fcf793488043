"""The epoch loop, one for every way of training: a single run, or a pack of runs.

:func:`run_epochs` owns what an epoch is: the timers, divergence (a NaN or infinite training
loss ends that run, the others go on), the epoch row of metrics.jsonl, the checkpoint cadence,
the progress shown, the final weights. What a step is belongs to the stepper it drives
(:class:`Stepper`): ``training.RunStepper`` for one run, ``packed_training.PackStepper`` for P
runs trained as one network. Rows, checkpoints and results have the same format either way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from softmaso import runs
from softmaso.config import RunConfig
from softmaso.ui import Reporter


@dataclass(frozen=True)
class EpochStats:
    """An epoch's training pass, read once to the host: per run summed loss and correct count."""

    losses: list[float]
    correct: list[int]
    steps: int
    images: int  # per run


class Stepper(Protocol):
    """P runs (P >= 1) that train epoch by epoch with the same training config."""

    cfgs: list[RunConfig]
    dirs: list[Path]
    histories: list[list[dict]]  # each run's metrics rows so far
    device: torch.device

    @property
    def steps_per_epoch(self) -> int: ...

    def train_epoch(self, epoch: int, on_step) -> EpochStats: ...

    def evaluate(self) -> list[dict[str, float]]: ...

    def diagnostics(self) -> list[dict[str, dict[str, float]]]: ...

    def lrs(self) -> list[float]: ...

    def checkpoints(self, epoch: int) -> list[tuple[Path, dict]]:
        """Each run's checkpoint after `epoch` epochs: (path, runs.checkpoint_state)."""

    def drop(self, bad: set[int]) -> Stepper | None:
        """The stepper without the runs at positions `bad` (None when none is left)."""

    def export(self) -> None:
        """Each run's final weights."""


@dataclass(frozen=True)
class Ended:
    """How a run's training ended: its status (finished or diverged), rows and wall time."""

    status: str
    history: list[dict]
    wall_seconds: float

    def fields(self, device, extra: dict[str, Any] | None) -> dict[str, Any]:
        """The keywords of :func:`softmaso.runs.finish_run` for this end."""
        return {
            "history": self.history,
            "status": self.status,
            "wall_seconds": self.wall_seconds,
            "device": device,
            "extra": extra,
        }


def run_epochs(
    stepper: Stepper, *, start: int, title: str, live=None, progress=None, quiet=False
) -> list[Ended]:
    """Epochs `start`..end of the stepper's runs; how each ended, in the stepper's order."""
    cfg, n = stepper.cfgs[0], len(stepper.cfgs)
    at = list(range(n))  # at[p]: the original position of the stepper's run p
    now = time.perf_counter()  # t0[i]: when run i would have started, counting past epochs
    t0 = [now - sum(r["seconds"] for r in h) for h in stepper.histories]
    ended: dict[int, Ended] = {}
    rep = Reporter(
        title,
        cfg.train.epochs,
        stepper.steps_per_epoch,
        start_epoch=start,
        live=live,
        progress=progress,
        quiet=quiet,
    )
    if start:
        rep.message(f"resuming after epoch {start} from {_checkpoints(stepper)}")
    writer = runs.CheckpointWriter()
    try:
        peak_memory(stepper.device)  # the first epoch's peak starts here
        for epoch in range(start, cfg.train.epochs):
            stepper, at = _epoch(stepper, at, epoch, rep, t0, ended, writer)
            if stepper is None:
                break
    finally:
        rep.close()
        writer.close()  # the last checkpoints are on disk before any result is written
    if stepper is not None:
        stepper.export()
        for p, i in enumerate(at):
            ended[i] = Ended("finished", stepper.histories[p], time.perf_counter() - t0[i])
    return [ended[i] for i in range(n)]


def _epoch(stepper, at, epoch, rep, t0, ended, writer):
    """One epoch of every run; the stepper (and positions) left after dropping diverged runs."""
    cfg, device = stepper.cfgs[0], stepper.device
    t_start = time.perf_counter()
    st = stepper.train_epoch(epoch, rep.step)
    bad = {p for p, v in enumerate(st.losses) if not math.isfinite(v)}
    for p in sorted(bad):
        rest = ", the other runs go on" if len(bad) < len(at) else ""
        rep.message(
            f"{stepper.dirs[p].name}: epoch {epoch + 1} loss is {st.losses[p]}; "
            f"stopping (diverged){rest}"
        )
        ended[at[p]] = Ended("diverged", stepper.histories[p], time.perf_counter() - t0[at[p]])
    if bad:
        keep = [p for p in range(len(at)) if p not in bad]
        at = [at[p] for p in keep]
        st = EpochStats(
            [st.losses[p] for p in keep], [st.correct[p] for p in keep], st.steps, st.images
        )
        stepper = stepper.drop(bad)
        if stepper is None:
            return None, at
    t_train = time.perf_counter()
    tests, diagnostics, lrs = stepper.evaluate(), stepper.diagnostics(), stepper.lrs()
    t_eval, memory = time.perf_counter(), peak_memory(device)
    for p, history in enumerate(stepper.histories):
        row = epoch_row(
            epoch + 1,
            loss_sum=st.losses[p],
            steps=st.steps,
            correct=st.correct[p],
            images=st.images,
            test=tests[p],
            diagnostics=diagnostics[p],
            lr=lrs[p],
            train_seconds=t_train - t_start,
            eval_seconds=t_eval - t_train,
            memory=memory,
        )
        history.append(row)
        rep.epoch(row, name=stepper.dirs[p].name if len(at) > 1 else None)
    if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
        metrics = list(zip(stepper.dirs, stepper.histories, strict=True))
        writer.submit(stepper.checkpoints(epoch + 1), metrics)  # written while training goes on
    return stepper, at


def _checkpoints(stepper) -> str:
    if len(stepper.dirs) == 1:
        return str(stepper.dirs[0] / runs.CHECKPOINT)
    return f"the {len(stepper.dirs)} runs' checkpoints"


def epoch_row(
    epoch: int,
    *,
    loss_sum: float,
    steps: int,
    correct: int,
    images: int,
    test: dict[str, float],
    diagnostics: dict[str, dict[str, float]],
    lr: float,
    train_seconds: float,
    eval_seconds: float,
    memory: dict[str, float],
) -> dict[str, Any]:
    """One line of metrics.jsonl (`epoch` counts from 1).

    ``images_per_s`` is training throughput (the training pass only); ``seconds`` is the whole
    epoch: training, evaluation and the per-layer diagnostics
    (:func:`~softmaso.orthogonality.layer_diagnostics`: ``ortho_error``, ``row_energy``,
    ``filter_norm``, ``orthonormality``, each {layer: value}); ``memory``: peak MiB in the epoch.
    """
    return {
        "epoch": epoch,
        "train_loss": loss_sum / steps,
        "train_acc": correct / images,
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        **diagnostics,
        "lr": lr,
        "seconds": train_seconds + eval_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "images_per_s": images / train_seconds,
        **memory,
    }


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory since the previous call, in MiB, and the peaks reset for the next one.

    ``peak_rss_mib``: the process's peak resident set (Linux VmHWM; reset by writing 5 to
    /proc/self/clear_refs, so a reading covers one epoch; where that is refused it is the peak
    since the process started). ``peak_cuda_mib``: torch's peak CUDA allocation, on CUDA.
    """
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return out
