"""Step statistics of one log window, accumulated on the device.

The loop never reads a step's metrics on the host: each step's metrics are folded into a
small device pytree by one jitted function (:func:`fold`), and the host reads that pytree
once per log window (:func:`read`). So the host never waits for the device between log steps
and the device queue stays full. Folded per window: the steps and tokens, the non-finite
(skipped) steps with the first one and which task losses it had non-finite, and the last
step's loss, per-task losses and weights, learning rate and gradient norm (what a log
record shows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LAST_KEYS = ("loss", "losses", "weights", "lr", "grad_norm")
NO_STEP = np.iinfo(np.int32).max


def init(num_tasks: int, population: int = 0) -> dict[str, Any]:
    """An empty window for ``num_tasks`` tasks (host numpy; placed on the first fold).

    ``population = S > 0``: the window of a population step (metrics with a leading seed
    axis): every statistic but ``steps`` gets a leading ``[S]`` axis, one row per seed.
    """
    lead = (population,) if population else ()
    return {
        "steps": np.int32(0),
        "tokens": np.zeros(lead, np.int32),
        "nonfinite": np.zeros(lead, np.int32),
        "first_bad_step": np.full(lead, NO_STEP, np.int32),
        "first_bad_finite": np.ones((*lead, num_tasks), bool),
        "loss": np.full(lead, np.nan, np.float32),
        "losses": np.full((*lead, num_tasks), np.nan, np.float32),
        "weights": np.full((*lead, num_tasks), np.nan, np.float32),
        "lr": np.full(lead, np.nan, np.float32),
        "grad_norm": np.full(lead, np.nan, np.float32),
    }


def _fold(
    window: Mapping[str, Any], metrics: Mapping[str, Any], step: Any, lead: bool = False
) -> dict[str, Any]:
    if lead:  # one device's rows of pmapped metrics: [1, ...]
        metrics = jax.tree.map(lambda x: x[0], metrics)
    bad = metrics["nonfinite"].astype(bool)
    first = bad & (window["nonfinite"] == 0)  # the window's first non-finite step
    out = {
        "steps": window["steps"] + 1,
        "tokens": window["tokens"] + metrics["tokens"].astype(jnp.int32),
        "nonfinite": window["nonfinite"] + bad.astype(jnp.int32),
        "first_bad_step": jnp.where(first, step, window["first_bad_step"]),
        "first_bad_finite": jnp.where(
            first[..., None], metrics["finite_losses"], window["first_bad_finite"]
        ),
    }
    for key in LAST_KEYS:
        out[key] = jnp.asarray(metrics[key], jnp.float32)
    return out


fold = jax.jit(_fold, donate_argnums=0, static_argnums=3)
"""``fold(window, metrics, step, lead=False) -> window``: add one step (``step``: its 1-based
number; ``lead``: the metrics carry a leading axis of one device's rows, see
:meth:`mtlrnn.training.parallel.Placement.device_metrics`)."""


@dataclasses.dataclass(frozen=True)
class Window:
    """A log window read back on the host.

    Attributes:
      steps, tokens: steps and tokens (real time steps) in the window.
      nonfinite: steps whose loss or gradient was non-finite (their update was skipped).
      first_bad_step: the first of them (1-based), or ``None``.
      bad_tasks: the tasks whose loss was non-finite at ``first_bad_step`` (empty: the
        gradient was).
      last: the last step's ``loss``, ``losses`` [K], ``weights`` [K], ``lr``, ``grad_norm``.
    """

    steps: int
    tokens: int
    nonfinite: int
    first_bad_step: int | None
    bad_tasks: tuple[str, ...]
    last: dict[str, np.ndarray]

    def nonfinite_what(self) -> str:
        """``loss of task(s) a, b`` or ``gradient``: what was non-finite at the first bad step."""
        if self.bad_tasks:
            return f"loss of task(s) {', '.join(self.bad_tasks)}"
        return "gradient"


def read(window: Mapping[str, Any], task_names: tuple[str, ...]) -> Window:
    """The host copy of ``window`` (this waits for every step folded into it)."""
    return _from_host(jax.device_get(dict(window)), task_names)


def read_population(window: Mapping[str, Any], task_names: tuple[str, ...]) -> list[Window]:
    """The host copy of a population window (see :func:`init`): one :class:`Window` per seed."""
    host = jax.device_get(dict(window))
    rows = len(np.asarray(host["tokens"]))
    return [
        _from_host(
            {k: v if k == "steps" else np.asarray(v)[s] for k, v in host.items()}, task_names
        )
        for s in range(rows)
    ]


def _from_host(host: Mapping[str, Any], task_names: tuple[str, ...]) -> Window:
    bad = int(host["first_bad_step"])
    finite = np.asarray(host["first_bad_finite"], bool)
    return Window(
        steps=int(host["steps"]),
        tokens=int(host["tokens"]),
        nonfinite=int(host["nonfinite"]),
        first_bad_step=None if bad == NO_STEP else bad,
        bad_tasks=tuple(n for n, ok in zip(task_names, finite, strict=True) if not ok)
        if bad != NO_STEP
        else (),
        last={k: np.asarray(host[k]) for k in LAST_KEYS},
    )
