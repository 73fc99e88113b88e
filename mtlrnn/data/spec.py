"""The ``data:`` section of a config: where examples come from and how they are batched.

Defined next to the readers it configures (:mod:`mtlrnn.data.sources` builds datasets from
it); :mod:`mtlrnn.config` composes it into the whole config and checks every value against
these fields' types and bounds (:mod:`mtlrnn.options`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from mtlrnn.data.synthetic import SyntheticConfig
from mtlrnn.options import option as _opt
from mtlrnn.options import section as _section


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Word inputs of the text sources (conllu, columns); vocabularies are fitted on train."""

    min_count: int = _opt(1, "train words seen fewer times than this map to <unk>", min=1)
    lowercase: bool = _opt(False, "lowercase words before the word-vocabulary lookup")
    max_word_len: int = _opt(
        0, "characters kept per word for model.char_encoder (longer words truncated); 0 = none",
        min=0,
    )


@dataclasses.dataclass(frozen=True)
class ConlluConfig:
    """A Universal Dependencies treebank in CoNLL-U (used when source is conllu)."""

    dir: str = _opt(
        "", "treebank directory holding *-ud-{train,dev,test}.conllu (relative: to the cwd)"
    )
    files: dict[str, str] = _opt(
        {}, "explicit split files instead of dir: {train: path, dev: path, test: path}"
    )
    columns: tuple[str, ...] = _opt(
        ("upos", "xpos", "feats", "deprel"),
        "one token task per column: upos, xpos, feats, deprel, or feats:<Name> for one feature",
    )

    def __post_init__(self) -> None:
        allowed = ("upos", "xpos", "feats", "deprel")
        for c in self.columns:
            if c not in allowed and not (c.startswith("feats:") and len(c) > 6):
                raise ValueError(
                    f"columns: {c!r} is not a CoNLL-U task; allowed: {', '.join(allowed)}, "
                    "feats:<Name>"
                )
        _check_split_files(self.files)


@dataclasses.dataclass(frozen=True)
class ColumnsConfig:
    """CoNLL-2000/2003-style column files (used when source is columns)."""

    files: dict[str, str] = _opt({}, "split files: {train: path, dev: path, test: path}")
    word_column: int = _opt(0, "0-based column of the word", min=0)
    tasks: dict[str, int] = _opt({}, "task name -> 0-based label column, e.g. {pos: 1, ner: 3}")

    def __post_init__(self) -> None:
        _check_split_files(self.files)
        for name, col in self.tasks.items():
            if col < 0:
                raise ValueError(f"tasks.{name}: column must be >= 0, got {col}")


@dataclasses.dataclass(frozen=True)
class CsvTarget:
    """One CSV target column and what kind of task it is."""

    column: str = _opt("", "the CSV column holding the target")
    level: Literal["token", "sequence"] = _opt(
        "token", "token (one target per step) or sequence (the window's last step)"
    )
    kind: Literal["classification", "regression"] = _opt(
        "regression", "classification (label strings) or regression (numbers)"
    )


@dataclasses.dataclass(frozen=True)
class CsvConfig:
    """Time series from CSV files with a header row (used when source is csv)."""

    files: dict[str, str] = _opt({}, "split files: {train: path, dev: path, test: path}")
    inputs: tuple[str, ...] = _opt((), "input columns (numbers)")
    targets: dict[str, CsvTarget] = _opt({}, "task name -> {column, level, kind}")
    window: int = _opt(64, "steps per training sequence (sliding window)", min=1)
    stride: int = _opt(0, "steps between window starts; 0 = window (no overlap)", min=0)
    horizon: int = _opt(0, "predict targets this many steps ahead", min=0)
    group_column: str = _opt("", "windows never cross a change of this column; '' = none")
    normalize: bool = _opt(True, "z-score inputs with train-split statistics")
    normalize_targets: bool = _opt(True, "z-score regression targets with train statistics")

    def __post_init__(self) -> None:
        _check_split_files(self.files)
        for name, t in self.targets.items():
            if not t.column:
                raise ValueError(f"targets.{name}.column: required (the CSV column name)")


def _check_split_files(files: Mapping[str, str]) -> None:
    bad = sorted(set(files) - {"train", "dev", "test"})
    if bad:
        raise ValueError(f"files: unknown split {bad[0]!r}; allowed: train, dev, test")


SOURCES: tuple[str, ...] = ("synthetic", "conllu", "columns", "csv")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are batched."""

    source: Literal["synthetic", "conllu", "columns", "csv"] = _opt(
        "synthetic", "data source: synthetic, conllu, columns or csv (its section below)"
    )
    synthetic: SyntheticConfig = _section(
        SyntheticConfig, "the synthetic multi-task suite (used when source is synthetic)"
    )
    conllu: ConlluConfig = _section(ConlluConfig, "a UD treebank (used when source is conllu)")
    columns: ColumnsConfig = _section(
        ColumnsConfig, "CoNLL-style column files (used when source is columns)"
    )
    csv: CsvConfig = _section(CsvConfig, "CSV time series (used when source is csv)")
    text: TextConfig = _section(TextConfig, "word inputs of conllu and columns")
    buckets: tuple[int, ...] = _opt(
        (16, 24, 32, 40),
        "padded lengths of the length buckets, increasing; [] = one bucket (the longest)",
        min=1,
    )

    def __post_init__(self) -> None:
        b = list(self.buckets)
        if any(hi <= lo for lo, hi in zip(b, b[1:], strict=False)):
            raise ValueError(f"buckets: must be strictly increasing, got {b}")
        if self.source == "conllu" and not (self.conllu.dir or self.conllu.files):
            raise ValueError("conllu.dir: required when source is conllu (or conllu.files)")
        if self.source == "columns":
            if "train" not in self.columns.files:
                raise ValueError("columns.files.train: required when source is columns")
            if not self.columns.tasks:
                raise ValueError("columns.tasks: at least one task column is required")
        if self.source == "csv":
            if "train" not in self.csv.files:
                raise ValueError("csv.files.train: required when source is csv")
            if not self.csv.inputs or not self.csv.targets:
                key = "inputs" if not self.csv.inputs else "targets"
                raise ValueError(f"csv.{key}: at least one is required when source is csv")
