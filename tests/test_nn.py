"""beta-VQ activation and beta-softmax pooling modules."""

import torch
import torch.nn.functional as F

from softmaso.nn import BetaSoftmaxPool2d, BetaVQActivation, swish
from softmaso.theory import absolute, beta_vq, leaky_relu, maso_output, max_affine, maxpool_scores

DT = torch.float64


def test_activation_closed_forms():
    u = torch.linspace(-5, 5, 101, dtype=DT)
    eta = 0.3 / 0.7
    assert torch.allclose(BetaVQActivation(beta=0.3)(u), u * torch.sigmoid(eta * u), atol=1e-14)
    assert torch.allclose(BetaVQActivation(absolute(), 0.3)(u), u * torch.tanh(eta * u), atol=1e-14)
    assert torch.equal(BetaVQActivation(beta=1.0)(u), torch.relu(u))
    assert torch.allclose(BetaVQActivation(leaky_relu(0.2), 0.0)(u), 0.6 * u)  # mean of 0.2u and u


def test_general_spec_matches_eq2():
    spec = max_affine([-1.0, 0.2, 1.0], [0.0, 0.1, -1.0])
    u = torch.randn(4, 3, 5, dtype=DT)
    for b in (0.0, 0.2, 0.5, 0.8, 1.0):
        s = spec.scores(u)
        assert torch.allclose(
            BetaVQActivation(spec, b)(u), maso_output(s, beta_vq(s, b)), atol=1e-14
        )


def test_general_spec_per_channel_beta_matches_softmax_and_its_gradients():
    spec = max_affine([-0.25, 0.25, 1.0], [-0.5, 0.0, -1.0])
    act = BetaVQActivation(spec, 0.5, learnable=True, channels=3).double()
    with torch.no_grad():
        act.beta.p.copy_(torch.tensor([-2.0, 0.0, 40.0], dtype=DT))  # eta = e^-2, 1, e^40
    u = torch.randn(2, 3, 4, 4, dtype=DT, requires_grad=True)
    s = spec.scores(u)  # (..., R): the stacked form
    eta = act.beta.eta(4).unsqueeze(-1)
    reference = (torch.softmax(eta * s, dim=-1) * s).sum(-1)
    out = act(u)
    assert torch.allclose(out, reference, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (u, act.beta.p), g)
    want = torch.autograd.grad(reference, (u, act.beta.p), g)
    for got, ref in zip(grads, want, strict=True):
        assert torch.allclose(got, ref, atol=1e-10)


def test_learnable_beta_stays_in_open_interval_and_has_finite_gradients():
    for b0 in (1e-4, 0.5, 1 - 1e-4):
        for param in ("logit", "softplus"):
            act = BetaVQActivation(beta=b0, learnable=True, channels=3, eta_param=param).double()
            assert torch.allclose(act.beta.beta(), torch.full((3,), b0, dtype=DT), rtol=1e-6)
            x = torch.randn(2, 3, 4, 4, dtype=DT)
            x[:, :, 0] = 0.0  # exact zeros: where inf * 0 would give NaN
            act(x).square().sum().backward()
            assert torch.isfinite(act.beta.p.grad).all()
            with torch.no_grad():
                act.beta.p.add_(torch.tensor([-1e3, 0.0, 1e3], dtype=DT))  # a wild optimiser step
            beta = act.beta.beta()
            assert torch.all((beta >= 0) & (beta <= 1)) and torch.isfinite(act(x)).all()


def test_per_channel_beta_acts_per_channel():
    act = BetaVQActivation(beta=0.5, learnable=True, channels=2, eta_param="logit").double()
    with torch.no_grad():
        act.beta.p.copy_(torch.tensor([0.0, 2.0], dtype=DT))  # eta = exp(p): 1 and e^2
    x = torch.randn(3, 2, 4, dtype=DT)
    eta = torch.tensor([1.0, torch.e**2], dtype=DT).view(1, 2, 1)
    assert torch.allclose(act(x), x * torch.sigmoid(eta * x), atol=1e-14)


def test_swish_uses_the_authors_softplus_init():
    act = swish(8)
    eta = F.softplus(torch.tensor(0.5))
    assert torch.allclose(act.beta.eta(4).flatten(), eta.expand(8), atol=1e-6)


def test_pooling_at_its_three_named_betas():
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    assert torch.equal(BetaSoftmaxPool2d(2, beta=1.0)(x), F.max_pool2d(x, 2))
    assert torch.allclose(BetaSoftmaxPool2d(2, beta=0.0)(x), F.avg_pool2d(x, 2))
    s = maxpool_scores(x, 2)
    soft = (s.softmax(-1) * s).sum(-1)
    assert torch.allclose(BetaSoftmaxPool2d(2, beta=0.5)(x), soft, atol=1e-14)


def test_learnable_pooling_gradients_near_the_ends():
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    for b0 in (1e-5, 1 - 1e-5):
        pool = BetaSoftmaxPool2d(3, 3, beta=b0, learnable=True, channels=3).double()
        pool(x).sum().backward()
        assert torch.isfinite(pool.beta.p.grad).all()
    near_max = BetaSoftmaxPool2d(2, beta=1 - 1e-9).double()(x)
    assert torch.allclose(near_max, F.max_pool2d(x, 2), atol=1e-6)
