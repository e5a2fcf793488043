"""One run of the largeCNN, whole: ``fit(cfg, run_dir)`` -> result dict.

Read top to bottom: :func:`build` (data, seeded model, Adam, sampler),
:func:`train_step`, :func:`evaluate`, and :func:`fit`, which holds the epoch loop. The whole
dataset sits on the training device as uint8; each step indexes a batch, preprocesses it on the
device, and steps Adam. Nothing in the step synchronises with the host: losses and correct
counts are summed on the device and read once per epoch, which is also when divergence (a NaN
or infinite loss) is detected. After each epoch the run directory gets an atomic checkpoint and
the metrics; rerunning the same command resumes from the checkpoint, and a finished run is not
redone. Data order and augmentation depend only on (seed, epoch), so a resumed run draws
exactly the batches an uninterrupted one would. With ``train.compile`` the forward and loss of
each step go through ``torch.compile`` (:mod:`softmaso.compiled`); the rest stays eager.
Packing (P runs as one network, :mod:`softmaso.packed_training`) wraps these pieces; nothing
here knows about it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from softmaso import rundir
from softmaso.compiled import CompiledForward, single_outputs
from softmaso.config import RunConfig, TrainConfig, validate
from softmaso.data import BatchSampler, Preprocessor, augment, load_data
from softmaso.devices import autocast, resolve_device
from softmaso.errors import RunBusy, UserError
from softmaso.fast import keep_freed_memory
from softmaso.models import build_model, check_input_size
from softmaso.orthogonality import (
    Penalty,
    apply_orthogonality,
    layer_diagnostics,
    ortho_loss,
    penalty_of,
    penalty_value,
)
from softmaso.ui import EPOCHS, Task

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """Everything a run trains with, built from the config (and nothing else)."""

    cfg: RunConfig
    device: torch.device
    data: Any  # softmaso.data.ImageData, on the device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    sampler: Any  # softmaso.data.BatchSampler
    forward: Callable[..., Any]  # run_forward's: (pixels, or input if augmented, y) -> ...
    convs: list[torch.nn.Module] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def to_input(preprocess: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A batch of pixels -> the network's input: preprocessed, channels_last."""
    return preprocess(x).contiguous(memory_format=torch.channels_last)


def _eager_forward(model, device, amp: bool, outputs, penalty, weights, preprocess, x, y):
    if preprocess is not None:
        x = to_input(preprocess, x)
    with autocast(device, amp):
        out = outputs(model(x), y)
    return out if penalty is None else (*out, penalty_value(penalty, weights))


def make_forward(
    model: torch.nn.Module,
    device: torch.device,
    train: TrainConfig,
    outputs: Callable[..., Any] = single_outputs,
    penalty: Penalty | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """(x, y) -> outputs(model(x), y), the training forward and loss (`outputs`: the loss and
    correct count of a single run by default), then the `penalty` on the model's weights
    where one is given; with `preprocess`, x is the batch's pixels, made the network's input
    first (:func:`to_input`). Compiled with ``train.compile`` (preprocessing and penalty in
    the same compiled region), else eager."""
    if train.compile:
        return CompiledForward(
            model, device, outputs, amp=train.amp, penalty=penalty, preprocess=preprocess
        )
    weights = dict(model.named_parameters())
    return functools.partial(
        _eager_forward, model, device, train.amp, outputs, penalty, weights, preprocess
    )


def device_defaults(
    cfg: RunConfig, device: torch.device, saved: dict[str, Any] | None = None
) -> RunConfig:
    """`cfg` with what trains fastest on `device` where its recipe and --set leave it open: on
    CUDA, compiled steps (``train.compile``: the forward, loss and penalty as CUDA graphs,
    measured faster than eager on an H200, benchmarks/RESULTS.md); on a CPU, eager (compiling
    gains nothing there). A run that already has a config (`saved`, its flattened
    config.yaml) keeps the value it started with, so a restart on another device is never a
    conflict. The choice is in the run's config.yaml."""
    if "compile" in cfg.train.model_fields_set:
        return cfg
    if saved is not None and "train.compile" in saved:
        compiled = bool(saved["train.compile"])
    else:
        compiled = device.type == "cuda"
    return (
        cfg if compiled == cfg.train.compile else cfg.with_overrides(**{"train.compile": compiled})
    )


def run_forward(model: torch.nn.Module, device: torch.device, cfg: RunConfig, preprocess):
    """A single run's training forward: (pixels, y) -> (loss, correct[, penalty's term]); with
    ``data.augment``, (input, y): the augmentation draws from a generator, outside any
    compiled region, after preprocessing (:func:`train_step`)."""
    penalty = penalty_of(model, model.ortho_convs(), cfg.ortho)
    prep = None if cfg.data.augment else preprocess
    return make_forward(model, device, cfg.train, penalty=penalty, preprocess=prep)


def adam_options(device: torch.device) -> dict[str, bool]:
    """torch.optim.Adam's implementation for the device: fused on CUDA, foreach on CPU."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def make_model(cfg: RunConfig, data) -> torch.nn.Module:
    """The run's largeCNN for the dataset, orthogonality applied (seeded by the caller)."""
    where = cfg.data.path if cfg.data.name == "npz" and cfg.data.path else "data.name"
    check_input_size(*data.x_train.shape[-2:], where=where)
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.x_train.shape[1])
    apply_orthogonality(model.ortho_convs(), cfg.ortho)
    return model


def place(
    model: torch.nn.Module, device: torch.device, layout=torch.channels_last
) -> torch.nn.Module:
    """The model on the device in `layout`: channels_last (faster on CUDA and on CPU with
    oneDNN) unless told otherwise."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()
    return model.to(device).to(memory_format=layout)


def build(
    cfg: RunConfig, device: torch.device, data_dir: Path | None = None, *, data=None
) -> Setup:
    """Data (loaded, unless `data` already on the device is given), seeded model, Adam, sampler."""
    if data is None:
        data = load_data(cfg.data, data_dir=data_dir).to(device)
    torch.manual_seed(cfg.seed)
    model = place(make_model(cfg, data), device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        **adam_options(device),
    )
    sampler = BatchSampler(
        data.y_train, cfg.optim.batch_size, balanced=cfg.data.balanced_batches, seed=cfg.seed
    )
    if sampler.steps_per_epoch == 0:
        raise UserError(
            "optim.batch_size",
            f"{cfg.optim.batch_size} is larger than the {len(data.y_train)} training images",
        )
    preprocess = Preprocessor(cfg.data.preprocess, data.x_train)
    return Setup(
        cfg,
        device,
        data,
        model,
        optimizer,
        preprocess,
        sampler,
        run_forward(model, device, cfg, preprocess),
        model.ortho_convs(),
        model.ortho_names(),
    )


# -------------------------------------------------------------------------------------- step
def train_step(
    s: Setup, idx: torch.Tensor, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the training images `idx` (B,); returns (loss, correct), on device."""

    cfg = s.cfg
    x, y = s.data.x_train[idx], s.data.y_train[idx]
    if cfg.data.augment:  # else preprocessed inside the forward (compiled, with train.compile)
        x = augment(to_input(s.preprocess, x), gen)
    loss, correct, *inside = s.forward(x, y)  # inside: the penalty's term, where computed there
    extra = cfg.ortho.weight * inside[0] if inside else ortho_loss(s.convs, cfg.ortho)
    total = loss if extra is None else loss + extra
    s.optimizer.zero_grad(set_to_none=True)
    total.backward()
    s.optimizer.step()
    return loss.detach(), correct


@torch.no_grad()
def evaluate(s: Setup, split: str = "test") -> dict[str, float]:
    """Accuracy (fraction) and mean cross-entropy of the model on a split, in eval mode."""
    x_all = s.data.x_test if split == "test" else s.data.x_train
    y_all = s.data.y_test if split == "test" else s.data.y_train
    was_training = s.model.training
    s.model.eval()
    loss_sum = torch.zeros((), device=s.device, dtype=torch.float64)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    bs = s.cfg.train.eval_batch_size
    with parametrize.cached():  # exact orthogonality: orthonormalise once, not per batch
        for i in range(0, len(y_all), bs):
            x, y = to_input(s.preprocess, x_all[i : i + bs]), y_all[i : i + bs]
            with autocast(s.device, s.cfg.train.amp):
                logits = s.model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    s.model.train(was_training)
    n = max(len(y_all), 1)
    return {"acc": correct.item() / n, "loss": loss_sum.item() / n}


# --------------------------------------------------------------------------------------- fit
def show_epoch(bar: Task, name: str, row: dict) -> None:
    """An epoch's metrics: after the run's bar where one is shown, else a log line."""
    text = (
        f"epoch {row['epoch']} loss {row['train_loss']:.4f} train {row['train_acc']:.4f} "
        f"test {row['test_acc']:.4f} {row['images_per_s']:.0f} img/s"
    )
    if bar.shown:
        bar.note(text)
    else:
        logging.getLogger(EPOCHS).info(f"{text} ({row['seconds']:.1f}s)", extra={"tag": name})


def fit(
    cfg: RunConfig,
    run_dir: Path,
    *,
    device: str | torch.device = "auto",
    data_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
    lock: bool = False,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run; returns the result.json content.

    The whole of a run: its lock, the check of its directory, the build, the epoch loop
    (train, detect divergence, evaluate, log, checkpoint in the background), the final weights
    and result.json. `extra` is merged into result.json (e.g. {"smoke": true}). `lock` takes
    the run's lock (:func:`softmaso.rundir.claim`) and raises RunBusy if another process holds
    it. Progress: a line of the bar where one is shown (:mod:`softmaso.ui`), else a log line
    per epoch (logger ``softmaso.epochs``).
    """
    run_dir = Path(run_dir)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    with rundir.claim(run_dir) if lock else contextlib.nullcontext(True) as mine:
        if not mine:
            raise RunBusy(
                "--out",
                f"{run_dir} is being trained by another process (it holds {rundir.LOCK}); wait "
                "for it to finish, or choose another run directory",
            )
        if skipped := rundir.check_unfinished(cfg, run_dir):  # once, under the lock
            return skipped
        s = build(cfg, device, data_dir)  # data errors surface before anything is written
        rundir.open_run(cfg, run_dir, device)
        state = rundir.resume_state(run_dir, device)
        if state is not None:
            s.model.load_state_dict(state["model"])
            s.optimizer.load_state_dict(state["optimizer"])
        history: list[dict] = state["history"] if state else []
        epochs, steps = cfg.train.epochs, s.sampler.steps_per_epoch
        name = rundir.run_name(cfg)
        bar = Task(name, total=epochs * steps, completed=len(history) * steps)
        if history:
            where = run_dir / rundir.CHECKPOINT
            log.info(f"resuming after epoch {len(history)} from {where}", extra={"tag": name})
        t0 = time.perf_counter() - sum(row["seconds"] for row in history)  # past epochs count
        writer, status = rundir.CheckpointWriter(), "finished"
        try:
            peak_memory(device)  # the first epoch's peak starts here
            for epoch in range(len(history), epochs):
                t_start = time.perf_counter()
                s.model.train()
                gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch)
                loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync
                correct = torch.zeros((), device=device, dtype=torch.long)
                batches = s.sampler.epoch(epoch)  # (steps, batch) indices on the device
                for idx in batches:
                    loss, right = train_step(s, idx, gen)
                    loss_sum += loss
                    correct += right
                    bar.advance()
                if not math.isfinite(train_loss := loss_sum.item()):
                    why = f"epoch {epoch + 1} loss is {train_loss}; stopping (diverged)"
                    log.warning(why, extra={"tag": name})
                    status = "diverged"
                    break
                t_train = time.perf_counter()
                test = evaluate(s, "test")
                diagnostics = layer_diagnostics([m.weight for m in s.convs], s.names)[0]
                t_eval = time.perf_counter()
                row = epoch_row(
                    epoch + 1,
                    loss_sum=train_loss,
                    steps=len(batches),
                    correct=correct.item(),
                    images=batches.numel(),
                    test=test,
                    diagnostics=diagnostics,
                    lr=s.optimizer.param_groups[0]["lr"],
                    train_seconds=t_train - t_start,
                    eval_seconds=t_eval - t_train,
                    memory=peak_memory(device),
                )
                history.append(row)
                show_epoch(bar, name, row)
                if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == epochs:
                    checkpoint = rundir.checkpoint_state(
                        cfg=cfg,
                        data=s.data,
                        epoch=epoch + 1,
                        history=history,
                        model=s.model.state_dict(),
                        optimizer=s.optimizer.state_dict(),
                    )
                    # written while the next epoch trains
                    writer.submit([(run_dir / rundir.CHECKPOINT, checkpoint)], [(run_dir, history)])
        finally:
            bar.close()
            writer.close()  # the last checkpoint is on disk before the result is written
        if status == "finished":
            rundir.export_weights(s.model, run_dir / rundir.WEIGHTS)
        return rundir.finish_run(
            cfg,
            run_dir,
            history=history,
            status=status,
            device=device,
            wall_seconds=time.perf_counter() - t0,
            extra=extra,
        )


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
    """One line of metrics.jsonl (`epoch` counts from 1), for a run or each run of a pack.

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


def evaluate_saved(
    target: Path, *, split: str = "test", device: str = "auto", data_dir: Path | None = None
) -> dict[str, float]:
    """Accuracy and loss of a saved model: a run directory or a checkpoint file."""
    target = Path(target)
    path = target / rundir.CHECKPOINT if target.is_dir() else target
    if target.is_dir() and not path.exists():
        result = rundir.read_json(target / rundir.RESULT) or {}
        if result.get("status") == "diverged":
            why = f"the run diverged in epoch {result.get('epochs', 0) + 1}, before any checkpoint"
        else:
            why = "not a run directory (or not started)"
        raise UserError(str(target), f"no {rundir.CHECKPOINT} here: {why}")
    dev = resolve_device(device)
    state = rundir.load_checkpoint(path, map_location=dev)
    cfg = validate(state["config"], source=f"{path} (its config)")
    s = build(cfg, dev, data_dir)
    s.model.load_state_dict(state["model"])
    res = evaluate(s, split)
    return {f"{split}_acc": res["acc"], "loss": res["loss"], "epoch": state["epoch"]}
