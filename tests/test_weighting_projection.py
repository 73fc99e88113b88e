"""Projection-family gradient methods: closed forms, published values, the Gramian path,
permutation equivariance and jit for K = 2, 3, 8."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.weighting import get
from mtlrnn.weighting import projection
from mtlrnn.weighting.projection import FACTORIES
from mtlrnn.weighting.projection import _balance_transform
from mtlrnn.weighting.projection import _task_orders

# The matrix of TorchJD's published aggregator values.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)

_BALANCE = jax.jit(_balance_transform, static_argnums=1)

GRAM_METHODS = ["pcgrad", "gradvac", "cagrad", "imtl_g", "aligned_mtl", "config"]
DETERMINISTIC = [
    ("imtl_g", {}),
    ("cagrad", {}),
    ("cagrad", {"c": 0.9, "rescale": 0}),
    ("aligned_mtl", {}),
    ("aligned_mtl", {"scale": "median"}),
    ("aligned_mtl", {"scale": "rmse"}),
    ("config", {}),
]


def _random_jacobian(k, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    # A shared component plus noise: some pairs conflict, most do not.
    return (rng.normal(size=(k, d)) + shift * rng.normal(size=d)).astype(np.float32)


@functools.cache
def _cached(name, frozen_kwargs):
    return get(name, **dict(frozen_kwargs))


def _get(name, **kwargs):
    """One Strategy object per configuration, so jit's compilation cache is shared."""
    return _cached(name, tuple(sorted(kwargs.items())))


@functools.cache
def _jitted(strategy):
    return jax.jit(strategy.combine), jax.jit(strategy.from_gram) if strategy.from_gram else None


def _run(strategy, matrix, key=None, state=None):
    """One jitted step: (direction [D] as float64, state, info)."""
    k = matrix.shape[0]
    state = strategy.init(k) if state is None else state
    step = _jitted(strategy)[0]
    key = jax.random.key(0) if key is None else key
    out, state, info = step(state, jnp.ones((k,), jnp.float32), jnp.asarray(matrix), key)
    return np.asarray(out, np.float64), state, info


def _weights_from_gram(strategy, matrix, key=None, state=None):
    k = matrix.shape[0]
    state = strategy.init(k) if state is None else state
    key = jax.random.key(0) if key is None else key
    gram = jnp.asarray(matrix @ matrix.T)
    w, state, _ = _jitted(strategy)[1](state, jnp.ones((k,), jnp.float32), gram, key)
    return np.asarray(w, np.float64), state


def _unit(v):
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------------
# Published values.

# SimplexLab/TorchJD, tests/unit/aggregation/test_values.py (AGGREGATOR_PARAMETRIZATIONS and
# WEIGHTING_PARAMETRIZATIONS, checked there to atol 1e-4) for J = [[-4, 1, 1], [6, 1, 1]].
# TorchJD's conventions: PCGrad/GradVac sum, Aligned-MTL averages (our reduction="mean"),
# CAGrad has no rescaling (our rescale=0) and c=0.5; GradVac's first step (zero targets).
TORCHJD_VALUES = [
    ("pcgrad", {}, [0.5848, 3.8012, 3.8012], [2.2222, 1.5789]),
    ("gradvac", {}, [0.5848, 3.8012, 3.8012], [2.2222, 1.5789]),
    ("imtl_g", {}, [0.0767, 1.0, 1.0], [0.5923, 0.4077]),
    ("aligned_mtl", {"reduction": "mean"}, [0.2133, 0.9673, 0.9673], [0.5591, 0.4083]),
    ("config", {}, [0.1588, 2.0706, 2.0706], None),
    ("cagrad", {"c": 0.5, "rescale": 0}, [0.1835, 1.2041, 1.2041], [0.7041, 0.5]),
    # The other reductions scale the same values by K = 2.
    ("pcgrad", {"reduction": "mean"}, [0.2924, 1.9006, 1.9006], [1.1111, 0.78945]),
    ("aligned_mtl", {}, [0.4266, 1.9346, 1.9346], [1.1182, 0.8166]),
]


@pytest.mark.parametrize(("name", "kwargs", "direction", "weights"), TORCHJD_VALUES)
def test_published_values(name, kwargs, direction, weights):
    strategy = _get(name, **kwargs)
    out, _, info = _run(strategy, J_BASE, jax.random.key(3))
    np.testing.assert_allclose(out, direction, atol=1e-4)
    w_gram, _ = _weights_from_gram(strategy, J_BASE, jax.random.key(3))
    np.testing.assert_allclose(w_gram @ J_BASE, direction, atol=1e-4)
    if weights is not None:
        np.testing.assert_allclose(info["weights"], weights, atol=1e-4)


# ------------------------------------------------------------------------------------------
# PCGrad and GradVac.


def _pcgrad_reference(matrix, orders):
    """Yu et al.'s Alg. 1 on vectors (float64), with the given visiting orders."""
    g = matrix.astype(np.float64)
    projected = []
    for i, order in enumerate(orders):
        gi = g[i].copy()
        for j in order:
            if j != i and gi @ g[j] < 0:
                gi -= (gi @ g[j]) / (g[j] @ g[j]) * g[j]
        projected.append(gi)
    return np.sum(projected, axis=0)


def test_pcgrad_two_tasks_by_hand_any_order():
    g1, g2 = J_BASE.astype(np.float64)
    # Hand computation: g1.g2 = -22, |g1|^2 = 18, |g2|^2 = 38.
    g1_pc = g1 + 22.0 / 38.0 * g2
    g2_pc = g2 + 22.0 / 18.0 * g1
    # Both orders agree for K = 2 (each task has a single other task to visit).
    for orders in ([[0, 1], [0, 1]], [[1, 0], [1, 0]], [[1, 0], [0, 1]]):
        np.testing.assert_allclose(_pcgrad_reference(J_BASE, orders), g1_pc + g2_pc)
    strategy = _get("pcgrad")
    for seed in range(4):
        out, _, _ = _run(strategy, J_BASE, jax.random.key(seed))
        np.testing.assert_allclose(out, g1_pc + g2_pc, rtol=1e-5)
    # The projected gradients no longer conflict with the other original gradient.
    assert abs(g1_pc @ g2) < 1e-9 and abs(g2_pc @ g1) < 1e-9


def test_pcgrad_without_conflict_is_the_sum():
    matrix = np.abs(_random_jacobian(4, 12, 1))  # all inner products positive
    out, _, info = _run(_get("pcgrad"), matrix, jax.random.key(0))
    np.testing.assert_allclose(out, matrix.sum(0), rtol=1e-5)
    np.testing.assert_allclose(info["weights"], np.ones(4), rtol=1e-6)


@pytest.mark.parametrize("k", [3, 8])
def test_pcgrad_matches_vector_reference(k):
    matrix = _random_jacobian(k, 12, k, shift=0.3)
    key = jax.random.key(11)
    orders = np.asarray(_task_orders(key, k))
    out, _, info = _run(_get("pcgrad"), matrix, key)
    expected = _pcgrad_reference(matrix, orders)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(info["weights"]) @ matrix, expected, atol=1e-4)


def test_pcgrad_order_is_random_for_three_tasks():
    # Three mutually conflicting gradients: the outcome depends on the visiting order.
    matrix = np.zeros((3, 12), np.float32)
    matrix[:, :2] = [[1.0, 0.0], [-0.8, 0.6], [-0.6, -0.8]]
    outs = {
        tuple(np.round(_run(_get("pcgrad"), matrix, jax.random.key(s))[0], 5)) for s in range(8)
    }
    assert len(outs) > 1


def _gradvac_reference(matrix, orders, phi_hat, beta):
    """Wang et al.'s GradVac on vectors (float64): direction and updated targets."""
    g = matrix.astype(np.float64)
    phi_hat = phi_hat.astype(np.float64).copy()
    out = np.zeros(g.shape[1])
    for i, order in enumerate(orders):
        gi = g[i].copy()
        for j in order:
            if j == i:
                continue
            phi = gi @ g[j] / (np.linalg.norm(gi) * np.linalg.norm(g[j]))
            target = phi_hat[i, j]
            if phi < target:
                gi += (
                    np.linalg.norm(gi)
                    * (target * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - target**2))
                    / (np.linalg.norm(g[j]) * np.sqrt(1 - target**2))
                    * g[j]
                )
            phi_hat[i, j] = (1 - beta) * target + beta * phi
        out += gi
    return out, phi_hat


def test_gradvac_first_step_is_pcgrad_and_sets_targets():
    k = 3
    matrix = _random_jacobian(k, 12, 5, shift=0.2)
    key = jax.random.key(4)
    pc, _, _ = _run(_get("pcgrad"), matrix, key)
    vac, state, _ = _run(_get("gradvac"), matrix, key)
    np.testing.assert_allclose(vac, pc, rtol=1e-5, atol=1e-5)
    _, phi_hat = _gradvac_reference(matrix, np.asarray(_task_orders(key, k)), np.zeros((k, k)), 0.5)
    np.testing.assert_allclose(state.phi_hat, phi_hat, atol=1e-5)
    # K = 2 by hand: cos(g1, g2) = -22 / sqrt(18 * 38) is seen by both tasks before surgery.
    _, state, _ = _run(_get("gradvac"), J_BASE, key)
    cos = -22.0 / np.sqrt(18.0 * 38.0)
    np.testing.assert_allclose(state.phi_hat, [[0.0, 0.5 * cos], [0.5 * cos, 0.0]], atol=1e-6)


def test_gradvac_sets_the_cosine_to_the_target():
    # Two tasks with positive targets 0.5: each vaccinated gradient has cosine exactly 0.5
    # with the other original gradient (the closed form of the paper's Eq. 2).
    g1, g2 = J_BASE.astype(np.float64)
    strategy = _get("gradvac")
    state = projection.GradVacState(phi_hat=jnp.asarray([[0.0, 0.5], [0.5, 0.0]], jnp.float32))
    out, new_state, info = _run(strategy, J_BASE, jax.random.key(0), state)
    w = np.asarray(info["weights"], np.float64)  # = (1 + a21, 1 + a12) for g_i + a_ij g_j
    g1_vac = g1 + (w[1] - 1.0) * g2
    g2_vac = g2 + (w[0] - 1.0) * g1
    assert abs(g1_vac @ g2 / np.linalg.norm(g1_vac) / np.linalg.norm(g2) - 0.5) < 1e-5
    assert abs(g2_vac @ g1 / np.linalg.norm(g2_vac) / np.linalg.norm(g1) - 0.5) < 1e-5
    np.testing.assert_allclose(out, g1_vac + g2_vac, rtol=1e-5)
    # EMA with beta = 0.5 of the target 0.5 and the cosine seen before the surgery.
    cos = -22.0 / np.sqrt(18.0 * 38.0)
    np.testing.assert_allclose(new_state.phi_hat, 0.5 * state.phi_hat + 0.5 * cos * (1 - np.eye(2)))


def test_gradvac_matches_vector_reference_over_steps():
    k, beta = 3, 0.5
    strategy = _get("gradvac")
    state = strategy.init(k)
    phi_ref = np.zeros((k, k))
    step = _jitted(strategy)[0]
    for t in range(3):
        matrix = _random_jacobian(k, 12, 20 + t, shift=0.5)
        key = jax.random.key(t)
        out, state, _ = step(state, jnp.ones(k), jnp.asarray(matrix), key)
        expected, phi_ref = _gradvac_reference(
            matrix, np.asarray(_task_orders(key, k)), phi_ref, beta
        )
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(state.phi_hat, phi_ref, atol=1e-5)
        assert state.phi_hat.dtype == jnp.float32


# ------------------------------------------------------------------------------------------
# GradDrop.


def test_graddrop_agreeing_signs_keep_the_sum():
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=10)
    matrix = (np.abs(rng.normal(size=(3, 10))) * signs).astype(np.float32)
    for seed in range(3):
        out, _, info = _run(_get("graddrop"), matrix, jax.random.key(seed))
        np.testing.assert_allclose(out, matrix.sum(0), rtol=1e-6)
        assert float(info["drop_fraction"]) == 0.0


def test_graddrop_picks_one_sign_with_the_purity_probability():
    # Column 0 of J_BASE: purity P = (1 + 2/10) / 2 = 0.6, so the positive 6 survives with
    # probability 0.6 and the negative -4 otherwise; columns 1, 2 agree and sum to 2.
    # TorchJD publishes [6, 2, 2] for one draw (tests/unit/aggregation/test_values.py).
    strategy = _get("graddrop")
    keys = jax.random.split(jax.random.key(0), 2000)
    combine = jax.jit(
        jax.vmap(lambda key: strategy.combine((), jnp.ones(2), jnp.asarray(J_BASE), key)[0])
    )
    outs = np.asarray(combine(keys))
    np.testing.assert_allclose(outs[:, 1:], 2.0)
    assert set(np.unique(outs[:, 0])) == {-4.0, 6.0}
    assert abs(np.mean(outs[:, 0] == 6.0) - 0.6) < 0.04  # 4 standard errors


def test_graddrop_leak():
    strategy = _get("graddrop", leak=1.0)  # everything leaks through: plain sum
    out, _, _ = _run(strategy, J_BASE, jax.random.key(0))
    np.testing.assert_allclose(out, J_BASE.sum(0))
    # Task 0 leaks fully, task 1 not at all: column 0 is -4 + 6 * [6 kept].
    strategy = _get("graddrop", leak=(1.0, 0.0))
    out, _, _ = _run(strategy, J_BASE, jax.random.key(0))
    assert out[0] in (-4.0, 2.0)
    np.testing.assert_allclose(out[1:], 2.0)
    with pytest.raises(ValueError, match="leak"):
        strategy.init(3)


# ------------------------------------------------------------------------------------------
# CAGrad.


def test_cagrad_c0_is_the_mean():
    matrix = _random_jacobian(3, 12, 2, shift=0.5)
    out, _, info = _run(_get("cagrad", c=0.0, rescale=0), matrix)
    np.testing.assert_allclose(out, matrix.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info["weights"], np.full(3, 1 / 3), rtol=1e-6)


def _cagrad_dual_objective(gram, w, c):
    k = gram.shape[0]
    return w @ gram @ np.full(k, 1 / k) + c * np.sqrt(gram.mean()) * np.sqrt(w @ gram @ w)


def _dual_weights(info, k):
    """The dual minimiser w* recovered from rescale=0 weights 1/K + lambda w*."""
    excess = np.asarray(info["weights"], np.float64) - 1.0 / k
    return excess / excess.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cagrad_dual_optimal_vs_grid_two_tasks(seed):
    c = 0.4
    matrix = _random_jacobian(2, 12, seed, shift=0.7 * seed)
    gram = matrix.astype(np.float64) @ matrix.T
    _, _, info = _run(_get("cagrad", c=c, rescale=0), matrix)
    w = _dual_weights(info, 2)
    grid = np.linspace(0.0, 1.0, 100_001)
    values = [_cagrad_dual_objective(gram, np.array([a, 1 - a]), c) for a in grid[::50]]
    a_best = grid[::50][int(np.argmin(values))]
    fine = grid[np.abs(grid - a_best) <= 1e-3]
    best = min(_cagrad_dual_objective(gram, np.array([a, 1 - a]), c) for a in fine)
    scale = np.trace(gram) / 2
    assert _cagrad_dual_objective(gram, w, c) <= best + 1e-6 * scale
    assert np.all(w >= -1e-6)


def test_cagrad_dual_optimal_vs_grid_three_tasks():
    c = 0.4
    matrix = _random_jacobian(3, 12, 7, shift=0.3)
    gram = matrix.astype(np.float64) @ matrix.T
    _, _, info = _run(_get("cagrad", c=c, rescale=0), matrix)
    w = _dual_weights(info, 3)
    a, b = np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401))
    pts = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], 1)
    pts = pts[pts[:, 2] >= 0]
    values = pts @ gram @ np.full(3, 1 / 3) + c * np.sqrt(gram.mean()) * np.sqrt(
        np.einsum("ni,ij,nj->n", pts, gram, pts)
    )
    assert _cagrad_dual_objective(gram, w, c) <= values.min() + 1e-6 * np.trace(gram)


def test_cagrad_primal_properties_and_rescale():
    # The direction d = argmax_d min_i g_i . d over the ball ||d - g_0|| <= c ||g_0||:
    # it lies in the ball and does at least as well as g_0 on the worst task.
    c = 0.4
    matrix = _random_jacobian(3, 12, 3, shift=0.4)
    g0 = matrix.mean(0).astype(np.float64)
    raw, _, _ = _run(_get("cagrad", c=c, rescale=0), matrix)
    assert np.linalg.norm(raw - g0) <= c * np.linalg.norm(g0) * (1 + 1e-4)
    assert (matrix @ raw).min() >= (matrix @ g0).min() - 1e-5
    one, _, _ = _run(_get("cagrad"), matrix)  # the default: c = 0.4, rescale = 1
    two, _, _ = _run(_get("cagrad", c=c, rescale=2), matrix)
    np.testing.assert_allclose(one, raw / (1 + c**2), rtol=1e-5)
    np.testing.assert_allclose(two, raw / (1 + c), rtol=1e-5)


# ------------------------------------------------------------------------------------------
# IMTL-G, Aligned-MTL, ConFIG.


@pytest.mark.parametrize("k", [2, 3, 8])
def test_imtl_g_equal_projections_and_paper_closed_form(k):
    matrix = _random_jacobian(k, 12, 30 + k, shift=0.5)
    out, _, info = _run(_get("imtl_g"), matrix)
    units = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    proj = units @ out
    np.testing.assert_allclose(proj, np.full(k, proj.mean()), rtol=1e-4)
    np.testing.assert_allclose(np.sum(info["weights"]), 1.0, rtol=1e-5)
    # The paper's form: alpha_{2:K} = g_1 U^T (D U^T)^{-1}, D_k = g_1 - g_k, U_k = u_1 - u_k.
    g = matrix.astype(np.float64)
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d_mat, u_mat = g[0] - g[1:], u[0] - u[1:]
    alpha_rest = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    alpha = np.concatenate([[1.0 - alpha_rest.sum()], alpha_rest])
    np.testing.assert_allclose(info["weights"], alpha, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
@pytest.mark.parametrize(("k", "d"), [(3, 12), (8, 12), (4, 2)])
def test_aligned_mtl_equal_singular_values(scale, k, d):
    matrix = _random_jacobian(k, d, k + d, shift=0.5)
    gram = jnp.asarray(matrix @ matrix.T)
    balance = np.asarray(_BALANCE(gram, scale), np.float64)
    sigma = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)[: min(k, d)]
    aligned = np.linalg.svd(balance @ matrix, compute_uv=False)[: min(k, d)]
    expected = {
        "min": sigma.min(),
        "median": np.median(sigma),
        "rmse": np.sqrt(np.mean(sigma**2)),
    }[scale]
    # Condition number 1: every non-zero singular value of B J equals the chosen scale.
    np.testing.assert_allclose(aligned, np.full_like(aligned, expected), rtol=1e-3)
    out, _, _ = _run(_get("aligned_mtl", scale=scale), matrix)
    np.testing.assert_allclose(out, (balance @ matrix).sum(0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("k", [2, 3, 8])
def test_config_equal_nonnegative_cosines(k):
    matrix = _random_jacobian(k, 12, 40 + k, shift=0.3)
    matrix[1] = -matrix[0] + 0.3 * matrix[1]  # a strong conflict
    out, _, _ = _run(_get("config"), matrix)
    cos = (matrix @ out) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(out))
    assert cos.min() > 0
    np.testing.assert_allclose(cos, np.full(k, cos.mean()), rtol=1e-3)
    # Its length is sum_i g_i . g_u for the unit direction g_u.
    np.testing.assert_allclose(np.linalg.norm(out), np.sum(matrix @ _unit(out)), rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Gramian path, equivariance, jit, robustness, validation.


@pytest.mark.parametrize(
    ("name", "k"), [(n, 3) for n in GRAM_METHODS] + [("pcgrad", 8), ("gradvac", 8)]
)
def test_from_gram_equals_matrix_direction(name, k):
    strategy = _get(name)
    matrix = _random_jacobian(k, 12, 50 + k, shift=0.4)
    key = jax.random.key(9)
    out, state_m, info = _run(strategy, matrix, key)
    weights, state_g = _weights_from_gram(strategy, matrix, key)
    np.testing.assert_allclose(weights @ matrix, out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weights, info["weights"], rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state_m), jax.tree.leaves(state_g), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), DETERMINISTIC)
def test_permutation_equivariance(name, kwargs):
    strategy = _get(name, **kwargs)
    matrix = _random_jacobian(4, 12, 60, shift=0.3)
    perm = np.array([2, 0, 3, 1])
    out, _, info = _run(strategy, matrix)
    out_p, _, info_p = _run(strategy, matrix[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(info_p["weights"], np.asarray(info["weights"])[perm], atol=1e-4)


@pytest.mark.parametrize(("name", "kwargs"), DETERMINISTIC)
def test_weights_invariant_to_gradient_scale(name, kwargs):
    strategy = _get(name, **kwargs)
    matrix = _random_jacobian(4, 12, 61, shift=0.3)
    out, _, info = _run(strategy, matrix)
    out_s, _, info_s = _run(strategy, 100.0 * matrix)
    np.testing.assert_allclose(info_s["weights"], info["weights"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(out_s, 100.0 * out, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("k", [2, 3, 8])
def test_jit_shapes_and_stable_state(name, k):
    strategy = _get(name)
    state = strategy.init(k)
    structure = jax.tree.structure(state)
    step = _jitted(strategy)[0]
    for t in range(2):
        matrix = jnp.asarray(_random_jacobian(k, 12, 70 + t, shift=0.2))
        out, state, info = step(state, jnp.ones(k), matrix, jax.random.key(t))
        assert out.shape == (12,) and out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))
        assert jax.tree.structure(state) == structure
        if "weights" in info:
            assert info["weights"].shape == (k,)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_zero_and_duplicate_gradients_stay_finite(name):
    strategy = _get(name)
    matrix = _random_jacobian(4, 12, 80)
    matrix[1] = 0.0  # a task with no gradient
    matrix[3] = matrix[2]  # two identical tasks (rank-deficient Gramian)
    out, _, _ = _run(strategy, matrix, jax.random.key(0))
    assert np.all(np.isfinite(out))
    zero, _, _ = _run(strategy, np.zeros((4, 12), np.float32), jax.random.key(0))
    np.testing.assert_allclose(zero, 0.0)


def test_bfloat16_gradients_keep_their_dtype():
    matrix = jnp.asarray(_random_jacobian(3, 6, 90), jnp.bfloat16)
    # The two code paths: Gramian-weighted methods and the elementwise GradDrop; key=None.
    for name in ("imtl_g", "graddrop"):
        strategy = _get(name)
        out, _, _ = jax.jit(strategy.combine)(strategy.init(3), jnp.ones(3), matrix, None)
        assert out.dtype == jnp.bfloat16, name


@pytest.mark.parametrize(
    ("name", "kwargs", "param"),
    [
        ("pcgrad", {"reduction": "max"}, "reduction"),
        ("gradvac", {"beta": 1.5}, "beta"),
        ("gradvac", {"reduction": "avg"}, "reduction"),
        ("graddrop", {"leak": -0.1}, "leak"),
        ("graddrop", {"leak": ["a"]}, "leak"),
        ("cagrad", {"c": -1.0}, "c"),
        ("cagrad", {"rescale": 3}, "rescale"),
        ("cagrad", {"rescale": True}, "rescale"),
        ("cagrad", {"max_iter": 0}, "max_iter"),
        ("aligned_mtl", {"scale": "max"}, "scale"),
    ],
)
def test_factory_validation(name, kwargs, param):
    with pytest.raises(ValueError, match=f"^{param}: "):
        get(name, **kwargs)


def test_registry_names_and_modes():
    assert set(FACTORIES) == {
        "pcgrad",
        "gradvac",
        "graddrop",
        "cagrad",
        "imtl_g",
        "aligned_mtl",
        "config",
    }
    for name in FACTORIES:
        strategy = get(name)
        assert strategy.name == name and strategy.requires == "grads"
        assert ("gramian" in strategy.modes) == (name != "graddrop")
        # GradDrop's paper form needs batch-summed, sign-corrected activation gradients.
        assert ("representation" in strategy.modes) == (name != "graddrop")
    # Each task's visiting order (PCGrad, GradVac) is a permutation, drawn per task.
    orders = np.asarray(_task_orders(jax.random.key(0), 5))
    for row in orders:
        assert sorted(row) == list(range(5))
    assert len({tuple(r) for r in orders}) > 1
