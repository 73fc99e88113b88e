"""Word-level text corpora as datasets: vocabularies fitted on train, word and character ids.

The text readers (CoNLL-U, column files) produce sentences: a list of words plus, per task,
one label string per word. :func:`encode_text` turns the sentences of every split into
:class:`~mtlrnn.data.dataset.SequenceDataset` objects with one token-classification task per
label column. All vocabularies are fitted on the ``train`` split only:

- words: :meth:`Vocabulary.build` with ``min_count`` and ``lowercase`` (``"<pad>"`` = 0,
  ``"<unk>"`` = 1); words of other splits that it lacks map to ``"<unk>"``;
- labels: one :class:`LabelVocabulary` per task with ``allow_unknown=True``: id 0 is a reserved
  ``"<unk>"`` label that train never uses, and a dev/test tag unseen in train maps to it (so it
  always counts as an error); ``num_classes`` includes it;
- characters (``max_word_len > 0``): every character of the train words (case kept, even
  with ``lowercase``), ``"<pad>"`` = 0, ``"<unk>"`` = 1; each example then carries ``chars``
  ``[L_i, max_word_len]`` (longer words truncated), so unseen words still get a spelling.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.vocab import LabelVocabulary
from mtlrnn.data.vocab import Vocabulary
from mtlrnn.data.vocab import char_vocab
from mtlrnn.data.vocab import encode_chars
from mtlrnn.data.vocab import label_vocab
from mtlrnn.tasks import TaskSpec

# (words, {task: labels}, where) for one sentence; ``where`` names it in errors (file:line).
TextSentence = tuple[Sequence[str], Mapping[str, Sequence[str]], str]


@dataclasses.dataclass(frozen=True)
class TextData:
    """Encoded splits of a word-level corpus and the vocabularies that encode it.

    Attributes:
      splits: split name -> dataset (``inputs`` word ids ``[L_i]``, ``chars`` when
        ``char_vocab`` is set).
      tasks: one token-classification spec per label column, in the requested order.
      word_vocab: the word vocabulary (fitted on train).
      label_vocabs: task name -> label vocabulary (fitted on train, id 0 = ``"<unk>"``).
      char_vocab: the character vocabulary, or ``None`` when ``max_word_len == 0``.
      max_word_len: characters kept per word (0: no characters).
    """

    splits: dict[str, SequenceDataset]
    tasks: tuple[TaskSpec, ...]
    word_vocab: Vocabulary
    label_vocabs: dict[str, LabelVocabulary]
    char_vocab: Vocabulary | None = None
    max_word_len: int = 0

    def encode_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(word ids [L], char ids [L, max_word_len] or None)`` for one sentence."""
        return encode_words(words, self.word_vocab, self.char_vocab, self.max_word_len)

    def vocab_dict(self) -> dict[str, Any]:
        """Everything needed to encode new text and decode predictions, as plain JSON types."""
        return {
            "words": self.word_vocab.to_dict(),
            "chars": None if self.char_vocab is None else self.char_vocab.to_dict(),
            "labels": {t: v.to_dict() for t, v in self.label_vocabs.items()},
            "max_word_len": self.max_word_len,
        }


def encode_words(
    words: Sequence[str],
    word_vocab: Vocabulary,
    chars: Vocabulary | None,
    max_word_len: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Word ids ``[L]`` and, with a character vocabulary, char ids ``[L, max_word_len]``."""
    ids = word_vocab.encode(words)
    if chars is None:
        return ids, None
    return ids, encode_chars(words, chars, max_word_len)


def encode_text(
    sentences: Mapping[str, Sequence[TextSentence]],
    *,
    tasks: Iterable[str],
    min_count: int = 1,
    lowercase: bool = False,
    max_word_len: int = 0,
) -> TextData:
    """Encode the sentences of every split (``"train"`` required); see the module docstring.

    Raises ValueError naming the split (and the sentence's ``where``) for an empty split, a
    missing task column or a label count that differs from the word count.
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("text data: at least one task is required")
    if "train" not in sentences:
        raise ValueError(f"text data: a train split is required; got {sorted(sentences)}")
    if max_word_len < 0:
        raise ValueError(f"max_word_len: must be >= 0, got {max_word_len}")
    for split, sents in sentences.items():
        if not sents:
            raise ValueError(f"text data: the {split} split has no sentences")
        for words, labels, where in sents:
            for t in tasks:
                if t not in labels:
                    raise ValueError(f"{where}: task {t!r} has no column; have {sorted(labels)}")
                if len(labels[t]) != len(words):
                    raise ValueError(
                        f"{where}: task {t!r} has {len(labels[t])} labels for {len(words)} words"
                    )
    train = sentences["train"]
    word_vocab = Vocabulary.build(
        (w for words, _, _ in train for w in words), min_count=min_count, lowercase=lowercase
    )
    chars = (
        char_vocab(w for words, _, _ in train for w in words) if max_word_len > 0 else None
    )
    label_vocabs = {
        t: label_vocab((x for _, labels, _ in train for x in labels[t]), allow_unknown=True)
        for t in tasks
    }
    splits = {}
    for split, sents in sentences.items():
        encoded = [encode_words(words, word_vocab, chars, max_word_len) for words, _, _ in sents]
        splits[split] = SequenceDataset(
            inputs=[ids for ids, _ in encoded],
            labels={t: [label_vocabs[t].encode(lab[t]) for _, lab, _ in sents] for t in tasks},
            chars=None if chars is None else [c for _, c in encoded],
        )
    specs = tuple(
        TaskSpec(name=t, level="token", kind="classification", num_classes=len(label_vocabs[t]))
        for t in tasks
    )
    return TextData(splits, specs, word_vocab, label_vocabs, chars, max_word_len)


def vocabs_from_dict(
    d: Mapping[str, Any],
) -> tuple[Vocabulary, Vocabulary | None, dict[str, Vocabulary], int]:
    """Inverse of :meth:`TextData.vocab_dict`: ``(words, chars, labels, max_word_len)``."""
    chars = d.get("chars")
    return (
        Vocabulary.from_dict(d["words"]),
        None if chars is None else Vocabulary.from_dict(chars),
        {t: Vocabulary.from_dict(v) for t, v in d["labels"].items()},
        int(d.get("max_word_len", 0)),
    )


def utf8_error(path: str | os.PathLike[str], what: str) -> ValueError:
    """The error for a file that is not UTF-8: ``"<file>:<line>: expected UTF-8 <what>, ..."``.

    Text-mode reading reports a decoding error at a byte offset inside a buffered chunk, not
    at a line; this reads the file again as bytes to name the line (counted as Python's
    universal newlines count it: ``\\n``, ``\\r\\n`` or ``\\r`` ends a line), the column
    (in characters) and the first byte that is not UTF-8. Call it from an ``except
    UnicodeDecodeError`` block and raise what it returns.
    """
    path = os.fspath(path)
    line = 1
    with open(path, "rb") as f:
        for chunk in f:  # split at b"\n", which never occurs inside a UTF-8 sequence
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                before = chunk[: e.start]
                start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
                line += _line_breaks(before)
                column = len(before[start:].decode("utf-8")) + 1
                return ValueError(
                    f"{path}:{line}: expected UTF-8 {what}, got the byte "
                    f"0x{chunk[e.start]:02x} on line {line}, column {column} ({e.reason}); "
                    "convert the file to UTF-8"
                )
            line += _line_breaks(chunk)
    return ValueError(f"{path}: expected UTF-8 {what}, cannot decode it")


def _line_breaks(data: bytes) -> int:
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
