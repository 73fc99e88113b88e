"""Shared protocol for throughput peers: CLI, thread environment, data, timing, JSON line.

A peer is a standalone script `benchmarks/peers/<name>.py` that does

    import common

    def build(args, batches) -> common.Runner: ...   # imports its framework inside

    if __name__ == "__main__":
        common.main("<name>", build)

`common.main` parses the shared CLI, sets the thread environment *before* `build` imports
any framework, pre-generates a few random batches, times the steps and prints exactly one
JSON line on stdout (everything else a peer prints goes to stderr). The script's directory is
`sys.path[0]` when it runs, which is why `import common` works without a package.

Timing protocol (identical for every peer):
  1. the first step is timed on its own, sync included -> `compile_or_first_step_s`
     (jit compilation for JAX/Keras, allocator and kernel warm-up for torch);
  2. `--warmup` further steps, untimed;
  3. `--repeats` steps, each timed individually with `time.perf_counter` around
     `sync(step(i))`, so every timed step ends in a real sync.
A step is forward + loss + backward + optimizer update on batch `i % len(batches)`.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

NUM_BATCHES = 4  # pre-generated batches, cycled, so no peer times data generation
XLA_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=true"


@dataclasses.dataclass
class Runner:
    """What a peer's `build` returns.

    step: runs one training step on pre-generated batch `i % NUM_BATCHES`; returns whatever
      `sync` must wait on (new state, loss, ...). It may keep the training state in a closure.
    sync: blocks until the value returned by `step` is computed on the device.
    versions: library versions that matter for this peer, e.g. {"torch": "2.13.0"}.
    extra: anything else worth recording (actual thread counts, backend, device).
    """

    step: Callable[[int], Any]
    sync: Callable[[Any], None]
    versions: dict[str, str]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from err
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"need one or more class counts >= 2, got {text!r}")
    return values


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Shape and run flags shared by every peer and by benchmarks/throughput.py."""
    parser.add_argument("--batch", type=int, default=32, help="B, sequences per step")
    parser.add_argument("--length", type=int, default=64, help="L, tokens per sequence")
    parser.add_argument("--vocab", type=int, default=5000, help="token vocabulary size")
    parser.add_argument("--embed", type=int, default=128, help="E, embedding size")
    parser.add_argument("--hidden", type=int, default=256, help="H, LSTM hidden size")
    parser.add_argument("--classes", type=_int_list, default=(17, 50, 40),
                        help="classes per token task, comma-separated (K = count)")
    parser.add_argument("--layers", type=int, default=1, help="stacked unidirectional LSTMs")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps after the first")
    parser.add_argument("--repeats", type=int, default=30, help="individually timed steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads for every library (default: os.cpu_count())")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="where the peer runs; JAX/Keras get JAX_PLATFORMS=cpu|cuda")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    args = parser.parse_args(argv)
    for name in ("batch", "length", "vocab", "embed", "hidden", "layers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.repeats < 1:
        parser.error(f"need --warmup >= 0 and --repeats >= 1, got {args.warmup}, {args.repeats}")
    return args


def thread_env(threads: int, device: str = "cpu") -> dict[str, str]:
    """Environment that caps every library at `threads` intra-op threads.

    XLA:CPU (jaxlib 0.10) sizes its intra-op Eigen pool from PJRT_NPROC, then NPROC, else
    the number of schedulable cores (xla/pjrt/utils.cc DefaultThreadPoolSize). XLA_FLAGS has
    no intra-op thread-count flag: `--intra_op_parallelism_threads=N` aborts the process as
    an unknown flag, and a bare `intra_op_parallelism_threads=N` token is silently ignored.
    OMP/MKL/OpenBLAS variables cover torch's and numpy's BLAS; torch also gets
    set_num_threads(N) in its peer.
    """
    env = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "PJRT_NPROC": str(threads),
        "NPROC": str(threads),
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu" if device == "cpu" else "cuda",
    }
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in xla_flags:
        xla_flags = f"{xla_flags} {XLA_THREAD_FLAG}".strip()
    env["XLA_FLAGS"] = xla_flags
    return env


def model_flops_per_step(*, batch: int, length: int, embed: int, hidden: int,
                         classes: tuple[int, ...], layers: int = 1) -> dict[str, float]:
    """Model FLOPs of one training step (multiply-add = 2 FLOPs).

    Per token, forward:
      LSTM layer l: input matmul 2 * in_l * 4H + recurrent matmul 2 * H * 4H,
                    with in_1 = E and in_l = H for l > 1;
      heads:        2 * H * sum(C_k).
    Backward is counted as 2x forward (one matmul for the input gradient, one for the
    weight gradient), so a step is 3x forward. The input gradient of layer 1 is kept because
    the embedding is trained. Excluded: the embedding gather/scatter, gate nonlinearities and
    other elementwise work, softmax/cross-entropy, and the Adam update (O(parameters), not
    O(tokens)).
    """
    tokens = batch * length
    lstm = sum(8 * hidden * ((embed if layer == 0 else hidden) + hidden)
               for layer in range(layers))
    heads = 2 * hidden * sum(classes)
    forward = tokens * (lstm + heads)
    return {
        "forward_per_token": float(lstm + heads),
        "forward": float(forward),
        "step": float(3 * forward),
    }


def make_batches(args: argparse.Namespace) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """NUM_BATCHES random batches: tokens [B, L] int32 in [0, vocab), labels K x [B, L] int32.

    All tokens are valid (no padding), so each task's loss is a plain mean over B*L tokens.
    """
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.length)
    batches = []
    for _ in range(NUM_BATCHES):
        tokens = rng.integers(0, args.vocab, size=shape, dtype=np.int32)
        labels = tuple(rng.integers(0, c, size=shape, dtype=np.int32) for c in args.classes)
        batches.append((tokens, labels))
    return batches


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch": args.batch,
        "length": args.length,
        "vocab": args.vocab,
        "embed": args.embed,
        "hidden": args.hidden,
        "classes": list(args.classes),
        "layers": args.layers,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
        "device": args.device,
        "dtype": "float32",
        "optimizer": "adam(lr=1e-3)",
    }


def time_steps(runner: Runner, *, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Returns (first step seconds, [repeats] step seconds); see the module docstring."""
    start = time.perf_counter()
    runner.sync(runner.step(0))
    first_s = time.perf_counter() - start
    for i in range(1, warmup + 1):
        runner.sync(runner.step(i))
    times = []
    for i in range(warmup + 1, warmup + 1 + repeats):
        start = time.perf_counter()
        runner.sync(runner.step(i))
        times.append(time.perf_counter() - start)
    return first_s, times


def summarize(step_s: list[float], tokens_per_step: int) -> dict[str, float]:
    """Median and 10th/90th percentiles in ms, and tokens/s from the median."""
    ms = np.asarray(step_s, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return {
        "step_ms_median": median,
        "step_ms_p10": float(np.percentile(ms, 10)),
        "step_ms_p90": float(np.percentile(ms, 90)),
        "tokens_per_s": tokens_per_step / (median / 1e3),
    }


def emit(record: dict[str, Any]) -> None:
    """The one JSON line on stdout that the harness reads."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def failure(name: str, error: str, **extra: Any) -> dict[str, Any]:
    return {"peer": name, "ok": False, "error": error, **extra}


def main(name: str, build: Callable[[argparse.Namespace, list], Runner],
         argv: list[str] | None = None) -> int:
    """Runs one peer end to end and prints its JSON line; returns the exit code."""
    args = parse_args(argv)
    os.environ.update(thread_env(args.threads, args.device))  # before any framework import
    config = config_of(args)
    # Keep stdout for the JSON line only: frameworks may print progress or warnings.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        batches = make_batches(args)
        runner = build(args, batches)
        first_s, step_s = time_steps(runner, warmup=args.warmup, repeats=args.repeats)
    except ModuleNotFoundError as err:
        sys.stdout = real_stdout
        emit(failure(name, f"{err.name} not installed", config=config))
        return 0
    except Exception as err:  # any failure becomes a failure row, never a crash
        traceback.print_exc()
        sys.stdout = real_stdout
        emit(failure(name, f"{type(err).__name__}: {err}", config=config))
        return 1
    sys.stdout = real_stdout
    record = {
        "peer": name,
        "ok": True,
        **summarize(step_s, args.batch * args.length),
        "compile_or_first_step_s": first_s,
        "threads": args.threads,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     **runner.versions},
        "config": config,
        "step_ms": [t * 1e3 for t in step_s],
        **runner.extra,
    }
    emit(record)
    return 0
