"""train.compile: the compiled training forward equals the eager one and is compiled once per
model structure, not once per run.

Equality is checked in float64, where compiled and eager kernels agree to ~1e-14; in float32
they differ by rounding (enough to flip a ReLU whose input is within rounding of 0).
"""

import pytest
import torch
from conftest import metric_rows, tiny
from torch._dynamo.utils import counters

from softmaso import packed_training, training
from softmaso.compiled import CompiledForward
from softmaso.data import Preprocessor, load_data
from softmaso.packing import PackedAdam


def _float64_setup(cfg):
    """training.build's setup, moved to float64 (data preprocessed to float64 too)."""
    s = training.build(cfg, torch.device("cpu"))
    s.model.double()  # replaces the buffers: the forward must be made afterwards
    prep = s.preprocess
    s.preprocess = lambda x: prep(x).double()
    s.forward = training.run_forward(s.model, s.device, s.cfg, s.preprocess)
    return s


def _close(a, b, tol=1e-12):
    scale = b.abs().max().clamp_min(1e-30)
    return ((a - b).abs().max() / scale).item() < tol


def _max_diff(a, b) -> float:
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b, strict=True))


def _max_abs(a) -> float:
    return max(x.detach().abs().max().item() for x in a)


U = 2.0**-53  # float64 unit roundoff


@pytest.mark.parametrize("ortho", ["exact", "penalty"])
def test_compiled_steps_equal_eager_steps_in_float64(ortho):
    """Three Adam steps from one init: losses, gradients, weights, batch-norm statistics and
    Adam moments match, so the compiled graph reads and updates the run's own tensors.

    Every tolerance comes from float64 arithmetic, not from one CPU's rounding (kernels
    differ across CPUs: AVX2 and AVX-512 sum in different orders):
    - a weight gradient sums n = B * H * W products (51,200 here); two summation orders
      differ by at most ~n * u of the summands' size (u = 2^-53): tolerance 4 n u max|g|.
    - Adam's step lr * m / (sqrt(v) + eps) moves by at most ~2 lr |dg| / eps for a gradient
      error dg (the worst case, an entry near eps; 1e5 dg here): the weights may differ by
      the sum over steps of 2 lr max|dg| / eps, with the gradient errors measured so far.
    - m is an average of gradients, so it differs by at most the largest gradient error.
    - batch-norm statistics after the first step come from identical weights: 4 n u.
    """
    cfg = tiny(**{"ortho.mode": ortho, "model.width": 0.0625})
    eager = _float64_setup(cfg)
    compiled = _float64_setup(cfg.with_overrides(**{"train.compile": True}))
    assert isinstance(compiled.forward, CompiledForward)
    lr, adam_eps = cfg.optim.lr, eager.optimizer.defaults["eps"]
    n = cfg.optim.batch_size * 32 * 32  # summands of a conv weight-gradient entry
    got_p, want_p = list(compiled.model.parameters()), list(eager.model.parameters())
    breaks = sum(counters["graph_break"].values())
    grad_err = weight_tol = 0.0
    for step, idx in enumerate(eager.sampler.epoch(0)[:3]):
        got_loss = training.train_step(compiled, idx)[0]
        want_loss = training.train_step(eager, idx)[0]
        assert _close(got_loss, want_loss)
        g_diff = _max_diff([p.grad for p in got_p], [q.grad for q in want_p])
        assert g_diff <= 4 * n * U * _max_abs(q.grad for q in want_p), (step, g_diff)
        grad_err = max(grad_err, g_diff)
        weight_tol += 2 * lr * grad_err / adam_eps + 4 * U * _max_abs(want_p)
        assert _max_diff(got_p, want_p) <= weight_tol, (step, _max_diff(got_p, want_p))
        moments = [
            (compiled.optimizer.state[p], eager.optimizer.state[q])
            for p, q in zip(got_p, want_p, strict=True)
        ]
        m_diff = _max_diff([a["exp_avg"] for a, _ in moments], [b["exp_avg"] for _, b in moments])
        assert m_diff <= grad_err + 4 * U * _max_abs(b["exp_avg"] for _, b in moments)
        if step == 0:
            got, want = dict(compiled.model.named_buffers()), dict(eager.model.named_buffers())
            for key in want:  # running means and variances
                assert _close(got[key].double(), want[key].double(), 4 * n * U), key
    assert sum(counters["graph_break"].values()) == breaks  # one graph: nothing falls to eager
    got, want = compiled.model.state_dict(), eager.model.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        if not want[key].is_floating_point():  # batch counts exactly
            assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize(
    "ortho, data",
    [
        ("exact", {}),
        ("penalty", {}),
        ("none", {"data.preprocess": "per_channel"}),
        ("none", {"data.preprocess": "scale", "data.augment": True}),
    ],
)
def test_a_new_run_of_the_same_shape_is_not_compiled_again(ortho, data):
    """parametrize gives each run's convs a class of their own; the template keeps the graph;
    the penalty's names, term and weight are plain values, the same for every run; so is
    each preprocessing mode, in the compiled region or (augmented) before it."""
    cfg = tiny(**{"ortho.mode": ortho, "model.width": 0.0625, "train.compile": True, **data})
    first = training.build(cfg, torch.device("cpu"))
    training.train_step(first, first.sampler.epoch(0)[0], torch.Generator().manual_seed(0))
    graphs = counters["stats"]["unique_graphs"]
    second = training.build(
        cfg.with_overrides(**{"seed": 1, "ortho.weight": 0.5}), torch.device("cpu")
    )
    if ortho == "exact":
        assert type(second.model.features[0][0]) is not type(first.model.features[0][0])
    training.train_step(second, second.sampler.epoch(0)[0], torch.Generator().manual_seed(0))
    assert counters["stats"]["unique_graphs"] == graphs
    wider = training.build(cfg.with_overrides(**{"model.width": 0.125}), torch.device("cpu"))
    training.train_step(wider, wider.sampler.epoch(0)[0], torch.Generator().manual_seed(0))
    assert counters["stats"]["unique_graphs"] > graphs  # another shape: compiled anew


def test_compiled_forward_refuses_eval_mode():
    cfg = tiny(**{"model.width": 0.0625, "train.compile": True})
    s = training.build(cfg, torch.device("cpu"))
    s.model.eval()
    with pytest.raises(RuntimeError, match="training steps"):
        training.train_step(s, s.sampler.epoch(0)[0])


def test_compiled_run_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny(**{"train.compile": True})
    straight = training.fit(cfg, tmp_path / "straight", device="cpu")
    assert straight["status"] == "finished" and straight["final_test_acc"] > 0.3  # chance: 0.1
    real = training.evaluate

    def interrupting(s, split="test"):
        if len(list((tmp_path / "r").glob("*.pt"))):  # after the first checkpoint
            raise KeyboardInterrupt
        return real(s, split)

    monkeypatch.setattr(training, "evaluate", interrupting)
    with pytest.raises(KeyboardInterrupt):
        training.fit(cfg, tmp_path / "r", device="cpu")
    monkeypatch.setattr(training, "evaluate", real)
    training.fit(cfg, tmp_path / "r", device="cpu")
    assert metric_rows(tmp_path / "r") == metric_rows(tmp_path / "straight")


def test_compiled_pack_equals_eager_pack_in_float64():
    """Penalty inside the compiled forward (as a pack trains with train.compile) against the
    eager pack, whose penalty is added after its forward."""
    from conftest import pack_trio

    from softmaso.packing import packed_penalty

    cfgs = pack_trio(**{"model.width": 0.0625, "data.subset": 200})
    data = load_data(cfgs[0].data).to("cpu")
    prep = Preprocessor(cfgs[0].data.preprocess, data.x_train)

    def run(compile_):
        cs = [c.with_overrides(**{"train.compile": compile_}) for c in cfgs]
        pack = packed_training.new_pack(cs, data, torch.device("cpu"))
        pack.model.double()  # new tensors: the optimiser's views of them must be made afterwards
        lrs, wds = [c.optim.lr for c in cs], [c.optim.weight_decay for c in cs]
        pack.optimizer = PackedAdam(pack.model, lr=lrs, weight_decay=wds, foreach=True)
        inside = packed_penalty(pack.model, pack.penalty)
        assert inside is not None  # pack_trio has a penalty run
        pack.forward = (
            CompiledForward(
                pack.model, torch.device("cpu"), packed_training.packed_outputs, penalty=inside
            )
            if compile_
            else lambda x, ys: packed_training.packed_outputs(pack.model(x), ys)
        )
        idx = torch.stack([s.epoch(0)[0] for s in pack.samplers])  # (P, B)
        dprep = lambda x: prep(x).double()  # noqa: E731
        steps = []
        for _ in range(2):
            out = packed_training.train_step_packed(pack, data, dprep, idx, None)
            steps.append((out, [p.grad.clone() for p in pack.model.parameters()]))
        return steps, list(pack.model.parameters()), pack.model.state_dict()

    (got_steps, got_p, got), (want_steps, want_p, want) = run(True), run(False)
    grad_err = weight_tol = 0.0
    n = cfgs[0].optim.batch_size * 32 * 32
    for ((gl, gc), g_grads), ((wl, wc), w_grads) in zip(got_steps, want_steps, strict=True):
        assert _close(gl, wl) and torch.equal(gc, wc)
        grad_err = max(grad_err, _max_diff(g_grads, w_grads))
        assert grad_err <= 4 * n * U * _max_abs(w_grads)
        weight_tol += 2 * max(c.optim.lr for c in cfgs) * grad_err / 1e-8 + 4 * U
    # the bounds of the first test (Adam's eps 1e-8; weights of order 1)
    assert _max_diff(got_p, want_p) <= weight_tol * max(1.0, _max_abs(want_p))
    for key in want:
        if not want[key].is_floating_point():
            assert torch.equal(got[key], want[key]), key


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
def test_float32_orthonormalise_compiles_whole_and_matches_eager(method):
    """The exact parametrisation's forward and hand-written backward at a full-width layer's
    size compile as one graph (fullgraph) and give eager's values to float32 rounding."""
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


def test_learned_values_do_not_change_the_compile_key():
    """A resumed swish run (other learned etas) must find its compiled graph again."""
    from softmaso.compiled import template_for
    from softmaso.nn import swish

    a, b = swish(4), swish(4)
    with torch.no_grad():
        b.beta.p.add_(1.0)
    assert template_for(a) is template_for(b)


@pytest.mark.parametrize("mode", ["penalty", "so"])
def test_the_penalty_is_computed_inside_the_compiled_step(mode):
    """With train.compile, the compiled forward returns the penalty's term (its forward and
    backward in the compiled graph, no graph break), equal to the eager ortho_loss of the
    run's convs once weighted; the step then computes nothing of it outside."""
    from softmaso.orthogonality import ortho_loss

    cfg = tiny(**{"ortho.mode": mode, "ortho.weight": 0.3, "model.width": 0.0625})
    s = _float64_setup(cfg.with_overrides(**{"train.compile": True}))
    breaks = sum(counters["graph_break"].values())
    loss, correct, term = s.forward(s.data.x_train[:50], s.data.y_train[:50])  # pixels in
    assert sum(counters["graph_break"].values()) == breaks
    assert _close(0.3 * term, ortho_loss(s.convs, cfg.ortho))
    (grad,) = torch.autograd.grad(term, [s.convs[1].weight])
    (want,) = torch.autograd.grad(ortho_loss(s.convs, cfg.ortho), [s.convs[1].weight])
    assert _close(0.3 * grad, want)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(
    "ortho", [{"ortho.mode": "srip"}, {"ortho.mode": "penalty", "ortho.apodize": True}]
)
def test_penalties_not_computed_in_the_forward_are_added_by_the_step(ortho, compiled):
    """srip (its start vector is drawn outside any graph) and apodised filters (computed
    weights, not parameters) take ortho_loss in the step, eager or compiled: the step's
    gradient is that of the loss plus the penalty (float64)."""
    from softmaso.orthogonality import ortho_loss

    cfg = tiny(**{**ortho, "model.width": 0.0625, "train.compile": compiled})
    s = _float64_setup(cfg)
    idx = s.sampler.epoch(0)[0]
    pixels, y = s.data.x_train[idx], s.data.y_train[idx]
    assert len(s.forward(pixels, y)) == 2  # no penalty from the forward
    params = list(s.model.parameters())
    x = training.to_input(s.preprocess, pixels)
    want_loss = training.single_outputs(s.model(x), y)[0] + ortho_loss(s.convs, cfg.ortho)
    want = torch.autograd.grad(want_loss, params)
    training.train_step(s, idx)
    for p, g in zip(params, want, strict=True):
        assert _close(p.grad, g, 1e-10)
