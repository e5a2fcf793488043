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

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import parametrize

from softmaso import runs
from softmaso.config import RunConfig
from softmaso.data import BatchSampler, Preprocessor, augment, load_data
from softmaso.errors import UserError
from softmaso.orthogonality import layer_diagnostics
from softmaso.packing import (
    PackedAdam,
    PackedLargeCNN,
    apply_packed_orthogonality,
    pack_inputs,
    pack_state,
    packed_loss,
    packed_ortho_loss,
    penalty_weights,
    unpack_state,
)
from softmaso.training import (
    Reporter,
    _autocast,
    _write_metrics,
    adam_options,
    check_unfinished,
    epoch_row,
    export_weights,
    finish_run,
    make_forward,
    make_model,
    open_run,
    peak_memory,
    place,
    resolve_device,
    resume_state,
    write_checkpoint,
)


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
    model = place(model, device)
    opt = PackedAdam(
        model.parameters(),
        runs=len(cfgs),
        lr=[c.optim.lr for c in cfgs],
        weight_decay=[c.optim.weight_decay for c in cfgs],
    )
    pack_state(states, model, opt)
    samplers = [
        BatchSampler(
            data.y_train, c.optim.batch_size, balanced=c.data.balanced_batches, seed=c.seed
        )
        for c in cfgs
    ]
    penalty = penalty_weights([c.ortho for c in cfgs], device=device)
    forward = make_forward(model, device, ref.train, packed_outputs)
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


def _without(pack: Pack, drop: set[int], data, device: torch.device) -> Pack | None:
    """The pack minus the runs in `drop` (their states are split off and discarded)."""
    keep = [p for p in range(pack.runs) if p not in drop]
    if not keep:
        return None
    states = unpack_state(pack.model, pack.optimizer, adam_options=adam_options(device))
    return _make_pack(
        [pack.cfgs[p] for p in keep],
        [pack.dirs[p] for p in keep],
        [states[p] for p in keep],
        [pack.histories[p] for p in keep],
        data,
        device,
    )


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
    x = x.contiguous(memory_format=torch.channels_last)
    y = data.y_train[idx]  # (P, B)
    total, per_run, correct = pack.forward(x, y)  # logits (B, P, K) inside
    if pack.penalty is not None:
        total = total + packed_ortho_loss(pack.model, pack.penalty)
    pack.optimizer.zero_grad(set_to_none=True)
    total.backward()
    pack.optimizer.step()
    return per_run.detach(), correct


def _train_epoch(pack: Pack, data, prep: Preprocessor, epoch: int, device, on_step) -> dict:
    """One epoch of all runs; per-run sums stay on the device until the epoch ends."""
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
        if on_step is not None:
            on_step()
    return {"loss_sum": loss_sum, "correct": correct, "steps": batches.shape[0]}


@torch.no_grad()
def _evaluate(pack: Pack, data, prep: Preprocessor, device) -> list[dict[str, float]]:
    """Each run's test accuracy and mean cross-entropy, in eval mode (as training.evaluate)."""
    cfg, P = pack.cfgs[0], pack.runs
    pack.model.eval()
    loss_sum = torch.zeros(P, device=device, dtype=torch.float64)
    correct = torch.zeros(P, device=device, dtype=torch.long)
    bs = cfg.train.eval_batch_size
    with parametrize.cached():
        for i in range(0, len(data.y_test), bs):
            x, y = prep(data.x_test[i : i + bs]), data.y_test[i : i + bs]
            x = x.repeat(1, P, 1, 1)  # every run sees the same images: (B, P*C, H, W)
            x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.train.amp):
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


def _save(pack: Pack, data, device, epoch: int) -> None:
    """Each run's single-run checkpoint and metrics (the pack split by unpack_state)."""
    states = unpack_state(pack.model, pack.optimizer, adam_options=adam_options(device))
    for cfg, run_dir, state, history in zip(
        pack.cfgs, pack.dirs, states, pack.histories, strict=True
    ):
        write_checkpoint(
            run_dir / runs.CHECKPOINT,
            cfg=cfg,
            data=data,
            epoch=epoch,
            history=history,
            model=state["model"],
            optimizer=state["optimizer"],
        )
        _write_metrics(run_dir, history)


def _export(pack: Pack, p: int, data, state: dict[str, Any]) -> None:
    model = make_model(pack.cfgs[p], data)
    model.load_state_dict({k: v.cpu() for k, v in state["model"].items()})
    export_weights(model, pack.dirs[p] / runs.WEIGHTS)


# ------------------------------------------------------------------------------------- fit
def fit_packed(
    cfgs: Sequence[RunConfig],
    run_dirs: Sequence[Path],
    *,
    device: str | torch.device = "auto",
    data_dir: Path | None = None,
    live: bool | None = None,
    extra: dict[str, Any] | None = None,
    progress=None,
    data=None,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Train (or resume, or skip if finished) P runs as packs; one result.json content each
    (`quiet`: no line per run and epoch, as :func:`softmaso.training.fit`).

    The runs must share :func:`pack_key`. `extra` is merged into every result.json. Results
    come back in the order of `cfgs`. `data`: their dataset, already loaded (on any device),
    else it is loaded here.
    """
    cfgs, run_dirs = list(cfgs), [Path(d) for d in run_dirs]
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("fit_packed needs one run directory per config, and at least one run")
    keys = {pack_key(c) for c in cfgs}
    if len(keys) > 1:
        raise UserError("pack", "these runs differ in more than seed, lr, weight decay, penalty")
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
        skipped = check_unfinished(cfg, run_dir)
        if skipped:
            results[i] = skipped
        else:
            todo.append(i)
    if not todo:
        return [results[i] for i in range(len(cfgs))]
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if data is None:
        data = load_data(cfgs[0].data, data_dir=data_dir)
    data = data.to(device)
    if len(data.y_train) < cfgs[0].optim.batch_size:
        raise UserError(
            "optim.batch_size",
            f"{cfgs[0].optim.batch_size} is larger than the {len(data.y_train)} training images",
        )
    prep = Preprocessor(cfgs[0].data.preprocess, data.x_train)
    by_epoch: dict[int, list[tuple[int, dict]]] = {}
    for i in todo:
        open_run(cfgs[i], run_dirs[i], device)
        state = resume_state(run_dirs[i], device) or _seeded_state(cfgs[i], data)
        by_epoch.setdefault(state.get("epoch", 0), []).append((i, state))
    for start, members in sorted(by_epoch.items()):
        idx = [i for i, _ in members]
        pack = _make_pack(
            [cfgs[i] for i in idx],
            [run_dirs[i] for i in idx],
            [s for _, s in members],
            [list(s.get("history", [])) for _, s in members],
            data,
            device,
        )
        for i, (status, history, wall) in _fit_pack(
            pack, idx, start, data, prep, device, live, progress, quiet
        ).items():
            results[i] = finish_run(
                cfgs[i],
                run_dirs[i],
                history=history,
                status=status,
                wall_seconds=wall,
                device=device,
                extra={**(extra or {}), "packed_with": len(idx)},
            )
    return [results[i] for i in range(len(cfgs))]


def _fit_pack(
    pack: Pack, ids: list[int], start: int, data, prep, device, live, progress, quiet=False
) -> dict[int, tuple[str, list[dict], float]]:
    """Epochs `start`..end of one pack; {run index: (status, history, wall seconds)}."""
    cfg = pack.cfgs[0]
    ids = list(ids)  # ids[p]: the caller's index of the pack's run p
    now = time.perf_counter()  # wall0[i]: when run i would have started, counting past epochs
    done = [sum(r["seconds"] for r in h) for h in pack.histories]
    wall0 = {i: now - d for i, d in zip(ids, done, strict=True)}
    ended: dict[int, tuple[str, list[dict], float]] = {}
    title = f"pack of {pack.runs} runs from {pack.dirs[0].name}"
    rep = Reporter(
        title,
        cfg.train.epochs,
        pack.samplers[0].steps_per_epoch,
        start_epoch=start,
        live=live,
        progress=progress,
        quiet=quiet,
    )
    if start:
        rep.message(f"resuming {pack.runs} runs after epoch {start} from their checkpoints")
    try:
        for epoch in range(start, cfg.train.epochs):
            t0 = time.perf_counter()
            st = _train_epoch(pack, data, prep, epoch, device, rep.step)
            losses, correct = st["loss_sum"].tolist(), st["correct"].tolist()
            bad = {p for p, v in enumerate(losses) if not math.isfinite(v)}
            for p in sorted(bad):
                rep.message(
                    f"{pack.dirs[p].name}: epoch {epoch + 1} loss is {losses[p]}; "
                    "stopping this run (diverged), the rest of the pack goes on"
                )
                ended[ids[p]] = ("diverged", pack.histories[p], time.perf_counter() - wall0[ids[p]])
            if bad:
                keep = [p for p in range(pack.runs) if p not in bad]
                losses, correct, ids = ([v[p] for p in keep] for v in (losses, correct, ids))
                pack = _without(pack, bad, data, device)
                if pack is None:
                    return ended
            t1 = time.perf_counter()
            tests = _evaluate(pack, data, prep, device)
            weights = [c.weight for c in pack.model.ortho_convs()]
            diagnostics = layer_diagnostics(weights, pack.model.ortho_names(), pack.runs)
            t2 = time.perf_counter()
            memory = peak_memory(device)
            for p in range(pack.runs):
                row = epoch_row(
                    epoch + 1,
                    loss_sum=losses[p],
                    steps=st["steps"],
                    correct=correct[p],
                    images=st["steps"] * cfg.optim.batch_size,
                    test=tests[p],
                    diagnostics=diagnostics[p],
                    lr=pack.optimizer.param_groups[0]["lr"][p],
                    train_seconds=t1 - t0,
                    eval_seconds=t2 - t1,
                    memory=memory,
                )
                pack.histories[p].append(row)
                rep.epoch(row, name=pack.dirs[p].name)
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
                _save(pack, data, device, epoch + 1)
    finally:
        rep.close()
    states = unpack_state(pack.model)
    for p, i in enumerate(ids):
        _export(pack, p, data, states[p])
        ended[i] = ("finished", pack.histories[p], time.perf_counter() - wall0[i])
    return ended
