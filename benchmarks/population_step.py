"""Train-step throughput of a population (``train.num_seeds = S``): one jitted step vmapped over
S seeds against S separate steps of one seed.

For the default config (``mtlrnn.config.default_config()`` plus ``--set`` overrides) the
harness times, each configuration in its own subprocess with the same thread environment
(benchmarks/peers/common.py's ``child_env``):

  * ``single``: ``jax.jit(step, donate_argnums=0)`` on one seed's state and batch;
  * ``S`` in ``--seeds``: ``jax.jit(jax.vmap(step), donate_argnums=0)`` on S stacked states
    and a stacked batch ``[S, B, L, ...]``, as ``mtlrnn.training.run`` builds it for
    ``train.num_seeds = S``.

Every seed trains on its own fixed batch (its stream's first batch, padded to ``--length``)
after ``--warmup`` steps; each timed step ends in ``jax.block_until_ready``; a configuration's
time is the median of ``--repeats`` steps, and with ``--rounds R`` the median of R such
subprocess medians (rounds interleave the configurations, so load drift hits each alike).

    python benchmarks/population_step.py [--seeds 1,2,4,8] [--batch 32] [--length 40]
        [--repeats 30] [--warmup 5] [--rounds 1] [--threads N] [--set model.cell=gru ...]
        [--out benchmarks/results/<machine>]

Per S it reports ms per step, seeds/s (S / step seconds) and the speed-up
``S * single_ms / vmapped_ms`` (> 1: the vmapped step trains S seeds faster than S separate
steps; the issue's goal is >= 1.2 at S = 4 on CPU). Writes <out>/population_step_<mode>.json and
<out>/population_step_<mode>.md (--mode vmap or map) and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import throughput  # sibling script: machine info, JSON-line parsing, thread environment

common = throughput.common
HERE = throughput.HERE
REPO_ROOT = throughput.REPO_ROOT
GOAL_SEEDS = 4
GOAL_RATIO = 1.2


def _int_list(text: str) -> tuple[int, ...]:
    return throughput.common.int_list(text, 1, "population sizes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_int_list, default=(1, 2, 4, 8),
                        help="population sizes S of the vmapped step")
    parser.add_argument("--batch", type=int, default=32, help="B per seed (train.batch_size)")
    parser.add_argument("--length", type=int, default=40, help="L: batches padded to this")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mode", choices=("vmap", "map"), default="vmap",
                        help="train.population_mode of the population step")
    parser.add_argument("--tuning", choices=("cli", "seeds", "off"), default="seeds",
                        help="mtlrnn/cpu_tuning.py sized from one seed's batch (cli: what "
                        "mtlrnn train does), from all seeds' rows (seeds), or not applied")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, as mtlrnn train --set")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/out)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds before one configuration's subprocess is killed")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "single" or S
    args = parser.parse_args(argv)
    if min(args.batch, args.length, args.repeats, args.rounds, args.threads) < 1:
        parser.error("--batch, --length, --repeats, --rounds and --threads must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.out is None:
        args.out = HERE / "out"
    args.device = "cpu"  # throughput.machine_info's thread environment
    return args


# ------------------------------------------------------------------------------------- worker


def build(args: argparse.Namespace, seeds: int) -> tuple[Any, list[Any], list[dict], Any]:
    """The un-jitted train step, ``seeds`` fresh states, one fixed batch per seed, the tasks."""
    from mtlrnn.config import apply_overrides
    from mtlrnn.config import default_config
    from mtlrnn.config import resolve_tasks
    from mtlrnn.data.batching import pad_time
    from mtlrnn.data.batching import train_batches
    from mtlrnn.data.sources import load_data
    from mtlrnn.training.step import build_model
    from mtlrnn.training.step import build_strategy
    from mtlrnn.training.step import create_train_state
    from mtlrnn.training.step import make_optimizer
    from mtlrnn.training.step import make_train_step

    cfg = apply_overrides(default_config(), [f"train.batch_size={args.batch}", *args.sets])
    data = load_data(cfg.data)
    tasks = resolve_tasks(cfg.tasks, data.tasks)
    model = build_model(cfg.model, tasks, vocab_size=data.vocab_size,
                        num_features=data.num_features, char_vocab_size=data.char_vocab_size)
    strategy = build_strategy(cfg.weighting, tasks)
    optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    step = make_train_step(model, optimizer, strategy, schedule,
                           grad_mode=cfg.weighting.mode, chunk_size=cfg.weighting.chunk_size,
                           accumulate=cfg.train.accumulate)
    states, batches = [], []
    for s in range(seeds):
        seed = cfg.train.seed + s
        stream = train_batches(data.splits["train"], tasks, batch_size=args.batch,
                               buckets=(args.length,), seed=seed)
        batch = pad_time(next(stream), tasks, args.length)
        batches.append(batch)
        states.append(create_train_state(model, optimizer, strategy, batch, seed=seed))
    return step, states, batches, tasks


def tune(args: argparse.Namespace, seeds: int) -> dict[str, bool]:
    """What ``mtlrnn train`` applies before JAX starts (mtlrnn/cpu_tuning.py), its largest
    buffer estimated from one seed's batch (``--tuning cli``, as the command line does) or
    from all ``seeds`` seeds' rows (``--tuning seeds``: a population step's buffers hold
    every seed's activations), or nothing (``--tuning off``)."""
    if args.tuning == "off":
        return {"malloc": False, "single_arena": False}
    from mtlrnn import cpu_tuning
    from mtlrnn.config import apply_overrides
    from mtlrnn.config import default_config
    from mtlrnn.model.cells import get_cell

    cfg = apply_overrides(default_config(), args.sets)
    largest = cpu_tuning.largest_buffer_bytes(
        batch=args.batch * (seeds if args.tuning == "seeds" else 1), length=args.length,
        hidden=cfg.model.hidden_size, gates=get_cell(cfg.model.cell).num_gates,
        directions=2 if cfg.model.bidirectional else 1,
        itemsize=2 if cfg.model.compute_dtype == "bfloat16" else 4)
    return cpu_tuning.apply(largest_buffer=largest)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time one configuration in this process; returns its JSON record."""
    single = args.worker == "single"
    seeds = 1 if single else int(args.worker)
    tuning = tune(args, seeds)  # before the first JAX computation
    import jax
    import jax.numpy as jnp

    from mtlrnn.data.batching import stack_batches

    step, states, batches, tasks = build(args, seeds)
    if single:
        fn = jax.jit(step, donate_argnums=0)
        state = states[0]
        batch = jax.tree.map(jnp.asarray, batches[0])
    else:
        from mtlrnn.training.step import population_step

        fn = jax.jit(population_step(step, args.mode), donate_argnums=0)
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        batch = jax.tree.map(jnp.asarray, stack_batches(batches, tasks))
    state = jax.block_until_ready(state)
    batch = jax.block_until_ready(batch)
    start = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready((state, metrics))
    first_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, metrics = fn(state, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = fn(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    loss = np.asarray(metrics["loss"])
    return {
        "ok": bool(np.all(np.isfinite(loss))),
        "config": args.worker,
        "seeds": seeds,
        "step_ms": [float(t) for t in ms],
        "step_ms_median": float(np.median(ms)),
        "step_ms_p10": float(np.percentile(ms, 10)),
        "step_ms_p90": float(np.percentile(ms, 90)),
        "compile_or_first_step_s": first_s,
        "loss": loss.tolist(),
        "cpu_tuning": tuning,
        "backend": jax.default_backend(),
        "device_name": jax.devices()[0].device_kind,
    }


# ------------------------------------------------------------------------------------ harness


def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One subprocess timing configuration ``name`` ("single" or S)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--batch", str(args.batch), "--length", str(args.length),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--tuning", args.tuning, "--mode", args.mode]
    for item in args.sets:
        cmd += ["--set", item]
    env = common.child_env(args.threads)
    try:
        proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return common.failure(name, f"timed out after {args.timeout:.0f} s")
    record = throughput._last_json_line(proc.stdout)
    if record is None or proc.returncode != 0:
        return common.failure(name, f"exit {proc.returncode}; stderr:\n"
                              + throughput._tail(proc.stderr))
    return record


def summarize(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> list[dict]:
    """One row per S: median ms over rounds, seeds/s and the speed-up over S single steps."""

    def median(name: str) -> float | None:
        good = [r["step_ms_median"] for r in runs[name] if r.get("ok")]
        return float(np.median(good)) if good else None

    single = median("single")
    rows = []
    for s in args.seeds:
        ms = median(str(s))
        row: dict[str, Any] = {"seeds": s, "ok": ms is not None}
        if ms is not None:
            row.update(step_ms=ms, seeds_per_s=s / (ms / 1e3),
                       round_medians_ms=[r["step_ms_median"] for r in runs[str(s)] if r.get("ok")])
            if single is not None:
                row["ratio"] = s * single / ms
        else:
            row["error"] = runs[str(s)][-1].get("error", "failed")
        rows.append(row)
    return rows


def markdown(report: dict[str, Any]) -> str:
    machine, config = report["machine"], report["config"]
    single = report["single"]
    lines = [
        f"# Population step (train.num_seeds = S, population_mode {config.get('mode', 'vmap')}): "
        "one step of S seeds vs S single steps",
        "",
        f"Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['schedulable_cores']} schedulable), {machine['threads_per_peer']} threads; "
        f"{machine['platform']}; jax {machine['versions'].get('jax', '?')}.",
        f"Config: default_config() with B={config['batch']}, L={config['length']}"
        + (f", overrides {' '.join(config['sets'])}" if config["sets"] else "")
        + f"; cpu_tuning {config['tuning']}; warm-up {config['warmup']}, "
        f"{config['repeats']} timed steps x {config['rounds']} round(s), each configuration in "
        "its own process.",
        f"Started {report['started']}; load average at start {machine.get('loadavg_start', '?')}, "
        f"at end {machine.get('loadavg_end', '?')}.",
        "",
    ]
    if single.get("ok"):
        lines.append(f"Single step (jit, one seed): **{single['step_ms']:.2f} ms** "
                     f"({1e3 / single['step_ms']:.1f} seeds/s).")
    else:
        lines.append(f"Single step: FAILED: {single.get('error', '?')}")
    lines += [
        "",
        "| S | population ms/step | seeds/s | S x single / population |",
        "|---|---|---|---|",
    ]
    for r in report["rows"]:
        if not r["ok"]:
            error = str(r.get("error", "failed")).splitlines()[0].replace("|", "\\|")
            lines.append(f"| {r['seeds']} | FAILED: {error} | - | - |")
            continue
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"| {r['seeds']} | {r['step_ms']:.2f} | {r['seeds_per_s']:.1f} | {ratio} |")
    goal = next((r for r in report["rows"] if r["seeds"] == GOAL_SEEDS and "ratio" in r), None)
    if goal is not None:
        verdict = "met" if goal["ratio"] >= GOAL_RATIO else "not met"
        lines += ["", f"Goal: S={GOAL_SEEDS} at >= {GOAL_RATIO}x the throughput of "
                  f"{GOAL_SEEDS} single steps: {goal['ratio']:.2f}x, **{verdict}**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        try:
            record = worker(args)
        except Exception as err:  # reported as a failed row by the harness
            record = common.failure(args.worker, f"{type(err).__name__}: {err}")
        print(json.dumps(record), flush=True)
        return 0 if record.get("ok") else 1
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = throughput.machine_info(args)
    names = ["single", *(str(s) for s in args.seeds)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            record = run_config(name, args)
            record["round"] = round_index
            runs[name].append(record)
            status = (f"{record['step_ms_median']:.2f} ms" if record.get("ok")
                      else f"FAILED: {str(record.get('error')).splitlines()[0]}")
            print(f"[round {round_index + 1}/{args.rounds}] {name}: {status}", file=sys.stderr,
                  flush=True)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())
    good = [r["step_ms_median"] for r in runs["single"] if r.get("ok")]
    single = ({"ok": True, "step_ms": float(np.median(good)), "round_medians_ms": good}
              if good else {"ok": False, "error": runs["single"][-1].get("error", "failed")})
    report = {
        "benchmark": "population_step",
        "started": started,
        "command": [sys.executable, *sys.argv],
        "machine": machine,
        "config": {"batch": args.batch, "length": args.length, "seeds": list(args.seeds),
                   "repeats": args.repeats, "warmup": args.warmup, "rounds": args.rounds,
                   "threads": args.threads, "tuning": args.tuning, "sets": list(args.sets),
                   "mode": args.mode},
        "single": single,
        "rows": summarize(args, runs),
        "runs": runs,
    }
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"population_step_{args.mode}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    base.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {base}.json and {base}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
