"""Heads, losses and metrics: vmapped groups against per-task loops, masking, references."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.model.heads import group_tasks
from mtlrnn.model.heads import pool
from mtlrnn.model.multitask import MultiTaskRNN
from mtlrnn.model.spec import ModelConfig
from mtlrnn.tasks import TaskSpec
from mtlrnn.training.losses import task_losses
from mtlrnn.training.metrics import accumulate
from mtlrnn.training.metrics import batch_stats
from mtlrnn.training.metrics import finalize
from mtlrnn.training.metrics import macro_f1

TASKS = (
    TaskSpec("a", "token", "classification", num_classes=5),
    TaskSpec("r", "sequence", "regression", dim=2, loss="huber", huber_delta=0.5),
    TaskSpec("b", "token", "classification", num_classes=3, label_smoothing=0.1),
    TaskSpec("c", "sequence", "classification", num_classes=4, pooling="mean"),
    TaskSpec("m", "sequence", "classification", num_classes=2, pooling="max"),
    TaskSpec("t", "token", "regression", dim=1),
)
B, L = 4, 7


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "inputs": jnp.asarray(rng.integers(1, 20, (B, L)), jnp.int32),
        "lengths": jnp.asarray([7, 4, 1, 0], jnp.int32),
        "labels": {
            "a": jnp.asarray(rng.integers(0, 5, (B, L)), jnp.int32),
            "b": jnp.asarray(rng.integers(0, 3, (B, L)), jnp.int32),
            "r": jnp.asarray(rng.normal(size=(B, 2)), jnp.float32),
            "c": jnp.asarray(rng.integers(0, 4, (B,)), jnp.int32),
            "m": jnp.asarray(rng.integers(0, 2, (B,)), jnp.int32),
            "t": jnp.asarray(rng.normal(size=(B, L, 1)), jnp.float32),
        },
        "masks": {"c": jnp.asarray([1.0, 0.0, 1.0, 1.0])},
    }


@pytest.fixture(scope="module")
def model_and_params():
    spec = ModelConfig(embed_dim=8, hidden_size=6, dropout=0.0)
    model = MultiTaskRNN(tasks=TASKS, spec=spec, vocab_size=20)
    batch = _batch()
    # Jitted: one compile instead of one per operation of an eager forward pass.
    params = jax.jit(model.init)(jax.random.key(0), batch["inputs"], batch["lengths"])["params"]
    return model, params


@functools.cache
def _jitted(model: MultiTaskRNN) -> SimpleNamespace:
    """The compiled functions the tests share (each compiles once per module):
    ``apply(params, inputs, lengths) -> head outputs``, ``encode(...) -> (outputs, last)``,
    ``losses(params, batch) -> [K]``, ``loss_grads(params, batch, k) -> grads of the sum
    of the losses (k = None) or of loss k`` and ``stats(outputs, batch)`` (batch_stats)."""

    def losses(params, batch):
        out = model.apply({"params": params}, batch["inputs"], batch["lengths"])
        return task_losses(TASKS, out, batch)

    def total(params, batch, k):
        values = losses(params, batch)
        return values.sum() if k is None else values[k]

    return SimpleNamespace(
        apply=jax.jit(lambda p, x, n: model.apply({"params": p}, x, n)),
        encode=jax.jit(lambda p, x, n: model.apply({"params": p}, x, n,
                                                   method=MultiTaskRNN.encode)),
        losses=jax.jit(losses),
        loss_grads=jax.jit(jax.grad(total), static_argnums=2),
        stats=jax.jit(lambda out, batch: batch_stats(TASKS, out, batch)),
    )


def _reference_losses(model, params, batch):
    """Per-task loop in plain numpy over the valid positions: the definition of each loss."""
    outputs, last = _jitted(model).encode(params, batch["inputs"], batch["lengths"])
    outputs, last = np.asarray(outputs, np.float64), np.asarray(last, np.float64)
    lengths = np.asarray(batch["lengths"])
    groups = {g.name: g for g in group_tasks(TASKS)}
    result = []
    for spec in TASKS:
        g = groups[f"{spec.level}_{spec.kind}"]
        j = g.specs.index(spec)
        kernel = np.asarray(params[g.name]["kernel"][j], np.float64)[:, : spec.out_dim]
        bias = np.asarray(params[g.name]["bias"][j], np.float64)[: spec.out_dim]
        y = batch["labels"][spec.name]
        mask = np.asarray(
            batch["masks"].get(spec.name, np.ones(y.shape[: 2 if spec.level == "token" else 1]))
        )
        terms = []
        for b in range(B):
            if spec.level == "token":
                positions = [(b, t) for t in range(lengths[b]) if mask[b, t]]
                feats = [outputs[b, t] for _, t in positions]
                targets = [np.asarray(y)[b, t] for _, t in positions]
            else:
                if lengths[b] == 0 or not mask[b]:
                    continue
                valid = outputs[b, : lengths[b]]
                feat = {"last": last[b], "mean": valid.mean(0), "max": valid.max(0)}[spec.pooling]
                feats, targets = [feat], [np.asarray(y)[b]]
            for f, target in zip(feats, targets, strict=True):
                z = f @ kernel + bias
                if spec.kind == "classification":
                    logp = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
                    eps = spec.label_smoothing
                    q = np.full(spec.num_classes, eps / spec.num_classes)
                    q[int(target)] += 1 - eps
                    terms.append(-np.sum(q * logp))
                else:
                    e = z - np.reshape(target, -1)
                    if spec.loss == "huber":
                        d = spec.huber_delta
                        h = np.where(np.abs(e) <= d, 0.5 * e**2, d * (np.abs(e) - 0.5 * d))
                        terms.append(h.mean())
                    else:
                        terms.append((e**2).mean())
        result.append(np.mean(terms) if terms else 0.0)
    return np.asarray(result)


def test_vmapped_losses_equal_per_task_loop(model_and_params):
    model, params = model_and_params
    batch = _batch()
    got = np.asarray(_jitted(model).losses(params, batch))
    want = _reference_losses(model, params, batch)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_padded_positions_change_nothing(model_and_params):
    model, params = model_and_params
    batch = _batch()
    lengths = np.asarray(batch["lengths"])
    noisy = jax.tree.map(lambda x: x, batch)
    pad = np.arange(L)[None, :] >= lengths[:, None]
    rng = np.random.default_rng(5)
    noisy["inputs"] = jnp.where(pad, rng.integers(1, 20, (B, L)), batch["inputs"])
    for name in ("a", "b"):
        noisy["labels"][name] = jnp.where(pad, 1, batch["labels"][name])

    fns = _jitted(model)  # one program for both batches: only the padded values differ
    np.testing.assert_array_equal(fns.losses(params, batch), fns.losses(params, noisy))
    g1 = fns.loss_grads(params, batch, None)
    g2 = fns.loss_grads(params, noisy, None)
    jax.tree.map(np.testing.assert_array_equal, g1, g2)


def test_task_without_labels_contributes_nothing(model_and_params):
    model, params = model_and_params
    batch = _batch()
    batch["masks"] = {"a": jnp.zeros((B, L))}

    fns = _jitted(model)
    assert float(fns.losses(params, batch)[0]) == 0.0
    grads = fns.loss_grads(params, batch, 0)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    stats = accumulate(None, fns.stats(fns.apply(params, batch["inputs"], batch["lengths"]),
                                       batch))
    metrics = finalize(TASKS, stats)
    assert metrics["a"]["count"] == 0 and np.isnan(metrics["a"]["accuracy"])


def test_pooling_modes_reference():
    outputs = jnp.asarray(np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) - 5.0)
    lengths = jnp.asarray([2, 0])
    outputs = jnp.where((jnp.arange(3)[None, :] < lengths[:, None])[:, :, None], outputs, 0)
    last = jnp.asarray([[1.0, 2.0], [0.0, 0.0]])
    # Hand computation: row 0 valid steps are [-5, -4] and [-3, -2].
    np.testing.assert_allclose(pool(outputs, last, lengths, "mean")[0], [-4.0, -3.0])
    np.testing.assert_allclose(pool(outputs, last, lengths, "max")[0], [-3.0, -2.0])
    np.testing.assert_allclose(pool(outputs, last, lengths, "max")[1], [0.0, 0.0])
    np.testing.assert_allclose(pool(outputs, last, lengths, "mean")[1], [0.0, 0.0])


def test_macro_f1_hand_computed():
    # y_true = [0, 0, 1, 2], y_pred = [0, 1, 1, 1]: F1 per class 2/3, 1/2, 0 -> mean 7/18
    # (the same value sklearn.metrics.f1_score(average="macro") gives).
    conf = np.zeros((3, 3))
    for t, p in [(0, 0), (0, 1), (1, 1), (2, 1)]:
        conf[t, p] += 1
    assert macro_f1(conf) == pytest.approx(7 / 18)


def test_metrics_match_numpy_on_predictions(model_and_params):
    model, params = model_and_params
    batch = _batch(3)
    fns = _jitted(model)
    out = fns.apply(params, batch["inputs"], batch["lengths"])
    metrics = finalize(TASKS, accumulate(None, fns.stats(out, batch)))
    logits = np.asarray(out["token_classification"][0])[..., :5]
    lengths = np.asarray(batch["lengths"])
    valid = np.arange(L)[None, :] < lengths[:, None]
    pred = logits.argmax(-1)[valid]
    true = np.asarray(batch["labels"]["a"])[valid]
    assert metrics["a"]["accuracy"] == pytest.approx(np.mean(pred == true))
    assert metrics["a"]["count"] == valid.sum()
    reg = np.asarray(out["sequence_regression"][0])
    rows = lengths > 0
    err = reg[rows] - np.asarray(batch["labels"]["r"])[rows]
    assert metrics["r"]["mse"] == pytest.approx(np.mean(err**2), rel=1e-5)
    assert metrics["r"]["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)


def test_taskspec_validation():
    with pytest.raises(ValueError, match="num_classes"):
        TaskSpec("x", "token", "classification", num_classes=1)
    with pytest.raises(ValueError, match="loss"):
        TaskSpec("x", "token", "classification", num_classes=3, loss="mse")
    with pytest.raises(ValueError, match="level"):
        TaskSpec("x", "word", "classification", num_classes=3)


def test_loss_scale_multiplies_only_that_tasks_loss(model_and_params):
    model, params = model_and_params
    batch = _batch()
    scales = {"a": 100.0, "r": 0.01, "t": 3.0}
    scaled_tasks = tuple(s.replace(loss_scale=scales.get(s.name, 1.0)) for s in TASKS)
    scaled = MultiTaskRNN(tasks=scaled_tasks, spec=model.spec, vocab_size=20)
    outputs = model.apply({"params": params}, batch["inputs"], batch["lengths"])
    base = np.asarray(task_losses(TASKS, outputs, batch))
    got = np.asarray(task_losses(scaled.tasks, outputs, batch))
    want = base * np.array([scales.get(s.name, 1.0) for s in TASKS])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] != base[0] and got[2] == base[2]
    with pytest.raises(ValueError, match="loss_scale"):
        TASKS[0].replace(loss_scale=0.0)
