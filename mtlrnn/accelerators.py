"""Which accelerators a process would see, and how to give each of N processes its own,
told without starting JAX (for ``mtlrnn compare --jobs`` and the CPU tuning of the CLI)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from collections.abc import Sequence

__all__ = ["assign_devices", "device_env", "jax_plugins", "visible_accelerators"]

def _id_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@functools.lru_cache(maxsize=1)
def jax_plugins() -> frozenset[str]:
    """Accelerator kinds the installed JAX can use (``"cuda"``, ``"rocm"``, ``"tpu"``).

    From the installed modules (JAX's PJRT plugins live in the ``jax_plugins`` namespace
    package; ``libtpu``; a jaxlib built with CUDA), so JAX is not initialised here.
    """
    import importlib.metadata
    import importlib.util
    import pkgutil

    kinds: set[str] = set()
    plugins = importlib.util.find_spec("jax_plugins")
    if plugins is not None and plugins.submodule_search_locations:
        for module in pkgutil.iter_modules(plugins.submodule_search_locations):
            for kind in ("cuda", "rocm", "tpu"):
                if kind in module.name:
                    kinds.add(kind)
    for module, kind in (("jax_cuda12_plugin", "cuda"), ("jax_cuda13_plugin", "cuda"),
                         ("libtpu", "tpu")):
        if importlib.util.find_spec(module) is not None:
            kinds.add(kind)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        if "cuda" in importlib.metadata.version("jaxlib"):  # e.g. 0.4.x+cuda12.cudnn89
            kinds.add("cuda")
    return frozenset(kinds)


def visible_accelerators(environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """``(kind, ids)`` of the accelerators a child process would use, without starting JAX.

    ``kind`` is ``"cuda"`` (ids for ``CUDA_VISIBLE_DEVICES``: its own entries when it is
    set, else indices or MIG UUIDs from ``nvidia-smi -L``), ``"tpu"`` (chip indices:
    ``TPU_VISIBLE_CHIPS`` when set, else one per ``/dev/accel*`` or ``/dev/vfio/<n>``) or
    ``""`` with no ids: CPU, a JAX without the CUDA or TPU plugin, or ``JAX_PLATFORMS``
    without gpu, cuda or tpu.
    """
    platforms = (environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or "").lower()
    wanted = set(_id_list(platforms)) or {"cuda", "gpu", "tpu"}
    if "gpu" in wanted:
        wanted.add("cuda")
    wanted &= jax_plugins()
    if not wanted:
        return "", []
    if "CUDA_VISIBLE_DEVICES" in environ and "cuda" in wanted:
        ids = _id_list(environ["CUDA_VISIBLE_DEVICES"])
        if ids and not ids[0].startswith("-"):  # "" or "-1": no GPU at all
            return "cuda", ids
        return "", []
    if "tpu" in wanted:
        if environ.get("TPU_VISIBLE_CHIPS"):
            return "tpu", _id_list(environ["TPU_VISIBLE_CHIPS"])
        chips: list[int] = []
        for folder, pattern in (("/dev", r"accel(\d+)"), ("/dev/vfio", r"(\d+)")):
            with contextlib.suppress(OSError):
                chips += [int(m[1]) for n in os.listdir(folder) if (m := re.fullmatch(pattern, n))]
            if chips:
                return "tpu", [str(c) for c in sorted(chips)]
    if "cuda" in wanted and shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        return ("cuda", ids) if (ids := nvidia_ids(listing)) else ("", [])
    return "", []


def nvidia_ids(listing: str) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` entries from ``nvidia-smi -L``: GPU indices, MIG UUIDs."""
    ids: list[str] = []
    for line in listing.splitlines():
        gpu = re.match(r"GPU (\d+):", line)
        mig = re.search(r"\(UUID: (MIG-[^)\s]+)\)", line)
        if mig:  # MIG instances replace their GPU: only they can be addressed
            if ids and ids[-1].isdigit():
                ids.pop()
            ids.append(mig[1])
        elif gpu:
            ids.append(gpu[1])
    return ids


def assign_devices(devices: Sequence[str], jobs: int, *, shareable: bool = True) -> list[list[str]]:
    """The accelerators of each of ``jobs`` job slots.

    With at least as many devices as jobs, the slots get disjoint contiguous groups, the
    first ``len(devices) % jobs`` of them one device larger. With fewer devices than jobs,
    each slot gets one device, shared round-robin. Devices that cannot be shared
    (``shareable=False``, TPU chips) always go in disjoint groups of 1, 2 or 4 (the largest
    that gives every job one) and there are as many slots as such groups fit, at most
    ``jobs``: the caller runs that many jobs at once. No devices: one empty list per slot.

    Example: ``assign_devices(["0", "1", "2"], 2) == [["0", "1"], ["2"]]``.
    """
    n = len(devices)
    if n == 0:
        return [[] for _ in range(jobs)]
    if not shareable:
        per = max(k for k in (4, 2, 1) if k <= max(n // jobs, 1))
        slots = min(jobs, n // per)
        return [list(devices[i * per : (i + 1) * per]) for i in range(slots)]
    if jobs > n:
        return [[devices[i % n]] for i in range(jobs)]
    size, extra = divmod(n, jobs)
    out, start = [], 0
    for i in range(jobs):
        end = start + size + (1 if i < extra else 0)
        out.append(list(devices[start:end]))
        start = end
    return out


def device_env(kind: str, ids: Sequence[str], slot: int) -> dict[str, str]:
    """Environment variables that show a child process only ``ids``."""
    if kind == "cuda":
        return {"CUDA_VISIBLE_DEVICES": ",".join(ids)}
    if kind == "tpu":
        bounds = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}[len(ids)]
        port = str(8476 + slot)  # every process on the host needs its own
        return {
            "TPU_VISIBLE_CHIPS": ",".join(ids),
            "TPU_CHIPS_PER_PROCESS_BOUNDS": bounds,
            "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_PROCESS_PORT": port,
            "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
            "TPU_MESH_CONTROLLER_PORT": port,
            "CLOUD_TPU_TASK_ID": "0",
        }
    return {}
