"""Dropout whose draws depend only on each value's position: its row in the global batch and
its time step, not on padding or on how the batch is split.

``nn.Dropout`` draws one mask of the input's whole shape, so padding a ``[B, L, E]`` batch
from ``L = 16`` to ``L = 32`` changes every bit of the mask, valid steps included, and a batch
split over devices or micro-batches draws other masks than the whole batch. Here the mask of
row ``r`` (its index in the global batch: ``row_offset + b``) at step ``t`` is drawn from
``fold_in(fold_in(key, t), r)``: the first ``L'`` steps of a draw at length ``L`` are the draw
at length ``L'`` (the population mode pads several seeds' batches to the longest bucket among
them), and a device or micro-batch holding rows ``row_offset ..`` of the global batch draws
exactly their rows of the whole batch's mask (pmap and ``train.accumulate`` then follow the
one-device trajectory with dropout on).

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


def time_bernoulli(
    key: chex.PRNGKey, p: float, shape: Sequence[int], row_offset: chex.Numeric = 0
) -> chex.Array:
    """Bernoulli(``p``) draws, bool ``[B, L, ...]``, one draw per row and time step.

    Row ``b`` at step ``t`` is ``jax.random.bernoulli(fold_in(fold_in(key, t), row_offset +
    b), p, [...])``, so ``time_bernoulli(key, p, (B, L2, ...))[:, :L1] == time_bernoulli(key,
    p, (B, L1, ...))`` for ``L1 <= L2`` (padding in time never changes earlier steps' draws)
    and ``time_bernoulli(key, p, (B, ...))[i:j] == time_bernoulli(key, p, (j - i, ...),
    row_offset=i)`` (a slice of the batch draws its rows of the whole batch's mask).

    Args:
      key: PRNG key (may be batched under ``jax.vmap``).
      p: probability of True, in ``[0, 1]``.
      shape: ``(B, L, *rest)``: at least a batch and a time axis.
      row_offset: the global batch index of row 0 (an int or a traced integer scalar).
    Returns:
      bool ``[B, L, *rest]``.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"shape: needs a batch and a time axis [B, L, ...], got {shape}")
    _check_rate("p", p)
    rows = jnp.asarray(row_offset, jnp.int32) + jnp.arange(shape[0], dtype=jnp.int32)
    rest = shape[2:]

    def draw(t: chex.Array) -> chex.Array:
        step_key = jax.random.fold_in(key, t)

        def row(r: chex.Array) -> chex.Array:
            return jax.random.bernoulli(jax.random.fold_in(step_key, r), p, rest)

        return jax.vmap(row)(rows)  # [B, *rest]

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
    def __call__(
        self, x: chex.Array, *, deterministic: bool, row_offset: chex.Numeric = 0
    ) -> chex.Array:
        """``x: [B, L, ...]`` -> same shape and dtype; ``deterministic`` is the identity;
        ``row_offset``: the global batch index of ``x``'s first row."""
        _check_rate("rate", self.rate)
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        keep = time_bernoulli(
            self.make_rng(self.rng_collection), keep_prob, x.shape, row_offset
        )
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
