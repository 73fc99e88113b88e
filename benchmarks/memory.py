"""Longest sequence length whose mtlrnn training step fits a memory budget, with and without
rematerialisation, from XLA's compiled memory analysis (nothing is executed).

For one model config (benchmarks/peers/mtlrnn_peer.py's model: embedding, unidirectional
trunk, K token heads, equal weights, Adam) and each remat setting, the jitted train step
(state donated) is lowered and compiled at candidate lengths L, batch B fixed; its memory is
XLA's estimate temp + argument + output - alias (peers/common.py `xla_memory`). L doubles
from `--start-length` while the step fits, then bisects between the last fitting and the
first failing L until they are within `--resolution` (5%). Parameters do not depend on L, so
the state is initialised once (at a small L) and only the batch shapes change.

    python benchmarks/memory.py --cell lstm [--remat-modes off,on] [--budget-gib 8]
        [--batch 32 --embed 128 --hidden 256 --classes 17,50,40 --vocab 5000 --layers 1]
        [--start-length 256 --max-length 4194304 --resolution 0.05] [--threads N]
        [--device cpu|gpu] [--impl ... --scan ... --dtype ...] [--quick]

Prints one JSON line: per remat mode the longest fitting L (`max_length`; `capped` if even
`--max-length` fits), XLA's bytes there, bytes per token (bytes / (B*L)), the marginal bytes
per extra token (slope between the smallest and the largest fitting query, i.e. without the
fixed parameter/optimizer cost) and every query (L, bytes, compile seconds).
The estimate is the backend's buffer assignment: run with --device gpu for GPU numbers (the
XLA:CPU and XLA:GPU plans differ).
"""

import argparse
import copy
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import common  # noqa: E402

GIB = 1024 ** 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser)
    common.add_variant_args(parser)
    parser.add_argument("--remat-modes", default="off,on",
                        help="comma-separated: off (remat=False), on (remat=True)")
    parser.add_argument("--budget-gib", type=float, default=None, help="default 8 (quick: 2 MiB)")
    parser.add_argument("--start-length", type=int, default=None, help="default 256 (quick: 64)")
    parser.add_argument("--max-length", type=int, default=2 ** 22)
    parser.add_argument("--resolution", type=float, default=None,
                        help="stop bisecting when (failing L - fitting L) / fitting L <= this "
                             "(default 0.05; quick: 1, i.e. doubling only)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model (B=4, E=8, H=16, vocab 50), 2 MiB budget, "
                             "doubling only")
    args = parser.parse_args(argv)
    quick = {"budget_gib": 2 / 1024, "start_length": 64, "resolution": 1.0}
    full = {"budget_gib": 8.0, "start_length": 256, "resolution": 0.05}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.batch, args.embed, args.hidden, args.vocab = 4, 8, 16, 50
        args.max_length = min(args.max_length, 2 ** 16)
    modes = [m.strip() for m in args.remat_modes.split(",") if m.strip()]
    if not modes or any(m not in ("off", "on") for m in modes):
        parser.error(f"--remat-modes: off and/or on, got {args.remat_modes!r}")
    args.remat_modes = modes
    if args.start_length < 1 or args.max_length < args.start_length:
        parser.error("need 1 <= --start-length <= --max-length")
    return args


def longest_fitting(query: Any, budget: int, start: int, cap: int,
                    resolution: float) -> dict[str, Any]:
    """Doubling then bisection on L; `query(L)` returns XLA's bytes for length L."""
    history: list[dict[str, Any]] = []

    def fits(length: int) -> bool:
        row = query(length)
        history.append(row)
        return row["bytes"] <= budget

    length = start
    while not fits(length):  # even the start length is too long: halve
        if length == 1:
            return {"max_length": 0, "capped": False, "queries": history}
        length = max(1, length // 2)
    lo = length
    hi = None
    while lo < cap:
        candidate = min(2 * lo, cap)
        if fits(candidate):
            lo = candidate
        else:
            hi = candidate
            break
    if hi is not None:
        while (hi - lo) / lo > resolution and hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
    return {"max_length": lo, "capped": hi is None, "first_failing_length": hi,
            "queries": history}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import mtlrnn_peer
    import optax

    import mtlrnn
    from mtlrnn import weighting

    budget = int(args.budget_gib * GIB)
    tx = optax.adam(1e-3)
    strategy = weighting.get("equal")
    runs = []
    for mode in args.remat_modes:
        margs = copy.copy(args)
        margs.remat = mode == "on"
        try:
            model = mtlrnn_peer.build_model(margs)
            init_args = copy.copy(margs)
            init_args.length = min(8, args.start_length)
            _, data = mtlrnn_peer.reference_model_and_data(init_args,
                                                           common.make_batches(init_args))
            state = mtlrnn.create_train_state(model, tx, strategy, data[0], seed=args.seed)
            step = jax.jit(mtlrnn.make_train_step(model, tx, strategy), donate_argnums=0)

            def query(length: int, step: Any = step, state: Any = state,
                      mode: str = mode) -> dict[str, Any]:
                tokens = jax.ShapeDtypeStruct((args.batch, length), jnp.int32)
                batch = {
                    "inputs": tokens,
                    "lengths": jax.ShapeDtypeStruct((args.batch,), jnp.int32),
                    "labels": {f"task{k}": tokens for k in range(len(args.classes))},
                }
                start = time.perf_counter()
                memory = common.xla_memory(step.lower(state, batch).compile())
                if "xla_peak_bytes" not in memory:
                    raise RuntimeError(memory.get("xla_memory_error", "no memory analysis"))
                row = {"length": length, "bytes": memory["xla_peak_bytes"],
                       "temp_bytes": memory["xla_temp_bytes"],
                       "compile_s": round(time.perf_counter() - start, 3)}
                print(f"  remat={mode} L={length}: {row['bytes'] / 2**20:.1f} MiB "
                      f"({row['compile_s']:.1f} s)", file=sys.stderr, flush=True)
                return row

            found = longest_fitting(query, budget, args.start_length, args.max_length,
                                    args.resolution)
            fitting = [q for q in found["queries"] if q["bytes"] <= budget]
            result: dict[str, Any] = {"remat": mode == "on", "ok": True, **found,
                                      "model": mtlrnn_peer.model_attributes(model)}
            if fitting:
                best = max(fitting, key=lambda q: q["length"])
                low = min(fitting, key=lambda q: q["length"])
                result["bytes_at_max"] = best["bytes"]
                result["bytes_per_token"] = best["bytes"] / (args.batch * best["length"])
                if best["length"] > low["length"]:
                    result["marginal_bytes_per_token"] = (
                        (best["bytes"] - low["bytes"])
                        / (args.batch * (best["length"] - low["length"])))
        except common.Unsupported as err:
            result = {"remat": mode == "on", "ok": False, "unsupported": True,
                      "error": f"unsupported: {err}"}
        except Exception as err:  # one failing mode must not lose the other
            traceback.print_exc()
            result = {"remat": mode == "on", "ok": False,
                      "error": f"{type(err).__name__}: {err}"}
        runs.append(result)
    return {
        "ok": any(r["ok"] for r in runs),
        "benchmark": "memory",
        "cell": args.cell,
        "budget_bytes": budget,
        "config": {**common.config_of(args), "remat_modes": args.remat_modes,
                   "start_length": args.start_length, "max_length": args.max_length,
                   "resolution": args.resolution},
        **common.jax_device_info(jax),
        "estimate": "XLA compiled memory analysis: temp + argument + output - alias",
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(common.thread_env(args.threads, args.device))  # before importing jax
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        record = run(args)
    except ModuleNotFoundError as err:
        record = {"ok": False, "benchmark": "memory", "cell": args.cell,
                  "error": f"{err.name} not installed"}
    except Exception as err:
        traceback.print_exc()
        record = {"ok": False, "benchmark": "memory", "cell": args.cell,
                  "error": f"{type(err).__name__}: {err}"}
    sys.stdout = real_stdout
    common.emit(record)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
