"""One conformance suite over every registered weighting strategy (optax's _common_test
pattern): jit, finite outputs, stable state structure and dtypes, K = 2, 3, 8, pytree grads,
the Gramian path, the optax wrapper, and a real train step."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtlrnn.model.multitask import MultiTaskRNN
from mtlrnn.model.spec import ModelConfig
from mtlrnn.tasks import TaskSpec
from mtlrnn.training.gradients import task_jacobian
from mtlrnn.training.losses import task_losses
from mtlrnn.training.step import create_train_state
from mtlrnn.training.step import make_train_step
from mtlrnn.weighting import as_optax
from mtlrnn.weighting import get
from mtlrnn.weighting import names

D = 12


def _init(strategy, k, dim=D):
    return strategy.init(k, dim=dim) if strategy.needs_dim else strategy.init(k)


def _problem(k, step):
    rng = np.random.default_rng(100 * k + step)
    losses = jnp.asarray(rng.uniform(0.5, 2.0, k), jnp.float32)
    grads = jnp.asarray(rng.normal(size=(k, D)), jnp.float32)
    return losses, grads


def _run(strategy, state, losses, grads, key):
    if strategy.requires == "losses":
        return strategy.combine(state, losses, key=key)
    return strategy.combine(state, losses, grads, key=key)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("k", [2, 3, 8])
def test_jit_finite_and_stable_state(name, k):
    strategy = get(name)
    state = _init(strategy, k)
    structure = jax.tree.structure(state)
    dtypes = [x.dtype for x in jax.tree.leaves(state)]
    combine = jax.jit(lambda s, losses, g, key: _run(strategy, s, losses, g, key))
    for step in range(4):
        losses, grads = _problem(k, step)
        out, state, info = combine(state, losses, grads, jax.random.key(step))
        want_shape = (k,) if strategy.requires == "losses" else (D,)
        assert out.shape == want_shape and out.dtype == jnp.float32, (out.shape, out.dtype)
        assert bool(jnp.all(jnp.isfinite(out))), out
        if strategy.after_update is not None:
            state = jax.jit(strategy.after_update)(state, losses, 0.9 * losses)
        assert jax.tree.structure(state) == structure
        assert [x.dtype for x in jax.tree.leaves(state)] == dtypes
        for leaf in jax.tree.leaves(state):
            assert bool(jnp.all(jnp.isfinite(leaf))) or leaf.dtype == jnp.bool_
        if "weights" in info:
            assert info["weights"].shape == (k,)
            assert bool(jnp.all(jnp.isfinite(info["weights"])))


GRAD_NAMES = [n for n in names() if get(n).requires == "grads"]


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_pytree_grads_match_matrix(name):
    strategy = get(name)
    k = 3
    losses, grads = _problem(k, 0)
    tree = {"a": grads[:, :5].reshape(k, 5, 1), "b": {"c": grads[:, 5:]}}
    key = jax.random.key(0)
    out_m, _, _ = strategy.combine(_init(strategy, k), losses, grads, key=key)
    out_t, _, _ = strategy.combine(_init(strategy, k), losses, tree, key=key)
    flat = jnp.concatenate([out_t["a"].reshape(-1), out_t["b"]["c"]])
    np.testing.assert_allclose(flat, out_m, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in GRAD_NAMES if get(n).from_gram is not None])
def test_gram_path_gives_the_same_direction(name):
    strategy = get(name)
    k = 3
    losses, grads = _problem(k, 1)
    key = jax.random.key(0)
    direction, _, _ = strategy.combine(_init(strategy, k), losses, grads, key=key)
    weights, _, _ = strategy.from_gram(_init(strategy, k), losses, grads @ grads.T, key=key)
    np.testing.assert_allclose(weights @ grads, direction, rtol=1e-4, atol=1e-5)


TASKS = (
    TaskSpec("a", "token", "classification", num_classes=4),
    TaskSpec("b", "token", "classification", num_classes=3),
    TaskSpec("s", "sequence", "regression", dim=1, pooling="mean"),
)


@pytest.fixture(scope="module")
def tiny():
    spec = ModelConfig(embed_dim=4, hidden_size=4, dropout=0.0)
    model = MultiTaskRNN(tasks=TASKS, spec=spec, vocab_size=20)
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.integers(1, 20, (4, 5)), jnp.int32),
        "lengths": jnp.asarray([5, 3, 4, 2], jnp.int32),
        "labels": {
            "a": jnp.asarray(rng.integers(0, 4, (4, 5)), jnp.int32),
            "b": jnp.asarray(rng.integers(0, 3, (4, 5)), jnp.int32),
            "s": jnp.asarray(rng.normal(size=(4, 1)), jnp.float32),
        },
    }
    return model, batch


# Loss-based strategies share one step (only `combine` differs, tested under jit above), so
# the full train step runs for every gradient method and for the loss-based ones with extra
# step logic (FAMO's post-update losses) or learned parameters.
STEP_NAMES = [n for n in names() if get(n).requires == "grads" or n in ("equal", "uw", "famo")]


@pytest.mark.parametrize("name", STEP_NAMES)
def test_train_step_runs_and_updates(name, tiny):
    model, batch = tiny
    strategy = get(name)
    tx = optax.sgd(0.05)
    mode = "full" if strategy.requires == "losses" or "full" in strategy.modes else "representation"
    state = create_train_state(model, tx, strategy, batch, seed=0)
    step = jax.jit(make_train_step(model, tx, strategy, grad_mode=mode), donate_argnums=0)
    params0 = jax.tree.map(jnp.copy, state.params)
    new_state, metrics = step(state, batch)  # donated, as in fit
    new_state, metrics = step(new_state, batch)
    assert bool(jnp.all(jnp.isfinite(metrics["losses"])))
    assert bool(jnp.all(jnp.isfinite(metrics["weights"])))
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params0, new_state.params)
    assert changed["trunk"]["layer_0_fwd"]["w_hh"], "the shared trunk must receive a gradient"
    assert all(jax.tree.leaves(changed)), changed


@pytest.fixture(scope="module")
def tiny_jacobian(tiny):
    model, batch = tiny
    params = model.init(jax.random.key(0), batch["inputs"], batch["lengths"])["params"]

    def loss_vector(p):
        out = model.apply({"params": p}, batch["inputs"], batch["lengths"])
        return task_losses(TASKS, out, batch)

    losses, jac = jax.jit(task_jacobian, static_argnums=0)(loss_vector, params)
    return params, losses, jac, loss_vector


@pytest.mark.parametrize("name", [n for n in names() if get(n).after_update is None])
def test_optax_wrapper_runs(name, tiny_jacobian):
    params, losses, jac, _ = tiny_jacobian
    strategy = get(name)
    dim = sum(x.size for x in jax.tree.leaves(params))
    tx = optax.chain(as_optax(strategy, len(TASKS), dim=dim), optax.sgd(0.05))
    update = jax.jit(lambda j, s, p, ls: tx.update(j, s, p, losses=ls, key=jax.random.key(0)))
    updates, _ = update(jac, tx.init(params), params, losses)
    chex.assert_trees_all_equal_shapes(updates, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_optax_wrapper_equal_is_sum_of_task_gradients(tiny_jacobian):
    params, losses, jac, loss_vector = tiny_jacobian
    tx = optax.chain(as_optax(get("equal"), len(TASKS)), optax.sgd(1.0))
    updates, _ = tx.update(jac, tx.init(params), params, losses=losses)
    want = jax.jit(jax.grad(lambda p: loss_vector(p).sum()))(params)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -g, want), atol=1e-6)


def test_optax_wrapper_refuses_post_update_methods():
    with pytest.raises(ValueError, match="after the step"):
        as_optax(get("famo"), 3)
