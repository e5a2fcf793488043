"""Orthogonality (paper Sec. 5, eq. 11, App. B): penalty, exact reparametrisation, diagnostics."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from softmaso.config import OrthoConfig
from softmaso.orthogonality import (
    HammingApodize,
    Orthonormal,
    _gram,
    _GramSchmidt,
    apply_orthogonality,
    gram_penalties,
    gram_penalty,
    layer_diagnostics,
    ortho_loss,
    orthogonality_error,
    orthonormality_error,
    penalty,
    sgs_reference,
)

# largeCNN's orthogonalised convolutions (App. D) and a 10-class 1x1 classifier
PAPER_SHAPES = [
    (96, 3, 3, 3),
    (96, 96, 3, 3),
    (192, 96, 3, 3),
    (192, 192, 3, 3),
    (192, 192, 1, 1),
    (10, 192, 1, 1),
]


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gram_is_identity(w, atol):
    flat = w.reshape(w.shape[0], -1).double()  # (C_out, n)
    g = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    return torch.allclose(g, torch.eye(g.shape[0], dtype=g.dtype), atol=atol)


# ------------------------------------------------------------------------------- penalty
def test_gram_penalty_by_hand():
    # rows W_1 = (1, 0), W_2 = (1, 1), W_3 = (0, 2): <1,2> = 1, <1,3> = 0, <2,3> = 2
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # each pair counted twice (k, k') and (k', k): 2 * (1^2 + 0^2 + 2^2) = 10
    assert gram_penalty(w).item() == 10.0
    conv = w.reshape(3, 2, 1, 1)  # the same filters as a 1x1 conv
    assert gram_penalty(conv).item() == 10.0


def test_gram_penalty_equals_a_double_loop():
    w = _randn(7, 3, 2, 2, seed=1, dtype=torch.float64)
    flat = w.reshape(7, -1)
    loop = sum(float(flat[k] @ flat[j]) ** 2 for k in range(7) for j in range(7) if k != j)
    assert gram_penalty(w).item() == pytest.approx(loop, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.lists(st.floats(-10, 10, allow_subnormal=False), min_size=36, max_size=36),
)
def test_gram_penalty_is_frobenius_minus_diagonal(m, n, values):
    w = torch.tensor(values[: m * n], dtype=torch.float64).reshape(m, n)
    frob = (w @ w.T).square().sum()
    diag = w.square().sum(1).square().sum()  # sum_k ||W_k||^4
    got = gram_penalty(w)
    assert got >= 0
    assert got.item() == pytest.approx((frob - diag).item(), abs=1e-9 * (frob.item() + 1))


def test_penalty_is_zero_for_orthogonal_filters_and_sums_layers():
    q = torch.linalg.qr(_randn(27, 8, dtype=torch.float64))[0].T  # (8, 27) orthonormal rows
    scaled = q * torch.arange(1, 9, dtype=torch.float64)[:, None]  # orthogonal, not unit
    assert penalty([q.reshape(8, 3, 3, 3), scaled]).item() < 1e-24
    a, b = _randn(4, 5, seed=1), _randn(6, 2, 3, 3, seed=2)
    assert torch.allclose(penalty([a, b]), gram_penalty(a) + gram_penalty(b))
    assert penalty([]).item() == 0.0


# -------------------------------------------------------------------------------- error
def test_orthogonality_error_range():
    q = torch.linalg.qr(_randn(50, 10))[0]  # (50, 10) orthonormal columns
    assert orthogonality_error(q.T * 3.0).item() < 1e-12  # orthogonal rows
    assert orthogonality_error(q).item() < 1e-12  # C_out > n: its columns are measured
    rand = orthogonality_error(_randn(16, 8, 3, 3)).item()
    assert 0 < rand < 1
    same = torch.ones(5, 1, 2, 2)  # all filters parallel
    assert orthogonality_error(same).item() == pytest.approx(1.0)
    assert orthogonality_error(torch.ones(1, 4)).item() == 0.0


# ------------------------------------------------------------- exact reparametrisation
@pytest.mark.parametrize("shape", PAPER_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", ["qr", "cholesky"])
def test_exact_is_orthonormal_and_differentiable(shape, method):
    raw = _randn(*shape, seed=3).requires_grad_()
    w = Orthonormal(method=method)(raw)
    assert w.shape == raw.shape and w.dtype == raw.dtype
    # Householder: float32 rounding; Cholesky-QR applies L^{-1} in float32: eps * cond(W)
    # (the square 1x1 layer's random init has cond ~700, so ~1e-5 there)
    cond = torch.linalg.cond(raw.detach().reshape(raw.shape[0], -1).double()).item()
    assert _gram_is_identity(w, atol=1e-5 if method == "qr" else 1e-6 + 3e-8 * cond)
    (w * _randn(*shape, seed=4)).sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(6, 2, 2, 2), (96, 3, 3, 3), (12, 12), (10, 192, 1, 1)])
def test_exact_is_gram_schmidt(shape):
    raw = _randn(*shape, seed=5, dtype=torch.float64)
    ref = sgs_reference(raw)
    assert torch.allclose(Orthonormal()(raw), ref, atol=1e-10, rtol=0)
    assert torch.allclose(Orthonormal(method="cholesky")(raw), ref, atol=1e-10, rtol=0)


def _qr_reference(a: torch.Tensor) -> torch.Tensor:
    """(P, m, n) rows -> Gram-Schmidt rows through torch.linalg.qr and autograd's backward."""
    q, r = torch.linalg.qr(a.mT)
    sign = torch.sgn(r.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)  # (P, 1, m)
    return (q * sign).mT


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("method", ["qr", "cholesky"])
@pytest.mark.parametrize("shape", [(2, 5, 9), (3, 12, 12), (1, 96, 864)])
def test_hand_written_backward_matches_autograd_through_qr(method, shape, blocked, monkeypatch):
    """Also with the triangles' zero blocks skipped (`blocked`; m = 5: unequal halves)."""
    from softmaso import orthogonality

    monkeypatch.setattr(orthogonality, "_BLOCKED_MIN_MACS", 0 if blocked else 1 << 62)
    a = _randn(*shape, seed=13, dtype=torch.float64).requires_grad_()
    dq = _randn(*shape, seed=14, dtype=torch.float64)
    want = _qr_reference(a)
    (want_grad,) = torch.autograd.grad(want, a, dq)
    got = _GramSchmidt.apply(a, method)
    (got_grad,) = torch.autograd.grad(got, a, dq)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    assert torch.allclose(got_grad, want_grad, atol=1e-9 * want_grad.abs().max(), rtol=0)


@pytest.mark.parametrize("m", [1, 2, 5, 96])
def test_gram_from_three_blocks_is_a_a_transposed(m):
    a = _randn(3, m, 40, seed=34, dtype=torch.float64)
    assert torch.allclose(_gram(a), a @ a.mT, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("method", ["qr", "cholesky"])
def test_float32_backward_agrees_with_float64(method, blocked, monkeypatch):
    """The float32 path (oneDNN products on the CPU) against the float64 one (torch.matmul)."""
    from softmaso import orthogonality

    monkeypatch.setattr(orthogonality, "_BLOCKED_MIN_MACS", 0 if blocked else 1 << 62)
    a = _randn(2, 96, 864, seed=32, dtype=torch.float64)
    dq = _randn(2, 96, 864, seed=33, dtype=torch.float64)
    grads = []
    for dtype in (torch.float64, torch.float32):
        x = a.to(dtype).requires_grad_()
        q = _GramSchmidt.apply(x, method)
        (g,) = torch.autograd.grad(q, x, dq.to(dtype))
        grads.append(g.double())
    assert (grads[1] - grads[0]).abs().max() < 1e-4 * grads[0].abs().max()


def test_exact_keeps_channels_last_without_a_copy_and_agrees_with_contiguous():
    raw = _randn(16, 8, 3, 3, seed=15, dtype=torch.float64)
    cl = raw.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = Orthonormal()(cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, Orthonormal()(raw), atol=1e-12, rtol=0)  # column order is free
    (out * _randn(16, 8, 3, 3, seed=16, dtype=torch.float64)).sum().backward()
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)


def test_penalty_backward_matches_autograd():
    w = _randn(2, 6, 4, 3, 3, seed=17, dtype=torch.float64).flatten(0, 1).requires_grad_()
    flat = w.reshape(2, 6, -1)
    gram = flat @ flat.mT
    plain = gram.square().sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).square().sum(1)
    (want,) = torch.autograd.grad((plain * torch.tensor([1.0, 3.0])).sum(), w)
    got = gram_penalties(w.unflatten(0, (2, 6)))  # a stack of two weights
    assert torch.allclose(got, plain.detach(), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad((got * torch.tensor([1.0, 3.0])).sum(), w)
    assert torch.allclose(grad, want, rtol=1e-10, atol=1e-12)


def test_cholesky_matches_qr_in_float32():
    u = torch.linalg.qr(_randn(192, 192, seed=6))[0]
    v = torch.linalg.qr(_randn(192, 192, seed=7))[0]
    square = u @ torch.diag(torch.linspace(1, 10, 192)) @ v.T  # 1x1 conv, cond 10
    for w in [*(_randn(*s, seed=8) for s in PAPER_SHAPES if s[2] == 3), square]:
        qr, chol = Orthonormal(method="qr")(w), Orthonormal(method="cholesky")(w)
        assert (qr - chol).abs().max().item() < 1e-5


def test_float32_orthonormality_of_both_methods_on_largecnn_at_init():
    """The accuracy ``ortho.method`` documents, at full width with the model's own init:
    cholesky ~1e-7 where cond(W) is 2-3, 1e-5 on the square 1x1 layer (cond ~1000); qr ~1e-6."""
    from softmaso.config import ModelConfig
    from softmaso.models import build_model

    torch.manual_seed(0)
    convs = build_model(ModelConfig(), num_classes=10).ortho_convs()
    for method, rest, square in (("cholesky", 3e-7, 1e-4), ("qr", 3e-6, 3e-6)):
        for conv in convs:
            w = conv.weight.detach()
            err = orthonormality_error(Orthonormal(method=method)(w))
            assert err < (square if w[0].numel() == len(w) else rest), (method, w.shape, err)


def test_exact_is_computed_in_fp32_under_autocast():
    raw = _randn(8, 4, 3, 3, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = Orthonormal(method="cholesky")(raw)
    assert w.dtype == torch.float32 and _gram_is_identity(w, atol=1e-5)


def test_sgs_reference_is_differentiable():
    raw = _randn(5, 3, 2, 2, seed=10, dtype=torch.float64).requires_grad_()
    sgs_reference(raw).sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


# -------------------------------------------------------------------------- apodisation
def test_apodize_centres_and_windows():
    w = _randn(4, 2, 3, 3, seed=11) + 5.0
    out = HammingApodize()(w)
    h = torch.tensor([0.08, 1.0, 0.08])
    win = torch.outer(h, h)  # np.hamming(3), max already 1
    assert torch.allclose(out, (w - w.mean(dim=(1, 2, 3), keepdim=True)) * win, atol=1e-6)
    unwindowed = out / win  # centred before windowing
    assert unwindowed.mean(dim=(1, 2, 3)).abs().max().item() < 1e-5
    one = _randn(4, 6, 1, 1, seed=12)  # 1x1: window is 1, only centring
    assert torch.allclose(HammingApodize()(one), one - one.mean(dim=1, keepdim=True))


def test_apodize_composes_with_exact():
    conv = nn.Conv2d(3, 8, 3)
    apply_orthogonality([conv], OrthoConfig(mode="exact", apodize=True))
    chain = [type(p) for p in conv.parametrizations["weight"]]
    assert chain == [HammingApodize, Orthonormal]
    raw = conv.parametrizations["weight"].original
    expected = Orthonormal()(HammingApodize()(raw))
    assert torch.allclose(conv.weight, expected, atol=1e-5)  # float32, up to summation order
    assert _gram_is_identity(conv.weight, 1e-5)


# ---------------------------------------------------------------------------- trainer api
def test_apply_orthogonality_modes():
    convs = [nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)]
    apply_orthogonality(convs, OrthoConfig(mode="penalty"))
    assert not any(hasattr(c, "parametrizations") for c in convs)
    apply_orthogonality(convs, OrthoConfig(mode="exact"))
    apply_orthogonality(convs, OrthoConfig(mode="exact"))  # idempotent
    assert all(len(c.parametrizations["weight"]) == 1 for c in convs)
    assert max(_ortho_errors(convs)) < 1e-10
    convs[1](convs[0](_randn(2, 3, 5, 5))).square().sum().backward()
    for c in convs:  # gradients reach the raw parameter through the parametrisation
        grad = c.parametrizations["weight"].original.grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert ortho_loss(convs, OrthoConfig(mode="exact")) is None
    with pytest.raises(ValueError, match="already has"):
        apply_orthogonality(convs, OrthoConfig(mode="exact", apodize=True))
    with pytest.raises(ValueError, match="already has"):
        apply_orthogonality(convs, OrthoConfig(mode="exact", method="qr"))


def test_exact_survives_state_dict_round_trip():
    a, b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
    cfg = OrthoConfig(mode="exact")
    apply_orthogonality([a], cfg)
    apply_orthogonality([b], cfg)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weight, b.weight)


def test_ortho_loss_weights_the_penalty():
    conv = nn.Conv2d(2, 6, 3)
    cfg = OrthoConfig(mode="penalty", weight=0.5)
    assert torch.allclose(ortho_loss([conv], cfg), 0.5 * gram_penalty(conv.weight))
    assert ortho_loss([conv], OrthoConfig()) is None


def test_penalty_training_reduces_the_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    cfg = OrthoConfig(mode="penalty", weight=1.0)
    apply_orthogonality([conv], cfg)
    before = _ortho_errors([conv])[0]
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        ortho_loss([conv], cfg).backward()
        opt.step()
    after = _ortho_errors([conv])[0]
    assert math.isfinite(after) and after < 0.5 * before


def _ortho_errors(convs) -> list[float]:
    """Each conv's ortho_error, as logged per epoch."""
    names = [f"c{i}" for i in range(len(convs))]
    return list(layer_diagnostics([c.weight for c in convs], names)[0]["ortho_error"].values())


# ------------------------------------------------------------------ SO, SRIP, torch (issue 17)
def test_so_and_srip_vanish_on_orthonormal_filters_and_pull_others_towards_them():
    from softmaso.orthogonality import soft_orthogonality, srip

    g = torch.Generator().manual_seed(0)
    for c_out, n in ((6, 12), (24, 9)):  # tall and wide (conv1: more filters than values)
        q = torch.linalg.qr(
            torch.randn(max(c_out, n), min(c_out, n), generator=g, dtype=torch.float64)
        )[0]
        w = (q if c_out > n else q.T).reshape(c_out, n, 1, 1)  # orthonormal rows, or columns
        assert soft_orthogonality(w).item() < 1e-24 and srip(w).item() < 1e-12
        w = torch.randn(c_out, n, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
        for term in (soft_orthogonality, srip):
            (grad,) = torch.autograd.grad(term(w), w)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        rows = w.detach().reshape(c_out, n)
        rows = rows.T if c_out > n else rows
        m = rows @ rows.T - torch.eye(rows.shape[0], dtype=torch.float64)
        assert soft_orthogonality(w).item() == pytest.approx(m.square().sum().item())
        top = torch.linalg.matrix_norm(m, ord=2).item()
        assert 0 < srip(w).item() <= top * (1 + 1e-9)  # two power iterations: from below


def test_torch_mode_gives_orthonormal_filters_that_train():
    from softmaso.config import OrthoConfig
    from softmaso.orthogonality import apply_orthogonality, ortho_loss, orthonormality_error

    for c_in, c_out in ((8, 6), (1, 24)):
        conv = torch.nn.Conv2d(c_in, c_out, 3)
        apply_orthogonality([conv], OrthoConfig(mode="torch"))
        assert orthonormality_error(conv.weight) < 1e-5
        opt = torch.optim.Adam(conv.parameters(), lr=0.05)
        x = torch.randn(4, c_in, 6, 6)
        before = conv.weight.detach().clone()
        for _ in range(3):
            loss = conv(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert orthonormality_error(conv.weight) < 1e-5
        assert not torch.allclose(conv.weight, before)  # it learns, on the orthogonal group
    assert ortho_loss([conv], OrthoConfig(mode="torch")) is None


def test_new_modes_train_alone_and_never_pack(tmp_path):
    from conftest import tiny

    from softmaso import training
    from softmaso.packed_training import plan_units

    cfgs = [
        tiny(**{"train.epochs": 1, "ortho.mode": m, "ortho.weight": 0.1})
        for m in ("so", "srip", "torch")
    ]
    for i, cfg in enumerate(cfgs):
        res = training.fit(cfg, tmp_path / str(i), device="cpu")
        assert res["status"] == "finished"
    both = [tiny(seed=s) for s in (0, 1)] + cfgs

    class R:
        def __init__(self, cfg):
            self.cfg = cfg

    units = plan_units([R(c) for c in both], pack=True)
    assert sorted(len(u) for u in units) == [1, 1, 1, 2]
