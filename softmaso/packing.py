"""Packed multi-run training: P largeCNN runs trained as one network, exactly as if apart.

Runs that share the dataset, batch size, epochs and model shape (Table 2: seed x lr x
{none, penalty}, 30 runs per dataset) can take their steps together: one forward and one
backward pass of a P-times wider network with P-way grouped convolutions, instead of P
passes of a network too small to keep a GPU busy at batch 50.

Layout (run-major along the channel axis, P runs, batch B, K classes):

* input (B, P*C_in, H, W): run p's own mini-batch in channels [p*C_in, (p+1)*C_in)
  (:func:`pack_inputs`); each run keeps its own data order, they share only B;
* every conv is grouped (groups=P): filters [p*C_out, (p+1)*C_out) of the packed weight
  (P*C_out, C_in, kh, kw) are run p's filters, and read only run p's input channels;
* batch norm, the activation's per-channel parameters and the classifier's outputs follow
  the same ranges; logits come back as (B, P, K).

Why it is exactly equivalent: a grouped conv computes group p from group p's inputs and
filters only; batch norm, the activations and global average pooling act per channel, and
batch-norm statistics are per channel over (B, H, W), so per run. The loss is
sum_p [mean cross-entropy of run p + lambda_p * penalty_p] (:func:`packed_loss`,
:func:`packed_ortho_loss`); no term depends on two runs' parameters, so the gradient of run
p's slice is run p's own gradient. :class:`PackedAdam` is one torch.optim.Adam per run,
stepping views of run p's slices with run p's learning rate and weight decay. What differs is the
summation order inside the kernels: in float64, after three steps, gradients, weights, BN
statistics, Adam moments and outputs agree with separate training to ~3e-14 of each
tensor's scale (tests/test_packing.py asserts 1e-10); in float32 to rounding, which, as with
any non-bitwise kernel, grows over a long run. (One exception in ``exact`` mode, packed or
not: the raw weights of the last filter of a square layer, e.g. the 1x1 conv, get zero true
gradient, so Adam moves them by rounding noise, ~lr * 1e-16 / eps per step; the
orthonormalised weights they produce do not change.)
Nothing mixes runs, so a run that diverges (NaN) leaves the others untouched.

:func:`unpack_state` splits a pack into per-run ``LargeCNN`` and ``torch.optim.Adam``
state dicts; :func:`pack_state` stacks them back, so a pack starts from seeded single-run
models and resumes from (or hands back to) single-run checkpoints.

Why grouped convolutions by hand and not ``torch.func`` (``stack_module_state`` and
``vmap(functional_call)`` over the single-run model, which computes the same): vmap's batch
norm applies the per-run affine as separate passes, forward and backward, and the whole step
measured 1.1-1.3x slower on the CPU than this network (issue 23).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from softmaso.config import ModelConfig, OrthoConfig
from softmaso.models import LAYERS, channels, make_activation
from softmaso.orthogonality import (
    HammingApodize,
    Method,
    Penalty,
    at_least_fp32,
    gram_penalties,
    orthonormalise,
    register_chain,
    same_layout,
)

PACKABLE_MODES = ("none", "penalty", "exact")  # so, srip and torch train alone
PACK_MIN_SPEEDUP = 1.1  # pack only when the measured step is this much faster [ours: noise]


def _split(t: torch.Tensor, runs: int) -> torch.Tensor:
    """(P*X, ...) -> (P, X, ...): run p's slice is [p] (a view)."""
    return t.unflatten(0, (runs, -1))


# --------------------------------------------------------------------------------- model
class PackedLargeCNN(nn.Module):
    """`runs` largeCNNs side by side. Input (B, P*in_channels, H, W) -> logits (B, P, classes).

    The same modules and state-dict keys as :class:`softmaso.models.LargeCNN`, each tensor
    P times longer along its first axis (run-major); see the module docstring.
    """

    def __init__(self, cfg: ModelConfig, *, num_classes: int, runs: int, in_channels: int = 3):
        super().__init__()
        if runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs}")
        self.cfg, self.runs, self.num_classes = cfg, runs, num_classes
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out, k, stride, pad in LAYERS:
            c = channels(c_out, cfg.width)  # channels per run, as LargeCNN
            conv = nn.Conv2d(
                runs * c_in,
                runs * c,
                k,
                stride=stride,
                padding=pad,
                groups=runs,
                bias=not cfg.batch_norm,
            )
            norm = nn.BatchNorm2d(runs * c) if cfg.batch_norm else nn.Identity()
            blocks.append(nn.Sequential(conv, norm, make_activation(cfg, runs * c)))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(runs * c_in, runs * num_classes, 1, groups=runs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.classifier(self.features(x))  # (B, P*K, 6, 6)
        return z.mean(dim=(2, 3)).unflatten(1, (self.runs, self.num_classes))  # (B, P, K)

    def ortho_convs(self) -> list[nn.Conv2d]:
        """The packed convolutions whose filters orthogonality applies to (per run)."""
        return [block[0] for block in self.features]

    def ortho_names(self) -> list[str]:
        return [f"conv{i + 1}" for i in range(len(self.features))]


def pack_inputs(xs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """P batches (B, C, H, W), as a list or a (P, B, C, H, W) tensor -> (B, P*C, H, W)."""
    if isinstance(xs, torch.Tensor):
        return xs.transpose(0, 1).flatten(1, 2)  # (B, P, C, H, W) -> (B, P*C, H, W)
    return torch.cat(list(xs), dim=1)


def packed_loss(logits: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, P, K), labels (P, B) -> (sum over runs of the mean cross-entropy, (P,) per run).

    The sum's gradient with respect to run p's parameters is run p's own loss gradient.
    Computed in fp32 (fp64 stays fp64) even when the logits are bf16.
    """
    ce = F.cross_entropy(at_least_fp32(logits).transpose(1, 2), ys.T, reduction="none")  # (B, P)
    per_run = ce.mean(dim=0)  # (P,)
    return per_run.sum(), per_run


# ------------------------------------------------------------------------- orthogonality
def run_stack(w: torch.Tensor, runs: int) -> torch.Tensor:
    """A packed weight (P*C_out, ...) as the stack of its runs' weights (P, C_out, ...), a view:
    what :mod:`softmaso.orthogonality`'s plural functions take."""
    return w.unflatten(0, (runs, -1))


def penalty_weights(
    orthos: Sequence[OrthoConfig], *, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """(P,) float64 lambda of each ``penalty`` run, 0 for the others; None if no run has one."""
    if not any(o.mode == "penalty" for o in orthos):
        return None
    values = [o.weight if o.mode == "penalty" else 0.0 for o in orthos]
    return torch.tensor(values, dtype=torch.float64, device=device)


def packed_ortho_loss(model: PackedLargeCNN, weights: torch.Tensor) -> torch.Tensor:
    """sum_p weights[p] * (sum over the 8 MASO convs of run p's penalty), a 0-dim tensor.

    Run p's term equals :func:`softmaso.orthogonality.ortho_loss` of run p alone (for
    weights[p] = lambda); a weight of 0 adds exactly nothing to that run's gradient.
    """
    terms = [gram_penalties(run_stack(c.weight, model.runs)) for c in model.ortho_convs()]
    per_run = torch.stack(terms).sum(dim=0)  # (L, P) -> (P,)
    return (weights.to(per_run) * per_run).sum()


def _weighted_penalties(w: torch.Tensor, weights: torch.Tensor, runs: int) -> torch.Tensor:
    """sum_p weights[p] * run p's penalty on one packed weight, a 0-dim tensor."""
    return (weights.to(w.dtype) * gram_penalties(run_stack(w, runs))).sum()


def packed_penalty(model: PackedLargeCNN, weights: torch.Tensor) -> Penalty | None:
    """:func:`packed_ortho_loss` as a :class:`softmaso.orthogonality.Penalty`, for the training
    forward to compute inside its compiled region; None where the filters are parametrised
    (apodised), whose weights are computed rather than parameters."""
    convs = model.ortho_convs()
    if any(parametrize.is_parametrized(c) for c in convs):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    term = functools.partial(_weighted_penalties, weights=weights, runs=model.runs)
    return Penalty(tuple(names[id(c.weight)] for c in convs), term)


class PackedOrthonormal(nn.Module):
    """Parametrisation: :class:`softmaso.orthogonality.Orthonormal` of each run's filters.

    The packed weight (P*C_out, C_in, kh, kw) is viewed as (P, C_out, n) and all P runs are
    orthonormalised in one batched call: rows when C_out <= n, columns when C_out > n
    (largeCNN's first layer), the same convention and signs as Orthonormal.
    """

    def __init__(self, runs: int, *, method: Method = "cholesky"):
        super().__init__()
        self.runs, self.method = runs, method

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return same_layout(orthonormalise(run_stack(w, self.runs), self.method).flatten(0, 1), w)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def extra_repr(self) -> str:
        return f"runs={self.runs}, method={self.method!r}"


def _one(values: set, what: str, orthos: Sequence[OrthoConfig]) -> Any:
    if len(values) > 1:
        modes = [(o.mode, o.apodize, o.method) for o in orthos]
        raise ValueError(f"a pack cannot mix {what}; got (mode, apodize, method) per run: {modes}")
    return values.pop()


def apply_packed_orthogonality(model: PackedLargeCNN, orthos: Sequence[OrthoConfig]) -> None:
    """Register the runs' parametrisations on the packed MASO convs (apodise, orthonormalise).

    The packed counterpart of :func:`softmaso.orthogonality.apply_orthogonality`, one config
    per run. ``exact`` reparametrises the weight itself, so a pack is all exact or none
    exact, all apodised or none, and of one ``ortho.method``; ``none`` and ``penalty`` mix
    freely (the penalty is a loss term, :func:`penalty_weights`). Calling it again with the
    same configs is a no-op.
    """
    if len(orthos) != model.runs:
        raise ValueError(f"{len(orthos)} ortho configs for a pack of {model.runs} runs")
    unpackable = sorted({o.mode for o in orthos} - set(PACKABLE_MODES))
    if unpackable:
        raise ValueError(f"ortho.mode {unpackable} do not pack; packs hold {PACKABLE_MODES}")
    exact = _one({o.mode == "exact" for o in orthos}, "exact with non-exact runs", orthos)
    apodize = _one({o.apodize for o in orthos}, "apodised with plain runs", orthos)
    method = _one({o.method for o in orthos}, "orthonormalisation methods", orthos)
    for conv in model.ortho_convs():
        chain: list[nn.Module] = [HammingApodize()] if apodize else []  # per filter: per run
        if exact:
            chain.append(PackedOrthonormal(model.runs, method=method))
        register_chain(conv, chain)


# ----------------------------------------------------------------------------- optimiser
def _per_run(value: float | Sequence[float], runs: int, name: str) -> tuple[float, ...]:
    values = (value,) * runs if isinstance(value, int | float) else tuple(value)
    if len(values) != runs or any(v < 0 for v in values):
        raise ValueError(f"{name} must be {runs} non-negative numbers (one per run), got {value}")
    return tuple(float(v) for v in values)


class PackedAdam:
    """One ``torch.optim.Adam`` per run, over run p's slices of the pack's parameters.

    Run p's Adam holds views of the packed parameters (run p's rows, in
    ``LargeCNN.parameters()`` order), so its in-place steps move the pack, and its state dict
    is a single run's: each run keeps its own lr, weight decay, step count and moments.
    ``step`` hands each Adam its slices of the packed gradients. `options` go to every Adam
    (``training.adam_options``: fused on CUDA, foreach on CPU). Create it after the model is
    on its device and dtype (``.to`` replaces the tensors the views share).
    """

    def __init__(
        self,
        model: PackedLargeCNN,
        *,
        lr: float | Sequence[float],
        weight_decay: float | Sequence[float] = 0.0,
        **options: Any,
    ):
        self.params, runs = list(model.parameters()), model.runs
        self._storage = [p.data_ptr() for p in self.params]  # what the views share
        lrs, wds = _per_run(lr, runs, "lr"), _per_run(weight_decay, runs, "weight_decay")
        slices = zip(*(_split(p.detach(), runs) for p in self.params), strict=True)  # per run
        self.adams = [
            torch.optim.Adam([nn.Parameter(v) for v in views], lr=r, weight_decay=wd, **options)
            for views, r, wd in zip(slices, lrs, wds, strict=True)
        ]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        if [p.data_ptr() for p in self.params] != self._storage:
            raise RuntimeError(
                "the pack's tensors were replaced (.to, .double): make PackedAdam after"
            )
        runs = len(self.adams)
        grads = [[None] * runs if p.grad is None else _split(p.grad, runs) for p in self.params]
        for adam, run_grads in zip(self.adams, zip(*grads, strict=True), strict=True):
            views = adam.param_groups[0]["params"]
            for view, grad in zip(views, run_grads, strict=True):
                view.grad = grad  # None where the pack got none, as for a single run
            adam.step()
            for view in views:
                view.grad = None

    def lrs(self) -> list[float]:
        return [adam.param_groups[0]["lr"] for adam in self.adams]


# ------------------------------------------------------------------------ state: split, stack
def _run_tensor(t: torch.Tensor, runs: int, p: int) -> torch.Tensor:
    """Run p's copy of a packed tensor; a 0-dim one (BN's step counter) is every run's."""
    return t.clone() if t.dim() == 0 else _split(t, runs)[p].clone()


def unpack_state(model: PackedLargeCNN, opt: PackedAdam | None = None) -> list[dict[str, Any]]:
    """Per run p: {"model": a LargeCNN state_dict, "optimizer": a torch.optim.Adam state_dict}.

    "model" loads into ``build_model(cfg, num_classes=...)`` with the same
    ``apply_orthogonality`` as the pack (exact mode: the raw weight under
    ``parametrizations.weight.original``) and computes what the pack computes for run p;
    BN running statistics included. "optimizer" (only when `opt` is given) is run p's own
    Adam's state dict, which loads into ``torch.optim.Adam(model.parameters())``.
    """
    runs, sd = model.runs, model.state_dict()
    out = [{"model": {k: _run_tensor(t, runs, p) for k, t in sd.items()}} for p in range(runs)]
    if opt is not None:
        for run, adam in zip(out, opt.adams, strict=True):
            run["optimizer"] = copy.deepcopy(adam.state_dict())  # a snapshot, as "model"
    return out


def pack_state(
    states: Sequence[Mapping[str, Any]], model: PackedLargeCNN, opt: PackedAdam | None = None
) -> None:
    """The inverse of :func:`unpack_state`: load P runs' states into the pack, in place.

    Each state is {"model": a LargeCNN state_dict, "optimizer": a torch.optim.Adam
    state_dict (optional)}: e.g. freshly seeded models (no optimizer state yet) or single-run
    checkpoints. Each run's Adam loads its run's state, lr and weight decay included, as
    torch's load_state_dict does. Runs must agree on batch norm's step counter, one per pack.
    """
    if len(states) != model.runs:
        raise ValueError(f"{len(states)} run states for a pack of {model.runs} runs")
    packed = {}
    for key, ref in model.state_dict().items():
        parts = [s["model"][key] for s in states]
        if ref.dim() == 0:  # BN num_batches_tracked: one counter for the pack
            if any(t.item() != parts[0].item() for t in parts):
                counts = [t.item() for t in parts]
                raise ValueError(f"the runs of a pack must agree on {key}; got {counts}")
            packed[key] = parts[0]
        else:
            packed[key] = torch.cat(parts, dim=0)  # (P*X, ...)
    model.load_state_dict(packed)
    adams = [s.get("optimizer") for s in states]
    if opt is not None and any(a is not None for a in adams):
        if any(a is None for a in adams):
            raise ValueError("some runs have an optimizer state and some do not")
        for adam, state in zip(opt.adams, adams, strict=True):
            adam.load_state_dict(state)
