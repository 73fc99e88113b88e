"""Multi-task improvement over single-task baselines: Δm and Δp.

Both metrics compare a multi-task model's scores ``M_mtl`` with those of single-task
baselines ``M_stl`` on the same tasks and metrics, as relative changes in percent. They
differ in sign convention and in how metrics are averaged.

**Δm** (Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019; in the form
used by Nash-MTL, Navon et al., ICML 2022, and FAMO, Liu et al., NeurIPS 2023)::

    Δm = (100 / N) * Σ_{task, metric} (-1)^{l} * (M_mtl - M_stl) / M_stl

where the sum runs over all ``N`` (task, metric) pairs and ``l = 1`` if higher is better for
the metric, ``l = 0`` otherwise. Every metric counts equally, so a task with more metrics
weighs more. **Lower is better**: a multi-task model that beats the baselines everywhere has
``Δm < 0``.

**Δp** (Lin & Zhang, "LibMTL: A Python Library for Multi-Task Learning", JMLR 2023)::

    Δp = (100 / T) * Σ_t (1 / N_t) * Σ_{i=1..N_t} (-1)^{s_{t,i}} * (M_mtl - M_stl) / M_stl

where ``T`` is the number of tasks, ``N_t`` the number of metrics of task ``t`` and
``s_{t,i} = 0`` if higher is better for the metric, ``1`` otherwise. Metrics are averaged
within each task first, then over tasks, so every task counts equally. **Higher is better**:
a multi-task model that beats the baselines everywhere has ``Δp > 0``.

With one metric per task, ``Δp == -Δm``; with several metrics on some tasks they differ
beyond the sign.

Inputs are nested mappings ``task -> metric -> value``; both must have exactly the same tasks
and the same metrics per task, and no baseline may be zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence

Scores = Mapping[str, Mapping[str, float]]

#: Default optimisation direction per metric name: True if higher is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "macro_f1": True,
    "f1": True,
    "las": True,
    "uas": True,
    "mse": False,
    "mae": False,
    "rmse": False,
    "loss": False,
}


def _relative_changes(
    mtl: Scores, single: Scores, higher_is_better: Mapping[str, bool] | None
) -> dict[str, list[tuple[float, bool]]]:
    """Per task, a list of ``((M_mtl - M_stl) / M_stl, higher_is_better)`` per metric."""
    directions = dict(HIGHER_IS_BETTER)
    if higher_is_better is not None:
        directions.update({k: bool(v) for k, v in higher_is_better.items()})
    if not mtl or not single:
        raise ValueError(
            "delta: need at least one task in both the multi-task and the single-task scores"
        )
    only_mtl = sorted(set(mtl) - set(single))
    only_single = sorted(set(single) - set(mtl))
    if only_mtl or only_single:
        raise ValueError(
            f"delta: task sets differ; missing from single-task baselines: {only_mtl}, "
            f"missing from multi-task scores: {only_single}"
        )
    out: dict[str, list[tuple[float, bool]]] = {}
    for task in sorted(mtl):
        m_scores, s_scores = mtl[task], single[task]
        only_mtl = sorted(set(m_scores) - set(s_scores))
        only_single = sorted(set(s_scores) - set(m_scores))
        if only_mtl or only_single:
            raise ValueError(
                f"delta: task {task!r}: metric sets differ; missing from single-task "
                f"baselines: {only_mtl}, missing from multi-task scores: {only_single}"
            )
        if not m_scores:
            raise ValueError(f"delta: task {task!r} has no metrics")
        rows = []
        for metric in sorted(m_scores):
            if metric not in directions:
                raise ValueError(
                    f"delta: unknown metric {metric!r} (task {task!r}); pass its direction "
                    f"in higher_is_better, known metrics: {sorted(directions)}"
                )
            m, s = float(m_scores[metric]), float(s_scores[metric])
            if not (math.isfinite(m) and math.isfinite(s)):
                raise ValueError(
                    f"delta: task {task!r} metric {metric!r}: values must be finite, got "
                    f"multi-task {m} and single-task {s}"
                )
            if s == 0.0:
                raise ValueError(
                    f"delta: task {task!r} metric {metric!r}: single-task baseline is zero, "
                    "relative change is undefined"
                )
            rows.append(((m - s) / s, directions[metric]))
        out[task] = rows
    return out


def delta_m(
    mtl: Scores, single: Scores, *, higher_is_better: Mapping[str, bool] | None = None
) -> float:
    """Δm in percent (Maninis et al. 2019; Nash-MTL, FAMO). Lower is better.

    The mean over all (task, metric) pairs of the relative change, negated for
    higher-is-better metrics, times 100. ``higher_is_better`` adds or overrides metric
    directions (defaults in :data:`HIGHER_IS_BETTER`).
    """
    rel = _relative_changes(mtl, single, higher_is_better)
    terms = [-r if hib else r for rows in rel.values() for r, hib in rows]
    return 100.0 * sum(terms) / len(terms)


def delta_p(
    mtl: Scores, single: Scores, *, higher_is_better: Mapping[str, bool] | None = None
) -> float:
    """Δp in percent (LibMTL, Lin & Zhang 2023). Higher is better.

    Per task, the mean over its metrics of the relative change (negated for lower-is-better
    metrics) times 100; then the mean over tasks.
    """
    rel = _relative_changes(mtl, single, higher_is_better)
    per_task = [
        100.0 * sum(r if hib else -r for r, hib in rows) / len(rows) for rows in rel.values()
    ]
    return sum(per_task) / len(per_task)


def summarize_seeds(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; std is 0 for a single value."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summarize_seeds: need at least one value, got 0")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)
