"""Per-task gradient modes: each must reproduce the plain gradient of the loss sum when the
aggregator is the plain sum, and give every task's exact gradient row."""

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
from mtlrnn.training.gradients import gramian
from mtlrnn.training.gradients import task_jacobian
from mtlrnn.training.losses import task_losses
from mtlrnn.training.step import create_train_state
from mtlrnn.training.step import make_train_step
from mtlrnn.training.step import split_params
from mtlrnn.weighting import get
from mtlrnn.weighting.base import gradient_strategy

TASKS = (
    TaskSpec("a", "token", "classification", num_classes=5),
    TaskSpec("b", "token", "classification", num_classes=3),
    TaskSpec("c", "sequence", "classification", num_classes=4, pooling="last"),
    TaskSpec("r", "sequence", "regression", dim=2, pooling="mean"),
)


def _sum_strategy():
    """Aggregator = plain sum of task gradients (weights all 1): the equal-weights reference."""

    def init(num_tasks):
        return ()

    def combine(state, losses, grads, key):
        return jnp.sum(grads, axis=0), state, {"weights": jnp.ones_like(losses)}

    def from_gram(state, losses, gram, key=None):
        return jnp.ones_like(losses), state, {"weights": jnp.ones_like(losses)}

    return gradient_strategy("sum", init, combine, from_gram=from_gram)


@pytest.fixture(scope="module")
def setup():
    spec = ModelConfig(embed_dim=8, hidden_size=6, dropout=0.0)
    model = MultiTaskRNN(tasks=TASKS, spec=spec, vocab_size=30)
    rng = np.random.default_rng(0)
    b, length = 4, 6
    batch = {
        "inputs": jnp.asarray(rng.integers(1, 30, (b, length)), jnp.int32),
        "lengths": jnp.asarray([6, 4, 2, 5], jnp.int32),
        "labels": {
            "a": jnp.asarray(rng.integers(0, 5, (b, length)), jnp.int32),
            "b": jnp.asarray(rng.integers(0, 3, (b, length)), jnp.int32),
            "c": jnp.asarray(rng.integers(0, 4, (b,)), jnp.int32),
            "r": jnp.asarray(rng.normal(size=(b, 2)), jnp.float32),
        },
    }
    return model, batch


@pytest.mark.parametrize(
    ("mode", "chunk"), [("full", 0), ("full", 2), ("representation", 2), ("gramian", 0)]
)
def test_each_mode_with_sum_aggregator_equals_equal_weights(setup, mode, chunk):
    model, batch = setup
    tx = optax.sgd(0.1)
    ref_strategy = get("equal")
    state = create_train_state(model, tx, ref_strategy, batch, seed=0)
    want, want_m = jax.jit(make_train_step(model, tx, ref_strategy))(state, batch)
    strategy = _sum_strategy()
    state2 = create_train_state(model, tx, strategy, batch, seed=0)
    step = make_train_step(model, tx, strategy, grad_mode=mode, chunk_size=chunk)
    got, got_m = jax.jit(step)(state2, batch)
    chex.assert_trees_all_close(got.params, want.params, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(got_m["losses"], want_m["losses"], rtol=1e-6)
    np.testing.assert_allclose(got_m["grad_norm"], want_m["grad_norm"], rtol=1e-5)


def test_jacobian_rows_are_per_task_gradients(setup):
    model, batch = setup
    params = jax.jit(model.init)(jax.random.key(1), batch["inputs"], batch["lengths"])["params"]

    def loss_vector(p):
        out = model.apply({"params": p}, batch["inputs"], batch["lengths"])
        return task_losses(TASKS, out, batch)

    losses, jac = jax.jit(task_jacobian, static_argnums=0)(loss_vector, params)
    # One compiled reference for every k: the plain gradient of the k-th loss.
    grad_k = jax.jit(jax.grad(lambda p, k: loss_vector(p)[k]))
    for k in range(len(TASKS)):
        row = jax.tree.map(lambda x, k=k: x[k], jac)
        chex.assert_trees_all_close(row, grad_k(params, k), atol=1e-6)
    # Chunked over tasks gives the same rows.
    _, jac2 = jax.jit(lambda p: task_jacobian(loss_vector, p, chunk_size=2))(params)
    chex.assert_trees_all_close(jac, jac2, atol=1e-7)
    # Gramian leaf by leaf equals J J^T of the flat matrix.
    flat = jnp.concatenate([x.reshape(len(TASKS), -1) for x in jax.tree.leaves(jac)], axis=1)
    np.testing.assert_allclose(gramian(jac), flat @ flat.T, rtol=1e-5, atol=1e-6)
    # Each head's parameters get gradient only from its own tasks.
    _, heads = split_params(model, jac)
    seq_reg = heads["sequence_regression"]["kernel"]
    assert float(jnp.abs(seq_reg[:3]).max()) == 0.0 and float(jnp.abs(seq_reg[3]).max()) > 0


def test_unsupported_mode_is_refused(setup):
    model, _ = setup

    def init(num_tasks):
        return ()

    def combine(state, losses, grads, key):
        return grads[0], state, {}

    no_gram = gradient_strategy("first", init, combine)
    assert "gramian" not in no_gram.modes
    with pytest.raises(ValueError, match="cannot run in mode 'gramian'"):
        make_train_step(model, optax.sgd(0.1), no_gram, grad_mode="gramian")


@pytest.mark.parametrize("mode", ["full", "representation"])
def test_effective_weights_recover_the_combination(setup, mode):
    """A method that reports no weights gets least-squares coefficients logged instead."""
    model, batch = setup
    coef = jnp.asarray([2.0, 0.5, 0.0, 1.0])

    def init(num_tasks):
        return ()

    def combine(state, losses, grads, key):
        return coef @ grads, state, {}

    strategy = gradient_strategy("combo", init, combine)
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, strategy, batch, seed=0)
    _, metrics = jax.jit(make_train_step(model, tx, strategy, grad_mode=mode))(state, batch)
    np.testing.assert_allclose(metrics["weights"], coef, atol=1e-3)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "cagrad", "pcgrad", "gradvac"])
def test_representation_gramian_path_equals_the_combine_path(setup, name):
    """In the representation mode a Gramian method's direction is the heads' pull-back of its
    weights (the fast path); the reference is the method's own ``combine`` on the explicit
    ``[K, B, L, D]`` rows. Two steps, so stateful methods are compared after an update."""
    model, batch = setup
    tx = optax.sgd(0.1)
    fast = get(name)
    assert fast.from_gram is not None
    reference = fast._replace(from_gram=None)
    results = []
    for strategy in (fast, reference):
        state = create_train_state(model, tx, strategy, batch, seed=0)
        step = jax.jit(make_train_step(model, tx, strategy, grad_mode="representation"))
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append((state.params, metrics))
    (got, got_m), (want, want_m) = results
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(got_m["weights"], want_m["weights"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_m["grad_norm"], want_m["grad_norm"], rtol=1e-5)
