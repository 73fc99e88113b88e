"""Length-bucketed, padded batches from a :class:`SequenceDataset`.

A batch is a plain dict of numpy arrays (``B`` batch, ``L`` bucket length)::

    {"inputs":  int32 [B, L] (or float32 [B, L, F] for feature inputs),
     "lengths": int32 [B],
     "labels":  {task: int32 [B, L] | float32 [B, L, dim] | int32 [B] | float32 [B, dim]},
     "masks":   {task: float32 [B, L] (token tasks) | float32 [B] (sequence tasks)},
     "chars":   int32 [B, L, C]  (only when the dataset has character ids)}

Padded steps and padded rows have label 0 and mask 0; padded rows have length 0; token masks
are already 0 beyond each row's length. Every batch's ``L`` is one of the bucket lengths, so a
jitted step compiles once per bucket, and every batch has exactly ``B = batch_size`` rows.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np

from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.tasks import TaskSpec

Batch = dict[str, Any]  # {"inputs", "lengths", "labels", "masks"}; see the module docstring.
Plan = list[tuple[int, np.ndarray]]  # (bucket length L, example indices [<= B]) per batch

# Ragged fields packed into one flat array plus offsets, cached per dataset (datasets are
# frozen), so that a batch is a few vectorised gathers instead of a Python loop over rows.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _packed(dataset: SequenceDataset, field: str, task: str = "") -> tuple[np.ndarray, np.ndarray]:
    cache = _PACKED.setdefault(dataset, {})
    key = (field, task)
    if key not in cache:
        if field == "inputs":
            ragged = dataset.inputs
        elif field == "chars":
            ragged = dataset.chars
        elif field == "labels":
            ragged = dataset.labels[task]
        else:
            ragged = dataset.masks[task]
        flat = np.concatenate([np.asarray(a) for a in ragged], axis=0)
        offsets = np.concatenate([[0], np.cumsum(dataset.lengths)[:-1]]).astype(np.int64)
        cache[key] = (flat, offsets)
    return cache[key]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_lengths(dataset: SequenceDataset, buckets: Sequence[int]) -> tuple[int, ...]:
    """Resolve bucket lengths for ``dataset``: sorted and unique.

    An empty ``buckets`` means one bucket: the longest sequence rounded up to a multiple of 8.
    Raises ValueError for a non-positive bucket, or when some sequence is longer than the
    largest bucket (naming the example and its length).
    """
    lengths = dataset.lengths
    if len(lengths) == 0:
        raise ValueError("dataset: needs at least one example to batch, got 0")
    if not len(buckets):
        return (_round_up(int(lengths.max()), 8),)
    bad = [b for b in buckets if isinstance(b, bool) or int(b) != b or int(b) < 1]
    if bad:
        raise ValueError(f"buckets: must be positive integers, got {list(buckets)}")
    resolved = tuple(sorted({int(b) for b in buckets}))
    longest = int(np.argmax(lengths))
    if lengths[longest] > resolved[-1]:
        too_long = int(np.sum(lengths > resolved[-1]))
        raise ValueError(
            f"buckets: example {longest} has length {int(lengths[longest])} > the largest "
            f"bucket {resolved[-1]} ({too_long} example(s) too long); add a bucket >= "
            f"{int(lengths[longest])}, or leave buckets empty for one bucket that fits all"
        )
    return resolved


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size}")


class _Grid(NamedTuple):
    """Where each cell of a ``[B, L]`` batch comes from (``n`` real rows, then padding)."""

    idx: np.ndarray  # int64 [n], the examples of the real rows
    rows: np.ndarray  # int64 [B], idx padded with example 0 (masked out by valid)
    steps: np.ndarray  # int [L], 0 .. L - 1
    valid: np.ndarray  # bool [B, L], step < row length; all False on padded rows


def _batch_indices(indices: Sequence[int], batch_size: int) -> np.ndarray:
    """``indices`` as int64 ``[n]``; a ValueError when ``n > batch_size``."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) > batch_size:
        raise ValueError(f"indices: at most batch_size={batch_size} examples, got {len(idx)}")
    return idx


def _padded_lengths(
    dataset: SequenceDataset, idx: np.ndarray, *, length: int, batch_size: int
) -> np.ndarray:
    """int32 ``[B]``: the lengths of examples ``idx``, then 0 for padded rows; a ValueError
    names the first example longer than ``length``."""
    lens = np.zeros(batch_size, np.int32)
    lens[: len(idx)] = dataset.lengths[idx]
    if len(idx) and lens.max() > length:
        row = int(np.argmax(lens))
        raise ValueError(
            f"length: example {int(idx[row])} has length {int(lens[row])} > batch length "
            f"{length}; use a longer batch length"
        )
    return lens


def _grid(idx: np.ndarray, lens: np.ndarray, length: int) -> _Grid:
    """The :class:`_Grid` of examples ``idx`` with padded lengths ``lens: [B]``, ``L = length``."""
    steps = np.arange(length)
    valid = steps[None, :] < lens[:, None]  # [B, L]; all False on padded rows
    rows = np.zeros(len(lens), np.int64)
    rows[: len(idx)] = idx
    return _Grid(idx=idx, rows=rows, steps=steps, valid=valid)


def _gather(dataset: SequenceDataset, grid: _Grid, field: str, task: str = "") -> np.ndarray:
    """A ragged field padded to ``[B, L, ...]`` with one vectorised gather; 0 where invalid."""
    flat, offsets = _packed(dataset, field, task)
    pos = np.where(grid.valid, offsets[grid.rows][:, None] + grid.steps[None, :], 0)
    out = flat[pos]
    mask = grid.valid.reshape(grid.valid.shape + (1,) * (out.ndim - 2))
    return np.where(mask, out, np.zeros((), out.dtype))


def _label_dtype(spec: TaskSpec) -> type[np.generic]:
    """int32 for classification labels, float32 for regression targets."""
    return np.int32 if spec.kind == "classification" else np.float32


def _token_task(
    dataset: SequenceDataset, spec: TaskSpec, grid: _Grid
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[B, L]`` (or ``[B, L, dim]``) and float32 mask ``[B, L]`` of a token task."""
    labels = _gather(dataset, grid, "labels", spec.name).astype(_label_dtype(spec))
    if spec.name in dataset.masks:
        return labels, _gather(dataset, grid, "masks", spec.name).astype(np.float32)
    return labels, grid.valid.astype(np.float32)


def _sequence_task(
    dataset: SequenceDataset, spec: TaskSpec, grid: _Grid
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[B]`` (or ``[B, dim]``) and float32 mask ``[B]`` of a sequence task."""
    n, batch_size = len(grid.idx), len(grid.rows)
    y = np.asarray(dataset.labels[spec.name])
    labels = np.zeros((batch_size,) + y.shape[1:], _label_dtype(spec))
    labels[:n] = y[grid.idx]
    mask = (np.arange(batch_size) < n).astype(np.float32)  # 0 on padded rows
    if spec.name in dataset.masks:
        mask[:n] *= np.asarray(dataset.masks[spec.name], np.float32)[grid.idx]
    return labels, mask


def make_batch(
    dataset: SequenceDataset,
    tasks: Sequence[TaskSpec],
    indices: Sequence[int],
    *,
    length: int,
    batch_size: int,
) -> Batch:
    """Pad the examples at ``indices`` into one batch of ``batch_size`` rows and ``length`` steps.

    Rows beyond ``len(indices)`` are padding (length 0, labels 0, masks 0).

    Returns:
      A :data:`Batch`: ``inputs`` int32 ``[B, L]``, ``lengths`` int32 ``[B]``, ``labels`` and
      ``masks`` keyed by task name (shapes in the module docstring), ``B = batch_size``,
      ``L = length``.
    """
    _check_batch_size(batch_size)
    idx = _batch_indices(indices, batch_size)
    lens = _padded_lengths(dataset, idx, length=length, batch_size=batch_size)
    grid = _grid(idx, lens, length)
    inputs = _gather(dataset, grid, "inputs")
    inputs = inputs.astype(np.int32 if np.issubdtype(inputs.dtype, np.integer) else np.float32)
    labels, masks = {}, {}
    for spec in tasks:
        task_arrays = _token_task if spec.level == "token" else _sequence_task
        labels[spec.name], masks[spec.name] = task_arrays(dataset, spec, grid)
    batch = {"inputs": inputs, "lengths": lens, "labels": labels, "masks": masks}
    if dataset.chars is not None:
        batch["chars"] = _gather(dataset, grid, "chars").astype(np.int32)
    return batch


def _bucket_index(dataset: SequenceDataset, buckets: tuple[int, ...]) -> np.ndarray:
    """For each example, the index of the smallest bucket that fits it, int ``[N]``."""
    return np.searchsorted(np.asarray(buckets), dataset.lengths, side="left")


def steps_per_epoch(dataset: SequenceDataset, *, batch_size: int, buckets: Sequence[int]) -> int:
    """Number of batches in one epoch of :func:`train_batches` (the same for every epoch)."""
    _check_batch_size(batch_size)
    counts = np.bincount(_bucket_index(dataset, bucket_lengths(dataset, buckets)))
    full = int(np.sum(counts // batch_size))
    return full if full else int(np.count_nonzero(counts))


def epoch_plan(
    dataset: SequenceDataset,
    *,
    batch_size: int,
    buckets: Sequence[int],
    seed: int,
    epoch: int,
) -> Plan:
    """The batches of one training epoch as ``(length, indices)`` pairs, without arrays.

    Shuffles with ``np.random.default_rng([seed, epoch])``, groups by bucket, forms full
    batches within each bucket (a bucket's remainder is dropped this epoch), and shuffles the
    batch order. If no bucket has ``batch_size`` examples, each bucket forms one partial batch
    instead (padded by :func:`make_batch`).
    """
    _check_batch_size(batch_size)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed}")
    resolved = bucket_lengths(dataset, buckets)
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(len(dataset))
    which = _bucket_index(dataset, resolved)[perm]
    groups = [perm[which == b] for b in range(len(resolved))]
    plan: Plan = []
    for b, group in enumerate(groups):
        for start in range(0, len(group) - batch_size + 1, batch_size):
            plan.append((resolved[b], group[start : start + batch_size]))
    if not plan:  # tiny data: no bucket fills a batch
        plan = [(resolved[b], g) for b, g in enumerate(groups) if len(g)]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def train_batches(
    dataset: SequenceDataset,
    tasks: Sequence[TaskSpec],
    *,
    batch_size: int,
    buckets: Sequence[int],
    seed: int,
    start_step: int = 0,
) -> Iterator[Batch]:
    """An infinite, deterministic stream of training batches (see :func:`epoch_plan`).

    ``start_step=n`` yields exactly what the stream would yield from its ``n``-th batch on
    (for exact resume), without building the skipped batches. Each batch has ``B =
    batch_size`` rows and ``L`` = its bucket length. Arguments and the dataset are checked
    when this is called, not at the first batch.
    """
    if isinstance(start_step, bool) or int(start_step) != start_step or start_step < 0:
        raise ValueError(f"start_step: must be a non-negative integer, got {start_step}")
    dataset.check(tasks)
    per_epoch = steps_per_epoch(dataset, batch_size=batch_size, buckets=buckets)
    epoch_plan(dataset, batch_size=batch_size, buckets=buckets, seed=seed, epoch=0)  # validate
    tasks = tuple(tasks)

    def stream() -> Iterator[Batch]:
        epoch, offset = divmod(int(start_step), per_epoch)
        while True:
            plan = epoch_plan(dataset, batch_size=batch_size, buckets=buckets, seed=seed,
                              epoch=epoch)
            for length, idx in plan[offset:]:
                yield make_batch(dataset, tasks, idx, length=length, batch_size=batch_size)
            epoch, offset = epoch + 1, 0

    return stream()


def eval_plan(dataset: SequenceDataset, *, batch_size: int, buckets: Sequence[int]) -> Plan:
    """The batches of one evaluation pass as ``(length, indices)`` pairs.

    Buckets in increasing length; within a bucket, examples in dataset order, in chunks of
    ``batch_size`` (the last chunk may be shorter). Every example appears exactly once, so
    this maps a pass's predictions back to dataset indices.
    """
    _check_batch_size(batch_size)
    resolved = bucket_lengths(dataset, buckets)
    which = _bucket_index(dataset, resolved)
    plan: Plan = []
    for b, length in enumerate(resolved):
        group = np.flatnonzero(which == b)
        plan += [(length, group[i : i + batch_size]) for i in range(0, len(group), batch_size)]
    return plan


def eval_batches(
    dataset: SequenceDataset,
    tasks: Sequence[TaskSpec],
    *,
    batch_size: int,
    buckets: Sequence[int],
) -> Iterator[Batch]:
    """One pass over ``dataset`` in the order of :func:`eval_plan`; short batches are padded
    with masked rows (length 0), so every batch has ``batch_size`` rows."""
    dataset.check(tasks)
    plan = eval_plan(dataset, batch_size=batch_size, buckets=buckets)
    tasks = tuple(tasks)
    return (
        make_batch(dataset, tasks, idx, length=length, batch_size=batch_size)
        for length, idx in plan
    )


def pad_time(batch: Batch, tasks: Sequence[TaskSpec], length: int) -> Batch:
    """``batch`` padded in time to ``length`` steps (``>=`` its own), as :func:`make_batch`
    pads: inputs, characters and token-level labels 0, token masks 0; lengths and
    sequence-level labels and masks unchanged."""
    current = int(np.shape(batch["inputs"])[1])
    if length < current:
        raise ValueError(f"length: cannot pad a batch of {current} steps to {length}")
    if length == current:
        return batch

    def pad(x: Any) -> np.ndarray:
        x = np.asarray(x)
        widths = [(0, 0)] * x.ndim
        widths[1] = (0, length - current)
        return np.pad(x, widths)

    token = {t.name for t in tasks if t.level == "token"}
    out = dict(batch)
    out["inputs"] = pad(batch["inputs"])
    if "chars" in batch:
        out["chars"] = pad(batch["chars"])
    for field in ("labels", "masks"):
        out[field] = {k: pad(v) if k in token else v for k, v in batch[field].items()}
    return out


def stack_batches(batches: Sequence[Batch], tasks: Sequence[TaskSpec]) -> Batch:
    """One population batch: every leaf ``[S, B, ...]`` from ``S`` batches of equal ``B``,
    each padded in time to the longest of them (:func:`pad_time`)."""
    if not batches:
        raise ValueError("batches: need at least one batch to stack")
    length = max(int(np.shape(b["inputs"])[1]) for b in batches)
    padded = [pad_time(b, tasks, length) for b in batches]

    def stack(*leaves: Any) -> np.ndarray:
        return np.stack([np.asarray(x) for x in leaves])

    out: Batch = {"inputs": stack(*(b["inputs"] for b in padded))}
    out["lengths"] = stack(*(b["lengths"] for b in padded))
    for field in ("labels", "masks"):
        out[field] = {k: stack(*(b[field][k] for b in padded)) for k in padded[0][field]}
    if "chars" in padded[0]:
        out["chars"] = stack(*(b["chars"] for b in padded))
    return out
