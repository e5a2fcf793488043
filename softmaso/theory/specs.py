"""Named MASO specs: the scores whose hard VQ gives a familiar nonlinearity (paper-notes 1).

A scalar unit with pre-activation u = <w, x> + b and a convex max-affine nonlinearity
f(u) = max_r (a_r * u + c_r) is a MASO unit with R regions, slopes A[r, :] = a_r * w and
offsets B[r] = a_r * b + c_r, so its scores are s[r] = a_r * u + c_r. A :class:`MaxAffineSpec`
holds (a_r, c_r) and turns pre-activations u (...) into scores (..., R). Max-pooling is the one
spec whose scores are not affine in a scalar u: see :func:`maxpool_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softmaso.errors import UserError


@dataclass(frozen=True)
class MaxAffineSpec:
    """f(u) = max_r (slopes[r] * u + offsets[r]); score of region r: slopes[r] u + offsets[r]."""

    name: str
    slopes: tuple[float, ...]
    offsets: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.slopes) != len(self.offsets) or len(self.slopes) < 2:
            raise ValueError("a max-affine spec needs as many slopes as offsets, at least 2")

    @property
    def regions(self) -> int:
        return len(self.slopes)

    def scores(self, u: torch.Tensor) -> torch.Tensor:
        """u: (...) pre-activations -> s: (..., R) region scores."""
        a = torch.tensor(self.slopes, dtype=u.dtype, device=u.device)  # (R,)
        c = torch.tensor(self.offsets, dtype=u.dtype, device=u.device)  # (R,)
        return u.unsqueeze(-1) * a + c  # (..., R)

    def as_maso(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slopes and offsets of a layer of such units with weights w (K, D) and biases b (K,).

        Returns A (K, R, D) with A[k, r] = a_r * w[k] and B (K, R) with B[k, r] = a_r * b[k] + c_r,
        so that maso_scores(A, B, x) == self.scores(w @ x + b).
        """
        a = torch.tensor(self.slopes, dtype=w.dtype, device=w.device)  # (R,)
        c = torch.tensor(self.offsets, dtype=w.dtype, device=w.device)  # (R,)
        A = a[None, :, None] * w[:, None, :]  # (K, R, D)
        B = a[None, :] * b[:, None] + c  # (K, R)
        return A, B


def relu() -> MaxAffineSpec:
    """ReLU: scores 0 (inactive region, slope 0) and u (active region, slope w)."""
    return MaxAffineSpec("relu", (0.0, 1.0), (0.0, 0.0))


def leaky_relu(a: float) -> MaxAffineSpec:
    """Leaky ReLU with negative slope a (0 <= a < 1): scores a*u and u."""
    return MaxAffineSpec(f"leaky_relu({a:g})", (float(a), 1.0), (0.0, 0.0))


def absolute() -> MaxAffineSpec:
    """Absolute value: scores -u and u."""
    return MaxAffineSpec("abs", (-1.0, 1.0), (0.0, 0.0))


def max_affine(slopes, offsets, name: str = "convex") -> MaxAffineSpec:
    """Any convex max-affine f(u) = max_r (slopes[r] * u + offsets[r])."""
    return MaxAffineSpec(name, tuple(float(a) for a in slopes), tuple(float(c) for c in offsets))


def maxpool_scores(x: torch.Tensor, kernel_size: int, stride: int | None = None) -> torch.Tensor:
    """Max-pooling as a MASO: window (i, j)'s R = kernel_size**2 scores are its inputs.

    x: (N, C, H, W) -> s: (N, C, H', W', R), with H' = (H - k) // stride + 1 (no padding).
    Hard VQ of these scores is max-pooling, soft VQ softmax-pooling (Prop. 4).
    """
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    cols = F.unfold(x, kernel_size, stride=stride)  # (N, C*k*k, L)
    h_out = (h - kernel_size) // stride + 1
    w_out = (w - kernel_size) // stride + 1
    cols = cols.view(n, c, kernel_size * kernel_size, h_out, w_out)  # (N, C, R, H', W')
    return cols.permute(0, 1, 3, 4, 2)  # (N, C, H', W', R)


def parse_pieces(text: str, *, where: str = "--pieces") -> MaxAffineSpec:
    """Parse "a1:c1,a2:c2,..." into f(u) = max_r (a_r u + c_r), pieces listed left to right.

    Every f of this form is convex; what can go wrong is the list itself. It must give each
    piece's slope a_r and offset c_r in the order the pieces appear from left to right, as one
    reads a convex piecewise-linear graph: slopes strictly increasing, and kinks (where piece r
    meets piece r + 1) strictly increasing, so that every piece is the maximum somewhere. A list
    that breaks either rule does not describe a convex function piece by piece.
    """
    items = [p.strip() for p in text.split(",")]
    if len(items) < 2:
        raise UserError(where, f"{text!r} has {len(items)} piece; give at least 2 as 'a1:c1,a2:c2'")
    slopes, offsets = [], []
    for i, item in enumerate(items, start=1):
        parts = item.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            a, c = float(parts[0]), float(parts[1])
        except ValueError:
            raise UserError(
                where,
                f"piece {i} {item!r} is malformed; each piece is 'slope:offset', e.g. '0.5:-1'",
            ) from None
        if a != a or c != c or abs(a) == float("inf") or abs(c) == float("inf"):
            raise UserError(where, f"piece {i} {item!r} is not finite")
        slopes.append(a)
        offsets.append(c)
    for r in range(1, len(slopes)):
        if slopes[r] <= slopes[r - 1]:
            raise UserError(
                where,
                f"not convex: piece {r + 1} slope {slopes[r]:g} <= piece {r} slope "
                f"{slopes[r - 1]:g}; list pieces left to right with strictly increasing slopes",
            )
    kinks = [
        (offsets[r] - offsets[r + 1]) / (slopes[r + 1] - slopes[r]) for r in range(len(slopes) - 1)
    ]
    for r in range(1, len(kinks)):
        if kinks[r] <= kinks[r - 1]:
            raise UserError(
                where,
                f"not convex: piece {r + 1} is never the maximum (it meets piece {r} at "
                f"u = {kinks[r - 1]:g}, after it meets piece {r + 2} at u = {kinks[r]:g}); "
                f"kinks must increase left to right",
            )
    return max_affine(slopes, offsets, name="convex")
