"""The training loop: run the compiled step over a batch stream and call hooks.

The loop dispatches steps and never reads a device value on the host between log steps: a
step's metrics are folded into a device-side window (:mod:`mtlrnn.training.window`) that is
read once per log step, so on an accelerator the host runs ahead and the device queue stays
full. Everything else -- metrics files, progress, evaluation, checkpoints, signals, a user's
own logging -- is a :class:`Hook`.

Non-finite steps (a NaN/inf loss or gradient) never update the state (the step skips them
itself); the loop learns of them at the next log step, from the window: with
``on_nonfinite="stop"`` it stops there and raises :class:`NonFiniteError` naming the first
bad step and its tasks, after the hooks' ``on_end`` (so the checkpoint hook saves the last
good state, which is the current one).

Timing: a window's seconds are the wall time between two log steps (the loop waits for the
device only there) minus compilation and the time spent in hooks, so ``tokens / seconds`` is
the throughput a user lives, data preparation and dispatch included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mtlrnn.training import window as windows
from mtlrnn.training.prefetch import Prefetch


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient (``train.on_nonfinite: stop``)."""


class Hook:
    """One part of a training run that reacts to the loop; override what you need.

    The loop calls its hooks in list order: :meth:`on_start` before the first step,
    :meth:`on_log` at each log step with the window read back on the host, :meth:`on_step`
    after every step, :meth:`on_end` once when the loop ends normally (last step, a
    :meth:`Loop.request_stop`, or a non-finite stop; not when a hook raised). ``loop.step``
    is the number of steps done, ``loop.state`` the current (device) train state. A hook
    that reads device values (``loop.state``) should do so only at the steps where it acts:
    every read waits for the device.
    """

    def on_start(self, loop: Loop) -> None:
        """Before the first step."""

    def on_log(self, loop: Loop, window: Any) -> None:
        """At a log step: ``window`` (a :class:`~mtlrnn.training.window.Window`; in a
        population run a list of them, one per seed) holds the steps since the previous log
        step."""

    def on_step(self, loop: Loop) -> None:
        """After each step (``loop.step`` steps done)."""

    def on_end(self, loop: Loop) -> None:
        """After the loop's last step, or after a stop."""


class Loop:
    """Steps ``start + 1 .. total`` of one run.

    Args:
      step_fn: the (jitted or pmapped) train step ``(state, batch) -> (state, metrics)``;
        it compiles once per batch layout (jax.jit's cache; each compilation timed).
      state: the placed train state at step ``start``.
      batches: host batches for steps ``start + 1, start + 2, ...``.
      place: moves a host batch to the device(s).
      device_metrics: a step's metrics as ``(tree, lead)`` on one device (see
        :meth:`mtlrnn.training.parallel.Placement.device_metrics`).
      task_names: the tasks, in the order of the step's ``[K]`` metrics.
      start, total: steps already done, and the last step.
      log_every: a log step every ``log_every`` steps (and at the last step).
      on_nonfinite: ``"skip"`` (count and go on) or ``"stop"``.
      hooks: called in order (see :class:`Hook`).
      on_compile: ``(shape, seconds)`` before (``seconds`` None) and after each compilation.
      population: for a population step (``S`` seeds stacked on a leading axis of the
        state, the batches and the metrics), one label per seed (e.g. ``"seed 3"``); empty
        for an ordinary step. Hooks then get a list of per-seed windows in ``on_log`` (see
        :class:`mtlrnn.training.hooks.PerSeed`, which gives a hook one seed's view).
      prefetch: batches prepared and placed ahead in a background thread
        (:class:`mtlrnn.training.prefetch.Prefetch`); 0: each in the loop, before its step.
      flops: ``(state, device_batch) -> matmul FLOPs`` of one step of that batch layout
        (:mod:`mtlrnn.training.flops`), called once per layout (its time is left out of the
        windows); None: not counted.
    """

    def __init__(
        self,
        step_fn: Any,
        state: Any,
        batches: Iterator[Mapping[str, Any]],
        *,
        place: Callable[[Mapping[str, Any]], Any],
        device_metrics: Callable[[Any], tuple[Any, bool]],
        task_names: Sequence[str],
        start: int,
        total: int,
        log_every: int,
        on_nonfinite: str = "skip",
        hooks: Sequence[Hook] = (),
        on_compile: Callable[[tuple[int, ...], float | None], None] | None = None,
        population: Sequence[str] = (),
        prefetch: int = 2,
        flops: Callable[[Any, Any], float] | None = None,
    ) -> None:
        if on_nonfinite not in ("skip", "stop"):
            raise ValueError(f"on_nonfinite: must be skip or stop; got {on_nonfinite!r}")
        self.step_fn, self.state, self.batches = step_fn, state, batches
        self.place, self.device_metrics = place, device_metrics
        self.task_names = tuple(task_names)
        self.step, self.start, self.total = start, start, total
        self.log_every, self.on_nonfinite = log_every, on_nonfinite
        self.hooks = list(hooks)
        self.on_compile = on_compile
        self.stop_reason: str | None = None
        self.compiled: dict[tuple[Any, ...], float] = {}  # batch layout -> compile seconds
        self.compile_s = 0.0
        self.population = tuple(population)
        self.prefetch = prefetch
        self.flops_fn = flops
        self.layout_flops: dict[tuple[Any, ...], float] = {}
        self.window_flops: list[float] = []  # per log window: matmul FLOPs of its steps
        self._flops = 0.0
        self.nonfinite = 0  # skipped steps so far (as of the last log step; all seeds)
        self.seed_nonfinite = [0] * len(self.population)  # the same per seed
        self.seed_tokens: list[tuple[int, ...]] = []  # per log window, per seed
        # Per log window: (steps, tokens, seconds, of those seconds the time spent getting
        # the batch from the stream and placing it on the device).
        self.windows: list[tuple[int, int, float, float]] = []

    def request_stop(self, reason: str) -> None:
        """Stop after the current step's hooks (``on_end`` still runs)."""
        self.stop_reason = reason

    @property
    def tokens(self) -> int:
        """Tokens trained on so far (as of the last log step)."""
        return sum(w[1] for w in self.windows)

    @property
    def seconds(self) -> float:
        """Timed seconds so far (as of the last log step; see the module docstring)."""
        return sum(w[2] for w in self.windows)

    @property
    def flop_per_s(self) -> float | None:
        """Achieved matmul FLOP/s over the timed seconds (None: FLOPs not counted)."""
        if self.flops_fn is None or not self.seconds:
            return None
        return sum(self.window_flops) / self.seconds

    @property
    def data_seconds(self) -> float:
        """Of :attr:`seconds`, the time the loop waited for batches (stream and placement)."""
        return sum(w[3] for w in self.windows)

    def _step(self, batch: Mapping[str, Any], device_batch: Any) -> Any:
        """One step through ``step_fn`` (jax.jit's own cache picks the executable). The first
        call for a batch layout (every leaf's shape and dtype) compiles: it is timed and
        announced, and its seconds are left out of the window's time."""
        layout = tuple(
            (np.shape(x), np.asarray(x).dtype.str) for x in jax.tree.leaves(batch)
        )
        if layout in self.compiled:
            self._flops += self.layout_flops.get(layout, 0.0)
            return self.step_fn(self.state, device_batch)
        if self.flops_fn is not None:
            t0 = time.perf_counter()
            self.layout_flops[layout] = float(self.flops_fn(self.state, device_batch))
            self._flops += self.layout_flops[layout]
            self._excluded += time.perf_counter() - t0
        shape = tuple(np.shape(batch["inputs"]))
        if self.on_compile is not None:
            self.on_compile(shape, None)
        t0 = time.perf_counter()
        out = self.step_fn(self.state, device_batch)  # returns once compiled and dispatched
        seconds = time.perf_counter() - t0
        self.compiled[layout] = seconds
        self.compile_s += seconds
        self._excluded += seconds
        if self.on_compile is not None:
            self.on_compile(shape, seconds)
        return out

    def _log(self, acc: Any) -> NonFiniteError | None:
        """Close the window (this waits for the device), call ``on_log``; the failure to
        raise under ``on_nonfinite="stop"``, if any."""
        if self.population:
            seeds = windows.read_population(acc, self.task_names)
            shown: windows.Window | list[windows.Window] = seeds
            self.seed_tokens.append(tuple(w.tokens for w in seeds))
            for i, w in enumerate(seeds):
                self.seed_nonfinite[i] += w.nonfinite
        else:
            seeds = [windows.read(acc, self.task_names)]
            shown = seeds[0]
        seconds = time.perf_counter() - self._window_t0 - self._excluded
        tokens = sum(w.tokens for w in seeds)
        self.windows.append((seeds[0].steps, tokens, max(seconds, 0.0), self._data_s))
        self.window_flops.append(self._flops)
        self._flops = 0.0
        self.nonfinite += sum(w.nonfinite for w in seeds)
        self._excluded = self._data_s = 0.0
        for hook in self.hooks:
            self._timed(lambda hook=hook: hook.on_log(self, shown))
        self._window_t0 = time.perf_counter()
        bad = [(i, w) for i, w in enumerate(seeds) if w.nonfinite]
        if bad and self.on_nonfinite == "stop":
            i, window = min(bad, key=lambda item: item[1].first_bad_step or 0)
            who = f"{self.population[i]}: " if self.population else ""
            return NonFiniteError(
                f"train.on_nonfinite=stop: {who}non-finite {window.nonfinite_what()} at step "
                f"{window.first_bad_step}; the update was not applied"
            )
        return None

    def _timed(self, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        fn()
        self._excluded += time.perf_counter() - t0

    def run(self) -> str:
        """Train; returns why it ended: ``"completed"`` or the stop reason.

        Raises:
          NonFiniteError: ``on_nonfinite="stop"`` and a step in the last window was not
            finite (after the hooks' ``on_end``).
        """
        self._excluded = self._data_s = 0.0
        for hook in self.hooks:
            self._timed(lambda hook=hook: hook.on_start(self))
        acc = windows.init(len(self.task_names), len(self.population))
        self._window_t0 = time.perf_counter()
        failure: NonFiniteError | None = None
        logged = True
        feed: Any = (
            Prefetch(self.batches, self.place, self.prefetch)
            if self.prefetch
            else ((b, self.place(b)) for b in self.batches)
        )
        try:
            while self.step < self.total:
                t0 = time.perf_counter()
                item = next(feed, None)
                if item is None:
                    break
                batch, device_batch = item
                self._data_s += time.perf_counter() - t0
                self.state, metrics = self._step(batch, device_batch)
                self.step += 1
                tree, lead = self.device_metrics(metrics)
                acc = windows.fold(acc, tree, np.int32(self.step), lead)
                logged = self.step % self.log_every == 0 or self.step == self.total
                if logged:
                    failure = self._log(acc)
                    acc = windows.init(len(self.task_names), len(self.population))
                    if failure is not None:
                        self.stop_reason = "nonfinite"
                        break
                for hook in self.hooks:
                    self._timed(lambda hook=hook: hook.on_step(self))
                if self.stop_reason is not None:
                    break
        finally:
            if isinstance(feed, Prefetch):
                feed.close()
        if not logged:  # stopped between log steps: the partial window is logged too
            failure = self._log(acc)
            if failure is not None:
                self.stop_reason = "nonfinite"
        for hook in self.hooks:
            hook.on_end(self)
        if failure is not None:
            raise failure
        return self.stop_reason or "completed"
