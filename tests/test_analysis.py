"""softmaso analyze: each statistic on hand-made layers whose answer is known, then the command."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import tiny

from softmaso import analysis, rundir, training
from softmaso.theory import absolute, relu
from softmaso.theory.gmm import factorial_joint_posterior, joint_map, region_prior

DT = torch.float64


def _orthonormal_rows(k: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=DT))
    return q.T  # (k, d), orthonormal rows


def test_orthogonal_filters_factorise_and_fire_independently():
    w = _orthonormal_rows(6, 16)
    layer = analysis.Folded(w, torch.zeros(6, dtype=DT))
    x = torch.randn(20_000, 16, generator=torch.Generator().manual_seed(1), dtype=DT)
    stats = analysis.layer_statistics(x @ w.T, layer, relu())
    assert stats["cross_ratio"] < 1e-12 and stats["joint_map_changes"] == 0.0
    assert stats["firing_correlation"] < 0.03  # independent Gaussians: |corr| ~ 1/sqrt(N)
    assert abs(stats["active_fraction"] - 0.5) < 0.02
    assert stats["dead_units"] == stats["constant_units"] == 0.0


def test_duplicated_filters_fire_together_and_do_not_factorise():
    w = _orthonormal_rows(1, 16).repeat(4, 1)  # four copies of one filter
    layer = analysis.Folded(w, torch.zeros(4, dtype=DT))
    x = torch.randn(5_000, 16, generator=torch.Generator().manual_seed(2), dtype=DT)
    stats = analysis.layer_statistics(x @ w.T, layer, relu())
    assert stats["firing_correlation"] == pytest.approx(1.0)
    assert stats["cross_ratio"] == pytest.approx(3.0)  # each active unit meets 3 equal ones
    assert stats["joint_map_changes"] > 0


def test_dead_and_constant_units_and_entropy_bounds():
    w = torch.eye(3, dtype=DT)
    layer = analysis.Folded(w, torch.zeros(3, dtype=DT))
    u = torch.stack([torch.full((100,), -5.0), torch.full((100,), 5.0), torch.randn(100)], 1)
    stats = analysis.layer_statistics(u.to(DT), layer, relu())
    assert stats["dead_units"] == pytest.approx(1 / 3)  # unit 0 never active
    assert stats["constant_units"] == pytest.approx(2 / 3)  # units 0 and 1 never change
    assert 0 < stats["svq_entropy"] < 1


def test_joint_objective_is_the_factorial_posterior_of_eq10():
    """Its exhaustive argmax is the exact joint MAP of (10) with the priors of Thm. 2."""
    g = torch.Generator().manual_seed(3)
    for spec in (relu(), absolute()):
        w, b = torch.randn(4, 5, generator=g, dtype=DT), torch.randn(4, generator=g, dtype=DT)
        a, c = torch.tensor(spec.slopes, dtype=DT), torch.tensor(spec.offsets, dtype=DT)
        A, B = a[None, :, None] * w[:, None, :], a * b[:, None] + c  # (K, R, D), (K, R)
        x = torch.randn(50, 5, generator=g, dtype=DT)
        exact = joint_map(factorial_joint_posterior(A, region_prior(A, B).log(), x))
        scores = (x @ w.T + b)[..., None] * a + c  # (N, K, R)
        configs = torch.tensor(list(itertools.product(range(spec.regions), repeat=4)))
        values = torch.stack(
            [
                analysis.joint_objective(scores, t.expand(50, 4), spec.slopes, w @ w.T)
                for t in configs
            ],
            1,
        )
        assert torch.equal(configs[values.argmax(1)], exact)
        found = analysis.coordinate_ascent(scores, spec.slopes, w @ w.T)
        start = analysis.joint_objective(scores, scores.argmax(2), spec.slopes, w @ w.T)
        assert (
            analysis.joint_objective(scores, found, spec.slopes, w @ w.T) >= start - 1e-12
        ).all()


def test_region_prior_is_thm2s():
    g = torch.Generator().manual_seed(4)
    w, b = torch.randn(5, 7, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT)
    a, c = torch.tensor(relu().slopes, dtype=DT), torch.tensor(relu().offsets, dtype=DT)
    A, B = a[None, :, None] * w[:, None, :], a * b[:, None] + c
    want = region_prior(A, B)[:, -1].mean().item()
    assert analysis.region_prior_last(analysis.Folded(w, b), relu()) == pytest.approx(want)


def test_folding_batch_norm_gives_the_pre_activations():
    conv, norm = torch.nn.Conv2d(3, 4, 3, bias=False).double(), torch.nn.BatchNorm2d(4).double()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)
    norm.eval()
    x = torch.randn(2, 3, 5, 5, dtype=DT)
    u = norm(conv(x))  # (2, 4, 3, 3)
    f = analysis.fold(conv, norm)
    patches = torch.nn.functional.unfold(x, 3)  # (2, 27, 9)
    assert torch.allclose(
        torch.einsum("kd,ndp->nkp", f.weight, patches) + f.bias[:, None], u.flatten(2)
    )


def test_analyze_a_trained_run_and_a_folder_through_the_cli(cli, tmp_path):
    run = tmp_path / "res" / "one"
    assert training.fit(tiny(**{"train.epochs": 1}), run, device="cpu")["status"] == "finished"
    r = cli("analyze", run, "--images", 40, "--decisions", 500, "--threads", 1)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "res" / "analysis" / "one" / "analysis.md").read_text()  # beside the run
    assert "#### cross_ratio" in text and "conv8" in text
    r = cli("analyze", tmp_path / "res", "--images", 40, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    csv = (tmp_path / "out" / "analysis.csv").read_text().splitlines()
    assert (
        len(csv) == 1 + 8 and (tmp_path / "out" / "figures" / "analysis_cross_ratio.png").exists()
    )
    header, first = csv[0].split(","), dict(zip(csv[0].split(","), csv[1].split(","), strict=True))
    assert first["learned_beta"] == "" and "learned_beta" not in text  # ReLU learns no beta
    assert all(math.isfinite(float(first[k])) for k in header[header.index("active_fraction") : -1])


def test_analyze_reports_learnt_betas(tmp_path):
    run = tmp_path / "swish"
    cfg = tiny(**{"train.epochs": 1, "model.activation": "swish"})
    assert training.fit(cfg, run, device="cpu")["status"] == "finished"
    rows = analysis.analyze_run(run, images=20, decisions=200)
    betas = [r["learned_beta"] for r in rows]
    assert all(0 < b < 1 for b in betas) and len(set(betas)) > 1


def test_analyze_bad_input_is_one_line(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("analyze", tmp_path / "empty")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    run = tmp_path / "other"
    assert training.fit(tiny(**{"train.epochs": 1}), run, device="cpu")["status"] == "finished"
    from safetensors.torch import save_file

    save_file({"classifier.weight": torch.zeros(3, 3, 1, 1)}, str(run / rundir.WEIGHTS))
    r = cli("analyze", run)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "largeCNN" in r.stderr
    config = run / rundir.CONFIG  # a hand-edited config that no longer validates
    config.write_text(config.read_text().replace("lr: 0.003", "lr: -3"))
    r = cli("analyze", run)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "config.yaml: key 'optim.lr'" in r.stderr


def test_analyze_of_a_folder_names_the_runs_it_cannot_read_and_does_the_rest(cli, tmp_path):
    for name in ("a", "b", "c"):
        cfg = tiny(seed=ord(name), **{"train.epochs": 1})
        assert training.fit(cfg, tmp_path / name, device="cpu")["status"] == "finished"
    (tmp_path / "b" / rundir.WEIGHTS).write_bytes(b"garbage, not safetensors")
    (tmp_path / "c" / rundir.WEIGHTS).unlink()  # a clone of committed results has no weights
    r = cli("analyze", tmp_path, "--images", 20, "--decisions", 200, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "not a readable safetensors file" in r.stderr and f"{tmp_path / 'c'}: no" in r.stderr
    text = (tmp_path / "out" / "analysis.md").read_text()
    assert "Not analysed (2):" in text
    assert len((tmp_path / "out" / "analysis.csv").read_text().splitlines()) == 1 + 8  # run a
    r = cli("analyze", tmp_path / "b")  # alone, a damaged run is the one-line error
    assert r.exit_code == 2 and "not a readable safetensors file" in r.stderr
