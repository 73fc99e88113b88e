"""Tests of length-bucketed batching."""

import itertools

import numpy as np
import pytest

from mtlrnn.data import SequenceDataset
from mtlrnn.data import bucket_lengths
from mtlrnn.data import epoch_plan
from mtlrnn.data import eval_batches
from mtlrnn.data import eval_plan
from mtlrnn.data import make_batch
from mtlrnn.data import steps_per_epoch
from mtlrnn.data import train_batches
from mtlrnn.tasks import TaskSpec

TASKS = (
    TaskSpec("tag", "token", "classification", num_classes=3),
    TaskSpec("vec", "token", "regression", dim=2),
    TaskSpec("cls", "sequence", "classification", num_classes=4),
    TaskSpec("val", "sequence", "regression", dim=1),
)


def toy_dataset(n: int = 37, seed: int = 0, max_len: int = 20) -> SequenceDataset:
    """Examples whose values encode (example, step), so a batch can be checked exactly."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    inputs = [(1 + 100 * i + np.arange(n_i)).astype(np.int32) for i, n_i in enumerate(lengths)]
    tag = [((i + np.arange(n_i)) % 3).astype(np.int32) for i, n_i in enumerate(lengths)]
    vec = [np.stack([np.full(n_i, i), np.arange(n_i)], 1).astype(np.float32) + 0.5
           for i, n_i in enumerate(lengths)]
    tag_mask = [(np.arange(n_i) % 2).astype(np.float32) for n_i in lengths]  # odd steps only
    return SequenceDataset(
        inputs=inputs,
        labels={"tag": tag, "vec": vec, "cls": (np.arange(n) % 4).astype(np.int32),
                "val": np.arange(n, dtype=np.float32)[:, None] + 0.25},
        masks={"tag": tag_mask, "cls": (np.arange(n) % 3 > 0).astype(np.float32)},
    )


# --- buckets -----------------------------------------------------------------------------------


def test_bucket_resolution():
    data = toy_dataset()
    longest = int(data.lengths.max())
    assert bucket_lengths(data, [32, 8, 16, 8]) == (8, 16, 32)
    assert bucket_lengths(data, []) == (-(-longest // 8) * 8,)
    assert bucket_lengths(data, [longest]) == (longest,)


def test_too_long_example_names_index_and_length():
    data = toy_dataset()
    i = int(np.argmax(data.lengths))
    with pytest.raises(ValueError, match=rf"example {i} has length {data.lengths[i]} .*add a "
                                         rf"bucket >= {data.lengths[i]}"):
        bucket_lengths(data, [4, 8])
    with pytest.raises(ValueError, match="^buckets: must be positive"):
        bucket_lengths(data, [0, 32])


# --- make_batch --------------------------------------------------------------------------------


def test_make_batch_layout_and_padding():
    data = toy_dataset()
    idx = [3, 0, 7]
    b = make_batch(data, TASKS, idx, length=24, batch_size=5)
    assert b["inputs"].shape == (5, 24) and b["inputs"].dtype == np.int32
    assert b["lengths"].dtype == np.int32
    np.testing.assert_array_equal(b["lengths"], list(data.lengths[idx]) + [0, 0])
    assert b["labels"]["tag"].shape == (5, 24) and b["labels"]["tag"].dtype == np.int32
    assert b["labels"]["vec"].shape == (5, 24, 2) and b["labels"]["vec"].dtype == np.float32
    assert b["labels"]["cls"].shape == (5,) and b["labels"]["cls"].dtype == np.int32
    assert b["labels"]["val"].shape == (5, 1) and b["labels"]["val"].dtype == np.float32
    for name in ("tag", "vec"):
        assert b["masks"][name].shape == (5, 24) and b["masks"][name].dtype == np.float32
    for name in ("cls", "val"):
        assert b["masks"][name].shape == (5,) and b["masks"][name].dtype == np.float32
    for row, i in enumerate(idx):
        n = data.lengths[i]
        np.testing.assert_array_equal(b["inputs"][row, :n], data.inputs[i])
        np.testing.assert_array_equal(b["labels"]["tag"][row, :n], data.labels["tag"][i])
        np.testing.assert_array_equal(b["labels"]["vec"][row, :n], data.labels["vec"][i])
        np.testing.assert_array_equal(b["masks"]["tag"][row, :n], data.masks["tag"][i])
        np.testing.assert_array_equal(b["masks"]["vec"][row, :n], 1.0)  # no mask: labelled
        assert b["labels"]["cls"][row] == data.labels["cls"][i]
        assert b["masks"]["cls"][row] == data.masks["cls"][i]
        assert b["masks"]["val"][row] == 1.0
    # Padded steps and padded rows: inputs, labels and masks 0.
    pad = np.arange(24)[None, :] >= b["lengths"][:, None]
    assert np.all(b["inputs"][pad] == 0)
    for name in ("tag", "vec"):
        assert np.all(b["labels"][name][pad] == 0) and np.all(b["masks"][name][pad] == 0)
    for name in ("cls", "val"):
        assert np.all(b["labels"][name][3:] == 0) and np.all(b["masks"][name][3:] == 0)


def test_make_batch_rejects_bad_requests():
    data = toy_dataset()
    with pytest.raises(ValueError, match="^indices: at most batch_size=2"):
        make_batch(data, TASKS, [0, 1, 2], length=32, batch_size=2)
    i = int(np.argmax(data.lengths))
    with pytest.raises(ValueError, match=f"^length: example {i} has length"):
        make_batch(data, TASKS, [i], length=int(data.lengths[i]) - 1, batch_size=2)
    with pytest.raises(ValueError, match="^batch_size: must be a positive integer"):
        make_batch(data, TASKS, [0], length=32, batch_size=0)


# --- eval --------------------------------------------------------------------------------------


def test_eval_covers_every_example_once_and_pads_with_masked_rows():
    data = toy_dataset()
    buckets = (8, 16, 24)
    plan = eval_plan(data, batch_size=4, buckets=buckets)
    seen = np.concatenate([idx for _, idx in plan])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(data)))  # each exactly once
    batches = list(eval_batches(data, TASKS, batch_size=4, buckets=buckets))
    assert len(batches) == len(plan)
    padded_rows = 0
    for (length, idx), b in zip(plan, batches, strict=True):
        assert length in buckets and b["inputs"].shape == (4, length)
        assert np.all(data.lengths[idx] <= length)
        # Rows in plan order: the input encodes the example index (1 + 100 * i).
        np.testing.assert_array_equal(b["inputs"][: len(idx), 0], 1 + 100 * idx)
        pad = slice(len(idx), None)
        padded_rows += 4 - len(idx)
        assert np.all(b["lengths"][pad] == 0)
        for name in data.labels:
            assert np.all(b["masks"][name][pad] == 0)
    assert padded_rows == 4 * len(plan) - len(data)
    assert padded_rows > 0


# --- train stream ------------------------------------------------------------------------------


def _same_batch(a, b) -> bool:
    return all(
        np.array_equal(a[k], b[k]) for k in ("inputs", "lengths")
    ) and all(
        np.array_equal(a[group][t], b[group][t]) for group in ("labels", "masks") for t in a[group]
    )


def test_train_stream_is_deterministic_and_each_batch_has_a_bucket_length():
    data = toy_dataset(n=60)
    buckets = (8, 16, 24)
    kw = dict(batch_size=4, buckets=buckets, seed=3)
    first = list(itertools.islice(train_batches(data, TASKS, **kw), 40))
    again = list(itertools.islice(train_batches(data, TASKS, **kw), 40))
    other = list(itertools.islice(train_batches(data, TASKS, **{**kw, "seed": 4}), 40))
    assert all(_same_batch(a, b) for a, b in zip(first, again, strict=True))
    assert not all(_same_batch(a, b) for a, b in zip(first, other, strict=True))
    for b in first:
        length = b["inputs"].shape[1]
        assert length in buckets and b["inputs"].shape[0] == 4
        assert b["labels"]["tag"].shape == (4, length)
        # Full batches, each example in the smallest bucket that fits it.
        assert np.all(b["lengths"] > 0)
        smallest = np.asarray(buckets)[np.searchsorted(buckets, b["lengths"])]
        assert np.all(smallest == length)
        pad = np.arange(length)[None, :] >= b["lengths"][:, None]
        assert np.all(b["masks"]["tag"][pad] == 0) and np.all(b["masks"]["vec"][pad] == 0)


def test_epoch_drops_only_bucket_remainders_and_reshuffles():
    data = toy_dataset(n=60)
    buckets = (8, 16, 24)
    counts = np.bincount(np.searchsorted(buckets, data.lengths), minlength=3)
    per_epoch = steps_per_epoch(data, batch_size=4, buckets=buckets)
    assert per_epoch == int(np.sum(counts // 4))
    e0 = epoch_plan(data, batch_size=4, buckets=buckets, seed=0, epoch=0)
    e1 = epoch_plan(data, batch_size=4, buckets=buckets, seed=0, epoch=1)
    assert len(e0) == len(e1) == per_epoch
    for plan in (e0, e1):
        seen = np.concatenate([idx for _, idx in plan])
        assert len(np.unique(seen)) == len(seen) == len(data) - int(np.sum(counts % 4))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(e0, e1, strict=True))


@pytest.mark.parametrize("start", [0, 5, 14, 31])
def test_start_step_equals_skipping_batches(start):
    data = toy_dataset(n=60)
    kw = dict(batch_size=4, buckets=(8, 16, 24), seed=1)
    assert steps_per_epoch(data, batch_size=4, buckets=(8, 16, 24)) < 31  # crosses epochs
    full = list(itertools.islice(train_batches(data, TASKS, **kw), start + 6))
    resumed = list(itertools.islice(train_batches(data, TASKS, start_step=start, **kw), 6))
    assert all(_same_batch(a, b) for a, b in zip(full[start:], resumed, strict=True))


def test_tiny_data_pads_partial_batches():
    data = toy_dataset(n=5)
    kw = dict(batch_size=8, buckets=(8, 16, 24), seed=0)
    nonempty = len(np.unique(np.searchsorted((8, 16, 24), data.lengths)))
    assert steps_per_epoch(data, batch_size=8, buckets=(8, 16, 24)) == nonempty
    batches = list(itertools.islice(train_batches(data, TASKS, **kw), nonempty))
    assert sum(int(np.sum(b["lengths"] > 0)) for b in batches) == len(data)  # whole epoch
    for b in batches:
        real = b["lengths"] > 0
        assert b["inputs"].shape[0] == 8 and np.all(b["masks"]["cls"][~real] == 0)


def test_train_batches_checks_arguments_eagerly():
    data = toy_dataset()
    with pytest.raises(ValueError, match="^start_step: "):
        train_batches(data, TASKS, batch_size=4, buckets=(), seed=0, start_step=-1)
    with pytest.raises(ValueError, match="^seed: "):
        train_batches(data, TASKS, batch_size=4, buckets=(), seed=-2)
    with pytest.raises(ValueError, match="^buckets: example"):
        train_batches(data, TASKS, batch_size=4, buckets=(4,), seed=0)
    bad = SequenceDataset(inputs=data.inputs, labels={**data.labels, "cls": data.labels["cls"] + 4})
    with pytest.raises(ValueError, match=r"^task 'cls': labels must be class ids in \[0, 4\)"):
        train_batches(bad, TASKS, batch_size=4, buckets=(), seed=0)


def test_dataset_check_names_task_and_example():
    data = toy_dataset()
    labels = dict(data.labels)
    labels["tag"] = list(labels["tag"])
    labels["tag"][5] = labels["tag"][5][:-1]
    with pytest.raises(ValueError, match=r"^task 'tag': labels\[5\] must have shape"):
        SequenceDataset(inputs=data.inputs, labels=labels).check(TASKS)
    with pytest.raises(ValueError, match=r"^inputs\[\d+\]: token ids must be in \[1, 10\)"):
        data.check(TASKS, vocab_size=10)


def test_feature_inputs_are_padded_with_their_trailing_shape():
    feats = [np.full((n, 3), i + 1.0, np.float32) for i, n in enumerate([2, 5])]
    data = SequenceDataset(inputs=feats, labels={"val": np.zeros((2, 1), np.float32)})
    b = make_batch(data, TASKS[3:], [1, 0], length=8, batch_size=3)
    assert b["inputs"].shape == (3, 8, 3) and b["inputs"].dtype == np.float32
    np.testing.assert_array_equal(b["inputs"][0, :5], 2.0)
    np.testing.assert_array_equal(b["inputs"][0, 5:], 0.0)
    np.testing.assert_array_equal(b["inputs"][1, :2], 1.0)
    np.testing.assert_array_equal(b["inputs"][1, 2:], 0.0)
