"""Training progress on stderr: a bar on a terminal, a line now and then elsewhere.

Compilation is shown as such (``compiling the step for shape [32, 40]...``) and its time is
kept out of the rate and ETA. When stderr is not a terminal (batch jobs, CI, ``2> log``)
there are no carriage returns: one plain line at most every ``interval_s`` seconds, at log
steps, and at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _postfix(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


class Progress:
    """Progress of steps ``initial..total`` (see the module docstring).

    Args:
      total: the last step.
      initial: the step training starts from (a resumed run).
      interval_s: without a terminal, the least time between two lines.
      stream: where to write (default: sys.stderr at each write).
      tty: force terminal (True) or line (False) mode; default: ``stream.isatty()``.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        interval_s: float = 30.0,
        stream: Any = None,
        tty: bool | None = None,
    ) -> None:
        self.total, self.step, self.interval_s = total, initial, interval_s
        self._stream = stream
        out = self.stream
        self.tty = bool(getattr(out, "isatty", lambda: False)()) if tty is None else tty
        self._bar = None
        self._step_s: list[float] = []  # recent step times, compilation excluded
        self._last_line = -1.0e9
        self._postfix: dict[str, Any] = {}
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=out)

    @property
    def stream(self) -> Any:
        """The stream written to."""
        return self._stream if self._stream is not None else sys.stderr

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def compiling(self, shape: Sequence[int]) -> None:
        """Say that the step is being compiled for a batch of ``shape``."""
        self._write(f"compiling the step for shape [{', '.join(map(str, shape))}]...")

    def compiled(self, seconds: float) -> None:
        """Compilation took ``seconds``; it counts neither in the rate nor in the ETA."""
        self._write(f"compiled in {seconds:.1f} s")
        if self._bar is not None:
            self._bar.unpause()  # restarts tqdm's clock: the compile time is not a step

    def update(self, seconds: float, *, log: Mapping[str, Any] | None = None) -> None:
        """One step took ``seconds``; ``log`` (at log steps) is shown next to the count."""
        self.step += 1
        self._step_s = [*self._step_s[-49:], seconds]
        if log is not None:
            self._postfix = dict(log)
        if self._bar is not None:
            if log is not None:
                self._bar.set_postfix(log, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        last = self.step == self.total
        if last or (log is not None and now - self._last_line >= self.interval_s):
            self._last_line = now
            self._write(self.line())

    def line(self) -> str:
        """``train step 120/1000 (12%), loss 0.43, eta 1m05s`` from the recent step times."""
        pct = 100.0 * self.step / max(self.total, 1)
        text = f"train step {self.step}/{self.total} ({pct:.0f}%)"
        if self._postfix:
            text += ", " + _postfix(self._postfix)
        if self._step_s and self.step < self.total:
            recent = sorted(self._step_s)[len(self._step_s) // 2]
            text += f", eta {_duration(recent * (self.total - self.step))}"
        return text

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
