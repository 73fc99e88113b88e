"""Dropout whose draws do not depend on how far a batch is padded in time.

``nn.Dropout`` draws one mask of the input's whole shape, so padding a ``[B, L, E]`` batch
from ``L = 16`` to ``L = 32`` changes every bit of the mask, valid steps included. Here step
``t``'s slice of the mask is drawn from ``fold_in(key, t)`` with shape ``[B, ...]``: the first
``L'`` steps of a draw at length ``L`` are the draw at length ``L'``, so a sequence's training
trajectory is the same whichever bucket its batch was padded to (the population mode pads
several seeds' batches to the longest bucket among them).

The key is an ordinary argument, so under ``jax.vmap`` over a batched key (one per seed) every
seed draws its own masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {rate}")


def time_bernoulli(key: chex.PRNGKey, p: float, shape: Sequence[int]) -> chex.Array:
    """Bernoulli(``p``) draws, bool ``[B, L, ...]``, drawn step by step along axis 1.

    Step ``t`` is ``jax.random.bernoulli(fold_in(key, t), p, [B, ...])``, so
    ``time_bernoulli(key, p, (B, L2, ...))[:, :L1] == time_bernoulli(key, p, (B, L1, ...))``
    for ``L1 <= L2``: padding in time never changes the draws of earlier steps.

    Args:
      key: PRNG key (may be batched under ``jax.vmap``).
      p: probability of True, in ``[0, 1]``.
      shape: ``(B, L, *rest)``: at least a batch and a time axis.
    Returns:
      bool ``[B, L, *rest]``.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"shape: needs a batch and a time axis [B, L, ...], got {shape}")
    _check_rate("p", p)
    step_shape = (shape[0], *shape[2:])

    def draw(t: chex.Array) -> chex.Array:
        return jax.random.bernoulli(jax.random.fold_in(key, t), p, step_shape)

    return jnp.moveaxis(jax.vmap(draw)(jnp.arange(shape[1])), 0, 1)


class TimeDropout(nn.Module):
    """Inverted dropout on ``[B, L, ...]`` with a mask drawn step by step (:func:`time_bernoulli`).

    A drop-in for ``nn.Dropout`` whose draws on valid steps do not depend on the padded
    length ``L``. Kept values are scaled by ``1 / (1 - rate)``. For a value without a time
    axis, e.g. ``last [B, D]``, apply it to ``x[:, None]`` (one step).

    Attributes:
      rate: drop probability in ``[0, 1]``; 0 is the identity, 1 gives zeros.
      rng_collection: the RNG stream (``"dropout"``, as ``nn.Dropout``).
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: chex.Array, *, deterministic: bool) -> chex.Array:
        """``x: [B, L, ...]`` -> same shape and dtype; ``deterministic`` is the identity."""
        _check_rate("rate", self.rate)
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        keep = time_bernoulli(self.make_rng(self.rng_collection), keep_prob, x.shape)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
