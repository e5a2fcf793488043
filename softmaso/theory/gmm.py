"""The Gaussian-mixture side of a MASO (paper Sec. 3, 5; paper-notes sections 2, 5, 6).

SMASO model (3) for unit k: x = A[k, t, :] + eps, eps ~ N(0, sigma^2 I), t ~ Cat(pi[k, :]).
Factorial model (10) for a whole layer: x = sum_k A[k, t_k, :] + eps.

These functions compute posteriors from the Gaussian densities themselves (squared distances,
explicit normalisation), never through the score identities they are used to verify.
"""

from __future__ import annotations

import itertools

import torch


def region_prior(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Thm. 2 prior: pi[k, r] proportional to exp(B[k, r] + ||A[k, r, :]||^2 / 2).

    A: (K, R, D), B: (K, R) -> pi: (K, R), rows on the simplex.
    """
    return torch.softmax(B + 0.5 * (A * A).sum(-1), dim=-1)


def kmeans_offsets(A: torch.Tensor) -> torch.Tensor:
    """Prop. 1 offsets B[k, r] = -||A[k, r, :]||^2 / 2, which make HVQ a K-means assignment."""
    return -0.5 * (A * A).sum(-1)  # (K, R)


def kmeans_assign(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Nearest centroid: argmin_r ||A[k, r, :] - x||. A: (K, R, D), x: (..., D) -> (..., K)."""
    diff = x[..., None, None, :] - A  # (..., K, R, D)
    return (diff * diff).sum(-1).argmin(-1)


def gmm_log_posterior(
    A: torch.Tensor, log_pi: torch.Tensor, x: torch.Tensor, sigma: float = 1.0
) -> torch.Tensor:
    """log p(t_k = r | x) of model (3) with isotropic N(A[k, r], sigma^2 I) components.

    A: (K, R, D), log_pi: (K, R), x: (..., D) -> (..., K, R). Computed from the log density
    -||x - A[k, r]||^2 / (2 sigma^2) + log pi[k, r], normalised over r.
    """
    diff = x[..., None, None, :] - A  # (..., K, R, D)
    log_joint = log_pi - (diff * diff).sum(-1) / (2 * sigma**2)  # (..., K, R)
    return log_joint - torch.logsumexp(log_joint, dim=-1, keepdim=True)


def factorial_joint_posterior(
    A: torch.Tensor, log_pi: torch.Tensor, x: torch.Tensor, sigma: float = 1.0
) -> torch.Tensor:
    """Exact joint posterior p(t_1, ..., t_K | x) of the factorial model (10), by enumeration.

    Enumerates all R^K configurations t (cost exponential in K: keep K * log2(R) <= ~16).
    p(t | x) is proportional to prod_k pi[k, t_k] * N(x; sum_k A[k, t_k, :], sigma^2 I).
    A: (K, R, D), log_pi: (K, R), x: (N, D) -> (N, R, ..., R) with K region axes.
    """
    K, R, _ = A.shape
    configs = torch.tensor(list(itertools.product(range(R), repeat=K)), device=A.device)  # (R^K, K)
    units = torch.arange(K, device=A.device)
    means = A[units, configs].sum(1)  # (R^K, D): sum_k A[k, t_k]
    log_prior = log_pi[units, configs].sum(1)  # (R^K,)
    diff = x[:, None, :] - means  # (N, R^K, D)
    log_joint = log_prior - (diff * diff).sum(-1) / (2 * sigma**2)  # (N, R^K)
    post = torch.softmax(log_joint, dim=-1)
    return post.view(x.shape[0], *([R] * K))


def product_of_marginals(post: torch.Tensor) -> torch.Tensor:
    """Outer product prod_k p(t_k | x) of per-unit posteriors. post: (N, K, R) -> (N, R, ..., R)."""
    n, K, R = post.shape
    out = post[:, 0]
    for k in range(1, K):
        out = (out.unsqueeze(-1) * post[:, k].view(n, *([1] * k), R)).contiguous()
    return out


def joint_map(post: torch.Tensor) -> torch.Tensor:
    """argmax over all R^K configurations of a joint posterior (N, R, ..., R) -> (N, K)."""
    n, R, K = post.shape[0], post.shape[1], post.dim() - 1
    flat = post.reshape(n, -1).argmax(-1)  # (N,)
    digits = [(flat // R ** (K - 1 - k)) % R for k in range(K)]
    return torch.stack(digits, dim=-1)


def maso_orthogonality_penalty(A: torch.Tensor) -> torch.Tensor:
    """Penalty of (11): sum_{k != k'} sum_{r, r'} <A[k, r, :], A[k', r', :]>^2. A: (K, R, D)."""
    K, R, D = A.shape
    flat = A.reshape(K * R, D)
    gram = flat @ flat.T  # (K*R, K*R)
    unit = torch.arange(K, device=A.device).repeat_interleave(R)  # unit index of each row
    cross = unit[:, None] != unit[None, :]
    return (gram[cross] ** 2).sum()
