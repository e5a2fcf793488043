"""The paper's mechanisms measured on a trained network (``softmaso analyze``).

Each layer of largeCNN is conv -> batch norm -> nonlinearity. In eval mode batch norm is an
affine map per channel, so folded into the conv, unit k of a layer is a MASO unit (paper-notes
1) with pre-activation u_k = <w_k, x> + b_k over its input patch x, slopes
A[k, r] = a_r w_k and offsets B[k, r] = a_r b_k + c_r, where (a_r, c_r) are the pieces of the
layer's max-affine nonlinearity (ReLU: (0, 0) and (1, 0); swish is ReLU under beta-VQ, so its
pieces are ReLU's). Every position of every test image is one decision of every unit; per
layer (the priors from the weights alone, the rest on at most ``decisions`` (image, position)
samples drawn with seed 0):

- ``active_fraction``: the fraction of decisions in the last region (the steepest piece; for
  ReLU the active one), averaged over units; ``dead_units`` / ``constant_units``: the fraction
  of units that never leave the first region / never change region.
- ``svq_entropy``: the mean entropy of the soft-VQ posterior (eq. 6: softmax of the scores,
  beta = 1/2) of each decision, divided by log R (0: hard decisions, 1: uniform).
- ``firing_correlation``: the mean |correlation| between the last-region indicators of two
  different units at the same position (units that never change region left out).
- ``cross_ratio`` (Thm. 4): at the per-unit MAP t, the mean over decisions of |cross terms|
  sum_{k != k'} <A[k, t_k], A[k', t_k']> / diagonal terms sum_k ||A[k, t_k]||^2 of the
  factorial model's log-likelihood (decisions with a zero diagonal left out); zero for
  orthogonal filters (11).
- ``joint_map_changes``: the fraction of unit decisions that change when coordinate ascent
  from the per-unit MAP maximises the joint posterior of the factorial model (10) (priors of
  Thm. 2); under (11) the per-unit MAP is the joint MAP (Cor. 1) and nothing changes.
- ``prior_last`` and ``prior_last_init``: Thm. 2's prior of the last region, averaged over
  units, for the trained weights and for the run's weights at initialisation (App. C).
- ``learned_beta``: where the nonlinearity learns its beta (``model.learn_beta``), the mean
  over the layer's channels of what it converged to (NaN otherwise).

The factorial model is taken per position (cross terms between overlapping positions are not
measured), and ``svq_entropy``, ``prior_last`` and ``joint_map_changes`` depend on each
channel's scale, which batch norm can change without changing the network's function:
docs/reference.md (``softmaso analyze``) says what these do and do not measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from softmaso import rundir
from softmaso.config import RunConfig, validate
from softmaso.data import Preprocessor, load_data
from softmaso.errors import UserError, first_line
from softmaso.models import activation_spec, build_model
from softmaso.orthogonality import apply_orthogonality
from softmaso.theory.gmm import region_prior
from softmaso.theory.specs import MaxAffineSpec

STATISTICS = (
    "active_fraction",
    "dead_units",
    "constant_units",
    "svq_entropy",
    "firing_correlation",
    "cross_ratio",
    "joint_map_changes",
    "prior_last",
    "prior_last_init",
    "learned_beta",
)
MAX_SWEEPS = 20  # coordinate ascent stops earlier when a sweep changes nothing


@dataclass(frozen=True)
class Folded:
    """A layer's units with batch norm folded in: filters W (K, D) and biases b (K,)."""

    weight: torch.Tensor
    bias: torch.Tensor


def fold(conv: nn.Conv2d, norm: nn.Module) -> Folded:
    """The conv's filters (flattened) and biases after an eval-mode batch norm folded in."""
    w = conv.weight.detach().flatten(1).double()  # (K, D)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0]).double()
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        b = (b - norm.running_mean.double()) * scale + norm.bias.detach().double()
        w = w * scale[:, None]
    return Folded(w, b)


def region_prior_last(layer: Folded, spec: MaxAffineSpec) -> float:
    """Thm. 2's prior of the last region, averaged over the layer's units."""
    A, B = spec.as_maso(layer.weight, layer.bias)  # (K, R, D), (K, R)
    return region_prior(A, B)[:, -1].mean().item()


def joint_objective(scores: torch.Tensor, t: torch.Tensor, slopes, gram: torch.Tensor):
    """log p(t | x) of the factorial model up to a constant, for decisions t (N, K):
    sum_k s[k, t_k] - 1/2 sum_{k != k'} a_{t_k} a_{t_k'} <w_k, w_k'>. scores: (N, K, R)."""
    c = torch.as_tensor(slopes, dtype=gram.dtype)[t]  # (N, K): a_{t_k}
    off = gram - torch.diag(torch.diagonal(gram))
    own = scores.gather(2, t[..., None]).squeeze(2).sum(1)
    return own - 0.5 * ((c @ off) * c).sum(1)


def coordinate_ascent(scores: torch.Tensor, slopes, gram: torch.Tensor) -> torch.Tensor:
    """Decisions (N, K) maximising :func:`joint_objective` unit by unit, from the per-unit
    MAP, sweeping until no decision changes (at most MAX_SWEEPS sweeps)."""
    a = torch.as_tensor(slopes, dtype=gram.dtype)  # (R,)
    off = gram - torch.diag(torch.diagonal(gram))  # (K, K)
    t = scores.argmax(2)  # (N, K)
    c = a[t]  # (N, K)
    for _ in range(MAX_SWEEPS):
        changed = False
        for k in range(scores.shape[1]):
            field = c @ off[:, k]  # (N,): sum_{k' != k} a_{t_k'} <w_k', w_k>
            best = (scores[:, k, :] - a[None, :] * field[:, None]).argmax(1)
            if not changed and bool((best != t[:, k]).any()):
                changed = True
            t[:, k], c[:, k] = best, a[best]
        if not changed:
            break
    return t


def layer_statistics(u: torch.Tensor, layer: Folded, spec: MaxAffineSpec) -> dict[str, float]:
    """The statistics of one layer from its pre-activations u (N, K): N decisions of K units."""
    a = torch.tensor(spec.slopes, dtype=torch.float64)
    c = torch.tensor(spec.offsets, dtype=torch.float64)
    scores = u.double()[..., None] * a + c  # (N, K, R)
    t = scores.argmax(2)  # per-unit MAP (hard VQ)
    last = (t == spec.regions - 1).double()  # (N, K)
    probs = torch.softmax(scores, dim=2)  # soft VQ, beta = 1/2
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(2) / math.log(spec.regions)
    gram = layer.weight @ layer.weight.T  # (K, K)
    coef = a[t]  # (N, K)
    diag = (coef**2 * torch.diagonal(gram)).sum(1)
    cross = ((coef @ (gram - torch.diag(torch.diagonal(gram)))) * coef).sum(1)
    ok = diag > 0
    joint = coordinate_ascent(scores, spec.slopes, gram)
    return {
        "active_fraction": last.mean().item(),
        "dead_units": (t == 0).all(0).double().mean().item(),
        "constant_units": (t == t[:1]).all(0).double().mean().item(),
        "svq_entropy": entropy.mean().item(),
        "firing_correlation": firing_correlation(last),
        "cross_ratio": (cross[ok].abs() / diag[ok]).mean().item() if ok.any() else 0.0,
        "joint_map_changes": (joint != t).double().mean().item(),
        "prior_last": region_prior_last(layer, spec),
    }


def firing_correlation(z: torch.Tensor) -> float:
    """Mean |corr| over pairs of different units of indicators z (N, K); units whose
    indicator never changes are left out (NaN when fewer than two remain)."""
    z = z[:, z.std(0) > 0]
    if z.shape[1] < 2:
        return float("nan")
    corr = torch.corrcoef(z.T)
    k = corr.shape[0]
    return (corr.abs().sum() - k).item() / (k * (k - 1))


# ------------------------------------------------------------------------------ a trained run
def load_trained(run_dir: Path) -> tuple[RunConfig, nn.Module]:
    """A finished run's config and model (its final weights, eval mode, CPU)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    tree = rundir.read_config(run_dir)
    weights = run_dir / rundir.WEIGHTS
    if tree is None or not weights.is_file():
        raise UserError(
            str(run_dir),
            f"not a finished run directory (needs {rundir.CONFIG} and {rundir.WEIGHTS})",
        )
    cfg = validate(tree, source=str(run_dir / rundir.CONFIG))
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors' own error for a truncated or foreign file
        raise UserError(
            str(weights), f"not a readable safetensors file ({first_line(e)})"
        ) from None
    head, first = state.get("classifier.weight"), state.get("features.0.0.weight")
    if head is None or first is None:
        raise UserError(rundir.WEIGHTS, "not largeCNN weights (no classifier or first conv)")
    model = build_model(cfg.model, num_classes=head.shape[0], in_channels=first.shape[1])
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise UserError(str(weights), "its weights are not largeCNN's for this config") from None
    return cfg, model.eval()


def initial_model(cfg: RunConfig, classes: int, in_channels: int) -> nn.Module:
    """The run's network at initialisation, its effective weights (exact: orthonormalised) as
    training.build makes them from the seed."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=classes, in_channels=in_channels)
    apply_orthogonality(model.ortho_convs(), cfg.ortho)
    return model.eval()


@torch.no_grad()
def learned_beta(activation: nn.Module) -> float:
    """The mean over channels of a learnt beta (a beta-VQ activation's), else NaN."""
    beta = getattr(activation, "beta", None)
    if beta is None or not getattr(beta, "learnable", False):
        return float("nan")
    return beta.beta().double().mean().item()


@torch.no_grad()
def pre_activations(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's pre-activations (its batch norm's output, copied before the in-place
    ReLU overwrites it), (N, K, H, W) each."""
    got: list[torch.Tensor] = []
    hooks = [
        block[1].register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
        for block in model.features
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def analyze_run(
    run_dir: Path, *, images: int = 500, decisions: int = 20_000, data_dir: Path | None = None
) -> list[dict]:
    """One row per layer: the run's statistics (:data:`STATISTICS`) on `images` test images;
    at most `decisions` (image, position) samples per layer enter the joint statistics."""
    cfg, model = load_trained(run_dir)
    spec = activation_spec(cfg.model)
    data = load_data(cfg.data, data_dir=data_dir)
    x = Preprocessor(cfg.data.preprocess, data.x_train)(data.x_test[:images])
    init = initial_model(cfg, data.num_classes, int(data.x_train.shape[1]))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i, (u, block, block0) in enumerate(
        zip(pre_activations(model, x), model.features, init.features, strict=True)
    ):
        flat = u.permute(0, 2, 3, 1).reshape(-1, u.shape[1])  # (images * positions, K)
        if flat.shape[0] > decisions:
            flat = flat[torch.randperm(flat.shape[0], generator=gen)[:decisions]]
        stats = layer_statistics(flat, fold(block[0], block[1]), spec)
        stats["prior_last_init"] = region_prior_last(fold(block0[0], block0[1]), spec)
        stats["learned_beta"] = learned_beta(block[2])
        rows.append({"layer": f"conv{i + 1}", "units": u.shape[1], **stats})
    return rows


def default_out(target: Path) -> Path:
    """Where ``softmaso analyze TARGET`` writes without ``--out``: beside a run directory
    (``PARENT/analysis/RUN``: a run directory holds only what its training wrote), or a results
    folder's ``analysis/``, as ``softmaso table`` writes beside the runs."""
    target = Path(target)
    if (target / rundir.CONFIG).is_file():
        return target.parent / "analysis" / target.name
    return target / "analysis"
