"""Evaluation metrics from sufficient statistics accumulated over batches.

Inside jit each batch yields small per-group statistics (a confusion matrix per
classification task; error sums per regression task); the host adds them up and
:func:`finalize` turns the totals into metrics. This makes corpus-level metrics (macro-F1)
exact regardless of batching.

* accuracy = correct / labelled positions.
* macro_f1 = mean over classes of ``2 TP / (2 TP + FP + FN)``, over the classes present in
  the labels or the predictions (scikit-learn's ``f1_score(average="macro")`` convention).
* mse, mae = mean over labelled positions and output dims of squared / absolute error.
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
from mtlrnn.training.losses import Batch
from mtlrnn.training.losses import class_mask
from mtlrnn.training.losses import masked_logits
from mtlrnn.training.losses import stacked_labels
from mtlrnn.training.losses import valid_mask

Stats = dict[str, dict[str, chex.Array]]


def group_stats(group: TaskGroup, outputs: chex.Array, batch: Batch) -> dict[str, chex.Array]:
    """Sufficient statistics of one group for one batch.

    Returns:
      classification: ``{"confusion": [Kg, O, O]}`` (rows true class, columns predicted);
      regression: ``{"sse": [Kg], "sae": [Kg], "count": [Kg]}`` (count of labelled values).
    """
    mask = valid_mask(group, batch)
    labels = stacked_labels(group, batch)
    kg = mask.shape[0]
    if group.kind == "classification":
        pred = jnp.argmax(masked_logits(group, outputs), axis=-1)
        o = group.width
        true_1h = jax.nn.one_hot(labels.reshape(kg, -1), o) * mask.reshape(kg, -1, 1)
        pred_1h = jax.nn.one_hot(pred.reshape(kg, -1), o)
        return {"confusion": jnp.einsum("knc,knd->kcd", true_1h, pred_1h)}
    dmask = jnp.asarray(class_mask(group), jnp.float32)
    dshape = (kg,) + (1,) * (outputs.ndim - 2) + (group.width,)
    weight = mask[..., None] * dmask.reshape(dshape)
    err = (outputs.astype(jnp.float32) - labels) * weight
    axes = tuple(range(1, err.ndim))
    return {
        "sse": jnp.sum(err**2, axis=axes),
        "sae": jnp.sum(jnp.abs(err), axis=axes),
        "count": jnp.sum(weight, axis=axes),
    }


def batch_stats(
    tasks: tuple[TaskSpec, ...], outputs: Mapping[str, chex.Array], batch: Batch
) -> Stats:
    """Statistics of every group for one batch, keyed by group name."""
    return {g.name: group_stats(g, outputs[g.name], batch) for g in group_tasks(tasks)}


def accumulate(total: Stats | None, stats: Stats) -> Stats:
    """Add one batch's statistics (device or numpy) into host float64 totals."""
    stats = jax.tree.map(lambda x: np.asarray(x, np.float64), stats)
    if total is None:
        return stats
    return jax.tree.map(np.add, total, stats)


def macro_f1(confusion: np.ndarray) -> float:
    """Macro-F1 from a ``[C, C]`` confusion matrix (rows true, columns predicted)."""
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not present.any():
        return float("nan")
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(np.mean(f1))


def finalize(tasks: tuple[TaskSpec, ...], total: Stats) -> dict[str, dict[str, float]]:
    """Metrics per task, ``{task: {metric: value}}``, from accumulated statistics.

    A task with no labelled position gets NaN metrics and ``count`` 0.
    """
    out: dict[str, dict[str, float]] = {}
    for group in group_tasks(tasks):
        stats = total[group.name]
        for j, spec in enumerate(group.specs):
            if group.kind == "classification":
                c = np.asarray(stats["confusion"][j])[: spec.num_classes, : spec.num_classes]
                n = float(c.sum())
                values = {
                    "accuracy": float(np.trace(c) / n) if n else float("nan"),
                    "macro_f1": macro_f1(c),
                }
            else:
                n = float(stats["count"][j])
                values = {
                    "mse": float(stats["sse"][j] / n) if n else float("nan"),
                    "mae": float(stats["sae"][j] / n) if n else float("nan"),
                }
                n = n / spec.dim
            out[spec.name] = {m: values[m] for m in spec.metrics} | {"count": n}
    return out
