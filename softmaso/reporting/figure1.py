"""The paper's Figure 1: ReLU, absolute value and a convex max-affine unit under beta-VQ.

For each panel's MASO spec the curve for a given beta is the MASO output (eq. 2) with T_beta,
or, with ``value=True``, the optimal value of problem (8). HVQ (beta = 1) is drawn solid
black, SVQ (beta = 1/2) dashed black, the requested betas in red.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmaso.errors import UserError
from softmaso.theory.specs import MaxAffineSpec, absolute, parse_pieces, relu

DEFAULT_BETAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_PIECES = "-0.5:-0.5,0.3:0,1.5:-1.2"  # our choice: 3 pieces, kinks at u = -0.625 and 1
HVQ, SVQ = 1.0, 0.5


@dataclass(frozen=True)
class Figure1Spec:
    """Validated inputs of Figure 1 (build it with :func:`figure1_spec`)."""

    betas: tuple[float, ...]
    convex: MaxAffineSpec
    x_min: float
    x_max: float
    points: int
    value: bool

    @property
    def panels(self) -> dict[str, MaxAffineSpec]:
        return {"relu": relu(), "abs": absolute(), "convex": self.convex}

    @property
    def stem(self) -> str:
        return "figure1-value" if self.value else "figure1"


MIN_POINTS, MAX_POINTS = 2, 100_000  # per curve: a figure is ~1000 pixels wide [ours]
MAX_ABS_X = 1e6  # beyond it the curves are flat lines and float64 scores lose their digits


def save_figure(fig, path, fmt: str) -> None:
    """Save without a date or a version in the file (PDF CreationDate, producer; PNG
    software), so the same figure is the same bytes whenever it is drawn again."""
    metadata = {
        "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
        "png": {"Software": None},
    }[fmt]
    fig.savefig(path, format=fmt, dpi=150 if fmt == "png" else "figure", metadata=metadata)


def save_figures(figures: dict[Path, Any], also=()) -> list[Path]:
    """Write each figure as STEM.png and STEM.pdf ({STEM: figure}), and `also`'s (path,
    writer) files: all appear, or none. Closes the figures."""
    import matplotlib.pyplot as plt

    from softmaso.io import atomic_group

    paths = []
    try:
        with atomic_group() as stage:
            for stem, fig in figures.items():
                for fmt in ("png", "pdf"):
                    paths.append(stem.parent / f"{stem.name}.{fmt}")
                    stage(paths[-1], lambda tmp, fig=fig, fmt=fmt: save_figure(fig, tmp, fmt))
            for path, writer in also:
                paths.append(path)
                stage(path, writer)
    finally:
        for fig in figures.values():
            plt.close(fig)
    return paths


def figure1_spec(
    betas: Sequence[float] | None = None,
    pieces: str | None = None,
    x_min: float = -3.0,
    x_max: float = 3.0,
    points: int = 401,
    value: bool = False,
) -> Figure1Spec:
    """Validate every input (UserError naming the option) before anything is computed."""
    betas = tuple(betas or DEFAULT_BETAS)
    for b in betas:
        if not 0 <= b <= 1:
            raise UserError("--beta", f"{b:g} is outside [0, 1]; beta must lie in [0, 1]")
    if not MIN_POINTS <= points <= MAX_POINTS:
        raise UserError(
            "--points", f"{points} points per curve; {MIN_POINTS} to {MAX_POINTS:,} can be drawn"
        )
    for where, x in (("--x-min", x_min), ("--x-max", x_max)):
        if not math.isfinite(x) or abs(x) > MAX_ABS_X:
            raise UserError(
                where, f"{x:g} cannot be drawn; give a finite value within ±{MAX_ABS_X:g}"
            )
    if not x_min < x_max:
        raise UserError(
            "--x-min/--x-max", f"empty x range [{x_min:g}, {x_max:g}]; need x-min < x-max"
        )
    if pieces is not None and not pieces.strip():
        raise UserError("--pieces", "is empty; give slope:offset pieces, e.g. '-1:0,1:0'")
    convex = parse_pieces(pieces or DEFAULT_PIECES)
    return Figure1Spec(betas, convex, float(x_min), float(x_max), int(points), value)


def curves(spec: Figure1Spec):
    """Tidy DataFrame with columns panel, beta, x, y: HVQ, SVQ and every requested beta."""
    import pandas as pd
    import torch

    from softmaso.theory.vq import beta_vq, beta_vq_value, maso_output

    x = torch.linspace(spec.x_min, spec.x_max, spec.points, dtype=torch.float64)
    betas = sorted({HVQ, SVQ, *spec.betas}, reverse=True)
    frames = []
    for panel, maso in spec.panels.items():
        s = maso.scores(x)  # (points, R)
        for b in betas:
            y = beta_vq_value(s, b) if spec.value else maso_output(s, beta_vq(s, b))
            frames.append(pd.DataFrame({"panel": panel, "beta": b, "x": x.numpy(), "y": y.numpy()}))
    return pd.concat(frames, ignore_index=True)


TITLES = {"relu": "ReLU", "abs": "absolute value", "convex": "convex max-affine"}


def plot(spec: Figure1Spec, df):
    """Three panels; returns the matplotlib Figure (Agg backend, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    reds = sorted(set(spec.betas))
    cmap = matplotlib.colormaps["Reds"]
    for ax, (panel, maso) in zip(axes, spec.panels.items(), strict=True):
        sub = df[df.panel == panel]
        for i, b in enumerate(reds):
            c = sub[sub.beta == b]
            shade = cmap(0.45 + 0.5 * (i / max(len(reds) - 1, 1)))
            ax.plot(c.x, c.y, color=shade, lw=1.3, label=f"β = {b:g}")
        hard, soft = sub[sub.beta == HVQ], sub[sub.beta == SVQ]
        ax.plot(hard.x, hard.y, color="black", lw=2.0, label="HVQ (β = 1)")
        ax.plot(soft.x, soft.y, color="black", lw=2.0, ls="--", label="SVQ (β = 1/2)")
        title = TITLES[panel]
        if panel == "convex":
            pieces = ", ".join(
                f"{a:g}u{c:+g}" for a, c in zip(maso.slopes, maso.offsets, strict=True)
            )
            title += f"\nmax({pieces})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pre-activation u")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("optimal value of (8)" if spec.value else "β-VQ output (eq. 2)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=9, frameon=False)
    what = "optimal value of the β-VQ problem (8)" if spec.value else "MASO output under β-VQ"
    fig.suptitle(f"Figure 1 (Balestriero & Baraniuk, ICLR 2019): {what}", fontsize=11)
    return fig


def write_figure1(spec: Figure1Spec, out: Path) -> list[Path]:
    """Write PNG, PDF and CSV under `out` together (all three appear, or none)."""
    from softmaso.io import ensure_writable_dir

    out = ensure_writable_dir(Path(out), where="--out")
    df = curves(spec)
    csv = (out / f"{spec.stem}.csv", lambda tmp: df.to_csv(tmp, index=False))
    return save_figures({out / spec.stem: plot(spec, df)}, also=[csv])
