"""Reader for CoNLL-2000/2003-style column files.

Format: one token per line, whitespace-separated columns (e.g. CoNLL-2003 NER:
``word POS chunk NER``), a blank line between sentences. Lines starting with
``-DOCSTART-`` are document separators and are skipped, together with the blank line that
follows them. Every non-blank, non-``-DOCSTART-`` line of a file must have the same number
of columns. Files are UTF-8; a byte that is not is reported with its line and column.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping

from mtlrnn.data.text import utf8_error

DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words and, per task, one label string per word."""

    words: list[str]
    labels: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.words)


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 file; a byte that is not UTF-8 names its line."""
    try:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError:
        raise utf8_error(path, "column-file text") from None


def _needed_columns(columns: Mapping[str, int], word_column: int) -> int:
    """How many columns a token line needs; a ValueError for a bad column index."""
    indices = {"word_column": word_column, **{f"column of {t!r}": c for t, c in columns.items()}}
    for what, idx in indices.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValueError(f"read_columns: {what} must be a non-negative int, got {idx!r}")
    return max(indices.values()) + 1


def _token_fields(path: str, needed: int) -> Iterator[list[str] | None]:
    """The fields of each token line of ``path``, in order, and ``None`` for each line that
    ends a sentence (blank or ``-DOCSTART-``).

    A ValueError names the first line with fewer than ``needed`` fields, or whose field
    count differs from the file's first token line.
    """
    width: int | None = None
    width_line = 0
    for lineno, line in _numbered_lines(path):
        fields = line.split()
        if not fields or fields[0].startswith(DOCSTART):
            yield None
            continue
        if len(fields) < needed:
            raise ValueError(
                f"{path}:{lineno}: expected at least {needed} columns, got {len(fields)}: "
                f"{line.rstrip()!r}"
            )
        if width is None:
            width, width_line = len(fields), lineno
        elif len(fields) != width:
            raise ValueError(
                f"{path}:{lineno}: inconsistent column count: got {len(fields)}, but "
                f"line {width_line} has {width}"
            )
        yield fields


def _sentence_rows(fields: Iterable[list[str] | None]) -> Iterator[list[list[str]]]:
    """Runs of token lines between sentence ends; empty sentences yield nothing."""
    for is_token, rows in itertools.groupby(fields, key=lambda f: f is not None):
        if is_token:
            yield list(rows)


def _sentence(rows: list[list[str]], columns: Mapping[str, int], word_column: int) -> Sentence:
    """The sentence whose token lines have the fields ``rows``."""
    return Sentence(
        words=[f[word_column] for f in rows],
        labels={task: [f[c] for f in rows] for task, c in columns.items()},
    )


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
        the file, line number and expected column count); a line whose column count
        differs from the file's first token line; or a byte that is not UTF-8 (naming the
        file, line and column).
    """
    needed = _needed_columns(columns, word_column)
    fields = _token_fields(os.fspath(path), needed)
    return [_sentence(rows, columns, word_column) for rows in _sentence_rows(fields)]
