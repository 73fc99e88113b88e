"""Time series from CSV files, cut into fixed-length windows for multi-task training.

Format: one CSV file per split (``"train"`` required; e.g. ``"dev"``, ``"test"``), UTF-8
(a leading byte-order mark is ignored), read with Python's :mod:`csv` (comma-separated,
double-quoted fields). The first row is a header; columns are addressed by header name
(surrounding whitespace in a name is ignored). Every data row must have as many fields as the
header; blank lines are skipped. Rows are time steps, in file order.

- Input columns must hold finite numbers; they become the ``F`` features of each step.
- A regression target column holds finite numbers; a classification target column holds
  labels (any non-empty string, whitespace stripped). A column may be both an input and a
  target (e.g. forecasting a series from its own past).
- With ``group_column``, each run of rows with the same value of that column is a separate
  series (e.g. one sensor or one patient); a group's rows must be contiguous, and windows
  never cross from one group to the next. Without it, the whole file is one series.

Windows. A series of ``T`` rows gives one example per start ``s = 0, stride, 2 * stride, ...``
while ``s + window + horizon <= T``; the example's inputs are rows ``[s, s + window)``. With
``horizon = h`` each target is taken ``h`` steps ahead:

- token targets: one per step, the target at row ``t + h`` for each step ``t`` of the window
  (int32 ``[window]`` class ids, or float32 ``[window, 1]``);
- sequence targets: one per window, the target at row ``s + window - 1 + h`` (the last step
  plus ``h``), stacked over the split into int32 ``[N]`` or float32 ``[N, 1]``.

Statistics are fitted on all rows of the train file (not on windows) and applied to every
split, so dev and test data never influence them: inputs are z-scored per column with the
train mean and standard deviation (a constant column has std 0, replaced by 1), and so are
regression targets with ``normalize_targets``. Classification label vocabularies are built
from the train rows with an ``"<unk>"`` id 0, to which labels unseen in train map.

The windows of a split are read-only views into one array per split, so overlapping windows
(``stride < window``) share memory instead of copying every step ``window / stride`` times.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Literal

import numpy as np

from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.text import utf8_error
from mtlrnn.data.vocab import LabelVocabulary
from mtlrnn.data.vocab import label_vocab
from mtlrnn.tasks import TaskSpec

TRAIN = "train"


@dataclasses.dataclass(frozen=True)
class Target:
    """What one task predicts from the series.

    Attributes:
      column: the CSV column holding the target.
      level: ``"token"`` (one target per step of a window) or ``"sequence"`` (one per window).
      kind: ``"regression"`` (numeric column, ``dim = 1``) or ``"classification"`` (labels).
    """

    column: str
    level: Literal["token", "sequence"] = "token"
    kind: Literal["classification", "regression"] = "regression"

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column.strip():
            raise ValueError(f"Target: column must be a non-empty string, got {self.column!r}")
        if self.level not in ("token", "sequence"):
            raise ValueError(f"Target: level must be 'token' or 'sequence', got {self.level!r}")
        if self.kind not in ("classification", "regression"):
            raise ValueError(
                f"Target: kind must be 'classification' or 'regression', got {self.kind!r}"
            )


@dataclasses.dataclass(frozen=True)
class TimeSeries:
    """Windowed splits of a CSV time series, their tasks and the train-fitted statistics.

    Attributes:
      splits: split name -> its windows; inputs float32 ``[window, F]`` per example, labels
        as described in the module docstring.
      tasks: one :class:`TaskSpec` per target, in the order of ``targets``.
      num_features: ``F``, the number of input columns.
      mean: float64 ``[F]``, the train mean of each input (zeros when not normalising).
      std: float64 ``[F]``, the train standard deviation of each input, 0 replaced by 1 (ones
        when not normalising).
      target_mean: regression task name -> train mean of its target (0 when not normalised).
      target_std: regression task name -> train std of its target (1 when not normalised).
      label_vocabs: classification task name -> its label vocabulary (id 0 = ``"<unk>"``).
      description: one human-readable paragraph: files, windows per split, ``F`` and tasks.
    """

    splits: dict[str, SequenceDataset]
    tasks: tuple[TaskSpec, ...]
    num_features: int
    mean: np.ndarray
    std: np.ndarray
    target_mean: dict[str, float]
    target_std: dict[str, float]
    label_vocabs: dict[str, LabelVocabulary]
    description: str


# ----------------------------------------------------------------------------- reading


def _read_table(path: str, columns: Sequence[str]) -> tuple[dict[str, list[str]], np.ndarray]:
    """The cells of ``columns`` and the physical 1-based line where each data row starts."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            while header is not None and not header:  # blank lines before the header
                header = next(reader, None)
            if header is None:
                raise ValueError(
                    f"{path}: expected a CSV header row naming the columns, got an empty file"
                )
            names = [h.strip() for h in header]
            wanted = list(dict.fromkeys(columns))
            missing = [c for c in wanted if c not in names]
            if missing:
                raise ValueError(
                    f"{path}: column{'s' * (len(missing) > 1)} "
                    f"{', '.join(repr(c) for c in missing)} not in the header; available "
                    f"columns: {names}"
                )
            repeated = [c for c in wanted if names.count(c) > 1]
            if repeated:
                raise ValueError(
                    f"{path}: column {repeated[0]!r} appears {names.count(repeated[0])} times in "
                    "the header; expected unique column names"
                )
            width = len(names)
            rows: list[list[str]] = []
            starts: list[int] = []
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise ValueError(
                        f"{path}:{start}: expected {width} fields (as in the header), "
                        f"got {len(row)}"
                    )
                rows.append(row)
                starts.append(start)
    except UnicodeDecodeError:
        raise utf8_error(path, "CSV text") from None
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: expected well-formed CSV, got: {e}") from e
    table = {c: [r[names.index(c)] for r in rows] for c in wanted}
    return table, np.asarray(starts, dtype=np.int64)


def read_csv_table(path: str | os.PathLike[str], *, columns: Sequence[str]) -> dict[str, list[str]]:
    """Read the named columns of a CSV file with a header row.

    Args:
      path: the CSV file (UTF-8).
      columns: header names of the columns to return.

    Returns:
      Column name -> its ``R`` raw cell strings, in file order (``R`` data rows; blank lines
      are skipped).

    Raises:
      ValueError: an empty file (no header), a column missing from the header or named twice
        in it (naming the file and the available columns), a row whose field count differs
        from the header's (naming the file and line), or a byte that is not UTF-8 (naming the
        file, line and column).
    """
    if isinstance(columns, str):
        raise ValueError(f"columns: must be a sequence of column names, got the string {columns!r}")
    return _read_table(os.fspath(path), columns)[0]


def _parse_numbers(path: str, column: str, cells: list[str], lines: np.ndarray) -> np.ndarray:
    """Cells as float64 ``[R]``; a ValueError names the first bad cell's file:line."""
    try:
        values = np.asarray(cells, dtype=np.float64).reshape(-1)
    except ValueError:
        values = None
    if values is not None:
        bad = np.flatnonzero(~np.isfinite(values))
        if not bad.size:
            return values
        i = int(bad[0])
        raise ValueError(
            f"{path}:{int(lines[i])}: column {column!r}: expected a finite number, got {cells[i]!r}"
        )
    for i, cell in enumerate(cells):  # slow path, only to locate the bad cell
        try:
            float(cell)
        except ValueError:
            raise ValueError(
                f"{path}:{int(lines[i])}: column {column!r}: expected a number, got {cell!r}"
            ) from None
    raise ValueError(f"{path}: column {column!r}: expected numbers, cannot parse the column")


def _parse_labels(path: str, column: str, cells: list[str], lines: np.ndarray) -> list[str]:
    labels = [c.strip() for c in cells]
    for i, label in enumerate(labels):
        if not label:
            raise ValueError(
                f"{path}:{int(lines[i])}: column {column!r}: expected a class label, got an "
                "empty cell"
            )
    return labels


def _series_bounds(
    path: str, column: str | None, cells: list[str] | None, lines: np.ndarray
) -> np.ndarray:
    """``[S + 1]`` row offsets: series ``i`` is rows ``[b[i], b[i + 1])``."""
    n = len(lines)
    if column is None or cells is None or n == 0:
        return np.asarray([0, n], dtype=np.int64)
    values = np.asarray([c.strip() for c in cells])
    firsts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    seen: dict[str, int] = {}
    for r in firsts.tolist():
        key = str(values[r])
        if key in seen:
            raise ValueError(
                f"{path}:{int(lines[r])}: column {column!r}: expected the rows of each group to "
                f"be contiguous, but group {key!r} (first seen on line {int(lines[seen[key]])}) "
                "starts again here"
            )
        seen[key] = r
    return np.concatenate([firsts, [n]]).astype(np.int64)


def _window_starts(bounds: np.ndarray, *, window: int, stride: int, horizon: int) -> np.ndarray:
    """Absolute first rows of every window, int64 ``[N]``, series by series."""
    span = window + horizon
    out = [
        np.arange(lo, hi - span + 1, stride, dtype=np.int64)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
        if hi - lo >= span
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _windows(a: np.ndarray, starts: np.ndarray, window: int) -> list[np.ndarray]:
    """Read-only views ``a[s : s + window]`` for each ``s`` in ``starts`` (no copies)."""
    view = np.lib.stride_tricks.sliding_window_view(a, window, axis=0)
    view = np.moveaxis(view, -1, 1)  # [R - window + 1, window, ...]
    return [view[s] for s in starts.tolist()]


# ----------------------------------------------------------------------------- loading


def _check_int(name: str, value: object, low: int, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: must be an integer {rule}, got {value!r}")
    return int(value)


def _check_names(name: str, values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(f"{name}: must be a sequence of column names, got {values!r}")
    names = list(values)
    if not names:
        raise ValueError(f"{name}: needs at least one column name, got none")
    bad = [v for v in names if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"{name}: column names must be non-empty strings, got {bad[0]!r}")
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise ValueError(f"{name}: column names must be unique; repeated: {dup}")
    return names


def _z(values: np.ndarray, mean: np.ndarray | float, std: np.ndarray | float) -> np.ndarray:
    return ((values - mean) / std).astype(np.float32)


def load_timeseries(
    files: Mapping[str, str | os.PathLike[str]],
    *,
    inputs: Sequence[str],
    targets: Mapping[str, Target],
    window: int,
    stride: int = 0,
    horizon: int = 0,
    group_column: str | None = None,
    normalize: bool = True,
    normalize_targets: bool = True,
) -> TimeSeries:
    """Load CSV splits and cut them into windows (format and semantics: module docstring).

    Args:
      files: split name -> CSV path; ``"train"`` is required and fits all statistics.
      inputs: the ``F`` numeric input columns, in feature order.
      targets: task name -> :class:`Target`; one task per entry, in this order.
      window: steps per example, ``>= 1``.
      stride: steps between consecutive window starts within a series, ``>= 0``; 0 means
        ``window`` (non-overlapping windows).
      horizon: how many steps ahead targets are taken, ``>= 0``.
      group_column: a column whose runs of equal values are separate series, or ``None`` for
        one series per file.
      normalize: z-score inputs with the train mean and std of each column.
      normalize_targets: z-score regression targets with their train mean and std.

    Returns:
      A :class:`TimeSeries` whose split ``d`` has ``N_d`` examples: inputs float32
      ``[window, F]`` each; token labels int32 ``[window]`` or float32 ``[window, 1]`` per
      example; sequence labels int32 ``[N_d]`` or float32 ``[N_d, 1]``. Every split is checked
      with :meth:`SequenceDataset.check`.

    Raises:
      ValueError: a bad argument (naming it and what is allowed), an unreadable or malformed
        file, a missing column, a bad cell (naming ``file:line`` and the column), a group
        whose rows are not contiguous, or a split with no window (naming its file, its row
        count and ``window + horizon``).
    """
    if not isinstance(files, Mapping) or TRAIN not in files:
        got = sorted(files) if isinstance(files, Mapping) else files
        raise ValueError(
            f"files: must map split names to CSV paths and include {TRAIN!r} (statistics and "
            f"label vocabularies are fitted on it), got {got!r}"
        )
    window = _check_int("window", window, 1, ">= 1")
    stride = _check_int("stride", stride, 0, ">= 0 (0 means stride = window)") or window
    horizon = _check_int("horizon", horizon, 0, ">= 0")
    input_names = _check_names("inputs", inputs)
    if not isinstance(targets, Mapping) or not targets:
        raise ValueError(
            f"targets: needs at least one task, as a mapping task name -> Target, got {targets!r}"
        )
    for name, target in targets.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"targets: task names must be non-empty strings, got {name!r}")
        if not isinstance(target, Target):
            raise ValueError(
                f"targets[{name!r}]: must be a Target(column, level, kind), got {target!r}"
            )
    if group_column is not None and (not isinstance(group_column, str) or not group_column):
        raise ValueError(f"group_column: must be a column name or None, got {group_column!r}")

    columns = list(input_names) + [t.column for t in targets.values()]
    if group_column is not None:
        columns.append(group_column)

    paths = {split: os.fspath(p) for split, p in files.items()}
    order = [TRAIN] + [s for s in paths if s != TRAIN]
    raw: dict[str, tuple[dict[str, list[str]], np.ndarray]] = {}
    for split in order:
        table, lines = _read_table(paths[split], columns)
        if not len(lines):
            raise ValueError(f"{paths[split]}: expected data rows after the header, got none")
        raw[split] = (table, lines)

    def numbers(split: str, column: str, cache: dict[str, np.ndarray]) -> np.ndarray:
        if column not in cache:
            table, lines = raw[split]
            cache[column] = _parse_numbers(paths[split], column, table[column], lines)
        return cache[column]

    # Parse every split, then fit statistics on train alone.
    features: dict[str, np.ndarray] = {}
    targets_raw: dict[str, dict[str, np.ndarray | list[str]]] = {}
    for split in order:
        cache: dict[str, np.ndarray] = {}
        table, lines = raw[split]
        features[split] = np.stack([numbers(split, c, cache) for c in input_names], axis=1)
        targets_raw[split] = {
            name: numbers(split, t.column, cache)
            if t.kind == "regression"
            else _parse_labels(paths[split], t.column, table[t.column], lines)
            for name, t in targets.items()
        }

    num_features = len(input_names)
    if normalize:
        mean = features[TRAIN].mean(axis=0)
        std = features[TRAIN].std(axis=0)
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.zeros(num_features), np.ones(num_features)
    target_mean: dict[str, float] = {}
    target_std: dict[str, float] = {}
    vocabs: dict[str, LabelVocabulary] = {}
    for name, t in targets.items():
        train_y = targets_raw[TRAIN][name]
        if t.kind == "classification":
            vocabs[name] = label_vocab(train_y, allow_unknown=True)
        elif normalize_targets:
            s = float(np.std(train_y))
            target_mean[name] = float(np.mean(train_y))
            target_std[name] = s if s > 0 else 1.0
        else:
            target_mean[name], target_std[name] = 0.0, 1.0
    tasks = tuple(
        TaskSpec(
            name=name,
            level=t.level,
            kind=t.kind,
            num_classes=len(vocabs[name]) if t.kind == "classification" else 0,
            dim=1,
        )
        for name, t in targets.items()
    )

    splits: dict[str, SequenceDataset] = {}
    for split in paths:  # in the caller's order
        table, lines = raw[split]
        cells = None if group_column is None else table[group_column]
        bounds = _series_bounds(paths[split], group_column, cells, lines)
        starts = _window_starts(bounds, window=window, stride=stride, horizon=horizon)
        if not len(starts):
            longest = int(np.max(np.diff(bounds)))
            series = "" if group_column is None else f" (longest group: {longest} rows)"
            raise ValueError(
                f"{paths[split]}: split {split!r} gives no window: it has {len(lines)} rows"
                f"{series}, fewer than window + horizon = {window + horizon} in every series"
            )
        x = _z(features[split], mean, std)
        labels: dict[str, list[np.ndarray] | np.ndarray] = {}
        for spec in tasks:
            name = spec.name
            if spec.kind == "classification":
                y = vocabs[name].encode(targets_raw[split][name])  # int32 [R]
            else:
                y = _z(targets_raw[split][name], target_mean[name], target_std[name])[:, None]
            if spec.level == "token":
                labels[name] = _windows(y[horizon:], starts, window)
            else:
                labels[name] = np.ascontiguousarray(y[starts + window - 1 + horizon])
        dataset = SequenceDataset(inputs=_windows(x, starts, window), labels=labels)
        dataset.check(tasks)
        splits[split] = dataset

    return TimeSeries(
        splits=splits,
        tasks=tasks,
        num_features=num_features,
        mean=np.asarray(mean, np.float64),
        std=np.asarray(std, np.float64),
        target_mean=target_mean,
        target_std=target_std,
        label_vocabs=vocabs,
        description=_describe(
            paths, splits, tasks, targets, input_names, window, stride, horizon, group_column
        ),
    )


def _describe(
    paths: Mapping[str, str],
    splits: Mapping[str, SequenceDataset],
    tasks: Sequence[TaskSpec],
    targets: Mapping[str, Target],
    inputs: Sequence[str],
    window: int,
    stride: int,
    horizon: int,
    group_column: str | None,
) -> str:
    files = ", ".join(f"{s} {paths[s]} ({len(d)} windows)" for s, d in splits.items())
    series = (
        "one series per file" if group_column is None else f"series grouped by {group_column!r}"
    )
    parts = []
    for spec in tasks:
        what = f"{spec.num_classes} classes" if spec.kind == "classification" else "dim 1"
        parts.append(
            f"{spec.name} ({spec.level} {spec.kind} of column {targets[spec.name].column!r}, "
            f"{what})"
        )
    return (
        f"CSV time series: {files}; F = {len(inputs)} input features ({', '.join(inputs)}), "
        f"windows of {window} steps with stride {stride} and horizon {horizon}, {series}; "
        f"{len(tasks)} task{'s' * (len(tasks) != 1)}: {', '.join(parts)}."
    )
