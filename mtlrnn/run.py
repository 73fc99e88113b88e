"""The main job: build data, model and optimizer from a Config, train, evaluate, report.

``fit(config, workdir) -> summary`` is the whole ``mtlrnn train``; ``evaluate(workdir)`` is
``mtlrnn eval``. A workdir receives config.yaml (resolved), metrics.jsonl, summary.json,
checkpoints/ and plots/.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from mtlrnn import checkpoint
from mtlrnn.config import Config
from mtlrnn.config import ConfigError
from mtlrnn.config import default_config
from mtlrnn.config import dump_yaml
from mtlrnn.config import load_config
from mtlrnn.config import resolve_tasks
from mtlrnn.data.batching import bucket_lengths
from mtlrnn.data.batching import eval_batches
from mtlrnn.data.batching import train_batches
from mtlrnn.metrics import accumulate
from mtlrnn.metrics import finalize
from mtlrnn.reporting import MetricsWriter
from mtlrnn.reporting import json_safe
from mtlrnn.reporting import plot_history
from mtlrnn.reporting import result_table
from mtlrnn.sources import Data
from mtlrnn.sources import absolute_paths
from mtlrnn.sources import load_data
from mtlrnn.tasks import TaskSpec
from mtlrnn.train import TrainState
from mtlrnn.train import build_model
from mtlrnn.train import build_strategy
from mtlrnn.train import create_train_state
from mtlrnn.train import make_eval_step
from mtlrnn.train import make_optimizer
from mtlrnn.train import make_train_step
from mtlrnn.train import params_sha256


def load_suite(cfg: Config) -> Data:
    """The data of ``cfg.data`` (see :func:`mtlrnn.sources.load_data`)."""
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


class Placement:
    """Where arrays live: one device, or a ``data`` mesh axis over all devices.

    With a mesh the batch is sharded along its leading (batch) axis and the state is
    replicated; jit then computes every per-task loss over the global batch.
    """

    def __init__(self, mode: str, batch_sizes: tuple[int, ...]) -> None:
        devices = jax.devices()
        use_mesh = mode == "mesh" or (mode == "auto" and len(devices) > 1)
        self.mesh = Mesh(np.array(devices), ("data",)) if use_mesh else None
        self.num_devices = len(devices) if use_mesh else 1
        if use_mesh:
            keys = ("train.batch_size", "train.eval_batch_size")
            for key, size in zip(keys, batch_sizes, strict=True):
                if size % self.num_devices:
                    raise ConfigError(
                        f"{key}: must be divisible by the {self.num_devices} devices of the "
                        f"data-parallel mesh; got {size}"
                    )

    def batch(self, batch: Mapping[str, Any]) -> Any:
        """Move a host batch to the device(s)."""
        if self.mesh is None:
            return jax.device_put(batch)
        return jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec("data")))

    def state(self, state: TrainState) -> TrainState:
        """Move the state to the device(s), replicated over the mesh."""
        if self.mesh is None:
            return jax.device_put(state)
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))


def _default_workdir(source: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{source}-{stamp}")


VOCAB_FILE = "vocab.json"


def model_for(cfg: Config, tasks: tuple[TaskSpec, ...], data: Data) -> Any:
    """The :class:`~mtlrnn.model.MultiTaskRNN` of ``cfg.model`` sized for ``data``."""
    return build_model(
        cfg.model,
        tasks,
        vocab_size=data.vocab_size,
        num_features=data.num_features,
        char_vocab_size=data.char_vocab_size,
    )


def _check_workdir(workdir: str) -> None:
    ckpt = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        raise ConfigError(
            f"--workdir: {workdir} already holds a run with checkpoints; choose a new "
            "workdir (or delete it) to start a fresh run"
        )


def _task_dict(tasks: tuple[TaskSpec, ...], values: Any) -> dict[str, float]:
    values = np.asarray(values)
    return {t.name: float(values[i]) for i, t in enumerate(tasks)}


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
        losses, stats = eval_fn(params, placement.batch(batch))
        total = accumulate(total, stats)
        counts = _label_counts(tasks, batch)
        loss_sum += np.asarray(losses, np.float64) * counts
        loss_weight += counts
    if total is None:
        return {}, {}
    mean_loss = np.where(loss_weight > 0, loss_sum / np.maximum(loss_weight, 1), np.nan)
    return finalize(tasks, total), _task_dict(tasks, mean_loss)


def _label_counts(tasks: tuple[TaskSpec, ...], batch: Mapping[str, Any]) -> np.ndarray:
    lengths = np.asarray(batch["lengths"])
    steps = np.arange(np.asarray(batch["inputs"]).shape[1])[None, :] < lengths[:, None]
    out = []
    for t in tasks:
        m = batch.get("masks", {}).get(t.name)
        if t.level == "token":
            out.append(float(np.sum(steps * (1.0 if m is None else np.asarray(m)))))
        else:
            out.append(float(np.sum((lengths > 0) * (1.0 if m is None else np.asarray(m)))))
    return np.asarray(out)


def fit(
    config: Config | None = None,
    workdir: str | os.PathLike | None = None,
    *,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one run; returns the summary (also written to summary.json).

    Args:
      config: the experiment (default: :func:`mtlrnn.config.default_config`).
      workdir: output directory (default: ``runs/synthetic-<timestamp>``).
      verbose: print the description, progress bar and result table.
    """
    cfg = config or default_config()
    cfg = dataclasses.replace(cfg, data=absolute_paths(cfg.data))
    workdir = os.fspath(workdir) if workdir is not None else _default_workdir(cfg.data.source)
    _check_workdir(workdir)
    wall0 = time.perf_counter()

    # Everything that can fail on user input happens before any compilation.
    suite = load_data(cfg.data)
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
    buckets = resolve_buckets(suite, cfg.data.buckets, ("train", *cfg.train.eval_splits))
    placement = Placement(cfg.parallel.mode, (cfg.train.batch_size, cfg.train.eval_batch_size))

    os.makedirs(workdir, exist_ok=True)
    dump_yaml(cfg, os.path.join(workdir, "config.yaml"))
    if suite.text is not None:
        with open(os.path.join(workdir, VOCAB_FILE), "w", encoding="utf-8") as f:
            json.dump(suite.text.vocab_dict(), f, ensure_ascii=False)
    if verbose:
        print(suite.description, file=sys.stderr)

    model = model_for(cfg, tasks, suite)
    optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    stream = train_batches(
        suite.splits["train"],
        tasks,
        batch_size=cfg.train.batch_size,
        buckets=buckets,
        seed=cfg.train.seed,
    )
    first = next(stream)
    state = create_train_state(model, optimizer, strategy, first, seed=cfg.train.seed)
    state = placement.state(state)
    step_fn = make_train_step(
        model,
        optimizer,
        strategy,
        schedule,
        grad_mode=cfg.weighting.mode,
        chunk_size=cfg.weighting.chunk_size,
    )
    step_jit = jax.jit(step_fn, donate_argnums=0)
    eval_jit = jax.jit(make_eval_step(model))

    writer = MetricsWriter(workdir, tensorboard=cfg.logging.tensorboard)
    compiled: dict[tuple[int, ...], Any] = {}
    compile_s = 0.0
    step_times: list[float] = []
    timed_tokens = 0
    window: list[tuple[float, int]] = []
    evals: dict[str, Any] = {}

    bar = None
    if verbose and cfg.logging.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train.steps, desc="train", unit="step", file=sys.stderr)

    batch = first
    for step in range(cfg.train.steps):
        if step > 0:
            batch = next(stream)
        device_batch = placement.batch(batch)
        shape = tuple(np.shape(batch["inputs"]))
        if shape not in compiled:
            t0 = time.perf_counter()
            compiled[shape] = step_jit.lower(state, device_batch).compile()
            compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        state, metrics = compiled[shape](state, device_batch)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - t0
        tokens = int(metrics["tokens"])
        step_times.append(elapsed)
        timed_tokens += tokens
        window.append((elapsed, tokens))

        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            seconds = sum(w[0] for w in window)
            record = {
                "step": done,
                "loss": float(metrics["loss"]),
                "losses": _task_dict(tasks, metrics["losses"]),
                "weights": _task_dict(tasks, metrics["weights"]),
                "lr": float(metrics["lr"]),
                "grad_norm": float(metrics["grad_norm"]),
                "tokens_per_s": sum(w[1] for w in window) / max(seconds, 1e-9),
                "step_time_ms": 1e3 * statistics.median(w[0] for w in window),
            }
            writer.write(record)
            window = []
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if bar is not None:
            bar.update(1)
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.steps:
            evals = _evaluate_splits(cfg, suite, tasks, buckets, eval_jit, state, placement)
            writer.write({"step": done, "eval": _flat_eval(evals)})
    if bar is not None:
        bar.close()

    evals = _evaluate_splits(cfg, suite, tasks, buckets, eval_jit, state, placement)
    writer.write({"step": cfg.train.steps, "eval": _flat_eval(evals)})

    if cfg.checkpoint.enabled:
        mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep)
        checkpoint.save(mngr, state)
        mngr.wait_until_finished()
        mngr.close()

    median_ms = 1e3 * statistics.median(step_times)
    summary = {
        "eval": {split: res["metrics"] for split, res in evals.items()},
        "eval_loss": {split: res["loss"] for split, res in evals.items()},
        "bayes": {s: suite.bayes.get(s, {}) for s in cfg.train.eval_splits},
        "throughput": {
            "tokens_per_second": timed_tokens / max(sum(step_times), 1e-9),
            "step_time_ms_median": median_ms,
            "compile_s": compile_s,
            "compiled_shapes": len(compiled),
        },
        "params_sha256": params_sha256(jax.device_get(state.params)),
        "run": {
            "steps": cfg.train.steps,
            "tasks": [t.name for t in tasks],
            "weighting": cfg.weighting.name,
            "wall_s": time.perf_counter() - wall0,
            "devices": placement.num_devices,
            "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "jax_version": jax.__version__,
        },
    }
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(json_safe(summary), f, indent=2, sort_keys=True, allow_nan=False)
    if cfg.logging.plots:
        plot_history(writer.history, os.path.join(workdir, "plots"))
    writer.close()
    if verbose:
        print(_report(summary, tasks), file=sys.stderr)
        print(f"workdir: {workdir}", file=sys.stderr)
    return summary


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
        metrics, loss = run_eval(eval_fn, state.params, tasks, batches, placement)
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


def restore_state(workdir: str, cfg: Config, model: Any, data: Data) -> TrainState:
    """The latest checkpoint of the run in ``workdir`` (config ``cfg``, model ``model``)."""
    tasks = model.tasks
    strategy = build_strategy(cfg.weighting, tasks)
    optimizer, _ = make_optimizer(cfg.optimizer, cfg.train.steps)
    target = create_train_state(
        model, optimizer, strategy, example_batch(data), seed=cfg.train.seed
    )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ConfigError(f"--workdir: {workdir} has no checkpoints/ to restore")
    mngr = checkpoint.manager(ckpt_dir, keep=cfg.checkpoint.keep)
    try:
        return checkpoint.restore(mngr, target)
    except FileNotFoundError as e:
        raise ConfigError(f"--workdir: {e}") from None
    finally:
        mngr.close()


def load_run(workdir: str | os.PathLike) -> Config:
    """The config of the run in ``workdir`` (its config.yaml)."""
    workdir = os.fspath(workdir)
    cfg_path = os.path.join(workdir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"--workdir: {workdir} has no config.yaml; is it a mtlrnn run?")
    return load_config(cfg_path)


def evaluate(workdir: str | os.PathLike, *, verbose: bool = True) -> dict[str, Any]:
    """Evaluate the latest checkpoint of a finished run in ``workdir`` on its eval splits.

    Returns ``{"eval": {split: {task: {metric: value}}}, "step": int}``.
    """
    workdir = os.fspath(workdir)
    cfg_path = os.path.join(workdir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"--workdir: {workdir} has no config.yaml; is it a mtlrnn run?")
    cfg = load_config(cfg_path)
    suite = load_data(cfg.data)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    buckets = resolve_buckets(suite, cfg.data.buckets, ("train", *cfg.train.eval_splits))
    placement = Placement(cfg.parallel.mode, (cfg.train.batch_size, cfg.train.eval_batch_size))
    model = model_for(cfg, tasks, suite)
    state = restore_state(workdir, cfg, model, suite)
    evals = _evaluate_splits(
        cfg,
        suite,
        tasks,
        buckets,
        jax.jit(make_eval_step(model)),
        placement.state(state),
        placement,
    )
    result = {
        "eval": {split: res["metrics"] for split, res in evals.items()},
        "eval_loss": {split: res["loss"] for split, res in evals.items()},
        "bayes": {s: suite.bayes.get(s, {}) for s in cfg.train.eval_splits},
        "step": int(state.step),
    }
    if verbose:
        print(
            result_table(
                result["eval"], result["bayes"], metrics={t.name: t.metrics for t in tasks}
            ),
            file=sys.stderr,
        )
    return result
