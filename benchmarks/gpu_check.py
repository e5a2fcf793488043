"""One call that checks softmaso's CUDA paths on a GPU machine; each check OK or FAIL, JSON out.

    python benchmarks/gpu_check.py --device cuda --out gpu-check.json        # ~6 min on an H100
    python benchmarks/gpu_check.py --device cpu --width 0.0625 --small        # the dry run (a test)

Checks, each timed and guarded (a failure is reported and the next check runs):
  eager_sync_free     the eager step of none, penalty and exact under
                      torch.cuda.set_sync_debug_mode("error"): no host synchronisation
  packed_vs_separate  3 runs packed against the same runs stepped apart, TF32 off: the largest
                      relative difference of their losses after a few steps
  table2_shape        a pack of 30 runs (2 in --small) at --width on a CIFAR-sized synthetic set
                      (--small: 500 images), one epoch with evaluation and checkpoints: time and
                      peak memory
  pack_layout         training images/s of a 30-run pack (2 in --small) at --width in
                      channels_last (the default) and in NCHW (cuDNN's grouped kernels)
  compiled            train.compile steps of none, exact and a pack, with inductor's count of
                      CUDA-graph skips (skipped with --skip compiled)
  reproduce_smoke     `softmaso reproduce table2 --smoke --runs 1` with default flags, in a
                      fresh process (--small: one dataset, one narrow epoch)
On a machine with torch but no network, carry the wheels softmaso needs beside torch
(`make gpu-wheels` puts them in .whl/), `pip install --no-index --no-deps --target /tmp/site
.whl/*.whl`, and run with PYTHONPATH=/tmp/site:$PWD (as benchmarks/gpu-check.sh does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from softmaso import devices, runs, training
from softmaso.config import RunConfig
from softmaso.packed_training import fit_packed, new_pack, train_step_packed
from softmaso.timing import sync


def config(width: float, images: int, **over) -> RunConfig:
    cfg = RunConfig.model_validate(
        {
            "recipe": "gpu-check",
            "data": {"name": "synthetic", "synthetic_train": images},
            "model": {"width": width},
            "optim": {"batch_size": 50},
            "train": {"epochs": 1, "eval_batch_size": 500},
        }
    )
    return cfg.with_overrides(**over) if over else cfg


def eager_sync_free(device: torch.device, width: float, small: bool) -> dict:
    """Two steps of each mode; on CUDA any host synchronisation raises."""
    out = {}
    for mode in ("none", "penalty", "exact"):
        s = training.build(config(width, 500, **{"ortho.mode": mode}), device)
        batches = s.sampler.epoch(0)
        training.train_step(s, batches[0])  # warm-up (allocations, cuBLAS handles)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            for idx in batches[1:3]:
                training.train_step(s, idx)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        sync(device)
        out[mode] = "no host sync" if device.type == "cuda" else "ran (sync check is CUDA-only)"
    return out


def packed_vs_separate(device: torch.device, width: float, small: bool) -> dict:
    """Losses of 3 runs packed and apart over 4 steps, TF32 off; the largest relative gap."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cfgs = [
            config(width, 500, seed=i, **{"ortho.mode": m})
            for i, m in enumerate(("none", "penalty", "none"))
        ]
        alone = [training.build(c, device) for c in cfgs]
        data = alone[0].data
        pack = new_pack(cfgs, data, device)
        batches = torch.stack([s.sampler.epoch(0) for s in alone], dim=1)[:4]  # (4, P, B)
        worst = 0.0
        for idx in batches:
            apart = torch.stack([training.train_step(s, idx[p])[0] for p, s in enumerate(alone)])
            packed, _ = train_step_packed(pack, data, alone[0].preprocess, idx, [None] * 3)
            gap = ((packed - apart).abs() / apart.abs().clamp_min(1e-12)).max().item()
            worst = max(worst, gap)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    return {"max_relative_loss_difference": worst, "ok": worst < 1e-4}


def table2_shape(device: torch.device, width: float, small: bool) -> dict:
    """One epoch of a pack (Table 2's 30 runs of a dataset) with evaluation and checkpoints."""
    n, images = (2, 500) if small else (30, 50_000)
    cfgs = [config(width, images, seed=i, **{"optim.lr": 0.001}) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"run{i}" for i in range(n)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        results = fit_packed(cfgs, dirs, device=device, live=False, quiet=True)
        sync(device)
        seconds = time.perf_counter() - t0
        checkpoints = sum((d / runs.CHECKPOINT).is_file() for d in dirs)
    out = {
        "runs": n,
        "images": images,
        "seconds": seconds,
        "finished": sum(r["status"] == "finished" for r in results),
        "checkpoints": checkpoints,
    }
    if device.type == "cuda":
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    out["ok"] = out["finished"] == n == checkpoints
    return out


def pack_layout(device: torch.device, width: float, small: bool) -> dict:
    """Training images/s of one pack (30 runs; --small: 2) in channels_last and in NCHW."""
    from softmaso import packed_training

    n, steps = (2, 3) if small else (30, 20)
    cfgs = [config(width, 1000, seed=i) for i in range(n)]
    s = training.build(cfgs[0], device)
    batches = torch.stack([s.sampler.epoch(0)] * n, dim=1)  # (steps, P, B)
    out, default = {}, packed_training.PACK_LAYOUT
    try:
        for name, layout in (("nhwc", torch.channels_last), ("nchw", torch.contiguous_format)):
            packed_training.PACK_LAYOUT = layout
            pack = new_pack(cfgs, s.data, device)
            for i in range(steps + 3):
                if i == 3:  # after warm-up (cuDNN's autotuning)
                    sync(device)
                    t0 = time.perf_counter()
                idx = batches[i % len(batches)]
                train_step_packed(pack, s.data, s.preprocess, idx, [None] * n)
            sync(device)
            out[f"{name}_images_per_s"] = n * steps * 50 / (time.perf_counter() - t0)
            del pack
    finally:
        packed_training.PACK_LAYOUT = default
    out["nchw_over_nhwc"] = out["nchw_images_per_s"] / out["nhwc_images_per_s"]
    out["default"] = "nhwc" if default == torch.channels_last else "nchw"
    out["ok"] = True  # a measurement: > 1 says the default layout should become NCHW
    return out


def compiled(device: torch.device, width: float, small: bool) -> dict:
    """train.compile steps of none, exact and a 3-run pack; inductor's CUDA-graph skips."""
    from torch._dynamo.utils import counters

    out = {}
    for name, modes in (("none", ["none"]), ("exact", ["exact"]), ("pack", ["none"] * 3)):
        counters.clear()
        cfgs = [
            config(width, 500, seed=i, **{"ortho.mode": m, "train.compile": True})
            for i, m in enumerate(modes)
        ]
        t0 = time.perf_counter()
        if len(cfgs) == 1:
            s = training.build(cfgs[0], device)
            for idx in s.sampler.epoch(0)[:3]:
                training.train_step(s, idx)
        else:
            s = training.build(cfgs[0], device)
            pack = new_pack(cfgs, s.data, device)
            batches = torch.stack([s.sampler.epoch(0)] * len(cfgs), dim=1)[:3]
            for idx in batches:
                train_step_packed(pack, s.data, s.preprocess, idx, [None] * len(cfgs))
        sync(device)
        out[name] = {
            "seconds_with_compile": time.perf_counter() - t0,
            "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
        }
    out["ok"] = device.type != "cuda" or all(
        v["cudagraph_skips"] == 0 for v in out.values() if isinstance(v, dict)
    )
    return out


def reproduce_smoke(device: torch.device, width: float, small: bool) -> dict:
    """`softmaso reproduce table2 --smoke --runs 1` in a fresh process, default flags."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "softmaso", "reproduce", "table2", "--smoke", "--runs", "1"]
        cmd += ["--results", str(Path(tmp) / "t2")]
        if small:  # one dataset's 6 runs, one epoch each
            cmd += ["--datasets", "svhn", "--set", "train.epochs=1", "--set", "model.width=0.0625"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        table = Path(tmp) / "t2" / "table.md"
        return {
            "exit_code": p.returncode,
            "seconds": time.perf_counter() - t0,
            "table": table.is_file(),
            "stderr_tail": p.stderr[-400:],
            "ok": p.returncode == 0 and table.is_file(),
        }


CHECKS = {
    "eager_sync_free": eager_sync_free,
    "packed_vs_separate": packed_vs_separate,
    "table2_shape": table2_shape,
    "pack_layout": pack_layout,
    "compiled": compiled,
    "reproduce_smoke": reproduce_smoke,
}


def run(device: torch.device, width: float, small: bool, skip: set[str]) -> dict:
    report = {
        "device": runs.environment(device),
        "width": width,
        "small": small,
        "date": runs.now(),
    }
    report["device"].pop("argv", None)
    for name, check in CHECKS.items():
        if name in skip:
            report[name] = {"status": "SKIPPED"}
            continue
        t0 = time.perf_counter()
        try:
            got = check(device, width, small)
            status = "OK" if got.pop("ok", True) else "FAIL"
        except Exception as e:  # a failed check is a finding; the next one still runs
            got = {
                "error": f"{type(e).__name__}: {e}".splitlines()[0],
                "trace": traceback.format_exc()[-1500:],
            }
            status = "FAIL"
        report[name] = {"status": status, "seconds": time.perf_counter() - t0, **got}
        print(
            f"{name:20s} {status:4s} {report[name]['seconds']:7.1f} s", file=sys.stderr, flush=True
        )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--small", action="store_true", help="tiny sizes: the CPU dry run")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip")
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = ap.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(CHECKS)
    if unknown:
        ap.error(f"--skip {sorted(unknown)}: not checks; they are {', '.join(CHECKS)}")
    device = devices.resolve_device(args.device)
    report = run(device, args.width, args.small, skip)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [k for k, v in report.items() if isinstance(v, dict) and v.get("status") == "FAIL"]
    print(
        f"wrote {args.out}; {'FAILED: ' + ', '.join(failed) if failed else 'all OK'}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
