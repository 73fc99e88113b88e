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
from typing import NamedTuple

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


class _Windowing(NamedTuple):
    """How a series is cut: ``window`` steps, starts ``stride`` apart, targets ``horizon``
    steps ahead (all checked, ``stride >= 1``)."""

    window: int
    stride: int
    horizon: int


class _Table(NamedTuple):
    """One split's file as read, before parsing (``R`` data rows)."""

    split: str
    path: str
    cells: dict[str, list[str]]  # column -> its R raw cells
    lines: np.ndarray  # int64 [R], the 1-based line where each row starts


class _Series(NamedTuple):
    """One split's rows parsed (``R`` rows, ``F`` inputs), not yet normalised or windowed."""

    table: _Table
    features: np.ndarray  # float64 [R, F]
    targets: dict[str, np.ndarray | list[str]]  # task -> float64 [R] values or R labels


class _Stats(NamedTuple):
    """What is fitted on the train split (the fields of the same name in :class:`TimeSeries`)."""

    mean: np.ndarray  # float64 [F]
    std: np.ndarray  # float64 [F], 0 replaced by 1
    target_mean: dict[str, float]  # regression task -> mean of its target
    target_std: dict[str, float]  # regression task -> std of its target
    label_vocabs: dict[str, LabelVocabulary]  # classification task -> its vocabulary


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


def _check_files(files: object) -> None:
    """A ValueError unless ``files`` maps split names to paths, ``"train"`` among them."""
    if not isinstance(files, Mapping) or TRAIN not in files:
        got = sorted(files) if isinstance(files, Mapping) else files
        raise ValueError(
            f"files: must map split names to CSV paths and include {TRAIN!r} (statistics and "
            f"label vocabularies are fitted on it), got {got!r}"
        )


def _check_windowing(*, window: object, stride: object, horizon: object) -> _Windowing:
    """The checked window arguments; a stride of 0 becomes ``window``."""
    window = _check_int("window", window, 1, ">= 1")
    stride = _check_int("stride", stride, 0, ">= 0 (0 means stride = window)") or window
    horizon = _check_int("horizon", horizon, 0, ">= 0")
    return _Windowing(window=window, stride=stride, horizon=horizon)


def _check_targets(targets: object) -> None:
    """A ValueError unless ``targets`` is a non-empty mapping task name -> :class:`Target`."""
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


def _check_group_column(group_column: object) -> None:
    """A ValueError unless ``group_column`` is ``None`` or a non-empty string."""
    if group_column is not None and (not isinstance(group_column, str) or not group_column):
        raise ValueError(f"group_column: must be a column name or None, got {group_column!r}")


def _columns(
    inputs: Sequence[str], targets: Mapping[str, Target], group_column: str | None
) -> list[str]:
    """Every column to read: inputs, target columns, then the group column."""
    columns = list(inputs) + [t.column for t in targets.values()]
    if group_column is not None:
        columns.append(group_column)
    return columns


def _read_splits(
    files: Mapping[str, str | os.PathLike[str]], columns: Sequence[str]
) -> dict[str, _Table]:
    """Read every split's ``columns``, train first; a ValueError for a file without rows."""
    paths = {split: os.fspath(p) for split, p in files.items()}
    tables: dict[str, _Table] = {}
    for split in [TRAIN] + [s for s in paths if s != TRAIN]:
        cells, lines = _read_table(paths[split], columns)
        if not len(lines):
            raise ValueError(f"{paths[split]}: expected data rows after the header, got none")
        tables[split] = _Table(split=split, path=paths[split], cells=cells, lines=lines)
    return tables


def _cached_numbers(table: _Table, column: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    """``column`` of ``table`` as float64 ``[R]``, parsed once per ``cache``."""
    if column not in cache:
        cache[column] = _parse_numbers(table.path, column, table.cells[column], table.lines)
    return cache[column]


def _parse_split(table: _Table, inputs: Sequence[str], targets: Mapping[str, Target]) -> _Series:
    """Parse one split's cells (inputs first, then targets in order) into a :class:`_Series`."""
    cache: dict[str, np.ndarray] = {}  # a column both input and target is parsed once
    features = np.stack([_cached_numbers(table, c, cache) for c in inputs], axis=1)
    values = {
        name: _cached_numbers(table, t.column, cache)
        if t.kind == "regression"
        else _parse_labels(table.path, t.column, table.cells[t.column], table.lines)
        for name, t in targets.items()
    }
    return _Series(table=table, features=features, targets=values)


def _input_stats(features: np.ndarray, *, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``[F]`` mean and std (0 replaced by 1) of ``features: [R, F]``, or zeros and
    ones when not normalising."""
    if not normalize:
        num_features = features.shape[1]
        return np.zeros(num_features), np.ones(num_features)
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    return np.asarray(mean, np.float64), np.asarray(np.where(std > 0, std, 1.0), np.float64)


def _fit_stats(
    train: _Series, targets: Mapping[str, Target], *, normalize: bool, normalize_targets: bool
) -> _Stats:
    """Fit input and target statistics and label vocabularies on the train split."""
    mean, std = _input_stats(train.features, normalize=normalize)
    target_mean: dict[str, float] = {}
    target_std: dict[str, float] = {}
    vocabs: dict[str, LabelVocabulary] = {}
    for name, t in targets.items():
        train_y = train.targets[name]
        if t.kind == "classification":
            vocabs[name] = label_vocab(train_y, allow_unknown=True)
        elif normalize_targets:
            s = float(np.std(train_y))
            target_mean[name] = float(np.mean(train_y))
            target_std[name] = s if s > 0 else 1.0
        else:
            target_mean[name], target_std[name] = 0.0, 1.0
    return _Stats(
        mean=mean, std=std, target_mean=target_mean, target_std=target_std, label_vocabs=vocabs
    )


def _task_specs(
    targets: Mapping[str, Target], vocabs: Mapping[str, LabelVocabulary]
) -> tuple[TaskSpec, ...]:
    """One :class:`TaskSpec` per target, in order; ``dim = 1``."""
    return tuple(
        TaskSpec(
            name=name,
            level=t.level,
            kind=t.kind,
            num_classes=len(vocabs[name]) if t.kind == "classification" else 0,
            dim=1,
        )
        for name, t in targets.items()
    )


def _split_starts(table: _Table, cut: _Windowing, group_column: str | None) -> np.ndarray:
    """First rows of the split's windows, int64 ``[N]``; a ValueError when there is none."""
    cells = None if group_column is None else table.cells[group_column]
    bounds = _series_bounds(table.path, group_column, cells, table.lines)
    starts = _window_starts(bounds, window=cut.window, stride=cut.stride, horizon=cut.horizon)
    if not len(starts):
        longest = int(np.max(np.diff(bounds)))
        series = "" if group_column is None else f" (longest group: {longest} rows)"
        raise ValueError(
            f"{table.path}: split {table.split!r} gives no window: it has {len(table.lines)} rows"
            f"{series}, fewer than window + horizon = {cut.window + cut.horizon} in every series"
        )
    return starts


def _z(values: np.ndarray, mean: np.ndarray | float, std: np.ndarray | float) -> np.ndarray:
    return ((values - mean) / std).astype(np.float32)


def _target_rows(spec: TaskSpec, values: np.ndarray | list[str], stats: _Stats) -> np.ndarray:
    """A target per row: int32 ``[R]`` class ids, or float32 ``[R, 1]`` z-scored values."""
    if spec.kind == "classification":
        return stats.label_vocabs[spec.name].encode(values)
    mean, std = stats.target_mean[spec.name], stats.target_std[spec.name]
    return _z(values, mean, std)[:, None]


def _window_labels(
    spec: TaskSpec, y: np.ndarray, starts: np.ndarray, cut: _Windowing
) -> list[np.ndarray] | np.ndarray:
    """Per-row targets ``y`` taken ``horizon`` ahead: a view per window (token tasks) or the
    last step's target of each window, stacked (sequence tasks)."""
    if spec.level == "token":
        return _windows(y[cut.horizon :], starts, cut.window)
    return np.ascontiguousarray(y[starts + cut.window - 1 + cut.horizon])


def _cut_split(
    series: _Series,
    stats: _Stats,
    tasks: Sequence[TaskSpec],
    cut: _Windowing,
    group_column: str | None,
) -> SequenceDataset:
    """One split's windows as a checked :class:`SequenceDataset`."""
    starts = _split_starts(series.table, cut, group_column)
    x = _z(series.features, stats.mean, stats.std)
    labels = {
        spec.name: _window_labels(
            spec, _target_rows(spec, series.targets[spec.name], stats), starts, cut
        )
        for spec in tasks
    }
    dataset = SequenceDataset(inputs=_windows(x, starts, cut.window), labels=labels)
    dataset.check(tasks)
    return dataset


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
    _check_files(files)
    cut = _check_windowing(window=window, stride=stride, horizon=horizon)
    input_names = _check_names("inputs", inputs)
    _check_targets(targets)
    _check_group_column(group_column)
    tables = _read_splits(files, _columns(input_names, targets, group_column))
    series = {split: _parse_split(t, input_names, targets) for split, t in tables.items()}
    stats = _fit_stats(
        series[TRAIN], targets, normalize=normalize, normalize_targets=normalize_targets
    )
    tasks = _task_specs(targets, stats.label_vocabs)
    splits = {s: _cut_split(series[s], stats, tasks, cut, group_column) for s in files}
    return TimeSeries(
        splits=splits,
        tasks=tasks,
        num_features=len(input_names),
        description=_describe(tables, splits, tasks, targets, input_names, cut, group_column),
        **stats._asdict(),  # mean, std, target_mean, target_std, label_vocabs
    )


def _describe(
    tables: Mapping[str, _Table],
    splits: Mapping[str, SequenceDataset],
    tasks: Sequence[TaskSpec],
    targets: Mapping[str, Target],
    inputs: Sequence[str],
    cut: _Windowing,
    group_column: str | None,
) -> str:
    window, stride, horizon = cut
    files = ", ".join(f"{s} {tables[s].path} ({len(d)} windows)" for s, d in splits.items())
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
