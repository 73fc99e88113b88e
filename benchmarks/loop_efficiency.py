"""Loop efficiency: the isolated train step against the marginal wall time per step of
`mtlrnn train` with the same config (issue 12's goal: >= 0.95).

    python benchmarks/loop_efficiency.py                      # small and reference configs
    python benchmarks/loop_efficiency.py --configs small --steps 200 --repeats 1   # smoke

Isolated: the step `mtlrnn train` builds for the config (the same model, optimizer, weighting
and batch shapes), jitted with the state donated, called back to back on batches already on
the device, `block_until_ready` once per repeat; the median over repeats of the time per step.
Marginal: `mtlrnn train` runs of N and 2N steps (checkpoints and evaluation off, logging every
50 steps), each in its own process, the fastest of `--repeats` each; (t_2N - t_N) / N is a step
as a user lives it (data, placement, dispatch, metrics, hooks), start-up and compilation
cancelled out. Efficiency = isolated / marginal (1.0: the loop adds nothing). Each measurement
runs in its own process. Prints one JSON line (for benchmarks/run.py) after a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

COMMON = [
    "checkpoint.enabled=false",
    "logging.progress=false",
    "logging.plots=false",
    "train.log_every=50",
    "train.eval_every=0",
]
CONFIGS = {
    "small": ["data.synthetic.max_len=32", "data.buckets=[32]", "model.embed_dim=32",
              "model.hidden_size=64", "train.batch_size=32"],
    "reference": ["data.synthetic.max_len=64", "data.buckets=[64]", "model.embed_dim=128",
                  "model.hidden_size=256", "train.batch_size=32"],
}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))


def isolated(overrides: list[str], steps: int, repeats: int) -> dict[str, Any]:
    """In this process: the median ms per step of the config's jitted step, back to back,
    with the process settings `mtlrnn train` applies first (mtlrnn/cpu_tuning.py)."""
    from mtlrnn import cpu_tuning
    from mtlrnn.cli import _largest_buffer
    from mtlrnn.config import load_config

    cpu_tuning.apply(largest_buffer=_largest_buffer(load_config(None, overrides)))
    import jax

    from mtlrnn.config import resolve_tasks
    from mtlrnn.data.batching import train_batches
    from mtlrnn.training.run import load_suite
    from mtlrnn.training.run import model_for
    from mtlrnn.training.step import build_strategy
    from mtlrnn.training.step import create_train_state
    from mtlrnn.training.step import make_optimizer
    from mtlrnn.training.step import make_train_step

    cfg = load_config(None, overrides)
    suite = load_suite(cfg)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    model = model_for(cfg, tasks, suite)
    strategy = build_strategy(cfg.weighting, tasks)
    optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    stream = train_batches(suite.splits["train"], tasks, batch_size=cfg.train.batch_size,
                           buckets=cfg.data.buckets, seed=0)
    batches = [jax.device_put(next(stream)) for _ in range(8)]
    state = jax.device_put(create_train_state(model, optimizer, strategy, batches[0], seed=0))
    step = jax.jit(make_train_step(model, optimizer, strategy, schedule,
                                   grad_mode=cfg.weighting.mode), donate_argnums=0)
    for i in range(5):  # compile and warm up
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready((state, metrics))
        per_step.append((time.perf_counter() - t0) / steps)
    return {"ms": 1e3 * statistics.median(per_step), "all_ms": [1e3 * s for s in per_step]}


def _train(overrides: list[str], steps: int) -> float:
    workdir = tempfile.mkdtemp(prefix="loop-efficiency-")
    cmd = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", workdir, "--quiet"]
    for item in [*overrides, f"train.steps={steps}"]:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def measure(name: str, steps: int, repeats: int) -> dict[str, Any]:
    cache = tempfile.mkdtemp(prefix="loop-efficiency-cache-")
    overrides = [*CONFIGS[name], *COMMON, f"train.compile_cache={cache}"]
    proc = subprocess.run(
        [sys.executable, __file__, "--isolated", json.dumps(overrides), "--steps", str(steps),
         "--repeats", str(max(repeats, 3))],
        env=_env(), capture_output=True, text=True, check=True)
    iso = json.loads(proc.stdout.strip().splitlines()[-1])
    walls = {n: [_train(overrides, n) for _ in range(repeats)] for n in (steps, 2 * steps)}
    marginal_ms = 1e3 * (min(walls[2 * steps]) - min(walls[steps])) / steps
    return {"config": name, "overrides": CONFIGS[name], "isolated_ms": iso["ms"],
            "isolated_all_ms": iso["all_ms"], "wall_s": {str(k): v for k, v in walls.items()},
            "marginal_ms": marginal_ms, "efficiency": iso["ms"] / marginal_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="small,reference")
    parser.add_argument("--steps", type=int, default=1000, help="N (runs of N and 2N steps)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--isolated", help=argparse.SUPPRESS)  # child: JSON overrides
    args = parser.parse_args()
    if args.isolated:
        print(json.dumps(isolated(json.loads(args.isolated), args.steps, args.repeats)))
        return
    import jax

    records = [measure(name, args.steps, args.repeats) for name in args.configs.split(",")]
    print("| config | isolated ms/step | marginal ms/step | efficiency |")
    print("|---|---:|---:|---:|")
    for r in records:
        print(f"| {r['config']} | {r['isolated_ms']:.2f} | {r['marginal_ms']:.2f} | "
              f"{r['efficiency']:.2f} |")
    print(json.dumps({"ok": True, "name": "loop_efficiency", "device": jax.default_backend(),
                      "steps": args.steps, "repeats": args.repeats, "records": records}))


if __name__ == "__main__":
    main()
