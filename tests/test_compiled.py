"""train.compile: the compiled training forward equals the eager one and is compiled once per
model structure, not once per run.

Equality is checked in float64, where compiled and eager kernels agree to ~1e-14; in float32
they differ by rounding (enough to flip a ReLU whose input is within rounding of 0).
"""

import pytest
import torch
from test_training import _rows, tiny
from torch._dynamo.utils import counters

from softmaso import packed_training, training
from softmaso.compiled import CompiledForward
from softmaso.data import Preprocessor, load_data


def _float64_setup(cfg):
    """training.build's setup, moved to float64 (data preprocessed to float64 too)."""
    s = training.build(cfg, torch.device("cpu"))
    s.model.double()  # replaces the buffers: the forward must be made afterwards
    prep = s.preprocess
    s.preprocess = lambda x: prep(x).double()
    s.forward = training.make_forward(s.model, s.device, s.cfg.train)
    return s


def _steps(s, n=3):
    losses = [training.train_step(s, idx)[0] for idx in s.sampler.epoch(0)[:n]]
    return torch.stack(losses), s.model.state_dict()


def _close(a, b, tol=1e-12):
    scale = b.abs().max().clamp_min(1e-30)
    return ((a - b).abs().max() / scale).item() < tol


@pytest.mark.parametrize("ortho", ["exact", "penalty"])
def test_compiled_steps_equal_eager_steps_in_float64(ortho):
    """Three Adam steps from one init: losses, weights, batch-norm statistics and Adam moments
    all match, so the compiled graph reads and updates the run's own tensors.

    Losses agree to 1e-15. Weights to 1e-9 only: Adam's step lr * g / (|g| + eps) turns an
    error e in a gradient entry near eps = 1e-8 into lr * e / (4 eps), ~1e5 e (observed 1.5e-10
    after three steps, on the square 1x1 layer under exact).
    """
    cfg = tiny(**{"ortho.mode": ortho, "model.width": 0.0625})
    eager = _float64_setup(cfg)
    compiled = _float64_setup(cfg.with_overrides(**{"train.compile": True}))
    assert isinstance(compiled.forward, CompiledForward)
    breaks = sum(counters["graph_break"].values())
    got_loss, got = _steps(compiled)
    assert sum(counters["graph_break"].values()) == breaks  # one graph: nothing falls to eager
    want_loss, want = _steps(eager)
    assert _close(got_loss, want_loss)
    assert got.keys() == want.keys()
    for key in want:  # running means and variances included, counts exactly
        assert _close(got[key].double(), want[key].double(), 1e-9), key
    for p, q in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        got_m, want_m = compiled.optimizer.state[p]["exp_avg"], eager.optimizer.state[q]["exp_avg"]
        assert _close(got_m, want_m, 1e-9)


def test_a_new_run_of_the_same_shape_is_not_compiled_again():
    """parametrize gives each run's convs a class of their own; the template keeps the graph."""
    cfg = tiny(**{"ortho.mode": "exact", "model.width": 0.0625, "train.compile": True})
    first = training.build(cfg, torch.device("cpu"))
    training.train_step(first, first.sampler.epoch(0)[0])
    graphs = counters["stats"]["unique_graphs"]
    second = training.build(cfg.with_overrides(seed=1), torch.device("cpu"))
    assert type(second.model.features[0][0]) is not type(first.model.features[0][0])
    training.train_step(second, second.sampler.epoch(0)[0])
    assert counters["stats"]["unique_graphs"] == graphs
    wider = training.build(cfg.with_overrides(**{"model.width": 0.125}), torch.device("cpu"))
    training.train_step(wider, wider.sampler.epoch(0)[0])
    assert counters["stats"]["unique_graphs"] > graphs  # another shape: compiled anew


def test_compiled_forward_refuses_eval_mode():
    cfg = tiny(**{"model.width": 0.0625, "train.compile": True})
    s = training.build(cfg, torch.device("cpu"))
    s.model.eval()
    with pytest.raises(RuntimeError, match="training steps"):
        training.train_step(s, s.sampler.epoch(0)[0])


def test_compiled_run_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny(**{"train.compile": True})
    straight = training.fit(cfg, tmp_path / "straight", device="cpu", live=False)
    assert straight["status"] == "finished" and straight["final_test_acc"] > 0.3  # chance: 0.1
    real = training.evaluate

    def interrupting(s, split="test"):
        if len(list((tmp_path / "r").glob("*.pt"))):  # after the first checkpoint
            raise KeyboardInterrupt
        return real(s, split)

    monkeypatch.setattr(training, "evaluate", interrupting)
    with pytest.raises(KeyboardInterrupt):
        training.fit(cfg, tmp_path / "r", device="cpu", live=False)
    monkeypatch.setattr(training, "evaluate", real)
    training.fit(cfg, tmp_path / "r", device="cpu", live=False)
    assert _rows(tmp_path / "r") == _rows(tmp_path / "straight")


def test_compiled_pack_equals_eager_pack_in_float64():
    from test_packed_training import _trio

    cfgs = _trio(**{"model.width": 0.0625, "data.subset": 200})
    data = load_data(cfgs[0].data).to("cpu")
    prep = Preprocessor(cfgs[0].data.preprocess, data.x_train)

    def run(compile_):
        cs = [c.with_overrides(**{"train.compile": compile_}) for c in cfgs]
        pack = packed_training.new_pack(cs, data, torch.device("cpu"))
        pack.model.double()
        pack.forward = (
            CompiledForward(pack.model, torch.device("cpu"), packed_training.packed_outputs)
            if compile_
            else lambda x, ys: packed_training.packed_outputs(pack.model(x), ys)
        )
        idx = torch.stack([s.epoch(0)[0] for s in pack.samplers])  # (P, B)
        dprep = lambda x: prep(x).double()  # noqa: E731
        outs = [packed_training.train_step_packed(pack, data, dprep, idx, None)]
        outs.append(packed_training.train_step_packed(pack, data, dprep, idx, None))
        return outs, pack.model.state_dict()

    (got_steps, got), (want_steps, want) = run(True), run(False)
    for (gl, gc), (wl, wc) in zip(got_steps, want_steps, strict=True):
        assert _close(gl, wl) and torch.equal(gc, wc)
    for key in want:  # after two Adam steps: see the first test
        assert _close(got[key].double(), want[key].double(), 1e-9), key


def test_on_cuda_a_grid_of_runs_keeps_its_cuda_graphs():
    """Each run re-records the graphs once (its tensors are new static inputs); inductor's
    default limit of 128 re-recordings would silently drop CUDA graphs midway through a grid.
    Made on the CPU: the constructor touches no GPU."""
    from torch._inductor import config as inductor

    s = training.build(tiny(**{"model.width": 0.0625}), torch.device("cpu"))
    CompiledForward(s.model, torch.device("cuda"))
    assert inductor.triton.cudagraph_unexpected_rerecord_limit >= 10_000
    assert all(
        getattr(t, "_dynamo_static_input_type", None) == "unguarded"
        for t in [*s.model.parameters(), *s.model.buffers()]
    )


@pytest.mark.parametrize("method", ["qr", "cholesky"])
def test_float32_orthonormalise_compiles_where_eager_uses_onednn(method):
    """At full-width sizes eager float32 takes oneDNN's op (orthogonality.matmul_nt), which
    inductor cannot lower for a weight that is not a constant: compiled, it must use matmul."""
    from softmaso.orthogonality import orthonormalise

    w = torch.randn(96, 96, 3, 3, generator=torch.Generator().manual_seed(0))
    dq = torch.randn(96, 96, 3, 3, generator=torch.Generator().manual_seed(1))
    outs = []
    for fn in (orthonormalise, torch.compile(orthonormalise, fullgraph=True)):
        x = w.clone().requires_grad_()
        q = fn(x, method)
        (grad,) = torch.autograd.grad(q, x, dq)
        outs.append((q, grad))
    (q_eager, g_eager), (q_comp, g_comp) = outs
    assert (q_comp - q_eager).abs().max() < 1e-5
    assert (g_comp - g_eager).abs().max() < 1e-4 * g_eager.abs().max()
