"""Task specifications: what each head predicts and how it is scored.

A :class:`TaskSpec` is plain static data (hashable, no arrays), so it can be closed over by
jitted code. Tasks are addressed by name at the edges (configs, logs, summaries) and by
their position on a stacked ``[K]`` axis inside jitted code.

Label conventions for a batch (``B`` batch, ``L`` time, ``C`` classes):

=========================  ==============================  ======================
level / kind               label                           mask
=========================  ==============================  ======================
token / classification     int32 ``[B, L]`` in ``[0, C)``  ``[B, L]`` (0 or 1)
token / regression         float32 ``[B, L, dim]``         ``[B, L]``
sequence / classification  int32 ``[B]``                   ``[B]``
sequence / regression      float32 ``[B, dim]``            ``[B]``
=========================  ==============================  ======================

Token masks are combined with the sequence lengths, so padded steps never count.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Level = Literal["token", "sequence"]
Kind = Literal["classification", "regression"]

LEVELS: tuple[str, ...] = ("token", "sequence")
KINDS: tuple[str, ...] = ("classification", "regression")
LOSSES: dict[str, tuple[str, ...]] = {
    "classification": ("cross_entropy",),
    "regression": ("mse", "huber"),
}
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "regression": ("mse", "mae"),
}
POOLINGS: tuple[str, ...] = ("last", "mean", "max")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One prediction task on top of the shared trunk.

    Attributes:
      name: unique task name; the key in configs, logs and summaries.
      level: ``"token"`` (one prediction per time step) or ``"sequence"`` (one per sequence).
      kind: ``"classification"`` or ``"regression"``.
      num_classes: number of classes (classification only, >= 2).
      dim: output dimension (regression only, >= 1).
      loss: ``"cross_entropy"`` for classification; ``"mse"`` or ``"huber"`` for regression.
      metrics: metric names reported in evaluation; defaults to all metrics of the kind.
      weight: fixed loss weight used by the ``fixed`` weighting strategy.
      loss_scale: the task's loss is multiplied by this before any weighting (every method sees
        the scaled loss; metrics are unchanged): a knob for studying loss-scale imbalance.
      label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
      huber_delta: the Huber loss threshold (``loss="huber"`` only).
      pooling: how a sequence-level head pools trunk states: ``"last"`` valid state,
        ``"mean"`` or ``"max"`` over valid steps (sequence level only).
    """

    name: str
    level: Level
    kind: Kind
    num_classes: int = 0
    dim: int = 1
    loss: str = ""
    metrics: tuple[str, ...] = ()
    weight: float = 1.0
    loss_scale: float = 1.0
    label_smoothing: float = 0.0
    huber_delta: float = 1.0
    pooling: str = "last"

    def __post_init__(self) -> None:
        def fail(field: str, msg: str) -> None:
            raise ValueError(f"task {self.name!r}: {field} {msg}")

        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")
        if self.level not in LEVELS:
            fail("level", f"must be one of {LEVELS}, got {self.level!r}")
        if self.kind not in KINDS:
            fail("kind", f"must be one of {KINDS}, got {self.kind!r}")
        if not self.loss:
            object.__setattr__(self, "loss", LOSSES[self.kind][0])
        if self.loss not in LOSSES[self.kind]:
            fail("loss", f"must be one of {LOSSES[self.kind]} for {self.kind}, got {self.loss!r}")
        if not self.metrics:
            object.__setattr__(self, "metrics", METRICS[self.kind])
        object.__setattr__(self, "metrics", tuple(self.metrics))
        for m in self.metrics:
            if m not in METRICS[self.kind]:
                fail("metrics", f"must be drawn from {METRICS[self.kind]}, got {m!r}")
        if self.kind == "classification" and self.num_classes < 2:
            fail("num_classes", f"must be >= 2 for classification, got {self.num_classes}")
        if self.kind == "regression" and self.dim < 1:
            fail("dim", f"must be >= 1 for regression, got {self.dim}")
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.huber_delta <= 0:
            fail("huber_delta", f"must be > 0, got {self.huber_delta}")
        if self.weight < 0:
            fail("weight", f"must be >= 0, got {self.weight}")
        if not self.loss_scale > 0:
            fail("loss_scale", f"must be > 0, got {self.loss_scale}")
        if self.pooling not in POOLINGS:
            fail("pooling", f"must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def out_dim(self) -> int:
        """Width of this task's head output: classes or regression dimension."""
        return self.num_classes if self.kind == "classification" else self.dim

    @property
    def group(self) -> tuple[str, str]:
        """Heads with the same ``(level, kind)`` are stacked and applied in one vmapped call."""
        return (self.level, self.kind)

    def replace(self, **changes: object) -> TaskSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def check_unique(specs: tuple[TaskSpec, ...] | list[TaskSpec]) -> tuple[TaskSpec, ...]:
    """Validate a task list: non-empty with unique names. Returns it as a tuple."""
    specs = tuple(specs)
    if not specs:
        raise ValueError("at least one task is required")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"task names must be unique; repeated: {dup}")
    return specs
