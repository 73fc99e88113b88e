"""Per-task losses as one ``[K]`` vector, computed group by group with vmap over tasks.

Every task's loss is a masked mean over its labelled positions (tokens for token tasks,
sequences for sequence tasks). A task with no labelled position in the batch has loss 0 and
zero gradient, so partially labelled data needs no special casing. Losses are computed in
float32 whatever the compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mtlrnn.model.heads import TaskGroup
from mtlrnn.model.heads import group_tasks
from mtlrnn.tasks import TaskSpec

Batch = Mapping[str, object]
NEG_INF = -1e9  # masked logit: finite, so 0 * log_softmax stays 0 for unused classes


def valid_mask(group: TaskGroup, batch: Batch) -> chex.Array:
    """Label masks of a group, ``[Kg, B, L]`` (token) or ``[Kg, B]`` (sequence), float32.

    Token masks are combined with the length mask, so padded steps never count; a task
    missing from ``batch["masks"]`` is fully labelled.
    """
    inputs, lengths = batch["inputs"], batch["lengths"]
    length = inputs.shape[1]
    masks = batch.get("masks", {})
    if group.level == "token":
        steps = (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.float32)
        return jnp.stack(
            [
                steps * jnp.asarray(masks[s.name], jnp.float32) if s.name in masks else steps
                for s in group.specs
            ]
        )
    rows = (lengths > 0).astype(jnp.float32)  # an all-padding row has no label
    return jnp.stack(
        [
            rows * jnp.asarray(masks[s.name], jnp.float32) if s.name in masks else rows
            for s in group.specs
        ]
    )


def stacked_labels(group: TaskGroup, batch: Batch) -> chex.Array:
    """Labels of a group stacked on the task axis.

    Classification: int32 ``[Kg, B(, L)]``. Regression: float32 ``[Kg, B(, L), O]`` with each
    task's ``dim`` zero-padded to the group width ``O``.
    """
    labels = batch["labels"]
    if group.kind == "classification":
        return jnp.stack([jnp.asarray(labels[s.name], jnp.int32) for s in group.specs])
    width = group.width
    out = []
    for s in group.specs:
        y = jnp.asarray(labels[s.name], jnp.float32)
        want = batch["inputs"].shape[:2] if group.level == "token" else batch["inputs"].shape[:1]
        if y.shape == want:  # dim 1 given without its trailing axis
            y = y[..., None]
        out.append(jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, width - y.shape[-1])]))
    return jnp.stack(out)


def class_mask(group: TaskGroup) -> np.ndarray:
    """``[Kg, O]`` bool: True on each task's real outputs (classes or regression dims)."""
    return np.arange(group.width)[None, :] < np.array([s.out_dim for s in group.specs])[:, None]


def masked_logits(group: TaskGroup, logits: chex.Array) -> chex.Array:
    """Logits ``[Kg, ..., O]`` in float32 with each task's unused classes set to ``NEG_INF``."""
    cmask = jnp.asarray(class_mask(group))
    shape = (cmask.shape[0],) + (1,) * (logits.ndim - 2) + (cmask.shape[1],)
    return jnp.where(cmask.reshape(shape), logits.astype(jnp.float32), NEG_INF)


def _cross_entropy(
    logits: chex.Array, labels: chex.Array, num_classes: chex.Array, smoothing: chex.Array
) -> chex.Array:
    """Per-position CE of one task. ``logits: [..., O]`` (masked), ``labels: [...]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    valid = (jnp.arange(logits.shape[-1]) < num_classes).astype(logits.dtype)
    target = (1.0 - smoothing) * jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    target = target + smoothing * valid / num_classes
    return -jnp.sum(target * logp, axis=-1)


def _regression(
    preds: chex.Array,
    targets: chex.Array,
    dims: chex.Array,
    huber: chex.Array,
    delta: chex.Array,
) -> chex.Array:
    """Per-position loss of one task, mean over its ``dim`` outputs. ``preds: [..., O]``."""
    valid = (jnp.arange(preds.shape[-1]) < dims).astype(jnp.float32)
    err = (preds.astype(jnp.float32) - targets) * valid
    sq = err**2
    abs_err = jnp.abs(err)
    hub = jnp.where(abs_err <= delta, 0.5 * err**2, delta * (abs_err - 0.5 * delta))
    per = jnp.where(huber, hub, sq)
    return jnp.sum(per, axis=-1) / dims


def group_losses(group: TaskGroup, outputs: chex.Array, batch: Batch) -> chex.Array:
    """Masked-mean loss of every task in a group, ``[Kg]`` float32."""
    sums, counts = group_loss_sums(group, outputs, batch)
    return sums / jnp.maximum(counts, 1.0)


def group_loss_sums(
    group: TaskGroup, outputs: chex.Array, batch: Batch
) -> tuple[chex.Array, chex.Array]:
    """Summed loss and labelled-position count of every task in a group, ``([Kg], [Kg])``.

    The masked mean is ``sums / max(counts, 1)``; sums and counts add up over micro-batches
    and devices, so the mean over a global batch is exact however it is split.

    Args:
      group: the task group.
      outputs: the group's head outputs ``[Kg, B(, L), O]``.
      batch: the batch (``inputs``, ``lengths``, ``labels``, ``masks``).
    """
    mask = valid_mask(group, batch)
    labels = stacked_labels(group, batch)
    if group.kind == "classification":
        per = jax.vmap(_cross_entropy)(
            masked_logits(group, outputs),
            labels,
            jnp.array([s.num_classes for s in group.specs], jnp.float32),
            jnp.array([s.label_smoothing for s in group.specs], jnp.float32),
        )
    else:
        per = jax.vmap(_regression)(
            outputs,
            labels,
            jnp.array([s.dim for s in group.specs], jnp.float32),
            jnp.array([s.loss == "huber" for s in group.specs]),
            jnp.array([s.huber_delta for s in group.specs], jnp.float32),
        )
    axes = tuple(range(1, mask.ndim))
    scale = np.array([s.loss_scale for s in group.specs], np.float32)
    sums = jnp.sum(per * mask, axis=axes)
    return (sums * scale if np.any(scale != 1.0) else sums), jnp.sum(mask, axis=axes)


def task_losses(
    tasks: tuple[TaskSpec, ...], outputs: Mapping[str, chex.Array], batch: Batch
) -> chex.Array:
    """The per-task loss vector ``[K]`` (float32), in the order of ``tasks``.

    Args:
      tasks: the task specs (the ``[K]`` axis order).
      outputs: head outputs by group name, as returned by ``MultiTaskRNN``.
      batch: the batch.
    """
    sums, counts = task_loss_sums(tasks, outputs, batch)
    return sums / jnp.maximum(counts, 1.0)


def task_counts(tasks: tuple[TaskSpec, ...], batch: Batch) -> chex.Array:
    """Labelled positions per task in ``batch``, ``[K]`` float32 (no model needed)."""
    groups = group_tasks(tasks)
    parts = [jnp.sum(valid_mask(g, batch), axis=tuple(range(1, 2 + (g.level == "token"))))
             for g in groups]
    order = np.argsort(np.concatenate([np.asarray(g.indices) for g in groups]))
    return jnp.concatenate(parts)[order]


def task_loss_sums(
    tasks: tuple[TaskSpec, ...], outputs: Mapping[str, chex.Array], batch: Batch
) -> tuple[chex.Array, chex.Array]:
    """Per-task summed losses and labelled counts ``([K], [K])`` float32, in task order.

    ``task_losses == sums / max(counts, 1)``. Counts depend only on the batch's masks and
    lengths, not on the parameters.
    """
    groups = group_tasks(tasks)
    parts = [group_loss_sums(g, outputs[g.name], batch) for g in groups]
    order = np.argsort(np.concatenate([np.asarray(g.indices) for g in groups]))
    sums = jnp.concatenate([p[0] for p in parts])[order]
    counts = jnp.concatenate([p[1] for p in parts])[order]
    return sums, counts
