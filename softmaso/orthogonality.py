"""Orthogonal filters: the penalty, the exact reparametrisation and the diagnostics (Sec. 5).

Under the orthogonality condition (11), <A[k, r, :], A[k', r', :]> = 0 for all units k != k',
the joint posterior of a layer's units factorises (Thm. 4) and the joint MAP is the per-unit
MAP (Cor. 1). A conv layer's filters W (C_out, C_in, kh, kw) are taken as rows W_k of length
n = C_in * kh * kw (as the authors' code did; the paper does not say how overlapping positions
enter); G = W W^T is their Gram matrix. This module gives

* ``penalty``: sum_{k != k'} <W_k, W_k'>^2 per layer, added to the loss with weight lambda
  (eq. 11, Table 2; ``ortho.mode: penalty``), and Bansal et al.'s ``so`` and ``srip`` terms;
* ``Orthonormal``: the exact variant of Sec. 5, a differentiable Gram-Schmidt
  reparametrisation (``ortho.mode: exact``). Where C_out > n the rows cannot be orthogonal
  (largeCNN's first layer: 96 filters of 27 values), so the columns are made orthonormal;
* ``HammingApodize``: App. B's apodised filters (``ortho.apodize``);
* ``layer_diagnostics``: how far each layer is from (11), logged per epoch.

The plural functions (``gram_penalties``, ``orthogonality_errors``, ``orthonormalise``, ...)
take one weight, (C_out, C_in, kh, kw) or (C_out, n), or a stack of G same-shaped weights,
(G, C_out, ...), and give one value per weight (batched linear algebra).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from softmaso.config import OrthoConfig

Method = Literal["cholesky", "qr"]
CL = torch.channels_last


# ------------------------------------------------------------------------------- penalty
def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class _OffDiagonalEnergy(torch.autograd.Function):
    """Rows r (..., m, n) -> (...,) sum_{k != k'} <r_k, r_k'>^2, backward by hand.

    With G = r r^T and O = G - diag(G): d/dr sum O^2 = 4 O r, one matmul where autograd
    would take two (r appears on both sides of the Gram product).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        gram = rows @ rows.mT  # (..., m, m)
        off = gram - torch.diag_embed(gram.diagonal(dim1=-2, dim2=-1))  # zero diagonals
        ctx.save_for_backward(rows, off)
        return (off * off).sum(dim=(-2, -1))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rows, off = ctx.saved_tensors
        return off * (4 * grad)[..., None, None] @ rows  # (..., m, n)


def gram_penalties(w: torch.Tensor) -> torch.Tensor:
    """(G,) sum_{k != k'} <W_k, W_k'>^2 of each weight's filters (eq. 11).

    Summed from the off-diagonal Gram entries rather than as ||W W^T||_F^2 - sum_k ||W_k||^4:
    never negative, no cancellation when the filters are nearly orthogonal. In fp32 or fp64
    even under autocast.
    """
    with torch.autocast(w.device.type, enabled=False):
        rows, _ = filter_rows(at_least_fp32(w))  # (G, C_out, n)
        return _OffDiagonalEnergy.apply(rows)


def gram_penalty(w: torch.Tensor) -> torch.Tensor:
    """:func:`gram_penalties` of one run's weight (C_out, ...), a 0-dim tensor."""
    return gram_penalties(w)[0]


def penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum over layers of :func:`gram_penalty` (0-dim tensor; 0.0 for no layers)."""
    return _summed(gram_penalty, weights)


def _summed(term: Callable[[torch.Tensor], torch.Tensor], weights: Iterable[torch.Tensor]):
    """sum over layers of a loss term (0-dim tensor; 0.0 for no layers)."""
    terms = [term(w) for w in weights]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _narrow(flat: torch.Tensor) -> torch.Tensor:
    """(..., C_out, n) -> the rows, or the columns where C_out > n (what ``exact`` makes
    orthonormal there): (..., m, n') with m <= n'."""
    return flat.mT if flat.shape[-2] > flat.shape[-1] else flat


def _gram_minus_eye(flat: torch.Tensor) -> torch.Tensor:
    """G - I for the Gram matrix G of :func:`_narrow` (flat), flat (..., C_out, n)."""
    narrow = _narrow(flat)
    gram = narrow @ narrow.mT
    return gram - torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)


def orthogonality_errors(w: torch.Tensor) -> torch.Tensor:
    """(G,) mean over k != k' of cos^2(W_k, W_k') of each weight's filters: 0 when orthogonal,
    1 when all parallel.

    Where C_out > n the columns of W (C_out, n) are measured instead (what ``exact`` enforces
    there: 0 then means W^T W is diagonal). A zero filter counts as orthogonal to everything.
    """
    with torch.autocast(w.device.type, enabled=False):
        flat = _narrow(stacked_rows(at_least_fp32(w)))  # (G, m, n)
        m = flat.shape[1]
        if m < 2:
            return flat.new_zeros(flat.shape[0])
        tiny = torch.finfo(flat.dtype).tiny
        unit = flat / flat.norm(dim=2, keepdim=True).clamp_min(tiny)  # (G, m, n)
        cos = unit @ unit.mT  # (G, m, m)
        off = cos - torch.diag_embed(cos.diagonal(dim1=-2, dim2=-1))
        return (off * off).sum(dim=(1, 2)) / (m * (m - 1))


def orthogonality_error(w: torch.Tensor) -> torch.Tensor:
    """:func:`orthogonality_errors` of one run's weight (C_out, ...), a 0-dim tensor."""
    return orthogonality_errors(w)[0]


def orthonormality_errors(w: torch.Tensor) -> torch.Tensor:
    """(G,) float64 max |Q Q^T - I| over each weight's flattened filters Q (C_out, n), or their
    columns when C_out > n: how far from orthonormal ``exact``'s weight is (0 up to rounding)."""
    return _gram_minus_eye(stacked_rows(w.detach()).double()).abs().amax(dim=(1, 2))


def orthonormality_error(w: torch.Tensor) -> float:
    """:func:`orthonormality_errors` of one run's weight, as a float."""
    return orthonormality_errors(w)[0].item()


# -------------------------------------------------------------- exact reparametrisation
def is_stack(w: torch.Tensor) -> bool:
    """Whether `w` is a stack of weights (3-D or 5-D) rather than one linear (2-D) or conv
    (4-D) weight."""
    if w.dim() not in (2, 3, 4, 5):
        raise ValueError(f"a weight is 2-D or 4-D, a stack of them 3-D or 5-D; got {w.dim()}-D")
    return w.dim() in (3, 5)


def stacked_rows(w: torch.Tensor) -> torch.Tensor:
    """(G, C_out, n) flattened filters in canonical (C_in, kh, kw) order; G = 1 for one weight."""
    return w.flatten(2) if is_stack(w) else w.reshape(1, w.shape[0], -1)


def filter_rows(w: torch.Tensor) -> tuple[torch.Tensor, Callable]:
    """w's filters as (G, C_out, n) rows, and the map that puts such rows back into w's shape
    and memory layout.

    No copy where w's layout allows one: a row's entries come in memory order, (kh, kw, C_in)
    for a channels_last weight (or stack of them). Gram matrices of rows, and so the penalty
    and the Gram-Schmidt of rows, do not depend on that order.
    """
    stack = w if is_stack(w) else w[None]
    if stack.dim() == 5 and stack.stride(2) == 1 and not stack.is_contiguous():
        g, c_out, c_in, kh, kw = stack.shape
        rows = stack.permute(0, 1, 3, 4, 2).reshape(g, c_out, -1)  # a view
        back = lambda r: r.reshape(g, c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)  # noqa: E731
    else:
        rows = stack.flatten(2)
        back = lambda r: r.reshape(stack.shape)  # noqa: E731
    if is_stack(w):
        return rows, back
    return rows, lambda r: same_layout(back(r)[0], w)


def _lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """(..., m, m) lower triangular -> its inverse (a small solve; applying it is a matmul)."""
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    return torch.linalg.solve_triangular(lower, eye, upper=False)


def _householder(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., m, n) -> q, L^{-1}: a^T = q^T L^T by Householder QR, signs so that diag(L) > 0."""
    q, r = torch.linalg.qr(a.mT)  # a^T = q r: q (..., n, m), r (..., m, m) upper
    sign = torch.where(r.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(a.dtype)  # (..., m)
    lower = (r * sign.unsqueeze(-1)).mT  # L = (S r)^T, S = diag(sign), S^2 = I
    return (q * sign.unsqueeze(-2)).mT, _lower_inverse(lower)


# The products below compute a symmetric product from three of its four (m/2)-blocks, or
# skip a triangle's zero block: 3/4 of the multiply-adds, which pays for largeCNN's wide
# layers on a CPU (``softmaso bench``); the triangles' products only from this size on (below,
# one full product beats two: call overhead).
_BLOCKED_MIN_MACS = 1 << 24


def _blocked(x: torch.Tensor) -> bool:
    m, n = x.shape[-2:]
    return m * m * n >= _BLOCKED_MIN_MACS


def _gram(a: torch.Tensor) -> torch.Tensor:
    """(..., m, n) -> a a^T (..., m, m), its top-right block the transpose of the bottom-left."""
    h = a.shape[-2] // 2
    top = a[..., :h, :]  # (..., h, n)
    corner = top @ top.mT  # (..., h, h)
    bottom = a[..., h:, :] @ a.mT  # (..., m - h, m)
    return torch.cat([torch.cat([corner, bottom[..., :h].mT], dim=-1), bottom], dim=-2)


def _lower_times(lower: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """lower (..., m, m) lower triangular @ x (..., m, n)."""
    if not _blocked(x):
        return lower @ x
    h = lower.shape[-1] // 2
    top = lower[..., :h, :h] @ x[..., :h, :]  # (..., h, n)
    return torch.cat([top, lower[..., h:, :] @ x], dim=-2)


def _upper_times(upper: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """upper (..., m, m) upper triangular @ x (..., m, n)."""
    if not _blocked(x):
        return upper @ x
    h = upper.shape[-1] // 2
    top = upper[..., :h, :] @ x  # (..., h, n)
    return torch.cat([top, upper[..., h:, h:] @ x[..., h:, :]], dim=-2)


def _lower_of_product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x y^T (..., m, m) for x, y (..., m, n), exact on and below the diagonal (its top-right
    block zero where blocks pay)."""
    if not _blocked(x):
        return x @ y.mT
    h = x.shape[-2] // 2
    corner = x[..., :h, :] @ y[..., :h, :].mT  # (..., h, h)
    top = torch.cat([corner, corner.new_zeros(*corner.shape[:-1], y.shape[-2] - h)], dim=-1)
    return torch.cat([top, x[..., h:, :] @ y.mT], dim=-2)


def _cholesky(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., m, n) -> q, L^{-1}: L L^T = a a^T by Cholesky of the float64 Gram, q = L^{-1} a.

    Mixed-precision Cholesky-QR: Gram and factor in float64, L^{-1} applied in a's precision,
    so rows come out orthonormal to about eps * cond(a) (float32: ~1e-7 for largeCNN's layers,
    ~1e-5 for its square 1x1 layer at init). Where cond(a) nears 1e8 the factorisation fails
    and q is NaN, which the trainer reports as diverged.
    """
    lower, info = torch.linalg.cholesky_ex(_gram(a.to(torch.float64)))  # (..., m, m); no sync
    lower = lower.masked_fill((info > 0)[..., None, None], float("nan"))
    l_inv = _lower_inverse(lower).to(a.dtype)  # (..., m, m)
    return _lower_times(l_inv, a), l_inv


_FACTOR = {"qr": _householder, "cholesky": _cholesky}


class _GramSchmidt(torch.autograd.Function):
    """Rows of a (..., m, n), m <= n -> q (..., m, n): a = L q, L lower triangular with
    diag(L) > 0, q q^T = I: classical Gram-Schmidt of the rows, continuous in a.

    Backward by hand, the reduced-QR adjoint written for rows, with L^{-1} kept from the
    forward so that it is products only, no solve: with M = dq q^T and
    sym(M) = tril(M) + tril(M, -1)^T, da = L^{-T} (dq - sym(M) q).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, method: Method) -> torch.Tensor:
        q, l_inv = _FACTOR[method](a)
        ctx.save_for_backward(q, l_inv)
        return q

    @staticmethod
    @once_differentiable
    def backward(ctx, dq: torch.Tensor):
        q, l_inv = ctx.saved_tensors  # (G, m, n), (G, m, m)
        low = _lower_of_product(dq, q).tril()  # tril(M), M = dq q^T: (G, m, m)
        sym = low + low.tril(-1).mT
        return _upper_times(l_inv.mT, dq - sym @ q), None


def orthonormalise(w: torch.Tensor, method: Method = "cholesky") -> torch.Tensor:
    """Gram-Schmidt of each weight's filters (rows) if C_out <= n, else of its columns, with
    w's shape, dtype and layout (a stack with orthonormal columns comes back contiguous: the
    caller restores its layout). fp32 or fp64 even under autocast.

    Columns are taken in canonical (C_in, kh, kw) order: unlike rows, their Gram-Schmidt
    depends on the order.
    """
    with torch.autocast(w.device.type, enabled=False):
        rows, back = filter_rows(at_least_fp32(w))  # (G, C_out, n)
        if rows.shape[-2] <= rows.shape[-1]:
            return back(_GramSchmidt.apply(rows, method).to(w.dtype))
        cols = stacked_rows(at_least_fp32(w)).mT  # (G, n, C_out)
        q = _GramSchmidt.apply(cols, method).mT  # (G, C_out, n), orthonormal columns
        return same_layout(q.to(w.dtype).reshape(w.shape), w)


def same_layout(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`out` in `like`'s memory format (channels_last weights stay channels_last, so the conv
    does not reorder its weight on every call)."""
    if like.dim() == 4 and like.is_contiguous(memory_format=CL):
        return out.contiguous(memory_format=CL)
    return out


class Orthonormal(nn.Module):
    """Parametrisation: filters -> their Gram-Schmidt orthonormalisation (paper Sec. 5, exact).

    ``forward(w)`` has w's shape, its flattened filters (rows) orthonormal when C_out <= n, its
    columns when C_out > n. `method` (``ortho.method``): "cholesky" (default), matmuls and no
    host synchronisation, orthonormal to ~1e-8 * cond(W) (:func:`_cholesky`); "qr",
    Householder (LAPACK on the CPU), to float32 rounding for any full-rank W, but slower.
    """

    def __init__(self, *, method: Method = "cholesky"):
        super().__init__()
        if method not in _FACTOR:
            raise ValueError(f"method must be one of {sorted(_FACTOR)}, got {method!r}")
        self.method = method

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return orthonormalise(w, self.method)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Assigning an orthonormal weight stores it as is (forward maps it to itself)."""
        return w

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


def sgs_reference(w: torch.Tensor) -> torch.Tensor:
    """The authors' approach, for benchmarks: a python loop of classical Gram-Schmidt over the
    filters (the columns where C_out > n); differentiable, :class:`Orthonormal`'s output up to
    rounding."""
    flat = w.reshape(w.shape[0], -1)  # (C_out, n)
    tall = flat.shape[0] > flat.shape[1]
    done: list[torch.Tensor] = []
    for v in flat.T if tall else flat:  # v: (n,)
        u = v
        if done:
            q = torch.stack(done)  # (k, n)
            u = v - q.T @ (q @ v)  # classical: coefficients from the original v
        done.append(u / u.norm())
    out = torch.stack(done)  # (m, n), m <= n
    return (out.T if tall else out).reshape(w.shape)


# ------------------------------------------------------------------------- apodisation
class HammingApodize(nn.Module):
    """Parametrisation: centre each filter, then window it (paper App. B, ``ortho.apodize``).

    Each filter (C_in, kh, kw) has its mean over its entries subtracted, then is multiplied by
    outer(h(kh), h(kw)) normalised to max 1, h the symmetric Hamming window (``np.hamming``).
    Our reading of the authors' "multiply by a normalised 2-D Hamming window and centre": for
    3x3 the window is [.08, 1, .08] x [.08, 1, .08]; a 1x1 kernel is left unwindowed.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        centred = w - w.mean(dim=(1, 2, 3), keepdim=True)  # (C_out, C_in, kh, kw)
        kwargs = {"periodic": False, "dtype": w.dtype, "device": w.device}
        kh, kw = w.shape[2:]
        win = torch.outer(torch.hamming_window(kh, **kwargs), torch.hamming_window(kw, **kwargs))
        return centred * (win / win.max())  # (kh, kw) window, max 1


# --------------------------------------------------------------------------- the trainer
def apply_orthogonality(convs: Sequence[nn.Module], cfg: OrthoConfig) -> None:
    """Register cfg's parametrisations on each module's ``weight``: apodise, then orthonormalise.

    Afterwards ``module.weight`` is the effective weight (the raw one lives in
    ``module.parametrizations.weight.original``). Nothing happens for ``none``/``penalty``
    without ``apodize``. Calling it again with the same cfg is a no-op; with another, an error.
    """
    for module in convs:
        chain: list[nn.Module] = [HammingApodize()] if cfg.apodize else []
        if cfg.mode == "exact":
            chain.append(Orthonormal(method=cfg.method))
        elif cfg.mode == "torch":
            chain.append(TorchOrthogonal(module.weight))
        register_chain(module, chain)


def _described(chain: Iterable[nn.Module]) -> list[str]:
    return [f"{type(p).__name__}({p.extra_repr()})" for p in chain]


def register_chain(module: nn.Module, chain: list[nn.Module]) -> None:
    """Register parametrisations `chain` on module.weight, in order; a no-op if already there,
    an error if a different chain is."""
    registered = parametrize.is_parametrized(module, "weight")
    have = _described(module.parametrizations["weight"]) if registered else []
    want = _described(chain)
    if have == want:
        return
    if have:
        raise ValueError(f"{type(module).__name__}.weight already has {have}; wanted {want}")
    for p in chain:
        parametrize.register_parametrization(module, "weight", p)


def ortho_loss(convs: Sequence[nn.Module], cfg: OrthoConfig) -> torch.Tensor | None:
    """cfg.weight * the loss term of ``penalty``, ``so`` or ``srip`` over the effective
    weights; None for the other modes."""
    term = LOSS_TERMS.get(cfg.mode)
    if term is None:
        return None
    return cfg.weight * _summed(term, (m.weight for m in convs))


class Penalty(NamedTuple):
    """The loss term of :func:`ortho_loss`, unweighted, on named weights, to be computed from
    the tensors a step's forward uses (a compiled step's inputs). Plain values only, so a
    compiled step reuses its code for every run of a structure, whatever its ``ortho.weight``."""

    names: tuple[str, ...]
    term: Callable[[torch.Tensor], torch.Tensor]


COMPILED_TERMS = ("penalty", "so")  # srip draws its start vector outside a compiled graph


def penalty_of(model: nn.Module, convs: Sequence[nn.Module], cfg: OrthoConfig) -> Penalty | None:
    """The :class:`Penalty` of `convs` (modules of `model`) where it can be computed from the
    model's parameters inside a compiled step: ``penalty`` and ``so`` on plain weights. None
    otherwise (no loss term, ``srip``, or apodised filters, which are not parameters):
    :func:`ortho_loss` then serves."""
    if cfg.mode not in COMPILED_TERMS or any(parametrize.is_parametrized(m) for m in convs):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    return Penalty(tuple(names[id(m.weight)] for m in convs), LOSS_TERMS[cfg.mode])


def penalty_value(p: Penalty, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The unweighted term on `tensors` (name -> tensor, as ``named_parameters``)."""
    return _summed(p.term, (tensors[n] for n in p.names))


def _gram_minus_identity(w: torch.Tensor) -> torch.Tensor:
    """G - I for the Gram matrix G of w's filters, or of their columns where C_out > n (the
    identity is then the attainable target; Bansal et al.'s double soft orthogonality
    penalises both, and only this half can reach zero)."""
    with torch.autocast(w.device.type, enabled=False):
        return _gram_minus_eye(at_least_fp32(w).reshape(w.shape[0], -1))


def soft_orthogonality(w: torch.Tensor) -> torch.Tensor:
    """SO (Bansal et al., NeurIPS 2018): ||G - I||_F^2, a 0-dim tensor."""
    return _gram_minus_identity(w).square().sum()


SRIP_ITERATIONS = 2  # [Bansal et al.: two power iterations per step]


def srip(w: torch.Tensor) -> torch.Tensor:
    """SRIP (Bansal et al., NeurIPS 2018): the spectral norm of G - I, by power iterations.

    The start vector is the same at every step (drawn once from a fixed seed), not fresh random
    as in their code, so that a resumed run draws nothing a straight one would not.
    """
    m = _gram_minus_identity(w)
    v = _srip_start(m.shape[0], m.dtype, m.device)
    for _ in range(SRIP_ITERATIONS):
        u = m @ v
        v = u / u.norm().clamp_min(1e-12)
    return (m @ v).norm()


@functools.cache
def _srip_start(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SRIP's start vector (n, 1): drawn once per size from a fixed seed, then reused."""
    g = torch.Generator(device="cpu").manual_seed(n)
    return torch.randn(n, 1, generator=g, dtype=dtype).to(device)


LOSS_TERMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "penalty": gram_penalty,
    "so": soft_orthogonality,
    "srip": srip,
}


class TorchOrthogonal(nn.Module):
    """Parametrisation: conv filters from ``torch.nn.utils.parametrizations.orthogonal`` (ortho
    mode ``torch``), a second exact method beside :class:`Orthonormal`.

    torch's parametrisation orthogonalises a matrix, so it is registered on a (C_out, n) matrix
    held here (its transpose where C_out > n, as ``exact``), started from the conv's initial
    filters; the conv's own weight is then unused. torch's default map: Householder reflectors
    for a non-square matrix, the matrix exponential for a square one (largeCNN's 1x1 conv8).
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        from torch.nn.utils.parametrizations import orthogonal

        self.shape = tuple(weight.shape)
        flat = weight.detach().reshape(self.shape[0], -1)
        self.wide = flat.shape[0] > flat.shape[1]
        self.matrix = nn.Linear(1, 1, bias=False)  # a holder for the parametrised matrix
        self.matrix.weight = nn.Parameter((flat.T if self.wide else flat).clone())
        orthogonal(self.matrix, "weight")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = self.matrix.weight
        return same_layout((q.T if self.wide else q).reshape(self.shape), w)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


# What each orthogonality mode acts on, logged per layer beside the common ``ortho_error``:
# the penalty shrinks the off-diagonal energy of the ROWS (filters), even where rows cannot be
# orthogonal (conv1: more filters than values per filter), and may do so by shrinking the
# filters (batch norm then undoes the scale); exact makes rows, or there columns, orthonormal.
DIAGNOSTICS = ("ortho_error", "row_energy", "filter_norm", "orthonormality")


@torch.no_grad()
def layer_diagnostics(
    weights: Sequence[torch.Tensor], names: Sequence[str]
) -> list[dict[str, dict[str, float]]]:
    """Per network, {statistic: {layer name: value}}: one network's weights give one dict,
    stacks of G networks' weights (G, C_out, ...) give G. One host sync for all of them.

    - ``ortho_error``: :func:`orthogonality_errors`, scale-free, comparable across modes;
    - ``row_energy``: the penalty's term of the rows (eq. 11, :func:`gram_penalties`);
    - ``filter_norm``: mean ||W_k|| of the filters (the penalty can lower eq. 11 this way);
    - ``orthonormality``: :func:`orthonormality_errors` (what ``exact`` enforces: ~1e-7 there,
      large for the other modes).
    """
    per_layer = []
    for w in weights:
        with torch.autocast(w.device.type, enabled=False):
            flat = stacked_rows(at_least_fp32(w))  # (G, C_out, n)
            stats = [
                orthogonality_errors(w).double(),
                gram_penalties(w).double(),
                flat.norm(dim=2).mean(dim=1).double(),
                orthonormality_errors(w),
            ]  # 4 x (G,)
        per_layer.append(torch.stack(stats, dim=1))  # (G, 4)
    table = torch.stack(per_layer, dim=1).tolist()  # (G, L, 4)
    return [
        {stat: {n: run[i][j] for i, n in enumerate(names)} for j, stat in enumerate(DIAGNOSTICS)}
        for run in table
    ]
