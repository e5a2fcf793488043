"""GMM side: Thm. 2 prior, K-means form, factorial posterior and its factorisation."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaso.theory import (
    factorial_joint_posterior,
    gmm_log_posterior,
    joint_map,
    kmeans_assign,
    kmeans_offsets,
    maso_orthogonality_penalty,
    maso_scores,
    product_of_marginals,
    region_prior,
    soft_vq,
)

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@given(st.integers(0, 10_000))
def test_soft_vq_is_the_gmm_posterior_and_kmeans_is_hvq(seed):
    g = _gen(seed)
    A, B, x = (torch.randn(*sh, generator=g, dtype=DT) for sh in ((3, 4, 5), (3, 4), (16, 5)))
    post = gmm_log_posterior(A, region_prior(A, B).log(), x).exp()
    assert torch.allclose(post, soft_vq(maso_scores(A, B, x)), atol=1e-12)
    assert torch.equal(maso_scores(A, kmeans_offsets(A), x).argmax(-1), kmeans_assign(A, x))


def _orthogonal(g, K, R, D):
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=DT))
    m = D // K
    return torch.stack(
        [torch.randn(R, m, generator=g, dtype=DT) @ Q[:, k * m : (k + 1) * m].T for k in range(K)]
    )


@settings(max_examples=30)
@given(st.integers(0, 10_000), st.integers(2, 4), st.integers(2, 3))
def test_orthogonal_slopes_factorise_the_joint_posterior(seed, K, R):
    g = _gen(seed)
    A = _orthogonal(g, K, R, 3 * K)
    B = torch.randn(K, R, generator=g, dtype=DT)
    x = torch.randn(10, 3 * K, generator=g, dtype=DT)
    assert float(maso_orthogonality_penalty(A)) < 1e-20
    joint = factorial_joint_posterior(A, region_prior(A, B).log(), x)
    marg = soft_vq(maso_scores(A, B, x))
    assert torch.allclose(joint, product_of_marginals(marg), atol=1e-12)
    assert torch.equal(joint_map(joint), marg.argmax(-1))


def test_non_orthogonal_slopes_do_not_factorise():
    g = _gen(0)
    A, B = torch.randn(3, 2, 6, generator=g, dtype=DT), torch.randn(3, 2, generator=g, dtype=DT)
    x = torch.randn(10, 6, generator=g, dtype=DT)
    joint = factorial_joint_posterior(A, region_prior(A, B).log(), x)
    assert (joint - product_of_marginals(soft_vq(maso_scores(A, B, x)))).abs().max() > 1e-2


def test_joint_map_decodes_the_flat_index():
    post = torch.zeros(1, 3, 3, 3)
    post[0, 2, 0, 1] = 1.0
    assert joint_map(post).tolist() == [[2, 0, 1]]


def test_penalty_matches_a_hand_computation():
    A = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.0, 1.0]]])  # K=2, R=2, D=2
    # cross pairs: <(1,0),(1,2)>=1, <(1,0),(0,1)>=0, <0,.>=0; each counted for (k,k') and (k',k)
    assert float(maso_orthogonality_penalty(A)) == 2.0
