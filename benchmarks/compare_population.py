"""Wall clock of `mtlrnn compare` with each method's seeds trained as one population (the
default) against one run per seed (`--no-vectorize`), and whether the two tables agree.

    python benchmarks/compare_population.py --seeds 4 --steps 1000
    python benchmarks/compare_population.py --seeds 2 --steps 20 --out /tmp/cp   # smoke run

Each variant is one `python -m mtlrnn.cli compare` process with a fresh, empty compilation
cache of its own (a first comparison as a user lives it: it compiles once per process and
shape), one after the other. Default: equal weights on tasks tag0 and tag1 of the synthetic
suite (two single-task baselines and one method, each over the seeds). Writes
`<out>/compare_population.json` and `.md` (machine, versions, wall times, speed-up, the
largest difference between the two tables).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402  (benchmarks/peers/common.py: machine description)


def _compare(args: argparse.Namespace, vectorize: bool) -> dict[str, Any]:
    outdir = tempfile.mkdtemp(prefix="compare-population-")
    cache = tempfile.mkdtemp(prefix="compare-population-cache-")
    cmd = [sys.executable, "-m", "mtlrnn.cli", "compare", "--methods", args.methods,
           "--seeds", str(args.seeds), "--outdir", outdir, "--quiet"]
    if not vectorize:
        cmd.append("--no-vectorize")
    for item in (f"tasks.include=[{args.tasks}]", f"train.steps={args.steps}",
                 f"train.compile_cache={cache}", "logging.plots=false", *args.set):
        cmd += ["--set", item]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"compare failed ({proc.returncode}): {proc.stderr[-3000:]}")
    with open(os.path.join(outdir, "compare.json"), encoding="utf-8") as f:
        table = json.load(f)
    return {"wall_s": wall, "outdir": outdir, "rows": table["rows"]}


def _table_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The largest absolute difference of a metric mean or Δm between two reports."""
    worst = 0.0
    other = {r["method"]: r for r in b}
    for row in a:
        twin = other[row["method"]]
        for task, metrics in row["scores"].items():
            for metric, cell in metrics.items():
                worst = max(worst, abs(cell["mean"] - twin["scores"][task][metric]["mean"]))
        if row["delta_m"]["mean"] is not None:
            worst = max(worst, abs(row["delta_m"]["mean"] - twin["delta_m"]["mean"]))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--methods", default="ew")
    parser.add_argument("--tasks", default="tag0,tag1")
    parser.add_argument("--set", nargs="+", default=[], action="extend", help="more overrides")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cpu_amd_epyc_2core"))
    args = parser.parse_args()

    runs = {name: _compare(args, vectorize) for name, vectorize in
            (("population", True), ("separate", False))}
    import jax

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": common.cpu_model(), "cores": os.cpu_count(),
                    "loadavg_end": list(os.getloadavg()), "platform": jax.default_backend()},
        "versions": {"python": platform.python_version(), "jax": jax.__version__},
        "config": {"seeds": args.seeds, "steps": args.steps, "methods": args.methods,
                   "tasks": args.tasks, "set": args.set},
        "wall_s": {name: run["wall_s"] for name, run in runs.items()},
        "speedup": runs["separate"]["wall_s"] / runs["population"]["wall_s"],
        "max_table_diff": _table_diff(runs["population"]["rows"], runs["separate"]["rows"]),
        "step_ms": {name: {r["method"]: r["step_time_ms"] for r in run["rows"]}
                    for name, run in runs.items()},
    }
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "compare_population")
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    lines = [
        f"# `mtlrnn compare --seeds {args.seeds}`: population vs one run per seed",
        "",
        f"{result['date']}; {result['machine']['cpu']} ({result['machine']['cores']} cores); "
        f"jax {jax.__version__}; methods {args.methods}, tasks {args.tasks}, "
        f"{args.steps} steps, each variant one process with a fresh compilation cache.",
        "",
        "| variant | wall s | step ms per seed (single-task / methods) |",
        "|---|---:|---|",
    ]
    for name in ("population", "separate"):
        steps = ", ".join(f"{k} {v:.2f}" for k, v in result["step_ms"][name].items() if v)
        lines.append(f"| {name} | {result['wall_s'][name]:.1f} | {steps} |")
    lines += ["", f"Speed-up: **{result['speedup']:.2f}x**; largest difference between the "
              f"two tables (metric means, Δm%): {result['max_table_diff']:.2e}.", ""]
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
