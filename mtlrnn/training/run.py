"""The main job: build data, model and optimizer from a Config, train, evaluate, report.

``fit(config, workdir) -> summary`` is the whole ``mtlrnn train``; ``evaluate(workdir)`` is
``mtlrnn eval``. A workdir receives resolved_config.yaml, metrics.jsonl, summary.json,
vocab.json (text data), checkpoints/ and plots/ (the names in
:mod:`mtlrnn.training.workdir`; no other
file of the workdir is touched). Running ``fit`` again on a workdir that holds a run
continues it exactly or refuses (see :func:`fit`); SIGTERM and SIGINT stop it after a
checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtlrnn import compile_cache
from mtlrnn.config import Config
from mtlrnn.config import ConfigError
from mtlrnn.config import default_config
from mtlrnn.config import dump_yaml
from mtlrnn.config import flat_dict
from mtlrnn.config import load_config
from mtlrnn.config import resolve_tasks
from mtlrnn.data.batching import bucket_lengths
from mtlrnn.data.batching import eval_batches
from mtlrnn.data.batching import stack_batches
from mtlrnn.data.batching import train_batches
from mtlrnn.data.sources import Data
from mtlrnn.data.sources import absolute_paths
from mtlrnn.data.sources import check_labels
from mtlrnn.data.sources import data_sha256
from mtlrnn.data.sources import load_data
from mtlrnn.fileio import write_text_atomic
from mtlrnn.reporting import LOGGER
from mtlrnn.reporting import MetricsWriter
from mtlrnn.reporting import configure_logging
from mtlrnn.reporting import json_safe
from mtlrnn.reporting import plot_history
from mtlrnn.reporting import result_table
from mtlrnn.tasks import TaskSpec
from mtlrnn.training import checkpoint
from mtlrnn.training.flops import matmul_flops
from mtlrnn.training.flops import peak_flops
from mtlrnn.training.hooks import Checkpoints
from mtlrnn.training.hooks import EarlyStop
from mtlrnn.training.hooks import Evaluate
from mtlrnn.training.hooks import MetricsLog
from mtlrnn.training.hooks import PerSeed
from mtlrnn.training.hooks import Profile
from mtlrnn.training.hooks import SeedView
from mtlrnn.training.hooks import StopOnSignal
from mtlrnn.training.hooks import median_step_ms
from mtlrnn.training.hooks import task_dict
from mtlrnn.training.loop import Hook
from mtlrnn.training.loop import Loop
from mtlrnn.training.loop import NonFiniteError
from mtlrnn.training.losses import task_counts
from mtlrnn.training.metrics import accumulate
from mtlrnn.training.metrics import finalize
from mtlrnn.training.parallel import Placement
from mtlrnn.training.parallel import initialize_distributed
from mtlrnn.training.progress import Progress
from mtlrnn.training.step import TrainState
from mtlrnn.training.step import build_model
from mtlrnn.training.step import build_strategy
from mtlrnn.training.step import create_train_state
from mtlrnn.training.step import make_eval_step
from mtlrnn.training.step import make_optimizer
from mtlrnn.training.step import make_train_step
from mtlrnn.training.step import params_sha256
from mtlrnn.training.step import population_step
from mtlrnn.training.workdir import METRICS_FILE
from mtlrnn.training.workdir import POPULATION_FILE
from mtlrnn.training.workdir import PROFILE_DIR
from mtlrnn.training.workdir import RESOLVED_CONFIG
from mtlrnn.training.workdir import SUMMARY_FILE
from mtlrnn.training.workdir import VOCAB_FILE
from mtlrnn.training.workdir import move_run_aside
from mtlrnn.training.workdir import run_files
from mtlrnn.training.workdir import saved_config_path


def load_suite(cfg: Config) -> Data:
    """The data of ``cfg.data`` (see :func:`mtlrnn.data.sources.load_data`)."""
    return load_data(cfg.data)


def resolve_buckets(
    suite: Data, buckets: tuple[int, ...], splits: tuple[str, ...]
) -> tuple[int, ...]:
    """Bucket lengths fitted on the train split and checked against every split used."""
    resolved = tuple(buckets)
    for split in splits:
        try:
            resolved = bucket_lengths(suite.splits[split], resolved)
        except ValueError as e:
            raise ConfigError(f"data.{e} ({split} split)") from None
    return resolved


def _default_workdir(source: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{source}-{stamp}")


def model_for(cfg: Config, tasks: tuple[TaskSpec, ...], data: Data) -> Any:
    """The :class:`~mtlrnn.model.multitask.MultiTaskRNN` of ``cfg.model`` sized for ``data``."""
    return build_model(
        cfg.model,
        tasks,
        vocab_size=data.vocab_size,
        num_features=data.num_features,
        char_vocab_size=data.char_vocab_size,
    )


def run_eval(
    eval_fn: Any,
    params: Any,
    tasks: tuple[TaskSpec, ...],
    batches: Iterator[Mapping[str, Any]],
    placement: Placement,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Evaluate over one pass of ``batches``: ``(metrics[task][metric], mean loss[task])``.

    Losses are averaged over batches weighted by each task's labelled count in the batch.
    """
    total, loss_sum, loss_weight = None, np.zeros(len(tasks)), np.zeros(len(tasks))
    for batch in batches:
        losses, stats = eval_fn(params, placement.eval_batch(batch))
        total = accumulate(total, stats)
        counts = np.asarray(task_counts(tasks, batch), np.float64)
        loss_sum += np.asarray(losses, np.float64) * counts
        loss_weight += counts
    if total is None:
        return {}, {}
    mean_loss = np.where(loss_weight > 0, loss_sum / np.maximum(loss_weight, 1), np.nan)
    return finalize(tasks, total), task_dict([t.name for t in tasks], mean_loss)


# Config keys that may change when a run resumes: they do not alter the sequence of updates.
# (train.steps sets the length of the learning-rate schedule: extending a run continues it
# with the schedule of the new length.) Every other key fixes the trajectory.
RESUMABLE_KEYS = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "train.eval_splits",
    "train.eval_batch_size",
    "train.on_nonfinite",
    "train.compile_cache",
    "train.prefetch",
    "train.patience",  # like train.steps, where the run ends
    "train.population_mode",
    # How the trunk is computed, not what it computes (same math up to float rounding).
    "model.impl",
    "model.scan",
    "model.unroll",
    "model.remat",
    "model.remat_chunk",
    "logging.",
    "checkpoint.",
    "parallel.",
)


def trajectory_config(cfg: Config) -> dict[str, Any]:
    """The dotted config keys that fix a run's sequence of updates, with their values.

    Everything except :data:`RESUMABLE_KEYS`; a checkpoint stores these, and resuming with
    a config that differs in any of them is refused.
    """
    return {
        key: value
        for key, value in flat_dict(cfg).items()
        if not any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_KEYS)
    }


def _config_sha256(values: Mapping[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _run_meta(cfg: Config, data_sha: str | None = None) -> dict[str, Any]:
    """The JSON meta item stored with every checkpoint of a run (its step is added per save);
    ``data_sha``: the fingerprint of data given to ``fit(data=...)``."""
    from mtlrnn import __version__

    frozen = trajectory_config(cfg)
    return {
        "seed": cfg.train.seed,
        "batch_size": cfg.train.batch_size,
        "config_sha256": _config_sha256(frozen),
        "config": frozen,
        "data_sha256": data_sha,
        "mtlrnn_version": __version__,
        "jax_version": jax.__version__,
    }


def _set_values(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The leaves a config sets: None (an option left unset) and empty sections dropped."""
    return {k: v for k, v in flat.items() if v is not None and v != {}}


def _shown(values: Mapping[str, Any], key: str) -> str:
    return repr(values[key]) if key in values else "not set"


#: How to get past a refused change, appended to the refusal.
_WAYS_OUT = (
    "restore the old value, use a new --workdir, or add --overwrite (fit(..., "
    "overwrite=True)) to move the old run aside into <workdir>/replaced-<time>/ and start afresh"
)


def _refuse_changes(old_flat: Mapping[str, Any], cfg: Config, where: str) -> None:
    """Raise ConfigError naming the first trajectory key that ``cfg`` sets differently from
    the run described by ``old_flat`` (its trajectory keys); ``where`` names that run."""
    old, new = _set_values(old_flat), _set_values(trajectory_config(cfg))
    keys = list(new) + [k for k in old if k not in new]
    diffs = [k for k in keys if old.get(k) != new.get(k)]
    if not diffs:
        return
    first = diffs[0]
    more = ""
    if len(diffs) > 1:
        more = "; also " + ", ".join(
            f"{k} ({_shown(old, k)} -> {_shown(new, k)})" for k in diffs[1:4]
        )
        if len(diffs) > 4:
            more += f" and {len(diffs) - 4} more"
    allowed = ", ".join(p + "*" if p.endswith(".") else p for p in RESUMABLE_KEYS)
    raise ConfigError(
        f"{first}: cannot change when resuming {where}: it was {_shown(old, first)}, the "
        f"config now gives {_shown(new, first)}{more}; allowed to change: {allowed}; "
        + _WAYS_OUT
    )


def _check_resumable(
    meta: Mapping[str, Any], cfg: Config, workdir: str, data_sha: str | None = None
) -> None:
    """Raise ConfigError when ``cfg`` (and the data of ``fit(data=...)``, fingerprint
    ``data_sha``) would not continue the run whose checkpoint has ``meta``."""
    _check_same_data(meta.get("data_sha256"), data_sha, workdir)
    old = meta.get("config")
    if not isinstance(old, Mapping):
        raise ConfigError(
            f"--workdir: the checkpoint at step {meta.get('step')} in {workdir} has no config "
            "record (written by an older mtlrnn?); it cannot be resumed: use a new --workdir "
            "or --overwrite"
        )
    if meta.get("config_sha256") == _config_sha256(trajectory_config(cfg)):
        return
    _refuse_changes(old, cfg, f"the run in {workdir} (checkpoint at step {meta.get('step')})")


def _check_same_data(old: str | None, new: str | None, workdir: str) -> None:
    """Raise ConfigError when a run in ``workdir`` trained on other data than ``new`` (the
    fingerprint of ``fit(data=...)``'s data; None: the config's data)."""
    if old == new:
        return
    if new is None:
        what = "was trained on data given to fit(data=...), not on the config's data"
    elif old is None:
        what = "was trained on its config's data, not on data given to fit(data=...)"
    else:
        what = "was trained on other data than the data given to fit(data=...)"
    raise ConfigError(
        f"data: the run in {workdir} {what}; continue it with the same data, or use another "
        "workdir or overwrite=True"
    )


def _check_best_metric(cfg: Config, tasks: tuple[TaskSpec, ...]) -> None:
    key = cfg.checkpoint.best_metric
    if cfg.train.patience and not key:
        raise ConfigError(
            f"train.patience: {cfg.train.patience} evaluations without improvement of "
            "checkpoint.best_metric, but best_metric is ''; set it to the metric to watch, "
            "e.g. dev/<task>/accuracy (with train.eval_every > 0)"
        )
    if cfg.train.patience and cfg.train.num_seeds > 1:
        raise ConfigError(
            "train.patience: early stopping ends the whole loop, so it is not available with "
            f"train.num_seeds={cfg.train.num_seeds} (the seeds would stop at different steps); "
            "train the seeds as separate runs (train.num_seeds=1; mtlrnn compare does so)"
        )
    if not key:
        return
    split, task, metric = key.split("/")
    where = f"checkpoint.best_metric: {key!r}"
    if not cfg.checkpoint.enabled:
        raise ConfigError(f"{where} needs checkpoint.enabled=true")
    if cfg.train.eval_every == 0:
        raise ConfigError(
            f"{where} is chosen at the periodic evaluations, but train.eval_every is 0; "
            "set train.eval_every to a number of steps, or best_metric to ''"
        )
    if split not in cfg.train.eval_splits:
        raise ConfigError(
            f"{where}: split {split!r} is not evaluated; train.eval_splits is "
            f"{list(cfg.train.eval_splits)}"
        )
    specs = {t.name: t for t in tasks}
    if task not in specs:
        raise ConfigError(
            f"{where}: task {task!r} is not trained; the tasks are {', '.join(specs)}"
        )
    if metric not in specs[task].metrics:
        raise ConfigError(
            f"{where}: metric {metric!r} is not computed for {task}; its metrics are "
            f"{', '.join(specs[task].metrics)}"
        )


def _warn(message: str) -> None:
    """A warning through the ``mtlrnn`` logger (a leading ``mtlrnn: warning:`` is dropped)."""
    LOGGER.warning(message.removeprefix("mtlrnn: ").removeprefix("warning: "))


def _info(message: str) -> None:
    LOGGER.info(message)


def _restore_for_resume(
    ckpt_dir: str, target: TrainState, cfg: Config, workdir: str, data_sha: str | None = None
) -> tuple[TrainState, dict[str, Any]] | None:
    """The latest good checkpoint of the run in ``workdir`` (see :func:`fit`), or None."""
    try:
        return checkpoint.restore_latest_good(
            ckpt_dir,
            target,
            check_meta=lambda meta: _check_resumable(meta, cfg, workdir, data_sha),
            warn=_warn,
        )
    except RuntimeError as e:
        raise ConfigError(
            f"--workdir: {e}; nothing was moved or deleted. If the data files changed "
            f"since the run started, restore them; otherwise move {ckpt_dir} away to "
            "start the run afresh"
        ) from None


def _finished_summary(workdir: str, step: int, cfg: Config) -> dict[str, Any] | None:
    """summary.json of the run in ``workdir`` if it describes a run that ended at ``step``
    and is complete under ``cfg``: ``step`` is ``train.steps``, or the run stopped early
    there with the same ``train.patience``."""
    path = os.path.join(workdir, SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        run = summary["run"]
        if run["steps"] != step:
            return None
        early = run.get("stopped_early")
        if step == cfg.train.steps or (early and early["patience"] == cfg.train.patience):
            return summary
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _kept_history(workdir: str, step: int, *, final: bool) -> list[dict[str, Any]]:
    """The records of metrics.jsonl that a run resumed at ``step`` keeps.

    Records after ``step`` are dropped (they are logged again), and when ``final`` (the
    resumed run only has its final evaluation left) the evaluation at ``step`` too. The file
    is renamed to metrics.jsonl.resume until the kept records are rewritten, so that a kill
    in between loses nothing: the next resume reads the renamed file.
    """
    path = os.path.join(workdir, METRICS_FILE)
    backup = path + ".resume"
    source = backup if os.path.isfile(backup) else path
    kept: list[dict[str, Any]] = []
    if step > 0 and os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    at = int(record["step"])
                except (ValueError, KeyError, TypeError):
                    continue  # e.g. a last line cut short by a kill
                if at < step or (at == step and not (final and "eval" in record)):
                    kept.append(record)
    if source == path and os.path.isfile(path):
        os.replace(path, backup)
    return kept


def _replay_history(writer: MetricsWriter, records: list[dict[str, Any]]) -> None:
    """Write ``records`` back to the fresh metrics.jsonl (not to TensorBoard, which has them)."""
    tensorboard, writer._tb = writer._tb, None
    try:
        for record in records:
            writer.write(record)
    finally:
        writer._tb = tensorboard
    backup = writer.path + ".resume"
    if os.path.isfile(backup):
        os.remove(backup)


class _StopRequest:
    """SIGTERM and SIGINT handlers that ask the training loop to stop after the current step.

    :meth:`install` (or entering the context) sets the handlers, in the main thread only
    (Python delivers signals there, and other threads cannot set handlers); :meth:`restore`
    (or leaving it) puts the previous ones back. A second signal raises KeyboardInterrupt.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (in the main thread only; elsewhere nothing happens)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def __enter__(self) -> _StopRequest:
        self.install()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        self.restore()


@dataclasses.dataclass(frozen=True)
class _Fault:
    """A testing hook: send ``signal`` to this process right after step ``step``."""

    step: int
    signal: signal.Signals

    @staticmethod
    def from_env() -> _Fault | None:
        raw = os.environ.get("MTLRNN_FAULT_SIGNAL_AT_STEP", "")
        if not raw:
            return None
        name = os.environ.get("MTLRNN_FAULT_SIGNAL", "TERM").upper().removeprefix("SIG")
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"MTLRNN_FAULT_SIGNAL_AT_STEP: must be a step >= 1, got {raw!r}")
        if name not in ("KILL", "TERM", "INT"):
            raise ConfigError(f"MTLRNN_FAULT_SIGNAL: must be KILL, TERM or INT, got {name!r}")
        return _Fault(int(raw), signal.Signals[f"SIG{name}"])

    def fire(self, ckpts: Sequence[checkpoint.RunCheckpoints]) -> None:
        # Saves issued at earlier steps land first, so that a test knows which checkpoints
        # exist; a save issued at this very step stays in flight, as in a kill mid-save.
        for c in ckpts:
            if c.last_saved != self.step:
                c.wait()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.signal == signal.SIGKILL:
            os.kill(os.getpid(), signal.SIGKILL)
        # raise_signal runs the Python handler before it returns.
        signal.raise_signal(self.signal)


def _existing_run(
    cfg: Config, workdir: str, *, overwrite: bool, resumable: bool
) -> dict[str, Any] | None:
    """What to do with a workdir that may already hold a run (see :func:`fit`).

    Returns the summary of a run that is already complete (nothing to train), else None:
    the workdir holds no run (or it was moved aside), or its checkpoints will be resumed.
    Raises ConfigError when the run can neither be continued nor was asked to be replaced.
    """
    found = run_files(workdir)
    if not found:
        return None
    if overwrite:
        if jax.process_count() > 1:
            raise ConfigError(
                f"--overwrite: not with several processes; move the run in {workdir} aside "
                "yourself, then start every process again"
            )
        moved = move_run_aside(workdir)
        _warn(f"--overwrite: moved the previous run in {workdir} aside to {moved}")
        return None
    ways_out = (
        "use a new --workdir, or add --overwrite to move the old run aside into "
        f"{os.path.join(workdir, 'replaced-<time>')}/ and start afresh"
    )
    if checkpoint.has_checkpoints(os.path.join(workdir, "checkpoints")):
        if resumable:
            return None  # resumed from its checkpoints; their meta is checked
        off = "checkpoint.enabled" if not cfg.checkpoint.enabled else "checkpoint.resume"
        raise ConfigError(
            f"--workdir: {workdir} already holds a run with checkpoints and {off}=false, so "
            f"it would be replaced, not continued; set {off}=true to continue it, or "
            + ways_out
        )
    saved = saved_config_path(workdir)
    if saved is None:
        raise ConfigError(
            f"--workdir: {workdir} holds files of a run ({', '.join(found)}) but no "
            f"{RESOLVED_CONFIG} to tell which; " + ways_out
        )
    old = load_config(saved)
    old = dataclasses.replace(old, data=absolute_paths(old.data))
    _refuse_changes(trajectory_config(old), cfg, f"the run in {workdir}")
    summary = _finished_summary(workdir, cfg.train.steps, cfg)
    if summary is not None:
        _warn(
            f"the run in {workdir} is already complete (step {cfg.train.steps}); nothing to "
            "train"
        )
        return summary
    if os.path.isfile(os.path.join(workdir, SUMMARY_FILE)):
        raise ConfigError(
            f"train.steps: the run in {workdir} finished at another step count and has no "
            "checkpoint to continue from (checkpoint.enabled was false); " + ways_out
        )
    _warn(
        f"the run in {workdir} stopped before any checkpoint was saved; training it again "
        "from step 0 (same config)"
    )
    return None


@dataclasses.dataclass
class _Setup:
    """What every seed of a run shares: data, tasks, model, optimizer and placement."""

    cfg: Config
    suite: Data
    tasks: tuple[TaskSpec, ...]
    strategy: Any
    buckets: tuple[int, ...]
    placement: Placement
    model: Any
    optimizer: Any
    schedule: Any
    population: bool
    data_sha: str | None = None  # the fingerprint of fit(data=...)'s data
    population_mode: str | None = None  # vmap or map, once the step is built

    def stream(self, seed: int, step: int) -> Iterator[dict[str, Any]]:
        """Seed ``seed``'s training batches from step ``step`` on."""
        return train_batches(
            self.suite.splits["train"],
            self.tasks,
            batch_size=self.cfg.train.batch_size,
            buckets=self.buckets,
            seed=seed,
            start_step=step,
        )

    def evaluate(self, eval_fn: Any, state: Any) -> dict[str, dict[str, Any]]:
        """Every eval split of one seed's ``state``."""
        if self.population:  # one seed's slice of the stacked state, placed for evaluation
            state = self.placement.state(state)
        return _evaluate_splits(
            self.cfg, self.suite, self.tasks, self.buckets, eval_fn, state, self.placement
        )


@dataclasses.dataclass
class _Member:
    """One seed of a run: its own config (``train.seed``; ``train.num_seeds`` 1), workdir,
    state and outputs. An ordinary run has one; a population run (``train.num_seeds > 1``)
    has one per seed, each in ``<workdir>/seed<seed>``."""

    cfg: Config
    workdir: str
    logdir: str
    label: str
    state: Any = None
    batches: Iterator[dict[str, Any]] | None = None
    start: int = 0
    resumed: bool = False
    writer: MetricsWriter | None = None
    ckpts: checkpoint.RunCheckpoints | None = None
    evals: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)
    early: EarlyStop | None = None

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")


def _members(cfg: Config, workdir: str) -> list[_Member]:
    rank = jax.process_index()
    count = cfg.train.num_seeds
    members = []
    for i in range(count):
        seed = cfg.train.seed + i
        own = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, seed=seed, num_seeds=1)
        )
        where = workdir if count == 1 else os.path.join(workdir, f"seed{seed}")
        logdir = where if rank == 0 else os.path.join(where, f"process-{rank}")
        members.append(_Member(own, where, logdir, f"seed {seed}"))
    return members


def fit(
    config: Config | None = None,
    workdir: str | os.PathLike | None = None,
    *,
    verbose: bool = True,
    overwrite: bool = False,
    hooks: Sequence[Hook] = (),
    data: Data | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; returns the summary (also written to summary.json).

    A workdir that already holds a run (any file of :data:`mtlrnn.training.workdir.RUN_FILES`) is
    only ever continued or refused: with checkpoints it resumes (below); without them, a
    run with the same trajectory config that completed is reported complete, one that
    stopped before its first checkpoint is trained again from step 0, and anything else
    (another config, a longer run without checkpoints, ``checkpoint.enabled=false`` or
    ``checkpoint.resume=false`` over checkpoints) raises ConfigError naming the key.
    ``overwrite=True`` (``mtlrnn train --overwrite``) first moves the run's own files into
    ``<workdir>/replaced-<time>/`` (nothing is deleted; other files stay). Files in the
    workdir that the run does not own (e.g. the user's ``config.yaml``) are never written.

    Checkpoints (``checkpoint.*``, layout in :mod:`mtlrnn.training.checkpoint`): the state is saved
    every ``checkpoint.every`` steps and at the end, the last ``checkpoint.keep`` are kept,
    and with ``checkpoint.best_metric`` the best one by that metric under checkpoints/best.
    Asynchronous saves are finished before fit returns, whatever the way out.

    Resume: a workdir with checkpoints continues from its latest good checkpoint (with
    ``checkpoint.resume``; else it is refused). The config may differ from the run's only
    in :data:`RESUMABLE_KEYS` (ConfigError otherwise, naming the key); the data stream
    restarts at the checkpoint's step and metrics.jsonl keeps the records up to it, so a
    resumed run ends with the same parameters as an uninterrupted one. A damaged or
    unfinished latest checkpoint is moved aside (``checkpoints/corrupt-<step>-<time>``) with
    a warning and the previous good one is used; when finished checkpoints exist but none
    restores, fit raises ConfigError and moves nothing. Only unfinished saves (a kill during
    the first save) mean a fresh start, which then loses nothing. A run whose last
    checkpoint is at ``train.steps`` and whose summary.json describes it is complete: fit
    says so and returns that summary.

    Population (``train.num_seeds = S > 1``): seeds ``train.seed .. train.seed + S - 1``
    are trained together, their states stacked and one jitted step over them
    (``train.population_mode``: vmap or map; each step takes one batch per seed, padded in
    time to the longest). Seed ``s`` is an
    ordinary run in ``<workdir>/seed<s>`` (its resolved config has ``train.seed = s`` and
    ``train.num_seeds = 1``, so ``mtlrnn eval``/``predict`` and a resume by itself work on
    it), equal to a separate run of that seed up to float rounding; ``<workdir>/
    population.json`` lists them. Resuming continues every seed from the latest step at
    which all have a checkpoint. fit then returns ``{"seeds": {seed: summary}, "workdir":
    ..., "throughput": ...}``. One device (``parallel.mode`` none), or a mesh over the
    seeds (``mesh``; ``S`` divisible by the device count).

    Signals: SIGTERM or SIGINT during training finishes the current step, saves a
    checkpoint, waits for pending saves, prints one line and returns
    ``{"interrupted": True, "signal": name, "step": n, "workdir": dir}`` (no evaluation, no
    summary.json). A second signal raises KeyboardInterrupt. Handlers are installed only in
    the main thread and the previous ones are restored when fit returns.

    Testing hooks (environment variables, for deterministic fault tests; not for use in
    runs): ``MTLRNN_FAULT_SIGNAL_AT_STEP=N`` with ``MTLRNN_FAULT_SIGNAL=KILL|TERM|INT``
    (default TERM) sends that signal to this process right after step ``N`` completes and
    after its checkpoint save, if any, was issued; saves issued at earlier steps are waited
    for first, a save issued at step ``N`` is left in flight.

    Args:
      config: the experiment (default: :func:`mtlrnn.config.default_config`).
      workdir: output directory (default: ``runs/synthetic-<timestamp>``).
      verbose: print the description and progress (stderr) and the result table (stdout).
      overwrite: move a run already in ``workdir`` aside instead of continuing it.
      hooks: the user's :class:`mtlrnn.training.loop.Hook` objects, called after the run's
        own (metrics log, evaluation, checkpoints) at each step; e.g. a logger of your own, or
        one that calls ``loop.request_stop(reason)``. In a population run they see the whole
        population (wrap one in :class:`mtlrnn.training.hooks.PerSeed` for one seed's view).
      data: train on this :class:`mtlrnn.data.sources.Data` (in memory) instead of ``config.data``.
        Its fingerprint (:func:`mtlrnn.data.sources.data_sha256`) goes into the checkpoints and
        ``summary.json`` (``run.data_sha256``): the run resumes, or is reported complete, only
        with the same data. ``mtlrnn eval`` and ``predict`` read the config's data, so
        evaluate such a run with :func:`evaluate` ``(workdir, data=...)``.
    """
    if verbose:
        configure_logging(force=False)
    cfg = config or default_config()
    cfg = dataclasses.replace(cfg, data=absolute_paths(cfg.data))
    workdir = os.fspath(workdir) if workdir is not None else _default_workdir(cfg.data.source)
    # Multi-host: every process trains and checkpoints into the shared checkpoints/; only
    # process 0 writes the workdir's files, the others keep theirs under process-<id>/.
    initialize_distributed(cfg.parallel)
    data_sha = data_sha256(data) if data is not None else None
    members = _members(cfg, workdir)
    resumable = cfg.checkpoint.enabled and cfg.checkpoint.resume
    done = _existing_runs(cfg, workdir, members, overwrite=overwrite, resumable=resumable)
    if done is not None:
        return _complete(workdir, members, done, data_sha)
    wall0 = time.perf_counter()
    # Everything that fails on user input, before compiling.
    setup = _setup(cfg, len(members) > 1, data, data_sha)
    fault = _Fault.from_env()
    if resumable:
        for m in members:
            meta = checkpoint.read_latest_meta(m.ckpt_dir)
            if meta is not None:
                _check_resumable(meta, m.cfg, m.workdir, data_sha)  # before building anything
    complete = _start_members(setup, members, resumable)
    if complete is not None:
        return _complete(workdir, members, complete, data_sha)
    _write_run_files(setup, members, workdir, verbose=verbose)
    step_jit, state = _compile(setup, members)
    eval_jit = setup.placement.compile_eval(make_eval_step(setup.model))
    _open_logs(cfg, members)
    stop = _StopRequest()
    bar: Progress | None = None
    try:
        stop.install()
        _open_checkpoints(setup, members)
        if verbose and cfg.logging.progress:
            bar = Progress(cfg.train.steps, initial=members[0].start)
        hook_list = _run_hooks(
            setup,
            members,
            bar,
            stop,
            fault,
            eval_jit,
            workdir=workdir if len(members) > 1 else members[0].logdir,
            user_hooks=hooks,
        )
        loop = _make_loop(setup, members, step_jit, state, hook_list, bar)
        ended = _train(loop, members, cfg.checkpoint.enabled)
        if bar is not None:
            bar.close()
        if ended not in ("completed", "early_stop"):
            return _interrupted(ended, loop.step, workdir, cfg.checkpoint.enabled)
        _say_early_stop(ended, loop, members)
        summaries = _finish_all(setup, members, loop, eval_jit, wall0)
        result = _result(workdir, members, summaries)
        _write_population(result, workdir, members)
    finally:
        _close(stop, bar, members)
    if verbose:
        _print_results(setup, members, summaries, workdir)
    return result


def _existing_runs(
    cfg: Config, workdir: str, members: list[_Member], *, overwrite: bool, resumable: bool
) -> list[dict[str, Any]] | None:
    """Every member's summary when all are complete (nothing to train), else None; refuses
    a population over an ordinary run's workdir (ConfigError naming train.num_seeds)."""
    if len(members) > 1 and any(name != POPULATION_FILE for name in run_files(workdir)):
        raise ConfigError(
            f"train.num_seeds: {workdir} holds an ordinary run ({', '.join(run_files(workdir))}); "
            "a population writes its seeds into <workdir>/seed<seed>: use another --workdir"
        )
    done = [
        _existing_run(m.cfg, m.workdir, overwrite=overwrite, resumable=resumable)
        for m in members
    ]
    return done if all(summary is not None for summary in done) else None


def _write_run_files(
    setup: _Setup, members: list[_Member], workdir: str, *, verbose: bool
) -> None:
    """Each member's resolved config (and vocabularies of text data); the description."""
    for m in members:
        os.makedirs(m.logdir, exist_ok=True)
        dump_yaml(m.cfg, os.path.join(m.logdir, RESOLVED_CONFIG))
        if setup.suite.text is not None:
            write_text_atomic(
                os.path.join(m.logdir, VOCAB_FILE),
                json.dumps(setup.suite.text.vocab_dict(), ensure_ascii=False),
            )
    if verbose:
        _info(setup.suite.description)
        if len(members) > 1:
            _info(f"population: {len(members)} seeds in one step -> {workdir}/seed<seed>")


def _open_logs(cfg: Config, members: list[_Member]) -> None:
    """Each member's metrics writer, with the kept history up to its start replayed."""
    for m in members:
        kept = _kept_history(m.logdir, m.start, final=m.start == cfg.train.steps)
        # One evaluation per step (an early-stopped run evaluated its last step twice).
        m.evals = sorted({int(r["step"]): r["eval"] for r in kept if "eval" in r}.items())
        m.writer = MetricsWriter(m.logdir, tensorboard=cfg.logging.tensorboard)
        _replay_history(m.writer, kept)


def _open_checkpoints(setup: _Setup, members: list[_Member]) -> None:
    """Each member's checkpoint manager (latest and best), when checkpoints are on."""
    cfg = setup.cfg
    if not cfg.checkpoint.enabled:
        return
    for m in members:
        m.ckpts = checkpoint.RunCheckpoints(
            m.ckpt_dir,
            keep=cfg.checkpoint.keep,
            async_save=cfg.checkpoint.async_save,
            meta=_run_meta(m.cfg, setup.data_sha),
            best_metric=cfg.checkpoint.best_metric,
            best_mode=cfg.checkpoint.best_mode,
            warn=_warn,
        )


def _make_loop(
    setup: _Setup,
    members: list[_Member],
    step_jit: Any,
    state: Any,
    hooks: list[Hook],
    bar: Progress | None,
) -> Loop:
    """The training loop over the members' batches (one stream, or one per seed)."""
    cfg = setup.cfg
    population = len(members) > 1
    return Loop(
        step_jit,
        state,
        _population_batches(setup, members) if population else members[0].batches,
        place=setup.placement.batch,
        device_metrics=setup.placement.device_metrics,
        task_names=[t.name for t in setup.tasks],
        start=members[0].start,
        total=cfg.train.steps,
        log_every=cfg.train.log_every,
        on_nonfinite=cfg.train.on_nonfinite,
        hooks=hooks,
        on_compile=_compile_notice(bar),
        population=[m.label for m in members] if population else (),
        prefetch=cfg.train.prefetch,
        flops=_flops_counter(setup, step_jit),
    )


def _train(loop: Loop, members: list[_Member], saving: bool) -> str:
    """Run the loop to its end; pending saves are finished before returning or raising."""
    try:
        ended = loop.run()
    except NonFiniteError as e:
        _wait(members)
        saved = "; the last good state is saved" if saving else ""
        raise NonFiniteError(
            f"{e}{saved} (set train.on_nonfinite=skip to skip such steps)"
        ) from None
    _wait(members)
    return ended


def _interrupted(ended: str, step: int, workdir: str, saving: bool) -> dict[str, Any]:
    """The one line and the result of a run stopped by a signal."""
    saved = (
        "checkpoint saved; rerun the same command to resume"
        if saving
        else "checkpoints are disabled (checkpoint.enabled=false), nothing saved"
    )
    _info(f"stopped by {ended} at step {step}; {saved}")
    return {"interrupted": True, "signal": ended, "step": step, "workdir": workdir}


def _say_early_stop(ended: str, loop: Loop, members: list[_Member]) -> None:
    early = members[0].early
    if ended == "early_stop" and early is not None:
        _info(
            f"early stop at step {loop.step}: {early.metric} has not improved on "
            f"{early.best} (step {early.best_step}) for {early.patience} evaluations"
        )


def _finish_all(
    setup: _Setup, members: list[_Member], loop: Loop, eval_jit: Any, wall0: float
) -> list[dict[str, Any]]:
    """Each member's final evaluation, checkpoint and summary."""
    population = len(members) > 1
    return [
        _finish(setup, m, SeedView(loop, i) if population else loop, eval_jit, wall0, len(members))
        for i, m in enumerate(members)
    ]


def _write_population(result: dict[str, Any], workdir: str, members: list[_Member]) -> None:
    if len(members) > 1 and jax.process_index() == 0:
        write_text_atomic(
            os.path.join(workdir, POPULATION_FILE),
            json.dumps(json_safe(result), indent=2, sort_keys=True, allow_nan=False),
        )


def _close(stop: _StopRequest, bar: Progress | None, members: list[_Member]) -> None:
    """Whatever the way out: restore signal handlers, finish pending asynchronous saves and
    close the logs."""
    stop.restore()
    if bar is not None:
        bar.close()
    for m in members:
        if m.ckpts is not None:
            m.ckpts.close()
        if m.writer is not None:
            m.writer.close()


def _print_results(
    setup: _Setup, members: list[_Member], summaries: list[dict[str, Any]], workdir: str
) -> None:
    """The result tables to stdout (``mtlrnn train > log`` keeps them); notices to stderr."""
    population = len(members) > 1
    for m, summary in zip(members, summaries, strict=True):
        head = f"{m.label} ({m.workdir}):\n" if population else ""
        print(head + _report(summary, setup.tasks), flush=True)
    _info(f"workdir: {workdir}")


def _setup(
    cfg: Config, population: bool, data: Data | None = None, data_sha: str | None = None
) -> _Setup:
    """Check the config against the data (``data``, else the config's) and build what every
    seed shares (no compilation: everything that can fail on user input fails here)."""
    try:
        compile_cache.enable(cfg.train.compile_cache)
    except OSError as e:
        raise ConfigError(
            f"train.compile_cache: cannot use {cfg.train.compile_cache!r} ({e.strerror}); "
            "give a writable directory, or off"
        ) from None
    suite = data if data is not None else load_data(cfg.data)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    strategy = build_strategy(cfg.weighting, tasks)
    if cfg.weighting.chunk_size and len(tasks) % cfg.weighting.chunk_size:
        raise ConfigError(
            f"weighting.chunk_size: must divide the number of tasks ({len(tasks)}); "
            f"got {cfg.weighting.chunk_size}"
        )
    for split in cfg.train.eval_splits:
        if split not in suite.splits:
            raise ConfigError(
                f"train.eval_splits: unknown split {split!r}; the data has "
                f"{', '.join(suite.splits)}"
            )
    _check_best_metric(cfg, tasks)
    for message in check_labels(suite, tasks, ("train", *cfg.train.eval_splits)):
        _warn(message)
    buckets = resolve_buckets(suite, cfg.data.buckets, ("train", *cfg.train.eval_splits))
    sizes = () if population else (cfg.train.batch_size, cfg.train.eval_batch_size)
    placement = Placement(cfg.parallel.mode, sizes, fsdp=cfg.parallel.fsdp)
    if population:
        _check_population(cfg, placement)
    optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    return _Setup(
        cfg=cfg,
        suite=suite,
        tasks=tasks,
        strategy=strategy,
        buckets=buckets,
        placement=placement,
        model=model_for(cfg, tasks, suite),
        optimizer=optimizer,
        schedule=schedule,
        population=population,
        data_sha=data_sha,
    )


def _check_population(cfg: Config, placement: Placement) -> None:
    where = f"train.num_seeds: {cfg.train.num_seeds} seeds in one step"
    if placement.mode == "pmap" or placement.fsdp or jax.process_count() > 1:
        raise ConfigError(
            f"{where} run on one device (parallel.mode none) or spread over the devices of "
            "one process (parallel.mode mesh, without fsdp); for pmap, fsdp or several "
            "processes train each seed as its own run (train.num_seeds=1)"
        )
    if placement.mode == "mesh" and cfg.train.num_seeds % placement.num_devices:
        raise ConfigError(
            f"{where} are spread over the {placement.num_devices} devices of parallel.mode "
            "mesh, so they must divide by it; use a multiple, or parallel.mode none"
        )


def _fresh_and_restored(
    setup: _Setup, m: _Member, resumable: bool
) -> tuple[Any, tuple[Any, Iterator[Any]], tuple[Any, dict[str, Any]] | None]:
    """A member's fresh state, its stream from step 0 (first batch taken, needed to build
    the state) and its latest good checkpoint ``(state, meta)`` when it resumes."""
    stream = setup.stream(m.seed, 0)
    first = next(stream)
    state = create_train_state(setup.model, setup.optimizer, setup.strategy, first, seed=m.seed)
    leftovers = resumable and checkpoint.has_checkpoints(m.ckpt_dir)
    got = None
    if leftovers:
        # Several processes restore straight onto the placed (e.g. fsdp-sharded) state.
        target = setup.placement.state(state) if jax.process_count() > 1 else state
        got = _restore_for_resume(m.ckpt_dir, target, m.cfg, m.workdir, setup.data_sha)
        if got is None:
            _warn(f"no finished checkpoint in {m.ckpt_dir}; starting the run from step 0")
    return state, (first, stream), got


def _start_members(
    setup: _Setup, members: list[_Member], resumable: bool
) -> list[dict[str, Any]] | None:
    """Each seed's initial state and batch stream, resumed where checkpoints allow; the
    summaries when every seed is already complete (nothing to train), else None.

    Seeds of a population resume at one step: the latest step at which every seed has a
    checkpoint (a kill during one checkpoint step's saves leaves some seeds ahead)."""
    cfg = setup.cfg
    fresh, firsts, found = [], [], []
    for m in members:
        state, first, got = _fresh_and_restored(setup, m, resumable)
        fresh.append(state)
        firsts.append(first)
        found.append(got)
    steps = [int(got[1]["step"]) if got is not None else 0 for got in found]
    start = min(steps)
    if max(steps) > cfg.train.steps:
        where = members[steps.index(max(steps))].workdir
        raise ConfigError(
            f"train.steps: the run in {where} is already at step {max(steps)} > "
            f"train.steps={cfg.train.steps}; train.steps can only grow on resume"
        )
    for m, got, step, state in zip(members, found, steps, fresh, strict=True):
        m.start, m.resumed, m.state = start, got is not None and start > 0, state
        if got is None or start == 0:
            continue
        if step == start:
            m.state = got[0]
            continue
        try:
            m.state = checkpoint.restore_step(m.ckpt_dir, state, start)[0]
        except (KeyError, RuntimeError) as e:
            raise ConfigError(
                f"train.num_seeds: {m.workdir} is at step {step} but another seed of the "
                f"run only at {start}, and {e}; resume the seeds one by one (train.seed=<s> "
                "train.num_seeds=1 --workdir <workdir>/seed<s>)"
            ) from None
        _warn(f"{m.workdir}: at step {step}; continuing from step {start} with the other seeds")
    if start > 0:
        done = [_finished_summary(m.logdir, start, cfg) for m in members]
        if all(summary is not None for summary in done):
            where = members[0].workdir if len(members) == 1 else os.path.dirname(members[0].workdir)
            _warn(
                f"the run in {where} is already complete (step {start}); nothing to train "
                f"(mtlrnn eval --workdir {members[0].workdir} evaluates it again)"
            )
            return done
    for m, (first, stream) in zip(members, firsts, strict=True):
        if start > 0:
            m.batches = setup.stream(m.seed, start)
            if os.path.isfile(os.path.join(m.logdir, SUMMARY_FILE)):
                os.remove(os.path.join(m.logdir, SUMMARY_FILE))  # it described a shorter run
        else:
            m.batches = itertools.chain([first], stream)
    if start > 0:
        _info(f"resumed from step {start} ({os.path.join(members[0].ckpt_dir, str(start))})")
    return None


def _compile(setup: _Setup, members: list[_Member]) -> tuple[Any, Any]:
    """The step to run (jitted; over a population's seeds by ``train.population_mode``) and
    the placed state (a restored state is placed like a fresh one, so the step compiles
    identically)."""
    placement = setup.placement
    step_fn = make_train_step(
        setup.model,
        setup.optimizer,
        setup.strategy,
        setup.schedule,
        grad_mode=setup.cfg.weighting.mode,
        chunk_size=setup.cfg.weighting.chunk_size,
        accumulate=setup.cfg.train.accumulate,
        axis_name=placement.axis_name,
    )
    if not setup.population:
        state = placement.state(members[0].state)
        return placement.compile_step(step_fn, state), state
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(m.state for m in members))
    if placement.mode == "mesh":  # the seeds spread over the devices
        state = jax.device_put(stacked, placement.batch_sharding())
    else:
        state = placement.state(stacked)
    # A mesh holds each seed on its own device(s): the seeds must run side by side (vmap).
    mode = "vmap" if placement.mode == "mesh" else setup.cfg.train.population_mode
    if mode == "auto":
        mode = "map" if jax.default_backend() == "cpu" else "vmap"
    setup.population_mode = mode
    return jax.jit(population_step(step_fn, mode), donate_argnums=0), state


def _population_batches(setup: _Setup, members: list[_Member]) -> Iterator[dict[str, Any]]:
    """One batch per seed per step, stacked ``[S, B, L, ...]`` (padded to the longest)."""
    streams = [m.batches for m in members]
    while True:
        batches = [next(stream, None) for stream in streams]
        if any(b is None for b in batches):
            return
        yield stack_batches(batches, setup.tasks)


def _flops_counter(setup: _Setup, step_jit: Any) -> Callable[[Any, Any], float]:
    """Matmul FLOPs of one step of the whole run (every device, every seed)."""
    per_device = setup.placement.mode == "pmap"  # a pmapped jaxpr is one device's program
    factor = setup.placement.num_devices if per_device else 1
    return lambda state, batch: factor * matmul_flops(step_jit, state, batch)


def _flop_rates(setup: _Setup, loop: Any) -> dict[str, Any]:
    """Matmul FLOPs per step, achieved FLOP/s and MFU against the devices' peak (None on
    devices without a known peak, e.g. CPUs); see :mod:`mtlrnn.training.flops`."""
    rate = loop.flop_per_s
    steps = sum(w[0] for w in loop.windows)
    peak = peak_flops(jax.devices()[0].device_kind, setup.cfg.model.compute_dtype)
    peak = peak * setup.placement.num_devices if peak is not None else None
    return {
        "matmul_flops_per_step": sum(loop.window_flops) / steps if steps else None,
        "matmul_flop_per_s": rate,
        "peak_flop_per_s": peak,
        "mfu": rate / peak if rate is not None and peak else None,
    }


def _wait(members: Sequence[_Member]) -> None:
    for m in members:
        if m.ckpts is not None:
            m.ckpts.wait()


def _finish(
    setup: _Setup, m: _Member, loop: Any, eval_jit: Any, wall0: float, population: int
) -> dict[str, Any]:
    """One seed's final evaluation, best checkpoint and summary.json (``loop``: the loop,
    or the seed's :class:`SeedView` of a population loop)."""
    cfg, tasks = m.cfg, setup.tasks
    state = loop.state
    steps = loop.step  # train.steps, or where early stopping ended the run
    evals = setup.evaluate(eval_jit, state)
    flat = _flat_eval(evals)
    m.writer.write({"step": steps, "eval": flat})
    _save_if_best(m.ckpts, cfg, flat, setup.placement.unreplicate(state), steps)
    if m.ckpts is not None:
        m.ckpts.wait()  # summary.json only ever describes checkpoints on disk
    seconds = loop.seconds
    summary = {
        "eval": {split: res["metrics"] for split, res in evals.items()},
        "eval_loss": {split: res["loss"] for split, res in evals.items()},
        "bayes": {s: setup.suite.bayes.get(s, {}) for s in cfg.train.eval_splits},
        # Over the steps this process ran (none when only the final evaluation was left):
        # wall time between log steps, compilation and hooks excluded. In a population the
        # seconds are the population's (one step trains every seed) and the tokens this seed's.
        "throughput": {
            "tokens_per_second": loop.tokens / seconds if seconds else math.nan,
            "step_time_ms_median": median_step_ms(loop),
            "compile_s": loop.compile_s,
            # Of the timed seconds, waiting for the next batch (stream and placement).
            "data_wait_s": loop.data_seconds,
            "compiled_shapes": len(loop.compiled),
            **_flop_rates(setup, loop),
        },
        "params_sha256": params_sha256(setup.placement.host(state.params)),
        "run": {
            "steps": steps,
            "stopped_early": _early_record(m, steps),
            "resumed_from_step": m.start if m.resumed else None,
            "tasks": [t.name for t in tasks],
            "weighting": cfg.weighting.name,
            "seed": m.seed,
            "population": population,
            "population_mode": setup.population_mode,
            "data_sha256": setup.data_sha,
            "wall_s": time.perf_counter() - wall0,
            "devices": setup.placement.num_devices,
            "processes": jax.process_count(),
            "parallel": setup.placement.mode,
            "skipped_steps": loop.nonfinite,
            "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "jax_version": jax.__version__,
        },
    }
    write_text_atomic(
        os.path.join(m.logdir, SUMMARY_FILE),
        json.dumps(json_safe(summary), indent=2, sort_keys=True, allow_nan=False),
    )
    if cfg.logging.plots:
        plot_history(m.writer.history, os.path.join(m.logdir, "plots"))
    return summary


def _early_record(m: _Member, steps: int) -> dict[str, Any] | None:
    """Where and why early stopping ended the run (None: it ran to train.steps)."""
    early = m.early
    if early is None or steps >= m.cfg.train.steps:
        return None
    return {
        "step": steps,
        "patience": early.patience,
        "metric": early.metric,
        "best": early.best,
        "best_step": early.best_step,
    }


def _complete(
    workdir: str,
    members: Sequence[_Member],
    summaries: Sequence[dict[str, Any]],
    data_sha: str | None,
) -> dict[str, Any]:
    """What fit returns for a run that is already complete, after checking its data."""
    for m, summary in zip(members, summaries, strict=True):
        _check_same_data((summary.get("run") or {}).get("data_sha256"), data_sha, m.workdir)
    return _result(workdir, members, summaries)


def _result(
    workdir: str, members: Sequence[_Member], summaries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """What fit returns: the summary of an ordinary run; for a population, every seed's."""
    if len(members) == 1:
        return summaries[0]
    total = sum(s.get("throughput", {}).get("tokens_per_second", math.nan) for s in summaries)
    return {
        "workdir": workdir,
        "seeds": {str(m.seed): s for m, s in zip(members, summaries, strict=True)},
        "workdirs": {str(m.seed): m.workdir for m in members},
        "throughput": {
            "tokens_per_second": total,
            "step_time_ms_median": summaries[0].get("throughput", {}).get(
                "step_time_ms_median", math.nan
            ),
        },
    }


def _save_if_best(
    ckpts: checkpoint.RunCheckpoints | None,
    cfg: Config,
    flat: Mapping[str, float],
    state: TrainState,
    step: int,
) -> None:
    if ckpts is not None and cfg.checkpoint.best_metric:
        ckpts.save_best(state, flat.get(cfg.checkpoint.best_metric), step=step)


def _run_hooks(
    setup: _Setup,
    members: Sequence[_Member],
    bar: Progress | None,
    stop: _StopRequest,
    fault: _Fault | None,
    eval_jit: Any,
    *,
    workdir: str,
    user_hooks: Sequence[Hook],
) -> list[Hook]:
    """The hooks of a run, in order: each seed's own (metrics log, evaluation, checkpoints),
    the profiler and fault hooks, the user's, then the stop on a signal (so a user hook sees
    every step that ran)."""
    hooks: list[Hook] = []
    for i, m in enumerate(members):
        own = _member_hooks(setup, m, bar if i == 0 else None, eval_jit)
        hooks += [PerSeed(h, i) for h in own] if setup.population else own
    cfg = setup.cfg
    if cfg.logging.profile_steps:
        start, stop_step = cfg.logging.profile_steps
        hooks.append(Profile(start, stop_step, os.path.join(workdir, PROFILE_DIR)))
    if fault is not None:
        hooks.append(_FaultHook(fault, [m.ckpts for m in members if m.ckpts is not None]))
    hooks.extend(user_hooks)
    hooks.append(StopOnSignal(lambda: stop.signal))
    return hooks


def _member_hooks(
    setup: _Setup, m: _Member, bar: Progress | None, eval_jit: Any
) -> list[Hook]:
    cfg, placement = setup.cfg, setup.placement

    def warn(message: str) -> None:
        _warn(f"{m.label}: {message}" if setup.population else message)

    evaluate = Evaluate(
        cfg.train.eval_every,
        lambda st: _flat_eval(setup.evaluate(eval_jit, st)),
        m.writer,
        after=lambda st, flat, step: _save_if_best(
            m.ckpts, cfg, flat, placement.unreplicate(st), step
        ),
    )
    hooks: list[Hook] = [MetricsLog(m.writer, bar, warn=warn), evaluate]
    if cfg.train.patience:
        m.early = EarlyStop(
            evaluate,
            cfg.checkpoint.best_metric,
            cfg.checkpoint.best_mode,
            cfg.train.patience,
            history=m.evals,
        )
        hooks.append(m.early)
    if m.ckpts is not None:
        ckpts = m.ckpts
        hooks.append(
            Checkpoints(
                lambda st, step: ckpts.save(placement.unreplicate(st), step=step),
                cfg.checkpoint.every,
            )
        )
    return hooks


class _FaultHook(Hook):
    def __init__(self, fault: _Fault, ckpts: Sequence[checkpoint.RunCheckpoints]) -> None:
        self.fault, self.ckpts = fault, ckpts

    def on_step(self, loop: Loop) -> None:
        if loop.step == self.fault.step:
            self.fault.fire(self.ckpts)


def _compile_notice(bar: Progress | None) -> Callable[[tuple[int, ...], float | None], None]:
    def notice(shape: tuple[int, ...], seconds: float | None) -> None:
        if bar is None:
            return
        if seconds is None:
            bar.compiling(shape)
        else:
            bar.compiled(seconds)

    return notice


def _evaluate_splits(
    cfg: Config,
    suite: Data,
    tasks: tuple[TaskSpec, ...],
    buckets: tuple[int, ...],
    eval_fn: Any,
    state: TrainState,
    placement: Placement,
) -> dict[str, dict[str, Any]]:
    out = {}
    for split in cfg.train.eval_splits:
        batches = eval_batches(
            suite.splits[split], tasks, batch_size=cfg.train.eval_batch_size, buckets=buckets
        )
        params = placement.unreplicate(state.params)
        metrics, loss = run_eval(eval_fn, params, tasks, batches, placement)
        out[split] = {"metrics": metrics, "loss": loss}
    return out


def _flat_eval(evals: Mapping[str, Any]) -> dict[str, float]:
    return {
        f"{split}/{task}/{metric}": value
        for split, res in evals.items()
        for task, values in res["metrics"].items()
        for metric, value in values.items()
        if metric != "count"
    }


def _report(summary: Mapping[str, Any], tasks: tuple[TaskSpec, ...]) -> str:
    table = result_table(
        summary["eval"], summary.get("bayes"), metrics={t.name: t.metrics for t in tasks}
    )
    tp = summary["throughput"]
    return (
        f"{table}\n"
        f"throughput: {tp['tokens_per_second']:.0f} tokens/s, "
        f"step {tp['step_time_ms_median']:.1f} ms (median), compile {tp['compile_s']:.1f} s, "
        f"params_sha256 {summary['params_sha256'][:16]}"
    )


def example_batch(data: Data) -> dict[str, Any]:
    """A one-row batch with the input layout of ``data``, for initialising a model."""
    ds = data.splits["train"]
    first = np.asarray(ds.inputs[0])
    batch = {
        "inputs": jnp.zeros((1, 1, *first.shape[1:]), first.dtype),
        "lengths": jnp.ones((1,), jnp.int32),
    }
    if ds.chars is not None:
        batch["chars"] = jnp.zeros((1, 1, np.asarray(ds.chars[0]).shape[1]), jnp.int32)
    return batch


CHECKPOINT_CHOICES = "latest, best or a step number"


def parse_checkpoint(which: str | int) -> str | int:
    """``latest``, ``best`` or a step (int); ConfigError naming ``--checkpoint`` otherwise."""
    if isinstance(which, int) and not isinstance(which, bool) and which >= 0:
        return which
    text = str(which).strip()
    if text in ("latest", "best"):
        return text
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--checkpoint: must be {CHECKPOINT_CHOICES}; got {which!r}")


def restore_state(
    workdir: str, cfg: Config, model: Any, data: Data, which: str | int = "latest"
) -> TrainState:
    """A checkpoint of the run in ``workdir`` (config ``cfg``, model ``model``): ``latest``
    (the newest good one; a damaged newer one is skipped with a warning, not moved), ``best``
    (checkpoints/best, kept with ``checkpoint.best_metric``) or a step number. Read-only."""
    which = parse_checkpoint(which)
    tasks = model.tasks
    strategy = build_strategy(cfg.weighting, tasks)
    optimizer, _ = make_optimizer(cfg.optimizer, cfg.train.steps)
    target = create_train_state(
        model, optimizer, strategy, example_batch(data), seed=cfg.train.seed
    )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if which == "best":
        ckpt_dir = os.path.join(ckpt_dir, checkpoint.BEST_DIR)
    try:
        if isinstance(which, int):
            return checkpoint.restore_step(ckpt_dir, target, which)[0]
        found = checkpoint.restore_latest_good(ckpt_dir, target, warn=_warn, move_bad=False)
    except KeyError as e:
        raise ConfigError(f"--checkpoint: {e.args[0]}") from None
    except RuntimeError as e:
        raise ConfigError(f"--workdir: {e}") from None
    if found is None:
        if which == "best":
            raise ConfigError(
                f"--checkpoint: best: {workdir} has no best checkpoint (a run keeps one "
                "with checkpoint.best_metric)"
            )
        raise ConfigError(f"--workdir: {workdir} has no checkpoint in checkpoints/ to restore")
    return found[0]


def load_trained(
    workdir: str | os.PathLike, data: Data, checkpoint: str | int = "latest"
) -> tuple[Any, Any]:
    """``(model, params)`` of a checkpoint of the run in ``workdir`` (``latest``, ``best`` or a
    step; see :func:`restore_state`), the model built for ``data`` (whose ``tasks`` are the
    run's resolved tasks and whose sizes are the run's vocabularies). Read-only: what a
    command that applies a trained run (``mtlrnn predict``) needs from the trainer."""
    workdir = os.fspath(workdir)
    cfg = load_run(workdir)
    model = model_for(cfg, data.tasks, data)
    return model, restore_state(workdir, cfg, model, data, checkpoint).params


def _latest_meta(workdir: str) -> dict[str, Any] | None:
    try:
        return checkpoint.read_latest_meta(os.path.join(workdir, "checkpoints"))
    except Exception:  # unreadable: restore_state says what is wrong
        return None


def load_run(workdir: str | os.PathLike) -> Config:
    """The config of the run in ``workdir`` (its resolved_config.yaml; config.yaml for a run
    written by mtlrnn 0.1.0)."""
    workdir = os.fspath(workdir)
    cfg_path = saved_config_path(workdir)
    if cfg_path is None:
        what = "no such directory" if not os.path.isdir(workdir) else f"no {RESOLVED_CONFIG}"
        raise ConfigError(f"--workdir: {workdir}: {what}; is it a mtlrnn run?")
    return load_config(cfg_path)


def evaluate(
    workdir: str | os.PathLike,
    *,
    verbose: bool = True,
    checkpoint: str | int = "latest",
    data: Data | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (``latest``, ``best`` or a step; see :func:`restore_state`) of
    the run in ``workdir`` on its eval splits (of ``data`` for a run trained with
    ``fit(data=...)``: the same data is required).

    Returns ``{"eval": {split: {task: {metric: value}}}, "step": int, "checkpoint": which}``.
    """
    workdir = os.fspath(workdir)
    which = parse_checkpoint(checkpoint)
    cfg = load_run(workdir)
    meta = _latest_meta(workdir)
    if meta is not None:
        trained_on = meta.get("data_sha256")
        if trained_on is not None and data is None:
            raise ConfigError(
                f"--workdir: the run in {workdir} was trained on data given to "
                "fit(data=...); evaluate it with mtlrnn.evaluate(workdir, data=...)"
            )
        _check_same_data(trained_on, None if data is None else data_sha256(data), workdir)
    suite = data if data is not None else load_data(cfg.data)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    buckets = resolve_buckets(suite, cfg.data.buckets, ("train", *cfg.train.eval_splits))
    placement = Placement(
        cfg.parallel.mode,
        (cfg.train.batch_size, cfg.train.eval_batch_size),
        fsdp=cfg.parallel.fsdp,
    )
    model = model_for(cfg, tasks, suite)
    state = restore_state(workdir, cfg, model, suite, which)
    evals = _evaluate_splits(
        cfg,
        suite,
        tasks,
        buckets,
        placement.compile_eval(make_eval_step(model)),
        placement.state(state),
        placement,
    )
    result = {
        "eval": {split: res["metrics"] for split, res in evals.items()},
        "eval_loss": {split: res["loss"] for split, res in evals.items()},
        "bayes": {s: suite.bayes.get(s, {}) for s in cfg.train.eval_splits},
        "step": int(state.step),
        "checkpoint": which,
    }
    if verbose:
        print(
            result_table(
                result["eval"], result["bayes"], metrics={t.name: t.metrics for t in tasks}
            ),
            flush=True,
        )
    return result
