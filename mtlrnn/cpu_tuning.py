"""Process settings for training on CPU that mtlrnn's command line applies before JAX starts.

XLA:CPU allocates each execution's temporaries as one large block (tens of MB for the
reference step of benchmarks/). glibc serves blocks above its mmap threshold (at most
32 MiB when it adjusts the threshold itself) with a fresh ``mmap`` and returns them with
``munmap`` on free, so every training step page-faults its whole working set in again. In a
profile of the reference step (2-core AMD EPYC, jaxlib 0.10.2; B=32, L=64, E=128, H=256,
3 heads, fused LSTM) zero-filling one [64, 32, 1024] gate buffer took 6 ms and the step
about 40 ms. Raising glibc's mmap and trim thresholds to 2 GiB (``mallopt``; the most it
takes) keeps freed blocks in the heap for reuse by the next step: 27-30 ms
(benchmarks/RESULTS.md). Allocations made from other threads go to per-thread arenas whose
heaps are at most 64 MiB, so a larger block there is mmapped whatever the threshold: one arena
(``M_ARENA_MAX=1``) serves them from the main heap too ([32768, 128] x [128, 512], 64 MiB
out: 30 -> 11 ms; minGRU at L=1024: 200 -> 120 ms). One arena costs where buffers are small:
threads then share one malloc lock, which slowed XLA's compilation and the default job
(44.9 -> 49.7 s). So it is only set when the caller's estimate of the largest activation
buffer (:func:`largest_buffer_bytes`) is at least 12 MiB. A step whose temporaries exceed
2 GiB still maps them fresh (minGRU at L=4096: 832 ms with a 1 GiB threshold, 489 ms with
2 GiB). The cost of all this: RSS stays at its peak instead of shrinking between steps.

This applies to the whole process, and only when JAX will compute on the CPU
(:func:`cpu_backend`: ``JAX_PLATFORMS``, else whether an accelerator plugin and its device are
present; an accelerator's host side has other allocation patterns that were never measured
here). ``MTLRNN_CPU_TUNING=0`` turns it off. Library users call
:func:`apply` first thing to get what ``mtlrnn train`` gets (it also speeds up other JAX
code on CPU: Flax's ``nn.RNN`` LSTM step went from 38 to 28-32 ms with it).

Tried and dropped: ``--xla_cpu_experimental_ynn_fusion_type=-individual_dot`` (XLA's Eigen
dots instead of YNNPACK) made the step 1.9x slower; ``-dot`` changes nothing in jaxlib 0.10.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

# glibc mallopt parameters (malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: (1 << 31) - 1, M_TRIM_THRESHOLD: (1 << 31) - 1}
# Measured (reference-style steps, 2-core EPYC): largest buffer 5.2 MB (default job) one
# arena 10% slower; 8.4 MB (reference step) 2% slower; 16.8 MB (minGRU, L=256) 2x faster;
# 33.5 MB (LSTM, L=256) 1.3x faster. Other buffers of the step scale with it.
SINGLE_ARENA_FROM_BYTES = 12 << 20


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``MTLRNN_CPU_TUNING`` is 0/false/no/off."""
    env = os.environ if env is None else env
    return env.get("MTLRNN_CPU_TUNING", "1").strip().lower() not in ("0", "false", "no", "off")


# Device files that an accelerator's hardware shows on Linux.
_ACCELERATOR_DEVICES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel0", "/dev/vfio")


def cpu_backend(env: Mapping[str, str] | None = None) -> bool:
    """Whether JAX will compute on the CPU in this process, told without starting JAX.

    ``JAX_PLATFORMS`` decides when set (its first entry); otherwise the CPU is assumed
    unless an accelerator plugin is installed (:func:`mtlrnn.accelerators.jax_plugins`)
    and an accelerator device file exists (with ``CUDA_VISIBLE_DEVICES`` empty or -1 an
    NVIDIA-only machine counts as CPU).
    """
    from mtlrnn.accelerators import jax_plugins

    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    if not jax_plugins():
        return True
    devices = [d for d in _ACCELERATOR_DEVICES if os.path.exists(d)]
    if devices == ["/dev/nvidiactl"] and env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not devices


def largest_buffer_bytes(
    *, batch: int, length: int, hidden: int, gates: int, directions: int = 1, itemsize: int = 4
) -> int:
    """The trunk's largest activation buffer: the gate pre-activations of all steps,
    ``[L, D, B, G*H]`` (what :func:`apply`'s single-arena rule looks at)."""
    return batch * length * hidden * gates * directions * itemsize


def tune_malloc(*, single_arena: bool = False) -> bool:
    """Raise glibc's mmap and trim thresholds, and with ``single_arena`` use one arena (see
    the module docstring); False where there is no glibc ``mallopt`` (macOS, musl) or it
    refused a value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = dict(MALLOC_SETTINGS)
    if single_arena:
        settings[M_ARENA_MAX] = 1
    return all(mallopt(param, value) == 1 for param, value in settings.items())


def apply(
    env: Mapping[str, str] | None = None, *, largest_buffer: int | None = None
) -> dict[str, bool]:
    """Apply the settings to this process unless ``MTLRNN_CPU_TUNING=0`` in ``env``
    (default ``os.environ``). Call before the first JAX computation.

    Args:
      env: where to read ``MTLRNN_CPU_TUNING``.
      largest_buffer: estimated bytes of the largest activation buffer of a training step
        (:func:`largest_buffer_bytes`); one malloc arena from ``SINGLE_ARENA_FROM_BYTES`` on,
        none when unknown.
    Returns:
      ``{"malloc": applied, "single_arena": set}``; nothing is applied when JAX will not
      compute on the CPU (:func:`cpu_backend`).
    """
    if not enabled(env) or not cpu_backend(env):
        return {"malloc": False, "single_arena": False}
    single = largest_buffer is not None and largest_buffer >= SINGLE_ARENA_FROM_BYTES
    applied = tune_malloc(single_arena=single)
    return {"malloc": applied, "single_arena": single and applied}
