"""What a run writes and shows: metrics.jsonl, TensorBoard events, plots, the result table,
and the ``mtlrnn`` logger.

Results (the result table, JSON) go to stdout; progress, notices and warnings to stderr.
Notices and warnings go through Python's :mod:`logging` (logger ``mtlrnn``): the command
line shows them as ``mtlrnn: ...`` / ``mtlrnn: warning: ...`` lines; a library user
configures logging as they like (:func:`fit` with ``verbose=True`` adds the same stderr
handler when nothing is configured).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


LOGGER = logging.getLogger("mtlrnn")


class _StderrHandler(logging.Handler):
    """Writes ``mtlrnn: message`` (``mtlrnn: warning: message``) to the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            sys.stderr.write(f"mtlrnn: {level}{record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 (logging must never raise)
            self.handleError(record)


class _HandledTaskErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records. orbax reads a checkpoint
    in asyncio tasks; when a damaged checkpoint fails to restore, mtlrnn handles the error
    (moves the checkpoint aside, warns, restores the previous one), but the failed task is
    garbage-collected later and asyncio would print its traceback on stderr as if unhandled."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task exception was never retrieved")


def configure_logging(level: int = logging.INFO, *, force: bool = True) -> None:
    """Show the ``mtlrnn`` logger's records at ``level`` and above on stderr.

    With ``force=False`` nothing changes when the ``mtlrnn`` logger or the root logger
    already has handlers (the user configured logging).
    """
    if not force and (LOGGER.handlers or logging.getLogger().handlers):
        if LOGGER.level == logging.NOTSET:
            LOGGER.setLevel(level)
        return
    for handler in [h for h in LOGGER.handlers if isinstance(h, _StderrHandler)]:
        LOGGER.removeHandler(handler)
    LOGGER.addHandler(_StderrHandler())
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _HandledTaskErrors) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_HandledTaskErrors())


class MetricsWriter:
    """Writes one JSON object per logged step to a fresh ``metrics.jsonl`` (and TensorBoard).

    TensorBoard event files are written with tensorboardX when ``tensorboard`` is True.
    """

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = False) -> None:
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.history: list[dict[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record: flat scalars and one level of dicts (e.g. ``losses[task]``)."""
        record = json_safe(dict(record))
        self.history.append(record)
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key == "step":
                    continue
                if isinstance(value, Mapping):
                    for sub, v in value.items():
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            self._tb.add_scalar(f"{key}/{sub}", v, step)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


#: Up to this many logged points a curve is drawn with markers (so one point still shows).
_MARKERS_UP_TO = 30


def _constant(values: Sequence[Sequence[float]]) -> bool:
    """Whether every task's series is one value throughout (e.g. fixed weights)."""
    arr = np.asarray(values, dtype=np.float64)  # [steps, K]
    if arr.size == 0 or not np.isfinite(arr).all():
        return False
    return bool(np.all(np.ptp(arr, axis=0) <= 1e-6 * np.maximum(np.abs(arr[0]), 1e-12)))


def _save_figure(fig: Any, path: str) -> None:
    import io

    from mtlrnn.fileio import atomic_writer

    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    with atomic_writer(path, "wb") as f:
        f.write(buf.getvalue())


def history_figures(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures of :func:`plot_history`: ``{file name: matplotlib Figure}``.

    Every logged point is drawn (with markers when there are few, so a short run's plot is
    never empty). When every task weight is constant over the run (``equal``, ``fixed``,
    ...) the weights figure shows them as bars and says so, instead of flat lines drawn on
    top of each other. No weights figure for methods that define no task weights.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if "losses" in r]
    if not train:
        return {}
    steps = [r["step"] for r in train]
    marker = "o" if len(train) <= _MARKERS_UP_TO else None
    figures = {}
    for key, title, fname, log in (
        ("losses", "training loss per task", "losses.png", True),
        ("weights", "task weights", "weights.png", False),
    ):
        tasks = list(train[0][key])
        values = [[np.nan if r[key].get(t) is None else r[key][t] for t in tasks] for r in train]
        arr = np.asarray(values, dtype=np.float64)  # [steps, K]
        if np.isnan(arr).all():
            continue  # e.g. a gradient method that defines no task weights
        fig, ax = plt.subplots(figsize=(7, 4))
        if key == "weights" and _constant(values):
            ax.bar(range(len(tasks)), arr[0], color="tab:blue", alpha=0.8)
            ax.set_xticks(range(len(tasks)), tasks)
            ax.set_ylabel("weight")
            ax.set_title(f"task weights: constant over the run (steps {steps[0]}-{steps[-1]})")
        else:
            for j, task in enumerate(tasks):
                ax.plot(steps, arr[:, j], label=task, marker=marker, markersize=4)
            ax.set_xlabel("step")
            ax.set_title(title if len(train) > 1 else f"{title} (one logged step)")
            finite = arr[np.isfinite(arr)]
            if log and finite.size and np.all(finite > 0):
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        figures[fname] = fig
    return figures


def plot_history(history: Sequence[Mapping[str, Any]], directory: str | os.PathLike) -> list[str]:
    """Draw ``losses.png`` (per-task training loss) and ``weights.png`` into ``directory``
    (see :func:`history_figures`); files are replaced atomically. Returns the paths."""
    import matplotlib.pyplot as plt

    figures = history_figures(history)
    written = []
    if figures:
        os.makedirs(directory, exist_ok=True)
    for fname, fig in figures.items():
        path = os.path.join(os.fspath(directory), fname)
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def result_table(
    evals: Mapping[str, Mapping[str, Mapping[str, float]]],
    bayes: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    *,
    metrics: Mapping[str, Sequence[str]],
) -> str:
    """A plain-text table: one row per (task, metric), one column per split, plus the
    Bayes-optimal score on the last split and the gap to it where known."""
    splits = list(evals)
    ref = splits[-1] if splits else None
    header = ["task", "metric", *splits]
    if bayes:
        header += [f"bayes({ref})", "gap"]
    rows = [header]
    for task, names in metrics.items():
        for metric in names:
            row = [task, metric, *(_fmt(evals[s].get(task, {}).get(metric)) for s in splits)]
            if bayes:
                best = (bayes.get(ref) or {}).get(task, {}).get(metric)
                got = evals[ref].get(task, {}).get(metric) if ref else None
                gap = None if best is None or got is None else abs(best - got)
                row += [_fmt(best), _fmt(gap)]
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
