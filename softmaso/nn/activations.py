"""beta-VQ activations: a max-affine nonlinearity under beta-VQ inference (paper Sec. 4).

For a spec with scores s[r] = a_r * u + c_r the unit outputs sum_r T_beta[r] * s[r] with
T_beta = softmax(eta * s), eta = beta / (1 - beta). For ReLU this is swish,
u * sigmoid(eta * u) (Prop. 7); for the absolute value u * tanh(eta * u).
"""

from __future__ import annotations

import torch
from torch import nn

from softmaso.nn.beta import BetaParameter, EtaParam
from softmaso.theory.specs import MaxAffineSpec, relu


class BetaVQActivation(nn.Module):
    """Elementwise beta-VQ activation for any max-affine spec (default ReLU, i.e. swish).

    beta = 1 gives the hard nonlinearity exactly (max_r s[r]), beta = 1/2 the soft-VQ one,
    beta = 0 the mean of the region scores. With ``learnable=True`` beta is trained and stays in
    (0, 1); ``channels=C`` gives one beta per channel (axis 1 of an (N, C, ...) input).
    Two-region specs use the closed form s0 + sigmoid(eta * (s1 - s0)) * (s1 - s0), which
    never materialises the (..., R) score tensor.
    """

    def __init__(
        self,
        spec: MaxAffineSpec | None = None,
        beta: float = 0.5,
        *,
        learnable: bool = False,
        channels: int | None = None,
        eta_param: EtaParam = "logit",
    ):
        super().__init__()
        self.spec = spec or relu()
        self.beta = BetaParameter(beta, learnable=learnable, channels=channels, eta_param=eta_param)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if self.beta.constant() == 1.0:  # HVQ: the hard nonlinearity itself
            return spec.scores(u).amax(-1)
        eta = self.beta.eta(u.dim())
        if spec.regions == 2:
            (a0, a1), (c0, c1) = spec.slopes, spec.offsets
            s0 = u * a0 + c0 if (a0, c0) != (0.0, 0.0) else torch.zeros_like(u)
            gap = u * (a1 - a0) + (c1 - c0)  # s1 - s0
            return s0 + torch.sigmoid(eta * gap) * gap
        # R >= 3: softmax over the regions one score map at a time, so no (..., R) tensor with a
        # trailing axis of R is built (channels_last kernels stay fast)
        s = [u * a + c for a, c in zip(spec.slopes, spec.offsets, strict=True)]
        top = s[0].detach()
        for s_r in s[1:]:
            top = torch.maximum(top, s_r.detach())  # exp(eta * (s - top)) <= 1: never overflows
        weights = [torch.exp(eta * (s_r - top)) for s_r in s]
        return sum(w * s_r for w, s_r in zip(weights, s, strict=True)) / sum(weights)

    def extra_repr(self) -> str:
        return f"spec={self.spec.name}"


def swish(channels: int | None = None, *, eta_param: EtaParam = "softplus") -> BetaVQActivation:
    """Swish u * sigmoid(eta * u) with a learnable eta (ReLU under a learnable beta-VQ).

    Defaults to the authors' parametrisation eta = softplus(p), p initialised at 0.5
    (paper-notes section 9); beta = eta / (1 + eta).
    """
    eta0 = torch.nn.functional.softplus(torch.tensor(0.5)).item()
    return BetaVQActivation(
        relu(), eta0 / (1 + eta0), learnable=True, channels=channels, eta_param=eta_param
    )
