"""`softmaso bench`: throughput, overheads and memory of the training step, measured.

Every comparison runs in one process and interleaves its variants (A B A B ...), after a
warm-up, and reports medians over repeats, so that a slow moment of the machine hits every
variant alike. Figures:

(a) softmaso's training step (``training.train_step``: index the uint8 data on the device,
    preprocess there, forward, loss, backward, Adam) against a plain loop written here
    (``model(x)``, ``loss.backward()``, ``opt.step()`` on float data already on the device);
(b) the cost of ``ortho.mode: penalty`` and ``exact`` (either ``ortho.method``) over ``none``,
    and, for the record, of exact orthogonality by a Python loop of Gram-Schmidt over the
    filters (the authors' way); and how orthonormal each method's weights are after its steps;
(c) evaluation throughput;
(d) packed training (P runs in one network, ``packed_training``) against P separate steps;
    on CUDA also batch 50 and 100 eager, bf16, the step captured as a CUDA graph, and packed
    with ``train.compile`` (the single-model step with it is in (a), except in a quick CPU
    run: ~12 s to compile with an empty inductor cache); then
    the projected wall time of the paper's full Table 2 grid at the rate ``reproduce`` would
    train at here, and its ratio to the compute floor (1.39 EFLOP at 200 TFLOP/s);
(e) peak memory: process RSS, and on CUDA the device's peak allocation.
"""

from __future__ import annotations

import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from softmaso import rundir
from softmaso.config import RunConfig
from softmaso.packed_training import pack_speedup
from softmaso.timing import interleaved, rounds, sync

log = logging.getLogger(__name__)

FORWARD_GFLOP = 0.542  # per 32x32 image, largeCNN, counted by FlopCounterMode; a step ~ 3x
GRID_IMAGES = 30 * (73_257 * 150 + 50_000 * 150 + 50_000 * 200)  # 90 runs: svhn, c10, c100
FLOOR_TFLOPS = 200.0  # a sustained bf16 rate, the reference for the grid's compute floor


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


def _softmaso_step(s) -> Callable[[], None]:
    from softmaso.training import train_step

    batches = s.sampler.epoch(0)
    state = {"i": 0}

    def step() -> None:
        train_step(s, batches[state["i"] % len(batches)])
        state["i"] += 1

    return step


def _plain_step(s) -> Callable[[], None]:
    """The reference loop: a fresh model and default Adam, data preprocessed in advance."""
    from softmaso.models import build_model

    torch.manual_seed(0)
    model = build_model(s.cfg.model, num_classes=s.data.num_classes).to(s.device)
    opt = torch.optim.Adam(model.parameters(), lr=s.cfg.optim.lr)
    bs = s.cfg.optim.batch_size
    x = s.preprocess(s.data.x_train[: 8 * bs])  # float, on the device
    y = s.data.y_train[: 8 * bs]
    state = {"i": 0}

    def step() -> None:
        i = (state["i"] % 8) * bs
        loss = F.cross_entropy(model(x[i : i + bs]), y[i : i + bs])
        opt.zero_grad()
        loss.backward()
        opt.step()
        state["i"] += 1

    return step


def _setup(
    device, mode="none", batch=50, amp=False, sgs=False, width=1.0, method="cholesky", compile=False
):
    from softmaso import training

    s = training.build(_config(mode, batch, amp, width, method, compile), device)
    if sgs:  # replace the exact parametrisation by the authors' Python Gram-Schmidt loop
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


PACK_RUNS_CUDA = 30  # Table 2: the 30 runs of one dataset in one pack
PACK_RUNS_CPU = 2  # enough to show the trend on a CPU, where a step is ~0.25 s


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A figure, or {"error": ...} if this device cannot produce it (one failure, not all)."""
    try:
        return fn()
    except Exception as e:  # e.g. CUDA graph capture of an op that synchronises
        from softmaso.errors import first_line

        return {"error": f"{type(e).__name__}: {first_line(e)}"}


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
    state = {"i": 0}

    def step() -> None:
        idx.copy_(batches[state["i"] % len(batches)])
        graph.replay()
        state["i"] += 1

    return step


def _compiled_speedup(device, base, width, steps: int, repeats: int) -> dict[str, float]:
    """The step with ``train.compile`` against eager, interleaved; the first call's seconds
    (tracing and compiling; on CUDA the graphs are recorded in the warm-up round)."""
    s = _setup(device, width=width, compile=True)
    step = _softmaso_step(s)
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


def _cuda_variants(device, base, width, *, steps: int, repeats: int) -> dict[str, Any]:
    """Images/s of the single-model step: batch 50 and 100 eager, bf16, and captured."""
    batch = {"eager_b50": 50, "eager_b100": 100, "bf16_b50": 50, "captured_b50": 50}
    variants: dict[str, Callable[[], None]] = {"eager_b50": _softmaso_step(base)}
    out: dict[str, Any] = {}
    makers = {
        "eager_b100": lambda: _softmaso_step(_setup(device, batch=100, width=width)),
        "bf16_b50": lambda: _softmaso_step(_setup(device, amp=True, width=width)),
        "captured_b50": lambda: _captured_step(_setup(device, width=width)),
    }
    for name, make in makers.items():
        got = _guarded(lambda make=make: {"step": make()})
        if "error" in got:
            out[name] = got
        else:
            variants[name] = got["step"]
    t = interleaved(variants, device, steps=steps, repeats=repeats)
    for name, sec in t.items():
        out[name] = {"batch": batch[name], "images_per_s": batch[name] / sec}
    return out


def _cuda_extras(
    device, base, cfgs: list[RunConfig], width: float, *, steps: int, repeats: int
) -> dict[str, Any]:
    """(d)'s CUDA-only figures: the single-model variants, and the pack of `cfgs` in bf16 and
    with ``train.compile``; each failure reported in place of its figure."""
    log.info("(d) CUDA: batch 50 and 100, bf16, captured step (CUDA graph) ...")
    out: dict[str, Any] = {
        "d_cuda": _cuda_variants(device, base, width, steps=steps, repeats=repeats)
    }
    for key, override in (("bf16", {"train.amp": True}), ("compiled", {"train.compile": True})):
        log.info(f"(d) CUDA: packed, {key} ...")
        variant = [c.with_overrides(**override) for c in cfgs]
        out[f"d_packed_{key}"] = _guarded(
            lambda v=variant: pack_speedup(v, device, data=base.data, steps=steps, repeats=repeats)
        )
    return out


def _projection(res: dict[str, Any]) -> dict[str, Any]:
    """The Table 2 grid's wall time at the rate `softmaso reproduce` would train at here.

    That is the packed rate when packing measured faster (reproduce packs then), else the
    single-model step's; both the fp32 protocol, eager (``train.compile`` is off by default).
    The other variants (captured, bf16, compiled) are listed beside it, with their own
    projections.
    """
    from softmaso.packing import PACK_MIN_SPEEDUP

    single = res["a_step"]["softmaso_images_per_s"]
    packed = res.get("d_packed", {})
    use_pack = packed.get("speedup", 0) >= PACK_MIN_SPEEDUP
    rate = packed["packed_images_per_s"] if use_pack else single
    floor = GRID_IMAGES * 3 * FORWARD_GFLOP * 1e9 / (FLOOR_TFLOPS * 1e12)
    grid = GRID_IMAGES / rate
    out: dict[str, Any] = {
        "grid_images": GRID_IMAGES,
        "rate_used": "packed" if use_pack else "single model, eager",
        "images_per_s": rate,
        "grid_hours_at_measured_rate": grid / 3600,
        "floor_hours": floor / 3600,
        "ratio_to_floor": grid / floor,
        "achieved_tflops": rate * 3 * FORWARD_GFLOP / 1e3,
    }
    others = {k: v for k, v in res.get("d_cuda", {}).items() if "images_per_s" in v}
    if "images_per_s" in res.get("a_compiled", {}):
        others["compiled_b50"] = res["a_compiled"]
    for key in ("bf16", "compiled"):
        variant = res.get(f"d_packed_{key}", {})
        if "packed_images_per_s" in variant:
            others[f"packed_{key}"] = {"images_per_s": variant["packed_images_per_s"]}
    out["other_variants_grid_hours"] = {
        k: GRID_IMAGES / v["images_per_s"] / 3600 for k, v in others.items()
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
    steps, repeats = (2, 3) if quick else (5, 5)
    out: dict[str, Any] = {
        "device": rundir.environment(device),
        "quick": quick,
        "width": width,
        "date": rundir.now(),
    }
    out["device"].pop("argv", None)
    out["busy_before"] = _busy()
    timing = {"steps": steps, "repeats": repeats}
    base = _setup(device, width=width)
    out.update(_step_figures(device, base, width, quick, timing))
    out.update(_ortho_figures(device, base, width, quick, timing))
    log.info("(c) evaluation throughput ...")
    from softmaso.training import evaluate

    t = interleaved({"eval": lambda: evaluate(base)}, device, steps=1, repeats=repeats)
    out["c_eval_images_per_s"] = len(base.data.y_test) / t["eval"]
    out.update(_packed_figures(device, base, width, timing))
    out["d_projection"] = _projection(out)
    out["e_memory"] = _memory_figures(device, width, cifar_sized)
    return out


def _step_figures(device, base, width: float, quick: bool, timing: dict) -> dict[str, Any]:
    """(a) the training step against a plain loop, and with train.compile."""
    log.info("(a) training step vs a plain loop, batch 50, full width ...")
    variants = {"softmaso": _softmaso_step(base), "plain": _plain_step(base)}
    t = interleaved(variants, device, **timing)
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
        t
        if "error" in t
        else {
            "images_per_s": 50 / t["bf16"],
            "speedup": t["fp32"] / t["bf16"],
        }
    )
    if device.type == "cuda" or not quick:  # ~12 s to compile cold on 2 CPU cores
        log.info("(a) the same step with train.compile ...")
        steps, repeats = timing["steps"], timing["repeats"]
        out["a_compiled"] = _guarded(lambda: _compiled_speedup(device, base, width, steps, repeats))
    return out


def _ortho_figures(device, base, width: float, quick: bool, timing: dict) -> dict[str, Any]:
    """(b) the step of each orthogonality mode against none, and exact's orthonormality."""
    log.info("(b) orthogonality overheads, batch 50 ...")
    exact = {"exact": _setup(device, "exact", width=width)}
    exact["exact_qr"] = _setup(device, "exact", width=width, method="qr")
    variants = {"none": _softmaso_step(base)}
    variants["penalty"] = _softmaso_step(_setup(device, "penalty", width=width))
    variants.update({k: _softmaso_step(s) for k, s in exact.items()})
    variants["exact_python_gs"] = _softmaso_step(_setup(device, "exact", sgs=True, width=width))
    for mode in ("so", "srip", "torch"):  # the other methods of `reproduce ortho-methods`
        variants[mode] = _softmaso_step(_setup(device, mode, width=width))
    steps, repeats = timing["steps"], timing["repeats"]
    n_rounds = repeats if quick else 2 * repeats  # the targets are a few percent: more rounds
    times = rounds(variants, device, steps=steps, repeats=n_rounds)
    trained = (n_rounds + 1) * steps  # the warm-up round's steps too
    return {
        "b_ortho": _overheads(times, "none"),
        "b_orthonormality": {k: _orthonormality(s.convs, trained) for k, s in exact.items()},
    }


def _packed_figures(device, base, width: float, timing: dict) -> dict[str, Any]:
    """(d) packed against separate training, CUDA extras, and the grid's projected time."""
    runs_ = PACK_RUNS_CUDA if device.type == "cuda" else PACK_RUNS_CPU
    log.info(f"(d) packed training: {runs_} runs in one network against {runs_} separate steps ...")
    cfgs = [_config(width=width).with_overrides(seed=i) for i in range(runs_)]
    out = {"d_packed": _guarded(lambda: pack_speedup(cfgs, device, data=base.data, **timing))}
    if device.type == "cuda":
        out.update(_cuda_extras(device, base, cfgs, width, **timing))
    return out


def _memory_figures(device, width: float, cifar_sized: bool) -> dict[str, Any]:
    """(e) peak memory: this process, a CIFAR-sized run in a fresh process, CUDA."""
    out: dict[str, Any] = {"bench_process_peak_rss_gib": _peak_rss_gib()}
    if cifar_sized:
        log.info("(e) peak memory of a CIFAR-sized run (50,000 + 10,000 images), fresh process ...")
        rss = _guarded(lambda: {"gib": _cifar_sized_rss(device, width)})
        out["cifar_sized_run_peak_rss_gib"] = rss.get("gib", rss.get("error"))
    if device.type == "cuda":
        out["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


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


def _cifar_sized_rss(device: torch.device, width: float) -> float:
    """Peak RSS (GiB) of a fresh process holding a CIFAR-sized dataset, stepping and evaluating."""
    import subprocess

    code = _CIFAR_SIZED.format(width=width, device=str(device))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / (2**30 if sys.platform == "darwin" else 2**20)


def _peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**30 if sys.platform == "darwin" else 2**20)


def render(res: dict[str, Any]):
    """The figures of :func:`measure` as a rich table."""
    from rich.table import Table

    t = Table(title=f"softmaso bench on {res['device']['device']['name']} ({res['date']})")
    if (busy := res.get("busy_before")) is not None and busy > 0.25:
        t.caption = f"other processes used {busy:.0%} of the CPUs before it started: noisy"
    t.add_column("figure")
    t.add_column("value", justify="right")
    for rows in (_step_rows, _ortho_rows, _packed_rows, _projection_rows, _memory_rows):
        for label, value in rows(res):
            t.add_row(label, value)
    return t


_NAMES = {
    "exact": "exact (cholesky)",
    "exact_qr": "exact (qr)",
    "exact_python_gs": "authors' Python GS",
}


def _step_rows(res: dict[str, Any]):
    a = res["a_step"]
    yield "(a) softmaso step, images/s (batch 50)", f"{a['softmaso_images_per_s']:.1f}"
    yield "(a) plain loop, images/s", f"{a['plain_images_per_s']:.1f}"
    yield "(a) ratio softmaso / plain (target >= 0.97)", f"{a['ratio']:.3f}"
    b = res.get("a_bf16")
    if b is not None:
        value = (
            b["error"] if "error" in b else f"{b['images_per_s']:.1f} ({b['speedup']:.2f}x fp32)"
        )
        yield "(a) bf16 step (train.amp), images/s", value
    c = res.get("a_compiled")
    if c is not None and "error" in c:
        yield "(a) train.compile", c["error"]
    elif c is not None:
        yield "(a) with train.compile, images/s", f"{c['images_per_s']:.1f}"
        yield "(a) train.compile speed-up over eager", f"{c['speedup']:.2f}x"
        yield "(a) train.compile first step, s", f"{c['compile_seconds']:.1f}"


def _ortho_rows(res: dict[str, Any]):
    targets = {"penalty": " (target <= 5%)", "exact": " (target <= 5%)"}
    for k, v in res["b_ortho"].items():
        if k != "none":
            lo, hi = v["overhead_range"]
            yield (
                f"(b) {_NAMES.get(k, k)} over none{targets.get(k, '')}",
                f"{100 * v['overhead']:+.1f}% ({100 * lo:+.1f} to {100 * hi:+.1f})",
            )
    for k, v in res.get("b_orthonormality", {}).items():
        yield (
            f"(b) {_NAMES.get(k, k)}: max |QQ^T - I| after {v['steps']} steps, "
            "non-square / square layer",
            f"{v['max_error_non_square']:.0e} / {v['square_layer_error']:.0e}",
        )
    yield "(c) evaluation, images/s", f"{res['c_eval_images_per_s']:.1f}"


def _packed_rows(res: dict[str, Any]):
    for key, label in (
        ("d_packed", "fp32"),
        ("d_packed_bf16", "bf16"),
        ("d_packed_compiled", "compiled"),
    ):
        p = res.get(key)
        if p is None:
            continue
        if "error" in p:
            yield f"(d) packed {label}", p["error"]
            continue
        n = p["runs"]
        yield f"(d) packed {label}, {n} runs, images/s", f"{p['packed_images_per_s']:.0f}"
        yield f"(d) {n} separate steps {label}, images/s", f"{p['separate_images_per_s']:.0f}"
        yield f"(d) packing speed-up {label}", f"{p['speedup']:.2f}x"
    for name, v in res.get("d_cuda", {}).items():
        yield (
            f"(d) CUDA {name}, images/s",
            v["error"] if "error" in v else f"{v['images_per_s']:.0f}",
        )


def _projection_rows(res: dict[str, Any]):
    d = res["d_projection"]
    yield f"(d) rate reproduce trains at ({d['rate_used']}), images/s", f"{d['images_per_s']:.0f}"
    yield "(d) achieved TFLOP/s (3 x 0.542 GFLOP per image)", f"{d['achieved_tflops']:.3f}"
    yield "(d) Table 2 grid at this rate, hours", f"{d['grid_hours_at_measured_rate']:.1f}"
    yield "(d) ratio to the floor (1.9 h at 200 TFLOP/s)", f"{d['ratio_to_floor']:.2f}"
    for k, v in d["other_variants_grid_hours"].items():
        yield f"(d) grid hours if training ran {k}", f"{v:.2f}"


def _memory_rows(res: dict[str, Any]):
    memory = {
        "bench_process_peak_rss_gib": "(e) this process's peak RSS, GiB",
        "cifar_sized_run_peak_rss_gib": "(e) CIFAR-sized run's peak RSS, GiB (target <= 2)",
        "cuda_peak_gib": "(e) CUDA peak allocated, GiB",
    }
    for k, v in res["e_memory"].items():  # a failed measurement is its error text
        yield memory.get(k, f"(e) {k}"), f"{v:.2f}" if isinstance(v, float) else str(v)


# -------------------------------------------------------------------------------- packing
