"""Scenarios where the choice of weighting method may matter (issue 13).

Each scenario is a config under ``configs/scenarios/`` (its header says what it tests and
which published claim it speaks to). ``run`` trains every applicable method x 3 seeds and the
single-task baselines with ``mtlrnn compare`` (each method's seeds as one population) into
``benchmarks/compare/scenarios/<name>/`` (reports there, runs under its git-ignored
``runs/``) and draws the baselines' dev learning curves; ``summary`` reads every scenario's
``compare.json`` and writes one table of Δm% per method and scenario with each method's mean
rank.

    python benchmarks/scenarios.py run control --jobs 2      # one scenario
    python benchmarks/scenarios.py run all --jobs 2          # every config in the directory
    python benchmarks/scenarios.py summary                   # summary.md from the reports

Runs resume (``mtlrnn compare`` skips finished runs), so an interrupted ``run`` picks up
where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "scenarios"
OUT = ROOT / "benchmarks" / "compare" / "scenarios"
SEEDS = 3
# Methods with only a full-Jacobian mode: about K backward passes per step.
FULL_ONLY = ("db_mtl", "excess_mtl", "graddrop", "moco")
# The scenarios that also run the full-only methods: each costs about 3.5 method runs of the
# others on the 2-core CI machine, so the rest leave them out (said in their configs).
FULL_ONLY_IN = ("control", "conflict")
# `fixed` is equal weighting unless the user supplies weights: not a method of its own here.
NOT_A_METHOD = ("fixed",)


def scenario_names() -> list[str]:
    """Every scenario config, by file name."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def methods_for(scenario: str) -> list[str]:
    """The methods a scenario compares: every registered method that applies, ``ew`` first."""
    from mtlrnn import weighting

    skip = set(NOT_A_METHOD) | {"equal"}
    if scenario not in FULL_ONLY_IN:
        skip |= set(FULL_ONLY)
    return ["ew", *(m for m in weighting.names() if m not in skip)]


def run(scenario: str, jobs: int, quiet: bool) -> int:
    """Train (or resume) one scenario's comparison, then draw its baselines' curves."""
    outdir = OUT / scenario
    cmd = [
        sys.executable, "-m", "mtlrnn.cli", "compare",
        "--config", str(CONFIGS / f"{scenario}.yaml"),
        "--methods", ",".join(methods_for(scenario)),
        "--seeds", str(SEEDS), "--jobs", str(jobs), "--outdir", str(outdir),
    ] + (["--quiet"] if quiet else [])
    print(f"[{scenario}] {' '.join(cmd[2:])}", flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 0:
        write_curves(outdir)
    return rc


def _dev_curves(workdir: Path) -> dict[str, dict[int, float]]:
    """``{task/metric: {step: value}}`` of a run's dev evaluations (accuracy or mse)."""
    curves: dict[str, dict[int, float]] = {}
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return curves
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.get("eval", {}).items():
            split, task, metric = key.split("/")
            if split == "dev" and metric in ("accuracy", "mse"):
                curves.setdefault(f"{task}/{metric}", {})[int(record["step"])] = float(value)
    return curves


def baseline_curves(outdir: Path) -> dict[str, dict[int, list[float]]]:
    """Each single-task baseline's dev curve, every seed: ``{task/metric: {step: [v...]}}``."""
    out: dict[str, dict[int, list[float]]] = {}
    for run_dir in sorted((outdir / "runs").glob("single-*/seed*")):
        for key, curve in _dev_curves(run_dir).items():
            for step, value in curve.items():
                out.setdefault(key, {}).setdefault(step, []).append(value)
    return out


def write_curves(outdir: Path) -> None:
    """``curves.csv`` and ``curves.png``: the baselines' dev curves (mean over seeds)."""
    curves = baseline_curves(outdir)
    if not curves:
        return
    rows = ["task_metric,step,mean,min,max,n"]
    for key, by_step in sorted(curves.items()):
        for step, values in sorted(by_step.items()):
            mean = sum(values) / len(values)
            rows.append(f"{key},{step},{mean:.6g},{min(values):.6g},{max(values):.6g},"
                        f"{len(values)}")
    _atomic_write(outdir / "curves.csv", "\n".join(rows) + "\n")
    _plot_curves(curves, outdir / "curves.png", title=outdir.name)


def _plot_curves(curves: Mapping[str, Mapping[int, list[float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(curves)
    cols = min(4, len(keys))
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, squeeze=False,
                             figsize=(3.2 * cols, 2.4 * math.ceil(len(keys) / cols)))
    for ax, key in zip(axes.flat, keys, strict=False):
        steps = sorted(curves[key])
        for seed in range(max(len(v) for v in curves[key].values())):
            ax.plot(steps, [curves[key][s][seed] if seed < len(curves[key][s]) else math.nan
                            for s in steps], marker="o", lw=1)
        ax.set_title(f"single-task {key} (dev)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{title}: single-task baselines' dev curves, one line per seed", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The summary across scenarios.


def _read_reports() -> dict[str, dict[str, Any]]:
    reports = {}
    for name in scenario_names():
        path = OUT / name / "compare.json"
        if path.exists():
            reports[name] = json.loads(path.read_text())
    return reports


def delta_table(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """``{method: {scenario: delta_m stats}}`` (mean, std, n) for every finished method row."""
    table: dict[str, dict[str, dict]] = {}
    for scenario, report in reports.items():
        for row in report["rows"]:
            stats = row.get("delta_m") or {}
            if row["method"] != "single-task" and stats.get("n"):
                table.setdefault(row["method"], {})[scenario] = stats
    return table


def mean_ranks(table: Mapping[str, Mapping[str, Mapping[str, Any]]],
               scenarios: Sequence[str]) -> dict[str, float]:
    """Each method's rank by mean Δm% (1 = lowest, the best) in each scenario it ran in,
    averaged over those scenarios; ties share the average of their ranks."""
    ranks: dict[str, list[float]] = {}
    for scenario in scenarios:
        scores = sorted((stats[scenario]["mean"], m) for m, stats in table.items()
                        if scenario in stats)
        i = 0
        while i < len(scores):
            j = i
            while j + 1 < len(scores) and scores[j + 1][0] == scores[i][0]:
                j += 1
            for _, method in scores[i:j + 1]:
                ranks.setdefault(method, []).append((i + j) / 2 + 1)
            i = j + 1
    return {m: sum(r) / len(r) for m, r in ranks.items()}


def _noise(report: Mapping[str, Any]) -> str:
    """The single-task row's Δm% std: how far the baselines' own seeds spread."""
    row = next((r for r in report["rows"] if r["method"] == "single-task"), None)
    std = (row or {}).get("delta_m", {}).get("std")
    return "" if std is None or not math.isfinite(std) else f"±{std:.2f}"


def summary_markdown(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """One table: Δm% (mean ± std over seeds) per method and scenario, and the mean rank."""
    scenarios = list(reports)
    table = delta_table(reports)
    ranks = mean_ranks(table, scenarios)
    head = "| method | " + " | ".join(scenarios) + " | mean rank |"
    lines = [head, "|" + " --- |" * (len(scenarios) + 2)]
    lines.append("| seed noise (single-task Δm% std) | "
                 + " | ".join(_noise(reports[s]) for s in scenarios) + " | |")
    for method in sorted(table, key=lambda m: (ranks[m], m)):
        cells = []
        for s in scenarios:
            st = table[method].get(s)
            cells.append("" if st is None else f"{st['mean']:+.2f} ± {st['std']:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {ranks[method]:.1f} |")
    return "\n".join(lines) + "\n"


def summary() -> int:
    reports = _read_reports()
    if not reports:
        print(f"no scenario has a compare.json under {OUT}", file=sys.stderr)
        return 1
    text = ("# Weighting methods across scenarios\n\nΔm% on the test split against the "
            "scenario's single-task baselines (lower is better), mean ± std over "
            f"{SEEDS} seeds; mean rank by mean Δm% over the scenarios a method ran in. "
            "Configs: configs/scenarios/; per-scenario tables: <scenario>/compare.md.\n\n"
            + summary_markdown(reports))
    _atomic_write(OUT / "summary.md", text)
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train one scenario (or all) and write its reports")
    p_run.add_argument("scenario", help=f"one of {', '.join(scenario_names())}, or all")
    p_run.add_argument("--jobs", type=int, default=1, help="runs at once (mtlrnn compare)")
    p_run.add_argument("--quiet", action="store_true")
    sub.add_parser("summary", help="summary.md from every scenario's compare.json")
    args = parser.parse_args(argv)
    if args.command == "summary":
        return summary()
    names = scenario_names() if args.scenario == "all" else [args.scenario]
    unknown = [n for n in names if n not in scenario_names()]
    if unknown:
        allowed = ", ".join(scenario_names())
        parser.error(f"unknown scenario {unknown[0]!r}; allowed: {allowed}, all")
    return max(run(n, args.jobs, args.quiet) for n in names)


if __name__ == "__main__":
    raise SystemExit(main())
