"""The benchmark scripts dry-run on the CPU at tiny sizes: benchmarks/gpu_check.py, the
one-call GPU check, and benchmarks/checkpoint_writes.py."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str = "gpu_check"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_dry_runs_on_a_cpu(tmp_path):
    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--width", "0.0625", "--small", "--skip", "compiled"]
    assert _module().main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["compiled"]["status"] == "SKIPPED"
    checks = ("eager_sync_free", "packed_vs_separate", "table2_shape", "pack_layout")
    for name in (*checks, "reproduce_smoke"):
        assert report[name]["status"] == "OK", report[name]
    assert report["packed_vs_separate"]["max_relative_loss_difference"] < 1e-4
    assert report["table2_shape"]["checkpoints"] == 2
    layouts = report["pack_layout"]
    assert layouts["nhwc_images_per_s"] > 0 and layouts["nchw_images_per_s"] > 0


def test_checkpoint_writes_measures_a_small_pack():
    import torch

    out = _module("checkpoint_writes").measure(2, 0.0625, torch.device("cpu"), rounds=2)
    assert len(out["blocking_s"]) == len(out["background_s"]) == 2
    assert out["bytes_per_run"] > 0 and out["runs"] == 2
