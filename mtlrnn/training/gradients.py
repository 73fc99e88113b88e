"""Per-task gradients in one vectorised pass, in three modes.

Notation: ``K`` tasks, ``D`` flat size of what the gradients are taken with respect to.

* ``full``: the Jacobian of the loss vector ``[K]`` with respect to the shared parameters
  (embedding and trunk), by ``vmap`` over VJPs with one-hot cotangents (one forward pass,
  ``K`` backward passes fused into one batched backward). ``chunk_size`` bounds memory by
  mapping over groups of tasks.
* ``representation``: the Jacobian with respect to the trunk output (the shared
  representation) only; the aggregated cotangent then goes through one ordinary backward
  pass of the trunk. Cheap: only the heads' backward is batched over tasks. A Gramian method
  reads the ``[K, B, L, D]`` rows once (for ``G``); its direction ``w @ J`` is the heads'
  pull-back of ``w`` (linear in the cotangent), not a second pass over the rows. The heads'
  own gradient is one more pull-back (of ones, or of ``info["head_weights"]``).
* ``gramian``: ``G = J J^T`` (``[K, K]``), accumulated leaf by leaf without concatenating a
  flat ``[K, D]`` matrix; the method picks weights from ``G`` and the update is one VJP with
  the weights as cotangent. The per-task gradients are still formed, leaf by leaf, so peak
  memory is that of ``full``; the saving is the aggregator's ``O(K D)`` work and copies.

In every mode head parameters receive their own task's gradient (the sum over tasks of the
per-task head gradients, each task touching only its own head), never an aggregate; a method
may scale each task's head gradient (``info["head_weights"]``, see
:mod:`mtlrnn.weighting.base`) where its reference implementation does.

The Gramian is :func:`mtlrnn.weighting.base.gramian` (full precision, symmetrised), the same
function every weighting method uses, so the ``gramian`` and ``full`` modes agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from mtlrnn.weighting.base import HIGHEST
from mtlrnn.weighting.base import gramian  # the package's one Gramian (re-exported here)

__all__ = ["MODES", "effective_weights", "gramian", "sum_tasks", "task_jacobian", "vmap_vjp"]

MODES: tuple[str, ...] = ("full", "representation", "gramian")


def vmap_vjp(
    vjp: Callable[[chex.Array], tuple[Any, ...]], num_tasks: int, *, chunk_size: int = 0
) -> tuple[Any, ...]:
    """Per-task cotangents pulled back: ``vjp(e_k)`` for every one-hot ``e_k``, batched.

    Args:
      vjp: the VJP function of a function with output ``[K]``.
      num_tasks: ``K``.
      chunk_size: tasks per batched backward pass; 0 means all ``K`` at once. Must divide K.
    Returns:
      ``vjp``'s outputs with a leading ``K`` axis on every leaf.
    """
    eye = jnp.eye(num_tasks)
    if not chunk_size or chunk_size >= num_tasks:
        return jax.vmap(vjp)(eye)
    if num_tasks % chunk_size:
        raise ValueError(
            f"chunk_size: must divide the number of tasks ({num_tasks}), got {chunk_size}"
        )
    chunks = eye.reshape(num_tasks // chunk_size, chunk_size, num_tasks)
    out = jax.lax.map(jax.vmap(vjp), chunks)
    return jax.tree.map(lambda x: x.reshape((num_tasks,) + x.shape[2:]), out)


def task_jacobian(
    loss_fn: Callable[[Any], chex.Array], params: Any, *, chunk_size: int = 0
) -> tuple[chex.Array, Any]:
    """Loss vector and per-task gradients of ``loss_fn: params -> [K]``.

    Returns:
      ``(losses [K], grads)`` where ``grads`` has ``params``' structure with a leading ``K``
      axis on every leaf (row ``k`` is the gradient of ``losses[k]``).
    """
    losses, vjp = jax.vjp(loss_fn, params)
    (jac,) = vmap_vjp(vjp, losses.shape[0], chunk_size=chunk_size)
    return losses, jac


def sum_tasks(tree: Any) -> Any:
    """Sum over the leading ``K`` axis of every leaf."""
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), tree)


def effective_weights(jac: Any, direction: Any) -> chex.Array:
    """Least-squares task coefficients ``w: [K]`` with ``w @ J`` closest to ``direction``.

    Exact for every method whose update is a combination of the task gradients (and ``J``
    has full row rank); for the others (e.g. sign-masking methods) it is the best linear
    summary. Computed from ``G = J J^T`` and ``J d``, so it costs ``O(K D)``.
    """
    gram_ = gramian(jac)
    jd = sum(
        jnp.matmul(
            j.reshape(j.shape[0], -1).astype(gram_.dtype),
            d.reshape(-1).astype(gram_.dtype),
            precision=HIGHEST,
        )
        for j, d in zip(jax.tree.leaves(jac), jax.tree.leaves(direction), strict=True)
    )
    return jnp.linalg.pinv(gram_, hermitian=True) @ jd
