"""Tests for the dual/solver-based gradient strategies (mtlrnn/weighting/dual.py).

Reference values: TorchJD's published outputs for ``J = [[-4, 1, 1], [6, 1, 1]]``
(TorchJD/torchjd, tests/unit/aggregation/test_values.py), TorchJD's GradNorm Algorithm-1
checks (SimplexLab/TorchJD, tests/unit/aggregation/test_gradnorm.py) and hand computations
from the papers' equations (each cited where used).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.weighting import dual
from mtlrnn.weighting import registry
from mtlrnn.weighting.solvers import project_simplex

J_BASE = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
ONES2 = jnp.ones((2,))

GRAM_METHODS = ("mgda", "mgda_ub", "upgrad", "dualproj", "nash_mtl", "fairgrad", "gradnorm")
DIM_METHODS = ("moco", "excess_mtl", "db_mtl")
ALL_METHODS = GRAM_METHODS + DIM_METHODS

# One strategy and one jitted combine per method, shared by the tests (compile once per K).
STRATEGIES = {name: dual.FACTORIES[name]() for name in ALL_METHODS}
JITTED = {name: jax.jit(s.combine) for name, s in STRATEGIES.items()}


def _init(strategy, k, d):
    return strategy.init(k, dim=d) if strategy.needs_dim else strategy.init(k)


def _problem(k, d, seed):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(k, d)) * rng.uniform(0.5, 2.0, size=(k, 1))
    grads[:, : d // 2] += rng.normal(size=(1, d // 2))  # partly aligned, partly conflicting
    losses = rng.uniform(0.5, 2.0, size=(k,))
    return jnp.asarray(losses, jnp.float32), jnp.asarray(grads, jnp.float32)


def test_registry_exposes_every_method():
    assert set(dual.FACTORIES) == set(ALL_METHODS)
    assert set(ALL_METHODS) <= set(registry.names())
    for name in ALL_METHODS:
        assert registry.get(name).name == name


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    "name, expected_direction, expected_weights",
    [
        # TorchJD/torchjd tests/unit/aggregation/test_values.py (J_base, G_base rows).
        ("mgda", [0.0, 1.0, 1.0], [0.6, 0.4]),
        ("upgrad", [0.2929, 1.9004, 1.9004], [1.1109, 0.7894]),
        ("dualproj", [0.5563, 1.1109, 1.1109], [0.6109, 0.5]),
        # NashMTL(n_tasks=2) with its default max_norm=1.0 (same file; weights not published).
        ("nash_mtl", [0.0542, 0.7061, 0.7061], None),
    ],
)
def test_torchjd_published_values(name, expected_direction, expected_weights):
    strategy = STRATEGIES[name]
    direction, _, info = JITTED[name](strategy.init(2), ONES2, J_BASE)
    np.testing.assert_allclose(direction, expected_direction, atol=1e-4, rtol=0)
    if expected_weights is not None:
        np.testing.assert_allclose(info["weights"], expected_weights, atol=1e-4, rtol=0)


def test_mgda_two_task_closed_form():
    # Hand computation (Sener & Koltun 2018, Alg. 1): g1 = (1, 0), g2 = (0, 2), G = diag(1, 4),
    # w1 = (G22 - G12) / (G11 + G22 - 2 G12) = 4 / 5, direction = (0.8, 0.4).
    grads = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    direction, _, info = JITTED["mgda"]((), ONES2, grads)
    np.testing.assert_allclose(info["weights"], [0.8, 0.2], atol=1e-6)
    np.testing.assert_allclose(direction, [0.8, 0.4], atol=1e-6)


@pytest.mark.parametrize(
    "solver, tol", [("active_set", 1e-6), ("projected_gradient", 1e-5), ("frank_wolfe", 1e-2)]
)
def test_mgda_min_norm_kkt_three_tasks(solver, tol):
    # KKT of min w^T G w on the simplex: (G w)_i >= w^T G w, with equality where w_i > 0.
    # Frank-Wolfe converges sublinearly (250 steps), hence its looser tolerance.
    losses, grads = _problem(3, 5, seed=3)
    _, _, info = dual.mgda(solver=solver).combine((), losses, grads)
    w = np.asarray(info["weights"], np.float64)
    gram = np.asarray(grads, np.float64) @ np.asarray(grads, np.float64).T
    slack = (gram @ w - w @ gram @ w) / np.max(np.diag(gram))  # scale-free
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-6
    assert np.all(slack >= -tol)
    assert np.all(np.abs(slack[w > 1e-2]) <= tol)
    assert 0 < np.sum(w > 1e-2) < 3  # this instance has a boundary solution


def test_mgda_normalization_conventions():
    losses, grads = _problem(3, 6, seed=4)
    scale = jnp.array([0.1, 3.0, 20.0])
    # "l2": weights are solved on unit gradients, so rescaling a task's gradient leaves them.
    l2 = dual.mgda(normalize="l2", solver="projected_gradient")
    _, _, a = l2.combine((), losses, grads)
    _, _, b = l2.combine((), losses, grads * scale[:, None])
    np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-5)
    # "loss": g_k / L_k is invariant when loss and gradient are scaled together.
    loss_norm = dual.mgda(normalize="loss", solver="projected_gradient")
    _, _, c = loss_norm.combine((), losses, grads)
    _, _, d = loss_norm.combine((), losses * scale, grads * scale[:, None])
    np.testing.assert_allclose(c["weights"], d["weights"], atol=1e-5)
    # The weights apply to the raw gradients (the authors' code scales the raw losses).
    direction, _, info = loss_norm.combine((), losses, grads)
    np.testing.assert_allclose(direction, info["weights"] @ grads, atol=1e-5)


def test_mgda_ub_runs_only_in_representation_mode():
    assert dual.mgda_ub().modes == ("representation",)
    assert set(dual.mgda().modes) == {"full", "representation", "gramian"}


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_methods_do_not_conflict(name):
    # J d >= 0 (no task gets worse to first order) up to the reg_eps ridge: from the KKT
    # conditions of min lambda^T (G/tr + eps I) lambda, (G w)_k >= -eps tr(G) w_k.
    rng = np.random.default_rng(1)
    grads = jnp.asarray(rng.normal(size=(6, 9)) * rng.uniform(0.2, 3.0, size=(6, 1)), jnp.float32)
    losses = jnp.ones((6,))
    direction, _, info = JITTED[name](STRATEGIES[name].init(6), losses, grads)
    w = np.asarray(info["weights"], np.float64)
    trace = float(np.sum(np.asarray(grads, np.float64) ** 2))
    assert np.all(w >= 0)
    assert np.all(np.asarray(grads @ direction) >= -(1e-4 * trace * w + 1e-4))
    conflicting = np.asarray(grads @ grads.mean(0))
    assert np.any(conflicting < 0)  # the mean gradient itself conflicts on this instance


# ----------------------------------------------------------------------------- Nash / FairGrad


@pytest.mark.parametrize("scale", ["raw", "frobenius"])
def test_nash_mtl_solves_bargaining_equation(scale):
    losses, grads = _problem(4, 8, seed=6)
    strategy = dual.nash_mtl(max_norm=0.0, scale=scale)
    _, _, info = jax.jit(strategy.combine)(strategy.init(4), losses, grads)
    alpha = np.asarray(info["weights"], np.float64)
    gram = np.asarray(grads, np.float64) @ np.asarray(grads, np.float64).T
    if scale == "frobenius":
        gram /= np.linalg.norm(gram)
    # "raw" (default): the authors' constraint alpha_k (G alpha)_k >= 1 on the raw Gramian.
    assert np.all(alpha > 0)
    np.testing.assert_allclose(gram @ alpha, 1.0 / alpha, rtol=1e-4)


def test_nash_mtl_clips_direction_norm():
    losses, grads = _problem(3, 5, seed=7)
    clipped, _, _ = dual.nash_mtl(max_norm=1.0).combine(dual.nash_mtl().init(3), losses, grads)
    free, _, info = dual.nash_mtl(max_norm=0.0).combine(dual.nash_mtl().init(3), losses, grads)
    assert float(info["direction_norm"]) > 1.0  # so clipping is active
    np.testing.assert_allclose(jnp.linalg.norm(clipped), 1.0, rtol=1e-5)
    np.testing.assert_allclose(clipped, free / jnp.linalg.norm(free), atol=1e-6)


def test_nash_mtl_update_every_reuses_weights():
    strategy = dual.nash_mtl(update_weights_every=3, max_norm=0.0)
    step = jax.jit(strategy.combine)
    state = strategy.init(3)
    weights = []
    for seed in range(4):
        losses, grads = _problem(3, 5, seed=10 + seed)
        _, state, info = step(state, losses, grads)
        weights.append(np.asarray(info["weights"]))
    assert int(state.step) == 4
    np.testing.assert_array_equal(weights[1], weights[0])
    np.testing.assert_array_equal(weights[2], weights[0])
    losses, grads = _problem(3, 5, seed=13)
    _, _, fresh = step(strategy.init(3), losses, grads)
    np.testing.assert_allclose(weights[3], fresh["weights"], rtol=1e-6)
    assert not np.allclose(weights[3], weights[0])


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_alpha_fair_equation(alpha):
    # Ban & Ji 2024, Eq. 4: G w = w^(-1/alpha) on the unnormalised Gramian.
    losses, grads = _problem(4, 8, seed=8)
    strategy = dual.fairgrad(alpha=alpha, max_norm=0.0)
    _, _, info = strategy.combine((), losses, grads)
    w = np.asarray(info["weights"], np.float64)
    gram = np.asarray(grads, np.float64) @ np.asarray(grads, np.float64).T
    assert np.all(w > 0)
    np.testing.assert_allclose(gram @ w, w ** (-1.0 / alpha), rtol=1e-3)


def test_fairgrad_alpha_one_is_nash():
    # Both solve G w = 1/w on the raw Gramian; Nash-MTL's scale="frobenius" solves
    # (G/c) a = 1/a, so w = a / sqrt(c) with c = ||G||_F.
    losses, grads = _problem(3, 6, seed=9)
    _, _, fair = dual.fairgrad(alpha=1.0, max_norm=0.0).combine((), losses, grads)
    nash = dual.nash_mtl(max_norm=0.0)
    _, _, bargain = nash.combine(nash.init(3), losses, grads)
    np.testing.assert_allclose(fair["weights"], bargain["weights"], rtol=1e-4)
    frob_nash = dual.nash_mtl(max_norm=0.0, scale="frobenius")
    _, _, normalised = frob_nash.combine(frob_nash.init(3), losses, grads)
    frob = jnp.linalg.norm(grads @ grads.T)
    np.testing.assert_allclose(fair["weights"] * jnp.sqrt(frob), normalised["weights"], rtol=1e-4)


# ----------------------------------------------------------------------------- GradNorm


def test_gradnorm_matches_algorithm_one():
    # SimplexLab/TorchJD tests/unit/aggregation/test_gradnorm.py,
    # test_two_sgd_steps_match_algorithm_one: alpha=0, lr=0.1, unit losses, diag(G) below.
    strategy = dual.gradnorm(alpha=0.0, lr=0.1)
    state = strategy.init(3)
    diagonals = [[1.0, 4.0, 25.0], [4.0, 1.0, 16.0]]
    expected = [[33 / 28, 9 / 7, 15 / 28], [411 / 350, 291 / 175, 57 / 350]]
    before = np.ones(3)
    for diagonal, after in zip(diagonals, expected, strict=True):
        weights, state, info = strategy.from_gram(state, jnp.ones(3), jnp.diag(jnp.array(diagonal)))
        np.testing.assert_allclose(weights, before, rtol=1e-6)  # direction uses current w
        np.testing.assert_allclose(state.weights, after, rtol=1e-5)
        before = np.asarray(after)


def test_gradnorm_loss_and_initial_losses():
    # Same file, test_initial_weights_and_detached_target: losses (2, 4, 8), diag(G) =
    # (1, 4, 25), w = 1, alpha = 1.5 -> L_grad = 14/3 and d L_grad / d w = (-1, -2, 5).
    strategy = dual.gradnorm(lr=0.1)
    losses = jnp.array([2.0, 4.0, 8.0])
    _, state, info = strategy.from_gram(strategy.init(3), losses, jnp.diag(jnp.array([1.0, 4, 25])))
    np.testing.assert_allclose(info["gradnorm_loss"], 14 / 3, rtol=1e-6)
    np.testing.assert_allclose(state.initial_losses, losses)
    new = 1.0 - 0.1 * np.array([-1.0, -2.0, 5.0])
    np.testing.assert_allclose(state.weights, 3 * new / new.sum(), rtol=1e-6)
    _, state, _ = strategy.from_gram(state, 2 * losses, jnp.eye(3))
    np.testing.assert_allclose(state.initial_losses, losses)  # kept from the first call


# ----------------------------------------------------------------------------- stateful (dim)


def test_moco_tracks_gradients_and_projects_weights():
    losses, grads = _problem(3, 4, seed=11)
    strategy = STRATEGIES["moco"]
    assert strategy.needs_dim and strategy.modes == ("full",)
    with pytest.raises(TypeError):
        strategy.init(3)
    state = strategy.init(3, dim=4)
    assert state.tracked.shape == (3, 4) and state.tracked.dtype == jnp.float32
    direction, state, info = JITTED["moco"](state, losses, grads)
    # Fernando et al. 2023, Alg. 1 at t = 1 with beta = 0.5, gamma = 0.1, rho = 0, Y0 = 0:
    y = 0.5 * np.asarray(grads, np.float64)
    lam = project_simplex(jnp.asarray(np.full(3, 1 / 3) - 0.1 * (y @ y.T) @ np.full(3, 1 / 3)))
    np.testing.assert_allclose(state.tracked, y, rtol=1e-6)
    np.testing.assert_allclose(info["weights"], lam, atol=1e-6)
    np.testing.assert_allclose(direction, np.asarray(lam) @ y, atol=1e-5)
    # Second step: beta_2 = 0.5 / sqrt(2).
    losses2, grads2 = _problem(3, 4, seed=12)
    _, state, info = JITTED["moco"](state, losses2, grads2)
    beta2 = 0.5 / np.sqrt(2.0)
    np.testing.assert_allclose(state.tracked, y - beta2 * (y - np.asarray(grads2)), rtol=1e-5)
    assert abs(float(jnp.sum(info["weights"])) - 1) < 1e-6 and jnp.all(info["weights"] >= 0)


def test_db_mtl_two_steps_by_hand():
    # Lin et al. 2023: m <- beta m + (1 - beta) g / (L + 1e-8), d = sum_k max|m| / |m_k| m_k.
    strategy = STRATEGIES["db_mtl"]
    state = strategy.init(2, dim=3)
    m = np.zeros((2, 3))
    for seed in (13, 14):
        losses, grads = _problem(2, 3, seed=seed)
        direction, state, info = JITTED["db_mtl"](state, losses, grads)
        logg = np.asarray(grads, np.float64) / (np.asarray(losses, np.float64)[:, None] + 1e-8)
        m = 0.9 * m + 0.1 * logg
        norms = np.linalg.norm(m, axis=1)
        scales = norms.max() / (norms + 1e-8)
        np.testing.assert_allclose(state.buffer, m, rtol=1e-5)
        np.testing.assert_allclose(info["weights"], scales, rtol=1e-5)
        np.testing.assert_allclose(direction, scales @ m, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 2


def test_excess_mtl_two_steps_by_hand():
    # Gradients from TorchJD's ExcessMTL tests (SimplexLab/TorchJD test_excess_mtl.py);
    # weights follow the authors' code: 1 during the first (baseline) call, then
    # w <- K * normalise(w * exp(eta * e / e0)), with e_k = sum_d g^2 / sqrt(S + 1e-7).
    strategy = dual.excess_mtl(robust_step_size=1.0)
    state = strategy.init(2, dim=2)
    j1 = jnp.array([[2.0, 0.0], [1.0, 0.0]])
    j2 = jnp.array([[1.0, 0.0], [2.0, 0.0]])
    direction, state, info = strategy.combine(state, ONES2, j1)
    np.testing.assert_allclose(info["weights"], [1.0, 1.0])
    np.testing.assert_allclose(direction, [3.0, 0.0])
    e1 = np.array([4 / np.sqrt(4 + 1e-7), 1 / np.sqrt(1 + 1e-7)])
    np.testing.assert_allclose(info["excess_risk"], e1, rtol=1e-6)
    direction, state, info = strategy.combine(state, ONES2, j2)
    e2 = np.array([1 / np.sqrt(5 + 1e-7), 4 / np.sqrt(5 + 1e-7)])
    unnorm = np.exp(e2 / e1)
    weights = 2 * unnorm / unnorm.sum()
    np.testing.assert_allclose(info["weights"], weights, rtol=1e-5)
    np.testing.assert_allclose(direction, weights @ np.asarray(j2), rtol=1e-5)
    np.testing.assert_allclose(state.sq_grad_sum, [[5.0, 0.0], [5.0, 0.0]])


# ----------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_from_gram_matches_combine(name):
    strategy = STRATEGIES[name]
    s_matrix = s_gram = strategy.init(3)
    for seed in (20, 21):
        losses, grads = _problem(3, 7, seed=seed)
        direction, s_matrix, _ = JITTED[name](s_matrix, losses, grads)
        weights, s_gram, _ = jax.jit(strategy.from_gram)(s_gram, losses, grads @ grads.T)
        np.testing.assert_allclose(direction, weights @ grads, rtol=1e-5, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), s_matrix, s_gram)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_permutation_equivariance(name):
    strategy = STRATEGIES[name]
    perm = np.array([2, 0, 1])
    state = _init(strategy, 3, 6)
    state_p = _init(strategy, 3, 6)
    for seed in (30, 31):
        losses, grads = _problem(3, 6, seed=seed)
        direction, state, info = JITTED[name](state, losses, grads)
        direction_p, state_p, info_p = JITTED[name](state_p, losses[perm], grads[perm])
        np.testing.assert_allclose(direction_p, direction, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            info_p["weights"], np.asarray(info["weights"])[perm], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("k", [2, 3, 8])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_jit_conformance(name, k):
    strategy = STRATEGIES[name]
    d = 6
    state = _init(strategy, k, d)
    spec = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state)
    for seed in (40, 41):
        losses, grads = _problem(k, d, seed=seed)
        direction, state, info = JITTED[name](state, losses, grads)
        assert direction.shape == (d,) and direction.dtype == grads.dtype
        assert np.all(np.isfinite(direction))
        assert info["weights"].shape == (k,) and np.all(np.isfinite(info["weights"]))
        assert jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), state) == spec


def test_pytree_gradients():
    losses, grads = _problem(3, 6, seed=50)
    tree = {"a": grads[:, :2].reshape(3, 2, 1), "b": grads[:, 2:]}
    strategy = STRATEGIES["upgrad"]
    flat, _, _ = strategy.combine((), losses, grads)
    out, _, _ = strategy.combine((), losses, tree)
    np.testing.assert_allclose(out["a"].reshape(-1), flat[:2], rtol=1e-6)
    np.testing.assert_allclose(out["b"], flat[2:], rtol=1e-6)


@pytest.mark.parametrize(
    "factory, kwargs, match",
    [
        (dual.mgda, {"solver": "cvxpy"}, "solver"),
        (dual.mgda, {"normalize": "l1"}, "normalize"),
        (dual.mgda_ub, {"max_iter": 0}, "max_iter"),
        (dual.upgrad, {"reg_eps": 0.0}, "reg_eps"),
        (dual.dualproj, {"norm_eps": -1.0}, "norm_eps"),
        (dual.nash_mtl, {"update_weights_every": 0}, "update_weights_every"),
        (dual.nash_mtl, {"max_norm": -1.0}, "max_norm"),
        (dual.nash_mtl, {"scale": "l2"}, "scale"),
        (dual.fairgrad, {"alpha": 0.0}, "alpha"),
        (dual.moco, {"beta": 1.5}, "beta"),
        (dual.moco, {"normalize": "l2"}, "normalize"),
        (dual.excess_mtl, {"warmup_steps": 0}, "warmup_steps"),
        (dual.excess_mtl, {"robust_step_size": float("nan")}, "robust_step_size"),
        (dual.db_mtl, {"beta_sigma": -0.5}, "beta_sigma"),
        (dual.gradnorm, {"lr": 0.0}, "lr"),
    ],
)
def test_invalid_hyperparameters(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_invalid_init_arguments():
    with pytest.raises(ValueError, match="num_tasks"):
        STRATEGIES["nash_mtl"].init(0)
    with pytest.raises(ValueError, match="dim"):
        STRATEGIES["db_mtl"].init(2, dim=0)
