"""Shared fixtures: a tiny synthetic configuration that trains in seconds.

Most of the suite's time is XLA compiling small programs, so before JAX is imported this
module sets, through environment variables that every subprocess inherits too (CLI runs,
benchmark peers, the multi-device scripts):

- JAX's persistent compilation cache, shared by this process and its subprocesses: a
  program compiled once (the tiny config's train step, say) is loaded from disk the next
  time, in any process (a repeated tiny CLI run: 41 s -> 12 s on 2 loaded cores). A cached
  executable is the compiled one, so results stay bit-identical. The cache lives in a
  temporary directory of this session, removed at its end, and shared by pytest-xdist's
  workers (``-n auto``, the README's command: the tests are compile-bound, so one process per
  core); set MTLRNN_TEST_JAX_CACHE_DIR to a directory to keep one across sessions (never the
  user's own JAX cache), or to "off".
- XLA:CPU flags that compile 3-7x faster: LLVM at -O0
  (``--xla_backend_optimization_level=0``) and, on jaxlib 0.10, the classic elemental
  emitters instead of the MLIR fusion emitters (``--xla_cpu_use_fusion_emitters=false``).
  The programs compute the same functions (float results may differ in the last bits from
  a default build, as between two XLA versions); the tests' programs are tiny, so their
  slower code costs nothing next to the compile time saved (tests/test_cells.py plus
  tests/test_train.py: 290 -> 101 CPU seconds). MTLRNN_TEST_FAST_COMPILE=0 keeps XLA's
  defaults. A test that replaces XLA_FLAGS for a subprocess should keep these
  (``XLA_FLAGS`` of ``os.environ`` plus its own).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile


def _fast_compile_flags() -> list[str]:
    flags = ["--xla_backend_optimization_level=0"]
    try:
        major, minor = (int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return flags
    # XLA aborts on a flag it does not know: only where this one is known to exist.
    if (major, minor) == (0, 10):
        flags.append("--xla_cpu_use_fusion_emitters=false")
    return flags


if os.environ.get("MTLRNN_TEST_FAST_COMPILE", "1") != "0":
    _xla_flags = os.environ.get("XLA_FLAGS", "")
    for _flag in _fast_compile_flags():
        if _flag.split("=")[0] not in _xla_flags:  # a flag set by the caller wins
            _xla_flags = f"{_xla_flags} {_flag}".strip()
    os.environ["XLA_FLAGS"] = _xla_flags

_KEEP_CACHE = os.environ.get("MTLRNN_TEST_JAX_CACHE_DIR", "")
# pytest-xdist workers inherit the controller's environment: they share its cache directory
# and leave its removal to the controller that made it.
_SESSION_CACHE = os.environ.get("_MTLRNN_TEST_SESSION_JAX_CACHE", "")
_OWN_CACHE = False
if _KEEP_CACHE == "off":
    JAX_CACHE_DIR = ""
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
else:
    JAX_CACHE_DIR = _KEEP_CACHE or _SESSION_CACHE
    if not JAX_CACHE_DIR:
        JAX_CACHE_DIR = tempfile.mkdtemp(prefix="mtlrnn-tests-jax-cache-")
        os.environ["_MTLRNN_TEST_SESSION_JAX_CACHE"] = JAX_CACHE_DIR
        _OWN_CACHE = True
    os.environ["JAX_COMPILATION_CACHE_DIR"] = JAX_CACHE_DIR
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "true"
    # Cache every program: the tests' programs are small; most compile in under a second.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    # No size limit: with one, every write stats the whole directory (quadratic in the
    # thousands of entries a session writes). Processes write one directory concurrently; an
    # entry read while being written fails to decompress and JAX recompiles (with a warning).

if "jax" in sys.modules:  # imported early (by a plugin): its config read the environment
    import jax

    jax.config.update("jax_enable_compilation_cache", bool(JAX_CACHE_DIR))
    if JAX_CACHE_DIR:
        jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402

from mtlrnn.config import Config  # noqa: E402
from mtlrnn.config import load_config  # noqa: E402
from mtlrnn.model.spec import ModelConfig  # noqa: E402

TINY = [
    "data.synthetic.num_train=256",
    "data.synthetic.num_dev=64",
    "data.synthetic.num_test=64",
    "data.synthetic.max_len=16",
    "data.buckets=[8,16]",
    "model.embed_dim=16",
    "model.hidden_size=16",
    "train.batch_size=16",
    "train.eval_batch_size=32",
    "train.steps=6",
    "train.log_every=2",
    "logging.progress=false",
    "logging.plots=false",
]


def model_spec(**fields: object) -> ModelConfig:
    """Hyper-parameters for a bare trunk or model in a test: one direction and no dropout
    unless ``fields`` say otherwise (the config's defaults are bidirectional, dropout 0.1)."""
    return ModelConfig(**{"bidirectional": False, "dropout": 0.0, **fields})


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(JAX_CACHE_DIR, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per usable core, at most 8 (each is a JAX process of ~1 GB)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config() -> Config:
    return load_config(None, TINY)
