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
out: 30 -> 11 ms). The cost: RSS stays at its peak instead of shrinking between steps, and
threads share one malloc lock (XLA allocates few, large blocks). A step whose temporaries
exceed 2 GiB still maps them fresh (minGRU at L=4096: 832 ms with a 1 GiB threshold, 489 ms
with 2 GiB).

This applies to the whole process. ``MTLRNN_CPU_TUNING=0`` turns it off. Library users call
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
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: (1 << 31) - 1, M_TRIM_THRESHOLD: (1 << 31) - 1, M_ARENA_MAX: 1}


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``MTLRNN_CPU_TUNING`` is 0/false/no/off."""
    env = os.environ if env is None else env
    return env.get("MTLRNN_CPU_TUNING", "1").strip().lower() not in ("0", "false", "no", "off")


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); False where
    there is no glibc ``mallopt`` (macOS, musl) or it refused a value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def apply(env: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Apply the settings to this process unless ``MTLRNN_CPU_TUNING=0`` in ``env``
    (default ``os.environ``). Call before the first JAX computation; returns
    ``{"malloc": applied}``."""
    return {"malloc": enabled(env) and tune_malloc()}
