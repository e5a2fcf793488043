"""Pure torch functions for the paper's theory: MASO scores, VQ, GMM posteriors, specs."""

from softmaso.theory.gmm import (
    factorial_joint_posterior,
    gmm_log_posterior,
    joint_map,
    kmeans_assign,
    kmeans_offsets,
    maso_orthogonality_penalty,
    product_of_marginals,
    region_prior,
)
from softmaso.theory.specs import (
    MaxAffineSpec,
    absolute,
    leaky_relu,
    max_affine,
    maxpool_scores,
    parse_pieces,
    relu,
)
from softmaso.theory.vq import (
    beta_to_eta,
    beta_vq,
    beta_vq_objective,
    beta_vq_value,
    hard_vq,
    maso_output,
    maso_scores,
    soft_vq,
)

__all__ = [
    "MaxAffineSpec",
    "absolute",
    "beta_to_eta",
    "beta_vq",
    "beta_vq_objective",
    "beta_vq_value",
    "factorial_joint_posterior",
    "gmm_log_posterior",
    "hard_vq",
    "joint_map",
    "kmeans_assign",
    "kmeans_offsets",
    "leaky_relu",
    "maso_orthogonality_penalty",
    "maso_output",
    "maso_scores",
    "max_affine",
    "maxpool_scores",
    "parse_pieces",
    "product_of_marginals",
    "region_prior",
    "relu",
    "soft_vq",
]
