"""Hard, soft and beta VQ: identities on random inputs (hypothesis) and edge cases."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaso.theory import (
    beta_vq,
    beta_vq_objective,
    beta_vq_value,
    hard_vq,
    maso_output,
    maso_scores,
    relu,
    soft_vq,
)

DT = torch.float64
finite = st.floats(-20, 20, allow_nan=False)
scores = st.lists(finite, min_size=2, max_size=6).map(lambda v: torch.tensor(v, dtype=DT))
betas = st.floats(0.0, 1.0)
open_betas = st.floats(0.01, 0.99)


@given(scores, betas)
def test_beta_vq_rows_lie_on_the_simplex(s, beta):
    t = beta_vq(s, beta)
    assert torch.all(t >= 0)
    assert math.isclose(float(t.sum()), 1.0, abs_tol=1e-12)


@given(scores)
def test_named_betas_are_hard_soft_and_uniform(s):
    assert torch.equal(beta_vq(s, 1.0), hard_vq(s))
    assert torch.allclose(beta_vq(s, 0.5), soft_vq(s), atol=0, rtol=0)
    assert torch.allclose(beta_vq(s, 0.0), torch.full_like(s, 1 / len(s)))
    assert float(maso_output(s, hard_vq(s))) == float(s.max())


@given(scores, open_betas)
def test_value_is_the_objective_at_the_optimum(s, beta):
    t = beta_vq(s, beta)
    assert math.isclose(
        float(beta_vq_value(s, beta)),
        float(beta_vq_objective(t, s, beta)),
        rel_tol=1e-9,
        abs_tol=1e-9,
    )


@settings(max_examples=50)
@given(scores, open_betas, st.integers(0, 2**31 - 1))
def test_no_simplex_point_beats_the_beta_vq(s, beta, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.distributions.Dirichlet(torch.ones_like(s)).sample((200,))  # random simplex points
    t = t[torch.randperm(200, generator=g)]
    best = beta_vq_objective(beta_vq(s, beta), s, beta)
    assert torch.all(beta_vq_objective(t, s, beta) <= best + 1e-9)


@given(scores)
def test_value_limits(s):
    assert math.isclose(float(beta_vq_value(s, 1.0)), float(s.max()))
    assert math.isclose(float(beta_vq_value(s, 0.0)), math.log(len(s)), rel_tol=1e-12)
    tensor_beta = torch.tensor([0.0, 1.0], dtype=DT)
    both = beta_vq_value(s.expand(2, -1), tensor_beta)
    assert torch.allclose(both, torch.stack([beta_vq_value(s, 0.0), beta_vq_value(s, 1.0)]))


def test_tensor_beta_mixes_hard_and_soft_rows_without_nan():
    s = torch.randn(4, 3, dtype=DT)
    beta = torch.tensor([0.0, 0.5, 0.9, 1.0], dtype=DT, requires_grad=True)
    t = beta_vq(s, beta)
    assert torch.equal(t[3], hard_vq(s[3]))
    assert torch.allclose(t[1], soft_vq(s[1]))
    (g,) = torch.autograd.grad((t * torch.randn(4, 3, dtype=DT)).sum(), beta)
    assert torch.isfinite(g).all()


def test_beta_gradients_are_finite_near_zero_and_one():
    s = torch.randn(8, 3, dtype=DT)
    for b in (1e-8, 1e-4, 1 - 1e-4, 1 - 1e-8):
        beta = torch.full((8,), b, dtype=DT, requires_grad=True)
        (g,) = torch.autograd.grad(
            beta_vq_value(s, beta).sum() + beta_vq(s, beta)[:, 0].sum(), beta
        )
        assert torch.isfinite(g).all(), b


def test_beta_outside_unit_interval_is_rejected():
    s = torch.zeros(3)
    for b in (-0.1, 1.1):
        try:
            beta_vq(s, b)
        except ValueError as e:
            assert "[0, 1]" in str(e)
        else:
            raise AssertionError("accepted beta outside [0, 1]")


@given(st.integers(1, 4), st.integers(2, 4), st.integers(1, 5), st.integers(0, 1000))
def test_maso_scores_match_a_loop(K, R, D, seed):
    g = torch.Generator().manual_seed(seed)
    A, B, x = (torch.randn(*sh, generator=g, dtype=DT) for sh in ((K, R, D), (K, R), (3, D)))
    s = maso_scores(A, B, x)
    for n in range(3):
        for k in range(K):
            for r in range(R):
                assert math.isclose(
                    float(s[n, k, r]), float(A[k, r] @ x[n] + B[k, r]), abs_tol=1e-12
                )


@given(st.floats(-30, 30), open_betas)
def test_relu_under_beta_vq_is_swish(u, beta):
    u = torch.tensor(u, dtype=DT)
    eta = beta / (1 - beta)
    s = relu().scores(u)
    assert math.isclose(
        float(maso_output(s, beta_vq(s, beta))), float(u * torch.sigmoid(eta * u)), abs_tol=1e-12
    )
