"""``mtlrnn compare``: weighting methods against single-task baselines, over seeds.

One comparison is a list of ordinary training runs under ``<outdir>/runs``:

- single-task baselines first: for each task ``t`` of the config and each seed,
  ``tasks.include=[t]``, ``weighting.name=equal`` -> ``runs/single-<t>/seed<seed>``;
- then for each method ``m`` and each seed, ``weighting.name=m`` -> ``runs/<m>/seed<seed>``.

Seeds are ``train.seed + 0 .. train.seed + N - 1`` and ``seed<seed>`` is that ``train.seed``
value. ``ew`` is an alias of the registry name ``equal``. Method runs keep the config's
``weighting.params`` only when the method is the config's own ``weighting.name`` (other
methods run with their default hyper-parameters), and a gradient method that cannot run in
the config's ``weighting.mode`` runs in its first allowed mode (``mgda_ub``:
``representation``); each run's ``--set`` overrides in ``plan.json`` say what it got.

Directory names: a method or ``single-<task>`` name becomes one path component by
:func:`path_component`: ASCII letters, digits, ``-``, ``_`` and ``.`` (not leading or
trailing) stay as they are, every other character is percent-encoded as UTF-8 bytes
(``single-../../x`` -> ``single-..%2F..%2Fx``, reversible with
:func:`urllib.parse.unquote`), and a
component longer than 120 characters is cut to a prefix plus ``~`` and a hash of the
whole name. Reports and ``plan.json`` keep the real names. Two names that would share a
directory on a case-insensitive filesystem are refused, and every planned workdir must
resolve (symlinks included) inside ``outdir``, else ConfigError before anything is written.

The plan is written to ``<outdir>/plan.json``. Runs are resumable (a run whose workdir has
``summary.json`` is done; a workdir without it was interrupted and resumes from its latest
checkpoint (``mtlrnn train`` resumes by default), else it is trained again from
scratch) and safe to share between processes: a process trains a run only while it holds
``<workdir>.lock``, created atomically with the holder's host, boot id, pid namespace,
pid and the pid's start time (and, with ``--jobs``, the training subprocess's). A lock
expires with its holder: on the same host (same host name, boot id and pid namespace) it
is stale once none of its processes runs any more (a recycled pid does not count, its start
time differs); a holder elsewhere (a shared filesystem) touches the lock every quarter of
the lease, and its lock is stale once it has not been touched for the lease (default 300 s;
``MTLRNN_LOCK_LEASE_S`` or ``lock_lease_s=``; the longer of the reader's and the holder's).
A stale lock is taken over race-free (one taker at a time, through an exclusive claim file
named after that lock; it renames the lock aside and checks that it moved the one it judged;
locks are only ever created by an exclusive link) and its run resumed. ``--shard I/N`` splits the
list up front (runs whose index modulo ``N`` is ``I``); shards on several machines over one
shared ``<outdir>`` together train every run once.

By default the seeds of one method (or baseline) train together as one population run
(``train.num_seeds``: one compiled step over the seeds' stacked states,
:func:`mtlrnn.training.run.fit`)
into the same ``runs/<m>/seed<seed>`` directories, each an ordinary run equal to a separate
run of that seed up to float rounding; finished or locked seeds are left out and the rest
train in blocks of consecutive seeds. ``--no-vectorize`` trains every run on its own.

With ``--jobs N`` the runs (populations) are subprocesses and each job slot gets its own
accelerators: NVIDIA GPUs (``CUDA_VISIBLE_DEVICES`` as given, else ``nvidia-smi -L``) are
split into N disjoint groups and passed as ``CUDA_VISIBLE_DEVICES``; TPU chips
(``TPU_VISIBLE_CHIPS``, else ``/dev/accel*`` or ``/dev/vfio/*``) as ``TPU_VISIBLE_CHIPS``
with 1, 2 or 4 chips per process (TPU chips cannot be shared: at most one job per chip group
runs). More jobs than GPUs share them round-robin, with a note on stderr. On CPU nothing changes.

Every file written for the user (``plan.json``, the reports, ``delta_m.png``, each run's
``train.log``) is written to a temporary file in its directory and renamed into place
(:mod:`mtlrnn.fileio`).

The report (``compare.md``, ``compare.csv``, ``compare.json``, ``delta_m.png``) is written
from whatever runs have finished. Per method: each task metric as mean ± sample std over
seeds; Δm% (lower is better; Maninis et al. 2019 in the form of Nash-MTL and FAMO) and Δp%
(higher is better; LibMTL), each computed per seed against the single-task baselines'
means over their seeds (:mod:`mtlrnn.delta`), then mean ± std over seeds; and the median
step time. The ``single-task`` row holds the baselines themselves: its Δm and Δp are 0 by
definition and their std (each seed of the baselines against the mean of all) is the seed
noise that differences between methods should exceed.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import queue
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

from mtlrnn.accelerators import assign_devices
from mtlrnn.accelerators import device_env
from mtlrnn.accelerators import visible_accelerators
from mtlrnn.config import Config
from mtlrnn.config import ConfigError
from mtlrnn.config import apply_overrides
from mtlrnn.config import flat_dict
from mtlrnn.config import load_config
from mtlrnn.config import resolve_tasks
from mtlrnn.data.sources import absolute_paths
from mtlrnn.data.sources import load_data
from mtlrnn.delta import delta_m
from mtlrnn.delta import delta_p
from mtlrnn.delta import summarize_seeds
from mtlrnn.fileio import atomic_writer
from mtlrnn.fileio import write_text_atomic
from mtlrnn.reporting import json_safe
from mtlrnn.training.runlock import Lock
from mtlrnn.training.runlock import acquire
from mtlrnn.training.runlock import lease_seconds

__all__ = [
    "Run",
    "assign_devices",
    "compare",
    "execute",
    "path_component",
    "plan_runs",
    "report",
]

#: Method names accepted besides the registry names, mapped to them.
ALIASES: dict[str, str] = {"ew": "equal"}
#: Row name of the single-task baselines in the report.
SINGLE_TASK = "single-task"
#: Splits in the order ``fit`` evaluates them by default; a summary without the requested
#: split falls back to the last of these that it has.
_SPLIT_ORDER = ("train", "dev", "test")
#: Config sections that do not change what a run computes; they may differ between a
#: finished run and the current plan.
_COSMETIC = ("logging.", "checkpoint.")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a comparison.

    Attributes:
      name: the report row it belongs to: ``single-<task>`` or the method as given (``ew``).
      method: the weighting's registry name (``equal`` for single-task baselines).
      seed: its ``train.seed``.
      workdir: its output directory, ``<outdir>/runs/<component>/seed<seed>`` where
        ``<component>`` is :func:`path_component` of ``name``.
      overrides: every ``--set`` override of the run: the comparison's shared ones first,
        then the run's own.
      config_path: the YAML config (None: the built-in defaults).
      task: the one task of a single-task baseline; None for a multi-task run.
    """

    name: str
    method: str
    seed: int
    workdir: str
    overrides: tuple[str, ...]
    config_path: str | None = None
    task: str | None = None


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def _data_tasks(cfg: Config) -> Any:
    """The task specs the config's data provides (before ``tasks.include``)."""
    return load_data(cfg.data).tasks


def _names(value: Sequence[str] | str) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``, stripped."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items]


def _check_methods(methods: Sequence[str] | str) -> list[tuple[str, str]]:
    """``(name as given, registry name)`` per method; ConfigError names a bad one."""
    from mtlrnn import weighting

    names = _names(methods)
    if not names or not all(names):
        raise ConfigError(
            f"--methods: expected a comma-separated list, e.g. ew,uw; got {methods!r}"
        )
    allowed = tuple(weighting.names())
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for name in names:
        registry = ALIASES.get(name, name)
        if registry not in allowed:
            aliases = ", ".join(f"{a} (= {r})" for a, r in ALIASES.items())
            raise ConfigError(
                f"--methods: unknown method {name!r}; allowed: {aliases}, {', '.join(allowed)}"
            )
        if registry in seen:
            raise ConfigError(
                f"--methods: {seen[registry]!r} and {name!r} are the same method ({registry})"
            )
        if name.startswith("single-") or name == SINGLE_TASK:
            raise ConfigError(f"--methods: {name!r} is reserved for the single-task baselines")
        seen[registry] = name
        out.append((name, registry))
    return out


def _yaml_name(name: str) -> str:
    """``name`` as a YAML flow scalar: bare when safe, else JSON-quoted (valid YAML)."""
    return name if re.fullmatch(r"[A-Za-z_][\w.-]*", name) else json.dumps(name)


#: Characters a path component keeps as they are; every other one is percent-encoded.
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
#: Longest path component made from a name; longer ones are cut and get a hash (most
#: filesystems allow 255 bytes, eCryptfs 143; the lock and temporary files add to it).
_MAX_COMPONENT = 120


def path_component(name: str) -> str:
    """``name`` as one safe directory name: the same name always gives the same component.

    ASCII letters, digits, ``-``, ``_`` and ``.`` stay; every other character (``/``,
    ``\\``, NUL, spaces, ``%``, non-ASCII) and a leading or trailing ``.`` become ``%XX``
    per UTF-8 byte, so ``.``, ``..`` and separators never reach the filesystem and
    :func:`urllib.parse.unquote` gives ``name`` back. A result longer than 120 characters
    is cut to its first 100 and ``~`` plus 16 hex digits of the SHA-256 of ``name`` (``~``
    is never produced by the encoding, so the two forms cannot collide).

    Raises:
      ValueError: ``name`` is empty.
    """
    if not name:
        raise ValueError("name: must not be empty")
    out = []
    last = len(name) - 1
    for i, ch in enumerate(name):
        if ch in _SAFE_CHARS and not (ch == "." and i in (0, last)):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    text = "".join(out)
    if len(text) <= _MAX_COMPONENT:
        return text
    head = text[:100]
    cut = head.rfind("%", len(head) - 2)  # never split a %XX escape
    if cut != -1:
        head = head[:cut]
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{head}~{digest}"


def _check_workdirs(runs: Sequence[Run], outdir: str) -> None:
    """Planned workdirs are distinct (ignoring case) and resolve inside ``outdir``."""
    root = os.path.realpath(outdir)
    seen: dict[str, Run] = {}
    for run in runs:
        key = os.path.normcase(os.path.normpath(run.workdir)).casefold()
        other = seen.setdefault(key, run)
        if other.name != run.name or other.seed != run.seed:
            a, b = (r.task if r.task is not None else r.name for r in (other, run))
            raise ConfigError(
                f"tasks: {a!r} and {b!r} would share the directory "
                f"{os.path.relpath(run.workdir, outdir)} (names are compared ignoring case, "
                "as some filesystems do); rename one of them"
            )
        for path in (run.workdir, f"{run.workdir}.lock"):
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) != root:
                raise ConfigError(
                    f"--outdir: run {run.name!r} seed {run.seed} would be written to {real}, "
                    f"outside {root} (a symlink, or a plan.json not written by compare); "
                    "give --outdir the real directory"
                )


def _check_seeds(seeds: int) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds: must be an integer >= 1 (seeds per method); got {seeds!r}")
    return seeds


def _method_overrides(cfg: Config, registry: str) -> list[str]:
    """The weighting overrides of one method run, given the shared config."""
    from mtlrnn import weighting

    out = [f"weighting.name={registry}"]
    if registry != cfg.weighting.name and cfg.weighting.params:
        # The config's hyper-parameters belong to its own weighting.name.
        out.append("weighting.params={}")
    strategy = weighting.get(registry)
    if strategy.requires == "grads" and cfg.weighting.mode not in strategy.modes:
        out.append(f"weighting.mode={strategy.modes[0]}")
    return out


def _plan(
    cfg: Config,
    config_path: str | os.PathLike | None,
    methods: Sequence[str] | str,
    seeds: int,
    outdir: str | os.PathLike,
    overrides: Sequence[str],
    metrics: Sequence[str] | str | None = None,
) -> list[tuple[Run, Config]]:
    checked = _check_methods(methods)
    _check_seeds(seeds)
    # Every run's config is built and checked against the data before anything trains.
    available = _data_tasks(cfg)
    resolved = resolve_tasks(cfg.tasks, available)
    tasks = [t.name for t in resolved]
    if metrics is not None:
        known = sorted({m for t in resolved for m in t.metrics})
        unknown = [m for m in _names(metrics) if m not in known]
        if unknown:
            raise ConfigError(
                f"--metrics: unknown metric {unknown[0]!r}; the tasks report {', '.join(known)}"
            )
    path = None if config_path is None else os.fspath(config_path)
    shared = tuple(overrides)
    base = cfg.train.seed
    seed_values = [base + i for i in range(seeds)]
    runs_dir = os.path.join(os.fspath(outdir), "runs")

    specs: list[tuple[str, str, str | None, list[str]]] = []
    for task in tasks:
        own = [f"tasks.include=[{_yaml_name(task)}]", "weighting.name=equal"]
        if cfg.weighting.params:
            own.append("weighting.params={}")
        if cfg.weighting.chunk_size:
            own.append("weighting.chunk_size=0")  # must divide the task count, here 1
        specs.append((f"single-{task}", "equal", task, own))
    for name, registry in checked:
        specs.append((name, registry, None, _method_overrides(cfg, registry)))

    planned: list[tuple[Run, Config]] = []
    for name, registry, task, own in specs:
        for seed in seed_values:
            run_overrides = (*own, f"train.seed={seed}")
            run = Run(
                name=name,
                method=registry,
                seed=seed,
                workdir=os.path.join(runs_dir, path_component(name), f"seed{seed}"),
                overrides=(*shared, *run_overrides),
                config_path=path,
                task=task,
            )
            try:
                run_cfg = apply_overrides(cfg, run_overrides)
                resolve_tasks(run_cfg.tasks, available)
            except ConfigError as e:
                raise ConfigError(f"{e} (run {name} seed {seed})") from None
            planned.append((run, run_cfg))
    _check_workdirs([run for run, _ in planned], os.fspath(outdir))
    return planned


def plan_runs(
    cfg: Config,
    config_path: str | os.PathLike | None,
    methods: Sequence[str] | str,
    seeds: int,
    outdir: str | os.PathLike,
    overrides: Sequence[str] = (),
) -> list[Run]:
    """The runs of a comparison, single-task baselines first, every config validated.

    Args:
      cfg: the shared config, already loaded from ``config_path`` with ``overrides``; its
        resolved tasks get baselines and its ``train.seed`` is the first seed.
      config_path: the YAML file ``cfg`` came from (None: the built-in defaults); subprocess
        runs load it again.
      methods: weighting names as given (``ew`` or registry names, see
        ``mtlrnn.weighting.names()``).
      seeds: seeds per method and per baseline, ``>= 1``.
      outdir: the comparison's directory.
      overrides: the shared ``--set`` overrides ``cfg`` was loaded with.

    Raises:
      ConfigError: an unknown or repeated method, ``seeds < 1``, a run whose config is
        invalid (the message names the key and the run), two task names that differ only
        in case, or a workdir that would resolve outside ``outdir``; before any training.
    """
    return [run for run, _ in _plan(cfg, config_path, methods, seeds, outdir, overrides)]


def _config_diff(a: Config, b: Config) -> list[str]:
    # fit() saves data paths made absolute; compare them that way.
    a, b = (dataclasses.replace(c, data=absolute_paths(c.data)) for c in (a, b))
    fa, fb = flat_dict(a), flat_dict(b)
    keys = sorted(set(fa) | set(fb))
    return [
        f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}"
        for k in keys
        if fa.get(k) != fb.get(k) and not k.startswith(_COSMETIC)
    ]


def _check_finished(planned: Sequence[tuple[Run, Config]], outdir: str) -> None:
    """A finished run must have been trained with the config the plan gives it now."""
    from mtlrnn.training.run import load_run

    for run, run_cfg in planned:
        if not os.path.isfile(os.path.join(run.workdir, "summary.json")):
            continue
        try:
            old = load_run(run.workdir)
        except ConfigError:
            continue  # no saved config, or another version of the schema: nothing to compare
        diff = _config_diff(old, run_cfg)
        if diff:
            rel = os.path.relpath(run.workdir, outdir)
            raise ConfigError(
                f"--outdir: {rel} was trained with a different config ({diff[0]}"
                f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); use a new --outdir "
                "or delete that run"
            )


def _plan_payload(
    runs: Sequence[Run],
    outdir: str,
    *,
    config_path: str | None,
    overrides: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
) -> dict[str, Any]:
    return {
        "config_path": config_path,
        "overrides": list(overrides),
        "methods": list(methods),
        "seeds": list(seeds),
        "runs": [
            {
                **dataclasses.asdict(run),
                "workdir": os.path.relpath(run.workdir, outdir),
                "overrides": list(run.overrides),
            }
            for run in runs
        ],
    }


def _read_plan(outdir: str) -> tuple[list[Run], dict[str, Any]]:
    path = os.path.join(outdir, "plan.json")
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"--outdir: {outdir} has no plan.json; run compare without --report-only first, "
            "or give --methods (and --config, --seeds, --set) to plan the report"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--outdir: cannot read {path} ({e})") from None
    fields = {f.name for f in dataclasses.fields(Run)}
    runs = [
        Run(
            **{
                **{k: v for k, v in r.items() if k in fields},
                "workdir": os.path.join(outdir, r["workdir"]),
                "overrides": tuple(r["overrides"]),
            }
        )
        for r in plan["runs"]
    ]
    _check_workdirs(runs, outdir)
    return runs, plan


# --------------------------------------------------------------------------------------------
# Executing
# --------------------------------------------------------------------------------------------


def _parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        if isinstance(shard, str):
            i_text, n_text = shard.split("/")
            index, count = int(i_text), int(n_text)
        else:
            index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise ConfigError(f"--shard: expected I/N with 0 <= I < N, e.g. 0/2; got {shard!r}")
    return index, count


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = [line.strip() for line in f if line.strip()][-lines:]
    except OSError:
        return ""
    return " | ".join(tail)


# --------------------------------------------------------------------------------------------
# Accelerators per job (mtlrnn.accelerators) and run locks (mtlrnn.training.runlock)
# --------------------------------------------------------------------------------------------


def _slot_envs(jobs: int, environ: Mapping[str, str], verbose: bool) -> list[dict[str, str]]:
    """One environment update per job slot (fewer slots than ``jobs`` on TPUs, see above)."""
    kind, ids = visible_accelerators(environ)
    if not ids:
        return [{} for _ in range(jobs)]
    groups = assign_devices(ids, jobs, shareable=kind != "tpu")
    name = {"cuda": "GPU", "tpu": "TPU chip"}[kind]
    if len(groups) < jobs:
        _say(
            True,
            f"--jobs {jobs}: {len(ids)} {name}(s) cannot be shared between processes; "
            f"running {len(groups)} job(s) at a time",
        )
    elif jobs > len(ids):
        _say(
            True,
            f"--jobs {jobs}: only {len(ids)} {name}(s); jobs share them round-robin "
            f"({', '.join(ids)})",
        )
    else:
        _say(verbose, f"--jobs {jobs}: {name}s per job: {' | '.join(','.join(g) for g in groups)}")
    return [device_env(kind, g, slot) for slot, g in enumerate(groups)]


# --------------------------------------------------------------------------------------------
# Training one run
# --------------------------------------------------------------------------------------------


class _Job(NamedTuple):
    """What one ``mtlrnn train`` trains: one run, or consecutive seeds as one population."""

    config_path: str | None  # the YAML config (None: the built-in defaults)
    overrides: tuple[str, ...]  # its ``--set`` overrides
    workdir: str  # its ``--workdir``
    log: str  # where a subprocess's output goes


def _job(runs: Sequence[Run]) -> _Job:
    """The job training ``runs`` (consecutive seeds of one method): a single run into its
    workdir; several as one population run into the method's directory, logged to
    ``train-seed<first>-<n>.log`` there."""
    first = runs[0]
    if len(runs) == 1:
        log = os.path.join(first.workdir, "train.log")
        return _Job(first.config_path, first.overrides, first.workdir, log)
    parent = os.path.dirname(first.workdir)
    log = os.path.join(parent, f"train-seed{first.seed}-{len(runs)}.log")
    return _Job(first.config_path, _population_overrides(runs), parent, log)


def _fit_in_process(job: _Job, runs: Sequence[Run]) -> str | None:
    """Train ``job`` with :func:`mtlrnn.training.run.fit`; the error text on failure (its
    traceback goes to the ``train.log`` of each of ``runs``), else None."""
    from mtlrnn.training import run as run_module

    try:
        cfg = load_config(job.config_path, job.overrides)
        run_module.fit(cfg, job.workdir, verbose=False)
    except Exception as e:  # one failed run must not stop the others
        for run in runs:
            os.makedirs(run.workdir, exist_ok=True)
            write_text_atomic(os.path.join(run.workdir, "train.log"), traceback.format_exc())
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


def _cli_train(job: _Job, locks: Sequence[Lock], devices: Mapping[str, str]) -> str | None:
    """``python -m mtlrnn.cli train`` of ``job``, output in ``job.log``; the error text on
    failure, else None. The child is registered with ``locks``."""
    import mtlrnn

    cmd = [sys.executable, "-m", "mtlrnn.cli", "train"]
    if job.config_path is not None:
        cmd += ["--config", job.config_path]
    cmd += ["--workdir", job.workdir, "--quiet"]
    for item in job.overrides:
        cmd += ["--set", item]
    env = {**os.environ, **devices}
    # The child must import this very mtlrnn, wherever (or whether) it is installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(mtlrnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # Runs may share an accelerator: each takes memory as needed instead of 75% of it.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.makedirs(os.path.dirname(job.log), exist_ok=True)
    with atomic_writer(job.log) as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            for lock in locks:
                lock.set_child(proc.pid)
            code = proc.wait()
        except BaseException:
            proc.kill()  # an interrupted compare leaves no orphan training the run
            proc.wait()
            raise
    if code != 0:
        return f"exit code {code}: {_log_tail(job.log)} (log: {job.log})"
    return None


def _population_overrides(runs: Sequence[Run]) -> tuple[str, ...]:
    """The overrides of one population run training ``runs`` (consecutive seeds)."""
    own = tuple(o for o in runs[0].overrides if not o.startswith("train.seed="))
    return (*own, f"train.seed={runs[0].seed}", f"train.num_seeds={len(runs)}")


def _population_key(run: Run) -> tuple[Any, ...]:
    """Runs with the same key differ only in their seed: one population can train them."""
    own = tuple(o for o in run.overrides if not o.startswith("train.seed="))
    return (run.name, run.config_path, own, os.path.dirname(run.workdir))


def _units(runs: Sequence[tuple[int, Run]], vectorize: bool) -> list[list[tuple[int, Run]]]:
    """The plan cut into what one process trains at once: with ``vectorize``, each
    method's (or baseline's) consecutive seeds together; else one run each."""
    units: list[list[tuple[int, Run]]] = []
    for item in runs:
        last = units[-1][-1][1] if units else None
        if (
            vectorize
            and last is not None
            and _population_key(last) == _population_key(item[1])
            and item[1].seed == last.seed + 1
        ):
            units[-1].append(item)
        else:
            units.append([item])
    return units


@dataclasses.dataclass(frozen=True)
class _Training:
    """How this process trains its share of the plan.

    Attributes:
      jobs: runs (populations) trained at once; more than 1: each in a subprocess.
      verbose: print progress lines to stderr (failures are printed regardless).
      lease_s: the lock lease in seconds (:mod:`mtlrnn.training.runlock`).
      devices: the job slot's accelerator environment, for subprocesses.
    """

    jobs: int
    verbose: bool
    lease_s: float
    devices: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def subprocess_mode(self) -> bool:
        """Train in ``python -m mtlrnn.cli train`` subprocesses."""
        return self.jobs > 1


class _Claim(NamedTuple):
    """A run as :func:`_claim` found it."""

    status: str  # "finished", "locked" (by another process), or "" (to train)
    lock: Lock | None  # the run's lock, held by this process; the caller releases it


class _Messages(NamedTuple):
    """What :func:`_train_block` says about one training."""

    start: str  # before it starts
    failed: str  # before the error text, when it failed
    done: str  # before its time, when it succeeded


def _is_finished(run: Run) -> bool:
    """Whether ``run`` has its ``summary.json``, written when it finished."""
    return os.path.isfile(os.path.join(run.workdir, "summary.json"))


def _claim(run: Run, label: str, how: _Training) -> _Claim:
    """Lock ``run`` unless it is finished or another process holds its lock; says why a
    locked run is skipped, and the notes of taking over a stale lock."""
    if _is_finished(run):
        return _Claim("finished", None)
    lock_path = f"{run.workdir}.lock"
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    lock, notes = acquire(lock_path, how.lease_s)
    if lock is None:
        _say(how.verbose, f"{label}: skipped, another process holds {lock_path}: {notes[0]}")
        return _Claim("locked", None)
    try:
        for note in notes:
            _say(how.verbose, f"{label}: {note}")
    except BaseException:
        lock.release()  # the caller never got it
        raise
    # Finished by its owner between our check and the lock: held, but not to train.
    return _Claim("finished" if _is_finished(run) else "", lock)


def _say_resuming(run: Run, label: str, verbose: bool) -> None:
    """Say so when ``run`` was interrupted: ``mtlrnn train`` resumes it from its latest
    good checkpoint (or starts afresh)."""
    if os.path.exists(run.workdir):
        _say(verbose, f"{label}: {run.workdir} has no summary.json (interrupted); resuming")


def _train(block: Sequence[tuple[Run, Lock]], how: _Training) -> str | None:
    """Train the locked runs of ``block`` (consecutive seeds of one method) as one job
    (see :func:`_job`); the error text on failure, else None."""
    runs = [run for run, _ in block]
    if how.subprocess_mode:
        return _cli_train(_job(runs), [lock for _, lock in block], how.devices)
    return _fit_in_process(_job(runs), runs)


def _train_block(
    block: Sequence[tuple[Run, Lock]], messages: _Messages, how: _Training
) -> list[str]:
    """:func:`_train` ``block``, saying how it went; the status of each of its runs."""
    _say(how.verbose, messages.start)
    t0 = time.perf_counter()
    error = _train(block, how)
    statuses: list[str] = []
    for run, _ in block:
        if error is None and not _is_finished(run):
            error = "stopped before it finished (signal?); rerun compare to resume it"
        statuses.append("failed" if error is not None else "trained")
    if error is not None:
        print(f"{messages.failed}: {error}", file=sys.stderr, flush=True)
    else:
        _say(how.verbose, f"{messages.done} in {time.perf_counter() - t0:.1f} s")
    return statuses


def _population_messages(label: str, block: Sequence[tuple[Run, Lock]]) -> _Messages:
    """What :func:`_train_block` says about a block of :func:`_run_population`."""
    seeds = ", ".join(str(run.seed) for run, _ in block)
    where = os.path.dirname(block[0][0].workdir)
    return _Messages(
        start=f"{label}: training seed(s) {seeds} in one population -> {where}",
        failed=f"{label} seeds {seeds}: FAILED",
        done=f"{label}: seeds {seeds} done",
    )


def _run_population(runs: Sequence[Run], label: str, how: _Training) -> list[str]:
    """Train the runs of one method (consecutive seeds) that are neither finished nor
    locked, consecutive seeds together as one population run; the status of each run."""
    status = {run.workdir: "" for run in runs}
    held: list[tuple[Run, Lock]] = []
    try:
        for run in runs:
            claim = _claim(run, f"{label} seed {run.seed}", how)
            status[run.workdir] = claim.status
            if claim.lock is not None:
                held.append((run, claim.lock))
        todo = [(r, lk) for r, lk in held if not status[r.workdir]]
        for run, _ in todo:
            _say_resuming(run, f"{label} seed {run.seed}", how.verbose)
        for block in _consecutive(todo):
            statuses = _train_block(block, _population_messages(label, block), how)
            status.update(zip((r.workdir for r, _ in block), statuses, strict=True))
    finally:
        for _, lock in held:
            lock.release()
    return [status[run.workdir] for run in runs]


def _consecutive(items: Sequence[tuple[Run, Lock]]) -> list[list[tuple[Run, Lock]]]:
    blocks: list[list[tuple[Run, Lock]]] = []
    for item in items:
        if blocks and item[0].seed == blocks[-1][-1][0].seed + 1:
            blocks[-1].append(item)
        else:
            blocks.append([item])
    return blocks


def _run_one(run: Run, label: str, how: _Training) -> str:
    """Train one run unless it is finished or locked; returns its status."""
    claim = _claim(run, label, how)
    try:
        if claim.status == "finished":
            _say(how.verbose, f"{label}: finished, skipped")
        if claim.status:
            return claim.status
        _say_resuming(run, label, how.verbose)
        messages = _Messages(
            start=f"{label}: training -> {run.workdir}",
            failed=f"{label}: FAILED in {run.workdir}",
            done=f"{label}: done",
        )
        return _train_block([(run, claim.lock)], messages, how)[0]
    finally:
        if claim.lock is not None:
            claim.lock.release()


def _run_unit(unit: Sequence[tuple[int, Run]], total: int, how: _Training) -> list[str]:
    """Train one unit of the plan (see :func:`_units`) of ``total`` runs; the status of
    each of its runs."""
    (i, run), n = unit[0], len(unit)
    if n == 1:
        return [_run_one(run, f"[{i + 1}/{total}] {run.name} seed {run.seed}", how)]
    return _run_population([r for _, r in unit], f"[{i + 1}-{i + n}/{total}] {run.name}", how)


def _run_units(
    units: Sequence[Sequence[tuple[int, Run]]],
    envs: Sequence[Mapping[str, str]],
    *,
    total: int,
    how: _Training,
) -> list[str]:
    """Train ``units``, each on a free job slot (``envs``: the slots' accelerators): one
    after another with one job, else on ``len(envs)`` threads; each run's status."""
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(len(envs)):
        free.put(slot)

    def one(unit: Sequence[tuple[int, Run]]) -> list[str]:
        slot = free.get()  # a job slot, and with it the slot's accelerators
        try:
            return _run_unit(unit, total, dataclasses.replace(how, devices=envs[slot]))
        finally:
            free.put(slot)

    if how.jobs == 1:
        per_unit = [one(unit) for unit in units]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(envs)) as pool:
            per_unit = list(pool.map(one, units))
    return [status for unit in per_unit for status in unit]


def _execution_flags(
    jobs: int, shard: str | tuple[int, int] | None, lock_lease_s: float | None
) -> tuple[tuple[int, int] | None, float]:
    """Check ``jobs``; the parsed ``shard`` and the lock lease in seconds (ConfigError
    names a bad flag)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs: must be an integer >= 1; got {jobs!r}")
    return _parse_shard(shard), lease_seconds(lock_lease_s)


def _shard_runs(
    runs: Sequence[Run], shard: tuple[int, int] | None, verbose: bool
) -> list[tuple[int, Run]]:
    """``(index, run)`` of the runs of ``shard`` (all runs without one); says how many."""
    mine = [(i, run) for i, run in enumerate(runs) if shard is None or i % shard[1] == shard[0]]
    if shard is not None:
        _say(verbose, f"shard {shard[0]}/{shard[1]}: {len(mine)} of {len(runs)} runs")
    return mine


def _tally(statuses: Sequence[str]) -> str:
    """How many runs ended in each status: the last line of :func:`execute`."""
    counts = {s: statuses.count(s) for s in ("trained", "finished", "locked", "failed")}
    return (
        f"runs: {counts['trained']} trained, {counts['finished']} already finished, "
        f"{counts['locked']} skipped (locked), {counts['failed']} failed"
    )


def execute(
    runs: Sequence[Run],
    *,
    jobs: int = 1,
    shard: str | tuple[int, int] | None = None,
    verbose: bool = True,
    lock_lease_s: float | None = None,
    vectorize: bool = True,
) -> list[str]:
    """Train the runs that are neither finished nor locked by a live process.

    Args:
      runs: the plan, as from :func:`plan_runs`.
      jobs: runs trained at once. 1: one after another in this process with
        :func:`mtlrnn.training.run.fit`; more: as ``python -m mtlrnn.cli train`` subprocesses, each
        writing ``<workdir>/train.log`` and each job slot seeing its own accelerators
        (see the module docstring).
      shard: ``"I/N"`` or ``(I, N)``: only the runs whose index in ``runs`` modulo ``N`` is
        ``I`` (0-based), so that N processes or machines split one comparison.
      verbose: print one line per run to stderr (failures are printed regardless).
      lock_lease_s: seconds after which a lock held from another host and not renewed is
        stale (None: ``$MTLRNN_LOCK_LEASE_S``, else 300).
      vectorize: train each method's (and baseline's) seeds of this shard together, as one
        population run (``train.num_seeds``, one compiled step: :func:`mtlrnn.training.run.fit`);
        False: one process or call per run.

    Returns:
      The workdirs of the runs that failed (an exception or a non-zero exit), in plan order.

    Raises:
      ConfigError: ``jobs < 1``, a malformed ``shard`` or a lease that is not ``> 0``.
    """
    parsed, lease_s = _execution_flags(jobs, shard, lock_lease_s)
    mine = _shard_runs(runs, parsed, verbose)
    units = _units(mine, vectorize)
    envs = _slot_envs(jobs, os.environ, verbose) if jobs > 1 and len(units) > 1 else [{}]
    how = _Training(jobs=jobs, verbose=verbose, lease_s=lease_s)
    statuses = _run_units(units, envs, total=len(runs), how=how)
    _say(verbose, _tally(statuses))
    return [run.workdir for (_, run), s in zip(mine, statuses, strict=True) if s == "failed"]


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _read_summary(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # not there, or being written right now by its run


def _pick_split(evals: Mapping[str, Any], split: str) -> str | None:
    if split in evals:
        return split
    if not evals:
        return None
    rank = {s: i for i, s in enumerate(_SPLIT_ORDER)}
    return max(evals, key=lambda s: (rank.get(s, -1), s))


def _num(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )


def _stats(values: Sequence[float]) -> dict[str, Any]:
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean, std = summarize_seeds(xs)
    return {"mean": mean, "std": std, "n": len(xs)}


def _delta_stats(per_seed: Mapping[int, float | None]) -> dict[str, Any]:
    out = _stats([v for v in per_seed.values() if v is not None])
    out["per_seed"] = {str(s): v for s, v in per_seed.items()}
    return out


def _pm(stats: Mapping[str, Any], fmt: str) -> str:
    if stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt.lstrip('+')}}"


class _Read(NamedTuple):
    """What the summaries of a plan's runs say."""

    scores: dict[Run, dict[str, dict[str, float]]]  # finished run -> task -> metric -> value
    step_ms: dict[Run, float]  # finished run -> median step time per seed (NaN: unknown)
    missing: list[str]  # the unfinished runs' workdirs, relative to outdir
    notes: list[str]  # the runs that fell back to another split


def _step_ms_per_seed(summary: Mapping[str, Any]) -> float:
    """A run's median step time per seed (NaN: not in its summary)."""
    # A population run's step trains all its seeds: per seed, its time / population size.
    population = (summary.get("run") or {}).get("population") or 1
    step_ms = _num((summary.get("throughput") or {}).get("step_time_ms_median"))
    return step_ms / (population if isinstance(population, int) and population > 0 else 1)


def _read_runs(runs: Sequence[Run], outdir: str, split: str) -> _Read:
    """Read the summaries of ``runs``: each finished run's scores on ``split`` (or the split
    it falls back to, with a note) and step time, and which runs are missing."""
    read = _Read(scores={}, step_ms={}, missing=[], notes=[])
    for run in runs:
        summary = _read_summary(os.path.join(run.workdir, "summary.json"))
        rel = os.path.relpath(run.workdir, outdir)
        evals = (summary or {}).get("eval") or {}
        used = _pick_split(evals, split)
        if summary is None or used is None:
            read.missing.append(rel)
            continue
        if used != split:
            read.notes.append(f"{rel}: no {split!r} split in summary.json; used {used!r}")
        read.scores[run] = {
            task: {m: _num(v) for m, v in values.items() if m != "count"}
            for task, values in evals[used].items()
        }
        read.step_ms[run] = _step_ms_per_seed(summary)
    return read


class _Columns(NamedTuple):
    """The tasks and metrics a report compares."""

    tasks: list[str]  # the plan's tasks (else the summaries'), in order
    metrics: dict[str, list[str]]  # task -> its compared metrics, in order (may be empty)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """``(task, metric)`` per column of the table."""
        return [(t, m) for t in self.tasks for m in self.metrics[t]]

    @property
    def measured(self) -> list[str]:
        """The tasks with a compared metric."""
        return [t for t in self.tasks if self.metrics[t]]


def _report_columns(
    runs: Sequence[Run],
    scores: Mapping[Run, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[str] | str | None,
) -> _Columns:
    """The plan's tasks (else the summaries'), each with the metrics that the summaries
    report, or those of them that ``metrics`` names (ConfigError: one that none reports)."""
    tasks = list(dict.fromkeys(r.task for r in runs if r.task is not None))
    if not tasks:
        tasks = list(dict.fromkeys(t for s in scores.values() for t in s))
    found = {
        t: list(dict.fromkeys(m for s in scores.values() for m in s.get(t, {}))) for t in tasks
    }
    if metrics is not None:
        wanted = _names(metrics)
        known = sorted({m for names in found.values() for m in names})
        unknown = [m for m in wanted if m not in known]
        if unknown and scores:
            raise ConfigError(
                f"--metrics: unknown metric {unknown[0]!r}; the summaries report {', '.join(known)}"
            )
        found = {t: [m for m in names if m in wanted] for t, names in found.items()}
    return _Columns(tasks, found)


class _Scores(NamedTuple):
    """The finished runs' scores on the compared columns: what the rows are made of."""

    cols: _Columns
    tables: dict[Run, dict[str, dict[str, float]]]  # run -> measured task -> metric -> score
    step_ms: dict[Run, float]  # run -> median step time per seed


def _score_table(
    scores: Mapping[str, Mapping[str, float]], cols: _Columns
) -> dict[str, dict[str, float]]:
    """One run's scores on the compared columns (NaN where it lacks one)."""
    return {
        t: {m: scores.get(t, {}).get(m, math.nan) for m in cols.metrics[t]} for t in cols.measured
    }


def _cells(s: _Scores, by_task: Mapping[str, Sequence[Run]]) -> dict[str, dict[str, Any]]:
    """Per task and metric, the stats of the scores of the runs ``by_task[task]``."""
    return {
        t: {m: _stats([s.tables[r][t][m] for r in by_task[t]]) for m in s.cols.metrics[t]}
        for t in s.cols.tasks
    }


def _baseline(
    single_cells: Mapping[str, Mapping[str, Any]],
    single_by_task: Mapping[str, Sequence[Run]],
    cols: _Columns,
) -> dict[str, dict[str, float]] | None:
    """The single-task baselines M_stl: per task and metric, the mean over the seeds; None
    unless every measured task has a finished baseline."""
    if not cols.measured or not all(single_by_task[t] for t in cols.measured):
        return None
    return {
        t: {m: _or_nan(single_cells[t][m]["mean"]) for m in cols.metrics[t]} for t in cols.measured
    }


def _baseline_seeds(
    s: _Scores, single_by_task: Mapping[str, Sequence[Run]], seeds: Sequence[int]
) -> dict[int, dict[str, dict[str, float]]]:
    """Per seed of ``seeds`` that every measured task has a finished baseline of, the
    baselines of that seed together as one table."""
    measured = s.cols.measured
    return {
        seed: {
            t: s.tables[next(r for r in single_by_task[t] if r.seed == seed)][t] for t in measured
        }
        for seed in seeds
        if measured and all(any(r.seed == seed for r in single_by_task[t]) for t in measured)
    }


def _deltas(
    label: str,
    per_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
    baseline: Mapping[str, Mapping[str, float]] | None,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The stats of Δm and of Δp of each seed's table against ``baseline`` (None: no Δ),
    and a note per seed whose Δ is undefined."""
    dm: dict[int, float | None] = {}
    dp: dict[int, float | None] = {}
    notes: list[str] = []
    for seed, table in per_seed.items():
        dm[seed] = dp[seed] = None
        if baseline is None:
            continue
        try:
            dm[seed], dp[seed] = delta_m(table, baseline), delta_p(table, baseline)
        except ValueError as e:
            notes.append(f"{label} seed {seed}: Δ undefined ({e})")
    return _delta_stats(dm), _delta_stats(dp), notes


def _method_row(
    s: _Scores, group: Sequence[Run], baseline: Mapping[str, Mapping[str, float]] | None
) -> tuple[dict[str, Any], list[str]]:
    """The row of one method, ``group`` being its runs; and the notes on its Δ."""
    done = [r for r in group if r in s.tables]
    dm, dp, notes = _deltas(group[0].name, {r.seed: s.tables[r] for r in done}, baseline)
    row = {
        "method": group[0].name,
        "weighting": group[0].method,
        "n": len(done),
        "seeds": [r.seed for r in done],
        "scores": _cells(s, {t: done for t in s.cols.tasks}),
        "delta_m": dm,
        "delta_p": dp,
        "step_time_ms": _median([s.step_ms[r] for r in done]),
    }
    return row, notes


def _rows(
    runs: Sequence[Run], s: _Scores
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]] | None, list[str]]:
    """The report's rows, ``single-task`` first; the baselines M_stl (see :func:`_baseline`);
    and the notes on Δ."""
    single_runs = [r for r in runs if r.task is not None and r in s.tables]
    single_by_task = {t: [r for r in single_runs if r.task == t] for t in s.cols.tasks}
    single_cells = _cells(s, single_by_task)
    baseline = _baseline(single_cells, single_by_task, s.cols)
    notes: list[str] = []
    if baseline is None and s.cols.pairs:
        notes.append("Δm and Δp need a finished single-task baseline of every task")
    # The baselines' own row: each seed's single-task models together, against the means.
    complete = _baseline_seeds(s, single_by_task, sorted({r.seed for r in runs}))
    dm, dp, more = _deltas(SINGLE_TASK, complete, baseline)
    notes += more
    n_per_task = {t: len(single_by_task[t]) for t in s.cols.tasks}
    rows: list[dict[str, Any]] = [
        {
            "method": SINGLE_TASK,
            "weighting": "equal",
            "n": min(n_per_task.values(), default=0),
            "n_per_task": n_per_task,
            "seeds": sorted({r.seed for r in single_runs}),
            "scores": single_cells,
            "delta_m": _zero_mean(dm),
            "delta_p": _zero_mean(dp),
            "step_time_ms": _median([s.step_ms[r] for r in single_runs]),
        }
    ]
    for name in dict.fromkeys(r.name for r in runs if r.task is None):
        row, more = _method_row(s, [r for r in runs if r.name == name and r.task is None], baseline)
        rows.append(row)
        notes += more
    return rows, baseline, notes


def _write_report(
    outdir: str, result: Mapping[str, Any], columns: Sequence[tuple[str, str]], *, verbose: bool
) -> None:
    """Write ``compare.md``, ``compare.csv``, ``compare.json`` and ``delta_m.png`` into
    ``outdir``; print the markdown table when ``verbose``."""
    markdown = _markdown(result, columns)
    os.makedirs(outdir, exist_ok=True)
    write_text_atomic(os.path.join(outdir, "compare.md"), markdown)
    write_text_atomic(os.path.join(outdir, "compare.csv"), _csv(result["rows"], columns))
    text = json.dumps(json_safe(result), indent=2, sort_keys=True, allow_nan=False)
    write_text_atomic(os.path.join(outdir, "compare.json"), text + "\n")
    _plot_delta_m(result["rows"], os.path.join(outdir, "delta_m.png"))
    if verbose:
        print(markdown, flush=True)  # the result: stdout (progress lines are on stderr)


def report(
    outdir: str | os.PathLike,
    runs: Sequence[Run],
    *,
    split: str = "test",
    metrics: Sequence[str] | str | None = None,
    config_path: str | os.PathLike | None = "",
    verbose: bool = True,
) -> dict[str, Any]:
    """Summarise the finished runs of ``runs`` and write the comparison's report files.

    Reads ``eval[split]`` of each finished run's ``summary.json`` (a summary without
    ``split`` falls back to its last split in train, dev, test order, with a note). Writes
    ``compare.md`` (also printed to stderr when ``verbose``), ``compare.csv``,
    ``compare.json`` and ``delta_m.png`` into ``outdir``.

    Args:
      outdir: the comparison's directory.
      runs: the plan (see :func:`plan_runs`); runs without a summary count as missing.
      split: the evaluation split to compare on.
      metrics: metric names to compare (default: every metric in the summaries).
      config_path: shown in the report's header.
      verbose: print the markdown table to stderr.

    Returns:
      ``{"split", "tasks", "columns", "seeds", "baseline", "rows", "finished", "missing",
      "notes", ...}``; each row has ``method``, ``n``, ``scores[task][metric]``,
      ``delta_m`` and ``delta_p`` (each ``{"mean", "std", "n", "per_seed"}``) and
      ``step_time_ms``. The ``single-task`` row comes first.

    Raises:
      ConfigError: ``metrics`` names a metric that no finished run reports.
    """
    outdir = os.fspath(outdir)
    read = _read_runs(runs, outdir, split)
    cols = _report_columns(runs, read.scores, metrics)
    tables = {r: _score_table(scores, cols) for r, scores in read.scores.items()}
    rows, baseline, delta_notes = _rows(runs, _Scores(cols, tables, read.step_ms))
    path_text = "" if config_path is None else os.fspath(config_path)
    result: dict[str, Any] = {
        "config_path": path_text or None,
        "split": split,
        "tasks": cols.tasks,
        "columns": [f"{t}/{m}" for t, m in cols.pairs],
        "seeds": sorted({r.seed for r in runs}),
        "baseline": baseline,
        "rows": rows,
        "finished": len(read.scores),
        "planned": len(runs),
        "missing": read.missing,
        "notes": [*read.notes, *delta_notes],
    }
    _write_report(outdir, result, cols.pairs, verbose=verbose)
    return result


def _zero_mean(stats: dict[str, Any]) -> dict[str, Any]:
    # The baselines' mean relative change to their own mean is 0 by definition; only
    # rounding would show otherwise.
    if stats["mean"] is not None:
        stats["mean"] = 0.0
    return stats


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _median(values: Sequence[float]) -> float | None:
    xs = [v for v in values if math.isfinite(v)]
    return statistics.median(xs) if xs else None


def _markdown(result: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    config = result["config_path"] or "built-in defaults"
    seeds = ", ".join(map(str, result["seeds"])) or "-"
    lines = [
        "# mtlrnn compare",
        "",
        f"config: `{config}`; split: {result['split']}; seeds: {seeds}; "
        f"finished runs: {result['finished']} of {result['planned']} (plan: plan.json)",
        "",
        "- Δm% = 100/N Σ_{task,metric} (-1)^l (M_mtl - M_stl) / M_stl, l = 1 where higher is "
        "better; lower is better (Maninis et al. 2019, as in Nash-MTL and FAMO).",
        "- Δp% = 100/T Σ_task 1/N_task Σ_metric (-1)^s (M_mtl - M_stl) / M_stl, s = 1 where "
        "lower is better; higher is better (LibMTL, Lin & Zhang 2023).",
        "- M_stl: the single-task baselines' mean over their seeds. Cells: mean ± sample std "
        "over the n seeds; Δ per seed, then mean ± std. single-task row: Δ is 0 by "
        "definition, its std is the baselines' seed noise. step ms: median over the seeds "
        "of each run's median step time (a population step, which trains several seeds at "
        "once, divided by their number).",
        "",
    ]
    header = ["method", "n", *(f"{t}/{m}" for t, m in columns), "Δm% ↓", "Δp ↑", "step ms"]
    table = [header, ["---", "---:", *(["---:"] * len(columns)), "---:", "---:", "---:"]]
    for row in result["rows"]:
        if row["method"] == SINGLE_TASK and len(set(row["n_per_task"].values())) > 1:
            n_text = f"{min(row['n_per_task'].values())}-{max(row['n_per_task'].values())}"
        else:
            n_text = str(row["n"])
        step = row["step_time_ms"]
        table.append(
            [
                row["method"],
                n_text,
                *(_pm(row["scores"][t][m], ".4f") for t, m in columns),
                _pm(row["delta_m"], "+.2f"),
                _pm(row["delta_p"], "+.2f"),
                "-" if step is None else f"{step:.1f}",
            ]
        )
    lines += ["| " + " | ".join(r) + " |" for r in table]
    if result["missing"]:
        lines += ["", f"not finished ({len(result['missing'])}): {', '.join(result['missing'])}"]
    if result["notes"]:
        lines += ["", "notes:", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    header = ["method", "weighting", "n"]
    for t, m in columns:
        header += [f"{t}/{m}_mean", f"{t}/{m}_std"]
    header += ["delta_m_mean", "delta_m_std", "delta_p_mean", "delta_p_std", "step_time_ms"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def cell(value: Any) -> Any:
        return "" if value is None else value

    for row in rows:
        out = [row["method"], row["weighting"], row["n"]]
        for t, m in columns:
            s = row["scores"][t][m]
            out += [cell(s["mean"]), cell(s["std"])]
        for key in ("delta_m", "delta_p"):
            out += [cell(row[key]["mean"]), cell(row[key]["std"])]
        out.append(cell(row["step_time_ms"]))
        writer.writerow(out)
    return buf.getvalue()


def _plot_delta_m(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Bars of Δm% per method with std error bars; no file while no Δm is known."""
    shown = [r for r in rows if r["method"] != SINGLE_TASK and r["delta_m"]["mean"] is not None]
    if not shown:
        if os.path.exists(path):
            os.remove(path)  # a stale plot would contradict the table
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.5, 1.5 + 0.9 * len(shown)), 4))
    xs = range(len(shown))
    means = [r["delta_m"]["mean"] for r in shown]
    stds = [r["delta_m"]["std"] for r in shown]
    colors = ["tab:green" if m < 0 else "tab:red" for m in means]
    ax.bar(xs, means, yerr=stds, capsize=4, color=colors, alpha=0.8)
    noise = rows[0]["delta_m"]["std"] if rows and rows[0]["method"] == SINGLE_TASK else None
    if noise:
        ax.axhspan(-noise, noise, color="gray", alpha=0.15, label="single-task seed std")
        ax.legend(fontsize=8)
    ax.axhline(0.0, color="black", linewidth=1)
    ax.set_xticks(list(xs), [f"{r['method']}\n(n={r['n']})" for r in shown])
    ax.set_ylabel("Δm %")
    ax.set_title("Δm% vs single-task baselines (lower is better)", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_writer(path, "wb") as f:
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# The whole workflow
# --------------------------------------------------------------------------------------------


def _check_flags(
    *,
    jobs: int,
    shard: str | tuple[int, int] | None,
    lease: float | None,
    seeds: int | None,
    metrics: Sequence[str] | str | None,
) -> int:
    """Check the flags of :func:`compare` before any work (ConfigError names a bad one);
    the number of seeds (None: 3)."""
    _execution_flags(jobs, shard, lease)
    seeds = 3 if seeds is None else _check_seeds(seeds)
    if metrics is not None and (not _names(metrics) or not all(_names(metrics))):
        raise ConfigError(f"--metrics: expected metric names, e.g. accuracy,mse; got {metrics!r}")
    return seeds


def _report_saved_plan(
    outdir: str, *, split: str, metrics: Sequence[str] | str | None, verbose: bool
) -> dict[str, Any]:
    """:func:`report` on the runs of ``<outdir>/plan.json``, with no failed runs."""
    runs, plan = _read_plan(outdir)
    config_path = plan.get("config_path")
    result = report(
        outdir, runs, split=split, metrics=metrics, config_path=config_path, verbose=verbose
    )
    return {**result, "failed": []}


class _Planned(NamedTuple):
    """A planned comparison: what ``plan.json`` records, and the configs."""

    config_path: str | None  # the shared YAML config (None: the built-in defaults)
    overrides: Sequence[str]  # the ``--set`` overrides shared by every run
    methods: list[str]  # the methods as given
    cfg: Config  # the shared config
    planned: list[tuple[Run, Config]]  # each run with its own config, in plan order

    @property
    def runs(self) -> list[Run]:
        """The planned runs, in plan order."""
        return [run for run, _ in self.planned]


def _load_plan(
    config_path: str | None,
    methods: Sequence[str] | str | None,
    seeds: int,
    outdir: str,
    overrides: Sequence[str],
    metrics: Sequence[str] | str | None,
) -> _Planned:
    """Load the shared config and plan the runs (see :func:`_plan`)."""
    if methods is None:
        raise ConfigError("--methods: required (comma-separated, e.g. ew,uw,pcgrad)")
    _check_methods(methods)  # before the config: a typo fails at once
    cfg = load_config(config_path, overrides)
    planned = _plan(cfg, config_path, methods, seeds, outdir, overrides, metrics)
    return _Planned(config_path, overrides, _names(methods), cfg, planned)


def _check_split(split: str, cfg: Config) -> None:
    """``split`` must be one that the runs evaluate."""
    if split not in cfg.train.eval_splits:
        raise ConfigError(
            f"--split: {split!r} is not evaluated by the runs (train.eval_splits: "
            f"{', '.join(cfg.train.eval_splits)})"
        )


def _save_plan(plan: _Planned, outdir: str, *, split: str) -> None:
    """Check that ``plan`` can train (its runs evaluate ``split``; its finished runs were
    trained with the configs it gives them), then write it to ``<outdir>/plan.json``."""
    _check_split(split, plan.cfg)
    _check_finished(plan.planned, outdir)
    os.makedirs(outdir, exist_ok=True)
    runs = plan.runs
    payload = _plan_payload(
        runs,
        outdir,
        config_path=plan.config_path,
        overrides=plan.overrides,
        methods=plan.methods,
        seeds=sorted({r.seed for r in runs}),
    )
    write_text_atomic(os.path.join(outdir, "plan.json"), json.dumps(payload, indent=2) + "\n")


def _vectorize_seeds(cfg: Config, *, vectorize: bool, verbose: bool) -> bool:
    """Whether seeds train together as populations: with ``vectorize``, unless the runs
    stop early (``train.patience``): then each seed trains on its own (said on stderr)."""
    if vectorize and cfg.train.patience:
        _say(
            verbose,
            "train.patience: early stopping ends a run on its own; each seed "
            "trains as its own run (no population)",
        )
    return vectorize and not cfg.train.patience


def compare(
    config_path: str | os.PathLike | None,
    methods: Sequence[str] | str | None,
    seeds: int | None,
    outdir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    shard: str | tuple[int, int] | None = None,
    split: str = "test",
    metrics: Sequence[str] | str | None = None,
    report_only: bool = False,
    verbose: bool = True,
    lock_lease_s: float | None = None,
    vectorize: bool = True,
) -> dict[str, Any]:
    """``mtlrnn compare``: plan, train what is missing, and report.

    Args:
      config_path: the shared YAML config (None: the built-in defaults).
      methods: weighting methods as given (``ew`` = ``equal``, or any of
        ``mtlrnn.weighting.names()``). With ``report_only`` it may be None: the plan is then
        read from ``<outdir>/plan.json`` and ``config_path``, ``seeds`` and ``overrides``
        are not used.
      seeds: seeds per method and per baseline (None: 3).
      outdir: the comparison's directory (``plan.json``, ``runs/``, the report files).
      overrides: ``--set`` overrides shared by every run.
      jobs, shard, lock_lease_s, vectorize: see :func:`execute`.
      split, metrics: see :func:`report`.
      report_only: train nothing; report on the finished runs.
      verbose: progress lines and the table on stderr.

    Returns:
      The report (see :func:`report`) plus ``"failed"``: the workdirs of runs that failed.

    Raises:
      ConfigError: a bad flag (naming it), method or run config, a finished run trained
        with a different config than planned, a run directory outside ``outdir`` (see
        :func:`plan_runs`), or (``report_only`` without ``methods``) a missing or unsafe
        ``plan.json``; all before any training.
    """
    outdir = os.fspath(outdir)
    seeds = _check_flags(jobs=jobs, shard=shard, lease=lock_lease_s, seeds=seeds, metrics=metrics)
    path = None if config_path is None else os.fspath(config_path)
    if report_only and not methods:
        return _report_saved_plan(outdir, split=split, metrics=metrics, verbose=verbose)
    plan = _load_plan(path, methods, seeds, outdir, overrides, metrics)
    failed: list[str] = []
    if not report_only:
        _save_plan(plan, outdir, split=split)
        failed = execute(
            plan.runs,
            jobs=jobs,
            shard=shard,
            verbose=verbose,
            lock_lease_s=lock_lease_s,
            vectorize=_vectorize_seeds(plan.cfg, vectorize=vectorize, verbose=verbose),
        )
    out = report(outdir, plan.runs, split=split, metrics=metrics, config_path=path, verbose=verbose)
    return {**out, "failed": failed}
