"""Batches prepared and placed on the device ahead of use, in a background thread.

The loop's batches come from a host stream (gather, pad, stack) and are copied to the device;
on an accelerator a step takes about a millisecond, so doing that work between steps leaves
the device idle. :class:`Prefetch` runs the stream and the placement in a daemon thread,
``depth`` batches ahead, and hands out ``(host_batch, device_batch)`` pairs in stream order.
The stream stays a pure function of its start step: prefetching only reads ahead of it, and a
stopped run resumes the stream at its checkpoint's step, not where the thread got to.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

_END = object()


class Prefetch:
    """Iterate over ``(batch, place(batch))`` for the batches of ``batches``, prepared up to
    ``depth`` ahead in a background thread. An exception in the stream or the placement is
    raised by ``next`` where that batch would have come; :meth:`close` stops the thread (call
    it when done, e.g. through ``with``)."""

    def __init__(
        self,
        batches: Iterator[Mapping[str, Any]],
        place: Callable[[Mapping[str, Any]], Any],
        depth: int = 2,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth: must be >= 1, got {depth}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._fill, args=(iter(batches), place), name="mtlrnn-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Put ``item`` unless asked to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches: Iterator[Mapping[str, Any]], place: Callable[..., Any]) -> None:
        try:
            for batch in batches:
                if not self._put((batch, place(batch))):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failure(e))
            return
        self._put(_END)

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> tuple[Mapping[str, Any], Any]:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread and drop what it prepared."""
        self._stop.set()
        self._done = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
