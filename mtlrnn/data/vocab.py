"""Vocabularies: string <-> int32 id maps for words, tags and characters.

- :class:`Vocabulary` (words): ``build`` puts the special tokens first (by default
  ``"<pad>"`` = 0 and ``"<unk>"`` = 1), then the words by descending count, ties broken
  alphabetically, so the same corpus always gives the same ids. ``encode`` maps unknown words
  to the unknown id.
- :class:`LabelVocabulary` (tag sets): the tags in alphabetical order with no padding id.
  Encoding an unseen tag raises ``ValueError`` naming it, unless the vocabulary was built
  with ``allow_unknown=True``, which reserves id 0 for ``"<unk>"`` and maps unseen tags there.
- Characters: :func:`char_vocab` builds a :class:`Vocabulary` of single characters
  (``"<pad>"`` = 0, ``"<unk>"`` = 1) and :func:`encode_chars` turns words into an int32
  ``[N, max_len]`` matrix of character ids.

Every vocabulary round-trips through :meth:`Vocabulary.to_dict` / ``from_dict`` (plain JSON
types) for saving in a work directory.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

import numpy as np

PAD = "<pad>"
UNK = "<unk>"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """An ordered set of tokens; a token's id is its position in ``tokens``.

    Attributes:
      tokens: all tokens, specials first; ids are positions.
      num_specials: how many leading tokens are specials (not real words).
      lowercase: whether words are lowercased before lookup (as they were when building).
      unk_token: the token unknown inputs map to, or ``None``: unknown inputs raise ValueError.
    """

    tokens: tuple[str, ...]
    num_specials: int = 0
    lowercase: bool = False
    unk_token: str | None = UNK
    index: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(self.tokens))
        index = {t: i for i, t in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            seen: set[str] = set()
            dup = sorted({t for t in self.tokens if t in seen or seen.add(t)})
            raise ValueError(f"vocabulary: tokens must be unique; repeated: {dup}")
        if not 0 <= self.num_specials <= len(self.tokens):
            raise ValueError(
                f"vocabulary: num_specials must be in [0, {len(self.tokens)}], "
                f"got {self.num_specials}"
            )
        if self.unk_token is not None and self.unk_token not in index:
            raise ValueError(f"vocabulary: unk_token {self.unk_token!r} is not among the tokens")
        object.__setattr__(self, "index", index)

    @classmethod
    def build(
        cls,
        words: Iterable[str],
        *,
        min_count: int = 1,
        lowercase: bool = False,
        specials: tuple[str, ...] = (PAD, UNK),
        unk_token: str | None = UNK,
    ) -> Vocabulary:
        """Build from a stream of words (with repetitions).

        Specials come first in the given order; then every word seen at least ``min_count``
        times (after lowercasing, if ``lowercase``), by descending count then alphabetically.
        A word equal to a special is not added again.
        """
        if min_count < 1:
            raise ValueError(f"vocabulary: min_count must be >= 1, got {min_count}")
        counts = collections.Counter(w.lower() if lowercase else w for w in words)
        special_set = set(specials)
        kept = [w for w, c in counts.items() if c >= min_count and w not in special_set]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(
            tokens=tuple(specials) + tuple(kept),
            num_specials=len(specials),
            lowercase=lowercase,
            unk_token=unk_token,
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        if not isinstance(token, str):
            return False
        return (token.lower() if self.lowercase else token) in self.index

    @property
    def unk_id(self) -> int | None:
        """The id unknown inputs map to, or ``None`` when unknown inputs are an error."""
        return None if self.unk_token is None else self.index[self.unk_token]

    @property
    def words(self) -> tuple[str, ...]:
        """The non-special tokens."""
        return self.tokens[self.num_specials :]

    def encode(self, words: Iterable[str]) -> np.ndarray:
        """Ids of ``words``, int32 ``[N]``; unknown words map to ``unk_id``.

        Raises ValueError naming the first unknown word when the vocabulary has no
        ``unk_token``.
        """
        index, unk = self.index, self.unk_id
        out = []
        for w in words:
            key = w.lower() if self.lowercase else w
            i = index.get(key, unk)
            if i is None:
                raise ValueError(self._unknown_message(w))
            out.append(i)
        return np.asarray(out, dtype=np.int32).reshape(-1)

    def _unknown_message(self, w: str) -> str:
        return f"unknown token {w!r}: not in this vocabulary of {len(self)} tokens"

    def decode(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        """Tokens of ``ids``; raises ValueError on an id outside ``[0, len(self))``."""
        out = []
        n = len(self.tokens)
        for i in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= int(i) < n:
                raise ValueError(f"vocabulary: id {i} is outside [0, {n})")
            out.append(self.tokens[int(i)])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form; :meth:`from_dict` inverts it."""
        return {
            "type": type(self).__name__,
            "tokens": list(self.tokens),
            "num_specials": self.num_specials,
            "lowercase": self.lowercase,
            "unk_token": self.unk_token,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary saved with :meth:`to_dict` (its class is restored)."""
        kind = {"Vocabulary": Vocabulary, "LabelVocabulary": LabelVocabulary}.get(
            d.get("type", cls.__name__)
        )
        if kind is None:
            raise ValueError(f"vocabulary: unknown type {d.get('type')!r} in saved dict")
        return kind(
            tokens=tuple(d["tokens"]),
            num_specials=int(d.get("num_specials", 0)),
            lowercase=bool(d.get("lowercase", False)),
            unk_token=d.get("unk_token"),
        )


class LabelVocabulary(Vocabulary):
    """A tag set: tags sorted alphabetically, no padding id.

    Built with ``allow_unknown=True`` it reserves id 0 for ``"<unk>"`` and maps unseen tags
    there; otherwise (``unk_token=None``) encoding an unseen tag raises ValueError naming it.
    """

    @classmethod
    def build_labels(cls, labels: Iterable[str], *, allow_unknown: bool = False) -> LabelVocabulary:
        """Build from a stream of tags (repetitions allowed)."""
        specials = (UNK,) if allow_unknown else ()
        tags = sorted(set(labels) - set(specials))
        return cls(
            tokens=specials + tuple(tags),
            num_specials=len(specials),
            lowercase=False,
            unk_token=UNK if allow_unknown else None,
        )

    def _unknown_message(self, w: str) -> str:
        return (
            f"unknown label {w!r}: not among the {len(self)} labels of this tag set "
            f"(build it with allow_unknown=True to map unseen labels to {UNK!r})"
        )

    @property
    def allow_unknown(self) -> bool:
        """Whether unseen tags map to ``"<unk>"`` instead of raising."""
        return self.unk_token is not None


def label_vocab(labels: Iterable[str], *, allow_unknown: bool = False) -> LabelVocabulary:
    """Shorthand for :meth:`LabelVocabulary.build_labels`."""
    return LabelVocabulary.build_labels(labels, allow_unknown=allow_unknown)


def char_vocab(
    words: Iterable[str] | Vocabulary, min_count: int = 1, *, lowercase: bool = False
) -> Vocabulary:
    """A character vocabulary (``"<pad>"`` = 0, ``"<unk>"`` = 1, then characters).

    ``words`` is either a stream of words (each occurrence counts) or a word
    :class:`Vocabulary`, whose non-special tokens are each counted once. Characters seen at
    least ``min_count`` times are kept, by descending count then by code point.
    """
    if isinstance(words, Vocabulary):
        words = words.words
    chars = (c for w in words for c in w)
    return Vocabulary.build(chars, min_count=min_count, lowercase=lowercase)


def encode_chars(words: Iterable[str], vocab: Vocabulary, max_len: int) -> np.ndarray:
    """Character ids of ``words``, int32 ``[N, max_len]``.

    Row ``i`` holds the ids of the first ``max_len`` characters of word ``i`` (longer words
    are truncated), then zeros (padding). Unknown characters map to ``vocab.unk_id`` (1 for
    :func:`char_vocab`).
    """
    if max_len < 1:
        raise ValueError(f"encode_chars: max_len must be >= 1, got {max_len}")
    words = list(words)
    out = np.zeros((len(words), max_len), dtype=np.int32)
    for i, w in enumerate(words):
        ids = vocab.encode(list(w[:max_len]))
        out[i, : len(ids)] = ids
    return out
