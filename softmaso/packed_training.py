"""Packed training: ``fit_packed(cfgs, run_dirs)`` trains P runs as one packed network.

The runs of a pack share everything but seed, learning rate, weight decay and the
orthogonality penalty (:func:`pack_key`); each keeps its own initialisation (seeded as
``training.build`` seeds it), its own data order and augmentation draws (its sampler and
generator, as in ``training.fit``), its own batch-norm statistics, Adam moments, learning
rate and weight decay (:mod:`softmaso.packing`). So each run trains as it would alone, up to
floating-point summation order.

Bookkeeping is per run and in the formats of ``training.fit``: every run directory gets its
config, env, metrics, a single-run checkpoint (the pack is split with
``packing.unpack_state``), result and weights. A pack therefore resumes from the runs'
checkpoints, and any run can be resumed alone by ``softmaso train`` or packed with others.
Runs whose checkpoints stand at different epochs (a pack killed while writing them) train
as separate packs, one per starting epoch. A run that diverges gets its ``diverged`` result
and leaves the pack; the others go on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.nn.utils import parametrize

from softmaso import rundir
from softmaso.config import RunConfig
from softmaso.data import BatchSampler, Preprocessor, augment, load_data
from softmaso.devices import autocast, resolve_device
from softmaso.errors import RunConflict, UserError
from softmaso.orthogonality import layer_diagnostics
from softmaso.packing import (
    PACKABLE_MODES,
    PackedAdam,
    PackedLargeCNN,
    apply_packed_orthogonality,
    pack_inputs,
    pack_state,
    packed_loss,
    packed_ortho_loss,
    packed_penalty,
    penalty_weights,
    run_stack,
    unpack_state,
)
from softmaso.timing import interleaved
from softmaso.training import (
    adam_options,
    epoch_row,
    make_forward,
    make_model,
    peak_memory,
    place,
    show_epoch,
)
from softmaso.ui import GRID, Task

logger = logging.getLogger(__name__)

T = TypeVar("T")
# A pack evaluates P runs on each chunk of test images: chunks shrink with P so that a chunk
# holds at most this many single-run evaluation batches (a 30-run pack at batch 500 per run
# would hold 15,000 images: 5.5 GiB for conv1's output alone at full width)
PACK_EVAL_FACTOR = 4


def pack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train in one pack (everything but the per-run settings).

    Per run: seed, recipe name, optim.lr, optim.weight_decay, ortho.weight, and ortho.mode
    between none and penalty (``exact`` reparametrises the weights, so it packs only with
    exact runs).
    """
    d = cfg.to_dict()
    for key in ("seed", "recipe"):
        d.pop(key)
    d["optim"] = {k: v for k, v in d["optim"].items() if k not in ("lr", "weight_decay")}
    d["ortho"] = {
        "exact": d["ortho"]["mode"] == "exact",
        **{k: v for k, v in d["ortho"].items() if k not in ("mode", "weight")},
    }
    return json.dumps(d, sort_keys=True)


# ------------------------------------------------------------------------------------ pack
@dataclass
class Pack:
    """P runs' model, optimiser and samplers, trained as one network."""

    cfgs: list[RunConfig]
    dirs: list[Path]
    histories: list[list[dict]]
    model: PackedLargeCNN
    optimizer: PackedAdam
    samplers: list[BatchSampler]
    penalty: torch.Tensor | None  # (P,) lambda per run, 0 where none
    forward: Callable[..., Any]  # (x, ys) -> (summed loss, (P,) losses, (P,) correct)

    @property
    def runs(self) -> int:
        return len(self.cfgs)


def _seeded_state(cfg: RunConfig, data) -> dict[str, Any]:
    """The single-run model training.build would start from (same seed, same draws)."""
    torch.manual_seed(cfg.seed)
    return {"model": make_model(cfg, data).state_dict()}


# The memory layout of a pack's weights and inputs. channels_last (NHWC), as single runs:
# oneDNN's and cuDNN's fast layout for dense convolutions; cuDNN's grouped weight-gradient
# kernels are said to be slower in NHWC, and benchmarks/gpu_check.py (pack_layout) times a
# pack in both layouts so that a GPU machine can tell.
PACK_LAYOUT = torch.channels_last


def _make_pack(
    cfgs: list[RunConfig],
    dirs: list[Path],
    states: list[dict[str, Any]],
    histories: list[list[dict]],
    data,
    device: torch.device,
) -> Pack:
    """A pack from per-run states ({"model": ..., "optimizer": ... or absent})."""
    ref = cfgs[0]
    model = PackedLargeCNN(
        ref.model,
        num_classes=data.num_classes,
        runs=len(cfgs),
        in_channels=int(data.x_train.shape[1]),
    )
    apply_packed_orthogonality(model, [c.ortho for c in cfgs])
    model = place(model, device, PACK_LAYOUT)
    opt = PackedAdam(
        model,
        lr=[c.optim.lr for c in cfgs],
        weight_decay=[c.optim.weight_decay for c in cfgs],
        **adam_options(device),
    )
    pack_state(states, model, opt)
    samplers = [
        BatchSampler(
            data.y_train, c.optim.batch_size, balanced=c.data.balanced_batches, seed=c.seed
        )
        for c in cfgs
    ]
    penalty = penalty_weights([c.ortho for c in cfgs], device=device)
    inside = packed_penalty(model, penalty) if penalty is not None else None
    forward = make_forward(model, device, ref.train, packed_outputs, penalty=inside)
    return Pack(cfgs, dirs, histories, model, opt, samplers, penalty, forward)


def packed_outputs(logits: torch.Tensor, ys: torch.Tensor):
    """logits (B, P, K), labels (P, B) -> (summed loss, (P,) losses, (P,) correct counts)."""
    total, per_run = packed_loss(logits, ys)
    return total, per_run, (logits.argmax(2) == ys.T).sum(0)


def new_pack(cfgs: Sequence[RunConfig], data, device: torch.device) -> Pack:
    """A fresh pack of seeded runs (no run directories): for benchmarks and tests."""
    cfgs = list(cfgs)
    states = [_seeded_state(c, data) for c in cfgs]
    return _make_pack(cfgs, [Path(".")] * len(cfgs), states, [[] for _ in cfgs], data, device)


# ------------------------------------------------------------------------------------ loop
def train_step_packed(
    pack: Pack, data, prep: Preprocessor, idx: torch.Tensor, gens
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every run: idx (P, B) -> per-run loss (P,) and correct count (P,), on device."""
    cfg, P = pack.cfgs[0], pack.runs
    x = prep(data.x_train[idx.flatten()]).unflatten(0, idx.shape)  # (P, B, C, H, W)
    if cfg.data.augment:  # each run its own draws, as alone
        x = torch.stack([augment(x[p], gens[p]) for p in range(P)])
    x = pack_inputs(x)  # (B, P*C, H, W)
    x = x.contiguous(memory_format=PACK_LAYOUT)
    y = data.y_train[idx]  # (P, B)
    total, per_run, correct, *inside = pack.forward(x, y)  # logits (B, P, K) inside
    if inside:  # the weighted penalty, computed in the forward (compiled, with train.compile)
        total = total + inside[0]
    elif pack.penalty is not None:
        total = total + packed_ortho_loss(pack.model, pack.penalty)
    pack.optimizer.zero_grad(set_to_none=True)
    total.backward()
    pack.optimizer.step()
    return per_run.detach(), correct


def _train_epoch(pack: Pack, data, prep: Preprocessor, epoch: int, device, bar: Task):
    """One epoch of all runs: each run's summed loss and correct count, read to the host once."""
    P = pack.runs
    pack.model.train()
    batches = torch.stack([s.epoch(epoch) for s in pack.samplers], dim=1)  # (steps, P, B)
    gens = [
        torch.Generator(device=device).manual_seed(c.seed * 1_000_003 + epoch) for c in pack.cfgs
    ]
    loss_sum = torch.zeros(P, device=device)
    correct = torch.zeros(P, device=device, dtype=torch.long)
    for idx in batches:  # (P, B)
        per_run, right = train_step_packed(pack, data, prep, idx, gens)
        loss_sum += per_run
        correct += right
        bar.advance()
    return loss_sum.tolist(), correct.tolist()


@torch.no_grad()
def _evaluate(pack: Pack, data, prep: Preprocessor, device) -> list[dict[str, float]]:
    """Each run's test accuracy and mean cross-entropy, in eval mode (as training.evaluate)."""
    cfg, P = pack.cfgs[0], pack.runs
    pack.model.eval()
    loss_sum = torch.zeros(P, device=device, dtype=torch.float64)
    correct = torch.zeros(P, device=device, dtype=torch.long)
    # a chunk holds P copies of its images: at most PACK_EVAL_FACTOR single-run batches' worth
    bs = max(1, min(cfg.train.eval_batch_size, PACK_EVAL_FACTOR * cfg.train.eval_batch_size // P))
    with parametrize.cached():
        for i in range(0, len(data.y_test), bs):
            x, y = prep(data.x_test[i : i + bs]), data.y_test[i : i + bs]
            x = x.repeat(1, P, 1, 1)  # every run sees the same images: (B, P*C, H, W)
            x = x.contiguous(memory_format=PACK_LAYOUT)
            with autocast(device, cfg.train.amp):
                logits = pack.model(x).float()  # (B, P, K)
            ys = y.expand(P, -1)  # (P, B)
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ys.T, reduction="none")
            loss_sum += ce.sum(0).double()
            correct += (logits.argmax(2) == y[:, None]).sum(0)
    pack.model.train()
    n = max(len(data.y_test), 1)
    return [
        {"acc": c / n, "loss": s / n}
        for c, s in zip(correct.tolist(), loss_sum.tolist(), strict=True)
    ]


# ------------------------------------------------------------------------ the pack's loop
def _train(pack: Pack, data, prep: Preprocessor, device, *, start: int) -> list[dict[str, Any]]:
    """Epochs `start`.. of the pack's runs: the epoch loop of :func:`softmaso.training.fit`, for
    P runs, any of which may diverge and leave the pack. How each run ended, in the pack's order
    (the keywords of :func:`softmaso.rundir.finish_run` but device and extra)."""
    cfg, n = pack.cfgs[0], pack.runs
    at = list(range(n))  # at[p]: the original position of the pack's run p
    now = time.perf_counter()  # t0[i]: when run i would have started, counting past epochs
    t0 = [now - sum(row["seconds"] for row in h) for h in pack.histories]
    ended: dict[int, dict[str, Any]] = {}

    def end(p: int, status: str) -> None:
        wall = time.perf_counter() - t0[at[p]]
        ended[at[p]] = {"status": status, "history": pack.histories[p], "wall_seconds": wall}

    title = f"pack of {n} runs from {pack.dirs[0].name}"
    steps = pack.samplers[0].steps_per_epoch
    bar = Task(title, total=cfg.train.epochs * steps, completed=start * steps)
    if start:
        where = pack.dirs[0] / rundir.CHECKPOINT if n == 1 else f"the {n} runs' checkpoints"
        logger.info(f"resuming after epoch {start} from {where}", extra={"tag": title})
    writer = rundir.CheckpointWriter()
    try:
        peak_memory(device)  # the first epoch's peak starts here
        for epoch in range(start, cfg.train.epochs):
            t_start = time.perf_counter()
            losses, correct = _train_epoch(pack, data, prep, epoch, device, bar)
            bad = [p for p, v in enumerate(losses) if not math.isfinite(v)]
            for p in bad:
                rest = ", the other runs go on" if len(bad) < len(at) else ""
                why = f"epoch {epoch + 1} loss is {losses[p]}; stopping (diverged){rest}"
                logger.warning(why, extra={"tag": pack.dirs[p].name})
                end(p, "diverged")
            if bad:
                keep = [p for p in range(len(at)) if p not in bad]
                at, losses, correct = ([x[p] for p in keep] for x in (at, losses, correct))
                pack = _without(pack, keep, data, device) if keep else None
                if pack is None:
                    break
            t_train = time.perf_counter()
            tests = _evaluate(pack, data, prep, device)
            weights = [run_stack(c.weight, pack.runs) for c in pack.model.ortho_convs()]
            diagnostics = layer_diagnostics(weights, pack.model.ortho_names())
            lrs = pack.optimizer.lrs()
            t_eval, memory = time.perf_counter(), peak_memory(device)
            for p, history in enumerate(pack.histories):
                row = epoch_row(
                    epoch + 1,
                    loss_sum=losses[p],
                    steps=steps,
                    correct=correct[p],
                    images=steps * cfg.optim.batch_size,
                    test=tests[p],
                    diagnostics=diagnostics[p],
                    lr=lrs[p],
                    train_seconds=t_train - t_start,
                    eval_seconds=t_eval - t_train,
                    memory=memory,
                )
                history.append(row)
                show_epoch(bar, pack.dirs[p].name, row)
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
                metrics = list(zip(pack.dirs, pack.histories, strict=True))
                writer.submit(pack_checkpoints(pack, data, epoch + 1), metrics)  # in background
    finally:
        bar.close()
        writer.close()  # the last checkpoints are on disk before any result is written
    if pack is not None:
        for cfg_p, run_dir, state in zip(
            pack.cfgs, pack.dirs, unpack_state(pack.model), strict=True
        ):
            model = make_model(cfg_p, data)
            model.load_state_dict({k: v.cpu() for k, v in state["model"].items()})
            rundir.export_weights(model, run_dir / rundir.WEIGHTS)
        for p in range(len(at)):
            end(p, "finished")
    return [ended[i] for i in range(n)]


def pack_checkpoints(pack: Pack, data, epoch: int) -> list[tuple[Path, dict]]:
    """Each run's single-run checkpoint (the pack split by unpack_state), on the host."""
    states = unpack_state(pack.model, pack.optimizer)
    return [
        (
            run_dir / rundir.CHECKPOINT,
            rundir.checkpoint_state(
                cfg=cfg,
                data=data,
                epoch=epoch,
                history=history,
                model=state["model"],
                optimizer=state["optimizer"],
            ),
        )
        for cfg, run_dir, state, history in zip(
            pack.cfgs, pack.dirs, states, pack.histories, strict=True
        )
    ]


def _without(pack: Pack, keep: list[int], data, device) -> Pack:
    """The pack rebuilt with only the runs in `keep` (the others' states are discarded)."""
    states = unpack_state(pack.model, pack.optimizer)
    return _make_pack(
        *([x[p] for p in keep] for x in (pack.cfgs, pack.dirs, states, pack.histories)),
        data,
        device,
    )


# ------------------------------------------------------------------------------------- fit
def fit_packed(
    cfgs: Sequence[RunConfig],
    run_dirs: Sequence[Path],
    *,
    device: str | torch.device = "auto",
    data_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
    data=None,
    checked: bool = False,
) -> list[dict[str, Any]]:
    """Train (or resume, or skip if finished) P runs as packs; one result.json content each
    (progress and epochs shown as :func:`softmaso.training.fit` shows them).

    The runs must share :func:`pack_key`. `extra` is merged into every result.json. Results
    come back in the order of `cfgs`. `data`: their dataset, already loaded (on any device),
    else it is loaded here. `checked`: the caller holds the runs' locks and has checked their
    directories (:func:`train_pack`), so they are not checked again.
    """
    cfgs, run_dirs = list(cfgs), [Path(d) for d in run_dirs]
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("fit_packed needs one run directory per config, and at least one run")
    keys = {pack_key(c) for c in cfgs}
    if len(keys) > 1:
        raise UserError("pack", "these runs differ in more than seed, lr, weight decay, penalty")
    results: dict[int, dict[str, Any]] = {}  # finished runs are skipped
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
        if not checked and (skipped := rundir.check_unfinished(cfg, run_dir)):
            results[i] = skipped
    todo = [i for i in range(len(cfgs)) if i not in results]
    if not todo:
        return [results[i] for i in range(len(cfgs))]
    device = device if isinstance(device, torch.device) else resolve_device(device)
    data = _dataset(cfgs[0], data, data_dir, device)
    prep = Preprocessor(cfgs[0].data.preprocess, data.x_train)
    by_epoch: dict[int, list[tuple[int, dict]]] = {}  # runs by the epoch they start from
    for i in todo:
        rundir.open_run(cfgs[i], run_dirs[i], device)
        state = rundir.resume_state(run_dirs[i], device) or _seeded_state(cfgs[i], data)
        by_epoch.setdefault(state.get("epoch", 0), []).append((i, state))
    for start, members in sorted(by_epoch.items()):
        idx = [i for i, _ in members]
        states = [s for _, s in members]
        histories = [list(s.get("history", [])) for s in states]
        pack = _make_pack(
            [cfgs[i] for i in idx], [run_dirs[i] for i in idx], states, histories, data, device
        )
        ends = _train(pack, data, prep, device, start=start)
        for i, end in zip(idx, ends, strict=True):
            extra_i = {**(extra or {}), "packed_with": len(idx)}
            results[i] = rundir.finish_run(
                cfgs[i], run_dirs[i], **end, device=device, extra=extra_i
            )
    return [results[i] for i in range(len(cfgs))]


def _dataset(cfg: RunConfig, data, data_dir: Path | None, device: torch.device):
    """The runs' dataset on the device (loaded unless given), with enough images for a batch."""
    if data is None:
        data = load_data(cfg.data, data_dir=data_dir)
    data = data.to(device)
    if len(data.y_train) < cfg.optim.batch_size:
        raise UserError(
            "optim.batch_size",
            f"{cfg.optim.batch_size} is larger than the {len(data.y_train)} training images",
        )
    return data


# --------------------------------------------------------------- a grid's packed unit
def train_pack(
    unit: Sequence[Any], device: str, *, data_dir: Path | None, smoke: bool
) -> dict[Path, str] | None:
    """A grid's unit of runs (anything with ``.cfg`` and ``.dir``) trained as one pack: each
    run's outcome (finished, diverged, busy, skipped-..., conflict, damaged). None, for the
    caller to train them one by one, when fewer than two runs are left to train. Its lines are
    the grid's (``[grid] ...``)."""
    out: dict[Path, str] = {}
    said: list[str] = []  # logged once the pack goes ahead (else the caller says it all again)
    with contextlib.ExitStack() as stack:
        mine = []
        for run in unit:
            if not stack.enter_context(rundir.claim(run.dir)):
                out[run.dir] = "busy"
                continue
            try:  # once per run, under its lock
                skipped = rundir.check_unfinished(run.cfg, run.dir)
            except RunConflict as e:
                said.append(f"conflict: {e.message}")
                out[run.dir] = "conflict"
                continue
            except UserError as e:  # a damaged result.json
                said.append(f"damaged: {run.dir.name}: {e}")
                out[run.dir] = "damaged"
                continue
            if skipped:
                out[run.dir] = f"skipped-{skipped['status']}"
            else:
                mine.append(run)
        if len(mine) < 2:
            return None  # nothing left to pack: the caller trains what is left, alone
        for line in said:
            logger.info(line, extra=GRID)
        try:
            results = fit_packed(
                [r.cfg for r in mine],
                [r.dir for r in mine],
                device=device,
                data_dir=data_dir,
                extra={"smoke": smoke},
                checked=True,
            )
        except UserError as e:  # a damaged checkpoint of one run: the pack cannot start
            logger.warning(f"damaged: pack of {len(mine)} runs: {e}", extra=GRID)
            return {**out, **{r.dir: "damaged" for r in mine}}
        out.update({r.dir: str(res["status"]) for r, res in zip(mine, results, strict=True)})
    return {run.dir: out[run.dir] for run in unit}


# ---------------------------------------------------------- packs in a grid, measured
def plan_units(
    todo: list[T], *, pack: bool | None, size: int = 30, devices: int = 1, cfg=lambda r: r.cfg
) -> list[list[T]]:
    """Runs grouped into units of work: packs of runs that can share a network, or single runs.

    Runs (anything with a ``.cfg``) with the same :func:`pack_key` form a group (Table 2: the
    30 runs of a dataset); a group is cut into packs of at most `size` runs, and into at least
    one pack per device where it has the runs, so that every device gets work. Runs of an
    ortho.mode that does not pack (so, srip, torch) are single units.
    """
    if pack is False or size < 2:
        return [[run] for run in todo]
    groups: dict[str, list[T]] = {}
    units = [[run] for run in todo if cfg(run).ortho.mode not in PACKABLE_MODES]
    for run in todo:
        if cfg(run).ortho.mode in PACKABLE_MODES:
            groups.setdefault(pack_key(cfg(run)), []).append(run)
    for group in groups.values():
        n = max(-(-len(group) // size), min(devices, len(group)))  # packs in this group
        per = -(-len(group) // n)
        units += [group[i : i + per] for i in range(0, len(group), per)]
    return units


def pack_step(cfgs: list[RunConfig], data, device: torch.device) -> Callable[[], Any]:
    """A fresh pack of seeded `cfgs` on `device` and a closure that takes its next training
    step, cycling through epoch 0's batches: what timing a pack steps."""
    pack = new_pack(cfgs, data, device)
    prep = Preprocessor(cfgs[0].data.preprocess, data.x_train)
    batches = itertools.cycle(torch.stack([s.epoch(0) for s in pack.samplers], dim=1))
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
    return lambda: train_step_packed(pack, data, prep, next(batches), gens)


def pack_speedup(
    cfgs: list[RunConfig], device: torch.device, *, data=None, steps: int = 2, repeats: int = 2
) -> dict[str, float]:
    """Packed step of `cfgs` against their separate steps, interleaved: images/s and speed-up.

    `data` (on the device) defaults to the first config's dataset. One "separate" call steps
    every run once, in turn, as a grid without packing would.
    """
    from softmaso import training

    if data is None:
        data = load_data(cfgs[0].data).to(device)
    alone = [training.build(c, device, data=data) for c in cfgs]
    orders = [itertools.cycle(s.sampler.epoch(0)) for s in alone]
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]

    def separate() -> None:
        for s, order, gen in zip(alone, orders, gens, strict=True):
            training.train_step(s, next(order), gen)

    packed = pack_step(cfgs, data, device)
    t = interleaved({"separate": separate, "packed": packed}, device, steps=steps, repeats=repeats)
    images = len(cfgs) * cfgs[0].optim.batch_size
    return {
        "runs": len(cfgs),
        "packed_images_per_s": images / t["packed"],
        "separate_images_per_s": images / t["separate"],
        "speedup": t["separate"] / t["packed"],
    }
