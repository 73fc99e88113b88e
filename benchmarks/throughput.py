"""Training-step throughput of mtlrnn against peer implementations of the same model.

Every peer (benchmarks/peers/<name>.py) runs in its own subprocess, one after another, with
the same thread count, shapes and work (forward + loss + backward + Adam update); see
benchmarks/peers/common.py for the protocol and benchmarks/README.md for how to read the
numbers.

    python benchmarks/throughput.py [--peers mtlrnn,torch_lstm,flax_rnn,keras_lstm]
        [--repeats 30] [--warmup 5] [--rounds 1] [--threads N] [--out benchmarks/out]
        [--batch 32 --length 64 --vocab 5000 --embed 128 --hidden 256 --classes 17,50,40]
        [--cell lstm --impl I --scan S --unroll N --remat --remat-chunk N --dtype float32]

The variant flags (--cell ... --dtype) are passed to every peer when set to a non-default
value; a peer that cannot honour one reports an "unsupported" failure row.

Writes <out>/throughput.json and <out>/throughput.md and prints the markdown table.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
REPO_ROOT = HERE.parent
DEFAULT_PEERS = ("mtlrnn", "torch_lstm", "flax_rnn", "keras_lstm")
BASELINE = "torch_lstm"
SCRIPTS = {"mtlrnn": "mtlrnn_peer.py"}  # every other peer <name> lives in <name>.py
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "keras")
# Per-run fields copied into a peer's aggregate: memory (see peers/common.py) and device.
RECORD_KEYS = ("xla_peak_bytes", "xla_temp_bytes", "device_peak_bytes",
               "cuda_max_allocated_bytes", "max_rss_bytes", "rss_growth_bytes", "device_name",
               "backend",
               "lstm_path", "trunk_dtype", "model")


def _load_common() -> Any:
    # common.py is a script-side module (peers import it from their own directory).
    spec = importlib.util.spec_from_file_location("bench_peers_common", PEERS_DIR / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help="comma-separated peer names (scripts in benchmarks/peers)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every peer this many times, interleaved; report medians")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds before one peer run is killed and reported as failed")
    common.add_model_args(parser)
    common.add_variant_args(parser)
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not args.peers:
        parser.error("--peers names no peer")
    if args.rounds < 1 or args.threads < 1:
        parser.error(f"need --rounds >= 1 and --threads >= 1, got {args.rounds}, {args.threads}")
    return args


def peer_argv(args: argparse.Namespace) -> list[str]:
    return [
        "--batch", str(args.batch), "--length", str(args.length), "--vocab", str(args.vocab),
        "--embed", str(args.embed), "--hidden", str(args.hidden),
        "--classes", ",".join(str(c) for c in args.classes), "--layers", str(args.layers),
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device,
        *common.variant_argv(args),
    ]


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_peer(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One subprocess run of one peer; always returns a record with "peer" and "ok"."""
    script = PEERS_DIR / SCRIPTS.get(name, f"{name}.py")
    if not script.is_file():
        return common.failure(name, f"script missing: {script.relative_to(REPO_ROOT)}")
    env = common.child_env(args.threads, args.device)
    cmd = [sys.executable, str(script), *peer_argv(args)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return common.failure(name, f"timed out after {args.timeout:.0f} s")
    wall_s = time.perf_counter() - start
    record = _last_json_line(proc.stdout)
    if record is None:
        return common.failure(name, f"exit {proc.returncode}, no JSON line; stderr:\n"
                              + _tail(proc.stderr), wall_s=wall_s)
    if record.get("ok") and proc.returncode != 0:
        record = common.failure(name, f"exit {proc.returncode} after reporting ok")
    if not record.get("ok") and proc.stderr.strip():
        record["stderr_tail"] = _tail(proc.stderr)
    record["peer"] = name
    record["wall_s"] = wall_s
    return record


def _cpu_model() -> str:
    return common.cpu_model()


def _versions() -> dict[str, str]:
    # Read from package metadata so the harness itself imports no framework.
    found = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            found[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            found[lib] = "not installed"
    return found


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    info = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "schedulable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "versions": _versions(),
        "threads_per_peer": args.threads,
        "thread_env": common.thread_env(args.threads, args.device),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def aggregate(name: str, rounds: list[dict[str, Any]], tokens_per_step: int,
              flops_per_step: float) -> dict[str, Any]:
    """Median over rounds of each round's median; p10/p90 over all rounds' raw step times."""
    good = [r for r in rounds if r.get("ok")]
    if not good:
        return {"peer": name, "ok": False, "error": rounds[-1].get("error", "failed"),
                "unsupported": bool(rounds[-1].get("unsupported")), "rounds": rounds}
    median_ms = float(np.median([r["step_ms_median"] for r in good]))
    raw = [t for r in good for t in r.get("step_ms", [])]
    p10 = float(np.percentile(raw, 10)) if raw else float(np.median([r["step_ms_p10"]
                                                                      for r in good]))
    p90 = float(np.percentile(raw, 90)) if raw else float(np.median([r["step_ms_p90"]
                                                                      for r in good]))
    return {
        "peer": name,
        "ok": True,
        "step_ms_median": median_ms,
        "step_ms_p10": p10,
        "step_ms_p90": p90,
        "tokens_per_s": tokens_per_step / (median_ms / 1e3),
        "gflops_per_s": flops_per_step / (median_ms / 1e3) / 1e9,
        "compile_or_first_step_s": float(np.median([r["compile_or_first_step_s"]
                                                    for r in good])),
        "rounds_ok": len(good),
        "rounds_failed": len(rounds) - len(good),
        "round_medians_ms": [r["step_ms_median"] for r in good],
        "versions": good[-1].get("versions", {}),
        "threads": good[-1].get("threads"),
        # Memory and device name of the last good round (they do not vary between rounds).
        **{k: good[-1][k] for k in RECORD_KEYS if k in good[-1]},
        "rounds": rounds,
    }


def _fmt_versions(versions: dict[str, str]) -> str:
    skip = {"python", "numpy"}
    return ", ".join(f"{k} {v}" for k, v in versions.items() if k not in skip) or "-"


def markdown(report: dict[str, Any]) -> str:
    machine, config, results = report["machine"], report["config"], report["results"]
    baseline = next((r for r in results if r["peer"] == BASELINE and r["ok"]), None)
    lines = [
        "# Training-step throughput",
        "",
        f"Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['schedulable_cores']} schedulable), {machine['threads_per_peer']} "
        f"threads per peer; {machine['platform']}; python {machine['versions']['python']}.",
        f"Config: B={config['batch']}, L={config['length']}, vocab {config['vocab']}, "
        f"E={config['embed']}, H={config['hidden']}, {config['layers']} "
        f"{config.get('cell', 'lstm').upper()} layer(s), heads {config['classes']}, Adam 1e-3, "
        f"{config.get('dtype', 'float32')}, device {config['device']}; "
        f"warm-up {config['warmup']}, {config['repeats']} timed steps x "
        f"{report['rounds']} round(s)."
        + (f" Variant flags: {' '.join(report['variant_argv'])}."
           if report.get("variant_argv") else ""),
        f"Model FLOPs per step: {report['flops']['step'] / 1e9:.3f} GFLOP "
        "(3x forward matmuls; see benchmarks/README.md).",
        f"Started {report['started']}; load average at start "
        f"{machine.get('loadavg_start', '?')}, at end {machine.get('loadavg_end', '?')}.",
        "",
        "| peer | step ms median [p10-p90] | tokens/s | vs torch_lstm | GFLOP/s "
        "| first step / compile s | versions |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r["ok"]:
            error = str(r.get("error", "failed")).splitlines()[0].replace("|", "\\|")
            status = "UNSUPPORTED" if r.get("unsupported") else "FAILED"
            error = error.removeprefix("unsupported: ")
            lines.append(f"| {r['peer']} | {status}: {error} | - | - | - | - | - |")
            continue
        relative = (f"{baseline['step_ms_median'] / r['step_ms_median']:.2f}x"
                    if baseline else "-")
        lines.append(
            f"| {r['peer']} | {r['step_ms_median']:.2f} [{r['step_ms_p10']:.2f}-"
            f"{r['step_ms_p90']:.2f}] | {r['tokens_per_s']:,.0f} | {relative} | "
            f"{r['gflops_per_s']:.3g} | {r['compile_or_first_step_s']:.2f} | "
            f"{_fmt_versions(r['versions'])} |")
    lines += ["", "vs torch_lstm = torch_lstm median step time / peer median step time "
              "(> 1 is faster than torch)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = machine_info(args)
    tokens_per_step = args.batch * args.length
    flops = common.model_flops_per_step(batch=args.batch, length=args.length, embed=args.embed,
                                        hidden=args.hidden, classes=tuple(args.classes),
                                        layers=args.layers, cell=args.cell)
    per_peer: dict[str, list[dict[str, Any]]] = {name: [] for name in args.peers}
    for round_index in range(args.rounds):
        # Rotate the order each round so no peer always runs first (cold caches, turbo).
        shift = round_index % len(args.peers)
        for name in args.peers[shift:] + args.peers[:shift]:
            print(f"[round {round_index + 1}/{args.rounds}] {name} ...", file=sys.stderr,
                  flush=True)
            record = run_peer(name, args)
            record["round"] = round_index
            per_peer[name].append(record)
            status = (f"{record['step_ms_median']:.2f} ms" if record.get("ok")
                      else f"FAILED: {str(record.get('error')).splitlines()[0]}")
            print(f"    {status}", file=sys.stderr, flush=True)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())
    results = [aggregate(name, per_peer[name], tokens_per_step, flops["step"])
               for name in args.peers]
    config = common.config_of(args)
    report = {
        "benchmark": "throughput",
        "started": started,
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "config": config,
        "variant_argv": common.variant_argv(args),
        "rounds": args.rounds,
        "tokens_per_step": tokens_per_step,
        "flops": flops,
        "baseline": BASELINE,
        "results": results,
    }
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "throughput.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.md'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
