"""Reader for CoNLL-2000/2003-style column files.

Format: one token per line, whitespace-separated columns (e.g. CoNLL-2003 NER:
``word POS chunk NER``), a blank line between sentences. Lines starting with
``-DOCSTART-`` are document separators and are skipped, together with the blank line that
follows them. Every non-blank, non-``-DOCSTART-`` line of a file must have the same number
of columns.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words and, per task, one label string per word."""

    words: list[str]
    labels: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.words)


def read_columns(
    path: str | os.PathLike[str],
    *,
    columns: Mapping[str, int],
    word_column: int = 0,
) -> list[Sentence]:
    """Read a column file into sentences.

    Args:
      path: the file (UTF-8).
      columns: task name -> 0-based column index holding that task's labels.
      word_column: 0-based column index of the word.

    Returns:
      The sentences in file order; empty sentences (e.g. runs of blank lines) are dropped.

    Raises:
      ValueError: a negative column index; a line with fewer columns than needed (naming
        the file, line number and expected column count); or a line whose column count
        differs from the file's first token line.
    """
    indices = {"word_column": word_column, **{f"column of {t!r}": c for t, c in columns.items()}}
    for what, idx in indices.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValueError(f"read_columns: {what} must be a non-negative int, got {idx!r}")
    needed = max(indices.values()) + 1
    name = os.fspath(path)

    sentences: list[Sentence] = []
    words: list[str] = []
    labels: dict[str, list[str]] = {t: [] for t in columns}
    width: int | None = None
    width_line = 0
    skip_blank = False

    def flush() -> None:
        nonlocal words, labels
        if words:
            sentences.append(Sentence(words=words, labels=labels))
        words = []
        labels = {t: [] for t in columns}

    with open(name, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                if not skip_blank:
                    flush()
                skip_blank = False
                continue
            skip_blank = False
            if fields[0].startswith(DOCSTART):
                flush()
                skip_blank = True
                continue
            if len(fields) < needed:
                raise ValueError(
                    f"{name}:{lineno}: expected at least {needed} columns, got {len(fields)}: "
                    f"{line.rstrip()!r}"
                )
            if width is None:
                width, width_line = len(fields), lineno
            elif len(fields) != width:
                raise ValueError(
                    f"{name}:{lineno}: inconsistent column count: got {len(fields)}, but "
                    f"line {width_line} has {width}"
                )
            words.append(fields[word_column])
            for task, c in columns.items():
                labels[task].append(fields[c])
    flush()
    return sentences
