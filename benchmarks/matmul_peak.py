"""Measured matmul peak (GFLOP/s) of the JAX backend, for "% of peak" next to model GFLOP/s.

For each dtype and each [M, K] x [K, N] shape typical of the training step (the batched input
projection [B*L, E] x [E, 4H], the per-step recurrence [B, H] x [H, 4H], and a large square
one), a jitted `a @ b` is warmed up, then timed `--repeats` times; each repetition launches
`inner` calls back to back and waits for the last (`block_until_ready`), with `inner` chosen
so one repetition takes about 20 ms, which hides per-call dispatch. A shape's rate is
2*M*K*N / median time; the best shape of a dtype is its "peak".

dtypes: float32 at JAX's default precision (XLA may use TF32 tensor cores on NVIDIA GPUs,
as the models' matmuls do), bfloat16 (float32 accumulation), and on GPU also float32 at
precision HIGHEST (true fp32) for reference.

    python benchmarks/matmul_peak.py [--threads N] [--device cpu|gpu] [--repeats 7] [--quick]

Prints one JSON line: {"ok": true, "device_name", "backend", "results": [...],
"peak_gflops": {"float32": x, "bfloat16": y, ...}}. benchmarks/run.py runs it in its own
process with the same thread environment as the peers.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import common  # noqa: E402

SHAPES = ((2048, 128, 1024), (32, 256, 1024), (1024, 1024, 1024))
QUICK_SHAPES = ((64, 32, 128), (8, 32, 128), (128, 128, 128))
TARGET_S = 0.02  # one timed repetition


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    parser.add_argument("--dtypes", default="",
                        help="comma-separated subset of float32,bfloat16,float32_highest")
    return parser.parse_args(argv)


def measure(shape: tuple[int, int, int], dtype: str, repeats: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    m, k, n = shape
    real = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    precision = jax.lax.Precision.HIGHEST if dtype == "float32_highest" else None
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (m, k), jnp.float32).astype(real)
    b = jax.random.normal(key_b, (k, n), jnp.float32).astype(real)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    jax.block_until_ready(matmul(a, b))  # compile
    for _ in range(3):
        jax.block_until_ready(matmul(a, b))
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    single = max(time.perf_counter() - start, 1e-7)
    inner = max(1, min(10_000, int(TARGET_S / single)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(inner):
            out = matmul(a, b)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / inner)
    median = float(np.median(times))
    return {"shape": [m, k, n], "dtype": dtype, "inner": inner, "median_s": median,
            "gflops": 2.0 * m * k * n / median / 1e9}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    info = common.jax_device_info(jax)
    dtypes = [d for d in args.dtypes.split(",") if d] or (
        ["float32", "bfloat16"] + (["float32_highest"] if info["backend"] == "gpu" else []))
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    results, peak = [], {}
    for dtype in dtypes:
        for shape in shapes:
            try:
                row = measure(shape, dtype, repeats)
            except Exception as err:  # one bad dtype must not lose the others
                row = {"shape": list(shape), "dtype": dtype,
                       "error": f"{type(err).__name__}: {err}"}
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if "gflops" in row:
                peak[dtype] = max(peak.get(dtype, 0.0), row["gflops"])
    return {"ok": bool(peak), "benchmark": "matmul_peak", **info, "jax": jax.__version__,
            "threads": args.threads, "results": results, "peak_gflops": peak,
            "max_rss_bytes": common.max_rss_bytes()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(common.thread_env(args.threads, args.device))  # before importing jax
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        record = run(args)
    except Exception as err:
        traceback.print_exc()
        record = {"ok": False, "benchmark": "matmul_peak", "error": f"{type(err).__name__}: {err}"}
    sys.stdout = real_stdout
    common.emit(record)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
