"""Packed multi-run training: P runs trained as one network equal P runs trained apart.

Everything in float64, where "equal" means within 1e-10 of each tensor's scale (observed:
~1e-14); the packed and separate kernels sum in different orders, so not bitwise.
"""

import pytest
import torch
import torch.nn.functional as F

from softmaso.config import ModelConfig, OrthoConfig, TrainConfig
from softmaso.models import build_model
from softmaso.orthogonality import (
    Orthonormal,
    apply_orthogonality,
    layer_diagnostics,
    ortho_loss,
)
from softmaso.packed_training import packed_outputs
from softmaso.packing import (
    PackedAdam,
    PackedLargeCNN,
    PackedOrthonormal,
    apply_packed_orthogonality,
    pack_inputs,
    pack_state,
    packed_ortho_loss,
    penalty_weights,
    run_stack,
    unpack_state,
)
from softmaso.training import make_forward

RTOL = 1e-10
K, B, HW = 4, 6, 12  # classes, batch, image side (12: the valid 3x3 conv still sees 3x3)
NARROW = ModelConfig(width=0.125)  # 12 and 24 channels per run
NONE, EXACT = OrthoConfig(), OrthoConfig(mode="exact")
PENALTY = OrthoConfig(mode="penalty", weight=0.01)  # visible next to the CE at this width


# Exact mode, square 1x1 layer: the last filter of a square W is fixed, up to sign, by the
# others, so its raw weights get zero true gradient; Adam turns the ~1e-16 rounding noise there
# into steps of ~lr * noise / eps, packed or not. Raw weights get this looser tolerance; the
# effective (orthonormal) weights, gradients and outputs the tight one.
RAW_RTOL = 1e-7


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL) -> None:
    """Equal up to rtol times the largest entry of `want` (integers: exactly)."""
    atol = rtol * want.abs().max().item() if want.is_floating_point() else 0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def _separate(cfg, orthos, *, in_channels=3):
    """One seeded LargeCNN (float64) and torch.optim.Adam per run, as training.build does."""
    models = []
    for p, ortho in enumerate(orthos):
        torch.manual_seed(100 + p)
        model = build_model(cfg, num_classes=K, in_channels=in_channels)
        apply_orthogonality(model.ortho_convs(), ortho)
        models.append(model.double())
    return models


def _adams(models, lrs, wds):
    return [
        torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd, foreach=True)
        for m, lr, wd in zip(models, lrs, wds, strict=True)
    ]


def _pack(cfg, models, orthos, lrs, wds, *, in_channels=3):
    packed = PackedLargeCNN(cfg, num_classes=K, runs=len(models), in_channels=in_channels)
    packed = packed.double()
    apply_packed_orthogonality(packed, orthos)
    opt = PackedAdam(packed, lr=lrs, weight_decay=wds, foreach=True)
    pack_state([{"model": m.state_dict()} for m in models], packed, opt)
    return packed, opt


def _batch(gen, runs, in_channels=3):
    """Each run's own batch: xs (P, B, C, H, W) float64, ys (P, B)."""
    xs = torch.randn(runs, B, in_channels, HW, HW, generator=gen, dtype=torch.float64)
    return xs, torch.randint(0, K, (runs, B), generator=gen)


def _separate_step(models, adams, orthos, xs, ys) -> torch.Tensor:
    """One training.py step per run; returns the (P,) cross-entropies."""
    losses = []
    for model, adam, ortho, x, y in zip(models, adams, orthos, xs, ys, strict=True):
        loss = F.cross_entropy(model(x), y)
        extra = ortho_loss(model.ortho_convs(), ortho)
        total = loss if extra is None else loss + extra
        adam.zero_grad(set_to_none=True)
        total.backward()
        adam.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _packed_step(packed, opt, weights, xs, ys) -> torch.Tensor:
    """The training forward of packed_training (make_forward's)."""
    forward = make_forward(packed, torch.device("cpu"), TrainConfig(), packed_outputs)
    total, per_run, _ = forward(pack_inputs(xs), ys)
    if weights is not None:
        total = total + packed_ortho_loss(packed, weights)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return per_run.detach()


def _assert_same_runs(packed, opt, models, adams) -> None:
    """Gradients, parameters, BN statistics and Adam state of each run, packed vs apart."""
    runs = packed.runs
    per_run = zip(packed.parameters(), *(m.parameters() for m in models), strict=True)
    for packed_param, *params in per_run:
        grads = packed_param.grad.unflatten(0, (runs, -1))  # (P, X, ...)
        for p, param in enumerate(params):
            _close(grads[p], param.grad)
    for i, conv in enumerate(packed.ortho_convs()):  # effective weights (P*C_out, ...)
        for p, model in enumerate(models):
            _close(conv.weight.detach().unflatten(0, (runs, -1))[p], model.ortho_convs()[i].weight)
    for run, model, adam in zip(unpack_state(packed, opt), models, adams, strict=True):
        want = model.state_dict()
        assert run["model"].keys() == want.keys()
        for key in want:
            _close(run["model"][key], want[key], RAW_RTOL if "original" in key else RTOL)
        got, want = run["optimizer"]["state"], adam.state_dict()["state"]
        assert got.keys() == want.keys()
        for i in want:
            assert got[i]["step"].item() == want[i]["step"].item()
            _close(got[i]["exp_avg"], want[i]["exp_avg"])
            _close(got[i]["exp_avg_sq"], want[i]["exp_avg_sq"])


def _assert_same_eval_outputs(cfg, packed, models, orthos, *, in_channels=3) -> None:
    """Each unpacked run, loaded into a fresh LargeCNN, computes what the pack computes."""
    xs, _ = _batch(torch.Generator().manual_seed(7), packed.runs, in_channels)
    packed.eval()
    with torch.no_grad():
        logits = packed(pack_inputs(xs))  # (B, P, K)
    runs = zip(unpack_state(packed), orthos, models, strict=True)
    for p, (run, ortho, model) in enumerate(runs):
        fresh = build_model(cfg, num_classes=K, in_channels=in_channels)
        apply_orthogonality(fresh.ortho_convs(), ortho)
        fresh = fresh.double()
        fresh.load_state_dict(run["model"])
        with torch.no_grad():
            _close(logits[:, p], fresh.eval()(xs[p]))
            _close(logits[:, p], model.eval()(xs[p]))


def _train_and_compare(cfg, orthos, lrs, wds, *, in_channels=3, steps=3):
    models = _separate(cfg, orthos, in_channels=in_channels)
    adams = _adams(models, lrs, wds)
    packed, opt = _pack(cfg, models, orthos, lrs, wds, in_channels=in_channels)
    weights = penalty_weights(orthos)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        xs, ys = _batch(gen, len(orthos), in_channels)
        want = _separate_step(models, adams, orthos, xs, ys)
        _close(_packed_step(packed, opt, weights, xs, ys), want)
        _assert_same_runs(packed, opt, models, adams)
    _assert_same_eval_outputs(cfg, packed, models, orthos, in_channels=in_channels)


# ------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    ("activation", "wds"),
    [("relu", (0.0, 0.0, 0.0)), ("swish", (0.0, 1e-2, 1e-3))],
)
def test_a_pack_trains_exactly_like_separate_runs(activation, wds):
    cfg = NARROW.model_copy(update={"activation": activation})
    _train_and_compare(cfg, [NONE, PENALTY, NONE], (1e-3, 5e-4, 3e-3), wds)


def test_an_exact_pack_trains_exactly_like_separate_exact_runs():
    # one input channel: the first layer's 12 filters of 9 entries are orthonormal columns
    _train_and_compare(NARROW, [EXACT, EXACT], (1e-3, 3e-3), (0.0, 0.0), in_channels=1)


def test_unpacked_runs_resume_as_single_runs_and_repack_bitwise():
    orthos, lrs, wds = [NONE, PENALTY], (1e-3, 2e-3), (0.0, 0.0)
    models = _separate(NARROW, orthos)
    packed, opt = _pack(NARROW, models, orthos, lrs, wds)
    weights, gen = penalty_weights(orthos), torch.Generator().manual_seed(1)
    for _ in range(2):
        _packed_step(packed, opt, weights, *_batch(gen, 2))
    runs = unpack_state(packed, opt)
    # repacked into a new pack: the same tensors, bit for bit
    again, again_opt = _pack(NARROW, _separate(NARROW, orthos), orthos, (1.0, 1.0), wds)
    pack_state(runs, again, again_opt)
    assert again_opt.lrs() == list(lrs)
    for key, t in packed.state_dict().items():
        assert torch.equal(again.state_dict()[key], t), key
    # loaded into single runs, they take the same next step as the pack
    resumed = _separate(NARROW, orthos)
    adams = _adams(resumed, lrs, wds)
    for model, adam, run in zip(resumed, adams, runs, strict=True):
        model.load_state_dict(run["model"])
        adam.load_state_dict(run["optimizer"])
    xs, ys = _batch(gen, 2)
    _close(
        _packed_step(packed, opt, weights, xs, ys), _separate_step(resumed, adams, orthos, xs, ys)
    )
    _assert_same_runs(packed, opt, resumed, adams)


def test_a_diverged_run_leaves_the_others_untouched():
    orthos, lrs, wds = [NONE, PENALTY, NONE], (1e-3,) * 3, (0.0,) * 3
    models = _separate(NARROW, orthos)
    clean, clean_opt = _pack(NARROW, models, orthos, lrs, wds)
    sick, sick_opt = _pack(NARROW, models, orthos, lrs, wds)
    xs, ys = _batch(torch.Generator().manual_seed(2), 3)
    poisoned = xs.clone()
    poisoned[0] = float("nan")
    weights = penalty_weights(orthos)
    _packed_step(clean, clean_opt, weights, xs, ys)
    losses = _packed_step(sick, sick_opt, weights, poisoned, ys)
    assert losses[0].isnan() and losses[1:].isfinite().all()
    for a, b in zip(unpack_state(clean)[1:], unpack_state(sick)[1:], strict=True):
        for key in a["model"]:
            _close(b["model"][key], a["model"][key])
    assert unpack_state(sick)[0]["model"]["features.0.0.weight"].isnan().all()


# ------------------------------------------------------------------------------- pieces
def test_inputs_are_packed_run_major_along_channels():
    xs = torch.randn(3, 2, 3, 5, 5)  # (P, B, C, H, W)
    packed = pack_inputs(xs)
    assert packed.shape == (2, 9, 5, 5)
    assert torch.equal(packed, pack_inputs(list(xs)))
    assert torch.equal(packed[:, 3:6], xs[1])  # run 1 owns channels [3, 6)


@pytest.mark.parametrize("method", ["qr", "cholesky"])
@pytest.mark.parametrize("shape", [(12, 3, 3, 3), (12, 1, 3, 3)])  # wide; tall (12 > 9)
def test_packed_orthonormal_is_orthonormal_of_each_run(method, shape):
    runs = 3
    w = torch.randn(runs * shape[0], *shape[1:], dtype=torch.float64)
    got = PackedOrthonormal(runs, method=method)(w).unflatten(0, (runs, -1))
    for p, part in enumerate(w.unflatten(0, (runs, -1))):
        _close(got[p], Orthonormal(method=method)(part))


def test_penalty_and_orthogonality_errors_are_per_run():
    orthos = [NONE, PENALTY, OrthoConfig(mode="penalty", weight=3.0)]
    models = _separate(NARROW, orthos)
    packed, _ = _pack(NARROW, models, orthos, (1e-3,) * 3, (0.0,) * 3)
    weights = penalty_weights(orthos)
    assert weights.tolist() == [0.0, 0.01, 3.0] and penalty_weights([NONE, EXACT]) is None
    want = sum(ortho_loss(m.ortho_convs(), o) for m, o in zip(models[1:], orthos[1:], strict=True))
    _close(packed_ortho_loss(packed, weights), want)
    names = packed.ortho_names()
    stacks = [run_stack(c.weight, len(models)) for c in packed.ortho_convs()]
    packed_stats = layer_diagnostics(stacks, names)
    for p, model in enumerate(models):
        alone = layer_diagnostics([c.weight for c in model.ortho_convs()], names)[0]
        for stat, values in alone.items():  # every logged statistic, ortho_error among them
            _close(
                torch.tensor(list(packed_stats[p][stat].values())),
                torch.tensor(list(values.values())),
            )


def test_a_pack_refuses_what_it_cannot_train_together():
    packed = PackedLargeCNN(NARROW, num_classes=K, runs=2)
    with pytest.raises(ValueError, match="exact with non-exact"):
        apply_packed_orthogonality(packed, [EXACT, PENALTY])
    with pytest.raises(ValueError, match="apodised"):
        apply_packed_orthogonality(packed, [NONE, OrthoConfig(apodize=True)])
    with pytest.raises(ValueError, match="methods"):
        apply_packed_orthogonality(packed, [EXACT, EXACT.model_copy(update={"method": "qr"})])
    with pytest.raises(ValueError, match="3 ortho configs"):
        apply_packed_orthogonality(packed, [NONE] * 3)
    with pytest.raises(ValueError, match="lr must be 2"):
        PackedAdam(packed, lr=(1e-3,))
    models = _separate(NARROW, [NONE, NONE])
    adams = _adams(models, (1e-3, 1e-3), (0.0, 0.0))
    gen = torch.Generator().manual_seed(3)
    _separate_step(models, adams, [NONE, NONE], *_batch(gen, 2))
    _separate_step(models[:1], adams[:1], [NONE], *_batch(gen, 1))  # run 0 one step ahead
    states = [
        {"model": m.state_dict(), "optimizer": a.state_dict()}
        for m, a in zip(models, adams, strict=True)
    ]
    opt = PackedAdam(packed, lr=1e-3)
    with pytest.raises(ValueError, match="must agree on"):  # batch norm's one step counter
        pack_state(states, packed, opt)


def test_packed_adam_zero_grad_as_torch_optimisers_do():
    packed = PackedLargeCNN(ModelConfig(width=0.0625), num_classes=10, runs=2)
    opt = PackedAdam(packed, lr=[1e-3, 1e-3], weight_decay=[0.0, 0.0])
    for p in packed.parameters():
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in packed.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in packed.parameters())
