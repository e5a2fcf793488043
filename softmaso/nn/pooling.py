"""beta-softmax pooling: max-pooling's MASO under beta-VQ inference (paper Prop. 4, Table 1).

Each window's R = k*k inputs are the region scores; the output is sum_i T_beta[i] * x_i with
T_beta = softmax(eta * x_window). beta = 1: max-pooling; beta = 1/2: softmax pooling;
beta = 0: average pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softmaso.nn.beta import BetaParameter, EtaParam
from softmaso.theory.specs import maxpool_scores


class BetaSoftmaxPool2d(nn.Module):
    """2-D beta-softmax pooling over k x k windows with a stride (default: k), no padding."""

    def __init__(
        self,
        kernel_size: int,
        stride: int | None = None,
        beta: float = 0.5,
        *,
        learnable: bool = False,
        channels: int | None = None,
        eta_param: EtaParam = "logit",
    ):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.beta = BetaParameter(beta, learnable=learnable, channels=channels, eta_param=eta_param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H', W')
        b = self.beta.constant()
        if b == 1.0:
            return F.max_pool2d(x, self.kernel_size, self.stride)
        if b == 0.0:
            return F.avg_pool2d(x, self.kernel_size, self.stride)
        s = maxpool_scores(x, self.kernel_size, self.stride)  # (N, C, H', W', R)
        eta = self.beta.eta(x.dim())  # () or (1, C, 1, 1)
        if isinstance(eta, torch.Tensor):
            eta = eta.unsqueeze(-1)  # a region axis, to broadcast against s
        t = torch.softmax(eta * s, dim=-1)
        return (t * s).sum(-1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
