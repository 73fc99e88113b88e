"""Task heads: all heads of one ``(level, kind)`` group stacked on a task axis, applied by vmap.

Heads of one group may have different output widths (class counts or regression dims): they
share a stacked kernel ``[Kg, D, O]`` with ``O`` the widest output; the unused columns of a
narrower head are masked in the loss and metrics (logits set to a large negative number), so
one vmapped matmul serves the whole group with no Python loop over tasks at run time.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mtlrnn.tasks import TaskSpec


class TaskGroup(NamedTuple):
    """Tasks that share one stacked head.

    Attributes:
      name: ``"{level}_{kind}"``, e.g. ``"token_classification"``.
      level: ``token`` or ``sequence``.
      kind: ``classification`` or ``regression``.
      specs: the group's tasks, in their order on the global ``[K]`` axis.
      indices: each task's position on the global ``[K]`` axis.
    """

    name: str
    level: str
    kind: str
    specs: tuple[TaskSpec, ...]
    indices: tuple[int, ...]

    @property
    def width(self) -> int:
        """``O``: the widest output in the group."""
        return max(s.out_dim for s in self.specs)


def group_tasks(tasks: tuple[TaskSpec, ...]) -> tuple[TaskGroup, ...]:
    """Split tasks into head groups, in order of each group's first task."""
    order: list[tuple[str, str]] = []
    members: dict[tuple[str, str], list[int]] = {}
    for i, spec in enumerate(tasks):
        if spec.group not in members:
            order.append(spec.group)
            members[spec.group] = []
        members[spec.group].append(i)
    return tuple(
        TaskGroup(
            name=f"{level}_{kind}",
            level=level,
            kind=kind,
            specs=tuple(tasks[i] for i in members[(level, kind)]),
            indices=tuple(members[(level, kind)]),
        )
        for level, kind in order
    )


def pool(outputs: chex.Array, last: chex.Array, lengths: chex.Array, mode: str) -> chex.Array:
    """Pool trunk outputs over valid time steps.

    Args:
      outputs: ``[B, L, D]`` trunk outputs (zero on padded steps).
      last: ``[B, D]`` last valid state (per direction).
      lengths: ``[B]`` valid lengths.
      mode: ``last``, ``mean`` or ``max``.
    Returns:
      ``[B, D]``; rows of length 0 pool to zeros.
    """
    if mode == "last":
        return last
    valid = (jnp.arange(outputs.shape[1])[None, :] < lengths[:, None])[:, :, None]
    if mode == "mean":
        total = jnp.sum(jnp.where(valid, outputs, 0), axis=1)
        return total / jnp.maximum(lengths, 1)[:, None].astype(outputs.dtype)
    if mode == "max":
        neg = jnp.asarray(jnp.finfo(outputs.dtype).min, outputs.dtype)
        best = jnp.max(jnp.where(valid, outputs, neg), axis=1)
        return jnp.where((lengths > 0)[:, None], best, 0)
    raise ValueError(f"pooling must be one of last, mean, max; got {mode!r}")


def _dense(kernel: chex.Array, bias: chex.Array, x: chex.Array) -> chex.Array:
    return x @ kernel + bias


class StackedHeads(nn.Module):
    """One linear head per task of a group, stored stacked: kernel ``[Kg, D, O]``, bias ``[Kg, O]``.

    Attributes:
      group: the task group.
      param_dtype: parameter storage dtype.
      dtype: compute dtype.
    """

    group: TaskGroup
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, outputs: chex.Array, last: chex.Array, lengths: chex.Array) -> chex.Array:
        """Apply every head of the group in one vmapped call.

        Args:
          outputs: ``[B, L, D]`` trunk outputs; ``last: [B, D]``; ``lengths: [B]``.
        Returns:
          ``[Kg, B, L, O]`` for token groups, ``[Kg, B, O]`` for sequence groups.
        """
        k, d, o = len(self.group.specs), outputs.shape[-1], self.group.width
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))
        kernel = self.param("kernel", init, (k, d, o), self.param_dtype).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (k, o), self.param_dtype)
        bias = bias.astype(self.dtype)
        if self.group.level == "token":
            return jax.vmap(_dense, in_axes=(0, 0, None))(kernel, bias, outputs.astype(self.dtype))
        modes = sorted({s.pooling for s in self.group.specs})
        pooled = {m: pool(outputs, last, lengths, m) for m in modes}
        per_task = jnp.stack([pooled[s.pooling] for s in self.group.specs]).astype(self.dtype)
        return jax.vmap(_dense)(kernel, bias, per_task)
