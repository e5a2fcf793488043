"""`softmaso bench`: throughput, overheads and memory of the training step, measured.

Every comparison runs in one process and interleaves its variants (A B A B ...), after a
warm-up, and reports medians over repeats, so that a slow moment of the machine hits every
variant alike. Figures:

(a) softmaso's training step (``training.train_step``: index the uint8 data on the device,
    preprocess there, forward, loss, backward, Adam) against a plain loop written here
    (``model(x)``, ``loss.backward()``, ``opt.step()`` on float data already on the device);
    the same step in bf16 and with ``train.compile`` (not in a quick CPU run: a cold compile);
(b) the cost of ``ortho.mode: penalty`` and ``exact`` (either ``ortho.method``) over ``none``,
    and, for the record, of exact orthogonality by a Python loop of Gram-Schmidt over the
    filters (the authors' way); and how orthonormal each method's weights are after its steps;
(c) evaluation throughput;
(d) packed training (P runs in one network, ``packed_training``) against P separate steps;
    on CUDA also batch 50 and 100 eager, bf16, the step captured as a CUDA graph, and packed
    in bf16 and with ``train.compile``; then the projected wall time of the paper's full
    Table 2 grid at the rate ``reproduce`` would train at here, and its ratio to the compute
    floor (1.39 EFLOP at 200 TFLOP/s);
(e) peak memory: process RSS, and on CUDA the device's peak allocation.
"""

from __future__ import annotations

import itertools
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from softmaso import fill, rundir
from softmaso.config import RunConfig
from softmaso.packed_training import pack_speedup
from softmaso.timing import interleaved, rounds, sync

log = logging.getLogger(__name__)

FORWARD_GFLOP = 0.542  # per 32x32 image, largeCNN, counted by FlopCounterMode; a step ~ 3x
GRID_IMAGES = 30 * (73_257 * 150 + 50_000 * 150 + 50_000 * 200)  # 90 runs: svhn, c10, c100
FLOOR_TFLOPS = 200.0  # a sustained bf16 rate, the reference for the grid's compute floor
PACK_RUNS_CUDA = 30  # Table 2: the 30 runs of one dataset in one pack
PACK_RUNS_CPU = 2  # enough to show the trend on a CPU
# ru_maxrss (and the child's VmHWM) per GiB: bytes on macOS, KiB on Linux
RSS_PER_GIB = 2**30 if sys.platform == "darwin" else 2**20


def _config(
    mode: str = "none",
    batch: int = 50,
    amp: bool = False,
    width: float = 1.0,
    method: str = "cholesky",
    compile: bool = False,
) -> RunConfig:
    return RunConfig.model_validate(
        {
            "recipe": "bench",
            "data": {"name": "synthetic", "synthetic_train": 2000},
            "model": {"width": width},
            "ortho": {"mode": mode, "method": method},
            "optim": {"batch_size": batch},
            "train": {"amp": amp, "compile": compile},
        }
    )


def _setup(device, mode="none", *, sgs=False, **config):
    """A built run of :func:`_config`; with `sgs`, exact's parametrisation replaced by the
    authors' Python Gram-Schmidt loop."""
    from softmaso import training

    s = training.build(_config(mode, **config), device)
    if sgs:
        from torch.nn.utils import parametrize

        from softmaso.orthogonality import sgs_reference

        class _SGS(torch.nn.Module):
            def forward(self, w):
                return sgs_reference(w)

        for conv in s.convs:
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
            parametrize.register_parametrization(conv, "weight", _SGS())
        s.optimizer = torch.optim.Adam(s.model.parameters(), lr=s.cfg.optim.lr)
    return s


def _softmaso_step(s) -> Callable[[], None]:
    from softmaso.training import train_step

    batches = itertools.cycle(s.sampler.epoch(0))
    return lambda: train_step(s, next(batches))


def _plain_step(s) -> Callable[[], None]:
    """The reference loop: a fresh model and default Adam, data preprocessed in advance."""
    from softmaso.models import build_model

    torch.manual_seed(0)
    model = build_model(s.cfg.model, num_classes=s.data.num_classes).to(s.device)
    opt = torch.optim.Adam(model.parameters(), lr=s.cfg.optim.lr)
    bs = s.cfg.optim.batch_size
    x = s.preprocess(s.data.x_train[: 8 * bs])  # float, on the device
    y = s.data.y_train[: 8 * bs]
    starts = itertools.cycle(range(0, 8 * bs, bs))

    def step() -> None:
        i = next(starts)
        loss = F.cross_entropy(model(x[i : i + bs]), y[i : i + bs])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _captured_step(s) -> Callable[[], None]:
    """softmaso's step recorded once as a CUDA graph, replayed with each new batch's indices.

    Adam gets ``capturable=True`` (its step count and bias corrections on the device); the
    batch indices live in a static buffer the graph reads. Three eager steps on a side stream
    warm up cuDNN's algorithm choice and the allocator before capture (PyTorch's recipe).
    """
    from softmaso.training import train_step

    s.optimizer = torch.optim.Adam(
        s.model.parameters(), lr=s.cfg.optim.lr, fused=True, capturable=True
    )
    batches = s.sampler.epoch(0)
    idx = batches[0].clone()  # the graph's static input
    side = torch.cuda.Stream(device=s.device)  # on the run's GPU, not the current one
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            train_step(s, idx)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(s, idx)
    batches = itertools.cycle(batches)

    def step() -> None:
        idx.copy_(next(batches))
        graph.replay()

    return step


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A figure, or {"error": ...} if this device cannot produce it (one failure, not all)."""
    try:
        return fn()
    except Exception as e:  # e.g. CUDA graph capture of an op that synchronises
        from softmaso.errors import first_line

        return {"error": f"{type(e).__name__}: {first_line(e)}"}


def _overheads(times: dict[str, list[float]], base: str) -> dict[str, Any]:
    """Median seconds per step and median over rounds of (variant / base - 1): each round
    times every variant back to back, so a slow drift of the machine cancels out. The
    rounds' lowest and highest ratio show how much a single round can be trusted."""
    out: dict[str, Any] = {}
    for k, v in times.items():
        ratios = [a / b - 1 for a, b in zip(v, times[base], strict=True)]
        out[k] = {
            "seconds_per_step": statistics.median(v),
            "overhead": statistics.median(ratios),
            "overhead_range": [min(ratios), max(ratios)],
        }
    return out


def measure(
    device: torch.device,
    *,
    quick: bool = False,
    width: float = 1.0,
    cifar_sized: bool = True,
) -> dict[str, Any]:
    """All figures; `width` < 1 and `cifar_sized=False` only for tests (targets are for width 1)."""
    repeats = 3 if quick else 5
    timing = {"steps": 2 if quick else 5, "repeats": repeats}
    out: dict[str, Any] = {
        "device": rundir.environment(device),
        "quick": quick,
        "width": width,
        "date": rundir.now(),
    }
    out["device"].pop("argv", None)
    out["busy_before"] = _busy()
    base = _setup(device, width=width)
    out.update(_step_figures(device, base, width, quick, **timing))
    out.update(_ortho_figures(device, base, width, quick, **timing))

    log.info("(c) evaluation throughput ...")
    from softmaso.training import evaluate

    t = interleaved({"eval": lambda: evaluate(base)}, device, steps=1, repeats=repeats)
    out["c_eval_images_per_s"] = len(base.data.y_test) / t["eval"]

    n = PACK_RUNS_CUDA if device.type == "cuda" else PACK_RUNS_CPU
    log.info(f"(d) packed training: {n} runs in one network against {n} separate steps ...")
    cfgs = [_config(width=width).with_overrides(seed=i) for i in range(n)]
    out["d_packed"] = _guarded(lambda: pack_speedup(cfgs, device, data=base.data, **timing))
    if device.type == "cuda":
        out.update(_cuda_extras(device, base, cfgs, width, **timing))
    out["d_projection"] = _projection(out)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    memory = {"bench_process_peak_rss_gib": peak / RSS_PER_GIB}
    if cifar_sized:
        log.info("(e) peak memory of a CIFAR-sized run (50,000 + 10,000 images), fresh process ...")
        rss = _guarded(lambda: {"gib": _cifar_sized_rss(device, width)})
        memory["cifar_sized_run_peak_rss_gib"] = rss.get("gib", rss.get("error"))
    if device.type == "cuda":
        memory["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    out["e_memory"] = memory
    return out


def _step_figures(device, base, width: float, quick: bool, **timing) -> dict[str, Any]:
    """(a) the training step against a plain loop, in bf16, and with train.compile."""
    log.info("(a) training step vs a plain loop, batch 50, full width ...")
    t = interleaved(
        {"softmaso": _softmaso_step(base), "plain": _plain_step(base)}, device, **timing
    )
    out: dict[str, Any] = {
        "a_step": {
            "softmaso_images_per_s": 50 / t["softmaso"],
            "plain_images_per_s": 50 / t["plain"],
            "ratio": t["plain"] / t["softmaso"],
        }
    }
    log.info("(a) the same step in bf16 (train.amp) ...")
    bf16 = {
        "fp32": _softmaso_step(base),
        "bf16": _softmaso_step(_setup(device, amp=True, width=width)),
    }
    t = _guarded(lambda: interleaved(bf16, device, **timing))
    out["a_bf16"] = (
        t if "error" in t else {"images_per_s": 50 / t["bf16"], "speedup": t["fp32"] / t["bf16"]}
    )
    if device.type == "cuda" or not quick:  # a cold compile is slow on a few CPU cores
        log.info("(a) the same step with train.compile ...")
        out["a_compiled"] = _guarded(lambda: _compiled_speedup(device, base, width, **timing))
    return out


def _compiled_speedup(device, base, width, *, steps: int, repeats: int) -> dict[str, float]:
    """The step with ``train.compile`` against eager, interleaved; the first call's seconds
    (tracing and compiling; on CUDA the graphs are recorded in the warm-up round)."""
    step = _softmaso_step(_setup(device, width=width, compile=True))
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    t = interleaved(
        {"eager": _softmaso_step(base), "compiled": step}, device, steps=steps, repeats=repeats
    )
    return {
        "images_per_s": 50 / t["compiled"],
        "speedup": t["eager"] / t["compiled"],
        "compile_seconds": first,
    }


def _ortho_figures(device, base, width: float, quick: bool, *, steps, repeats) -> dict[str, Any]:
    """(b) the step of each orthogonality mode against none, and exact's orthonormality."""
    log.info("(b) orthogonality overheads, batch 50 ...")
    exact = {
        "exact": _setup(device, "exact", width=width),
        "exact_qr": _setup(device, "exact", width=width, method="qr"),
    }
    variants = {
        "none": _softmaso_step(base),
        "penalty": _softmaso_step(_setup(device, "penalty", width=width)),
        **{k: _softmaso_step(s) for k, s in exact.items()},
        "exact_python_gs": _softmaso_step(_setup(device, "exact", sgs=True, width=width)),
    }
    for mode in ("so", "srip", "torch"):  # the other methods of `reproduce ortho-methods`
        variants[mode] = _softmaso_step(_setup(device, mode, width=width))
    n_rounds = repeats if quick else 2 * repeats  # the targets are a few percent: more rounds
    times = rounds(variants, device, steps=steps, repeats=n_rounds)
    trained = (n_rounds + 1) * steps  # the warm-up round's steps too
    return {
        "b_ortho": _overheads(times, "none"),
        "b_orthonormality": {k: _orthonormality(s.convs, trained) for k, s in exact.items()},
    }


def _orthonormality(convs, steps: int) -> dict[str, float]:
    """How orthonormal exact's weights are (after the timed steps): max |Q Q^T - I| in float64
    over the layers, and for the first square layer on its own (largeCNN's 1x1, which starts
    with a condition number near 1000), rows or, for C_out > n, columns."""
    from softmaso.orthogonality import orthonormality_error

    weights = [conv.weight for conv in convs]  # each parametrisation computed once
    errors = [(orthonormality_error(w), w[0].numel() == len(w)) for w in weights]
    square = [e for e, sq in errors if sq]
    return {
        "max_error": max(e for e, _ in errors),
        "max_error_non_square": max((e for e, sq in errors if not sq), default=0.0),
        "square_layer_error": square[0] if square else float("nan"),
        "steps": steps,
    }


def _cuda_extras(
    device, base, cfgs: list[RunConfig], width: float, *, steps: int, repeats: int
) -> dict[str, Any]:
    """(d)'s CUDA-only figures: images/s of the single-model step at batch 50 and 100 eager, in
    bf16 and captured, the pack of `cfgs` in bf16 and with ``train.compile``, and 2 and 4
    compiled runs in as many processes at once (summed; 0 where one failed); each failure
    reported in place of its figure."""
    log.info("(d) CUDA: batch 50 and 100, bf16, captured step (CUDA graph) ...")
    batch = {"eager_b50": 50, "eager_b100": 100, "bf16_b50": 50, "captured_b50": 50}
    makers = {
        "eager_b100": lambda: _softmaso_step(_setup(device, batch=100, width=width)),
        "bf16_b50": lambda: _softmaso_step(_setup(device, amp=True, width=width)),
        "captured_b50": lambda: _captured_step(_setup(device, width=width)),
    }
    variants = {"eager_b50": _softmaso_step(base)}
    cuda: dict[str, Any] = {}
    for name, make in makers.items():
        got = _guarded(lambda make=make: {"step": make()})
        if "error" in got:
            cuda[name] = got
        else:
            variants[name] = got["step"]
    t = interleaved(variants, device, steps=steps, repeats=repeats)
    for name, sec in t.items():
        cuda[name] = {"batch": batch[name], "images_per_s": batch[name] / sec}
    out: dict[str, Any] = {"d_cuda": cuda}
    for key, override in (("bf16", {"train.amp": True}), ("compiled", {"train.compile": True})):
        log.info(f"(d) CUDA: packed, {key} ...")
        variant = [c.with_overrides(**override) for c in cfgs]
        out[f"d_packed_{key}"] = _guarded(
            lambda v=variant: pack_speedup(v, device, data=base.data, steps=steps, repeats=repeats)
        )
    log.info("(d) CUDA: 2 and 4 worker processes, compiled, on the device at once ...")
    compiled = [c.with_overrides(**{"train.compile": True}) for c in cfgs]
    out["d_processes"] = {
        f"processes={k}": fill.process_rate([[c] for c in compiled[:k]], str(device))
        for k in (2, 4)
        if k <= len(compiled)
    }
    return out


def _projection(res: dict[str, Any]) -> dict[str, Any]:
    """The Table 2 grid's wall time at the rate `softmaso reproduce` would train at here.

    On CUDA (figures (d) CUDA present) that is the fastest way a grid fills the device, as
    :func:`softmaso.fill.choose` picks it: one compiled run at a time, 2 or 4 compiled worker
    processes, or a compiled pack; on a CPU, one eager run at a time. The other variants
    (captured, bf16, ...) are listed beside it, with their own projections.
    """
    if "d_cuda" in res:
        one = res.get("a_compiled", {}).get("images_per_s", res["a_step"]["softmaso_images_per_s"])
        rates = {"processes=1": one, **res.get("d_processes", {})}
        packed = res.get("d_packed_compiled", {})
        if "packed_images_per_s" in packed:
            rates[f"pack={packed['runs']}"] = packed["packed_images_per_s"]
        chosen = fill.choose(rates, "cuda")
        rate, used = fill.rate_of(chosen), chosen.why
    else:
        rate, used = res["a_step"]["softmaso_images_per_s"], "one run at a time, eager"
    floor = GRID_IMAGES * 3 * FORWARD_GFLOP * 1e9 / (FLOOR_TFLOPS * 1e12)
    grid = GRID_IMAGES / rate
    others = {k: v["images_per_s"] for k, v in res.get("d_cuda", {}).items() if "images_per_s" in v}
    if "images_per_s" in res.get("a_compiled", {}):
        others["compiled_b50"] = res["a_compiled"]["images_per_s"]
    for key in ("bf16", "compiled"):
        if "packed_images_per_s" in (variant := res.get(f"d_packed_{key}", {})):
            others[f"packed_{key}"] = variant["packed_images_per_s"]
    return {
        "grid_images": GRID_IMAGES,
        "rate_used": used,
        "images_per_s": rate,
        "grid_hours_at_measured_rate": grid / 3600,
        "floor_hours": floor / 3600,
        "ratio_to_floor": grid / floor,
        "achieved_tflops": rate * 3 * FORWARD_GFLOP / 1e3,
        "other_variants_grid_hours": {k: GRID_IMAGES / v / 3600 for k, v in others.items()},
    }


_CIFAR_SIZED = """
import resource, sys, torch
from softmaso.bench import _config
from softmaso import training
cfg = _config(width={width}).with_overrides(**{{"data.synthetic_train": 50000}})
s = training.build(cfg, torch.device({device!r}))
for idx in s.sampler.epoch(0)[:3]:
    training.train_step(s, idx)
training.evaluate(s)
try:  # VmHWM: this process's own peak (ru_maxrss would inherit the parent's across fork)
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    print(int(status.split()[0]))
except (OSError, IndexError):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _cifar_sized_rss(device: torch.device, width: float) -> float:
    """Peak RSS (GiB) of a fresh process holding a CIFAR-sized dataset, stepping and evaluating."""
    import subprocess

    code = _CIFAR_SIZED.format(width=width, device=str(device))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / RSS_PER_GIB


def _busy(seconds: float = 1.0) -> float | None:
    """The fraction of the machine's CPU time that other processes used during `seconds`
    before measuring (this one sleeps meanwhile), from /proc/stat; None where there is none.
    Warns above a quarter: the figures then measure a shared machine (packing and the
    overheads move most)."""

    def busy_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # minus idle and iowait

    try:
        b0, t0 = busy_total()
        time.sleep(seconds)
        b1, t1 = busy_total()
    except (OSError, ValueError, IndexError):
        return None
    busy = (b1 - b0) / max(t1 - t0, 1)
    if busy > 0.25:
        log.warning(f"other processes used {busy:.0%} of the CPUs: the figures will be noisy")
    return busy


_NAMES = {
    "exact": "exact (cholesky)",
    "exact_qr": "exact (qr)",
    "exact_python_gs": "authors' Python GS",
}
_MEMORY = {
    "bench_process_peak_rss_gib": "(e) this process's peak RSS, GiB",
    "cifar_sized_run_peak_rss_gib": "(e) CIFAR-sized run's peak RSS, GiB (target <= 2)",
    "cuda_peak_gib": "(e) CUDA peak allocated, GiB",
}


def render(res: dict[str, Any]):
    """The figures of :func:`measure` as a rich table; a failed figure shows its error."""
    from rich.table import Table

    t = Table(title=f"softmaso bench on {res['device']['device']['name']} ({res['date']})")
    if (busy := res.get("busy_before")) is not None and busy > 0.25:
        t.caption = f"other processes used {busy:.0%} of the CPUs before it started: noisy"
    t.add_column("figure")
    t.add_column("value", justify="right")
    row = t.add_row

    a = res["a_step"]
    row("(a) softmaso step, images/s (batch 50)", f"{a['softmaso_images_per_s']:.1f}")
    row("(a) plain loop, images/s", f"{a['plain_images_per_s']:.1f}")
    row("(a) ratio softmaso / plain (target >= 0.97)", f"{a['ratio']:.3f}")
    if (b := res.get("a_bf16")) is not None:
        value = b.get("error") or f"{b['images_per_s']:.1f} ({b['speedup']:.2f}x fp32)"
        row("(a) bf16 step (train.amp), images/s", value)
    if (c := res.get("a_compiled")) is not None and "error" in c:
        row("(a) train.compile", c["error"])
    elif c is not None:
        row("(a) with train.compile, images/s", f"{c['images_per_s']:.1f}")
        row("(a) train.compile speed-up over eager", f"{c['speedup']:.2f}x")
        row("(a) train.compile first step, s", f"{c['compile_seconds']:.1f}")

    targets = {"penalty": " (target <= 5%)", "exact": " (target <= 5%)"}
    for k, v in res["b_ortho"].items():
        if k != "none":
            lo, hi = v["overhead_range"]
            row(
                f"(b) {_NAMES.get(k, k)} over none{targets.get(k, '')}",
                f"{100 * v['overhead']:+.1f}% ({100 * lo:+.1f} to {100 * hi:+.1f})",
            )
    for k, v in res.get("b_orthonormality", {}).items():
        row(
            f"(b) {_NAMES.get(k, k)}: max |QQ^T - I| after {v['steps']} steps, "
            "non-square / square layer",
            f"{v['max_error_non_square']:.0e} / {v['square_layer_error']:.0e}",
        )
    row("(c) evaluation, images/s", f"{res['c_eval_images_per_s']:.1f}")

    packs = {"d_packed": "fp32", "d_packed_bf16": "bf16", "d_packed_compiled": "compiled"}
    for key, label in packs.items():
        if (p := res.get(key)) is None:
            continue
        if "error" in p:
            row(f"(d) packed {label}", p["error"])
            continue
        n = p["runs"]
        row(f"(d) packed {label}, {n} runs, images/s", f"{p['packed_images_per_s']:.0f}")
        row(f"(d) {n} separate steps {label}, images/s", f"{p['separate_images_per_s']:.0f}")
        row(f"(d) packing speed-up {label}", f"{p['speedup']:.2f}x")
    for name, v in res.get("d_cuda", {}).items():
        row(f"(d) CUDA {name}, images/s", v.get("error") or f"{v['images_per_s']:.0f}")
    d = res["d_projection"]
    row(f"(d) rate reproduce trains at ({d['rate_used']}), images/s", f"{d['images_per_s']:.0f}")
    row("(d) achieved TFLOP/s (3 x 0.542 GFLOP per image)", f"{d['achieved_tflops']:.3f}")
    row("(d) Table 2 grid at this rate, hours", f"{d['grid_hours_at_measured_rate']:.1f}")
    row("(d) ratio to the floor (1.9 h at 200 TFLOP/s)", f"{d['ratio_to_floor']:.2f}")
    for k, v in d["other_variants_grid_hours"].items():
        row(f"(d) grid hours if training ran {k}", f"{v:.2f}")

    for k, v in res["e_memory"].items():  # a failed measurement is its error text
        row(_MEMORY.get(k, f"(e) {k}"), f"{v:.2f}" if isinstance(v, float) else str(v))
    return t
