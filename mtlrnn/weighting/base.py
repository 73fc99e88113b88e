"""The weighting-strategy contract shared by every loss-weighting and aggregation method.

A strategy is a NamedTuple of pure functions, in optax's shape:

* ``init(num_tasks) -> state``: the initial state pytree (may be an empty tuple).
* ``combine(state, losses, grads=None, key=None) -> (out, state, info)``:

  - loss-based strategies (``requires == "losses"``) read ``losses: [K]`` and return
    weights ``out: [K]``; the trainer minimises ``sum(stop_gradient(out) * losses)``.
  - gradient-based strategies (``requires == "grads"``) also read ``grads: [K, D]`` (or a
    pytree whose leaves have a leading ``K`` axis) and return the update direction
    ``out: [D]`` (or the matching pytree).

  ``info`` is a dict of arrays for logging; ``info["weights"]: [K]`` where the method
  defines weights.

Everything is jittable and free of Python-side mutable state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple

import chex

State = Any
Info = dict[str, chex.Array]
InitFn = Callable[[int], State]
CombineFn = Callable[..., tuple[Any, State, Info]]


class Strategy(NamedTuple):
    """A weighting strategy: two pure functions and what they need.

    Attributes:
      name: registry name.
      requires: ``"losses"`` (loss vector only) or ``"grads"`` (per-task gradients too).
      init: ``num_tasks -> state``.
      combine: ``(state, losses [K], grads=None, key=None) -> (out, state, info)``.
    """

    name: str
    requires: Literal["losses", "grads"]
    init: InitFn
    combine: CombineFn


def check_num_tasks(num_tasks: int) -> None:
    """Raise ValueError unless ``num_tasks`` is a positive int."""
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
