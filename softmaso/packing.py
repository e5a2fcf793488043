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
p's slice is run p's own gradient. :class:`PackedAdam` is torch.optim.Adam's elementwise
update with run p's learning rate and weight decay on run p's slice. What differs is the
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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softmaso.config import ModelConfig, OrthoConfig
from softmaso.models import LAYERS, channels, make_activation
from softmaso.orthogonality import (
    HammingApodize,
    Method,
    Orthonormal,
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


class PackedOrthonormal(Orthonormal):
    """Parametrisation: :class:`softmaso.orthogonality.Orthonormal` of each run's filters.

    The packed weight (P*C_out, C_in, kh, kw) is viewed as (P, C_out, n) and all P runs are
    orthonormalised in one batched call: rows when C_out <= n, columns when C_out > n
    (largeCNN's first layer), the same convention and signs as Orthonormal.
    """

    def __init__(self, runs: int, *, method: Method = "cholesky"):
        super().__init__(method=method)
        self.runs = runs

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return same_layout(orthonormalise(run_stack(w, self.runs), self.method).flatten(0, 1), w)

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


class PackedAdam(torch.optim.Optimizer):
    """Adam with a learning rate and an L2 weight decay per run (torch.optim.Adam's update).

    Every parameter's first axis holds the P runs' slices one after another (see the module
    docstring), so run p's entries move as torch.optim.Adam(lr=lr[p],
    weight_decay=weight_decay[p]) would move them (no amsgrad, no maximize). The per-run
    values are expanded once into dense tensors of each parameter's shape, so a step is ~10
    ``torch._foreach_*`` calls over all parameters with no loop over runs. All runs of a
    parameter share one step count.
    ``param_groups[i]["lr"]`` is a tuple of P floats; assigning another tuple takes effect at
    the next step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        runs: int,
        lr: float | Sequence[float],
        weight_decay: float | Sequence[float] = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        defaults = {
            "lr": _per_run(lr, runs, "lr"),
            "weight_decay": _per_run(weight_decay, runs, "weight_decay"),
            "betas": (float(betas[0]), float(betas[1])),
            "eps": float(eps),
        }
        super().__init__(params, defaults)
        self.runs = runs
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 0 or p.shape[0] % runs:
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} is not {runs} runs")
        self._maps: dict[tuple[str, int], tuple[tuple[float, ...], torch.Tensor]] = {}

    def _run_map(self, kind: str, p: torch.Tensor, values: tuple[float, ...]) -> torch.Tensor:
        """values (P,) expanded to p's shape: run r's entries hold values[r] (cached)."""
        key = (kind, id(p))
        cached = self._maps.get(key)
        if (
            cached is None
            or cached[0] != values
            or (cached[1].dtype, cached[1].device) != (p.dtype, p.device)
        ):
            v = torch.tensor(values, dtype=p.dtype, device=p.device)  # (P,)
            full = v.view(-1, *[1] * p.dim()).expand(_split(p, self.runs).shape)  # (P, X, ...)
            dense = torch.empty_like(p).copy_(full.reshape(p.shape))  # p's strides: fast foreach
            cached = (values, dense)
            self._maps[key] = cached
        return cached[1]

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)  # on the host, as torch.optim.Adam's
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        states = [self._state(p) for p in params]
        grads = [p.grad for p in params]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1.0)
        if any(group["weight_decay"]):
            wd = [self._run_map("wd", p, group["weight_decay"]) for p in params]
            grads = torch._foreach_addcmul(grads, params, wd)  # g + wd_p * theta
        torch._foreach_lerp_(m, grads, 1 - beta1)  # m <- beta1 m + (1 - beta1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)  # v <- beta2 v + (1 - beta2) g^2
        counts = [s.item() for s in steps]  # host tensors: no device sync
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in counts])
        torch._foreach_add_(denom, group["eps"])  # sqrt(v_hat) + eps
        ratio = torch._foreach_div(m, denom)  # (m / bc1 is folded into the scalar below)
        lr = [self._run_map("lr", p, group["lr"]) for p in params]
        torch._foreach_addcmul_(params, ratio, lr, [-1 / (1 - beta1**t) for t in counts])


# ------------------------------------------------------------------------- state: split
def _run_tensor(t: torch.Tensor, runs: int, p: int) -> torch.Tensor:
    return t.clone() if t.dim() == 0 else _split(t, runs)[p].clone()


def _the_group(opt: PackedAdam, params: list[torch.Tensor]) -> dict[str, Any]:
    if len(opt.param_groups) != 1 or opt.param_groups[0]["params"] != params:
        raise ValueError("the optimiser must hold model.parameters(), in order, in one group")
    return opt.param_groups[0]


def _adam_group(group: dict, p: int, n: int, options: Mapping[str, Any] | None) -> dict:
    """Run p's param group as torch.optim.Adam writes it (this torch version's keys). The
    implementation options (fused, foreach) are written in, not given to the CPU stand-in
    Adam that lists the keys: fused Adam on a CPU tensor needs torch >= 2.4."""
    adam = torch.optim.Adam(
        [torch.zeros(1)],
        lr=group["lr"][p],
        weight_decay=group["weight_decay"][p],
        betas=group["betas"],
        eps=group["eps"],
    )
    return {**adam.state_dict()["param_groups"][0], **(options or {}), "params": list(range(n))}


def _adam_state(opt: PackedAdam, params: list[torch.Tensor], p: int) -> dict[int, dict]:
    out = {}
    for i, param in enumerate(params):
        s = opt.state.get(param)
        if s:
            out[i] = {
                "step": s["step"].clone(),
                "exp_avg": _run_tensor(s["exp_avg"], opt.runs, p),
                "exp_avg_sq": _run_tensor(s["exp_avg_sq"], opt.runs, p),
            }
    return out


def unpack_state(
    model: PackedLargeCNN,
    opt: PackedAdam | None = None,
    *,
    adam_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per run p: {"model": a LargeCNN state_dict, "optimizer": a torch.optim.Adam state_dict}.

    "model" loads into ``build_model(cfg, num_classes=...)`` with the same
    ``apply_orthogonality`` as the pack (exact mode: the raw weight under
    ``parametrizations.weight.original``) and computes what the pack computes for run p;
    BN running statistics included. "optimizer" (only when `opt` is given) loads into
    ``torch.optim.Adam(model.parameters(), **adam_options)``; its param group carries run
    p's lr and weight decay, and `adam_options` (e.g. ``{"foreach": True}``), since
    load_state_dict replaces the group's settings with the saved ones.
    """
    runs, sd = model.runs, model.state_dict()
    out = [{"model": {k: _run_tensor(t, runs, p) for k, t in sd.items()}} for p in range(runs)]
    if opt is not None:
        params = list(model.parameters())
        group = _the_group(opt, params)
        for p, run in enumerate(out):
            run["optimizer"] = {
                "state": _adam_state(opt, params, p),
                "param_groups": [_adam_group(group, p, len(params), adam_options)],
            }
    return out


# ------------------------------------------------------------------------- state: stack
def _same(values: list, what: str) -> Any:
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"the runs of a pack must agree on {what}; got {values}")
    return values[0]


def _pack_model(states: Sequence[Mapping[str, Any]], model: PackedLargeCNN) -> None:
    packed = {}
    for key, ref in model.state_dict().items():
        parts = [s["model"][key] for s in states]
        if ref.dim() == 0:  # BN num_batches_tracked: one counter for the pack
            _same([t.item() for t in parts], key)
            packed[key] = parts[0]
        else:
            packed[key] = torch.cat(parts, dim=0)  # (P*X, ...)
    model.load_state_dict(packed)


def _pack_param_state(entries: list[dict | None], param: torch.Tensor, i: int) -> dict | None:
    if all(e is None for e in entries):
        return None
    if any(e is None for e in entries):
        raise ValueError(f"parameter {i} has Adam state in some runs and not in others")
    step = _same([float(e["step"]) for e in entries], f"the Adam step count of parameter {i}")
    like = {"dtype": param.dtype, "device": param.device}
    return {
        "step": torch.tensor(step),
        "exp_avg": torch.cat([e["exp_avg"] for e in entries]).to(**like),
        "exp_avg_sq": torch.cat([e["exp_avg_sq"] for e in entries]).to(**like),
    }


def _pack_optimizer(adams: list[Mapping[str, Any]], model: PackedLargeCNN, opt: PackedAdam):
    params = list(model.parameters())
    group = _the_group(opt, params)
    groups = [a["param_groups"] for a in adams]
    if any(len(g) != 1 or len(g[0]["params"]) != len(params) for g in groups):
        raise ValueError(f"each run's Adam state must hold one group of {len(params)} parameters")
    groups = [g[0] for g in groups]
    if any(g.get("amsgrad") or g.get("maximize") for g in groups):
        raise ValueError("PackedAdam has no amsgrad or maximize")
    group["betas"] = tuple(_same([tuple(g["betas"]) for g in groups], "Adam betas"))
    group["eps"] = _same([g["eps"] for g in groups], "Adam eps")
    group["lr"] = _per_run([g["lr"] for g in groups], opt.runs, "lr")
    group["weight_decay"] = _per_run([g["weight_decay"] for g in groups], opt.runs, "weight_decay")
    for i, param in enumerate(params):
        state = _pack_param_state([a["state"].get(i) for a in adams], param, i)
        opt.state.pop(param, None)
        if state is not None:
            opt.state[param] = state


def pack_state(
    states: Sequence[Mapping[str, Any]], model: PackedLargeCNN, opt: PackedAdam | None = None
) -> None:
    """The inverse of :func:`unpack_state`: load P runs' states into the pack, in place.

    Each state is {"model": a LargeCNN state_dict, "optimizer": a torch.optim.Adam
    state_dict (optional)}; e.g. freshly seeded models (no optimizer state yet) or single-run
    checkpoints. The optimizer takes each run's lr and weight decay from its state, as
    torch's load_state_dict does. Runs must agree on the step counts and Adam's betas/eps.
    """
    if len(states) != model.runs:
        raise ValueError(f"{len(states)} run states for a pack of {model.runs} runs")
    _pack_model(states, model)
    adams = [s.get("optimizer") for s in states]
    if opt is None or all(a is None for a in adams):
        return
    if any(a is None for a in adams):
        raise ValueError("some runs have an optimizer state and some do not")
    _pack_optimizer(adams, model, opt)
