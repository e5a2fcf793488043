"""MASO scores and hard, soft and beta vector quantization (paper Sec. 2-4).

Symbols (paper-notes sections 1, 3, 4): a layer has K units, each with R regions; unit k's
region r has slope A[k, r, :] in R^D and offset B[k, r]. Its score on an input x is
s[k, r] = <A[k, r, :], x> + B[k, r]. A VQ matrix T (K x R, each row on the simplex) selects or
mixes regions and the layer outputs z[k] = sum_r T[k, r] * s[k, r] (eq. 2).

Every function works on any leading batch shape ``...``; the region axis is always last.
beta may be a float or a tensor broadcastable to ``s.shape[:-1]`` (one beta per unit).
"""

from __future__ import annotations

import torch

Beta = float | torch.Tensor


def maso_scores(A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Scores s[..., k, r] = <A[k, r, :], x[..., :]> + B[k, r] (the argument of eq. 1).

    A: (K, R, D) slopes, B: (K, R) offsets, x: (..., D) inputs -> (..., K, R).
    """
    return torch.einsum("krd,...d->...kr", A, x) + B  # (..., K, R)


def hard_vq(s: torch.Tensor) -> torch.Tensor:
    """HVQ: T_H[..., r] = 1 for r = argmax_r s[..., r], else 0 (first index on ties)."""
    idx = s.argmax(dim=-1)  # (...)
    return torch.nn.functional.one_hot(idx, s.shape[-1]).to(s.dtype)  # (..., R)


def soft_vq(s: torch.Tensor) -> torch.Tensor:
    """SVQ (eq. 6): T_S[..., r] = softmax_r s[..., r], the GMM posterior p(t = r | x)."""
    return torch.softmax(s, dim=-1)


def beta_to_eta(beta: Beta) -> Beta:
    """Inverse temperature eta = beta / (1 - beta) of the beta-VQ (Thm. 3); inf at beta = 1."""
    if isinstance(beta, torch.Tensor):
        return torch.where(beta >= 1, torch.inf, beta / (1 - beta).clamp_min(1e-300))
    return float("inf") if beta >= 1 else beta / (1 - beta)


def _check_beta(beta: Beta) -> None:
    bad = (beta < 0) | (beta > 1) if isinstance(beta, torch.Tensor) else not 0 <= beta <= 1
    if bool(bad.any() if isinstance(bad, torch.Tensor) else bad):
        raise ValueError(f"beta must lie in [0, 1], got {beta}")


def _split_beta(beta: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_hard, eta) with shape (..., 1) broadcastable against s; eta finite everywhere.

    The beta = 1 entries get a placeholder eta of 1 so that the soft branch (masked out for
    them by the caller) never produces inf * 0 = NaN, neither in values nor in gradients.
    """
    beta = beta.to(s.dtype).unsqueeze(-1)  # (..., 1)
    is_hard = beta >= 1
    safe = torch.where(is_hard, torch.full_like(beta, 0.5), beta)
    return is_hard, safe / (1 - safe)


def beta_vq(s: torch.Tensor, beta: Beta) -> torch.Tensor:
    """beta-VQ (Thm. 3, eq. 9): T_beta[..., r] = softmax_r(beta / (1 - beta) * s[..., r]).

    The unique optimum of problem (8) over the simplex. beta = 1 gives HVQ exactly (the
    limit), beta = 1/2 SVQ, beta = 0 the uniform T = 1/R; smooth and differentiable in beta
    on (0, 1). s: (..., R) -> (..., R).
    """
    _check_beta(beta)
    if not isinstance(beta, torch.Tensor):
        return hard_vq(s) if beta == 1 else torch.softmax((beta / (1 - beta)) * s, dim=-1)
    is_hard, eta = _split_beta(beta, s)
    soft = torch.softmax(eta * s, dim=-1)  # (..., R)
    return torch.where(is_hard, hard_vq(s), soft) if bool(is_hard.any()) else soft


def maso_output(s: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """MASO output under a VQ matrix (eq. 2): z[...] = sum_r T[..., r] * s[..., r]."""
    return (T * s).sum(dim=-1)


def beta_vq_objective(t: torch.Tensor, s: torch.Tensor, beta: Beta) -> torch.Tensor:
    """Objective of (8): beta * <t, s> + (1 - beta) * H(t), H the Shannon entropy (nats)."""
    entropy = -torch.special.xlogy(t, t).sum(dim=-1)
    return beta * (t * s).sum(dim=-1) + (1 - beta) * entropy


def beta_vq_value(s: torch.Tensor, beta: Beta) -> torch.Tensor:
    """Optimal value of (8): (1 - beta) * logsumexp_r(eta * s[..., r]), eta = beta/(1-beta).

    Written as beta * max_r s + (1 - beta) * log sum_r exp(eta * (s - max_r s)), which is
    finite for every beta in [0, 1]: max_r s at beta = 1, log R at beta = 0. s: (..., R) -> (...).
    """
    _check_beta(beta)
    m = s.amax(dim=-1, keepdim=True)  # (..., 1)
    if not isinstance(beta, torch.Tensor):
        if beta == 1:
            return m.squeeze(-1)
        eta = beta / (1 - beta)
        return beta * m.squeeze(-1) + (1 - beta) * torch.logsumexp(eta * (s - m), dim=-1)
    _, eta = _split_beta(beta, s)
    b = beta.to(s.dtype)
    return b * m.squeeze(-1) + (1 - b) * torch.logsumexp(eta * (s - m), dim=-1)
