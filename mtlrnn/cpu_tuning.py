"""Process settings for training on CPU that mtlrnn's command line applies before JAX starts.

Two settings, each measured on the 2-core AMD EPYC development machine (jaxlib 0.10.2), on
the reference training step of benchmarks/ (B=32, L=64, E=128, H=256, 3 heads, fused LSTM):

* **malloc**: XLA:CPU allocates each execution's temporaries as one large block (tens of
  MB). glibc serves blocks above its mmap threshold (at most 32 MiB when adjusted
  dynamically) with a fresh ``mmap`` and returns them with ``munmap`` on free, so every step
  page-faults its whole working set in again: a zero-fill of one [64, 32, 1024] gate buffer
  took 6 ms in a profile, and the step 40 ms. Raising the mmap threshold to 1 GiB and the
  trim threshold to 2 GiB (``mallopt``) keeps freed blocks in the heap for reuse: 28-29 ms.
  RSS then stays at its peak instead of shrinking between steps.
* **XLA flag** ``--xla_cpu_experimental_ynn_fusion_type=-dot``: jaxlib 0.10 hands matrix
  products to YNNPACK, which reached 251 GFLOP/s on [2048, 1024] x [1024, 1024] where XLA's
  Eigen dot (YNN's ``dot`` fusion removed) reached 478 GFLOP/s, and it asks for layouts that
  add transposes of the [L*B, 4H] gate arrays. The flag is read once, when the CPU client is
  created, so it must be in ``XLA_FLAGS`` before the first JAX computation; XLA aborts on a
  flag it does not know, so it is only added for jaxlib versions where it was checked.

Both apply to the whole process. A flag the user already put in ``XLA_FLAGS`` wins;
``MTLRNN_CPU_TUNING=0`` turns everything here off. Library users call :func:`apply` first
thing (before any JAX computation) to get what ``mtlrnn train`` gets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import MutableMapping

# flag name -> value, added for the jaxlib versions (prefixes) where the flag exists.
CPU_FLAGS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "-dot"}
CHECKED_JAXLIB = ("0.10.",)
# glibc mallopt parameters (malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: (1 << 31) - 1}


def enabled(env: MutableMapping[str, str] | None = None) -> bool:
    """False when ``MTLRNN_CPU_TUNING`` is 0/false/no/off."""
    env = os.environ if env is None else env
    return env.get("MTLRNN_CPU_TUNING", "1").strip().lower() not in ("0", "false", "no", "off")


def _jaxlib_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version

    try:
        return version("jaxlib")
    except PackageNotFoundError:
        return ""


def xla_flags_to_add(
    env: MutableMapping[str, str] | None = None, jaxlib_version: str | None = None
) -> list[str]:
    """The ``--name=value`` flags :func:`apply` would add to ``XLA_FLAGS`` (none when
    disabled, for an unchecked jaxlib, or when the user already set the flag)."""
    env = os.environ if env is None else env
    if not enabled(env):
        return []
    jaxlib_version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    if not jaxlib_version.startswith(CHECKED_JAXLIB):
        return []
    current = env.get("XLA_FLAGS", "")
    return [f"--{name}={value}" for name, value in CPU_FLAGS.items() if name not in current]


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


def apply(env: MutableMapping[str, str] | None = None) -> dict[str, object]:
    """Apply both settings to this process (``env`` defaults to ``os.environ``).

    Call before the first JAX computation (``import jax`` alone is fine). Returns what was
    done: ``{"xla_flags": [...added], "malloc": bool}``.
    """
    env = os.environ if env is None else env
    if not enabled(env):
        return {"xla_flags": [], "malloc": False}
    added = xla_flags_to_add(env)
    if added:
        env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", "").strip(), *added]).strip()
    return {"xla_flags": added, "malloc": tune_malloc()}
