"""Train the default synthetic job once per weighting method and tabulate the results.

    python benchmarks/weighting_sweep.py [--methods all|a,b] [--steps 1000] [--mode full]
        [--out benchmarks/out/sweep] [--set key=value ...]

Each method runs `mtlrnn train` in its own process (workdir <out>/<method>); finished runs
(with a summary.json) are skipped, so the sweep can be resumed. Writes <out>/sweep.json and
<out>/sweep.md: per-task test metrics, the gap to the Bayes-optimal score, median step time
and wall time per method. One seed per method: a smoke-level comparison, not a ranking (the
comparison workflow with seeds and confidence intervals is issue 4's `mtlrnn compare`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--mode", default="full", help="weighting.mode for gradient methods")
    parser.add_argument("--out", default="benchmarks/out/sweep")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtlrnn import weighting

    names = weighting.names() if args.methods == "all" else args.methods.split(",")
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in names:
        strategy = weighting.get(name)
        mode = args.mode
        if strategy.requires == "grads" and mode not in strategy.modes:
            mode = strategy.modes[0]
        workdir = os.path.join(args.out, name)
        summary_path = os.path.join(workdir, "summary.json")
        if not os.path.exists(summary_path):
            cmd = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", workdir, "--quiet",
                   "--set", f"train.steps={args.steps}", "--set", f"weighting.name={name}",
                   "--set", f"weighting.mode={mode}"]
            for item in args.overrides:
                cmd += ["--set", item]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
                print(f"{name}: FAILED {results[name]['error']}", flush=True)
                continue
            print(f"{name}: done in {wall:.0f} s", flush=True)
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        results[name] = {"mode": mode if strategy.requires == "grads" else "-",
                         "summary": summary}
    with open(os.path.join(args.out, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    table = markdown(results, args.steps)
    with open(os.path.join(args.out, "sweep.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return 0


def markdown(results: dict, steps: int) -> str:
    tasks = None
    for res in results.values():
        if "summary" in res:
            tasks = {t: sorted(m for m in v if m != "count")
                     for t, v in res["summary"]["eval"]["test"].items()}
            break
    if tasks is None:
        return "no finished runs\n"
    cols = [(t, "accuracy" if "accuracy" in ms else "mse") for t, ms in tasks.items()]
    lines = [f"Synthetic default, {steps} steps, test split, one seed.", "",
             "| method | mode | " + " | ".join(f"{t} {m}" for t, m in cols)
             + " | step ms | wall s |",
             "|---|---|" + "---|" * len(cols) + "---|---|"]
    bayes = None
    for name, res in results.items():
        if "summary" not in res:
            lines.append(f"| {name} | error: {res['error']} |")
            continue
        s = res["summary"]
        bayes = s["bayes"]["test"]
        cells = [f"{s['eval']['test'][t][m]:.4f}" for t, m in cols]
        lines.append(f"| {name} | {res['mode']} | " + " | ".join(cells)
                     + f" | {s['throughput']['step_time_ms_median']:.1f} | "
                     f"{s['run']['wall_s']:.0f} |")
    if bayes:
        lines.append("| Bayes-optimal | | " + " | ".join(
            f"{bayes[t][m]:.4f}" if m in bayes.get(t, {}) else "-" for t, m in cols) + " | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
