"""`softmaso bench` reports every figure; its speed targets are checked by running it."""

import json

import torch

from softmaso.bench import measure, render


def test_bench_reports_every_figure_on_a_narrow_model():
    res = measure(
        torch.device("cpu"), quick=True, width=0.0625, cifar_sized=False, log=lambda m: None
    )
    assert res["a_step"]["softmaso_images_per_s"] > 0 and res["a_step"]["ratio"] > 0
    assert set(res["b_ortho"]) == {"none", "penalty", "exact", "exact_python_gs"}
    assert res["c_eval_images_per_s"] > 0 and res["e_memory"]["bench_process_peak_rss_gib"] > 0
    assert res["d_projection"]["ratio_to_floor"] > 0
    json.dumps(res)  # serialisable as written by --json
    assert render(res).row_count >= 10
