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

Variant options (`add_variant_args`: --cell, --impl, --scan, --unroll, --remat, --remat-chunk,
--dtype) select what a peer builds; a peer that cannot honour a non-default option raises
`Unsupported` (via `require`), which becomes an `{"ok": false, "unsupported": true}` line, not
a crash. After timing, every record gets the process's peak RSS (`max_rss_bytes`), its growth
from the end of `build` to the end of timing (`rss_growth_bytes`) and whatever
the peer's `Runner.finish` adds (XLA's compiled memory estimate for JAX peers, see `AotStep`;
`torch.cuda.max_memory_allocated` for torch on GPU).
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NUM_BATCHES = 4  # pre-generated batches, cycled, so no peer times data generation
XLA_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=true"
CELLS = ("lstm", "gru", "rnn", "mingru", "minlstm")
# cell -> (gates G, has a recurrent matmul h @ W_hh); see model_flops_per_step.
CELL_SHAPES = {"lstm": (4, True), "gru": (3, True), "rnn": (1, True),
               "mingru": (2, False), "minlstm": (3, False)}
DTYPES = ("float32", "bfloat16")
# Variant options and their defaults; a default means "not requested, peer's own default".
VARIANT_DEFAULTS: dict[str, Any] = {
    "cell": "lstm", "impl": None, "scan": None, "unroll": None, "remat": False,
    "remat_chunk": None, "dtype": "float32", "cpu_tuning": "auto",
}


class Unsupported(Exception):
    """The peer cannot run a requested option; reported as a failure row, not a crash."""


@dataclasses.dataclass
class Runner:
    """What a peer's `build` returns.

    step: runs one training step on pre-generated batch `i % NUM_BATCHES`; returns whatever
      `sync` must wait on (new state, loss, ...). It may keep the training state in a closure.
    sync: blocks until the value returned by `step` is computed on the device.
    versions: library versions that matter for this peer, e.g. {"torch": "2.13.0"}.
    extra: anything else worth recording (actual thread counts, backend, device). It is read
      after timing, so a step may add to it (e.g. `AotStep` adds XLA's memory estimate).

    finish: called once after timing; returns more fields for the record (peak memory).
    """

    step: Callable[[int], Any]
    sync: Callable[[Any], None]
    versions: dict[str, str]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    finish: Callable[[], dict[str, Any]] | None = None


def int_list(text: str, minimum: int = 1, what: str = "ints") -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)`` for argparse; ArgumentTypeError below ``minimum``."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from err
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"need one or more {what} >= {minimum}, got {text!r}")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    return int_list(text, 2, "class counts")


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


def add_variant_args(parser: argparse.ArgumentParser) -> None:
    """What to build: cell, implementation and numerics. Every default means "the peer's own
    default", and only non-default values are passed on to a peer (`variant_argv`)."""
    parser.add_argument("--cell", choices=CELLS, default="lstm",
                        help="recurrent cell (mtlrnn: all; torch/flax/keras: lstm, gru, rnn; "
                             "jax_cudnn_lstm: lstm)")
    parser.add_argument("--impl", default=None,
                        help="trunk implementation: mtlrnn fused|autodiff; "
                             "jax_cudnn_lstm cudnn|reference (default: the peer's own)")
    parser.add_argument("--scan", choices=("auto", "sequential", "associative"), default=None,
                        help="mtlrnn mingru/minlstm: scan over time")
    parser.add_argument("--unroll", type=int, default=None,
                        help="scan unroll (mtlrnn: 0 = per platform; flax_rnn: nn.RNN unroll)")
    parser.add_argument("--remat", action="store_true",
                        help="mtlrnn: rematerialise the trunk over time in the backward pass")
    parser.add_argument("--remat-chunk", type=int, default=None,
                        help="mtlrnn: time steps per rematerialised chunk (0 = auto)")
    parser.add_argument("--cpu-tuning", choices=("auto", "on", "off"), default="auto",
                        help="mtlrnn.cpu_tuning (glibc malloc thresholds) before the "
                             "framework starts: auto = only the mtlrnn peer (as `mtlrnn "
                             "train` does), on = this peer too, off = not even mtlrnn")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="compute dtype; parameters stay float32 (mtlrnn: dtype=bf16; "
                             "torch: autocast; flax: module dtype; keras: mixed_bfloat16)")


def variant_of(args: argparse.Namespace) -> dict[str, Any]:
    """The variant options of `args` (defaults for a namespace that has none)."""
    return {k: getattr(args, k, d) for k, d in VARIANT_DEFAULTS.items()}


def variant_argv(args: argparse.Namespace) -> list[str]:
    """CLI flags for the non-default variant options of `args`."""
    argv: list[str] = []
    for key, value in variant_of(args).items():
        if value == VARIANT_DEFAULTS[key]:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def require(args: argparse.Namespace, peer: str, **supported: Any) -> None:
    """Raises `Unsupported` when `args` asks for a variant option `peer` cannot honour.

    supported: option -> True (any value) or a tuple of accepted values. Options not named
    are supported only at their default; `cell` defaults to ("lstm",).
    """
    supported.setdefault("cell", ("lstm",))
    supported.setdefault("cpu_tuning", True)  # applied by main() for every peer
    for key, value in variant_of(args).items():
        accepted = supported.get(key)
        if accepted is True or (accepted is not None and value in accepted):
            continue
        if value == VARIANT_DEFAULTS[key]:
            continue
        flag = "--" + key.replace("_", "-")
        shown = flag if value is True else f"{flag} {value}"
        hint = f" (supported: {', '.join(map(str, accepted))})" if accepted else ""
        raise Unsupported(f"{peer} does not support {shown}{hint}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    add_variant_args(parser)
    args = parser.parse_args(argv)
    for name in ("batch", "length", "vocab", "embed", "hidden", "layers", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.repeats < 1:
        parser.error(f"need --warmup >= 0 and --repeats >= 1, got {args.warmup}, {args.repeats}")
    if (args.unroll is not None and args.unroll < 0) or (
            args.remat_chunk is not None and args.remat_chunk < 0):
        parser.error("--unroll and --remat-chunk must be >= 0")
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


def child_env(threads: int, device: str = "cpu") -> dict[str, str]:
    """Environment of a benchmark subprocess: this one's, plus `thread_env` and the
    repository root on PYTHONPATH (so `import mtlrnn` works from any script)."""
    env = dict(os.environ)
    env.update(thread_env(threads, device))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def model_flops_per_step(*, batch: int, length: int, embed: int, hidden: int,
                         classes: tuple[int, ...], layers: int = 1,
                         cell: str = "lstm") -> dict[str, float]:
    """Model FLOPs of one training step (multiply-add = 2 FLOPs).

    Per token, forward, with G gates per cell (lstm 4, gru 3, rnn 1, mingru 2, minlstm 3):
      layer l: input matmul 2 * in_l * G*H, with in_1 = E and in_l = H for l > 1,
               plus, for cells with a recurrence matmul (lstm, gru, rnn), 2 * H * G*H;
               mingru/minlstm have none (their gates depend on the input only);
      heads:   2 * H * sum(C_k).
    So an LSTM layer is 8 * H * (in + H). Backward is counted as 2x forward (one matmul for
    the input gradient, one for the weight gradient), so a step is 3x forward. The input
    gradient of layer 1 is kept because the embedding is trained. Excluded: the embedding
    gather/scatter, gate nonlinearities, scans and other elementwise work,
    softmax/cross-entropy, and the Adam update (O(parameters), not O(tokens)).
    """
    if cell not in CELL_SHAPES:
        raise ValueError(f"unknown cell {cell!r}; known: {', '.join(CELL_SHAPES)}")
    gates, recurrent = CELL_SHAPES[cell]
    tokens = batch * length
    trunk = 0
    for layer in range(layers):
        width = embed if layer == 0 else hidden
        trunk += 2 * width * gates * hidden + (2 * hidden * gates * hidden if recurrent else 0)
    heads = 2 * hidden * sum(classes)
    forward = tokens * (trunk + heads)
    return {
        "forward_per_token": float(trunk + heads),
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
        **variant_of(args),
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


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux /proc/self/statm), None where unavailable."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def xla_memory(compiled: Any) -> dict[str, Any]:
    """XLA's estimate of a compiled executable's device memory (no execution needed).

    `xla_peak_bytes` = temp + argument + output - alias (donated arguments that alias outputs
    counted once): everything the executable's buffer assignment holds at once, at most.
    XLA's own `peak_memory_in_bytes`, where reported, is kept as `xla_reported_peak_bytes`
    (on XLA:CPU it can be below the temp size, so it is not used as the estimate).
    """
    try:
        analysis = compiled.memory_analysis()
    except Exception as err:  # some backends do not implement it
        return {"xla_memory_error": f"{type(err).__name__}: {err}"}
    if analysis is None:
        return {"xla_memory_error": "memory_analysis() returned None"}
    fields = ("temp", "argument", "output", "alias", "generated_code")
    out: dict[str, Any] = {f"xla_{f}_bytes": int(getattr(analysis, f"{f}_size_in_bytes", 0))
                           for f in fields}
    out["xla_peak_bytes"] = (out["xla_temp_bytes"] + out["xla_argument_bytes"]
                             + out["xla_output_bytes"] - out["xla_alias_bytes"])
    reported = int(getattr(analysis, "peak_memory_in_bytes", 0) or 0)
    if reported:
        out["xla_reported_peak_bytes"] = reported
    return out


class AotStep:
    """Wraps a `jax.jit`-ed step so its first call lowers and compiles it ahead of time.

    The compile still happens inside the first (timed alone) step; XLA's memory estimate of
    the executable is added to `extra`; later calls run the compiled executable directly
    (same C++ dispatch path and donation as the jitted function).
    """

    def __init__(self, jitted: Callable, extra: dict[str, Any]) -> None:
        self.jitted, self.extra, self.compiled = jitted, extra, None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            self.compiled = self.jitted.lower(*args).compile()
            self.extra.update(xla_memory(self.compiled))
        return self.compiled(*args)


def jax_device_info(jax: Any) -> dict[str, Any]:
    """Backend, device count and the device's name (the CPU model on CPU)."""
    device = jax.devices()[0]
    kind = str(getattr(device, "device_kind", "unknown"))
    return {
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "device_kind": kind,
        "device_name": cpu_model() if jax.default_backend() == "cpu" else kind,
    }


def jax_finish(jax: Any) -> Callable[[], dict[str, Any]]:
    """`Runner.finish` for JAX peers: the allocator's peak on GPU (None on CPU)."""

    def finish() -> dict[str, Any]:
        try:
            stats = jax.devices()[0].memory_stats() or {}
        except Exception:
            stats = {}
        peak = stats.get("peak_bytes_in_use")
        return {"device_peak_bytes": int(peak)} if peak else {}

    return finish


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
    tuning = getattr(args, "cpu_tuning", "auto")
    cpu_tuning: dict[str, Any] = {"mode": tuning}
    if tuning == "on" or (tuning == "auto" and name == "mtlrnn"):
        from mtlrnn import cpu_tuning as tuner  # process settings; before any JAX computation
        from mtlrnn.model.cells import get_cell

        largest = tuner.largest_buffer_bytes(
            batch=args.batch, length=args.length, hidden=args.hidden,
            gates=get_cell(getattr(args, "cell", "lstm")).num_gates,
            itemsize=2 if getattr(args, "dtype", "float32") == "bfloat16" else 4)
        cpu_tuning.update(tuner.apply(largest_buffer=largest))
    elif tuning == "off":
        os.environ["MTLRNN_CPU_TUNING"] = "0"
    try:
        batches = make_batches(args)
        runner = build(args, batches)
        rss_before = current_rss_bytes()
        first_s, step_s = time_steps(runner, warmup=args.warmup, repeats=args.repeats)
    except ModuleNotFoundError as err:
        sys.stdout = real_stdout
        emit(failure(name, f"{err.name} not installed", config=config))
        return 0
    except Unsupported as err:
        sys.stdout = real_stdout
        emit(failure(name, f"unsupported: {err}", unsupported=True, config=config))
        return 0
    except Exception as err:  # any failure becomes a failure row, never a crash
        traceback.print_exc()
        sys.stdout = real_stdout
        emit(failure(name, f"{type(err).__name__}: {err}", config=config))
        return 1
    finished: dict[str, Any] = {}
    if runner.finish is not None:
        try:
            finished = runner.finish()
        except Exception as err:  # a memory query must not lose the timings
            finished = {"finish_error": f"{type(err).__name__}: {err}"}
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
        "max_rss_bytes": max_rss_bytes(),
        "cpu_tuning": cpu_tuning,
        # Peak RSS growth from the model being built to the end of timing: activations,
        # gradients, optimizer state, allocator caches (and, for JAX, compilation).
        "rss_growth_bytes": (None if rss_before is None
                             else max(0, max_rss_bytes() - rss_before)),
        **runner.extra,
        **finished,
    }
    emit(record)
    return 0
