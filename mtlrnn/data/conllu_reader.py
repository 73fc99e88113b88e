"""Reader for CoNLL-U (Universal Dependencies) files, and UD token-tagging datasets.

Parsing uses the ``conllu`` package (``conllu.parse_incr``). Before parsing, a cheap pass over
the raw lines checks the layout and reports problems as ``ValueError("<file>:<line>: ...")``:
a non-comment, non-blank line must have 10 tab-separated fields and an ID that is an integer
(a word), a range ``a-b`` (a multiword token) or a decimal ``a.b`` (an empty node); word ids in
a sentence must run 1, 2, 3, ...; the file must be UTF-8 (the error names the line and column
of the first byte that is not). A file with no sentence at all is rejected too.

Only regular word lines are kept: multiword-token ranges (``3-4  don't``) and empty nodes
(``5.1``) are skipped, so every sentence is the sequence of its syntactic words. Columns kept
per word (keys of :attr:`Sentence.columns`): ``"upos"``, ``"xpos"``, ``"feats"``, ``"deprel"``
(``FORM`` is :attr:`Sentence.words`, ``HEAD`` :attr:`Sentence.heads`). An empty field is
``"_"``. ``FEATS`` is the whole string, serialised canonically as ``Key=Val|Key=Val`` sorted by
feature name (case-insensitively, as UD orders them). With ``feats_split=True`` there is also
one column ``"feats:<Name>"`` per feature name seen in the file, holding that feature's value
or ``"_"``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import conllu
import numpy as np

from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.text import TextData
from mtlrnn.data.text import encode_text
from mtlrnn.data.text import utf8_error
from mtlrnn.data.vocab import Vocabulary
from mtlrnn.tasks import TaskSpec

COLUMNS: tuple[str, ...] = ("upos", "xpos", "feats", "deprel")
DEFAULT_TASKS: tuple[str, ...] = COLUMNS
FIELDS = "ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC"
SPLITS: tuple[str, ...] = ("train", "dev", "test")
FEATS_PREFIX = "feats:"

_WORD_ID = re.compile(r"[1-9][0-9]*")
_RANGE_ID = re.compile(r"[1-9][0-9]*-[1-9][0-9]*")
_EMPTY_ID = re.compile(r"[0-9]+\.[1-9][0-9]*")


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words (FORM) and, per column name, one string per word.

    Attributes:
      words: the FORM of each regular word.
      columns: column name (``"upos"``, ``"xpos"``, ``"feats"``, ``"deprel"``, and
        ``"feats:<Name>"`` with ``feats_split``) -> one label per word.
      line: 1-based line number of the sentence's first token line in its file.
      heads: the HEAD of each word: a word id, 0 for the root, ``None`` where HEAD is ``_``.
    """

    words: list[str]
    columns: dict[str, list[str]]
    line: int = 0
    heads: list[int | None] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.words)


def _value(v: object) -> str:
    return "_" if v is None or v == "" else str(v)


def _feats_string(feats: Mapping[str, str] | None) -> str:
    if not feats:
        return "_"
    keys = sorted(feats, key=lambda k: (k.lower(), k))
    return "|".join(f"{k}={feats[k]}" if feats[k] else k for k in keys)


def _validate(path: str) -> list[int]:
    """Check the raw layout; return the line number where each sentence's first token is."""
    starts: list[int] = []
    in_sentence = False
    expected_id = 1
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    in_sentence = False
                    expected_id = 1
                    continue
                if line.startswith("#"):
                    continue
                fields = line.split("\t")
                if len(fields) != 10:
                    hint = "" if starts else "; is this a CoNLL-U file?"
                    raise ValueError(
                        f"{path}:{lineno}: expected a token line with 10 tab-separated fields "
                        f"({FIELDS}), got {len(fields)} field{'s' * (len(fields) != 1)}{hint}"
                    )
                tid = fields[0]
                if _WORD_ID.fullmatch(tid):
                    if int(tid) != expected_id:
                        raise ValueError(
                            f"{path}:{lineno}: expected word id {expected_id} (word ids run "
                            f"1, 2, 3, ... in each sentence), got {tid!r}"
                        )
                    expected_id += 1
                elif not (_RANGE_ID.fullmatch(tid) or _EMPTY_ID.fullmatch(tid)):
                    raise ValueError(
                        f"{path}:{lineno}: expected an ID that is an integer word id, a range "
                        f"like '3-4' (multiword token) or a decimal like '5.1' (empty node), "
                        f"got {tid!r}"
                    )
                empty = [FIELDS.split()[j] for j, v in enumerate(fields) if v == ""]
                if empty:
                    raise ValueError(
                        f"{path}:{lineno}: expected non-empty fields ('_' for none), "
                        f"got empty {', '.join(empty)}"
                    )
                if not in_sentence:
                    starts.append(lineno)
                    in_sentence = True
    except UnicodeDecodeError:
        raise utf8_error(path, "CoNLL-U text") from None
    if not starts:
        raise ValueError(f"{path}: expected CoNLL-U token lines, found no sentence at all")
    return starts


def read_conllu(path: str | os.PathLike[str], *, feats_split: bool = False) -> list[Sentence]:
    """Read a CoNLL-U file into sentences of regular words (see the module docstring).

    Raises ValueError naming the file and line on malformed input.
    """
    path = os.fspath(path)
    starts = _validate(path)
    raw: list[tuple[list[str], dict[str, list[str]], list[dict[str, str]], list[int | None]]] = []
    with open(path, encoding="utf-8") as f:
        parsed = conllu.parse_incr(f)
        k = 0
        while True:
            where = f"{path}:{starts[k]}" if k < len(starts) else path
            try:
                tokens = next(parsed)
            except StopIteration:
                break
            except conllu.exceptions.ParseException as e:
                raise ValueError(f"{where}: in the sentence starting here: {e}") from e
            if len(tokens) == 0:  # a block of comments only
                continue
            if k >= len(starts):  # should not happen after _validate
                raise ValueError(f"{path}: conllu found more sentences than the line scan")
            words: list[str] = []
            cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
            feats: list[dict[str, str]] = []
            heads: list[int | None] = []
            for tok in tokens:
                if not isinstance(tok["id"], int):  # multiword range or empty node
                    continue
                words.append(_value(tok["form"]))
                cols["upos"].append(_value(tok["upos"]))
                cols["xpos"].append(_value(tok["xpos"]))
                cols["feats"].append(_feats_string(tok["feats"]))
                cols["deprel"].append(_value(tok["deprel"]))
                feats.append(dict(tok["feats"] or {}))
                heads.append(tok["head"])
            if not words:
                raise ValueError(
                    f"{where}: expected at least one regular word line (integer ID) in the "
                    "sentence starting here, found only multiword tokens / empty nodes"
                )
            raw.append((words, cols, feats, heads))
            k += 1
    if feats_split:
        names = sorted(
            {n for _, _, fs, _ in raw for d in fs for n in d}, key=lambda n: (n.lower(), n)
        )
        for _, cols, fs, _ in raw:
            for n in names:
                cols[FEATS_PREFIX + n] = [_value(d.get(n)) for d in fs]
    return [
        Sentence(words=w, columns=c, line=starts[i], heads=h)
        for i, (w, c, _, h) in enumerate(raw)
    ]


def _column(sentence: Sentence, task: str) -> list[str]:
    if task in sentence.columns:
        return sentence.columns[task]
    if task.startswith(FEATS_PREFIX):  # a feature never seen in this sentence's file
        return ["_"] * len(sentence)
    raise ValueError(
        f"task {task!r}: no such column in the sentence at line {sentence.line}; it has "
        f"{sorted(sentence.columns)}"
    )


def build_dataset(
    sentences: Sequence[Sentence],
    *,
    tasks: Iterable[str] = DEFAULT_TASKS,
    word_vocab: Vocabulary,
    label_vocabs: Mapping[str, Vocabulary],
) -> SequenceDataset:
    """Encode sentences as a :class:`SequenceDataset` with one token task per column.

    Inputs are ``word_vocab`` ids (unknown words -> its unknown id); ``labels[task]`` are
    ``label_vocabs[task]`` ids. A ``"feats:<Name>"`` task absent from a sentence's columns is
    ``"_"`` throughout.
    """
    tasks = tuple(tasks)
    if not sentences:
        raise ValueError("build_dataset: needs at least one sentence, got 0")
    missing = [t for t in tasks if t not in label_vocabs]
    if missing:
        raise ValueError(
            f"build_dataset: no label vocabulary for tasks {missing}; have {sorted(label_vocabs)}"
        )
    inputs = [word_vocab.encode(s.words) for s in sentences]
    labels: dict[str, list[np.ndarray]] = {}
    for t in tasks:
        vocab = label_vocabs[t]
        out = []
        for s in sentences:
            try:
                out.append(vocab.encode(_column(s, t)))
            except ValueError as e:
                raise ValueError(f"task {t!r}, sentence at line {s.line}: {e}") from e
        labels[t] = out
    return SequenceDataset(inputs=inputs, labels=labels)


def tasks_from(label_vocabs: Mapping[str, Vocabulary]) -> tuple[TaskSpec, ...]:
    """One token-classification :class:`TaskSpec` per label vocabulary, in mapping order."""
    return tuple(
        TaskSpec(name=name, level="token", kind="classification", num_classes=len(v))
        for name, v in label_vocabs.items()
    )


def find_split_files(directory: str | os.PathLike[str]) -> dict[str, str]:
    """The ``*-ud-{train,dev,test}.conllu`` files of a UD treebank directory.

    ``train`` is required; ``dev`` and ``test`` are included when present. More than one
    match for a split is an error.
    """
    directory = os.fspath(directory)
    found: dict[str, str] = {}
    for split in SPLITS:
        hits = sorted(glob.glob(os.path.join(glob.escape(directory), f"*-ud-{split}.conllu")))
        if len(hits) > 1:
            raise ValueError(f"{directory}: several {split} files: {hits}")
        if hits:
            found[split] = hits[0]
    if "train" not in found:
        raise ValueError(f"{directory}: expected a *-ud-train.conllu file, found none")
    return found


def load_ud(
    directory: str | os.PathLike[str] | None = None,
    *,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    tasks: Iterable[str] = DEFAULT_TASKS,
    min_count: int = 1,
    lowercase: bool = False,
    max_word_len: int = 0,
) -> TextData:
    """Load a UD treebank as token-tagging datasets (see :mod:`mtlrnn.data.text`).

    Reads ``*-ud-train/dev/test.conllu`` of ``directory`` (dev and test when present), or the
    explicit ``files`` (split -> path, ``train`` required). Task names are column names
    (``"upos"``, ``"xpos"``, ``"feats"``, ``"deprel"``) or ``"feats:<Name>"`` for one
    morphological feature (the files are then read with ``feats_split=True``). Vocabularies
    are fitted on train only; unseen dev/test tags map to the reserved label id 0; with
    ``max_word_len > 0`` the datasets carry character ids.
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("load_ud: at least one task is required")
    if files is None:
        if directory is None:
            raise ValueError("load_ud: give a treebank directory or the split files")
        files = find_split_files(directory)
    elif "train" not in files:
        raise ValueError(f"load_ud: files needs a train split, got {sorted(files)}")
    split_feats = any(t.startswith(FEATS_PREFIX) for t in tasks)
    sentences = {}
    for split, path in files.items():
        sents = read_conllu(path, feats_split=split_feats)
        sentences[split] = [
            (s.words, {t: _column(s, t) for t in tasks}, f"{os.fspath(path)}:{s.line}")
            for s in sents
        ]
    return encode_text(
        sentences,
        tasks=tasks,
        min_count=min_count,
        lowercase=lowercase,
        max_word_len=max_word_len,
    )
