"""Training and evaluation of the largeCNN: ``fit(cfg, run_dir)`` -> result dict.

The loop is ``train_one_epoch`` + ``evaluate``, run once per epoch. The whole dataset sits on
the training device as uint8; each step indexes a batch, preprocesses it on the device, and
steps Adam. Nothing in the step synchronises with the host: losses and correct counts are
summed on the device and read once per epoch, which is also when divergence (a NaN or infinite
loss) is detected. After each epoch the run directory gets an atomic checkpoint and the
metrics; rerunning the same command resumes from the checkpoint, and a finished run is not
redone. Data order and augmentation depend only on (seed, epoch), so a resumed run draws
exactly the batches an uninterrupted one would. With ``train.compile`` the forward and loss of
each step go through ``torch.compile`` (:mod:`softmaso.compiled`); the rest stays eager.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from softmaso import runs
from softmaso.compiled import CompiledForward, single_outputs
from softmaso.config import RunConfig, TrainConfig, dump_yaml
from softmaso.data import BatchSampler, Preprocessor, augment, load_data
from softmaso.errors import RunConflict, UserError
from softmaso.io import atomic_write
from softmaso.models import build_model, check_input_size
from softmaso.orthogonality import apply_orthogonality, layer_diagnostics, ortho_loss


# ------------------------------------------------------------------------------------ device
def resolve_device(spec: str = "auto") -> torch.device:
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N; UserError if not available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(
            "--device", f"{spec!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError("--device", f"{spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    n = torch.cuda.device_count()
    if n == 0:
        raise UserError("--device", f"{spec!r} asked for, but no CUDA device is available here")
    if device.index is not None and device.index >= n:
        raise UserError("--device", f"{spec!r} does not exist; this machine has cuda:0..{n - 1}")
    return device


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch's operators in this process (None: leave torch's
    default, every core). Two processes that each use every core slow each other down many
    times over (measured: a 2-core epoch took 1,033 s instead of 153 s), so a grid of CPU
    workers gives each a share."""
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    forward: Callable[..., Any]  # (x, y) -> (loss, correct): make_forward's
    convs: list[torch.nn.Module] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def parametrised(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(module, name) of every parametrised tensor of `model` (e.g. exact's conv weights)."""
    return [
        (module, name)
        for module in model.modules()
        if parametrize.is_parametrized(module)
        for name in module.parametrizations
    ]


def _eager_forward(model, tensors, device: torch.device, amp: bool, outputs, x, y):
    with _autocast(device, amp):
        if not tensors:
            return outputs(model(x), y)
        # All parametrised weights computed first, then served from the cache to the forward:
        # run back to back, exact's eight orthonormalisations (and their backward, which the
        # autograd engine then also runs last) cost 2-3 points less of a CPU step than each
        # just before its conv (``softmaso bench``). The same values either way.
        with parametrize.cached():
            for module, name in tensors:
                getattr(module, name)
            return outputs(model(x), y)


def make_forward(
    model: torch.nn.Module,
    device: torch.device,
    train: TrainConfig,
    outputs: Callable[..., Any] = single_outputs,
) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """(x, y) -> outputs(model(x), y), the training forward and loss (a single run's, or a
    pack's with ``packed_outputs``): compiled with ``train.compile``, else eager."""
    if train.compile:
        return CompiledForward(model, device, outputs, amp=train.amp)
    return functools.partial(_eager_forward, model, parametrised(model), device, train.amp, outputs)


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


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on the device, channels_last (faster on CUDA and on CPU with oneDNN)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        keep_freed_memory()
    return model.to(device).to(memory_format=torch.channels_last)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse rather than hand them back to the OS.

    A CPU training step frees and reallocates ~100 MB of activations. With glibc's defaults
    they are unmapped and mapped again, ~25,000 page faults per full-width step (measured on
    2 cores: up to 0.1 s of system time on a 0.19 s step, and most of the step-to-step
    noise). With blocks up to 32 MiB (glibc's largest setting) served from the heap and the
    heap trimmed only above 1 GiB free, a step takes no page faults once warm. Process-wide;
    False where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


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
    return Setup(
        cfg,
        device,
        data,
        model,
        optimizer,
        Preprocessor(cfg.data.preprocess, data.x_train),
        sampler,
        make_forward(model, device, cfg.train),
        model.ortho_convs(),
        model.ortho_names(),
    )


# -------------------------------------------------------------------------------------- loop
def _prepare(s: Setup, x: torch.Tensor) -> torch.Tensor:
    x = s.preprocess(x)
    return x.contiguous(memory_format=torch.channels_last)


def train_step(
    s: Setup, idx: torch.Tensor, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on the training images `idx` (B,); returns (loss, correct), on device."""

    cfg = s.cfg
    x, y = _prepare(s, s.data.x_train[idx]), s.data.y_train[idx]
    if cfg.data.augment:
        x = augment(x, gen)
    loss, correct = s.forward(x, y)
    extra = ortho_loss(s.convs, cfg.ortho)
    total = loss if extra is None else loss + extra
    s.optimizer.zero_grad(set_to_none=True)
    total.backward()
    s.optimizer.step()
    return loss.detach(), correct


def train_one_epoch(s: Setup, epoch: int, on_step: Callable[[], None] | None = None) -> dict:
    """One pass over the sampler's batches; returns device-summed statistics (no host sync)."""
    s.model.train()
    batches = s.sampler.epoch(epoch)  # (steps, batch) indices on the device
    gen = torch.Generator(device=s.device).manual_seed(s.cfg.seed * 1_000_003 + epoch)
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    for idx in batches:
        loss, right = train_step(s, idx, gen)
        loss_sum += loss
        correct += right
        if on_step is not None:
            on_step()
    n = batches.shape[0]
    return {"loss_sum": loss_sum, "correct": correct, "steps": n, "images": batches.numel()}


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
            x, y = _prepare(s, x_all[i : i + bs]), y_all[i : i + bs]
            with _autocast(s.device, s.cfg.train.amp):
                logits = s.model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    s.model.train(was_training)
    n = max(len(y_all), 1)
    return {"acc": correct.item() / n, "loss": loss_sum.item() / n}


# ------------------------------------------------------------------------------ checkpoints
CHECKPOINT_FORMAT = "softmaso-checkpoint-v1"


def save_checkpoint(s: Setup, path: Path, *, epoch: int, history: list[dict]) -> None:
    write_checkpoint(
        path,
        cfg=s.cfg,
        data=s.data,
        epoch=epoch,
        history=history,
        model=s.model.state_dict(),
        optimizer=s.optimizer.state_dict(),
    )


def write_checkpoint(
    path: Path, *, cfg: RunConfig, data, epoch: int, history: list[dict], model: dict, optimizer
) -> None:
    """One run's checkpoint (atomic): config, epoch, history, model and Adam state dicts."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "num_classes": data.num_classes,
        "in_channels": int(data.x_train.shape[1]),
        "epoch": epoch,
        "history": history,
        "model": model,
        "optimizer": optimizer,
    }
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a softmaso checkpoint safely (weights_only); UserError if corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise UserError(str(path), "checkpoint not found")
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive
            raise UserError(str(path), "not a checkpoint (checkpoint.pt files are zip archives)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many types for truncated or foreign files
        raise UserError(
            str(path), "corrupt or truncated checkpoint (torch cannot read it)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(str(path), "not a softmaso checkpoint (no softmaso format marker)")
    return state


def export_weights(model: torch.nn.Module, path: Path) -> None:
    """Final effective weights (parametrisations applied) as safetensors."""
    import copy

    from safetensors.torch import save_file

    plain = copy.deepcopy(model).cpu()
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    tensors = {k: v.detach().contiguous() for k, v in plain.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp)))


# -------------------------------------------------------------------------------- reporting
class Reporter:
    """A rich progress bar on a terminal, one plain line per epoch otherwise (SLURM logs)."""

    def __init__(
        self,
        title: str,
        epochs: int,
        steps: int,
        *,
        start_epoch: int = 0,
        live=None,
        progress=None,
        quiet: bool = False,
    ):
        self.live = progress is not None or (sys.stderr.isatty() if live is None else live)
        self.quiet = quiet and not self.live  # no plain line per epoch (a grid's log)
        self.title, self.steps = title, steps
        self._own = progress is None
        self._progress = progress
        if self.live:
            if self._own:
                self._progress = _new_progress()
                self._progress.start()
            self._task = self._progress.add_task(
                title, total=epochs * steps, completed=start_epoch * steps, info=""
            )

    def step(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def epoch(self, row: dict, name: str | None = None) -> None:
        """Show an epoch's metrics line (`name`: the run's, when a bar shows several runs)."""
        info = (
            ("" if name is None else f"{name}: ")
            + f"epoch {row['epoch']} loss {row['train_loss']:.4f} train {row['train_acc']:.4f} "
            f"test {row['test_acc']:.4f} {row['images_per_s']:.0f} img/s"
        )
        if self._progress is not None:
            self._progress.update(self._task, info=info)
        elif not self.quiet:
            print(f"[{self.title}] {info} ({row['seconds']:.1f}s)", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(f"[{self.title}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is None:
            return
        if self._own:
            self._progress.stop()
        else:
            self._progress.remove_task(self._task)


def _new_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )


# --------------------------------------------------------------------------------------- fit
def _check_run_dir(cfg: RunConfig, run_dir: Path, finished: bool = False) -> None:
    """A run directory belongs to one config: refuse to mix another one in.

    The config is read from ``config.yaml``, or, where that is gone, from the checkpoint. The
    same values written differently (another softmaso version's layout) are the same config.
    """
    saved, there = _saved_config(run_dir)
    if saved is None:
        return
    if there is None:
        raise RunConflict(
            "--out",
            f"{saved} cannot be read as a softmaso config, so the run there cannot be checked "
            "against this one; choose another run directory (or restore that file)",
        )
    here = runs.flatten(cfg.to_dict())
    diff = [k for k in [*here, *(k for k in there if k not in here)] if there.get(k) != here.get(k)]
    if not diff:
        return
    shown = "; ".join(
        f"{k}: {there.get(k, 'not set')} there, {here.get(k, 'not set')} here" for k in diff[:3]
    ) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
    if finished:
        advice = "it is a finished run; choose another run directory"
    elif all(k in there and k in here for k in diff):
        advice = (
            "choose another run directory, or --set those keys to the run's values to resume it"
        )
    else:  # keys one softmaso version has and another has not
        advice = "choose another run directory (the run there was made by another softmaso version)"
    raise RunConflict("--out", f"{run_dir} holds a run with a different config ({shown}); {advice}")


def _saved_config(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(file the run's config was read from, its flattened keys): (None, None) for no run yet,
    (file, None) for a file that is not a readable config."""
    saved, checkpoint = run_dir / runs.CONFIG, run_dir / runs.CHECKPOINT
    if saved.exists():
        tree = runs.read_config(run_dir)
    elif checkpoint.exists():
        saved = checkpoint
        try:
            tree = load_checkpoint(checkpoint).get("config")
        except UserError:
            tree = None
    else:
        return None, None
    if not isinstance(tree, dict) or not isinstance(tree.get("data"), dict):
        return saved, None
    return saved, runs.flatten(tree)


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(run_dir / runs.METRICS, lambda tmp: tmp.write_text(text))


def open_run(cfg: RunConfig, run_dir: Path, device: torch.device) -> None:
    """Make the run directory ready to train in: stale temp files gone, config and env written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp"):  # temp files of a writer that was killed mid-write
        stale.unlink(missing_ok=True)
    atomic_write(run_dir / runs.CONFIG, lambda tmp: tmp.write_text(dump_yaml(cfg)))
    runs.write_json(run_dir / runs.ENV, runs.environment(device))


def resume_state(run_dir: Path, device: torch.device) -> dict | None:
    """The run's checkpoint, with metrics.jsonl rewritten from it; None if it has none.

    The checkpoint is the truth: a kill between it and the metrics write loses no epoch.
    """
    if not (run_dir / runs.CHECKPOINT).exists():
        return None
    state = load_checkpoint(run_dir / runs.CHECKPOINT, map_location=device)
    _write_metrics(run_dir, state["history"])
    return state


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


def finish_run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    history: list[dict],
    status: str,
    wall_seconds: float,
    device: torch.device,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write result.json (the run's end: finished or diverged) and return its content."""
    result = {
        "status": status,
        "final_test_acc": history[-1]["test_acc"] if history else None,
        "best_test_acc": max((r["test_acc"] for r in history), default=None),
        "epochs": len(history),
        "wall_seconds": wall_seconds,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "config_hash": runs.config_hash(cfg),
        "device": str(device),
        "date": runs.now(),
        **(extra or {}),
    }
    runs.write_json(run_dir / runs.RESULT, result)
    return result


def check_unfinished(cfg: RunConfig, run_dir: Path) -> dict | None:
    """The skipped-run result if the run is finished; RunConflict if the directory is another's;
    UserError if its result.json is damaged (not a JSON object with a known status)."""
    status, done, problem = runs.status(run_dir)
    if status == "damaged":
        raise UserError(
            str(run_dir / runs.RESULT),
            f"damaged result.json ({problem}); delete it to resume the run from its checkpoint",
        )
    finished = status == "finished"
    _check_run_dir(cfg, run_dir, finished)
    if finished:
        return {**done, "skipped": True}
    return None


def fit(
    cfg: RunConfig,
    run_dir: Path,
    *,
    device: str | torch.device = "auto",
    data_dir: Path | None = None,
    live: bool | None = None,
    extra: dict[str, Any] | None = None,
    progress=None,
    lock: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run; returns the result.json content.

    `extra` is merged into result.json (e.g. {"smoke": true}); `progress` is a shared rich
    Progress (a grid's) to show this run's bar in, instead of a bar of its own. `lock` takes
    the run's lock (:func:`softmaso.runs.claim`; a grid holds it already) once the data are
    loaded, and refuses a run another process is training. `quiet`: no line per epoch (a grid's
    log has a line per run; the epochs are in metrics.jsonl).
    """
    run_dir = Path(run_dir)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    skipped = check_unfinished(cfg, run_dir)
    if skipped:
        return skipped
    s = build(cfg, device, data_dir)  # data errors surface before anything is written
    with runs.claim(run_dir) if lock else contextlib.nullcontext(True) as mine:
        if not mine:
            raise UserError(
                "--out",
                f"{run_dir} is being trained by another process (it holds {runs.LOCK}); wait "
                "for it to finish, or choose another run directory",
            )
        skipped = check_unfinished(cfg, run_dir)  # it may have finished while we loaded
        if skipped:
            return skipped
        return _fit(s, run_dir, live=live, extra=extra, progress=progress, quiet=quiet)


def _fit(s: Setup, run_dir: Path, *, live, extra, progress, quiet) -> dict[str, Any]:
    """fit's epoch loop, on a built setup, in a run directory it may write."""
    cfg, device = s.cfg, s.device
    open_run(cfg, run_dir, device)
    history: list[dict] = []
    state = resume_state(run_dir, device)
    if state is not None:
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
    start = len(history)
    wall0 = time.perf_counter() - sum(r["seconds"] for r in history)
    rep = Reporter(
        runs.run_name(cfg),
        cfg.train.epochs,
        s.sampler.steps_per_epoch,
        start_epoch=start,
        live=live,
        progress=progress,
        quiet=quiet,
    )
    if start:
        rep.message(f"resuming after epoch {start} from {run_dir / runs.CHECKPOINT}")
    status = "finished"
    try:
        peak_memory(device)  # the first epoch's peak starts here
        for epoch in range(start, cfg.train.epochs):
            t0 = time.perf_counter()
            st = train_one_epoch(s, epoch, on_step=rep.step)
            loss_sum = st["loss_sum"].item()
            if not math.isfinite(loss_sum):
                status = "diverged"
                rep.message(f"epoch {epoch + 1}: loss is {loss_sum}; stopping (diverged)")
                break
            t1 = time.perf_counter()
            test = evaluate(s, "test")
            weights = [m.weight for m in s.convs]
            row = epoch_row(
                epoch + 1,
                loss_sum=loss_sum,
                steps=st["steps"],
                correct=st["correct"].item(),
                images=st["images"],
                test=test,
                diagnostics=layer_diagnostics(weights, s.names)[0],
                lr=s.optimizer.param_groups[0]["lr"],
                train_seconds=t1 - t0,
                eval_seconds=time.perf_counter() - t1,
                memory=peak_memory(device),
            )
            history.append(row)
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
                save_checkpoint(s, run_dir / runs.CHECKPOINT, epoch=epoch + 1, history=history)
                _write_metrics(run_dir, history)
            rep.epoch(row)
    finally:
        rep.close()
    if status == "finished":
        export_weights(s.model, run_dir / runs.WEIGHTS)
    wall = time.perf_counter() - wall0
    return finish_run(
        cfg,
        run_dir,
        history=history,
        status=status,
        wall_seconds=wall,
        device=device,
        extra=extra,
    )


def evaluate_saved(
    target: Path, *, split: str = "test", device: str = "auto", data_dir: Path | None = None
) -> dict[str, float]:
    """Accuracy and loss of a saved model: a run directory or a checkpoint file."""
    target = Path(target)
    path = target / runs.CHECKPOINT if target.is_dir() else target
    if target.is_dir() and not path.exists():
        result = runs.read_json(target / runs.RESULT) or {}
        if result.get("status") == "diverged":
            why = f"the run diverged in epoch {result.get('epochs', 0) + 1}, before any checkpoint"
        else:
            why = "not a run directory (or not started)"
        raise UserError(str(target), f"no {runs.CHECKPOINT} here: {why}")
    dev = resolve_device(device)
    state = load_checkpoint(path, map_location=dev)
    cfg = RunConfig.model_validate(state["config"])
    s = build(cfg, dev, data_dir)
    s.model.load_state_dict(state["model"])
    res = evaluate(s, split)
    return {f"{split}_acc": res["acc"], "loss": res["loss"], "epoch": state["epoch"]}
