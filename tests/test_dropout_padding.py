"""Dropout draws do not depend on how far a batch is padded in time (mtlrnn/model/dropout.py).

The population mode pads several seeds' batches to the longest bucket among them, so a
seed's trajectory with dropout on must not change when its batch is padded from L to L' > L:
the same outputs on valid steps, the same per-task losses and the same gradients.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.model.dropout import TimeDropout
from mtlrnn.model.dropout import time_bernoulli
from mtlrnn.model.multitask import MultiTaskRNN
from mtlrnn.model.spec import ModelConfig
from mtlrnn.tasks import TaskSpec
from mtlrnn.training.losses import task_losses

TASKS = (
    TaskSpec("tag", "token", "classification", num_classes=5),
    TaskSpec("val", "token", "regression", dim=2),
    TaskSpec("cls", "sequence", "classification", num_classes=3, pooling="last"),
    TaskSpec("avg", "sequence", "regression", dim=1, pooling="mean"),
)
VOCAB, B, SHORT, LONG = 20, 4, 6, 11
LENGTHS = np.array([6, 3, 1, 0], np.int32)  # a full row, two partial ones, a padded row


def _batch(length: int) -> dict:
    """One batch laid out as mtlrnn/data/batching.py does, padded to ``length`` steps."""
    rng = np.random.default_rng(0)
    valid = np.arange(SHORT)[None, :] < LENGTHS[:, None]  # [B, SHORT]
    real = (LENGTHS > 0).astype(np.float32)
    inputs = np.where(valid, rng.integers(2, VOCAB, (B, SHORT)), 0)
    tag = np.where(valid, rng.integers(0, 5, (B, SHORT)), 0)
    val = np.where(valid[..., None], rng.normal(size=(B, SHORT, 2)), 0.0)
    pad = length - SHORT

    def pad_time(x: np.ndarray, dtype: type) -> jnp.ndarray:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
        return jnp.asarray(np.pad(x, widths), dtype)

    return {
        "inputs": pad_time(inputs, jnp.int32),
        "lengths": jnp.asarray(LENGTHS),
        "labels": {
            "tag": pad_time(tag, jnp.int32),
            "val": pad_time(val, jnp.float32),
            "cls": jnp.asarray(rng.integers(0, 3, B) * real, jnp.int32),
            "avg": jnp.asarray(rng.normal(size=(B, 1)) * real[:, None], jnp.float32),
        },
        "masks": {
            "tag": pad_time(valid.astype(np.float32), jnp.float32),
            "val": pad_time(valid.astype(np.float32), jnp.float32),
            "cls": jnp.asarray(real),
            "avg": jnp.asarray(real),
        },
    }


def test_time_bernoulli_prefix_keep_rate_and_vmap():
    key = jax.random.key(3)
    draw = jax.jit(time_bernoulli, static_argnums=(1, 2))
    short, long = draw(key, 0.5, (3, 5, 4)), draw(key, 0.5, (3, 9, 4))
    assert short.shape == (3, 5, 4) and short.dtype == jnp.bool_
    np.testing.assert_array_equal(short, long[:, :5])
    assert not np.array_equal(long[:, 0], long[:, 1])  # steps are drawn independently
    # 102,400 Bernoulli(0.7) draws: standard error sqrt(0.21 / 102400) = 0.0014.
    np.testing.assert_allclose(np.mean(draw(key, 0.7, (64, 50, 32))), 0.7, atol=0.01)
    # A batched key (one per seed) draws per seed, each as it would alone.
    keys = jax.random.split(key, 2)
    both = jax.jit(jax.vmap(lambda k: time_bernoulli(k, 0.5, (3, 5, 4))))(keys)
    np.testing.assert_array_equal(both[1], draw(keys[1], 0.5, (3, 5, 4)))
    assert not np.array_equal(both[0], both[1])
    with pytest.raises(ValueError, match=r"^shape: needs a batch and a time axis"):
        time_bernoulli(key, 0.5, (3,))
    with pytest.raises(ValueError, match=r"^p: must be in \[0, 1\], got 1.5"):
        time_bernoulli(key, 1.5, (3, 5))


def test_time_dropout_scaling_and_edge_rates():
    x = jnp.ones((2, 7, 3))
    rngs = {"dropout": jax.random.key(1)}
    y = TimeDropout(0.25).apply({}, x, deterministic=False, rngs=rngs)
    # Inverted dropout: a kept 1 becomes 1 / (1 - 0.25) in float32.
    np.testing.assert_array_equal(np.unique(y), np.float32([0.0, 1 / 0.75]))
    np.testing.assert_array_equal(TimeDropout(0.25).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(TimeDropout(0.0).apply({}, x, deterministic=False), x)
    zeros = TimeDropout(1.0).apply({}, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(zeros, np.zeros_like(x))
    with pytest.raises(ValueError, match=r"^rate: must be in \[0, 1\], got -0.1"):
        TimeDropout(-0.1).apply({}, x, deterministic=False, rngs=rngs)


def _model(bidirectional: bool, **trunk: object) -> MultiTaskRNN:
    spec = ModelConfig(
        embed_dim=8,
        hidden_size=8,
        num_layers=2,
        bidirectional=bidirectional,
        dropout=0.3,
        embed_dropout=0.2,
        word_dropout=0.25,
        **trunk,
    )
    return MultiTaskRNN(tasks=TASKS, spec=spec, vocab_size=VOCAB)


@functools.cache
def _compiled(model: MultiTaskRNN):
    """Jitted (params init, outputs, losses, grads) of ``model``, one compile per shape."""

    def losses(params, batch, key):
        outputs = model.apply(
            {"params": params},
            batch["inputs"],
            batch["lengths"],
            train=True,
            rngs={"dropout": key},
        )
        return task_losses(TASKS, outputs, batch), outputs

    def grads(params, batch, key):
        return jax.grad(lambda p: jnp.sum(losses(p, batch, key)[0]))(params)

    def init(batch):
        return model.init(jax.random.key(0), batch["inputs"], batch["lengths"])["params"]

    return jax.jit(init), jax.jit(losses), jax.jit(grads)


def _assert_same_on_valid_steps(short: dict, long: dict) -> None:
    """Head outputs by group: token ``[Kg, B, L, O]`` compared on the first SHORT steps."""
    for name, got in long.items():
        want = short[name]
        if name.startswith("token"):
            valid = (np.arange(SHORT)[None, :] < LENGTHS[:, None])[None, :, :, None]
            want, got = want * valid, got[:, :, :SHORT] * valid
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)


# Defaults (fused, bidirectional), a unidirectional autodiff trunk with remat, and a linear
# cell's associative scan: dropout sits between layers, outside every recurrence variant.
CASES = [
    pytest.param(True, {}, id="bi-fused"),
    pytest.param(False, {"impl": "autodiff", "remat": True}, id="uni-autodiff-remat"),
    pytest.param(True, {"cell": "mingru", "scan": "associative"}, id="bi-mingru-associative"),
]


@pytest.mark.parametrize(("bidirectional", "trunk"), CASES)
def test_outputs_and_losses_do_not_depend_on_padding(bidirectional, trunk):
    init, losses, _ = _compiled(_model(bidirectional, **trunk))
    short, long = _batch(SHORT), _batch(LONG)
    params = init(short)
    key = jax.random.key(7)
    loss_s, out_s = losses(params, short, key)
    loss_l, out_l = losses(params, long, key)
    _assert_same_on_valid_steps(out_s, out_l)
    np.testing.assert_allclose(loss_l, loss_s, rtol=1e-6, atol=1e-6)
    # Dropout is really on: another key gives other losses.
    assert not np.allclose(losses(params, short, jax.random.key(8))[0], loss_s)


@pytest.mark.parametrize(("bidirectional", "trunk"), CASES[:2])
def test_gradients_do_not_depend_on_padding(bidirectional, trunk):
    init, _, grads = _compiled(_model(bidirectional, **trunk))
    short, long = _batch(SHORT), _batch(LONG)
    params = init(short)
    key = jax.random.key(7)
    chex.assert_trees_all_close(
        grads(params, long, key), grads(params, short, key), rtol=1e-5, atol=1e-5
    )


def test_vmapped_seeds_draw_their_own_masks_and_ignore_padding():
    """A population step vmaps over seeds: each seed's key draws its own masks, the same
    as that seed alone, whatever the padding."""
    init, losses, _ = _compiled(_model(True))
    short, long = _batch(SHORT), _batch(LONG)
    params = init(short)
    keys = jax.random.split(jax.random.key(11), 2)
    per_seed = jax.jit(jax.vmap(lambda k, b: losses(params, b, k)[0], in_axes=(0, None)))
    got_s, got_l = per_seed(keys, short), per_seed(keys, long)
    np.testing.assert_allclose(got_l, got_s, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_s[1], losses(params, short, keys[1])[0], rtol=1e-6)
    assert not np.allclose(got_s[0], got_s[1])


def test_a_slice_of_rows_draws_its_rows_of_the_whole_mask():
    """A device's or a micro-batch's rows (row_offset = their first global index) draw
    exactly their rows of the whole batch's mask."""
    key = jax.random.key(3)
    whole = time_bernoulli(key, 0.5, (8, 5, 3))
    for start, stop in ((0, 4), (4, 8), (2, 5)):
        part = time_bernoulli(key, 0.5, (stop - start, 5, 3), row_offset=start)
        np.testing.assert_array_equal(np.asarray(part), np.asarray(whole[start:stop]))
    traced = jax.jit(lambda off: time_bernoulli(key, 0.5, (4, 5, 3), row_offset=off))
    np.testing.assert_array_equal(np.asarray(traced(4)), np.asarray(whole[4:]))
