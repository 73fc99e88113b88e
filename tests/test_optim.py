"""Optimizer and learning-rate schedule construction from the config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtlrnn.config import apply_overrides
from mtlrnn.config import default_config
from mtlrnn.training.step import make_optimizer
from mtlrnn.training.step import make_schedule


def _opt(*overrides):
    return apply_overrides(default_config(), list(overrides)).optimizer


def test_cosine_schedule_warmup_and_end():
    cfg = _opt(
        "optimizer.learning_rate=0.01", "optimizer.warmup_steps=10", "optimizer.end_lr_fraction=0.1"
    )
    sched = make_schedule(cfg, 110)
    # Linear warm-up from 0: step 5 of 10 is half the peak.
    assert float(sched(5)) == pytest.approx(0.005)
    assert float(sched(10)) == pytest.approx(0.01)
    # Cosine over the remaining 100 steps: halfway is the mean of peak and end.
    assert float(sched(60)) == pytest.approx((0.01 + 0.001) / 2, rel=1e-5)
    assert float(sched(110)) == pytest.approx(0.001)


def test_constant_schedule_with_warmup():
    sched = make_schedule(
        _opt(
            "optimizer.schedule=constant", "optimizer.warmup_steps=4", "optimizer.learning_rate=0.1"
        ),
        100,
    )
    np.testing.assert_allclose(
        [float(sched(s)) for s in (0, 2, 4, 50)], [0, 0.05, 0.1, 0.1], atol=1e-7
    )


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_each_optimizer_takes_a_descent_step(name):
    tx, _ = make_optimizer(
        _opt(f"optimizer.name={name}", "optimizer.warmup_steps=0", "optimizer.schedule=constant"),
        10,
    )
    params = {"w": jnp.array([1.0, -2.0])}
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(jnp.sum(new["w"] ** 2)) < float(jnp.sum(params["w"] ** 2))


def test_clipping_bounds_the_update():
    # With clip_norm c and plain SGD (no momentum) the step is lr * c * g / |g|.
    cfg = _opt(
        "optimizer.name=sgd",
        "optimizer.momentum=0.0",
        "optimizer.clip_norm=0.5",
        "optimizer.learning_rate=1.0",
        "optimizer.warmup_steps=0",
        "optimizer.schedule=constant",
    )
    tx, _ = make_optimizer(cfg, 10)
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.array([3.0, 4.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.3, -0.4], rtol=1e-6)
