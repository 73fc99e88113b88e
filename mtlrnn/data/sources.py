"""Data sources: build the training data that a config's ``data`` section describes.

``load_data(data_cfg) -> Data`` dispatches on ``data.source``:

- ``synthetic``: the generated suite of :mod:`mtlrnn.data.synthetic` (with Bayes-optimal
  scores);
- ``conllu``: a Universal Dependencies treebank (:func:`mtlrnn.data.conllu_reader.load_ud`);
- ``columns``: CoNLL-2000/2003-style column files (:mod:`mtlrnn.data.columns`);
- ``csv``: time series from CSV files (:mod:`mtlrnn.data.timeseries`).

Relative paths in the config are resolved against the current directory;
:func:`absolute_paths` rewrites them so a run's saved config.yaml works from anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.spec import DataConfig
from mtlrnn.data.text import TextData
from mtlrnn.options import ConfigError
from mtlrnn.tasks import TaskSpec


@dataclasses.dataclass(frozen=True)
class Data:
    """Everything the trainer needs from a data source.

    Attributes:
      tasks: the task specs the data provides.
      splits: split name -> dataset (``"train"`` always; ``"dev"``/``"test"`` when given).
      vocab_size: number of input token ids (0 for real-valued inputs).
      num_features: ``F`` of real-valued inputs (0 for token ids).
      char_vocab_size: number of character ids (0: the data has no characters).
      bayes: ``bayes[split][task][metric]`` reference scores (synthetic data only).
      description: one paragraph for users.
      text: the vocabularies of a text source (for ``mtlrnn predict``), else ``None``.
    """

    tasks: tuple[TaskSpec, ...]
    splits: dict[str, SequenceDataset]
    vocab_size: int = 0
    num_features: int = 0
    char_vocab_size: int = 0
    bayes: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)
    description: str = ""
    text: TextData | None = None


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else path


def _abs_files(files: Mapping[str, str]) -> dict[str, str]:
    return {split: _abs(p) for split, p in files.items()}


def absolute_paths(data_cfg: DataConfig) -> DataConfig:
    """``data_cfg`` with every file and directory path made absolute (against the cwd)."""
    return dataclasses.replace(
        data_cfg,
        conllu=dataclasses.replace(
            data_cfg.conllu, dir=_abs(data_cfg.conllu.dir), files=_abs_files(data_cfg.conllu.files)
        ),
        columns=dataclasses.replace(data_cfg.columns, files=_abs_files(data_cfg.columns.files)),
        csv=dataclasses.replace(data_cfg.csv, files=_abs_files(data_cfg.csv.files)),
    )


def _check_exists(key: str, path: str, *, directory: bool = False) -> None:
    ok = os.path.isdir(path) if directory else os.path.isfile(path)
    if not ok:
        what = "directory" if directory else "file"
        raise ConfigError(f"{key}: no such {what}: {path} (relative paths are read from the cwd)")


def _check_files(section: str, files: Mapping[str, str]) -> None:
    for split, path in files.items():
        _check_exists(f"data.{section}.files.{split}", path)


def _describe_text(name: str, text: TextData) -> str:
    parts = []
    for split, ds in text.splits.items():
        parts.append(f"{split} {len(ds)} sentences / {int(ds.lengths.sum())} words")
    tasks = ", ".join(f"{t.name} ({t.num_classes} classes)" for t in text.tasks)
    chars = (
        f", {len(text.char_vocab)} characters (up to {text.max_word_len} per word)"
        if text.char_vocab is not None
        else ""
    )
    return (
        f"{name}: {'; '.join(parts)}. Token tasks: {tasks}. Word vocabulary "
        f"{len(text.word_vocab)} (fitted on train){chars}."
    )


def _text_data(text: TextData, name: str) -> Data:
    return Data(
        tasks=text.tasks,
        splits=text.splits,
        vocab_size=len(text.word_vocab),
        char_vocab_size=0 if text.char_vocab is None else len(text.char_vocab),
        description=_describe_text(name, text),
        text=text,
    )


def _synthetic_data(data_cfg: DataConfig) -> Data:
    """The generated suite of ``data.synthetic``, with its Bayes-optimal scores."""
    from mtlrnn.data.synthetic import make_suite

    suite = make_suite(data_cfg.synthetic)
    return Data(
        tasks=suite.tasks,
        splits=suite.splits,
        vocab_size=suite.vocab_size,
        bayes=suite.bayes,
        description=suite.description,
    )


def _conllu_data(data_cfg: DataConfig) -> Data:
    """The UD treebank of ``data.conllu`` (split files, or else a treebank directory)."""
    from mtlrnn.data.conllu_reader import load_ud

    cfg, text_opts = data_cfg.conllu, data_cfg.text
    _check_files("conllu", cfg.files)
    if not cfg.files:
        _check_exists("data.conllu.dir", cfg.dir, directory=True)
    text = load_ud(
        cfg.dir or None,
        files=cfg.files or None,
        tasks=cfg.columns,
        min_count=text_opts.min_count,
        lowercase=text_opts.lowercase,
        max_word_len=text_opts.max_word_len,
    )
    return _text_data(text, f"CoNLL-U {cfg.dir or cfg.files['train']}")


def _column_sentences(
    path: str, *, tasks: Mapping[str, int], word_column: int
) -> list[tuple[list[str], dict[str, list[str]], str]]:
    """The ``(words, labels, where)`` of each sentence of one column file; ``where`` names
    the file and the 1-based sentence number."""
    from mtlrnn.data.columns import read_columns

    sentences = read_columns(path, columns=tasks, word_column=word_column)
    return [(s.words, s.labels, f"{path}, sentence {i + 1}") for i, s in enumerate(sentences)]


def _columns_data(data_cfg: DataConfig) -> Data:
    """The CoNLL-style column files of ``data.columns``."""
    from mtlrnn.data.text import encode_text

    cfg, text_opts = data_cfg.columns, data_cfg.text
    _check_files("columns", cfg.files)
    sentences: dict[str, Any] = {
        split: _column_sentences(path, tasks=cfg.tasks, word_column=cfg.word_column)
        for split, path in cfg.files.items()
    }
    text = encode_text(
        sentences,
        tasks=tuple(cfg.tasks),
        min_count=text_opts.min_count,
        lowercase=text_opts.lowercase,
        max_word_len=text_opts.max_word_len,
    )
    return _text_data(text, f"column files {cfg.files['train']}")


def _csv_data(data_cfg: DataConfig) -> Data:
    """The CSV time series of ``data.csv``, cut into windows."""
    from mtlrnn.data.timeseries import Target
    from mtlrnn.data.timeseries import load_timeseries

    cfg = data_cfg.csv
    _check_files("csv", cfg.files)
    series = load_timeseries(
        cfg.files,
        inputs=cfg.inputs,
        targets={
            name: Target(column=t.column, level=t.level, kind=t.kind)
            for name, t in cfg.targets.items()
        },
        window=cfg.window,
        stride=cfg.stride,
        horizon=cfg.horizon,
        group_column=cfg.group_column or None,
        normalize=cfg.normalize,
        normalize_targets=cfg.normalize_targets,
    )
    return Data(
        tasks=series.tasks,
        splits=series.splits,
        num_features=series.num_features,
        description=series.description,
    )


def load_data(data_cfg: DataConfig) -> Data:
    """Build the data of ``data_cfg`` (see the module docstring).

    Raises:
      ConfigError: a missing file or directory, naming the config key.
      ValueError: malformed data, naming the file and line.
    """
    source = data_cfg.source
    if source == "synthetic":
        return _synthetic_data(data_cfg)
    if source == "conllu":
        return _conllu_data(data_cfg)
    if source == "columns":
        return _columns_data(data_cfg)
    if source == "csv":
        return _csv_data(data_cfg)
    raise ConfigError(
        f"data.source: must be one of synthetic, conllu, columns, csv; got {source!r}"
    )


#: The value of an empty CoNLL-U / column field: no label.
EMPTY_LABEL = "_"


def _label_ids(data: Data, spec: TaskSpec, dataset: SequenceDataset) -> np.ndarray | None:
    """The labelled class ids of ``spec`` in ``dataset`` (classification), flattened; an
    empty field (``_`` in text data) and the reserved ``<unk>`` label count as unlabelled."""
    labels, mask = dataset.labels[spec.name], dataset.mask(spec.name)
    if isinstance(labels, np.ndarray):
        ids, keep = labels.reshape(len(dataset), -1)[:, 0], np.asarray(mask) > 0
    elif labels:
        ids = np.concatenate([np.asarray(x).reshape(len(x), -1)[:, 0] for x in labels])
        keep = np.concatenate([np.asarray(m) for m in mask]) > 0
    else:
        return np.zeros(0, np.int64)
    if spec.kind != "classification":
        return None if keep.any() else np.zeros(0, np.int64)
    ids = np.asarray(ids, np.int64)[keep]
    if data.text is not None and spec.name in data.text.label_vocabs:
        vocab = data.text.label_vocabs[spec.name]
        empty = [vocab.encode([EMPTY_LABEL])[0]] if EMPTY_LABEL in vocab else []
        ids = ids[~np.isin(ids, [0, *empty])]  # 0: <unk>, a tag unseen in train
    return ids


def check_labels(
    data: Data, tasks: Sequence[TaskSpec], splits: Sequence[str]
) -> list[str]:
    """Check that every task has something to learn from and to be scored on.

    Raises ConfigError, naming the task and split, when a task has no labels in the train
    split (every label masked, or every field ``_`` in text data). Returns warnings: a
    classification task with a single class in train, a task with no labels in another of
    ``splits``.
    """
    warnings: list[str] = []
    for spec in tasks:
        for split in dict.fromkeys(splits):
            dataset = data.splits.get(split)
            if dataset is None:
                continue
            ids = _label_ids(data, spec, dataset)
            if ids is not None and ids.size == 0:
                if split == "train":
                    raise ConfigError(
                        f"tasks: task {spec.name!r} has no labels in the train split (every "
                        f"value is missing or {EMPTY_LABEL!r}); there is nothing to learn: "
                        "leave it out with tasks.include, or fix the data"
                    )
                warnings.append(
                    f"task {spec.name!r} has no labels in the {split} split; its {split} "
                    "metrics are undefined"
                )
            elif split == "train" and ids is not None and np.unique(ids).size == 1:
                name = str(ids[0])
                if data.text is not None and spec.name in data.text.label_vocabs:
                    name = repr(data.text.label_vocabs[spec.name].decode([ids[0]])[0])
                warnings.append(
                    f"task {spec.name!r} has a single class in the train split ({name}); "
                    "the model can only learn to predict it"
                )
    return warnings


def data_sha256(data: Data) -> str:
    """A fingerprint of ``data``'s tasks and every split's inputs, labels, masks and
    characters (what a run trains and is evaluated on), for data given in memory."""
    digest = hashlib.sha256()
    digest.update(repr(data.tasks).encode())
    digest.update(f"{data.vocab_size} {data.num_features} {data.char_vocab_size}".encode())

    def add(name: str, value: Any) -> None:
        digest.update(name.encode())
        parts = [value] if isinstance(value, np.ndarray) else list(value)
        for part in parts:
            arr = np.ascontiguousarray(np.asarray(part))
            digest.update(f"{arr.dtype}{arr.shape}".encode())
            digest.update(arr.tobytes())

    for split in sorted(data.splits):
        ds = data.splits[split]
        add(f"{split}/inputs", ds.inputs)
        for task in sorted(ds.labels):
            add(f"{split}/labels/{task}", ds.labels[task])
        for task in sorted(ds.masks):
            add(f"{split}/masks/{task}", ds.masks[task])
        if ds.chars is not None:
            add(f"{split}/chars", ds.chars)
    return digest.hexdigest()
