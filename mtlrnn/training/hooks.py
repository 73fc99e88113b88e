"""The hooks of ``mtlrnn train``: metrics log and progress, evaluation, checkpoints, signals.

Each is a :class:`~mtlrnn.training.loop.Hook`; :func:`mtlrnn.training.run.fit` builds them from the
config, in this order: metrics log, evaluation (and best checkpoint), periodic checkpoints,
the user's hooks, then the stop on a signal. They read device values only at the steps where
they act (log steps, evaluation steps, checkpoint steps).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlrnn.training.checkpoint import improves
from mtlrnn.training.loop import Hook
from mtlrnn.training.loop import Loop
from mtlrnn.training.window import Window


def task_dict(names: Sequence[str], values: Any) -> dict[str, float]:
    """``{task name: float}`` from a ``[K]`` vector in task order."""
    return {name: float(v) for name, v in zip(names, np.asarray(values), strict=True)}


class MetricsLog(Hook):
    """One record per log step in ``writer`` (metrics.jsonl, TensorBoard), progress, and the
    skipped (non-finite) steps: a record ``{"step": first, "nonfinite": what,
    "skipped_steps": total}`` per window that had any, and a warning under ``skip``.

    Args:
      writer: has ``write(record)``.
      progress: a :class:`mtlrnn.training.progress.Progress` (or None).
      warn: prints a warning line.
    """

    def __init__(self, writer: Any, progress: Any = None, warn: Callable[[str], None] = print):
        self.writer, self.progress, self.warn = writer, progress, warn
        self._shown: dict[str, str] | None = None
        self._step_s = 0.0

    def on_log(self, loop: Loop, window: Window) -> None:
        if window.nonfinite:
            what = window.nonfinite_what()
            first = window.first_bad_step
            self.writer.write(
                {"step": first, "nonfinite": what, "skipped_steps": loop.nonfinite}
            )
            if loop.on_nonfinite == "skip":
                more = (
                    f" and {window.nonfinite - 1} more step(s) up to step {loop.step}"
                    if window.nonfinite > 1
                    else ""
                )
                self.warn(
                    f"step {first}: non-finite {what}{more}; update skipped "
                    f"({loop.nonfinite} so far)"
                )
        steps, tokens, seconds, data_s = loop.windows[-1]
        self._step_s = seconds / max(steps, 1)
        last = window.last
        record = {
            "step": loop.step,
            "loss": float(last["loss"]),
            "losses": task_dict(loop.task_names, last["losses"]),
            "weights": task_dict(loop.task_names, last["weights"]),
            "lr": float(last["lr"]),
            "grad_norm": float(last["grad_norm"]),
            "tokens_per_s": tokens / max(seconds, 1e-9),
            "step_time_ms": 1e3 * self._step_s,
            "data_ms": 1e3 * data_s / max(steps, 1),
        }
        if loop.flops_fn is not None and loop.window_flops:  # the whole (population) step's
            record["flop_per_s"] = loop.window_flops[-1] / max(seconds, 1e-9)
        self.writer.write(record)
        self._shown = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}

    def on_step(self, loop: Loop) -> None:
        if self.progress is not None:
            self.progress.update(self._step_s, log=self._shown)
        self._shown = None


class Evaluate(Hook):
    """Every ``every`` steps (not at the last step: the run evaluates after the loop), call
    ``evaluate(state) -> flat metrics`` and write ``{"step": n, "eval": metrics}``; then
    ``after(state, metrics, step)`` (e.g. save the best checkpoint)."""

    def __init__(
        self,
        every: int,
        evaluate: Callable[[Any], Mapping[str, float]],
        writer: Any,
        after: Callable[[Any, Mapping[str, float], int], None] | None = None,
    ) -> None:
        self.every, self.evaluate, self.writer, self.after = every, evaluate, writer, after
        self.last: tuple[int, Mapping[str, float]] | None = None  # (step, metrics)

    def on_step(self, loop: Loop) -> None:
        if not self.every or loop.step % self.every or loop.step >= loop.total:
            return
        flat = self.evaluate(loop.state)
        self.last = (loop.step, flat)
        self.writer.write({"step": loop.step, "eval": dict(flat)})
        if self.after is not None:
            self.after(loop.state, flat, loop.step)


class EarlyStop(Hook):
    """Stop the loop (reason ``"early_stop"``) once ``metric`` of the evaluations of
    ``evaluate`` (an :class:`Evaluate` earlier in the hook list) has not improved on its best
    for ``patience`` evaluations in a row. ``history``: the evaluations before this loop's
    first step (a resumed run's), as ``(step, metrics)``, so a resume stops where the
    uninterrupted run would.

    Attributes:
      best, best_step: the best value so far and its step (None before any evaluation).
    """

    def __init__(
        self,
        evaluate: Evaluate,
        metric: str,
        mode: str,
        patience: int,
        history: Sequence[tuple[int, Mapping[str, float]]] = (),
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode: must be max or min; got {mode!r}")
        self.evaluate, self.metric, self.mode, self.patience = evaluate, metric, mode, patience
        self.best: float | None = None
        self.best_step: int | None = None
        self.since = 0  # evaluations since the best
        for step, flat in history:
            self._see(step, flat)

    def _see(self, step: int, flat: Mapping[str, float]) -> None:
        value = flat.get(self.metric)
        if improves(value, self.best, self.mode):  # missing or non-finite: no improvement
            self.best, self.best_step, self.since = float(value), step, 0
        else:
            self.since += 1

    def on_step(self, loop: Loop) -> None:
        last = self.evaluate.last
        if last is None or last[0] != loop.step:
            return
        self._see(*last)
        if self.since >= self.patience:
            loop.request_stop("early_stop")


class Checkpoints(Hook):
    """``save(state, step)`` every ``every`` steps, at the last step, and when the loop ends
    early (a signal, a non-finite stop): the state saved is always one that every applied
    update produced (a non-finite step never changes it)."""

    def __init__(self, save: Callable[[Any, int], None], every: int) -> None:
        self.save, self.every = save, every
        self.saved: int | None = None

    def _save(self, loop: Loop) -> None:
        if self.saved != loop.step:
            self.save(loop.state, loop.step)
            self.saved = loop.step

    def on_step(self, loop: Loop) -> None:
        if loop.step == loop.total or (self.every and loop.step % self.every == 0):
            self._save(loop)

    def on_end(self, loop: Loop) -> None:
        if loop.step > loop.start:
            self._save(loop)


class Profile(Hook):
    """Trace steps ``start + 1 .. stop`` with ``jax.profiler`` into ``directory`` (the device
    work of those steps: the trace ends after waiting for the last one)."""

    def __init__(self, start: int, stop: int, directory: str) -> None:
        self.start, self.stop, self.directory = start, stop, directory
        self.active = False

    def _begin(self) -> None:
        import jax

        jax.profiler.start_trace(self.directory)
        self.active = True

    def _finish(self, loop: Loop) -> None:
        import jax

        if self.active:
            jax.block_until_ready(loop.state)
            jax.profiler.stop_trace()
            self.active = False

    def on_start(self, loop: Loop) -> None:
        if self.start <= loop.step < self.stop:
            self._begin()

    def on_step(self, loop: Loop) -> None:
        if loop.step == self.start and not self.active:
            self._begin()
        elif loop.step == self.stop:
            self._finish(loop)

    def on_end(self, loop: Loop) -> None:
        self._finish(loop)


class StopOnSignal(Hook):
    """Stop the loop once ``signal()`` names a signal (checked after each step)."""

    def __init__(self, signal: Callable[[], str | None]) -> None:
        self.signal = signal

    def on_step(self, loop: Loop) -> None:
        name = self.signal()
        if name is not None:
            loop.request_stop(name)


def median_step_ms(loop: Loop) -> float:
    """The median over log windows of the mean step time, in ms (nan before any window)."""
    per_step = [seconds / steps for steps, _, seconds, _ in loop.windows if steps]
    return 1e3 * statistics.median(per_step) if per_step else float("nan")


class SeedView:
    """One seed's view of a population :class:`Loop`: ``state`` is that seed's slice of the
    stacked state, ``nonfinite`` and ``windows`` count its own steps and tokens; everything
    else (step, total, request_stop, ...) is the loop's."""

    def __init__(self, loop: Loop, index: int) -> None:
        self._loop, self._index = loop, index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    @property
    def state(self) -> Any:
        import jax

        return jax.tree.map(lambda x: x[self._index], self._loop.state)

    @property
    def nonfinite(self) -> int:
        return self._loop.seed_nonfinite[self._index]

    @property
    def windows(self) -> list[tuple[int, int, float, float]]:
        return [
            (steps, tokens[self._index], seconds, data_s)
            for (steps, _, seconds, data_s), tokens in zip(
                self._loop.windows, self._loop.seed_tokens, strict=True
            )
        ]

    @property
    def tokens(self) -> int:
        return sum(tokens[self._index] for tokens in self._loop.seed_tokens)


class PerSeed(Hook):
    """``hook`` run for seed ``index`` of a population loop: it sees a :class:`SeedView` of
    the loop and that seed's window, as if it were the hook of an ordinary run."""

    def __init__(self, hook: Hook, index: int) -> None:
        self.hook, self.index = hook, index

    def _view(self, loop: Loop) -> Any:
        return SeedView(loop, self.index)

    def on_start(self, loop: Loop) -> None:
        self.hook.on_start(self._view(loop))

    def on_log(self, loop: Loop, window: Any) -> None:
        self.hook.on_log(self._view(loop), window[self.index])

    def on_step(self, loop: Loop) -> None:
        self.hook.on_step(self._view(loop))

    def on_end(self, loop: Loop) -> None:
        self.hook.on_end(self._view(loop))
