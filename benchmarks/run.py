"""Benchmark suite: throughput sweeps, long sequences, memory, matmul peak, bf16, GPU configs.

Runs sub-suites (`--only`), every peer run in its own subprocess through
benchmarks/throughput.py's `run_peer` (same protocol, thread environment and JSON line), and
writes, into `--out`:

    suite.json   machine (CPU model / GPU name), versions, every run's record; rewritten
                 after every run, so a killed suite keeps what it finished
    suite.md     one table per sub-suite (FAILED / UNSUPPORTED rows included), ratio columns
                 vs torch_lstm, GFLOP/s and % of the measured matmul peak, goal verdicts
    plots/       throughput_vs_hidden.png, throughput_vs_length.png, throughput_vs_tasks.png,
                 long_sequences.png (matplotlib, Agg; skipped with a note if missing)

Sub-suites: peak (benchmarks/matmul_peak.py), reference, hidden, length, tasks, long,
memory (benchmarks/memory.py), dtype, large (the GPU config), loop (benchmarks/
loop_efficiency.py). CPU default: all but large; `--device gpu`: peak, reference, large,
long, loop.

    python benchmarks/run.py                                   # full CPU suite
    python benchmarks/run.py --only reference,long --rounds 3
    python benchmarks/run.py --quick --only peak,tasks --peers mtlrnn,torch_lstm   # smoke
    python benchmarks/run.py --device gpu --out "$OUT/gpu"     # see benchmarks/gpu.sh
    python benchmarks/run.py --report-only --out benchmarks/out/suite   # redo md + plots

See benchmarks/README.md ("The suite") for the configs, variants and how to read them.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import throughput

common = throughput.common
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
BASELINE = "torch_lstm"
REF_TOKENS = 32 * 64  # repeats are scaled down for steps with more tokens than this
ALL_SUITES = ("peak", "reference", "hidden", "length", "tasks", "long", "memory", "dtype",
              "large", "loop")
CPU_SUITES = ("peak", "reference", "hidden", "length", "tasks", "long", "memory", "dtype",
              "loop")
GPU_SUITES = ("peak", "reference", "large", "long", "loop")
THROUGHPUT_SUITES = ("reference", "hidden", "length", "tasks", "long", "dtype", "large")
ROUNDED_SUITES = ("reference", "dtype")  # the suites that get --rounds; sweeps get one round

REFERENCE = {"batch": 32, "length": 64, "vocab": 5000, "embed": 128, "hidden": 256,
             "classes": (17, 50, 40), "layers": 1}
QUICK_REFERENCE = {"batch": 4, "length": 8, "vocab": 50, "embed": 8, "hidden": 16,
                   "classes": (5, 7, 3), "layers": 1}
LARGE = {"batch": 256, "length": 128, "vocab": 5000, "embed": 512, "hidden": 1024,
         "classes": (17, 50, 40), "layers": 2}
QUICK_LARGE = {"batch": 8, "length": 8, "vocab": 50, "embed": 16, "hidden": 32,
               "classes": (5, 7, 3), "layers": 2}
SWEEPS = {  # sub-suite -> (swept parameter, full values, --quick values)
    "hidden": ("hidden", (64, 128, 256, 512), (8, 16)),
    "length": ("length", (16, 64, 256), (4, 8)),
    "tasks": ("tasks", (1, 3, 8), (1, 3)),
    "long": ("length", (256, 1024, 4096), (16, 32)),
}
GOAL_LONG_LENGTH = 1024  # issue 6: minGRU >= 4x torch nn.LSTM tokens/s at L=1024
GOAL_LONG_RATIO = 4.0


@dataclass(frozen=True)
class Variant:
    """One line of a table/plot: a peer script run with some variant options."""

    label: str
    peer: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "peer": self.peer, "options": dict(self.options)}


BF16 = {"dtype": "bfloat16"}
VARIANTS: dict[str, list[Variant]] = {
    "reference": [
        Variant("mtlrnn", "mtlrnn"),
        Variant("mtlrnn autodiff", "mtlrnn", {"impl": "autodiff"}),
        Variant("mtlrnn no cpu tuning", "mtlrnn", {"cpu_tuning": "off"}),
        Variant("torch_lstm", "torch_lstm"),
        Variant("jax_cudnn_lstm", "jax_cudnn_lstm"),
        Variant("flax_rnn", "flax_rnn"),
        Variant("flax_rnn + mtlrnn cpu tuning", "flax_rnn", {"cpu_tuning": "on"}),
        Variant("keras_lstm", "keras_lstm"),  # last: slowest to start; first to lose a timeout
    ],
    "sweep": [
        Variant("mtlrnn", "mtlrnn"),
        Variant("torch_lstm", "torch_lstm"),
        Variant("flax_rnn", "flax_rnn"),
        Variant("keras_lstm", "keras_lstm"),
        Variant("jax_cudnn_lstm", "jax_cudnn_lstm"),
    ],
    "long": [
        Variant("mtlrnn lstm", "mtlrnn"),
        Variant("mtlrnn mingru sequential", "mtlrnn", {"cell": "mingru", "scan": "sequential"}),
        Variant("mtlrnn mingru associative", "mtlrnn",
                {"cell": "mingru", "scan": "associative"}),
        Variant("mtlrnn minlstm", "mtlrnn", {"cell": "minlstm"}),
        Variant("torch_lstm", "torch_lstm"),
    ],
    "dtype": [
        Variant("mtlrnn", "mtlrnn"),
        Variant("mtlrnn bf16", "mtlrnn", BF16),
        Variant("torch_lstm", "torch_lstm"),
        Variant("torch_lstm bf16", "torch_lstm", BF16),
    ],
    "large": [
        Variant("mtlrnn", "mtlrnn"),
        Variant("torch_lstm", "torch_lstm"),
        Variant("jax_cudnn_lstm", "jax_cudnn_lstm"),
        Variant("mtlrnn bf16", "mtlrnn", BF16),
        Variant("torch_lstm bf16", "torch_lstm", BF16),
        Variant("jax_cudnn_lstm bf16", "jax_cudnn_lstm", BF16),
    ],
}
SUITE_VARIANTS = {"reference": "reference", "hidden": "sweep", "length": "sweep",
                  "tasks": "sweep", "long": "long", "dtype": "dtype", "large": "large"}


# ---------------------------------------------------------------------------------------
# CLI


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="",
                        help=f"comma-separated sub-suites of {', '.join(ALL_SUITES)} "
                             f"(default: {', '.join(CPU_SUITES)}; with --device gpu: "
                             f"{', '.join(GPU_SUITES)})")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/out/suite, or "
                             "benchmarks/out/gpu with --device gpu)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny shapes, 2 timed steps, 1 round, tiny memory budget")
    parser.add_argument("--peers", default="",
                        help="only variants of these peer scripts (e.g. mtlrnn,torch_lstm)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps at the reference token count (default 30, GPU 20); "
                             "scaled down by tokens per step, at least --min-repeats")
    parser.add_argument("--warmup", type=int, default=None, help="default 5, GPU 3")
    parser.add_argument("--min-repeats", type=int, default=None, help="default 3, GPU 10")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the reference and dtype sub-suites (default 3, GPU 1); "
                             "sweeps run once")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds before one subprocess (peer run, memory cell, peak) is "
                             "killed and recorded as failed")
    parser.add_argument("--memory-cells", default=None,
                        help="cells of the memory sub-suite (default lstm,mingru; quick: lstm)")
    parser.add_argument("--budget-gib", type=float, default=8.0,
                        help="memory sub-suite budget (quick: 2 MiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sub-suites of an existing <out>/suite.json")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite suite.md and plots from <out>/suite.json; run nothing")
    args = parser.parse_args(argv)
    gpu = args.device == "gpu"
    if args.out is None:
        args.out = HERE / "out" / ("gpu" if gpu else "suite")
    args.only = _csv(args.only) or list(GPU_SUITES if gpu else CPU_SUITES)
    unknown = [s for s in args.only if s not in ALL_SUITES]
    if unknown:
        parser.error(f"--only: unknown sub-suite(s) {', '.join(unknown)}; "
                     f"known: {', '.join(ALL_SUITES)}")
    args.peers = _csv(args.peers)
    defaults = {"repeats": (30, 20), "warmup": (5, 3), "min_repeats": (3, 10), "rounds": (3, 1)}
    for name, (cpu_value, gpu_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu_value if gpu else cpu_value)
    if args.quick:
        args.repeats, args.warmup, args.min_repeats, args.rounds = 2, 1, 2, 1
    if args.memory_cells is None:
        args.memory_cells = "lstm" if args.quick else "lstm,mingru"
    args.memory_cells = _csv(args.memory_cells)
    if args.repeats < 1 or args.min_repeats < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("need --repeats, --min-repeats, --rounds >= 1 and --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------
# Running


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _gpu_info() -> list[dict[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    info = throughput.machine_info(args)
    info["versions"]["matplotlib"] = _version("matplotlib")
    gpus = _gpu_info()
    if gpus:
        info["gpus"] = gpus
    info["device"] = args.device
    info["device_name"] = gpus[0]["name"] if (gpus and args.device == "gpu") else info[
        "cpu_model"]
    return info


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Suite:
    """suite.json in memory; `save` rewrites it (after every run)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.path = args.out / "suite.json"
        self.data: dict[str, Any] = {}
        if args.merge and self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("device", args.device) != args.device:
                raise SystemExit(f"{self.path} holds a {self.data.get('device')} suite; "
                                 f"not merging --device {args.device} into it")
        machine = machine_info(args)
        self.data.setdefault("benchmark", "suite")
        self.data.setdefault("started", _now())
        self.data.setdefault("suites", {})
        self.data.update({
            "device": args.device,
            "quick": args.quick,
            "command": [sys.executable, *sys.argv],
            "machine": machine,
            "protocol": {"repeats": args.repeats, "warmup": args.warmup,
                         "min_repeats": args.min_repeats, "rounds": args.rounds,
                         "threads": args.threads, "timeout_s": args.timeout},
        })

    def start(self, name: str, **meta: Any) -> dict[str, Any]:
        suite = {"status": "running", "started": _now(), "quick": self.args.quick,
                 "protocol": self.data["protocol"], **meta}
        self.data["suites"][name] = suite
        self.save()
        return suite

    def finish(self, name: str) -> None:
        self.data["suites"][name]["status"] = "complete"
        self.data["suites"][name]["finished"] = _now()
        self.save()

    def save(self) -> None:
        self.data["updated"] = _now()
        if hasattr(os, "getloadavg"):
            self.data["machine"]["loadavg_end"] = list(os.getloadavg())
        self.args.out.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def run_script(name: str, script: Path, argv: list[str],
               args: argparse.Namespace) -> dict[str, Any]:
    """A benchmark script in its own process (peer thread environment); its JSON line."""
    env = common.child_env(args.threads, args.device)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(script), *argv], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return common.failure(name, f"timed out after {args.timeout:.0f} s")
    record = throughput._last_json_line(proc.stdout)
    if record is None:
        return common.failure(name, f"exit {proc.returncode}, no JSON line; stderr:\n"
                              + throughput._tail(proc.stderr))
    if not record.get("ok") and proc.stderr.strip():
        record["stderr_tail"] = throughput._tail(proc.stderr)
    record["wall_s"] = time.perf_counter() - start
    return record


def classes_for(num_tasks: int, cycle: tuple[int, ...]) -> tuple[int, ...]:
    """K class counts cycling through the reference heads: K=8 -> 17,50,40,17,50,40,17,50."""
    return tuple(cycle[k % len(cycle)] for k in range(num_tasks))


def suite_points(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[dict]]:
    """(base config, [point]) of a throughput sub-suite; a point is {param: value}."""
    base = dict(QUICK_REFERENCE if args.quick else REFERENCE)
    if name == "large":
        return dict(QUICK_LARGE if args.quick else LARGE), [{}]
    if name in SWEEPS:
        param, full, quick = SWEEPS[name]
        return base, [{param: v} for v in (quick if args.quick else full)]
    return base, [{}]


def point_config(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    config = dict(base)
    for key, value in point.items():
        if key == "tasks":
            config["classes"] = classes_for(value, tuple(base["classes"]))
        else:
            config[key] = value
    return config


def scaled(count: int, floor: int, tokens: int) -> int:
    return max(floor, min(count, math.ceil(count * REF_TOKENS / tokens)))


def peer_namespace(config: dict[str, Any], variant: Variant,
                   args: argparse.Namespace) -> argparse.Namespace:
    tokens = config["batch"] * config["length"]
    ns = argparse.Namespace(
        **{k: v for k, v in config.items()},
        repeats=scaled(args.repeats, args.min_repeats, tokens),
        warmup=scaled(args.warmup, min(1, args.warmup), tokens),
        threads=args.threads, seed=args.seed, device=args.device, timeout=args.timeout,
        **common.VARIANT_DEFAULTS,
    )
    for key, value in variant.options.items():
        setattr(ns, key, value)
    return ns


def selected(variants: list[Variant], args: argparse.Namespace) -> list[Variant]:
    return [v for v in variants if not args.peers or v.peer in args.peers]


def run_throughput(name: str, args: argparse.Namespace, suite: Suite) -> None:
    base, points = suite_points(name, args)
    variants = selected(VARIANTS[SUITE_VARIANTS[name]], args)
    rounds = args.rounds if name in ROUNDED_SUITES else 1
    entry = suite.start(name, config=base, points=points, rounds=rounds,
                        variants=[v.to_json() for v in variants], runs=[])
    if not variants:
        entry["note"] = f"no variant of {name} uses the peers {', '.join(args.peers)}"
    for point in points:
        config = point_config(base, point)
        for round_index in range(rounds):
            shift = round_index % max(1, len(variants))
            for variant in variants[shift:] + variants[:shift]:
                ns = peer_namespace(config, variant, args)
                where = " ".join(f"{k}={v}" for k, v in point.items())
                print(f"[{name}{' ' + where if where else ''} round {round_index + 1}/{rounds}] "
                      f"{variant.label} ...", file=sys.stderr, flush=True)
                record = throughput.run_peer(variant.peer, ns)
                record.update(round=round_index, label=variant.label, point=point,
                              options=dict(variant.options), suite_config=_jsonable(config),
                              repeats=ns.repeats, warmup=ns.warmup)
                entry["runs"].append(record)
                suite.save()
                status = (f"{record['step_ms_median']:.2f} ms" if record.get("ok")
                          else f"FAILED: {str(record.get('error')).splitlines()[0]}")
                print(f"    {status}", file=sys.stderr, flush=True)
    suite.finish(name)


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def run_peak(args: argparse.Namespace, suite: Suite) -> None:
    entry = suite.start("peak")
    print("[peak] matmul peak ...", file=sys.stderr, flush=True)
    argv = ["--threads", str(args.threads), "--device", args.device]
    if args.quick:
        argv.append("--quick")
    entry["record"] = run_script("matmul_peak", HERE / "matmul_peak.py", argv, args)
    suite.finish("peak")


def run_loop(args: argparse.Namespace, suite: Suite) -> None:
    """Loop efficiency (benchmarks/loop_efficiency.py): isolated step / marginal wall time
    per step of `mtlrnn train`, small and reference configs."""
    entry = suite.start("loop")
    print("[loop] isolated step vs mtlrnn train ...", file=sys.stderr, flush=True)
    argv = ["--steps", "50", "--repeats", "1"] if args.quick else ["--steps", "1000"]
    entry["record"] = run_script("loop_efficiency", HERE / "loop_efficiency.py", argv, args)
    suite.finish("loop")


def loop_lines(data: dict[str, Any]) -> list[str]:
    record = (data.get("suites", {}).get("loop") or {}).get("record")
    if not record:
        return []
    lines = ["## Loop efficiency (`loop_efficiency.py`, goal >= 0.95)", ""]
    if not record.get("ok"):
        return [*lines, f"FAILED: {record.get('error', 'not run')}", ""]
    lines += [f"Runs of {record['steps']} and {2 * record['steps']} steps of `mtlrnn train`, "
              f"fastest of {record['repeats']}; isolated: the same jitted step back to back.",
              "", "| config | isolated ms/step | marginal ms/step | efficiency |",
              "|---|---:|---:|---:|"]
    for r in record["records"]:
        lines.append(f"| {r['config']} | {r['isolated_ms']:.2f} | {r['marginal_ms']:.2f} | "
                     f"{r['efficiency']:.2f} |")
    return [*lines, ""]


def run_memory(args: argparse.Namespace, suite: Suite) -> None:
    budget = 2 / 1024 if args.quick else args.budget_gib
    entry = suite.start("memory", cells=args.memory_cells, budget_gib=budget, records=[])
    for cell in args.memory_cells:
        print(f"[memory] {cell} ...", file=sys.stderr, flush=True)
        argv = ["--cell", cell, "--threads", str(args.threads), "--device", args.device,
                "--seed", str(args.seed)]
        if args.quick:
            argv.append("--quick")
        else:
            config = REFERENCE
            argv += ["--batch", str(config["batch"]), "--vocab", str(config["vocab"]),
                     "--embed", str(config["embed"]), "--hidden", str(config["hidden"]),
                     "--classes", ",".join(map(str, config["classes"])),
                     "--layers", str(config["layers"])]
        argv += ["--budget-gib", str(budget)]
        record = run_script(f"memory {cell}", HERE / "memory.py", argv, args)
        record.setdefault("cell", cell)
        entry["records"].append(record)
        suite.save()
    suite.finish("memory")


# ---------------------------------------------------------------------------------------
# Report


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def peak_gflops(data: dict[str, Any]) -> dict[str, float]:
    record = data.get("suites", {}).get("peak", {}).get("record") or {}
    return dict(record.get("peak_gflops") or {})


def suite_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One aggregated row per (point, variant) of a throughput sub-suite, in run order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in entry.get("runs", []):
        key = (json.dumps(run.get("point", {}), sort_keys=True), run.get("label", run["peer"]))
        groups.setdefault(key, []).append(run)
    order = {json.dumps(p, sort_keys=True): i for i, p in enumerate(entry.get("points", []))}
    labels = {v["label"]: i for i, v in enumerate(entry.get("variants", []))}
    rows = []
    for (point_key, label), runs in groups.items():
        first = runs[0]
        config = first.get("suite_config") or first.get("config") or {}
        options = first.get("options", {})
        cell = options.get("cell", "lstm")
        tokens = config["batch"] * config["length"]
        flops = common.model_flops_per_step(
            batch=config["batch"], length=config["length"], embed=config["embed"],
            hidden=config["hidden"], classes=tuple(config["classes"]),
            layers=config["layers"], cell=cell)["step"]
        row = throughput.aggregate(first["peer"], runs, tokens, flops)
        row.update(label=label, point=first.get("point", {}), options=options,
                   dtype=options.get("dtype", "float32"), cell=cell, tokens_per_step=tokens,
                   flops_step=flops, config=config)
        row["_order"] = (order.get(point_key, 0), labels.get(label, 99))
        rows.append(row)
    rows.sort(key=lambda r: r["_order"])
    for row in rows:
        del row["_order"]
    return rows


def baseline_of(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """torch_lstm's row at the same point with the same dtype."""
    for other in rows:
        if (other["peer"] == BASELINE and other["ok"] and other["point"] == row["point"]
                and other["dtype"] == row["dtype"] and other["cell"] == "lstm"):
            return other
    return None


def memory_cell(row: dict[str, Any]) -> str:
    parts = []
    if row.get("xla_peak_bytes") is not None:
        parts.append(f"{fmt_bytes(row['xla_peak_bytes'])} XLA est.")
    if row.get("device_peak_bytes") is not None:
        parts.append(f"{fmt_bytes(row['device_peak_bytes'])} device peak")
    if row.get("cuda_max_allocated_bytes") is not None:
        parts.append(f"{fmt_bytes(row['cuda_max_allocated_bytes'])} cuda max alloc")
    return "; ".join(parts) or "-"


def plot_memory(row: dict[str, Any]) -> tuple[float | None, str]:
    """The memory number plotted for a row, and what it is."""
    for key, what in (("xla_peak_bytes", "XLA est."), ("cuda_max_allocated_bytes", "cuda"),
                      ("rss_growth_bytes", "RSS growth"), ("max_rss_bytes", "max RSS")):
        if row.get(key) is not None:
            return float(row[key]), what
    return None, "-"


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{'K' if k == 'tasks' else k[0].upper()}={v}" for k, v in point.items())


def throughput_table(rows: list[dict[str, Any]], peak: dict[str, float]) -> list[str]:
    lines = [
        "| point | peer | step ms median [p10-p90] | tokens/s | vs torch_lstm | GFLOP/s "
        "| % peak | memory | RSS max / growth | first step s | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        point = _point_text(row["point"]) or "ref"
        if not row["ok"]:
            error = str(row.get("error", "failed")).splitlines()[0].replace("|", "\\|")
            status = "UNSUPPORTED" if row.get("unsupported") else "FAILED"
            error = error.removeprefix("unsupported: ")
            lines.append(f"| {point} | {row['label']} | {status}: {error} "
                         "| - | - | - | - | - | - | - | - |")
            continue
        base = baseline_of(row, rows)
        ratio = f"{base['step_ms_median'] / row['step_ms_median']:.2f}x" if base else "-"
        peak_value = peak.get(row["dtype"])
        percent = f"{100 * row['gflops_per_s'] / peak_value:.1f}%" if peak_value else "-"
        lines.append(
            f"| {point} | {row['label']} | {row['step_ms_median']:.2f} "
            f"[{row['step_ms_p10']:.2f}-{row['step_ms_p90']:.2f}] | "
            f"{row['tokens_per_s']:,.0f} | {ratio} | {row['gflops_per_s']:.3g} | {percent} | "
            f"{memory_cell(row)} | {fmt_bytes(row.get('max_rss_bytes'))} / "
            f"{fmt_bytes(row.get('rss_growth_bytes'))} | "
            f"{row['compile_or_first_step_s']:.2f} | {row.get('device_name', '-')} |")
    return lines


def bf16_speedups(rows: list[dict[str, Any]]) -> list[str]:
    found = []
    for row in rows:
        if row["dtype"] != "bfloat16" or not row["ok"]:
            continue
        fp32 = next((r for r in rows if r["ok"] and r["peer"] == row["peer"]
                     and r["point"] == row["point"] and r["dtype"] == "float32"
                     and {k: v for k, v in r["options"].items() if k != "dtype"}
                     == {k: v for k, v in row["options"].items() if k != "dtype"}), None)
        if fp32:
            found.append(f"{row['peer']} {fp32['step_ms_median'] / row['step_ms_median']:.2f}x")
    return found


def goal_lines(data: dict[str, Any]) -> list[str]:
    suites = data.get("suites", {})
    lines = []
    long = suites.get("long")
    if long:
        rows = [r for r in suite_rows(long) if r["point"].get("length") == GOAL_LONG_LENGTH]
        torch = next((r for r in rows if r["peer"] == BASELINE and r["ok"]), None)
        mingru = [r for r in rows if r["cell"] == "mingru" and r["ok"]]
        if torch and mingru:
            best = max(mingru, key=lambda r: r["tokens_per_s"])
            ratio = best["tokens_per_s"] / torch["tokens_per_s"]
            verdict = "met" if ratio >= GOAL_LONG_RATIO else "NOT met"
            lines.append(f"- Long sequences (L={GOAL_LONG_LENGTH}): best minGRU trunk "
                         f"({best['label']}) {best['tokens_per_s']:,.0f} tokens/s = "
                         f"{ratio:.2f}x torch_lstm (goal >= {GOAL_LONG_RATIO:g}x): **{verdict}** "
                         f"[{best.get('device_name', '?')}]")
        else:
            lines.append(f"- Long sequences: no successful minGRU and torch_lstm rows at "
                         f"L={GOAL_LONG_LENGTH} (not measured).")
    large = suites.get("large")
    if large:
        rows = suite_rows(large)
        for dtype in ("float32", "bfloat16"):
            ours = next((r for r in rows if r["peer"] == "mtlrnn" and r["dtype"] == dtype), None)
            if not ours or not ours["ok"]:
                lines.append(f"- Large config {dtype}: mtlrnn row missing or failed.")
                continue
            for peer in ("torch_lstm", "jax_cudnn_lstm"):
                other = next((r for r in rows if r["peer"] == peer and r["dtype"] == dtype),
                             None)
                if other is None:
                    continue
                if not other["ok"]:
                    why = "unsupported" if other.get("unsupported") else "failed"
                    error = str(other.get("error")).splitlines()[0].removeprefix("unsupported: ")
                    lines.append(f"- Large config {dtype}: {peer} {why} ({error}); "
                                 "no comparison.")
                    continue
                ratio = other["step_ms_median"] / ours["step_ms_median"]
                verdict = "met" if ratio >= 1.0 else "NOT met"
                reference = other.get("lstm_path", "").startswith("reference")
                caveat = " (jax's reference path, not cuDNN)" if reference else ""
                lines.append(f"- Large config {dtype}: mtlrnn {ours['step_ms_median']:.2f} ms "
                             f"vs {peer}{caveat} {other['step_ms_median']:.2f} ms = {ratio:.2f}x "
                             f"(goal >= 1x): **{verdict}** [{ours.get('device_name', '?')}]")
    memory = suites.get("memory")
    if memory:
        for record in memory.get("records", []):
            for run in record.get("runs", []) if record.get("ok") else []:
                if run.get("ok"):
                    lines.append(
                        f"- Memory ({record['cell']}, remat {'on' if run['remat'] else 'off'}): "
                        f"longest L in {fmt_bytes(record['budget_bytes'])} = "
                        f"{'>= ' if run.get('capped') else ''}{run['max_length']:,} "
                        f"(XLA estimate, {record.get('device_name', '?')}).")
    return lines


def markdown(data: dict[str, Any], plots: list[str], plot_note: str) -> str:
    machine = data["machine"]
    versions = machine.get("versions", {})
    peak = peak_gflops(data)
    protocol = data.get("protocol", {})
    lines = [
        "# Benchmark suite",
        "",
        f"Device: **{data['device']}**, {machine.get('device_name', '?')}"
        + (f" (GPUs: {', '.join(g['name'] + ' ' + g['memory'] for g in machine['gpus'])})"
           if machine.get("gpus") else "")
        + f"; CPU {machine.get('cpu_model')}, {machine.get('logical_cores')} logical cores, "
        f"{protocol.get('threads')} threads per peer; {machine.get('platform')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Started {data.get('started')}, updated {data.get('updated')}; load average at start "
        f"{machine.get('loadavg_start', '?')}, at end {machine.get('loadavg_end', '?')}."
        + (" **Quick (smoke) run: tiny shapes, numbers mean nothing.**" if data.get("quick")
           else ""),
        f"Protocol: per peer run, first step (compile) timed alone, {protocol.get('warmup')} "
        f"warm-up, {protocol.get('repeats')} timed steps at {REF_TOKENS} tokens/step (scaled "
        f"down with tokens per step, at least {protocol.get('min_repeats')}); reference and "
        f"dtype: {protocol.get('rounds')} round(s), median of round medians.",
        "",
    ]
    goals = goal_lines(data)
    if goals:
        lines += ["## Goals (issue 6)", "", *goals, ""]
    lines += loop_lines(data)
    suites = data.get("suites", {})
    if "peak" in suites:
        record = suites["peak"].get("record") or {}
        lines += ["## Matmul peak (`matmul_peak.py`)", ""]
        if record.get("ok"):
            lines += [f"Device {record.get('device_name')}; best of each dtype is its peak: "
                      + ", ".join(f"{k} **{v:,.1f} GFLOP/s**" for k, v in peak.items()) + ".",
                      "", "| M x K x N | dtype | ms | GFLOP/s |", "|---|---|---|---|"]
            for r in record.get("results", []):
                shape = " x ".join(map(str, r["shape"]))
                if "gflops" in r:
                    lines.append(f"| {shape} | {r['dtype']} | {r['median_s'] * 1e3:.4f} | "
                                 f"{r['gflops']:,.1f} |")
                else:
                    lines.append(f"| {shape} | {r['dtype']} | FAILED: {r.get('error')} | - |")
        else:
            lines.append(f"FAILED: {record.get('error', 'not run')}")
        lines.append("")
    for name in THROUGHPUT_SUITES:
        entry = suites.get(name)
        if not entry:
            continue
        config = entry.get("config", {})
        lines += [f"## {name}", "",
                  f"Base config: B={config.get('batch')}, L={config.get('length')}, "
                  f"vocab {config.get('vocab')}, E={config.get('embed')}, "
                  f"H={config.get('hidden')}, {config.get('layers')} layer(s), heads "
                  f"{list(config.get('classes', []))}; {entry.get('rounds', 1)} round(s); "
                  f"status {entry.get('status')}."]
        if entry.get("status") != "complete":
            lines.append("**Incomplete: the sub-suite was interrupted or killed (rows below "
                         "are the runs it finished).**")
        if entry.get("note"):
            lines.append(entry["note"])
        rows = suite_rows(entry)
        lines += ["", *throughput_table(rows, peak), ""]
        speedups = bf16_speedups(rows)
        if speedups:
            lines += ["bf16 speed-up (float32 median / bfloat16 median, same peer and point): "
                      + "; ".join(speedups) + ".", ""]
    if "memory" in suites:
        entry = suites["memory"]
        lines += ["## memory (`memory.py`)", "",
                  "Longest L whose training step (B=32, E=128, H=256, heads 17/50/40 unless "
                  "quick) fits the budget by XLA's compiled memory analysis (temp + arguments "
                  "+ outputs - donated aliases), with and without remat.",
                  "", "| cell | remat | longest L | bytes at L | bytes/token | marginal "
                  "bytes/token | queries | device |", "|---|---|---|---|---|---|---|---|"]
        for record in entry.get("records", []):
            if not record.get("ok") and not record.get("runs"):
                lines.append(f"| {record.get('cell')} | - | FAILED: "
                             f"{str(record.get('error')).splitlines()[0]} | - | - | - | - | - |")
                continue
            for run in record.get("runs", []):
                remat = "on" if run["remat"] else "off"
                if not run.get("ok"):
                    lines.append(f"| {record['cell']} | {remat} | FAILED: "
                                 f"{str(run.get('error')).splitlines()[0]} | - | - | - | - "
                                 f"| - |")
                    continue
                marginal = run.get("marginal_bytes_per_token")
                lines.append(
                    f"| {record['cell']} | {remat} | "
                    f"{'>= ' if run.get('capped') else ''}{run['max_length']:,} | "
                    f"{fmt_bytes(run.get('bytes_at_max'))} | "
                    f"{run.get('bytes_per_token', 0):,.0f} | "
                    f"{'-' if marginal is None else f'{marginal:,.0f}'} | "
                    f"{len(run.get('queries', []))} | {record.get('device_name', '-')} |")
        lines += ["", f"Budget {entry.get('budget_gib')} GiB; status {entry.get('status')}.",
                  ""]
    lines += [
        "## Notes",
        "",
        "- vs torch_lstm: torch_lstm's median step time / the row's, same point and dtype "
        "(> 1 is faster than torch). GFLOP/s: model FLOPs (3x forward matmuls, "
        "`peers/common.py:model_flops_per_step`, per cell) over the median step; % peak: of "
        "the measured matmul peak of the same dtype.",
        "- memory: XLA est. = XLA's compiled estimate of the JAX step (temp + arguments + "
        "outputs - donated aliases); device peak = JAX allocator peak (GPU); cuda max alloc "
        "= torch.cuda.max_memory_allocated (GPU); max RSS = the peer process's peak resident "
        "memory (includes the framework itself) / its growth from the model being built to the "
        "end of timing (activations, gradients, optimizer state, allocator caches; for JAX "
        "also compilation). long_sequences.png plots XLA est. for JAX peers, cuda max alloc "
        "for torch on GPU and RSS growth for torch on CPU.",
        "- jax_cudnn_lstm on CPU runs jax.experimental.rnn's lax.scan reference LSTM "
        "(`lstm_path` in suite.json); cuDNN only on GPU.",
    ]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots) + "."]
    if plot_note:
        lines += ["", plot_note]
    return "\n".join(lines) + "\n"


def make_plots(data: dict[str, Any], out: Path) -> tuple[list[str], str]:
    """Writes the plots; returns (relative paths, note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed (rerun with --report-only)."
    suites = data.get("suites", {})
    folder = out / "plots"
    written = []
    specs = (("hidden", "hidden", "hidden size H", "throughput_vs_hidden.png"),
             ("length", "length", "sequence length L", "throughput_vs_length.png"),
             ("tasks", "tasks", "number of tasks K", "throughput_vs_tasks.png"))
    device = data.get("machine", {}).get("device_name", data.get("device"))

    def log2_axis(ax: Any, series: dict[str, list]) -> None:
        values = sorted({x for points in series.values() for x, _ in points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())

    def lines_of(rows: list[dict[str, Any]], param: str,
                 value: Callable[[dict[str, Any]], float | None]) -> dict[str, list]:
        series: dict[str, list] = {}
        for row in rows:
            if row["ok"] and param in row["point"]:
                y = value(row)
                if y is not None:
                    series.setdefault(row["label"], []).append((row["point"][param], y))
        return {k: sorted(v) for k, v in series.items()}

    for name, param, xlabel, filename in specs:
        entry = suites.get(name)
        series = lines_of(suite_rows(entry), param, lambda r: r["tokens_per_s"]) if entry else {}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        log2_axis(ax, series)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training tokens/s")
        ax.set_title(f"Throughput vs {xlabel} ({device})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        folder.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(folder / filename, dpi=110)
        plt.close(fig)
        written.append(f"plots/{filename}")
    entry = suites.get("long")
    if entry:
        rows = suite_rows(entry)
        speed = lines_of(rows, "length", lambda r: r["tokens_per_s"])
        if speed:
            memory: dict[str, list] = {}
            for row in rows:
                value, what = plot_memory(row)
                if row["ok"] and value is not None:
                    memory.setdefault(f"{row['label']} ({what})", []).append(
                        (row["point"]["length"], value / 2 ** 20))
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
            for label, points in speed.items():
                xs, ys = zip(*points, strict=True)
                ax1.plot(xs, ys, marker="o", label=label)
            for label, points in memory.items():
                xs, ys = zip(*sorted(points), strict=True)
                ax2.plot(xs, ys, marker="o", label=label)
            for ax, ylabel in ((ax1, "training tokens/s"), (ax2, "peak memory (MiB)")):
                log2_axis(ax, speed)
                ax.set_yscale("log")
                ax.set_xlabel("sequence length L")
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
            ax1.set_title(f"Long sequences: throughput ({device})", fontsize=9)
            ax2.set_title("Memory: XLA estimate (JAX); torch: cuda max alloc (GPU) or RSS growth",
                          fontsize=9)
            folder.mkdir(parents=True, exist_ok=True)
            fig.tight_layout()
            fig.savefig(folder / "long_sequences.png", dpi=110)
            plt.close(fig)
            written.append("plots/long_sequences.png")
    return written, ""


def write_report(data: dict[str, Any], out: Path, with_plots: bool = True) -> Path:
    plots, note = make_plots(data, out) if with_plots else ([], "Plots: written at the end.")
    path = out / "suite.md"
    path.write_text(markdown(data, plots, note))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        path = args.out / "suite.json"
        if not path.is_file():
            print(f"no {path}", file=sys.stderr)
            return 1
        report = write_report(json.loads(path.read_text()), args.out)
        print(f"wrote {report} and plots from {path}", file=sys.stderr)
        return 0
    suite = Suite(args)
    if hasattr(os, "getloadavg"):
        suite.data["machine"]["loadavg_start"] = list(os.getloadavg())
    suite.save()
    start = time.perf_counter()
    for name in [s for s in ALL_SUITES if s in args.only]:  # peak first, for % of peak
        if name == "peak":
            run_peak(args, suite)
        elif name == "loop":
            run_loop(args, suite)
        elif name == "memory":
            run_memory(args, suite)
        else:
            run_throughput(name, args, suite)
        # Partial reports as we go: a suite killed later still leaves a readable suite.md.
        write_report(suite.data, args.out, with_plots=False)
    report = write_report(suite.data, args.out)
    print(report.read_text())
    print(f"wrote {suite.path}, {report} and {args.out / 'plots'} in "
          f"{time.perf_counter() - start:.0f} s ({platform.node()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
