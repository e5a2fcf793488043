"""`softmaso bench` reports every figure; its speed targets are checked by running it."""

import json

import torch

from softmaso.bench import measure, render


def test_bench_reports_every_figure_on_a_narrow_model():
    res = measure(torch.device("cpu"), quick=True, width=0.0625, cifar_sized=False)
    assert res["a_step"]["softmaso_images_per_s"] > 0 and res["a_step"]["ratio"] > 0
    modes = {"none", "penalty", "exact", "exact_qr", "exact_python_gs", "so", "srip", "torch"}
    assert set(res["b_ortho"]) == modes
    assert res["a_bf16"]["images_per_s"] > 0 and res["a_bf16"]["speedup"] > 0
    for k in ("exact", "exact_qr"):  # full-width bounds in test_orthogonality; here, narrow
        ortho = res["b_orthonormality"][k]
        assert ortho["steps"] == 8 and 0 < ortho["max_error_non_square"] < 1e-5
        assert 0 < ortho["square_layer_error"] <= ortho["max_error"] < 1e-3
    assert res["c_eval_images_per_s"] > 0 and res["e_memory"]["bench_process_peak_rss_gib"] > 0
    assert res["d_projection"]["ratio_to_floor"] > 0
    assert res["d_packed"]["runs"] == 2 and res["d_packed"]["speedup"] > 0
    json.dumps(res)  # serialisable as written by --json
    assert render(res).row_count >= 10


def test_overheads_are_medians_of_per_round_ratios():
    from softmaso.bench import _overheads

    # the machine slows down 3x during round 3, after exact ran and before none ran: the
    # medians alone would say exact is 63% faster; four of five rounds say 10% slower
    times = {"none": [1.0, 1.0, 3.0, 3.0, 3.0], "exact": [1.1, 1.1, 1.1, 3.3, 3.3]}
    got = _overheads(times, "none")
    assert abs(got["exact"]["overhead"] - 0.1) < 1e-12 and got["none"]["overhead"] == 0.0
    assert got["exact"]["seconds_per_step"] == 1.1
    low, high = got["exact"]["overhead_range"]
    assert abs(low - (1.1 / 3.0 - 1)) < 1e-12 and abs(high - 0.1) < 1e-12


def test_projection_uses_the_rate_reproduce_would_train_at():
    from softmaso.bench import GRID_IMAGES, _projection

    res = {
        "a_step": {"softmaso_images_per_s": 10_000.0},
        "d_packed": {"speedup": 4.0, "packed_images_per_s": 80_000.0},
        "d_cuda": {"captured_b50": {"images_per_s": 40_000.0}, "bf16_b50": {"error": "x"}},
        "a_compiled": {"images_per_s": 30_000.0, "speedup": 3.0, "compile_seconds": 40.0},
        "d_packed_compiled": {"runs": 30, "speedup": 2.0, "packed_images_per_s": 90_000.0},
        "d_packed_bf16": {"error": "x"},
        "d_processes": {"processes=2": 50_000.0, "processes=4": 70_000.0},
    }
    d = _projection(res)  # on CUDA: the fastest fill, compiled, as a grid measures it
    assert d["rate_used"].startswith("pack of 30") and d["images_per_s"] == 90_000.0
    assert d["grid_hours_at_measured_rate"] == GRID_IMAGES / 90_000 / 3600
    others = d["other_variants_grid_hours"]
    assert set(others) == {"captured_b50", "compiled_b50", "packed_compiled"}  # no errors
    assert others["packed_compiled"] == GRID_IMAGES / 90_000 / 3600
    res["d_processes"]["processes=4"] = 100_000.0
    assert _projection(res)["rate_used"].startswith("processes of 4")
    res["d_processes"] = {"processes=2": 0.0, "processes=4": 0.0}  # they ran out of memory
    res["d_packed_compiled"] = {"error": "x"}
    assert _projection(res)["images_per_s"] == 30_000.0  # one compiled run at a time
    for key in ("d_cuda", "d_processes", "d_packed_compiled"):  # a CPU: one eager run
        res.pop(key)
    assert _projection(res)["images_per_s"] == 10_000.0


def test_cuda_figures_report_a_failed_capture_and_measure_the_rest(monkeypatch):
    """The CUDA-only figures, driven on the CPU: one variant failing does not lose the others."""
    import softmaso.bench as bench

    def no_capture(s):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(bench, "_captured_step", no_capture)
    monkeypatch.setattr(bench.fill, "process_rate", lambda jobs, device: 100.0 * len(jobs))
    dev = torch.device("cpu")
    base = bench._setup(dev, width=0.0625)
    cfgs = [bench._config(width=0.0625).with_overrides(seed=i) for i in range(2)]
    out = bench._cuda_extras(dev, base, cfgs, 0.0625, steps=1, repeats=1)
    cuda = out["d_cuda"]
    assert cuda["captured_b50"] == {
        "error": "RuntimeError: operation not permitted when stream is capturing"
    }
    assert {k: v["batch"] for k, v in cuda.items() if "batch" in v} == {
        "eager_b50": 50,
        "eager_b100": 100,
        "bf16_b50": 50,
    }
    assert all(v["images_per_s"] > 0 for v in cuda.values() if "batch" in v)
    for key in ("d_packed_bf16", "d_packed_compiled"):
        assert out[key]["runs"] == 2 and out[key]["speedup"] > 0, out[key]
    assert out["d_processes"] == {"processes=2": 200.0}  # 4 processes: more than its 2 runs
    assert set(
        bench._projection({"a_step": {"softmaso_images_per_s": 1.0}, **out})[
            "other_variants_grid_hours"
        ]
    ) == {"eager_b50", "eager_b100", "bf16_b50", "packed_bf16", "packed_compiled"}


def test_compiled_step_is_measured_against_eager():
    from softmaso.bench import _compiled_speedup, _setup

    dev = torch.device("cpu")
    got = _compiled_speedup(dev, _setup(dev, width=0.0625), 0.0625, steps=1, repeats=1)
    assert got["images_per_s"] > 0 and got["speedup"] > 0 and got["compile_seconds"] > 0
    res = {"a_step": {"softmaso_images_per_s": 1.0, "plain_images_per_s": 1.0, "ratio": 1.0}}
    assert "(a) train.compile speed-up over eager" in _rows(res, got)


def _rows(res, compiled):
    """The labels render() gives the (a) rows (the rest of the table left out)."""
    from softmaso.bench import render

    full = {
        **res,
        "a_compiled": compiled,
        "b_ortho": {},
        "c_eval_images_per_s": 1.0,
        "d_projection": {
            "rate_used": "x",
            "images_per_s": 1.0,
            "achieved_tflops": 1.0,
            "grid_hours_at_measured_rate": 1.0,
            "ratio_to_floor": 1.0,
            "other_variants_grid_hours": {},
        },
        "e_memory": {},
        "device": {"device": {"name": "cpu"}},
        "date": "today",
    }
    return list(render(full).columns[0].cells)


def test_bench_notices_another_process_using_the_cpu(caplog):
    import os
    import subprocess
    import sys

    from softmaso.bench import _busy

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = _busy(seconds=0.5)
    finally:
        spinner.kill()
    assert busy is not None and busy >= 0.8 / os.cpu_count()  # one of the CPUs, at least
    said = [r.getMessage() for r in caplog.records if r.name == "softmaso.bench"]
    assert (busy > 0.25) == bool(said) and all("noisy" in s for s in said)
