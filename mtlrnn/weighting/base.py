"""The weighting-strategy contract shared by every loss-weighting and aggregation method.

A strategy is a NamedTuple of pure functions, in optax's shape:

* ``init(num_tasks) -> state``: the initial state pytree (may be an empty tuple).
* ``combine(state, losses, grads=None, key=None) -> (out, state, info)``:

  - loss-based strategies (``requires == "losses"``) read ``losses: [K]`` and return
    weights ``out: [K]``; the trainer minimises ``sum(stop_gradient(out) * losses)``.
  - gradient-based strategies (``requires == "grads"``) also read ``grads: [K, D]`` (or a
    pytree whose leaves have a leading ``K`` axis) and return the update direction
    ``out: [D]`` (or the matching pytree).

  ``info`` is a dict of arrays for logging; ``info["weights"]: [K]`` where the method
  defines weights. A gradient method may also return ``info["head_weights"]: [K]``, the
  coefficient of task ``k``'s gradient on its own task-specific parameters (the heads), for
  methods whose reference implementation does not train the heads on the plain task losses
  (DB-MTL: ``1 / L_k``, the gradient of ``log L_k``; ExcessMTL: its task weights). Absent,
  each head gets its own task's plain gradient.

Everything is jittable and free of Python-side mutable state.

Gramians: :func:`gramian` is the one ``G = J J^T`` of the package (every gradient mode and
every method uses it): full-precision matmuls (``Precision.HIGHEST``: no TF32/bf16 passes on
accelerators, so the ``gramian`` and ``full`` modes give the same weights), accumulated in at
least float32, exactly symmetric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mtlrnn.weighting.validate import check_num_tasks

__all__ = [
    "Strategy",
    "check_num_tasks",
    "combine_rows",
    "compute_dtype",
    "flatten_task_grads",
    "gram_strategy",
    "gradient_strategy",
    "gramian",
    "stateless_init",
]

HIGHEST = jax.lax.Precision.HIGHEST

State = Any
Info = dict[str, chex.Array]
InitFn = Callable[..., State]
CombineFn = Callable[..., tuple[Any, State, Info]]
GramFn = Callable[..., tuple[chex.Array, State, Info]]
WeightsFn = Callable[..., tuple[chex.Array, State, Info]]
AfterFn = Callable[[State, chex.Array, chex.Array], State]


class Strategy(NamedTuple):
    """A weighting strategy: pure functions and what they need.

    Attributes:
      name: registry name.
      requires: ``"losses"`` (loss vector only) or ``"grads"`` (per-task gradients too).
      init: ``init(num_tasks, *, dim=None) -> state``. ``dim`` is ``D``, the flat gradient
        width; only strategies with ``needs_dim`` use it (e.g. gradient moving averages).
      combine: ``(state, losses [K], grads=None, key=None) -> (out, state, info)``.
      from_gram: optional ``(state, losses [K], gram [K, K], key=None) -> (weights [K],
        state, info)`` for gradient methods whose direction is ``weights @ J``, with weights
        a function of the Gramian ``G = J J^T`` alone. Enables the Gramian-only gradient
        mode (``J`` is never materialised). ``None`` when the method needs ``J`` itself.
      after_update: optional ``(state, losses_before [K], losses_after [K]) -> state``,
        called with the losses of the same batch after the parameter update (FAMO).
      needs_dim: the state depends on ``D`` (``init`` must receive ``dim``), so the
        gradient width must be the same every step.
      modes: the per-task gradient modes (see :mod:`mtlrnn.training.gradients`) the method may run
        in: ``full`` (Jacobian of the shared parameters), ``representation`` (Jacobian of
        the trunk output) and ``gramian`` (``G`` only; needs ``from_gram``).
    """

    name: str
    requires: Literal["losses", "grads"]
    init: InitFn
    combine: CombineFn
    from_gram: GramFn | None = None
    after_update: AfterFn | None = None
    needs_dim: bool = False
    modes: tuple[str, ...] = ("full", "representation", "gramian")


def stateless_init(num_tasks: int) -> tuple[()]:
    """``init`` of a strategy without state: checks ``num_tasks``, returns ``()``."""
    check_num_tasks(num_tasks)
    return ()


def compute_dtype(dtype: Any) -> jnp.dtype:
    """At least float32 (bf16/f16 inputs are combined and solved in float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def gramian(jac: Any) -> chex.Array:
    """``G = J J^T: [K, K]`` of per-task gradients ``J``: a ``[K, D]`` matrix or a pytree
    whose leaves have a leading ``K`` axis (accumulated leaf by leaf, without concatenating
    a flat matrix).

    Full-precision products (``Precision.HIGHEST``) accumulated in at least float32, then
    symmetrised (``(G + G^T) / 2``), so every gradient mode sees the same matrix.
    """
    leaves = jax.tree.leaves(jac)
    if not leaves:
        raise ValueError("grads: empty pytree")
    k = leaves[0].shape[0]
    dtype = compute_dtype(jnp.result_type(*leaves))
    total = jnp.zeros((k, k), dtype)
    for leaf in leaves:
        flat = leaf.reshape(k, -1).astype(dtype)
        total = total + jnp.matmul(flat, flat.T, precision=HIGHEST)
    return 0.5 * (total + total.T)


def combine_rows(weights: chex.Array, matrix: chex.Array) -> chex.Array:
    """``w @ J: [D]`` for ``w: [K]`` and ``J: [K, D]``, at full precision, accumulated in at
    least float32 and returned in ``J``'s dtype."""
    dtype = compute_dtype(matrix.dtype)
    out = jnp.matmul(weights.astype(dtype), matrix.astype(dtype), precision=HIGHEST)
    return out.astype(matrix.dtype)


def flatten_task_grads(grads: Any) -> tuple[chex.Array, Callable[[chex.Array], Any]]:
    """``[K, D]`` matrix from per-task gradients given as a matrix or a pytree whose leaves
    all have a leading ``K`` axis; plus the function mapping a ``[D]`` direction back to the
    input's structure (without the ``K`` axis)."""
    if isinstance(grads, jax.Array | np.ndarray) and jnp.ndim(grads) == 2:
        return jnp.asarray(grads), lambda d: d
    leaves, treedef = jax.tree.flatten(grads)
    if not leaves:
        raise ValueError("grads: empty pytree")
    k = leaves[0].shape[0]
    for leaf in leaves:
        if leaf.ndim < 1 or leaf.shape[0] != k:
            raise ValueError(
                f"grads: every leaf needs the same leading task axis K={k}, got shape {leaf.shape}"
            )
    shapes = [leaf.shape[1:] for leaf in leaves]
    sizes = [int(np.prod(s)) for s in shapes]
    matrix = jnp.concatenate([leaf.reshape(k, -1) for leaf in leaves], axis=1)

    def unflatten(direction: chex.Array) -> Any:
        parts = jnp.split(direction, np.cumsum(sizes)[:-1])
        return jax.tree.unflatten(
            treedef, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
        )

    return matrix, unflatten


def gradient_strategy(
    name: str,
    init: InitFn,
    matrix_combine: CombineFn,
    *,
    from_gram: GramFn | None = None,
    needs_dim: bool = False,
    modes: tuple[str, ...] | None = None,
) -> Strategy:
    """A gradient-based Strategy from a combine written for a ``[K, D]`` matrix.

    The returned ``combine`` also accepts a pytree with a leading ``K`` axis and returns the
    direction in the same structure. ``grads`` is required. ``modes`` defaults to every mode
    the method can support: ``gramian`` only with ``from_gram``, ``representation`` only
    without ``needs_dim`` (the representation's width changes with the sequence length).
    """
    if modes is None:
        modes = ("full",)
        if not needs_dim:
            modes += ("representation",)
        if from_gram is not None:
            modes += ("gramian",)

    def combine(
        state: State, losses: chex.Array, grads: Any = None, key: chex.PRNGKey | None = None
    ) -> tuple[Any, State, Info]:
        if grads is None:
            raise ValueError(f"weighting {name!r} needs per-task gradients: pass grads=[K, D]")
        matrix, unflatten = flatten_task_grads(grads)
        if matrix.shape[0] != losses.shape[0]:
            raise ValueError(f"grads: {matrix.shape[0]} task rows but {losses.shape[0]} losses")
        direction, state, info = matrix_combine(state, losses, matrix, key)
        return unflatten(direction), state, info

    return Strategy(
        name=name,
        requires="grads",
        init=init,
        combine=combine,
        from_gram=from_gram,
        needs_dim=needs_dim,
        modes=tuple(modes),
    )


def gram_strategy(
    name: str,
    init: InitFn,
    weights_fn: WeightsFn,
    *,
    modes: tuple[str, ...] | None = None,
) -> Strategy:
    """A gradient Strategy whose direction is ``w @ J`` with ``w`` a function of the Gramian.

    ``weights_fn(state, losses [K], G [K, K], key) -> (weights [K], state, info)`` receives
    ``G`` in at least float32. It is the strategy's ``from_gram`` (the ``gramian`` mode); the
    ``combine`` path forms ``G`` with :func:`gramian` and returns ``w @ J``, so both paths give
    the same direction by construction.
    """

    def from_gram(
        state: State, losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, State, Info]:
        return weights_fn(state, losses, gram.astype(compute_dtype(gram.dtype)), key)

    def matrix_combine(
        state: State, losses: chex.Array, grads: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, State, Info]:
        weights, state, info = weights_fn(state, losses, gramian(grads), key)
        return combine_rows(weights, grads), state, info

    return gradient_strategy(name, init, matrix_combine, from_gram=from_gram, modes=modes)
