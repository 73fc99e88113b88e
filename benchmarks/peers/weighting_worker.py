"""Weighting-overhead worker: step time of each weighting method against `equal`, one process.

One process per (K, gradient mode). It builds the model of benchmarks/peers/mtlrnn_peer.py
(K token-classification tasks, one unidirectional LSTM, dropout 0, Adam 1e-3) and times the
jitted train step (`mtlrnn.make_train_step`, state donated) of:

  * each method's `ratio_to_equal` comes from alternating blocks of its step and `equal`'s
    (paired_ratio), so drift of the machine over the run cancels; `unpaired_ratio` uses
    the pooled baseline below.
  * `equal` (the baseline), timed before and after all other methods; the baseline median is
    the median of both passes pooled, and `equal_drift` (after / before) shows how much the
    machine drifted while the process ran;
  * every requested method that runs in this mode: loss-based methods only in mode `full`
    (their step does not depend on the mode), gradient methods only in the modes listed in
    their `Strategy.modes`. Others get a `skipped` row.

Methods are built with their default hyper-parameters (`weighting.get(name)`); a method that
cannot be built that way, or fails to compile or run, gets an `error` row and the process goes
on. Timing per method follows benchmarks/peers/common.py (first step with compilation, then
`--warmup` untimed steps, then `--repeats` individually timed steps ending in
`jax.block_until_ready`).

Run: python benchmarks/peers/weighting_worker.py --mode full --methods all --classes 17,50,40
  [--batch 32 --length 64 --vocab 5000 --embed 128 --hidden 256 --threads N ...]
Prints one JSON line on stdout. While it runs, each finished row is also written to stderr as
`@row <json>`, so the harness can keep the finished rows of a process it had to kill.
"""

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
import traceback
from typing import Any

import common
import mtlrnn_peer
import numpy as np

NAME = "weighting_worker"
BASELINE = "equal"
ROW_PREFIX = "@row "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all",
                        help="'all' (weighting.names() at run time) or comma-separated names")
    parser.add_argument("--mode", default="full",
                        help="gradient mode: full, representation or gramian")
    own, rest = parser.parse_known_args(argv)
    args = common.parse_args(rest)  # shared shape/run flags and their checks
    args.mode = own.mode
    args.methods = own.methods
    return args


def requested_methods(spec: str, registered: tuple[str, ...]) -> list[str]:
    """`equal` first, then the requested names in order (unknown names are kept: they become
    error rows)."""
    names = registered if spec.strip() == "all" else [m.strip() for m in spec.split(",")]
    ordered = [BASELINE]
    for name in names:
        if name and name not in ordered:
            ordered.append(name)
    return ordered


def _progress(row: dict[str, Any]) -> None:
    slim = {k: v for k, v in row.items() if k != "step_ms"}
    print(ROW_PREFIX + json.dumps(slim), file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    import mtlrnn
    from mtlrnn import weighting
    from mtlrnn.training.gradients import MODES

    if args.mode not in MODES:
        raise ValueError(f"--mode: must be one of {', '.join(MODES)}; got {args.mode!r}")
    model, data = mtlrnn_peer.reference_model_and_data(args, common.make_batches(args))
    tx = optax.adam(1e-3)
    tokens_per_step = args.batch * args.length

    def make_runner(strategy: Any) -> tuple[common.Runner, Any]:
        """The timed step of `strategy` and a probe returning what to record after timing."""
        notes: list[str] = []
        state = mtlrnn.create_train_state(model, tx, strategy, data[0], seed=args.seed)
        leaves = jax.tree.leaves(state)
        if len({id(leaf) for leaf in leaves}) < len(leaves):
            # The same array twice in the state cannot be donated ("Attempt to donate the same
            # buffer twice"); copying changes no step time, and the row says it happened.
            notes.append("initial state holds the same array twice (donating it fails, as in "
                         "mtlrnn.training.run); copied before timing")
            state = jax.tree.map(jnp.copy, state)
        train_step = jax.jit(
            mtlrnn.make_train_step(model, tx, strategy, grad_mode=args.mode), donate_argnums=0
        )
        last = {}

        def step(i: int) -> tuple:
            nonlocal state
            state, metrics = train_step(state, data[i % len(data)])
            last["loss"] = metrics["loss"]
            return state, metrics["loss"]

        def probe() -> dict[str, Any]:
            cache_size = getattr(train_step, "_cache_size", None)
            return {
                # Compiled variants of the step: 1 means it never retraced while timed.
                "compilations": int(cache_size()) if callable(cache_size) else None,
                "final_loss": float(last["loss"]),
                **({"warning": "; ".join(notes)} if notes else {}),
            }

        return common.Runner(step=step, sync=jax.block_until_ready, versions={}), probe

    def measure(runner: common.Runner, probe: Any) -> dict[str, Any]:
        first_s, step_s = common.time_steps(runner, warmup=args.warmup, repeats=args.repeats)
        return {
            **common.summarize(step_s, tokens_per_step),
            "compile_or_first_step_s": first_s,
            **probe(),
            "step_ms": [t * 1e3 for t in step_s],
        }

    def timed(runner: common.Runner, n: int, offset: int) -> list[float]:
        out = []
        for i in range(offset, offset + n):
            start = time.perf_counter()
            runner.sync(runner.step(i))
            out.append(time.perf_counter() - start)
        return out

    def paired_ratio(runner: common.Runner) -> dict[str, Any]:
        """Method vs `equal` in alternating blocks right after each other, so slow drift of
        the machine (seen here as 10-30% over a worker's minutes) cancels in the ratio."""
        blocks, per_block = 4, max(2, args.repeats // 4)
        eq, me = [], []
        for b in range(blocks):
            eq += timed(equal_runner, per_block, 10_000 + b * per_block)
            me += timed(runner, per_block, 10_000 + b * per_block)
        return {
            "paired_ratio": float(np.median(me) / np.median(eq)),
            "paired_equal_ms": float(np.median(eq) * 1e3),
            "paired_method_ms": float(np.median(me) * 1e3),
        }

    def describe(strategy: Any) -> dict[str, Any]:
        return {
            "requires": strategy.requires,
            "modes": list(strategy.modes),
            "needs_dim": bool(strategy.needs_dim),
            "has_from_gram": strategy.from_gram is not None,
            "has_after_update": strategy.after_update is not None,
        }

    registered = tuple(weighting.names())
    methods = requested_methods(args.methods, registered)

    equal = weighting.get(BASELINE)
    equal_runner, equal_probe = make_runner(equal)
    equal_before = measure(equal_runner, equal_probe)
    _progress({"method": BASELINE, "status": "ok", "pass": "before", **equal_before})

    rows: list[dict[str, Any]] = []
    for name in methods[1:]:
        row: dict[str, Any] = {"method": name}
        if name not in registered:
            row.update(status="error", error="not registered in mtlrnn.weighting.names()")
            rows.append(row)
            _progress(row)
            continue
        try:
            strategy = weighting.get(name)
        except Exception as err:  # e.g. a method whose defaults need hyper-parameters
            row.update(status="error", error=f"cannot build with default hyper-parameters: "
                       f"{type(err).__name__}: {err}")
            rows.append(row)
            _progress(row)
            continue
        row.update(describe(strategy))
        if strategy.requires == "losses" and args.mode != "full":
            row.update(status="skipped",
                       reason="loss-based: the step is the same in every mode; see mode full")
        elif strategy.requires == "grads" and args.mode not in strategy.modes:
            row.update(status="skipped",
                       reason=f"mode {args.mode!r} not in strategy.modes {list(strategy.modes)}")
        else:
            try:
                runner, probe = make_runner(strategy)
                row.update(status="ok", **measure(runner, probe))
                row.update(paired_ratio(runner))
                del runner, probe  # frees this method's state before the next one
            except Exception as err:  # a failing method is a row, never a crashed run
                traceback.print_exc()
                row.update(status="error", error=f"{type(err).__name__}: {err}")
        rows.append(row)
        _progress(row)

    equal_after = measure(equal_runner, equal_probe)
    _progress({"method": BASELINE, "status": "ok", "pass": "after", **equal_after})
    pooled = equal_before["step_ms"] + equal_after["step_ms"]
    baseline_ms = float(np.median(pooled))
    equal_row = {
        "method": BASELINE,
        "status": "ok",
        **describe(equal),
        **common.summarize([t / 1e3 for t in pooled], tokens_per_step),
        "ratio_to_equal": 1.0,
        "compile_or_first_step_s": equal_before["compile_or_first_step_s"],
        "compilations": equal_after["compilations"],
        "final_loss": equal_after["final_loss"],
        "step_ms": pooled,
    }
    for row in rows:
        if row["status"] == "ok":
            row["unpaired_ratio"] = row["step_ms_median"] / baseline_ms
            # The reported ratio is the paired one (alternating blocks with `equal`).
            row["ratio_to_equal"] = row.get("paired_ratio", row["unpaired_ratio"])
            if not math.isfinite(row["final_loss"]):
                row["warning"] = "; ".join(filter(None, [row.get("warning"), "non-finite loss"]))
    return {
        "peer": NAME,
        "ok": True,
        "tasks": len(model.tasks),
        "mode": args.mode,
        "baseline_ms": baseline_ms,
        "equal_before_ms": equal_before["step_ms_median"],
        "equal_after_ms": equal_after["step_ms_median"],
        "equal_drift": equal_after["step_ms_median"] / equal_before["step_ms_median"],
        "registered": list(registered),
        "rows": [equal_row, *rows],
        "threads": args.threads,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "mtlrnn": mtlrnn.__version__,
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "flax": importlib.metadata.version("flax"),
            "optax": optax.__version__,
        },
        "backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(common.thread_env(args.threads, args.device))  # before importing jax
    config = {**common.config_of(args), "mode": args.mode}
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # stdout carries the JSON line only
    try:
        record = run(args)
    except ModuleNotFoundError as err:
        sys.stdout = real_stdout
        common.emit(common.failure(NAME, f"{err.name} not installed", config=config))
        return 0
    except Exception as err:
        traceback.print_exc()
        sys.stdout = real_stdout
        common.emit(common.failure(NAME, f"{type(err).__name__}: {err}", config=config))
        return 1
    sys.stdout = real_stdout
    common.emit({**record, "config": config})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
