"""Orthogonal filters: the penalty, the exact reparametrisation and the diagnostics (Sec. 5).

Under the orthogonality condition (11), <A[k, r, :], A[k', r', :]> = 0 for all units k != k',
the joint posterior of a layer's K units factorises (Thm. 4) and the joint MAP is the
per-unit MAP (Cor. 1). For a conv layer with filters W (C_out, C_in, kh, kw), flattened to
rows W_k of length n = C_in * kh * kw (the authors' code penalised this Gram matrix; the paper
does not say how overlapping positions enter), this module gives

* ``penalty``: sum_{k != k'} <W_k, W_k'>^2 per layer, the term added to the loss with
  weight lambda for Table 2 (eq. 11; ``ortho.mode: penalty``);
* ``Orthonormal``: the exact variant of Sec. 5, a differentiable Gram-Schmidt
  reparametrisation (``ortho.mode: exact``). A C_out x n matrix with C_out > n cannot have
  orthogonal rows (largeCNN's first layer: 96 filters of 27 values); there the columns are
  made orthonormal instead, the closest one can get;
* ``HammingApodize``: App. B's apodised filters (``ortho.apodize``);
* ``orthogonality_error`` / ``layer_errors``: how far a layer is from (11), logged per epoch.

Symbols: W (C_out, n) flattened filters, G = W W^T (C_out, C_out) their Gram matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from softmaso.config import OrthoConfig

Method = Literal["qr", "cholesky"]


# ------------------------------------------------------------------------------- penalty
def flat_filters(w: torch.Tensor) -> torch.Tensor:
    """Conv weight (C_out, C_in, kh, kw) or linear weight (C_out, n) -> (C_out, n) rows W_k."""
    return w.reshape(w.shape[0], -1)


def _float(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _no_autocast(t: torch.Tensor):
    return torch.autocast(t.device.type, enabled=False)


def gram_penalty(w: torch.Tensor) -> torch.Tensor:
    """sum_{k != k'} <W_k, W_k'>^2 = ||W W^T||_F^2 - sum_k ||W_k||^4 (eq. 11), a 0-dim tensor.

    Summed from the off-diagonal Gram entries rather than as the difference above: same value,
    never negative, no cancellation when the filters are nearly orthogonal. In fp32 or fp64
    even under autocast.
    """
    with _no_autocast(w):
        flat = _float(flat_filters(w))  # (C_out, n)
        gram = flat @ flat.T  # (C_out, C_out)
        off = gram - torch.diag_embed(gram.diagonal())  # zero diagonal
        return (off * off).sum()


def penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum over layers of :func:`gram_penalty` (0-dim tensor; 0.0 for no layers)."""
    terms = [gram_penalty(w) for w in weights]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def orthogonality_error(w: torch.Tensor) -> torch.Tensor:
    """Mean over k != k' of cos^2(W_k, W_k'): 0 when orthogonal, 1 when all parallel.

    The off-diagonal energy of the Gram matrix of the unit-normalised filters, in [0, 1].
    If C_out > n the rows cannot be orthogonal, so the columns of W (C_out, n) are measured
    instead: that is what ``exact`` enforces there, and 0 then means W^T W is diagonal.
    A zero filter counts as orthogonal to everything.
    """
    with _no_autocast(w):
        flat = _float(flat_filters(w))  # (C_out, n)
        if flat.shape[0] > flat.shape[1]:
            flat = flat.T  # (n, C_out): measure the columns
        m = flat.shape[0]
        if m < 2:
            return flat.new_zeros(())
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
        cos = unit @ unit.T  # (m, m)
        off = cos - torch.diag_embed(cos.diagonal())
        return (off * off).sum() / (m * (m - 1))


# -------------------------------------------------------------- exact reparametrisation
def _rows_qr(a: torch.Tensor) -> torch.Tensor:
    """(m, n), m <= n -> (m, n) orthonormal rows = classical Gram-Schmidt of the rows of a."""
    q, r = torch.linalg.qr(a.T)  # a^T = q r: q (n, m), r (m, m) upper triangular
    sign = torch.where(r.diagonal() < 0, -1.0, 1.0).to(q.dtype)  # (m,): make diag(r) > 0
    return (q * sign).T  # unique QR with diag(r) > 0 is Gram-Schmidt; continuous in a


def _cholesky_pass(a: torch.Tensor) -> torch.Tensor:
    """One Cholesky-QR pass: a = L q with L lower triangular, diag(L) > 0; returns q (m, n)."""
    gram = a @ a.T  # (m, m)
    chol, _ = torch.linalg.cholesky_ex(gram)  # (m, m); no host sync for the error check
    return torch.linalg.solve_triangular(chol, a, upper=False)  # L^{-1} a: (m, n)


def _rows_cholesky(a: torch.Tensor) -> torch.Tensor:
    """Cholesky-QR2 of the rows: two passes, a = L1 L2 q, so q is again Gram-Schmidt's rows.

    Needs cond(a)^2 * eps < 1 (cond(a) below a few thousand in fp32): a worse W gives NaN,
    which the trainer reports as a diverged run.
    """
    return _cholesky_pass(_cholesky_pass(a))


_ROWS = {"qr": _rows_qr, "cholesky": _rows_cholesky}


def _orthonormalise(w: torch.Tensor, rows_fn) -> torch.Tensor:
    """Shape of w, rows orthonormal if C_out <= n else columns; fp32/fp64 even under autocast."""
    with _no_autocast(w):
        flat = _float(flat_filters(w))  # (C_out, n)
        tall = flat.shape[0] > flat.shape[1]  # more filters than entries: columns instead
        q = rows_fn(flat.T).T if tall else rows_fn(flat)  # (C_out, n): q^T q = I or q q^T = I
        return same_layout(q.to(w.dtype).reshape(w.shape), w)


def same_layout(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`out` in `like`'s memory format (channels_last weights stay channels_last, so the conv
    does not reorder its weight on every call)."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


class Orthonormal(nn.Module):
    """Parametrisation: filters -> their Gram-Schmidt orthonormalisation (paper Sec. 5, exact).

    ``forward(w)`` returns a tensor of w's shape whose flattened filters (rows) are orthonormal
    when C_out <= n, and whose columns are orthonormal when C_out > n. In exact arithmetic it is
    classical Gram-Schmidt of the rows (columns): the QR factor of W^T (W) with diag(R) > 0.

    method "qr": Householder QR (``torch.linalg.qr``), stable for any full-rank W.
    method "cholesky": Cholesky-QR2, matmuls + small Cholesky + triangular solves, meant for
    GPUs (on a CPU it is slower than "qr"); fp32 even under autocast; needs cond(W) below a few
    thousand.
    """

    def __init__(self, *, method: Method = "qr"):
        super().__init__()
        if method not in _ROWS:
            raise ValueError(f"method must be one of {sorted(_ROWS)}, got {method!r}")
        self.method = method

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _orthonormalise(w, _ROWS[self.method])

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Assigning an orthonormal weight stores it as is (forward maps it to itself)."""
        return w

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


def sgs_reference(w: torch.Tensor) -> torch.Tensor:
    """The authors' approach, for benchmarks: a python loop of classical Gram-Schmidt.

    Differentiable; the same output as :class:`Orthonormal` (up to rounding). For C_out > n it
    runs over the columns, like Orthonormal.
    """
    flat = flat_filters(w)  # (C_out, n)
    tall = flat.shape[0] > flat.shape[1]
    vecs = flat.T if tall else flat  # (m, n), m <= n
    done: list[torch.Tensor] = []
    for v in vecs:  # v: (n,)
        u = v
        if done:
            q = torch.stack(done)  # (k, n)
            u = v - q.T @ (q @ v)  # classical: coefficients from the original v
        done.append(u / u.norm())
    out = torch.stack(done)  # (m, n)
    return (out.T if tall else out).reshape(w.shape)


# ------------------------------------------------------------------------- apodisation
def hamming_2d(kh: int, kw: int, *, dtype=None, device=None) -> torch.Tensor:
    """outer(hamming(kh), hamming(kw)) / its max: (kh, kw), max 1; 1x1 -> [[1.]]."""
    kwargs = {"periodic": False, "dtype": dtype, "device": device}
    win = torch.outer(torch.hamming_window(kh, **kwargs), torch.hamming_window(kw, **kwargs))
    return win / win.max()


class HammingApodize(nn.Module):
    """Parametrisation: centre each filter, then window it (paper App. B, ``ortho.apodize``).

    Each filter (C_in, kh, kw) has its mean over its C_in * kh * kw entries subtracted, then is
    multiplied by the symmetric 2-D Hamming window outer(h(kh), h(kw)), h(N)[i] =
    0.54 - 0.46 cos(2 pi i / (N - 1)) (numpy's ``np.hamming``), normalised to max 1. Our reading
    of the authors' option "multiply by a normalised 2-D Hamming window and centre": for 3x3
    the window is [.08, 1, .08] x [.08, 1, .08]; a 1x1 kernel is left unwindowed (window 1).
    The output is centred before windowing, so its windowed mean is not exactly zero.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        centred = w - w.mean(dim=(1, 2, 3), keepdim=True)  # (C_out, C_in, kh, kw)
        return centred * hamming_2d(*w.shape[2:], dtype=w.dtype, device=w.device)  # (kh, kw)


# --------------------------------------------------------------------------- the trainer
def _wanted(cfg: OrthoConfig, method: Method) -> list[nn.Module]:
    chain: list[nn.Module] = [HammingApodize()] if cfg.apodize else []
    if cfg.mode == "exact":
        chain.append(Orthonormal(method=method))
    return chain


def _registered(module: nn.Module) -> list[str]:
    if not parametrize.is_parametrized(module, "weight"):
        return []
    return [type(p).__name__ for p in module.parametrizations["weight"]]


def apply_orthogonality(
    convs: Sequence[nn.Module], cfg: OrthoConfig, *, method: Method = "qr"
) -> None:
    """Register cfg's parametrisations on each module's ``weight``: apodise, then orthonormalise.

    Afterwards ``module.weight`` is the effective weight (the raw one lives in
    ``module.parametrizations.weight.original``). Nothing happens for ``none``/``penalty``
    without ``apodize``. Calling it again with the same cfg is a no-op; with another, an error.
    """
    for module in convs:
        register_chain(module, _wanted(cfg, method))


def register_chain(module: nn.Module, chain: list[nn.Module]) -> None:
    """Register parametrisations `chain` on module.weight, in order; a no-op if already there,
    an error if a different chain is."""
    have, want = _registered(module), [type(p).__name__ for p in chain]
    if have == want:
        return
    if have:
        raise ValueError(f"{type(module).__name__}.weight already has {have}; wanted {want}")
    for p in chain:
        parametrize.register_parametrization(module, "weight", p)


def ortho_loss(convs: Sequence[nn.Module], cfg: OrthoConfig) -> torch.Tensor | None:
    """cfg.weight * penalty of the effective weights for ``penalty`` mode, else None."""
    if cfg.mode != "penalty":
        return None
    return cfg.weight * penalty(m.weight for m in convs)


@torch.no_grad()
def layer_errors(convs: Sequence[nn.Module]) -> list[float]:
    """:func:`orthogonality_error` of each effective weight, as floats (one host sync)."""
    if not convs:
        return []
    return torch.stack([orthogonality_error(m.weight) for m in convs]).tolist()
