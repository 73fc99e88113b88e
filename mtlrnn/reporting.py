"""What a run writes and shows: metrics.jsonl, TensorBoard events, plots, the result table."""

from __future__ import annotations

import json
import math
import os
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


def plot_history(history: Sequence[Mapping[str, Any]], directory: str | os.PathLike) -> list[str]:
    """Draw ``losses.png`` (per-task training loss) and ``weights.png`` into ``directory``.

    Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if "losses" in r]
    if not train:
        return []
    os.makedirs(directory, exist_ok=True)
    steps = [r["step"] for r in train]
    written = []
    for key, title, fname, log in (
        ("losses", "training loss per task", "losses.png", True),
        ("weights", "task weights", "weights.png", False),
    ):
        if all(v is None for r in train for v in r[key].values()):
            continue  # e.g. a gradient method that defines no task weights
        fig, ax = plt.subplots(figsize=(7, 4))
        for task in train[0][key]:
            values = [np.nan if r[key][task] is None else r[key][task] for r in train]
            ax.plot(steps, values, label=task)
        ax.set_xlabel("step")
        ax.set_title(title)
        if log and all(v is not None and v > 0 for r in train for v in r[key].values()):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(directory, fname)
        fig.savefig(path, dpi=100)
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
