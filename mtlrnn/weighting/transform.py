"""Use any weighting strategy as an optax transformation in your own training loop.

::

    tx = optax.chain(weighting.as_optax(weighting.get("pcgrad"), num_tasks=K),
                     optax.adam(1e-3))
    state = tx.init(params)
    losses, task_grads = mtlrnn.training.gradients.task_jacobian(loss_vector_fn, params)
    updates, state = tx.update(task_grads, state, params, losses=losses, key=key)
    params = optax.apply_updates(params, updates)

The transformation takes per-task gradients (a pytree whose leaves have a leading ``K``
axis) as its ``updates`` and the loss vector as the extra argument ``losses``, and emits one
aggregated gradient with the parameters' structure, which the next transformations in the
chain treat as an ordinary gradient. Loss-based strategies weight the task gradients:
``sum_k w_k g_k``. This always forms per-task gradients; :func:`mtlrnn.make_train_step`
avoids that for loss-based strategies (one backward pass with the weights as cotangent).
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from mtlrnn.weighting.base import Strategy


class AggregateState(NamedTuple):
    """State of :func:`as_optax`: the strategy's own state, and its last ``info``."""

    inner: Any
    weights: chex.Array  # [K] float32: last weights (NaN where the method defines none)


def as_optax(
    strategy: Strategy, num_tasks: int, *, dim: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``strategy`` as an optax transformation (see the module docstring).

    Args:
      strategy: any weighting strategy without ``after_update`` (FAMO needs the losses after
        the update: call ``strategy.after_update`` yourself, or use ``make_train_step``).
      num_tasks: ``K``.
      dim: ``D``, the flat parameter count, for strategies with ``needs_dim``.
    """
    if strategy.after_update is not None:
        raise ValueError(
            f"weighting {strategy.name!r} updates its state from the losses after the step; "
            "as_optax cannot see those: use mtlrnn.make_train_step, or call "
            "strategy.after_update(state, losses_before, losses_after) yourself"
        )
    if strategy.needs_dim and dim is None:
        raise ValueError(f"dim: weighting {strategy.name!r} needs the flat parameter count D")

    def init(params: Any) -> AggregateState:
        del params
        inner = (
            strategy.init(num_tasks, dim=dim) if strategy.needs_dim else strategy.init(num_tasks)
        )
        return AggregateState(inner=inner, weights=jnp.full((num_tasks,), jnp.nan))

    def update(
        updates: Any,
        state: AggregateState,
        params: Any = None,
        *,
        losses: chex.Array,
        key: chex.PRNGKey | None = None,
        **extra_args: Any,
    ) -> tuple[Any, AggregateState]:
        del params, extra_args
        if strategy.requires == "losses":
            weights, inner, info = strategy.combine(
                state.inner, jax.lax.stop_gradient(losses), key=key
            )
            direction = jax.tree.map(
                lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), updates
            )
        else:
            direction, inner, info = strategy.combine(state.inner, losses, updates, key=key)
        weights = info.get("weights", jnp.full((num_tasks,), jnp.nan)).astype(jnp.float32)
        return direction, AggregateState(inner=inner, weights=weights)

    return optax.GradientTransformationExtraArgs(init, update)
