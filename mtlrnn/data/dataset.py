"""The in-memory dataset every data source builds: ragged sequences plus per-task labels.

A :class:`SequenceDataset` holds ``N`` examples of varying length ``L_i``. It is plain numpy
and knows nothing of batching or JAX; :mod:`mtlrnn.data.batching` pads it into batches.

Layout (``N`` examples, ``L_i`` length of example ``i``):

- ``inputs``: list of ``N`` arrays ``[L_i]`` of int32 token ids in ``[1, vocab)`` (``0`` is
  padding), or ``[L_i, F]`` float32 feature vectors for real-valued inputs.
- ``labels[task]``: token tasks: list of ``N`` arrays, int32 ``[L_i]`` (classification) or
  float32 ``[L_i, dim]`` (regression); sequence tasks: int32 ``[N]`` (classification) or
  float32 ``[N, dim]`` (regression).
- ``masks[task]``: same structure as ``labels[task]`` without the ``dim`` axis, float32 0/1.
  A task missing from ``masks`` is fully labelled.
- ``chars`` (optional, word inputs only): list of ``N`` int32 arrays ``[L_i, C]``, the
  character ids of each word (0 = padding, ``C`` the same for every example), for a
  character-level word encoder.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from mtlrnn.tasks import TaskSpec

Ragged = list[np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceDataset:
    """``N`` ragged sequences with per-task labels and optional label masks.

    Attributes:
      inputs: ``N`` arrays, int32 ``[L_i]`` token ids (0 = padding) or float32 ``[L_i, F]``.
      labels: task name -> token labels (list of ``N`` arrays ``[L_i]`` or ``[L_i, dim]``) or
        sequence labels (array ``[N]`` or ``[N, dim]``).
      masks: task name -> 0/1 float32 masks of the same structure (``[L_i]`` per example for
        token tasks, ``[N]`` for sequence tasks). Missing task: fully labelled.
      chars: ``None``, or ``N`` int32 arrays ``[L_i, C]`` of character ids per word.
    """

    inputs: Ragged
    labels: dict[str, Ragged | np.ndarray]
    masks: dict[str, Ragged | np.ndarray] = dataclasses.field(default_factory=dict)
    chars: Ragged | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """Sequence lengths, int32 ``[N]``."""
        return np.asarray([len(x) for x in self.inputs], dtype=np.int32).reshape(-1)

    def mask(self, task: str) -> Ragged | np.ndarray:
        """The label mask of ``task``: ``masks[task]``, or all ones when it is not given."""
        if task in self.masks:
            return self.masks[task]
        if isinstance(self.labels[task], np.ndarray):
            return np.ones(len(self), np.float32)
        return [np.ones(n, np.float32) for n in self.lengths]

    def subset(self, indices: Sequence[int]) -> SequenceDataset:
        """The examples at ``indices`` (in that order), labels and masks included."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)

        def take(v: Ragged | np.ndarray) -> Ragged | np.ndarray:
            return v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]

        return SequenceDataset(
            inputs=[self.inputs[i] for i in idx],
            labels={k: take(v) for k, v in self.labels.items()},
            masks={k: take(v) for k, v in self.masks.items()},
            chars=None if self.chars is None else [self.chars[i] for i in idx],
        )

    def check(self, tasks: Sequence[TaskSpec], *, vocab_size: int | None = None) -> None:
        """Check that inputs, labels and masks are consistent with ``tasks``.

        Raises ValueError naming the task and the example index at the first inconsistency:
        a missing label, wrong dtype or shape, a length that differs from the input, a class
        id outside ``[0, num_classes)``, a mask value other than 0/1, or (with ``vocab_size``)
        a token id outside ``[1, vocab_size)``.
        """
        n = len(self)
        if n == 0:
            raise ValueError("dataset: needs at least one example, got 0")
        self._check_inputs(vocab_size)
        lengths = self.lengths
        if self.chars is not None:
            self._check_chars(lengths)
        for spec in tasks:
            if spec.name not in self.labels:
                raise ValueError(
                    f"task {spec.name!r}: no labels in the dataset; it has labels for "
                    f"{sorted(self.labels)}"
                )
            if spec.level == "token":
                self._check_token(spec, lengths)
            else:
                self._check_sequence(spec)

    def _check_inputs(self, vocab_size: int | None) -> None:
        first = np.asarray(self.inputs[0])
        for i, x in enumerate(self.inputs):
            x = np.asarray(x)
            if x.ndim < 1 or x.shape[0] < 1:
                raise ValueError(
                    f"inputs[{i}]: must be a non-empty array [L_i] or [L_i, F], got shape "
                    f"{x.shape}"
                )
            if x.shape[1:] != first.shape[1:] or x.dtype != first.dtype:
                raise ValueError(
                    f"inputs[{i}]: shape {x.shape} / dtype {x.dtype} does not match inputs[0] "
                    f"({first.shape} / {first.dtype}); all examples need the same trailing "
                    "shape and dtype"
                )
            if x.ndim == 1 and not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"inputs[{i}]: token ids must be integers, got dtype {x.dtype}")
            if x.ndim == 1 and vocab_size is not None:
                lo, hi = int(x.min()), int(x.max())
                if lo < 1 or hi >= vocab_size:
                    raise ValueError(
                        f"inputs[{i}]: token ids must be in [1, {vocab_size}) (0 is padding), "
                        f"got values in [{lo}, {hi}]"
                    )

    def _check_chars(self, lengths: np.ndarray) -> None:
        chars = self.chars
        if chars is None or isinstance(chars, np.ndarray) or len(chars) != len(self):
            raise ValueError(
                f"chars: must be a list of {len(self)} arrays [L_i, C] (one per example)"
            )
        width = np.asarray(chars[0]).shape[1:]
        for i, c in enumerate(chars):
            c = np.asarray(c)
            if c.ndim != 2 or c.shape != (int(lengths[i]), *width) or not np.issubdtype(
                c.dtype, np.integer
            ):
                raise ValueError(
                    f"chars[{i}]: must be integer character ids of shape "
                    f"({int(lengths[i])}, {width[0] if width else 'C'}), got {c.shape} {c.dtype}"
                )

    def _check_token(self, spec: TaskSpec, lengths: np.ndarray) -> None:
        name, n = spec.name, len(self)
        labels = self.labels[name]
        if isinstance(labels, np.ndarray) or len(labels) != n:
            raise ValueError(
                f"task {name!r}: token-level labels must be a list of {n} arrays (one per "
                f"example), got {type(labels).__name__} of length {len(labels)}"
            )
        masks = self.masks.get(name)
        if masks is not None and (isinstance(masks, np.ndarray) or len(masks) != n):
            raise ValueError(
                f"task {name!r}: token-level masks must be a list of {n} arrays, got "
                f"{type(masks).__name__} of length {len(masks)}"
            )
        for i in range(n):
            y = np.asarray(labels[i])
            if spec.kind == "classification":
                want = (int(lengths[i]),)
            else:
                want = (int(lengths[i]), spec.dim)
            if y.shape != want:
                raise ValueError(
                    f"task {name!r}: labels[{i}] must have shape {want} (the input length"
                    f"{'' if spec.kind == 'classification' else ' and dim'}), got {y.shape}"
                )
            _check_values(spec, y, f"labels[{i}]")
            if masks is not None:
                m = np.asarray(masks[i])
                if m.shape != want[:1]:
                    raise ValueError(
                        f"task {name!r}: masks[{i}] must have shape {want[:1]}, got {m.shape}"
                    )
                _check_mask(name, m, f"masks[{i}]")

    def _check_sequence(self, spec: TaskSpec) -> None:
        name, n = spec.name, len(self)
        y = self.labels[name]
        want = (n,) if spec.kind == "classification" else (n, spec.dim)
        if not isinstance(y, np.ndarray) or y.shape != want:
            shape = y.shape if isinstance(y, np.ndarray) else type(y).__name__
            raise ValueError(
                f"task {name!r}: sequence-level labels must be an array of shape {want}, "
                f"got {shape}"
            )
        _check_values(spec, y, "labels")
        if name in self.masks:
            m = self.masks[name]
            if not isinstance(m, np.ndarray) or m.shape != (n,):
                shape = m.shape if isinstance(m, np.ndarray) else type(m).__name__
                raise ValueError(
                    f"task {name!r}: sequence-level mask must be an array of shape ({n},), "
                    f"got {shape}"
                )
            _check_mask(name, m, "masks")


def _check_values(spec: TaskSpec, y: np.ndarray, where: str) -> None:
    if spec.kind == "classification":
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"task {spec.name!r}: {where} must be integer class ids, got dtype {y.dtype}"
            )
        if y.size and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            bad = np.flatnonzero((y.reshape(-1) < 0) | (y.reshape(-1) >= spec.num_classes))[0]
            raise ValueError(
                f"task {spec.name!r}: {where} must be class ids in [0, {spec.num_classes}), "
                f"got {int(y.reshape(-1)[bad])} at flat position {int(bad)}"
            )
    else:
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(
                f"task {spec.name!r}: {where} must be floating point, got dtype {y.dtype}"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"task {spec.name!r}: {where} contains NaN or inf")


def _check_mask(name: str, m: np.ndarray, where: str) -> None:
    if m.size and not np.all((m == 0) | (m == 1)):
        raise ValueError(f"task {name!r}: {where} must contain only 0 and 1")
