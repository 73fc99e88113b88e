"""Tests for mtlrnn.data.timeseries: CSV time series cut into windows.

Expected values are hand computations from the tiny CSVs written in each test; the row
index ``i`` of a data row is its time step (0-based).
"""

import numpy as np
import pytest

from mtlrnn.data.batching import make_batch
from mtlrnn.data.timeseries import Target
from mtlrnn.data.timeseries import TimeSeries
from mtlrnn.data.timeseries import load_timeseries
from mtlrnn.data.timeseries import read_csv_table


def write(tmp_path, name, header, rows):
    p = tmp_path / name
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def ramp(tmp_path, name="train.csv", n=10):
    """Row i: x = i, y = 10 i, lab = "abc"[i % 3]."""
    return write(tmp_path, name, ["x", "y", "lab"], [(i, 10 * i, "abc"[i % 3]) for i in range(n)])


ALL_TARGETS = {
    "y_tok": Target("y", level="token", kind="regression"),
    "y_seq": Target("y", level="sequence", kind="regression"),
    "lab_tok": Target("lab", level="token", kind="classification"),
    "lab_seq": Target("lab", level="sequence", kind="classification"),
}


def load(files, **kw):
    args = dict(inputs=["x"], targets=ALL_TARGETS, window=3, normalize=False)
    args.update(normalize_targets=False)
    args.update(kw)
    return load_timeseries(files, **args)


def test_window_stride_horizon_exact_values(tmp_path):
    # T = 10, window 3, horizon 1: starts 0, 2, 4, 6 (6 + 3 + 1 = 10 <= 10; 8 + 4 > 10).
    ts = load({"train": ramp(tmp_path)}, stride=2, horizon=1)
    assert isinstance(ts, TimeSeries)
    ds = ts.splits["train"]
    assert len(ds) == 4
    np.testing.assert_array_equal(
        np.stack(ds.inputs)[:, :, 0], [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]]
    )
    assert all(x.dtype == np.float32 and x.shape == (3, 1) for x in ds.inputs)
    # Token regression: y at rows t + 1 for t in the window.
    tok = np.stack(ds.labels["y_tok"])
    assert tok.shape == (4, 3, 1) and tok.dtype == np.float32
    np.testing.assert_array_equal(
        tok[:, :, 0], [[10, 20, 30], [30, 40, 50], [50, 60, 70], [70, 80, 90]]
    )
    # Sequence regression: y at row s + 3 - 1 + 1 = s + 3.
    seq = ds.labels["y_seq"]
    assert seq.shape == (4, 1) and seq.dtype == np.float32
    np.testing.assert_array_equal(seq[:, 0], [30, 50, 70, 90])
    # Classification: vocab <unk>=0, a=1, b=2, c=3; lab(i) = "abc"[i % 3].
    assert ts.label_vocabs["lab_tok"].tokens == ("<unk>", "a", "b", "c")
    lab_tok = np.stack(ds.labels["lab_tok"])
    assert lab_tok.dtype == np.int32
    # rows 1-3: b c a; 3-5: a b c; 5-7: c a b; 7-9: b c a
    np.testing.assert_array_equal(lab_tok, [[2, 3, 1], [1, 2, 3], [3, 1, 2], [2, 3, 1]])
    # rows 3, 5, 7, 9: a c b a
    np.testing.assert_array_equal(ds.labels["lab_seq"], [1, 3, 2, 1])
    assert ds.labels["lab_seq"].dtype == np.int32


def test_tasks_follow_targets(tmp_path):
    ts = load({"train": ramp(tmp_path)})
    assert [t.name for t in ts.tasks] == list(ALL_TARGETS)
    by = {t.name: t for t in ts.tasks}
    assert (by["y_tok"].level, by["y_tok"].kind, by["y_tok"].dim) == ("token", "regression", 1)
    assert (by["y_seq"].level, by["y_seq"].kind) == ("sequence", "regression")
    assert (by["lab_tok"].level, by["lab_tok"].kind) == ("token", "classification")
    assert by["lab_tok"].num_classes == by["lab_seq"].num_classes == 4  # <unk>, a, b, c
    assert ts.num_features == 1
    assert set(ts.target_mean) == set(ts.target_std) == {"y_tok", "y_seq"}
    assert set(ts.label_vocabs) == {"lab_tok", "lab_seq"}
    assert "train.csv" in ts.description and "windows" in ts.description


def test_default_stride_is_window_and_target_column_may_be_input(tmp_path):
    # stride 0 -> 3: starts 0, 3, 6 (9 + 3 > 10). Inputs x and y (y is also the target).
    ts = load({"train": ramp(tmp_path)}, inputs=["x", "y"], stride=0)
    ds = ts.splits["train"]
    assert ts.num_features == 2
    assert [x.shape for x in ds.inputs] == [(3, 2)] * 3
    np.testing.assert_array_equal(ds.inputs[2], [[6, 60], [7, 70], [8, 80]])
    np.testing.assert_array_equal(ds.labels["y_seq"][:, 0], [20, 50, 80])  # rows s + 2


def test_window_one_and_long_horizon(tmp_path):
    # window 1, stride 1, horizon 4 over T = 10: starts 0..5; targets at rows s + 4.
    ts = load({"train": ramp(tmp_path)}, window=1, stride=1, horizon=4)
    ds = ts.splits["train"]
    assert len(ds) == 6
    np.testing.assert_array_equal(np.concatenate(ds.inputs)[:, 0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ds.labels["y_seq"][:, 0], [40, 50, 60, 70, 80, 90])
    np.testing.assert_array_equal(
        np.concatenate(ds.labels["y_tok"])[:, 0], ds.labels["y_seq"][:, 0]
    )


def test_normalisation_uses_train_rows_only(tmp_path):
    train = write(tmp_path, "train.csv", ["x", "y"], [(1, 5), (2, 5), (3, 7), (4, 7)])
    dev_a = write(tmp_path, "dev_a.csv", ["x", "y"], [(10, 0), (20, 1)])
    dev_b = write(tmp_path, "dev_b.csv", ["x", "y"], [(-1e6, 1e6), (3e6, -2)])
    kw = dict(inputs=["x"], targets={"y": Target("y")}, window=1, stride=1)
    a = load_timeseries({"train": train, "dev": dev_a}, **kw)
    b = load_timeseries({"train": train, "dev": dev_b}, **kw)
    # Train x = 1..4: mean 2.5, population std sqrt(1.25); y = 5 5 7 7: mean 6, std 1.
    for ts in (a, b):
        np.testing.assert_allclose(ts.mean, [2.5])
        np.testing.assert_allclose(ts.std, [np.sqrt(1.25)])
        assert ts.target_mean == {"y": 6.0} and ts.target_std == {"y": 1.0}
    x = np.concatenate(a.splits["train"].inputs)[:, 0]
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(
        np.concatenate(a.splits["train"].inputs), np.concatenate(b.splits["train"].inputs)
    )
    dev_x = np.concatenate(a.splits["dev"].inputs)[:, 0]
    np.testing.assert_allclose(dev_x, (np.array([10, 20]) - 2.5) / np.sqrt(1.25), rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(a.splits["dev"].labels["y"])[:, 0], [-6, -5])


def test_constant_columns_get_std_one_and_normalize_flags(tmp_path):
    train = write(tmp_path, "train.csv", ["x", "y"], [(3, 2), (3, 2), (3, 2)])
    kw = dict(inputs=["x"], targets={"y": Target("y", level="sequence")}, window=1)
    ts = load_timeseries({"train": train}, **kw)
    assert ts.std.tolist() == [1.0] and ts.target_std == {"y": 1.0}
    np.testing.assert_array_equal(np.concatenate(ts.splits["train"].inputs), np.zeros((3, 1)))
    raw = load_timeseries({"train": train}, normalize=False, normalize_targets=False, **kw)
    assert raw.mean.tolist() == [0.0] and raw.std.tolist() == [1.0]
    assert raw.target_mean == {"y": 0.0} and raw.target_std == {"y": 1.0}
    np.testing.assert_array_equal(raw.splits["train"].labels["y"], [[2], [2], [2]])


def test_group_column_windows_never_cross_groups(tmp_path):
    # Groups A (rows 0-2), B (rows 3-6), C (row 7, too short for a window of 2).
    groups = "AAABBBBC"
    rows = [(g, i, i % 2) for i, g in enumerate(groups)]
    train = write(tmp_path, "train.csv", ["g", "x", "y"], rows)
    ts = load_timeseries(
        {"train": train},
        inputs=["x"],
        targets={"y": Target("y")},
        window=2,
        stride=1,
        group_column="g",
        normalize=False,
    )
    got = [x[:, 0].tolist() for x in ts.splits["train"].inputs]
    assert got == [[0, 1], [1, 2], [3, 4], [4, 5], [5, 6]]  # never [2, 3] or [6, 7]
    for w in got:
        assert len({groups[int(i)] for i in w}) == 1


def test_group_rows_must_be_contiguous(tmp_path):
    train = write(tmp_path, "train.csv", ["g", "x"], [("A", 0), ("B", 1), ("A", 2)])
    with pytest.raises(ValueError, match=r"train\.csv:4: column 'g': .*contiguous.*group 'A'"):
        load_timeseries(
            {"train": train}, inputs=["x"], targets={"x": Target("x")}, window=1, group_column="g"
        )


def test_unseen_dev_label_maps_to_unk(tmp_path):
    train = write(tmp_path, "train.csv", ["x", "lab"], [(0, "up"), (1, "down"), (2, "up")])
    dev = write(tmp_path, "dev.csv", ["x", "lab"], [(0, "up"), (1, "sideways"), (2, "down")])
    ts = load_timeseries(
        {"train": train, "dev": dev},
        inputs=["x"],
        targets={"dir": Target("lab", kind="classification")},
        window=3,
    )
    vocab = ts.label_vocabs["dir"]
    assert vocab.tokens == ("<unk>", "down", "up")
    assert ts.tasks[0].num_classes == 3
    np.testing.assert_array_equal(ts.splits["dev"].labels["dir"][0], [2, 0, 1])
    np.testing.assert_array_equal(ts.splits["train"].labels["dir"][0], [2, 1, 2])


def test_datasets_batch_with_make_batch(tmp_path):
    ts = load({"train": ramp(tmp_path, n=20)}, inputs=["x", "y"], stride=2)
    ds = ts.splits["train"]  # starts 0, 2, ..., 16: 9 windows
    batch = make_batch(ds, ts.tasks, [0, 1, 2], length=4, batch_size=4)
    assert batch["inputs"].shape == (4, 4, 2) and batch["inputs"].dtype == np.float32
    assert batch["lengths"].tolist() == [3, 3, 3, 0]
    np.testing.assert_array_equal(batch["inputs"][1, :3, 0], [2, 3, 4])
    assert batch["labels"]["y_tok"].shape == (4, 4, 1)
    assert batch["labels"]["lab_tok"].shape == (4, 4)
    assert batch["labels"]["y_seq"].shape == (4, 1)
    assert batch["labels"]["lab_seq"].shape == (4,)
    np.testing.assert_array_equal(batch["masks"]["y_tok"][0], [1, 1, 1, 0])
    # The overlapping windows are read-only views, so subsetting works and nothing is mutable.
    assert not ds.inputs[0].flags.writeable
    assert len(ds.subset([8, 0])) == 2


def test_read_csv_table_and_line_numbers(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('\ufeffa, b ,c\n1,"two\nlines",3\n\n4,5,abc\n', encoding="utf-8")
    assert read_csv_table(p, columns=["c", "b"]) == {"c": ["3", "abc"], "b": ["two\nlines", "5"]}
    # Physical lines: header 1, first row 2-3, blank 4, second row 5.
    with pytest.raises(ValueError, match=r"t\.csv:5: column 'c': expected a number, got 'abc'"):
        load_timeseries({"train": p}, inputs=["a", "c"], targets={"a": Target("a")}, window=1)


def test_missing_column_names_file_and_column(tmp_path):
    train = ramp(tmp_path)
    with pytest.raises(ValueError, match=r"train\.csv: column 'z' not in the header.*'lab'"):
        load({"train": train}, inputs=["x", "z"])
    dev = write(tmp_path, "dev.csv", ["x", "y"], [(0, 0)] * 5)
    with pytest.raises(ValueError, match=r"dev\.csv: column 'lab' not in the header"):
        load({"train": train, "dev": dev})


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("abc", "expected a number, got 'abc'"),
        ("", "expected a number, got ''"),
        ("nan", "expected a finite number, got 'nan'"),
    ],
)
def test_bad_number_names_file_line_and_column(tmp_path, cell, expected):
    train = write(tmp_path, "train.csv", ["x", "y"], [(0, 1), (1, 2), (cell, 3)])
    with pytest.raises(ValueError, match=rf"train\.csv:4: column 'x': {expected}"):
        load_timeseries({"train": train}, inputs=["x"], targets={"y": Target("y")}, window=1)
    # Regression targets are parsed the same way.
    train = write(tmp_path, "train.csv", ["x", "y"], [(0, 1), (1, cell)])
    with pytest.raises(ValueError, match=rf"train\.csv:3: column 'y': {expected}"):
        load_timeseries({"train": train}, inputs=["x"], targets={"y": Target("y")}, window=1)


def test_zero_windows_names_split_file_and_lengths(tmp_path):
    train = ramp(tmp_path)
    dev = ramp(tmp_path, "dev.csv", n=3)
    with pytest.raises(ValueError, match=r"dev\.csv: split 'dev' gives no window.*3 rows.*= 4"):
        load({"train": train, "dev": dev}, window=3, horizon=1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(window=0), r"window: must be an integer >= 1, got 0"),
        (dict(window=True), r"window: must be an integer >= 1"),
        (dict(window=2.5), r"window: must be an integer >= 1"),
        (dict(stride=-1), r"stride: must be an integer >= 0"),
        (dict(horizon=-2), r"horizon: must be an integer >= 0"),
        (dict(inputs=[]), r"inputs: needs at least one column"),
        (dict(inputs="x"), r"inputs: must be a sequence of column names"),
        (dict(inputs=["x", "x"]), r"inputs: column names must be unique"),
        (dict(targets={}), r"targets: needs at least one task"),
        (dict(targets={"t": "y"}), r"targets\['t'\]: must be a Target"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        load({"train": ramp(tmp_path)}, **kw)


def test_bad_files_and_targets(tmp_path):
    with pytest.raises(ValueError, match=r"files: .*include 'train'"):
        load({"dev": ramp(tmp_path)})
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.csv: expected a CSV header"):
        load({"train": empty})
    header_only = write(tmp_path, "header.csv", ["x", "y", "lab"], [])
    with pytest.raises(ValueError, match=r"header\.csv: expected data rows"):
        load({"train": header_only})
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x,y,lab\n1,2,a\n3,4\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ragged\.csv:3: expected 3 fields.*got 2"):
        load({"train": ragged})
    with pytest.raises(ValueError, match=r"Target: kind must be"):
        Target("y", kind="ordinal")
    with pytest.raises(ValueError, match=r"Target: level must be"):
        Target("y", level="step")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_non_utf8_byte_names_file_line_and_column(tmp_path, newline):
    # A Latin-1 "é" (0xE9, not UTF-8) in a label on line 702 (past the first 8 KiB read).
    rows = ["x,y,lab"] + [f"{i},{i},a" for i in range(700)] + ["1,2,caf\udce9"]
    p = tmp_path / "latin1.csv"
    p.write_bytes((newline.join(rows) + newline).encode("utf-8", errors="surrogateescape"))
    for read in (
        lambda: read_csv_table(p, columns=["lab"]),
        lambda: load({"train": p}),
    ):
        with pytest.raises(ValueError) as e:
            read()
        msg = str(e.value)
        assert "latin1.csv:702:" in msg and "line 702, column 8" in msg
        assert "expected UTF-8" in msg and "0xe9" in msg
