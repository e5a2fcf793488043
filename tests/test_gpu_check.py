"""benchmarks/gpu_check.py, the one-call GPU check, dry-run on the CPU at tiny sizes."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
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
