"""Every claim of paper-notes sections 1-6, checked numerically on random inputs.

Each check draws its own random problems (float64, seeded), computes the claim's two sides by
independent routes (for instance a GMM posterior from Gaussian densities against a softmax of
scores, or a numerical maximisation over the simplex against a closed form) and reports the
largest disagreement against a tolerance. :func:`run_checks` runs them all; :data:`TABLE1`
ties the rows of the paper's Table 1 to the checks that derive each example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linprog, minimize

from softmaso.config import OrthoConfig
from softmaso.nn.pooling import BetaSoftmaxPool2d
from softmaso.orthogonality import apply_orthogonality, gram_penalties
from softmaso.theory import gmm, specs
from softmaso.theory.vq import (
    beta_vq,
    beta_vq_objective,
    beta_vq_value,
    hard_vq,
    maso_output,
    maso_scores,
    soft_vq,
)

DT = torch.float64


@dataclass(frozen=True)
class CheckResult:
    """One verified claim: `max_error` must be <= `tol` (> `tol` for a contrast, and for a
    refutation: a statement of the paper that the check shows false by more than `tol`)."""

    id: str
    claim: str
    ref: str
    compared: str
    max_error: float
    tol: float
    passed: bool
    note: str = ""
    contrast: bool = False  # passes when the error is LARGE: shows a hypothesis is needed
    refutes: bool = False  # passes when the paper's statement is contradicted by > tol

    @property
    def verdict(self) -> str:
        """pass, FAIL, differs (a contrast), or contradicted (the paper's statement is false)."""
        if not self.passed:
            return "FAIL"
        return "contradicted" if self.refutes else "differs" if self.contrast else "pass"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


@dataclass(frozen=True)
class Check:
    id: str
    claim: str
    ref: str
    fn: Callable[[torch.Generator, int], tuple[float, str, str]]  # -> (error, compared, note)
    tol: float
    contrast: bool = False
    refutes: bool = False

    def run(self, seed: int, trials: int) -> CheckResult:
        g = torch.Generator().manual_seed(seed)
        err, compared, note = self.fn(g, trials)
        ok = err > self.tol if self.contrast or self.refutes else err <= self.tol
        return CheckResult(
            self.id,
            self.claim,
            self.ref,
            compared,
            float(err),
            self.tol,
            bool(ok),
            note,
            self.contrast,
            self.refutes,
        )


CHECKS: list[Check] = []


def check(id: str, claim: str, ref: str, tol: float, contrast: bool = False, refutes=False):
    def register(fn):
        CHECKS.append(Check(id, claim, ref, fn, tol, contrast, refutes))
        return fn

    return register


# ----------------------------------------------------------------------------- random problems
def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=g, dtype=DT)


def _rand(g: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=DT)


def _maso(g: torch.Generator, K: int = 4, R: int = 3, D: int = 6):
    return _randn(g, K, R, D), _randn(g, K, R)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _numeric_beta_vq(s: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    """Maximise (8) over the simplex numerically (SLSQP on t itself, from the uniform point)."""
    R = len(s)

    def objective_neg(t):
        t = np.clip(t, 1e-300, None)
        return -(beta * t @ s - (1 - beta) * np.sum(t * np.log(t)))

    def neg_grad(t):
        t = np.clip(t, 1e-300, None)
        return -(beta * s - (1 - beta) * (np.log(t) + 1))

    res = minimize(
        objective_neg,
        np.full(R, 1.0 / R),
        jac=neg_grad,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * R,
        constraints=[{"type": "eq", "fun": lambda t: t.sum() - 1, "jac": lambda t: np.ones(R)}],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    # SLSQP stalls near 1e-6 where entries are tiny; polish with Newton steps on the KKT system
    # of (8) restricted to the simplex's tangent space (sum of steps = 0), kept positive.
    t = np.clip(res.x, 1e-12, None)
    t /= t.sum()
    for _ in range(50):
        grad = beta * s - (1 - beta) * (np.log(t) + 1)
        step = t / (1 - beta) * (grad - (t @ grad) / t.sum())  # -H^{-1} (grad - lambda 1)
        neg = step < 0
        scale = min(1.0, 0.9 * np.min(t[neg] / -step[neg])) if neg.any() else 1.0
        t = t + scale * step
        t /= t.sum()
    return t, -objective_neg(t)


def _lp_vertex(s: np.ndarray) -> np.ndarray:
    """The maximiser of <t, s> over the simplex, by linear programming (scipy's HiGHS): HVQ
    found as the solution of its problem, not by an argmax."""
    R = len(s)
    res = linprog(-s, A_eq=np.ones((1, R)), b_eq=[1.0], bounds=[(0.0, None)] * R, method="highs")
    return res.x


def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H', W', k*k): every pooling window's values, by slicing."""
    n, c, h, w = x.shape
    rows, cols = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.empty((n, c, rows, cols, k * k))
    for i in range(rows):
        for j in range(cols):
            patch = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, :, i, j] = patch.reshape(n, c, k * k)
    return out


# --------------------------------------------------------------------------- section 1 and 2
@check("prop1-kmeans", "HVQ with B = -||A||^2/2 is the K-means assignment", "Prop. 1", 0.0)
def _prop1(g, trials):
    A = _randn(g, 5, 4, 8)
    x = _randn(g, trials, 8, scale=2.0)
    s = maso_scores(A, gmm.kmeans_offsets(A), x)  # (N, K, R)
    mism = (s.argmax(-1) != gmm.kmeans_assign(A, x)).double().mean()
    return float(mism), "argmax_r s[k,r] vs argmin_r ||A[k,r]-x|| (fraction differing)", ""


@check("thm2-map", "GMM MAP with the Thm. 2 prior equals the MASO argmax", "Thm. 2", 0.0)
def _thm2(g, trials):
    A, B = _maso(g)
    x = _randn(g, trials, A.shape[-1], scale=2.0)
    log_pi = gmm.region_prior(A, B).log()
    post = gmm.gmm_log_posterior(A, log_pi, x)  # from Gaussian densities
    mism = (post.argmax(-1) != maso_scores(A, B, x).argmax(-1)).double().mean()
    return float(mism), "argmax_t p(t|x) (sigma = 1) vs argmax_r s (fraction differing)", ""


@check(
    "eq2-hvq-specs",
    "HVQ of the named specs gives ReLU, |u|, leaky ReLU, max-affine",
    "Sec. 2, eq. 1-2",
    0.0,
)
def _hvq_specs(g, trials):
    u = _randn(g, trials, scale=4.0)
    F = torch.nn.functional
    convex = specs.max_affine([-0.5, 0.3, 1.5], [-0.5, 0.0, -1.2])
    pairs = [
        (specs.relu(), torch.relu(u)),
        (specs.absolute(), u.abs()),
        (specs.leaky_relu(0.1), F.leaky_relu(u, 0.1)),
        (convex, torch.maximum(torch.maximum(-0.5 * u - 0.5, 0.3 * u), 1.5 * u - 1.2)),
    ]
    err = max(_max_abs(maso_output(sp.scores(u), hard_vq(sp.scores(u))), ref) for sp, ref in pairs)
    return err, "eq. 2 with T_H vs torch.relu, abs, leaky_relu(0.1), an explicit max", ""


# ---------------------------------------------------------------------------------- section 3
@check("eq6-posterior", "SVQ softmax(s) is the GMM posterior p(t = r | x)", "eq. 6", 1e-12)
def _eq6(g, trials):
    A, B = _maso(g)
    x = _randn(g, trials, A.shape[-1], scale=2.0)
    post = gmm.gmm_log_posterior(A, gmm.region_prior(A, B).log(), x).exp()
    return _max_abs(post, soft_vq(maso_scores(A, B, x))), "p(t|x) from densities vs softmax_r s", ""


@check("eq6-limit", "SVQ tends to HVQ as sigma -> 0", "Sec. 3.3, eq. 6", 1e-9)
def _eq6_limit(g, trials):
    A, B = _maso(g)
    x = _randn(g, trials, A.shape[-1], scale=2.0)
    s = maso_scores(A, B, x)
    prior_logit = B + 0.5 * (A * A).sum(-1)  # Thm. 2 prior, tempered by sigma^2 below
    errs = []
    for sigma in (1.0, 1e-1, 1e-2, 1e-3, 1e-4):
        log_pi = torch.log_softmax(prior_logit / sigma**2, -1)
        post = gmm.gmm_log_posterior(A, log_pi, x, sigma=sigma).exp()
        errs.append(_max_abs(post, hard_vq(s)))
    monotone = all(b <= a for a, b in zip(errs, errs[1:], strict=False))
    note = "max |p - T_H| at sigma = 1, 1e-1, ..., 1e-4: " + ", ".join(f"{e:.0e}" for e in errs)
    return (errs[-1] if monotone else math.inf), "p(t|x) at sigma = 1e-4 vs one-hot argmax", note


@check("prop2-svq-max", "SVQ maximises <t, s> + H(t) over the simplex", "Prop. 2, eq. 7", 1e-9)
def _prop2(g, trials):
    err, gap = 0.0, 0.0
    for _ in range(trials):
        s = _randn(g, int(torch.randint(2, 7, (1,), generator=g)), scale=2.0)
        t_num, f_num = _numeric_beta_vq(s.numpy(), 0.5)  # beta = 1/2: (7) up to the factor 1/2
        t_svq = soft_vq(s)
        err = max(err, float(np.abs(t_num - t_svq.numpy()).max()))
        gap = max(gap, f_num - float(beta_vq_objective(t_svq, s, 0.5)))
    note = f"numeric optimum never beats SVQ by more than {max(gap, 0):.1e}"
    return err, "SLSQP argmax over the simplex vs softmax_r s", note


@check("prop3-siglu", "ReLU's MASO under SVQ is the SiLU u*sigmoid(u)", "Prop. 3", 1e-12)
def _prop3(g, trials):
    u = _randn(g, trials, scale=4.0)
    s = specs.relu().scores(u)
    return _max_abs(maso_output(s, soft_vq(s)), u * torch.sigmoid(u)), "eq. 2 vs u*sigmoid(u)", ""


@check("prop4-softmax-pool", "max-pooling's MASO under SVQ is softmax pooling", "Prop. 4", 1e-12)
def _prop4(g, trials):
    x = _randn(g, 2, 3, 8, 8, scale=2.0)
    s = specs.maxpool_scores(x, 2)  # (N, C, 4, 4, R)
    maso = maso_output(s, soft_vq(s))
    explicit = (s * s.exp()).sum(-1) / s.exp().sum(-1)  # sum_i x_i e^{x_i} / sum_j e^{x_j}
    module = BetaSoftmaxPool2d(2, beta=0.5)(x)
    hard = maso_output(s, hard_vq(s))
    err = max(_max_abs(maso, explicit), _max_abs(module, explicit))
    hard_err = _max_abs(hard, torch.nn.functional.max_pool2d(x, 2))
    note = f"and HVQ gives max-pooling exactly: {hard_err:.0e}"
    return err, "eq. 2 and BetaSoftmaxPool2d(beta=1/2) vs sum_i softmax(x)_i x_i", note


@check(
    "prop5-sigmoid",
    "a soft DN layer's region probability is sigmoid (tanh by rescaling)",
    "Prop. 5",
    1e-12,
)
def _prop5(g, trials):
    u = _randn(g, trials, scale=4.0)
    p_active = soft_vq(specs.relu().scores(u))[..., 1]
    p_active_2u = soft_vq(specs.relu().scores(2 * u))[..., 1]  # slopes and offsets doubled
    err = max(_max_abs(p_active, torch.sigmoid(u)), _max_abs(2 * p_active_2u - 1, torch.tanh(u)))
    return err, "p(active|x) vs sigmoid(u); 2 p(active|x; 2A, 2B) - 1 vs tanh(u)", ""


@check("prop6-softmax", "a soft fully-connected class layer outputs softmax", "Prop. 6", 1e-12)
def _prop6(g, trials):
    C, D = 10, 16
    W, b = _randn(g, C, D), _randn(g, C)
    x = _randn(g, trials, D)
    A, B = W[None], b[None]  # one unit whose C regions are the classes
    post = gmm.gmm_log_posterior(A, gmm.region_prior(A, B).log(), x).exp()[:, 0]
    return (
        _max_abs(post, torch.softmax(x @ W.T + b, -1)),
        "GMM class posterior vs softmax(Wx+b)",
        "",
    )


# ---------------------------------------------------------------------------------- section 4
@check("thm3-beta-vq", "beta-VQ closed form (9) is the optimum of (8)", "Thm. 3, eq. 9", 1e-9)
def _thm3(g, trials):
    err, gap = 0.0, 0.0
    for _ in range(trials):
        s = _randn(g, int(torch.randint(2, 7, (1,), generator=g)), scale=2.0)
        beta = float(_rand(g, 1, lo=0.05, hi=0.95))
        t_num, f_num = _numeric_beta_vq(s.numpy(), beta)
        t_cf = beta_vq(s, beta)
        err = max(err, float(np.abs(t_num - t_cf.numpy()).max()))
        gap = max(gap, f_num - float(beta_vq_objective(t_cf, s, beta)))
    note = f"beta ~ U(0.05, 0.95); numeric optimum never beats (9) by more than {max(gap, 0):.1e}"
    return err, "SLSQP argmax of (8) vs softmax(beta/(1-beta) s)", note


@check("thm3-value", "the optimal value of (8) is (1-beta) logsumexp(eta s)", "Sec. 4, eq. 8", 1e-9)
def _thm3_value(g, trials):
    err = 0.0
    for _ in range(trials):
        s = _randn(g, int(torch.randint(2, 7, (1,), generator=g)), scale=2.0)
        beta = float(_rand(g, 1, lo=0.05, hi=0.95))
        _, f_num = _numeric_beta_vq(s.numpy(), beta)
        err = max(err, abs(f_num - float(beta_vq_value(s, beta))))
    u = _randn(g, trials, scale=4.0)
    beta = _rand(g, trials, lo=0.05, hi=0.95)
    eta = beta / (1 - beta)
    relu_value = beta_vq_value(specs.relu().scores(u), beta)
    err_relu = _max_abs(relu_value, beta * torch.nn.functional.softplus(eta * u) / eta)
    note = f"ReLU value vs beta*log(1+e^(eta u))/eta (softplus family): {err_relu:.1e}"
    return max(err, err_relu), "max of (8) found by SLSQP vs the logsumexp form", note


@check(
    "thm3-special",
    "beta = 1, 1/2, 0 give HVQ, SVQ and the uniform T = 1/R; beta -> 1 tends to HVQ",
    "Thm. 3",
    1e-9,
)
def _thm3_special(g, trials):
    A, B = _maso(g, K=1, R=5, D=6)
    x = _randn(g, trials, 6, scale=2.0)
    s = maso_scores(A, B, x)[:, 0]  # (N, R)
    lp = torch.from_numpy(np.stack([_lp_vertex(row) for row in s.numpy()]))  # (N, R)
    post = gmm.gmm_log_posterior(A, gmm.region_prior(A, B).log(), x).exp()[:, 0]  # (N, R)
    errs = [
        _max_abs(beta_vq(s, 1.0), lp),
        _max_abs(beta_vq(s, torch.ones(trials, dtype=DT)), lp),
        _max_abs(beta_vq(s, 0.5), post),
        _max_abs(beta_vq(s, 0.0), torch.full_like(s, 1 / 5)),  # the entropy's maximiser
    ]
    limit = [_max_abs(beta_vq(s, 1 - 10.0**-j), lp) for j in range(1, 9)]
    falling = all(b <= a for a, b in zip(limit, limit[1:], strict=False))
    note = "max |T_beta - LP vertex| at beta = 1 - 10^-j, j = 1..8: " + ", ".join(
        f"{e:.0e}" for e in limit
    )
    return (
        max(*errs, limit[-1]) if falling else math.inf,
        "beta_vq at 1 and 1 - 1e-8 vs the LP maximiser of <t,s>; at 1/2 vs the GMM posterior "
        "from densities; at 0 vs 1/R",
        note,
    )


@check("thm3-grad-beta", "T_beta is differentiable in beta (finite near 0 and 1)", "Thm. 3", 1e-6)
def _thm3_grad(g, trials):
    s = _randn(g, trials, 4, scale=2.0)
    beta = _rand(g, trials, lo=0.05, hi=0.95).requires_grad_()
    w = _randn(g, trials, 4)  # random projection so the gradient is a scalar per trial
    (grad,) = torch.autograd.grad((beta_vq(s, beta) * w).sum(), beta)
    h = 1e-6
    with torch.no_grad():
        fd = ((beta_vq(s, beta + h) - beta_vq(s, beta - h)) * w).sum(-1) / (2 * h)
    rel = float(((grad - fd).abs() / (fd.abs() + 1e-3)).max())
    edge = torch.tensor([1e-9, 1 - 1e-9], dtype=DT, requires_grad=True)
    (g_edge,) = torch.autograd.grad(beta_vq(s[:2], edge).pow(2).sum(), edge)
    finite = bool(torch.isfinite(g_edge).all())
    return (
        (rel if finite else math.inf),
        "autograd dT/dbeta vs central differences",
        (f"gradient at beta = 1e-9 and 1 - 1e-9 finite: {finite}"),
    )


@check("prop7-swish", "ReLU under beta-VQ is swish u*sigmoid(eta u)", "Prop. 7", 1e-12)
def _prop7(g, trials):
    u = _randn(g, trials, scale=4.0)
    beta = _rand(g, trials, lo=0.01, hi=0.99)
    eta = beta / (1 - beta)
    s = specs.relu().scores(u)
    return (
        _max_abs(maso_output(s, beta_vq(s, beta)), u * torch.sigmoid(eta * u)),
        ("eq. 2 with T_beta vs u*sigmoid(eta u), eta = beta/(1-beta)"),
        "",
    )


@check("beta-abs-leaky", "abs and leaky ReLU under beta-VQ have closed forms", "Sec. 4", 1e-12)
def _abs_leaky(g, trials):
    u = _randn(g, trials, scale=4.0)
    beta = _rand(g, trials, lo=0.01, hi=0.99)
    eta, a = beta / (1 - beta), 0.1
    s_abs, s_leaky = specs.absolute().scores(u), specs.leaky_relu(a).scores(u)
    e1, e2 = torch.exp(eta * a * u), torch.exp(eta * u)
    err = max(
        _max_abs(maso_output(s_abs, beta_vq(s_abs, beta)), u * torch.tanh(eta * u)),
        _max_abs(maso_output(s_leaky, beta_vq(s_leaky, beta)), u * (a * e1 + e2) / (e1 + e2)),
    )
    return (
        err,
        "eq. 2 vs u*tanh(eta u) and u*(a e^(eta a u) + e^(eta u))/(e^(eta a u) + e^(eta u))",
        "",
    )


@check(
    "beta-pool",
    "beta-softmax pooling: max at beta = 1, softmax at 1/2, mean at 0",
    "Table 1",
    1e-8,
)
def _beta_pool(g, trials):
    x = _randn(g, 1, 2, 9, 9, scale=2.0)
    windows = _windows(x.numpy(), 3, 2)  # (1, 2, 4, 4, 9), by slicing
    flat = windows.reshape(-1, 9)
    errs = []
    for beta in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        if beta == 1.0:  # (8) at beta = 1 is a linear programme
            t = np.stack([_lp_vertex(w) for w in flat])
        else:
            t = np.stack([_numeric_beta_vq(w, beta)[0] for w in flat])
        want = torch.from_numpy((t * flat).sum(-1).reshape(windows.shape[:-1]))
        errs.append(_max_abs(BetaSoftmaxPool2d(3, 2, beta=beta)(x), want))
    note = "beta = 0, .1, .3, .5, .7, .9, 1: " + ", ".join(f"{e:.0e}" for e in errs)
    return (
        max(errs),
        "BetaSoftmaxPool2d(3, stride 2) vs (8) solved per window (SLSQP; LP at beta = 1), "
        "windows cut by slicing",
        note,
    )


# ---------------------------------------------------------------------------------- section 5
def _orthogonal_maso(g: torch.Generator, K: int, R: int, D: int):
    """Slopes satisfying (11): unit k lives in its own block of an orthonormal basis."""
    Q, _ = torch.linalg.qr(_randn(g, D, D))
    m = D // K
    coef = _randn(g, K, R, m, scale=1.5)
    A = torch.stack([coef[k] @ Q[:, k * m : (k + 1) * m].T for k in range(K)])  # (K, R, D)
    return A, _randn(g, K, R)


def _factorial(A, B, x):
    joint = gmm.factorial_joint_posterior(A, gmm.region_prior(A, B).log(), x)
    marg = soft_vq(maso_scores(A, B, x))  # (N, K, R): per-unit posteriors
    return joint, gmm.product_of_marginals(marg), marg


@check(
    "thm4-factorial",
    "orthogonal slopes: joint posterior = product of per-unit ones",
    "Thm. 4",
    1e-12,
)
def _thm4(g, trials):
    A, B = _orthogonal_maso(g, K=4, R=3, D=12)
    x = _randn(g, trials, 12, scale=2.0)
    joint, prod, _ = _factorial(A, B, x)
    cross = float(gmm.maso_orthogonality_penalty(A))
    return (
        _max_abs(joint, prod),
        "enumerated p(t_1..t_K|x) over R^K vs prod_k p(t_k|x)",
        (f"K = 4 units, R = 3, 81 configurations; penalty (11) = {cross:.0e}"),
    )


@check("cor1-joint-map", "orthogonal slopes: joint MAP = the per-unit MAPs", "Cor. 1, eq. 12", 0.0)
def _cor1(g, trials):
    A, B = _orthogonal_maso(g, K=4, R=3, D=12)
    x = _randn(g, trials, 12, scale=2.0)
    joint, _, marg = _factorial(A, B, x)
    mism = (gmm.joint_map(joint) != marg.argmax(-1)).any(-1).double().mean()
    return float(mism), "argmax over R^K vs per-unit argmax (fraction of inputs differing)", ""


@check(
    "thm4-contrast",
    "random (non-orthogonal) slopes: the factorisation fails",
    "Thm. 4 (contrast)",
    1e-3,
    contrast=True,
)
def _thm4_contrast(g, trials):
    A, B = _maso(g, K=4, R=3, D=12)
    x = _randn(g, trials, 12, scale=2.0)
    joint, prod, marg = _factorial(A, B, x)
    mism = float((gmm.joint_map(joint) != marg.argmax(-1)).any(-1).double().mean())
    note = f"joint MAP differs from per-unit MAPs on {100 * mism:.0f}% of inputs"
    return _max_abs(joint, prod), "enumerated joint posterior vs product (must differ)", note


@check(
    "eq11-penalty",
    "for ReLU the penalty (11) is the Gram off-diagonal energy the trainer computes",
    "Sec. 5, eq. 11",
    1e-9,
)
def _penalty(g, trials):
    W, b = _randn(g, 8, 3, 3, 3), _randn(g, 8)  # a conv weight, as the trainer holds it
    flat = W.reshape(8, 27)
    relu_pen = gmm.maso_orthogonality_penalty(specs.relu().as_maso(flat, b)[0])  # over r, r'
    errs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        w = W.contiguous(memory_format=layout).requires_grad_()
        value = gram_penalties(w)[0]  # the training code: hand-written backward
        (grad,) = torch.autograd.grad(value, w)
        ref = w.detach().clone().requires_grad_()
        rows = ref.reshape(8, 27)
        definition = sum(
            (rows[k] @ rows[j]) ** 2 for k in range(8) for j in range(8) if j != k
        )  # sum_{k != k'} <W_k, W_k'>^2, by autograd
        (ref_grad,) = torch.autograd.grad(definition, ref)
        scale = float(definition.detach())
        errs += [abs(float(value.detach()) - scale) / scale, abs(float(relu_pen) - scale) / scale]
        errs.append(_max_abs(grad, ref_grad) / float(ref_grad.abs().max()))
    return (
        max(errs),
        "gram_penalties' value and gradient vs float64 autograd of sum_{k!=k'} <W_k,W_k'>^2, "
        "and vs (11) over ReLU's regions; contiguous and channels_last; relative",
        "",
    )


@check(
    "sec5-wide-layer",
    "96 filters of 27 values: rows cannot be orthonormal; exact makes the columns so",
    "Sec. 5",
    1e-10,
)
def _wide(g, trials):
    errs, gaps = [], []
    for method in ("cholesky", "qr"):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        conv = torch.nn.Conv2d(3, 96, 3).double()  # largeCNN's first layer
        apply_orthogonality([conv], OrthoConfig(mode="exact", method=method))
        W = conv.weight.detach().reshape(96, 27)  # what the layer convolves with
        errs.append(_max_abs(W.T @ W, torch.eye(27, dtype=DT)))
        gaps.append(float(torch.linalg.matrix_norm(W @ W.T - torch.eye(96, dtype=DT))))
    row_gap = min(gaps)
    note = (
        f"||WW^T - I||_F = {row_gap:.3f} >= sqrt(96 - 27) = {math.sqrt(69):.3f} (rank <= 27); "
        f"max |W^T W - I|: cholesky {errs[0]:.0e}, qr {errs[1]:.0e}"
    )
    ok = row_gap >= math.sqrt(69) - 1e-9
    return (
        max(errs) if ok else math.inf,
        "W^T W vs I for a Conv2d(3, 96, 3) under ortho.mode exact (both methods)",
        note,
    )


# ---------------------------------------------------------------------------------- section 6
def _xavier_relu_prior(g: torch.Generator, D: int, v: float, draws: int) -> torch.Tensor:
    """Mean Thm. 2 prior (inactive, active) of ReLU units, zero bias, weights N(0, v^2)."""
    w = _randn(g, draws, D, scale=v)
    A, B = specs.relu().as_maso(w, torch.zeros(draws, dtype=DT))
    return gmm.region_prior(A, B).mean(0)


@check("appC-prior-abs", "absolute value: region prior (0.5, 0.5) at any init", "App. C", 1e-15)
def _appc_abs(g, trials):
    w = _randn(g, 4000, 64, scale=0.3)
    A, B = specs.absolute().as_maso(w, torch.zeros(4000, dtype=DT))
    return (
        _max_abs(gmm.region_prior(A, B), torch.full((4000, 2), 0.5, dtype=DT)),
        ("pi[k,.] for -w, w regions vs (0.5, 0.5)"),
        "||-w|| = ||w||, so the two regions always get the same prior",
    )


@check(
    "appC-prior-relu",
    "ReLU under Xavier init (D v^2 = 1): prior ~ (0.62 active, 0.38 inactive)",
    "App. C",
    0.005,
)
def _appc_relu(g, trials):
    D = 288  # e.g. a 3x3 conv over 32 channels
    pi = _xavier_relu_prior(g, D, 1 / math.sqrt(D), 20000)
    small = _xavier_relu_prior(g, D, 0.3 / math.sqrt(D), 20000)
    exact = 1 / (1 + math.exp(-0.5))  # ||w||^2 -> 1: pi_active = e^{1/2} / (1 + e^{1/2})
    note = (
        f"E[pi] = (inactive {pi[0]:.3f}, active {pi[1]:.3f}); limit {exact:.4f}. The 0.62 belongs "
        f"to the ACTIVE region (slope w, ||A||^2 = 1); appC-prior-direction checks the paper's "
        f"sentence against it. Smaller v moves it toward (0.5, 0.5) "
        f"(v = 0.3/sqrt(D): active {small[1]:.3f}), never past it"
    )
    return abs(float(pi[1]) - 0.62), "Monte Carlo E[pi_active] vs the paper's 0.62", note


@check(
    "appC-prior-direction",
    "the paper: under Xavier init the ReLU prior 'slightly favors the inactive state'",
    "App. C",
    0.01,
    refutes=True,
)
def _appc_direction(g, trials):
    D = 288
    draws = 20000
    pi = _xavier_relu_prior(g, D, 1 / math.sqrt(D), draws)  # (inactive, active)
    margin = float(pi[1] - pi[0])  # > 0: the ACTIVE state is favoured
    w = _randn(g, draws, D, scale=1 / math.sqrt(D))
    A, B = specs.relu().as_maso(w, torch.zeros(draws, dtype=DT))
    spread = float(gmm.region_prior(A, B)[:, 1].std()) / math.sqrt(draws)
    note = (
        f"E[pi] = (inactive {pi[0]:.3f}, active {pi[1]:.3f}): the active region is favoured "
        f"by {margin:.3f} (Monte Carlo s.e. {spread:.0e}), so the sentence is contradicted; "
        "the paper's own 0.62 is the active region's prior (appC-prior-relu)"
    )
    return margin, "E[pi_active] - E[pi_inactive] (the sentence needs it < 0)", note


# ------------------------------------------------------------------------------------ table 1
TABLE1 = [
    {
        "vq": "Hard VQ (HVQ), beta = 1",
        "problem": "argmax_t <t, s[k,:]> over the simplex",
        "examples": [
            ("ReLU, absolute value, leaky ReLU, max-affine", "eq2-hvq-specs"),
            ("max-pooling", "prop4-softmax-pool"),
            ("K-means assignment", "prop1-kmeans"),
            ("GMM MAP", "thm2-map"),
            ("limit beta -> 1 of the beta-VQ", "thm3-special"),
        ],
    },
    {
        "vq": "Soft VQ (SVQ), beta = 1/2",
        "problem": "argmax_t <t, s[k,:]> + H(t)",
        "examples": [
            ("sigmoid gated linear unit (SiLU)", "prop3-siglu"),
            ("softmax pooling", "prop4-softmax-pool"),
            ("sigmoid, tanh (soft DN layer)", "prop5-sigmoid"),
            ("softmax (class layer)", "prop6-softmax"),
        ],
    },
    {
        "vq": "beta-VQ, beta in [0, 1]",
        "problem": "argmax_t beta <t, s[k,:]> + (1 - beta) H(t)",
        "examples": [
            ("swish u*sigmoid(eta u)", "prop7-swish"),
            ("u*tanh(eta u), beta-leaky ReLU", "beta-abs-leaky"),
            ("beta-softmax pooling", "beta-pool"),
            ("softplus family (optimal value)", "thm3-value"),
        ],
    },
]


def run_checks(seed: int = 0, trials: int = 200) -> list[CheckResult]:
    """Run every registered check with its own generator seeded from `seed`."""
    return [c.run(seed * 1000 + i, trials) for i, c in enumerate(CHECKS)]
