"""Training-step time of every weighting method relative to equal weights, per K and mode.

For each K in --tasks (class counts cycling through --classes, default 17, 50, 40) the harness
runs, one process after another and each with the same thread environment:

  * benchmarks/peers/torch_pertask.py: the LibMTL-style PyTorch baseline, one backward pass
    per task, reported as (per-task loop step) / (one-backward step);
  * benchmarks/peers/weighting_worker.py once per gradient mode: every requested mtlrnn
    weighting method's jitted step against `equal` timed in the same process.

Everything else (model, data, timing protocol, thread control) is that of
benchmarks/throughput.py; see benchmarks/README.md.

    python benchmarks/weighting_overhead.py [--methods all|a,b,c] [--tasks 2,3,4,8]
        [--modes full,representation,gramian] [--repeats 15] [--warmup 3] [--threads N]
        [--out benchmarks/out] [--no-torch] [--batch 32 --length 64 --vocab 5000 ...]

Writes <out>/weighting_overhead.json and <out>/weighting_overhead.md (one table per mode:
rows methods, columns K, cell = step time / equal's step time (median ms); the goals checked
at K=3) and prints the markdown.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import throughput  # sibling script: machine info, worker argv, JSON-line parsing

common = throughput.common
HERE = throughput.HERE
REPO_ROOT = throughput.REPO_ROOT
WORKER = throughput.PEERS_DIR / "weighting_worker.py"
TORCH_WORKER = throughput.PEERS_DIR / "torch_pertask.py"
MODES = ("full", "representation", "gramian")  # mtlrnn.training.gradients.MODES; no jax import here
BASELINE = "equal"
ROW_PREFIX = "@row "  # progress lines of weighting_worker.py on stderr
GOAL_TASKS = 3
# Goals of the issue, at K=3 on CPU: methods that need the full per-task Jacobian (modes full
# and gramian) within 1.5x of equal's step; methods on the representation within 1.15x.
# Loss-based methods have no goal in the issue; their ratio is reported without a verdict.
GOALS = {"full": 1.5, "gramian": 1.5, "representation": 1.15}
TORCH_REFERENCE = "about 1.7-2.3x on this CPU"
MODE_TITLES = {
    "full": "per-task gradients of all shared parameters (full Jacobian)",
    "representation": "per-task gradients of the trunk output (representation)",
    "gramian": "Gramian G = J J^T only (full Jacobian, never concatenated)",
}


def _int_list(text: str) -> tuple[int, ...]:
    return throughput.common.int_list(text, 1, "task counts")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all",
                        help="'all' (every registered method, read by each worker at run time) "
                        "or comma-separated names; equal is always timed as the baseline")
    parser.add_argument("--tasks", type=_int_list, default=(2, 3, 4, 8),
                        help="task counts K, comma-separated (K=3 is where the goals apply)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"gradient modes, comma-separated: {', '.join(MODES)}")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                        help="run the PyTorch per-task baseline (torch_pertask.py)")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds before one worker process is killed; its finished "
                        "rows are kept")
    common.add_model_args(parser)  # --classes is the class-count cycle for the K tasks
    parser.set_defaults(repeats=15, warmup=3)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        parser.error(f"--modes: each must be one of {', '.join(MODES)}; got {args.modes}")
    if args.methods.strip() != "all":
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not names:
            parser.error("--methods names no method")
        args.methods = ",".join(names)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error(f"need --threads >= 1, --repeats >= 1, --warmup >= 0; got "
                     f"{args.threads}, {args.repeats}, {args.warmup}")
    return args


def classes_for(num_tasks: int, cycle: tuple[int, ...]) -> tuple[int, ...]:
    """Class counts of K tasks: `cycle` repeated, e.g. K=4 -> (17, 50, 40, 17)."""
    return tuple(cycle[k % len(cycle)] for k in range(num_tasks))


def run_worker(name: str, script: Path, argv: list[str], args: argparse.Namespace
               ) -> dict[str, Any]:
    """One worker process; always returns a record with "ok". On a timeout, the rows the
    weighting worker finished (its `@row` stderr lines) are kept in `partial_rows`."""
    env = common.child_env(args.threads, args.device)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), *argv], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        partial = [json.loads(line[len(ROW_PREFIX):]) for line in stderr.splitlines()
                   if line.startswith(ROW_PREFIX)]
        return common.failure(name, f"timed out after {args.timeout:.0f} s",
                              partial_rows=partial, wall_s=time.perf_counter() - start)
    wall_s = time.perf_counter() - start
    record = throughput._last_json_line(proc.stdout)
    if record is None:
        return common.failure(name, f"exit {proc.returncode}, no JSON line; stderr:\n"
                              + throughput._tail(proc.stderr), wall_s=wall_s)
    if record.get("ok") and proc.returncode != 0:
        record = common.failure(name, f"exit {proc.returncode} after reporting ok")
    if not record.get("ok") and proc.stderr.strip():
        record["stderr_tail"] = throughput._tail(proc.stderr)
    record["wall_s"] = wall_s
    return record


def _rows_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A weighting record's rows; for a killed worker, its finished rows with ratios to the
    first `equal` pass."""
    if record.get("ok"):
        return record["rows"]
    partial = record.get("partial_rows", [])
    equal = next((r for r in partial if r["method"] == BASELINE), None)
    rows = []
    for row in partial:
        if row["method"] == BASELINE and row.get("pass") == "after":
            continue
        row = dict(row)
        if row.get("status") == "ok" and equal is not None:
            row["ratio_to_equal"] = row["step_ms_median"] / equal["step_ms_median"]
            row["partial"] = True
        rows.append(row)
    return rows


def goal_of(mode: str, row: dict[str, Any]) -> float | None:
    """The issue's threshold for this row at K=3, or None (baseline, loss-based methods)."""
    if row["method"] == BASELINE or row.get("requires") != "grads":
        return None
    return GOALS[mode]


def summarize_results(args: argparse.Namespace, runs: list[dict[str, Any]]
                      ) -> dict[str, Any]:
    """{mode: {method: {K: cell}}}, the goal verdicts at K=3 and the torch ratios per K."""
    table: dict[str, dict[str, dict[str, Any]]] = {mode: {} for mode in args.modes}
    notes: dict[str, list[str]] = {}  # message -> where it happened ("full K=3", ...)
    torch_rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        k = str(run["tasks"])
        record = run["record"]
        if run["kind"] == "torch":
            torch_rows[k] = record
            if not record.get("ok"):
                notes.setdefault(f"torch_pertask failed: {_first_line(record)}", []).append(
                    f"K={k}")
            continue
        mode = run["mode"]
        if not record.get("ok"):
            notes.setdefault(f"weighting_worker failed: {_first_line(record)}", []).append(
                f"{mode} K={k}")
        for row in _rows_of(record):
            if row.get("status") == "skipped":
                continue
            cell = {key: row.get(key) for key in (
                "status", "requires", "ratio_to_equal", "step_ms_median", "step_ms_p10",
                "step_ms_p90", "compile_or_first_step_s", "compilations", "error", "warning",
                "partial")}
            table[mode].setdefault(row["method"], {})[k] = cell
            message = row.get("error") if row.get("status") == "error" else row.get("warning")
            if row.get("partial"):
                message = "; ".join(filter(None, [message, "worker killed: ratio to the "
                                                  "first equal pass only"]))
            if message:
                notes.setdefault(f"{row['method']}: {message.splitlines()[0]}", []).append(
                    f"{mode} K={k}")
    goals = []
    goal_k = str(GOAL_TASKS)
    for mode, methods in table.items():
        for method, cells in methods.items():
            cell = cells.get(goal_k)
            threshold = goal_of(mode, {"method": method, "requires": _requires(cells)})
            if threshold is None:
                continue
            ratio = cell.get("ratio_to_equal") if cell else None
            goals.append({
                "mode": mode,
                "method": method,
                "tasks": GOAL_TASKS,
                "threshold": threshold,
                "ratio": ratio,
                "pass": None if ratio is None else bool(ratio <= threshold),
            })
    notes_text = [f"{message} ({', '.join(where)})" for message, where in notes.items()]
    return {"table": table, "goals": goals, "torch": torch_rows, "notes": notes_text}


def _first_line(record: dict[str, Any]) -> str:
    return str(record.get("error", "failed")).splitlines()[0]


def _requires(cells: dict[str, dict[str, Any]]) -> str | None:
    return next((c["requires"] for c in cells.values() if c.get("requires")), None)


def _cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if cell["status"] != "ok":
        return "error"
    mark = "*" if cell.get("partial") or cell.get("warning") else ""
    return f"{cell['ratio_to_equal']:.2f}x ({cell['step_ms_median']:.3g} ms){mark}"


def _method_order(methods: dict[str, Any]) -> list[str]:
    rank = {"losses": 0, "grads": 1}
    return sorted(methods, key=lambda m: (m != BASELINE, rank.get(_requires(methods[m]), 2), m))


def markdown(report: dict[str, Any]) -> str:
    machine, config, summary = report["machine"], report["config"], report["summary"]
    tasks = [str(k) for k in report["tasks"]]
    goal_k = str(GOAL_TASKS)
    lines = [
        "# Weighting overhead: training-step time relative to equal weights",
        "",
        f"Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['schedulable_cores']} schedulable), {machine['threads_per_peer']} "
        f"threads per process; {machine['platform']}; python {machine['versions']['python']}, "
        f"jax {machine['versions'].get('jax')}, torch {machine['versions'].get('torch')}.",
        f"Config: B={config['batch']}, L={config['length']}, vocab {config['vocab']}, "
        f"E={config['embed']}, H={config['hidden']}, {config['layers']} unidirectional LSTM "
        f"layer(s), K token-classification heads with class counts cycling "
        f"{config['classes']}, Adam 1e-3, fp32, device {config['device']}; warm-up "
        f"{config['warmup']}, {config['repeats']} timed steps per method.",
        f"Started {report['started']}; load average at start "
        f"{machine.get('loadavg_start', '?')}, at end {machine.get('loadavg_end', '?')}.",
        "",
        "Cell: median step time of the method / median step time of `equal` measured in the "
        "same process (the method's median step ms). `equal` is timed before and after the "
        "other methods; its median pools both passes. `error`: see the notes; `-`: not run. "
        "`*`: see the notes.",
        f"Goals at K={GOAL_TASKS}: gradient methods <= {GOALS['full']}x in modes full and "
        f"gramian, <= {GOALS['representation']}x in mode representation; loss-based methods "
        "have no goal (no verdict).",
    ]
    for mode, methods in summary["table"].items():
        lines += ["", f"## Mode `{mode}`: {MODE_TITLES[mode]}", ""]
        header = "| method | type | " + " | ".join(f"K={k}" for k in tasks)
        lines += [header + f" | goal at K={GOAL_TASKS} |",
                  "|---|---|" + "---|" * len(tasks) + "---|"]
        for method in _method_order(methods):
            cells = methods[method]
            kind = {"losses": "loss", "grads": "gradient"}.get(_requires(cells), "-")
            threshold = goal_of(mode, {"method": method, "requires": _requires(cells)})
            if method == BASELINE:
                verdict = "baseline"
            elif threshold is None:
                verdict = "no goal"
            else:
                cell = cells.get(goal_k)
                if goal_k not in tasks:
                    verdict = f"<= {threshold}x: K={GOAL_TASKS} not run"
                elif cell is None or cell["status"] != "ok":
                    verdict = f"<= {threshold}x: no number"
                else:
                    ok = cell["ratio_to_equal"] <= threshold
                    verdict = f"<= {threshold}x: {'pass' if ok else 'FAIL'}"
            row = " | ".join(_cell_text(cells.get(k)) for k in tasks)
            lines.append(f"| {method} | {kind} | {row} | {verdict} |")
        if mode != "full":
            lines += ["", "Loss-based methods are reported under mode full only: the mode does "
                      "not change their step."]
    if report["torch"]:
        torch_rows = summary["torch"]
        lines += ["", "## PyTorch baseline, LibMTL style (`peers/torch_pertask.py`)", "",
                  "| step | " + " | ".join(f"K={k}" for k in tasks) + " |",
                  "|---|" + "---|" * len(tasks)]

        def torch_cell(k: str, part: str) -> str:
            record = torch_rows.get(k)
            if record is None:
                return "-"
            if not record.get("ok"):
                return "error"
            ms = record[part]["step_ms_median"]
            return f"{ms:.3g} ms" if part == "equal" else f"{record['ratio']:.2f}x ({ms:.3g} ms)"

        lines.append("| equal, one backward of the summed loss | "
                     + " | ".join(torch_cell(k, "equal") for k in tasks) + " |")
        lines.append("| per-task loop, K backward passes, [K, D] matrix | "
                     + " | ".join(torch_cell(k, "pertask") for k in tasks) + " |")
        lines += ["", f"Per-task loop / one backward; the issue quotes {TORCH_REFERENCE}. "
                  "The loop aggregates by the plain sum, so this is the price of getting "
                  "per-task gradients the LibMTL way."]
    if summary["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in summary["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = throughput.machine_info(args)
    runs: list[dict[str, Any]] = []
    for num_tasks in args.tasks:
        worker_args = argparse.Namespace(**{**vars(args),
                                            "classes": classes_for(num_tasks, args.classes)})
        jobs = [("torch", None)] if args.torch else []
        jobs += [("jax", mode) for mode in args.modes]
        for kind, mode in jobs:
            label = f"K={num_tasks} " + ("torch per-task" if kind == "torch" else f"mode {mode}")
            print(f"[{label}] ...", file=sys.stderr, flush=True)
            if kind == "torch":
                record = run_worker("torch_pertask", TORCH_WORKER,
                                    throughput.peer_argv(worker_args), args)
                status = (f"{record['ratio']:.2f}x" if record.get("ok") else "FAILED")
            else:
                argv_ = [*throughput.peer_argv(worker_args), "--mode", mode,
                         "--methods", args.methods]
                record = run_worker("weighting_worker", WORKER, argv_, args)
                status = (f"{len(record['rows'])} rows, equal {record['baseline_ms']:.2f} ms"
                          if record.get("ok") else "FAILED")
            if not record.get("ok"):
                status += f": {str(record.get('error')).splitlines()[0]}"
            print(f"    {status} ({record.get('wall_s', 0):.0f} s)", file=sys.stderr,
                  flush=True)
            runs.append({"kind": kind, "tasks": num_tasks, "mode": mode, "record": record})
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())
    report = {
        "benchmark": "weighting_overhead",
        "started": started,
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "config": common.config_of(args),
        "tasks": list(args.tasks),
        "modes": args.modes,
        "methods": args.methods,
        "torch": args.torch,
        "goals_at_tasks": GOAL_TASKS,
        "goal_thresholds": GOALS,
        "summary": summarize_results(args, runs),
        "runs": runs,
    }
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weighting_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "weighting_overhead.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'weighting_overhead.json'} and "
          f"{args.out / 'weighting_overhead.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
