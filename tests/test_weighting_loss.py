"""Loss-based weighting strategies (mtlrnn/weighting/loss_based.py).

Reference values are hand computations from each paper's equations, written out in the
comments; the inner optimizers are checked against optax (an independent Adam/SGD), and the
weights against ``jax.grad`` of each method's combined objective. Everything runs under jit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtlrnn.weighting import loss_based
from mtlrnn.weighting import registry

NAMES = (
    "equal",
    "fixed",
    "uw",
    "dwa",
    "rlw",
    "gls",
    "imtl_l",
    "famo",
    "stch",
    "log_losses",
)
DETERMINISTIC = tuple(n for n in NAMES if n != "rlw")
# Short warm-up so that STCH reaches its STCH phase within a few test steps.
QUICK = {"stch": {"warmup_steps": 1, "nadir_steps": 2}}
KEY = jax.random.key(0)


def make(name, **hparams):
    return registry.get(name, **{**QUICK.get(name, {}), **hparams})


def run(strategy, before, after=None, key=KEY):
    """Step ``strategy`` through ``before: [T, K]`` under one jit; ``after_update`` (if any)
    gets ``after: [T, K]``. Returns weights ``[T, K]``, the states after each step and the
    number of traces (1 when the state's structure and dtypes never change)."""
    before = jnp.asarray(before, jnp.float32)
    after = 0.9 * before if after is None else jnp.asarray(after, jnp.float32)
    traces = []

    @jax.jit
    def step(state, losses, losses_after, step_key):
        traces.append(1)
        weights, state, info = strategy.combine(state, losses, key=step_key)
        if strategy.after_update is not None:
            state = strategy.after_update(state, losses, losses_after)
        return weights, state, info

    state = strategy.init(before.shape[1])
    weights, states = [], []
    for t in range(before.shape[0]):
        w, state, info = step(state, before[t], after[t], jax.random.fold_in(key, t))
        np.testing.assert_array_equal(info["weights"], w)
        weights.append(np.asarray(w))
        states.append(state)
    return np.stack(weights), states, len(traces)


def signature(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(jnp.shape(x), jnp.asarray(x).dtype) for x in leaves]


# --- Shared conformance suite (every method) -------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_conformance(name, num_tasks):
    strategy = make(name)
    assert strategy.name == name and strategy.requires == "losses"
    rng = np.random.default_rng(num_tasks)
    before = rng.uniform(0.1, 3.0, (6, num_tasks)).astype(np.float32)
    after = before * rng.uniform(0.5, 1.0, before.shape).astype(np.float32)
    weights, states, traces = run(strategy, before, after)
    assert traces == 1  # stable state structure / dtypes: compiled once for 6 steps
    assert weights.shape == (6, num_tasks) and weights.dtype == np.float32
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)
    initial = signature(strategy.init(num_tasks))
    for state in states:
        assert signature(state) == initial


@pytest.mark.parametrize("name", NAMES)
def test_weights_keep_the_losses_dtype(name):
    strategy = make(name)
    state = strategy.init(3)
    losses = jnp.asarray([0.5, 1.0, 2.0], jnp.bfloat16)
    weights, new_state, _ = jax.jit(strategy.combine)(state, losses, None, KEY)
    assert weights.dtype == jnp.bfloat16
    assert signature(new_state) == signature(state)  # state stays float32 / int32


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permutation_equivariance(name):
    rng = np.random.default_rng(7)
    before = rng.uniform(0.1, 3.0, (6, 4)).astype(np.float32)
    after = before * rng.uniform(0.5, 1.0, before.shape).astype(np.float32)
    perm = np.array([2, 0, 3, 1])
    w, _, _ = run(make(name), before, after)
    w_perm, _, _ = run(make(name), before[:, perm], after[:, perm])
    np.testing.assert_allclose(w_perm, w[:, perm], rtol=1e-6)
    assert not np.allclose(w[-1], w[-1, perm]) or name in ("equal", "fixed")  # non-trivial


def test_registry_lists_every_method():
    assert set(NAMES) <= set(registry.names())
    assert set(loss_based.FACTORIES) == set(NAMES)
    assert registry.hyperparameters("famo") == ("lr", "gamma", "optimizer", "min_losses")
    assert registry.hyperparameters("dwa") == ("temperature", "ema_decay")


# --- Hyper-parameter validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("uw", {"lr": 0.0}, "lr: must be a number > 0, got 0.0"),
        ("uw", {"optimizer": "rmsprop"}, "optimizer: must be one of adam, sgd, got 'rmsprop'"),
        ("imtl_l", {"lr": True}, "lr: must be a number > 0, got True"),
        ("dwa", {"temperature": -2.0}, "temperature: must be a number > 0, got -2.0"),
        ("dwa", {"ema_decay": 1.0}, r"ema_decay: must be a number in \[0, 1\), got 1.0"),
        ("rlw", {"std": float("nan")}, "std: must be a number > 0, got nan"),
        ("famo", {"gamma": -1e-3}, "gamma: must be a number >= 0, got -0.001"),
        ("famo", {"lr": "fast"}, "lr: must be a number > 0, got 'fast'"),
        ("famo", {"min_losses": []}, "min_losses: must be a non-empty list"),
        ("famo", {"min_losses": 3}, "min_losses: must be a non-empty list"),
        ("famo", {"min_losses": "0.1"}, "min_losses: must be a non-empty list .*, got '0.1'"),
        ("famo", {"min_losses": [0.1, None]}, r"min_losses: .*, got \[0.1, None\]"),
        ("stch", {"mu": 0}, "mu: must be a number > 0, got 0"),
        ("stch", {"warmup_steps": 1.5}, "warmup_steps: must be an int >= 0, got 1.5"),
        ("stch", {"nadir_steps": 0}, "nadir_steps: must be an int >= 1, got 0"),
        ("log_losses", {"eps": 0.0}, "eps: must be a number > 0, got 0.0"),
        ("gls", {"eps": 1e-8}, "eps: unknown hyper-parameter"),
    ],
)
def test_invalid_hyperparameters(name, hparams, message):
    with pytest.raises(ValueError, match=message):
        registry.get(name, **hparams)


def test_famo_min_losses_length_checked_at_init():
    with pytest.raises(ValueError, match="min_losses: expected 3 numbers"):
        loss_based.famo(min_losses=[0.0, 0.0]).init(3)


# --- Weights are the gradient of each method's combined objective ---------------------------


def _objective(name, state, num_tasks):
    """The method's combined loss F(L) at ``state`` (its weights must equal dF/dL)."""
    eps = 1e-8
    if name == "uw":
        return lambda x: jnp.sum(jnp.exp(-state.log_scale) * x + state.log_scale)
    if name == "imtl_l":
        return lambda x: jnp.sum(jnp.exp(state.log_scale) * x - state.log_scale)
    if name == "gls":
        return lambda x: jnp.prod(x + eps) ** (1.0 / num_tasks)
    if name == "log_losses":
        return lambda x: jnp.sum(jnp.log(x + eps))
    if name == "stch":  # STCH phase: K mu logsumexp(log(L / nadir + eps) / mu), mu = 1
        nadir = state.loss_sum / QUICK["stch"]["nadir_steps"]
        return lambda x: num_tasks * jax.nn.logsumexp(jnp.log(x / nadir + eps))
    if name == "famo":  # c sum_k z_k log D_k, c = 1 / sum_k z_k / D_k held constant
        z = jax.nn.softmax(state.logits)

        def famo_objective(x):
            d = x + eps
            c = jax.lax.stop_gradient(1.0 / jnp.sum(z / d))
            return c * jnp.sum(z * jnp.log(d))

        return famo_objective
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["uw", "imtl_l", "gls", "log_losses", "stch", "famo"])
def test_weights_are_the_gradient_of_the_objective(name):
    rng = np.random.default_rng(3)
    before = rng.uniform(0.2, 3.0, (5, 3)).astype(np.float32)
    after = before * rng.uniform(0.5, 1.0, before.shape).astype(np.float32)
    strategy = make(name, **({"lr": 0.1} if name in ("uw", "imtl_l", "famo") else {}))
    _, states, _ = run(strategy, before[:4], after[:4])
    state = states[-1]  # learned parameters have moved away from their init; STCH is active
    losses = jnp.asarray(before[4])
    weights, _, _ = jax.jit(strategy.combine)(state, losses)
    expected = jax.grad(_objective(name, state, 3))(losses)
    np.testing.assert_allclose(weights, expected, rtol=2e-5)


# --- Per-method reference values -------------------------------------------------------------


def test_dwa_per_step_hand_values():
    # Steps 0 and 1: weights 1. Step 2: r = L(1) / L(0) = [0.5/1, 1.8/2] = [0.5, 0.9];
    # w = 2 softmax(r / 2) = 2 / (1 + exp(+-0.2)) = [0.900332, 1.099668].
    before = [[1.0, 2.0], [0.5, 1.8], [9.0, 9.0], [9.0, 9.0]]
    w, _, _ = run(make("dwa"), before)
    np.testing.assert_allclose(w[:2], 1.0)
    np.testing.assert_allclose(w[2], [0.900332, 1.099668], rtol=1e-5)
    # Step 3: r = L(2) / L(1) = [18, 5]: 2 softmax([9, 2.5]) = 2 / (1 + exp(-+6.5)).
    np.testing.assert_allclose(w[3], [2 / (1 + math.exp(-6.5)), 2 / (1 + math.exp(6.5))])


def test_dwa_moving_average_hand_values():
    # ema_decay 0.5: a(0) = L(0) = [1, 2]; a(1) = 0.5 a(0) + 0.5 L(1) = [0.75, 1.9].
    # Step 2: r = a(1) / a(0) = [0.75, 0.95]; w = 2 / (1 + exp(+-0.1)) = [0.950042, 1.049958].
    w, _, _ = run(make("dwa", ema_decay=0.5), [[1.0, 2.0], [0.5, 1.8], [9.0, 9.0]])
    np.testing.assert_allclose(w[2], [0.950042, 1.049958], rtol=1e-5)
    # temperature 1, per step: 2 softmax([0.5, 0.9]) = 2 / (1 + exp(+-0.4)).
    w, _, _ = run(make("dwa", temperature=1.0), [[1.0, 2.0], [0.5, 1.8], [9.0, 9.0]])
    np.testing.assert_allclose(w[2], [2 / (1 + math.exp(0.4)), 2 / (1 + math.exp(-0.4))])


def test_rlw_keys():
    strategy = make("rlw")
    state = strategy.init(4)
    losses = jnp.ones(4)
    combine = jax.jit(strategy.combine)
    key_a, key_b = jax.random.key(1), jax.random.key(2)
    w_a, _, _ = combine(state, losses, None, key_a)
    w_a2, _, _ = combine(state, losses, None, key_a)
    w_b, _, _ = combine(state, losses, None, key_b)
    np.testing.assert_array_equal(w_a, w_a2)
    assert not np.allclose(w_a, w_b)
    # Definition (Lin et al. 2022): K softmax(lambda), lambda ~ N(0, I) drawn from the key.
    expected = 4 * jax.nn.softmax(jax.random.normal(key_a, (4,)))
    np.testing.assert_allclose(w_a, expected, rtol=1e-6)
    np.testing.assert_allclose(np.sum(w_a), 4.0, rtol=1e-6)
    # std scales the normal logits.
    w_std, _, _ = jax.jit(make("rlw", std=3.0).combine)(state, losses, None, key_a)
    expected = 4 * jax.nn.softmax(3.0 * jax.random.normal(key_a, (4,)))
    np.testing.assert_allclose(w_std, expected, rtol=1e-6)
    # key=None: a fixed default key folded with the step count, deterministic per step.
    w0, s1, _ = combine(state, losses)
    w1, _, _ = combine(s1, losses)
    w0_again, _, _ = combine(strategy.init(4), losses)
    np.testing.assert_array_equal(w0, w0_again)
    assert not np.allclose(w0, w1)


def test_gls_hand_values():
    # L = [1, 4]: geometric mean 2, w_k = 2 / (2 L_k) = [1, 0.25].
    w, _, _ = run(make("gls"), [[1.0, 4.0]])
    np.testing.assert_allclose(w[0], [1.0, 0.25], rtol=1e-6)
    # K = 3, L = [1, 8, 27]: geometric mean 6, w = 6 / (3 L) = [2, 0.25, 2/27].
    w, _, _ = run(make("gls"), [[1.0, 8.0, 27.0]])
    np.testing.assert_allclose(w[0], [2.0, 0.25, 2 / 27], rtol=1e-5)


def test_log_losses_hand_values():
    # w = 1 / (L + 1e-8): [2, 0.5, 0.25]; with eps = 0.5: 1 / [1, 2.5, 4.5].
    w, _, _ = run(make("log_losses"), [[0.5, 2.0, 4.0]])
    np.testing.assert_allclose(w[0], [2.0, 0.5, 0.25], rtol=1e-6)
    w, _, _ = run(make("log_losses", eps=0.5), [[0.5, 2.0, 4.0]])
    np.testing.assert_allclose(w[0], [1.0, 0.4, 1 / 4.5], rtol=1e-6)


def test_stch_phases_hand_values():
    # warmup_steps 1, nadir_steps 2: steps 0-2 use log losses (w = 1 / L); the losses of
    # steps 1 and 2 average to the nadir n = ([2, 1] + [2, 3]) / 2 = [2, 2].
    # Step 3, L = [1, 2], mu = 1: f = log(L / n) = [log 0.5, 0]; softmax(f) = [1/3, 2/3];
    # w = K softmax(f) / L = 2 [1/3, 2/3] / [1, 2] = [2/3, 2/3].
    before = [[4.0, 0.5], [2.0, 1.0], [2.0, 3.0], [1.0, 2.0]]
    w, states, _ = run(make("stch"), before)
    np.testing.assert_allclose(w[:3], 1.0 / np.asarray(before[:3]), rtol=1e-6)
    np.testing.assert_allclose(w[3], [2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(states[-1].loss_sum, [4.0, 4.0])
    # mu = 0.5: softmax(2 f) = [1/5, 4/5]; w = 2 [1/5, 4/5] / [1, 2] = [0.4, 0.8].
    w, _, _ = run(make("stch", mu=0.5), before)
    np.testing.assert_allclose(w[3], [0.4, 0.8], rtol=1e-6)


def test_uw_one_inner_step_by_hand():
    # s = 0, L = [2, 0.5]: weights exp(-0) = 1; dF/ds = 1 - exp(-s) L = [-1, 0.5].
    # SGD lr 0.1: s = -0.1 [-1, 0.5] = [0.1, -0.05];
    # next weights exp(-s) = [0.904837, 1.051271].
    losses = [[2.0, 0.5], [2.0, 0.5]]
    w, states, _ = run(make("uw", lr=0.1, optimizer="sgd"), losses)
    np.testing.assert_allclose(w[0], [1.0, 1.0])
    np.testing.assert_allclose(states[0].log_scale, [0.1, -0.05], rtol=1e-6)
    np.testing.assert_allclose(w[1], [0.904837, 1.051271], rtol=1e-6)
    # Adam's first step is lr * g / (|g| + 1e-8) = lr sign(g): s = [0.1, -0.1] (float32 bias
    # correction: ~1e-5 relative error),
    # next weights exp(-s) = [0.904837, 1.105171].
    w, states, _ = run(make("uw", lr=0.1), losses)
    np.testing.assert_allclose(states[0].log_scale, [0.1, -0.1], rtol=1e-5)
    np.testing.assert_allclose(w[1], [0.904837, 1.105171], rtol=1e-5)


def test_imtl_l_one_inner_step_and_mirror_of_uw():
    # s = 0, L = [2, 0.5]: dF/ds = exp(s) L - 1 = [1, -0.5]; SGD lr 0.1: s = [-0.1, 0.05];
    # next weights exp(s) = [0.904837, 1.051271].
    losses = [[2.0, 0.5], [2.0, 0.5]]
    w, states, _ = run(make("imtl_l", lr=0.1, optimizer="sgd"), losses)
    np.testing.assert_allclose(states[0].log_scale, [-0.1, 0.05], rtol=1e-6)
    np.testing.assert_allclose(w[1], [0.904837, 1.051271], rtol=1e-6)
    # Under s -> -s IMTL-L's objective is UW's: same weights on any loss sequence.
    seq = np.random.default_rng(5).uniform(0.1, 3.0, (8, 3)).astype(np.float32)
    for optimizer in ("adam", "sgd"):
        w_imtl, _, _ = run(make("imtl_l", lr=0.05, optimizer=optimizer), seq)
        w_uw, _, _ = run(make("uw", lr=0.05, optimizer=optimizer), seq)
        np.testing.assert_allclose(w_imtl, w_uw, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_uw_inner_optimizer_matches_optax(optimizer):
    # The inner optimizer on s against optax on the same objective F(s) = sum exp(-s) L + s.
    seq = np.random.default_rng(11).uniform(0.1, 3.0, (6, 3)).astype(np.float32)
    w, _, _ = run(make("uw", lr=0.05, optimizer=optimizer), seq)
    opt = optax.adam(0.05) if optimizer == "adam" else optax.sgd(0.05)
    s = jnp.zeros(3)
    opt_state = opt.init(s)
    for t in range(seq.shape[0]):
        np.testing.assert_allclose(w[t], jnp.exp(-s), rtol=1e-5)
        g = jax.grad(lambda s_, x: jnp.sum(jnp.exp(-s_) * x + s_))(s, seq[t])
        updates, opt_state = opt.update(g, opt_state, s)
        s = optax.apply_updates(s, updates)


def test_famo_one_full_step_by_hand():
    # Paper's update with xi = 0, z = [0.5, 0.5], L(theta_t) = [1, 4]:
    # w = (z / L) / sum(z / L) = [0.5, 0.125] / 0.625 = [0.8, 0.2].
    # L(theta_t+1) = [0.5, 3]: delta = [log 2, log 4/3] = [0.693147, 0.287682];
    # g = z (delta - z.delta) = [0.101366, -0.101366] (+ gamma xi = 0).
    before, after = [[1.0, 4.0], [1.0, 4.0]], [[0.5, 3.0], [0.5, 3.0]]
    w, states, _ = run(make("famo"), before, after)
    np.testing.assert_allclose(w[0], [0.8, 0.2], rtol=1e-6)
    # Adam (Algorithm 2), lr 0.025: first step lr sign(g): xi = [-0.025, 0.025];
    # z = [1 / (1 + e^0.05), .] = [0.487503, 0.512497];
    # w = (z / L) / sum = [0.791880, 0.208120].
    np.testing.assert_allclose(states[0].logits, [-0.025, 0.025], rtol=1e-5)
    np.testing.assert_allclose(w[1], [0.791880, 0.208120], rtol=1e-5)
    # SGD (Algorithm 1): xi = -0.025 g = [-0.00253416, 0.00253416]; w = [0.799188, 0.200812].
    w, states, _ = run(make("famo", optimizer="sgd"), before, after)
    np.testing.assert_allclose(states[0].logits, [-0.00253416, 0.00253416], rtol=1e-5)
    np.testing.assert_allclose(w[1], [0.799188, 0.200812], rtol=1e-5)
    # min_losses b = [0.5, 0.5] shifts the losses: L - b = [1, 4] again, so w = [0.8, 0.2].
    w, _, _ = run(make("famo", min_losses=[0.5, 0.5]), [[1.5, 4.5]])
    np.testing.assert_allclose(w[0], [0.8, 0.2], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_famo_logits_match_optax_with_weight_decay(optimizer):
    # Logit updates against optax with coupled weight decay (torch Adam(weight_decay=gamma)),
    # the softmax VJP taken by jax.vjp; gamma = 0.1 so the decay term matters.
    rng = np.random.default_rng(13)
    before = rng.uniform(0.2, 3.0, (6, 3)).astype(np.float32)
    after = before * rng.uniform(0.5, 1.0, before.shape).astype(np.float32)
    _, states, _ = run(make("famo", gamma=0.1, optimizer=optimizer), before, after)
    base = optax.adam(0.025) if optimizer == "adam" else optax.sgd(0.025)
    opt = optax.chain(optax.add_decayed_weights(0.1), base)
    xi = jnp.zeros(3)
    opt_state = opt.init(xi)
    for t in range(before.shape[0]):
        delta = jnp.log(before[t] + 1e-8) - jnp.log(after[t] + 1e-8)
        _, vjp = jax.vjp(jax.nn.softmax, xi)
        (g,) = vjp(delta)
        updates, opt_state = opt.update(g, opt_state, xi)
        xi = optax.apply_updates(xi, updates)
        np.testing.assert_allclose(states[t].logits, xi, rtol=1e-5, atol=1e-7)
