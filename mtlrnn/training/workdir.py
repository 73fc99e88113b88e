"""The files a training run owns in its workdir, and how a workdir that holds a run is found.

A run writes only the files named here (plus ``process-<id>/`` on other hosts); anything else
in the workdir belongs to the user and is never touched. Light on purpose (no JAX), so the
command line can read a run's saved config before it starts JAX.
"""

from __future__ import annotations

import datetime
import os

#: The run's resolved config (every key written out). Not ``config.yaml``: a workdir may
#: hold the user's own config under that name (``--config exp/config.yaml --workdir exp``).
RESOLVED_CONFIG = "resolved_config.yaml"
#: What runs written by mtlrnn 0.1.0 called their resolved config; read, never written.
LEGACY_CONFIG = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
VOCAB_FILE = "vocab.json"
CHECKPOINTS = "checkpoints"
PROFILE_DIR = "profile"
#: A population run's index of its seeds (``train.num_seeds > 1``; each seed's run is in
#: ``seed<seed>/``).
POPULATION_FILE = "population.json"

#: Every name a run creates directly in its workdir.
RUN_FILES = (
    RESOLVED_CONFIG,
    METRICS_FILE,
    METRICS_FILE + ".resume",
    SUMMARY_FILE,
    VOCAB_FILE,
    CHECKPOINTS,
    "plots",
    "tensorboard",
    PROFILE_DIR,
    POPULATION_FILE,
)


def _has_checkpoints(workdir: str) -> bool:
    path = os.path.join(workdir, CHECKPOINTS)
    return os.path.isdir(path) and bool(os.listdir(path))


def _legacy_run(workdir: str) -> bool:
    # A 0.1.0 run: config.yaml next to files only a run writes.
    return os.path.isfile(os.path.join(workdir, LEGACY_CONFIG)) and (
        _has_checkpoints(workdir)
        or os.path.isfile(os.path.join(workdir, SUMMARY_FILE))
        or os.path.isfile(os.path.join(workdir, METRICS_FILE))
    )


def saved_config_path(workdir: str | os.PathLike) -> str | None:
    """The resolved config of the run in ``workdir``, or None when it holds no run config.

    A run of mtlrnn 0.1.0 kept it in ``config.yaml``; that file counts only next to the
    run's other files (a lone ``config.yaml`` is the user's).
    """
    workdir = os.fspath(workdir)
    path = os.path.join(workdir, RESOLVED_CONFIG)
    if os.path.isfile(path):
        return path
    if _legacy_run(workdir):
        return os.path.join(workdir, LEGACY_CONFIG)
    return None


def run_files(workdir: str | os.PathLike) -> list[str]:
    """The names of the run-owned files present in ``workdir`` (empty: it holds no run)."""
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        return []
    found = [
        name
        for name in RUN_FILES
        if os.path.lexists(os.path.join(workdir, name))
        and not (name == CHECKPOINTS and not _has_checkpoints(workdir))
    ]
    if _legacy_run(workdir) and RESOLVED_CONFIG not in found:
        found.insert(0, LEGACY_CONFIG)
    found += sorted(
        n
        for n in os.listdir(workdir)
        if n.startswith("process-") and os.path.isdir(os.path.join(workdir, n))
    )
    return found


def move_run_aside(workdir: str | os.PathLike) -> str | None:
    """Move the run-owned files of ``workdir`` into ``workdir/replaced-<time>/``.

    Returns that directory (None when there was nothing to move). The user's other files
    stay where they are; nothing is deleted.
    """
    workdir = os.fspath(workdir)
    names = run_files(workdir)
    if not names:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(workdir, f"replaced-{stamp}")
    n = 1
    while os.path.lexists(target):
        n += 1
        target = os.path.join(workdir, f"replaced-{stamp}-{n}")
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(workdir, name), os.path.join(target, name))
    return target
