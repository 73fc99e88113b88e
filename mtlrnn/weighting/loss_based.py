"""Loss-based strategies: weights computed from the ``[K]`` loss vector alone."""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax.numpy as jnp

from mtlrnn.weighting.base import Info
from mtlrnn.weighting.base import Strategy
from mtlrnn.weighting.base import check_num_tasks


def equal() -> Strategy:
    """Equal weighting: every task has weight 1 (the loss is the plain sum over tasks).

    The sum, not the mean, so a single-task run matches ordinary training exactly.
    """

    def init(num_tasks: int) -> tuple[()]:
        check_num_tasks(num_tasks)
        return ()

    def combine(
        state: tuple[()],
        losses: chex.Array,
        grads: object = None,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, tuple[()], Info]:
        del grads, key
        weights = jnp.ones_like(losses)
        return weights, state, {"weights": weights}

    return Strategy(name="equal", requires="losses", init=init, combine=combine)


def fixed(*, weights: Sequence[float] | None = None) -> Strategy:
    """Fixed per-task weights ``w``: the loss is ``sum_k w_k * loss_k``.

    Args:
      weights: one non-negative weight per task. The trainer fills it from each task's
        ``TaskSpec.weight`` when it is not given. ``None`` means all ones.
    """
    if weights is not None:
        try:
            values = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            raise ValueError(f"weights: must be a list of numbers, got {weights!r}") from None
        if not values or any(w < 0 or w != w for w in values):
            raise ValueError(f"weights: must be a non-empty list of numbers >= 0, got {weights!r}")
    else:
        values = None

    def init(num_tasks: int) -> tuple[()]:
        check_num_tasks(num_tasks)
        if values is not None and len(values) != num_tasks:
            raise ValueError(
                f"weights: expected {num_tasks} weights (one per task), got {len(values)}"
            )
        return ()

    def combine(
        state: tuple[()],
        losses: chex.Array,
        grads: object = None,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, tuple[()], Info]:
        del grads, key
        if values is None:
            w = jnp.ones_like(losses)
        else:
            w = jnp.asarray(values, dtype=losses.dtype)
        return w, state, {"weights": w}

    return Strategy(name="fixed", requires="losses", init=init, combine=combine)


FACTORIES = {"equal": equal, "fixed": fixed}
