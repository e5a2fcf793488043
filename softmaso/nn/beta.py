"""How a module holds its beta: fixed in [0, 1], or learnable and kept inside (0, 1)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

EtaParam = Literal["logit", "softplus"]


class BetaParameter(nn.Module):
    """beta of a beta-VQ, fixed or learnable, shared or one per channel.

    Fixed: a Python float anywhere in [0, 1] (a hyperparameter, not state: full precision in
    any dtype). Learnable: an unconstrained parameter p, so beta stays in (0, 1) whatever the
    optimiser does:
    - ``eta_param="logit"``: beta = sigmoid(p), hence eta = beta / (1 - beta) = exp(p);
    - ``eta_param="softplus"``: eta = softplus(p), hence beta = eta / (1 + eta) (the authors'
      swish parametrisation, paper-notes section 9).
    `channels` None means one beta for the whole layer; otherwise one per channel, broadcast over
    axis `channel_dim` of the input.
    """

    def __init__(
        self,
        beta: float = 0.5,
        *,
        learnable: bool = False,
        channels: int | None = None,
        channel_dim: int = 1,
        eta_param: EtaParam = "logit",
    ):
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        if learnable and not 0 < beta < 1:
            raise ValueError(f"a learnable beta starts inside (0, 1), got {beta}")
        self.learnable, self.eta_param, self.channel_dim = learnable, eta_param, channel_dim
        self.fixed = None if learnable else float(beta)
        if learnable:
            eta0 = beta / (1 - beta)
            # inverse of exp, or of softplus (eta + log(1 - e^-eta), stable for large eta)
            p0 = math.log(eta0) if eta_param == "logit" else eta0 + math.log(-math.expm1(-eta0))
            self.p = nn.Parameter(torch.full((channels,) if channels else (), p0))

    def eta(self, ndim: int) -> torch.Tensor | float:
        """eta = beta / (1 - beta), shaped to broadcast over an input of `ndim` dimensions; a
        float for a fixed beta (infinite for beta = 1: callers check :meth:`constant`)."""
        if not self.learnable:
            return self.fixed / (1 - self.fixed) if self.fixed < 1 else float("inf")
        # exp capped at e^60 (finite in fp32 and bf16) so that eta * 0 never becomes inf * 0
        e = (
            self.p.clamp(max=60).exp()
            if self.eta_param == "logit"
            else nn.functional.softplus(self.p)
        )
        if e.dim() == 0:
            return e
        shape = [1] * ndim
        shape[self.channel_dim] = e.shape[0]
        return e.view(shape)

    def beta(self) -> torch.Tensor:
        if not self.learnable:
            return torch.tensor(self.fixed)
        if self.eta_param == "logit":
            return torch.sigmoid(self.p)
        eta = nn.functional.softplus(self.p)
        return eta / (1 + eta)

    def constant(self) -> float | None:
        """The fixed beta (the same for every channel), or None when learnable."""
        return self.fixed

    def extra_repr(self) -> str:
        # The structure only, never learned values: softmaso.compiled keys its compiled graphs
        # on the model's repr, and a resumed run must find its graph again.
        if self.learnable:
            return f"learnable ({self.eta_param}), {self.p.numel()} beta(s)"
        return f"fixed, beta={self.fixed}"
