"""The JAX solvers against closed forms, optimality conditions and brute force."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.weighting.solvers import min_norm_active_set
from mtlrnn.weighting.solvers import min_norm_simplex
from mtlrnn.weighting.solvers import min_norm_two
from mtlrnn.weighting.solvers import nonneg_qp
from mtlrnn.weighting.solvers import project_simplex


def _random_gram(k, d, seed):
    a = np.random.default_rng(seed).normal(size=(k, d)).astype(np.float32)
    return jnp.asarray(a @ a.T)


def test_project_simplex_hand_values_and_large_inputs():
    # Hand computation (Duchi et al. 2008): theta = 0.15 for [0.5, 0.8, -1].
    np.testing.assert_allclose(
        project_simplex(jnp.array([0.5, 0.8, -1.0])), [0.35, 0.65, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(project_simplex(jnp.array([1e8, 1e8 + 256, 3.0])), [0, 1, 0])
    w = project_simplex(jnp.array([3.0, 3.0, 3.0]))
    np.testing.assert_allclose(w, [1 / 3] * 3, atol=1e-6)


def test_project_simplex_is_the_closest_point():
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=4), jnp.float32)
    w = project_simplex(v)
    assert abs(float(w.sum()) - 1) < 1e-6 and float(w.min()) >= 0
    # No random simplex point is closer.
    samples = rng.dirichlet(np.ones(4), size=20000)
    assert float(jnp.sum((w - v) ** 2)) <= np.min(np.sum((samples - np.asarray(v)) ** 2, 1)) + 1e-6


def test_min_norm_two_matches_dense_grid():
    gram = _random_gram(2, 5, 1)
    grid = np.linspace(0, 1, 100001)
    obj = [np.array([t, 1 - t]) @ np.asarray(gram) @ np.array([t, 1 - t]) for t in grid[::100]]
    best = grid[::100][int(np.argmin(obj))]
    assert abs(float(min_norm_two(gram)[0]) - best) < 2e-3


@pytest.mark.parametrize("k", [3, 5, 8])
def test_min_norm_kkt(k):
    """KKT for min w^T G w on the simplex: (G w)_i equals the minimum on the support and is
    at least that everywhere."""
    gram = _random_gram(k, k + 3, k)
    w = jax.jit(
        lambda g: min_norm_simplex(g, method="projected_gradient", max_iter=5000, tol=1e-9)
    )(gram)
    gw = np.asarray(gram @ w)
    lam = float(w @ gram @ w)
    support = np.asarray(w) > 1e-4
    np.testing.assert_allclose(gw[support], lam, rtol=1e-3, atol=1e-4)
    assert np.all(gw >= lam - 1e-4)
    # Frank-Wolfe converges only as O(1/t) (Jaggi 2013): close, not exact.
    fw = min_norm_simplex(gram, method="frank_wolfe", max_iter=2000)
    assert lam - 1e-5 <= float(fw @ gram @ fw) <= lam * 1.05 + 1e-6


@pytest.mark.parametrize("k, d", [(3, 6), (5, 8), (8, 4)])
def test_min_norm_active_set_kkt_under_jit_and_vmap(k, d):
    """KKT of min w^T G w on the simplex (Wolfe 1976): (G w)_i >= w^T G w everywhere, with
    equality on the support, to float32 rounding; also with K > D (singular G)."""
    grams = jnp.stack([_random_gram(k, d, 20 + s) for s in range(3)])
    weights = jax.jit(jax.vmap(min_norm_active_set))(grams)
    for gram, w in zip(np.asarray(grams, np.float64), np.asarray(weights, np.float64), strict=True):
        scale = np.max(np.diag(gram))
        slack = (gram @ w - w @ gram @ w) / scale
        assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-6
        assert np.all(slack >= -2e-6)
        assert np.all(np.abs(slack[w > 1e-6]) <= 2e-6)
    # The default method of min_norm_simplex.
    np.testing.assert_array_equal(min_norm_simplex(grams[0]), min_norm_active_set(grams[0]))


def test_min_norm_active_set_edge_cases():
    np.testing.assert_allclose(min_norm_active_set(jnp.zeros((3, 3))), [1 / 3] * 3)
    # Hand computation: g1 = (1, 0), g2 = (0, 1), g3 = (1, 1): the min-norm point is (1/2, 1/2)
    # on the segment [g1, g2], w = (1/2, 1/2, 0).
    j = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(min_norm_active_set(j @ j.T), [0.5, 0.5, 0.0], atol=1e-7)


def test_nonneg_qp_kkt_and_vmap():
    gram = _random_gram(4, 6, 7)
    q = jnp.asarray([-1.0, 0.5, -0.2, 0.3])
    u = nonneg_qp(gram, q)
    grad = np.asarray(gram @ u + q)
    u = np.asarray(u)
    assert np.all(u >= 0)
    assert np.all(grad >= -1e-4)  # dual feasibility
    assert abs(float(u @ grad)) < 1e-4  # complementary slackness
    batched = jax.vmap(lambda qq: nonneg_qp(gram, qq))(jnp.stack([q, 2 * q]))
    np.testing.assert_allclose(batched[1], 2 * batched[0], rtol=1e-3, atol=1e-4)
