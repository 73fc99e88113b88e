"""JAX's persistent compilation cache for training runs (``train.compile_cache``).

Compiling the train step is most of a short run's wall time on a CPU (the default job spends
about a third of its time in XLA). With the cache on, a compiled program is written to disk
and loaded by the next process that compiles the same program: a rerun, a resume, the seeds
and methods of ``mtlrnn compare`` that share shapes. A cached executable is the program XLA
compiled, so results are bit-identical; JAX's cache key covers the program, the jax/jaxlib
versions, the device kind and the XLA flags, so a stale entry is never used.

``train.compile_cache``: ``auto`` (default; YAML's ``on``/``true`` too) uses
``$XDG_CACHE_HOME/mtlrnn/jax`` (else ``~/.cache/mtlrnn/jax``), a path uses that directory
(``./off`` for one named off), ``off`` (YAML reads it as false) or ``""`` turns it off. A cache the
process already has (``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir`` set by
the user) is kept, and so is ``JAX_ENABLE_COMPILATION_CACHE=false``. JAX reads the setting
at its first compilation, so a library user who compiled something before ``fit`` gets the
cache only from then on if at all; ``mtlrnn train`` sets it before anything compiles.
Only programs that took at least a second to compile are written (JAX's default threshold).
"""

from __future__ import annotations

import os

import jax

ENV_DIR = "XDG_CACHE_HOME"


def default_dir() -> str:
    """``$XDG_CACHE_HOME/mtlrnn/jax``, else ``~/.cache/mtlrnn/jax``."""
    base = os.environ.get(ENV_DIR) or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mtlrnn", "jax")


def enable(setting: bool | str) -> str | None:
    """Apply ``train.compile_cache``; returns the cache directory in use (None: off).

    Raises:
      OSError: the directory cannot be created.
    """
    if not jax.config.jax_enable_compilation_cache:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:  # the user's own cache wins
        return current
    if setting is False or setting in ("off", ""):
        return None
    if setting is True or setting == "auto":
        path = default_dir()
    else:
        path = os.path.abspath(os.path.expanduser(str(setting)))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path
