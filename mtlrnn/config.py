"""Typed configuration: frozen dataclasses loaded from YAML plus ``--set`` overrides.

A config is a tree of frozen dataclasses; every YAML key is a dataclass field. One generic
converter, driven by each field's type hint, checks a raw mapping and builds the tree:
unknown keys, wrong types, values outside a ``Literal`` and numbers out of range all fail
with one line that names the dotted key and what is allowed, before any JAX compilation.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Any``, ``Literal[...]``,
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested config dataclasses.
Lists are stored as tuples wherever a field is typed ``tuple[X, ...]``, so configs stay
immutable.

Field metadata read by the loader (``dataclasses.field(metadata={...})``):

- ``min`` / ``max``: inclusive bounds; ``gt`` / ``lt``: exclusive bounds. For list fields
  they apply to each element; ``None`` values are not checked.
- ``help``: a one-line description, written as a comment by :func:`to_yaml`.

Cross-field rules live in each dataclass's ``__post_init__``, which raises
``ValueError("<field>: <what is allowed>, got <value>")``; the loader prefixes the section
path, e.g. ``"data.synthetic.max_len: must be >= min_len (8), got 4"``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Literal

import yaml

from mtlrnn.data.spec import ColumnsConfig
from mtlrnn.data.spec import ConlluConfig
from mtlrnn.data.spec import CsvConfig
from mtlrnn.data.spec import DataConfig
from mtlrnn.data.spec import TextConfig
from mtlrnn.data.synthetic import SyntheticConfig
from mtlrnn.model.spec import ModelConfig
from mtlrnn.options import ConfigError
from mtlrnn.options import option
from mtlrnn.options import section
from mtlrnn.tasks import LOSSES
from mtlrnn.tasks import TaskSpec

__all__ = [
    "CheckpointConfig",
    "ColumnsConfig",
    "Config",
    "ConfigError",
    "ConlluConfig",
    "CsvConfig",
    "DataConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParallelConfig",
    "SyntheticConfig",
    "TaskOptions",
    "TasksConfig",
    "TextConfig",
    "TrainConfig",
    "WeightingConfig",
    "apply_overrides",
    "default_config",
    "dump_yaml",
    "from_dict",
    "load_config",
    "resolve_tasks",
    "to_dict",
    "to_yaml",
]


_opt = option
_section = section


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

Split = Literal["train", "dev", "test"]


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Per-task overrides; ``None`` keeps the data's default for that task."""

    weight: float | None = _opt(None, "loss weight (used by the fixed strategy)", min=0)
    loss_scale: float | None = _opt(
        None, "multiply the task's loss by this before weighting (loss-scale imbalance)", gt=0
    )
    loss: Literal["cross_entropy", "mse", "huber"] | None = _opt(
        None, "cross_entropy for classification; mse or huber for regression"
    )
    label_smoothing: float | None = _opt(
        None, "cross-entropy label smoothing (classification only)", min=0, lt=1
    )
    huber_delta: float | None = _opt(None, "Huber loss threshold (loss huber only)", gt=0)
    pooling: Literal["last", "mean", "max"] | None = _opt(
        None, "how a sequence-level head pools the trunk states (sequence level only)"
    )


@dataclasses.dataclass(frozen=True)
class TasksConfig:
    """Which of the data's tasks to train, and per-task overrides."""

    include: tuple[str, ...] = _opt(
        (), "task names to train; [] = every task the data provides (single-task baselines)"
    )
    options: dict[str, TaskOptions] = _opt(
        {},
        "per-task overrides keyed by task name: weight, loss_scale, loss, label_smoothing, "
        "huber_delta, pooling",
    )

    def __post_init__(self) -> None:
        dup = sorted({n for n in self.include if list(self.include).count(n) > 1})
        if dup:
            raise ValueError(f"include: task names must be unique, got repeated {dup}")


#: Other names of weighting methods, as the literature writes them (``ew``: equal weights).
WEIGHTING_ALIASES: dict[str, str] = {"ew": "equal"}


@dataclasses.dataclass(frozen=True)
class WeightingConfig:
    """How the per-task losses (or gradients) are combined into one update."""

    name: str = _opt(
        "equal", "strategy name, one of mtlrnn.weighting.names() (ew is accepted for equal)"
    )
    params: dict[str, Any] = _opt({}, "strategy hyper-parameters, passed as keywords")
    mode: Literal["full", "representation", "gramian"] = _opt(
        "full",
        "per-task gradients for gradient-based methods: full (Jacobian of the shared "
        "parameters), representation (of the trunk output), gramian (G = J J^T only); "
        "loss-based methods ignore it",
    )
    chunk_size: int = _opt(
        0, "tasks per batched backward pass when forming per-task gradients; 0 = all", min=0
    )

    def __post_init__(self) -> None:
        # Imported here so that reading a config does not import JAX until it is needed.
        from mtlrnn import weighting

        allowed = tuple(weighting.names())
        if self.name in WEIGHTING_ALIASES:
            object.__setattr__(self, "name", WEIGHTING_ALIASES[self.name])
        if self.name not in allowed:
            close = difflib.get_close_matches(str(self.name), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"name: must be one of {', '.join(allowed)}; got {self.name!r}{hint}")
        try:
            strategy = weighting.get(self.name, **self.params)
        except (TypeError, ValueError) as e:
            # Messages that start with the hyper-parameter's name become weighting.params.<name>.
            msg = str(e)
            sep = "." if msg.split(":", 1)[0] in self.params else ": "
            raise ValueError(f"params{sep}{msg}") from e
        if strategy.requires == "grads" and self.mode not in strategy.modes:
            raise ValueError(
                f"mode: {self.name!r} cannot run in mode {self.mode!r}; "
                f"allowed: {', '.join(strategy.modes)}"
            )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optax optimizer and learning-rate schedule."""

    name: Literal["adam", "adamw", "sgd"] = _opt("adam", "optax optimizer: adam, adamw or sgd")
    learning_rate: float = _opt(3e-3, "peak learning rate", gt=0)
    weight_decay: float = _opt(
        0.0, "decoupled weight decay; applies to adamw only (adam and sgd ignore it)", min=0
    )
    momentum: float = _opt(0.9, "sgd momentum, in [0, 1) (sgd only)", min=0, lt=1)
    nesterov: bool = _opt(False, "Nesterov momentum (sgd only)")
    b1: float = _opt(0.9, "adam/adamw first-moment decay", min=0, lt=1)
    b2: float = _opt(0.999, "adam/adamw second-moment decay", min=0, lt=1)
    eps: float = _opt(1e-8, "adam/adamw denominator epsilon", gt=0)
    schedule: Literal["constant", "cosine"] = _opt(
        "cosine", "learning-rate schedule after warmup: constant or cosine"
    )
    warmup_steps: int = _opt(50, "linear warmup steps from 0 to learning_rate", min=0)
    end_lr_fraction: float = _opt(
        0.0, "cosine: final learning rate as a fraction of the peak, in [0, 1]", min=0, max=1
    )
    clip_norm: float = _opt(1.0, "clip the global gradient norm to this; 0 disables", min=0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int = _opt(3000, "optimizer steps", min=1)
    batch_size: int = _opt(32, "sequences per training batch", min=1)
    eval_batch_size: int = _opt(128, "sequences per evaluation batch", min=1)
    seed: int = _opt(0, "seed for parameter init, dropout and batch order", min=0)
    num_seeds: int = _opt(
        1,
        "seeds train.seed, train.seed + 1, ... trained together in one process, one jitted "
        "step over their stacked states (train.population_mode); each seed's run goes to "
        "<workdir>/seed<seed>",
        min=1,
    )
    eval_every: int = _opt(0, "evaluate every this many steps; 0 = only at the end", min=0)
    log_every: int = _opt(50, "log training metrics every this many steps", min=1)
    eval_splits: tuple[Split, ...] = _opt(
        ("dev", "test"), "splits evaluated and summarised (train, dev, test)"
    )
    accumulate: int = _opt(
        1,
        "micro-batches per optimizer step (gradient accumulation, exactly the whole batch's "
        "update); batch_size must divide by it",
        min=1,
    )
    on_nonfinite: Literal["skip", "stop"] = _opt(
        "stop",
        "a NaN/inf loss or gradient leaves the state unchanged; then skip (count it and go "
        "on) or stop (at the next log step: save the last good state, exit non-zero naming "
        "the first bad step and its tasks)",
    )
    population_mode: Literal["auto", "vmap", "map"] = _opt(
        "auto",
        "how the seeds of train.num_seeds share the step: vmap (one batched program, for "
        "accelerators), map (one seed after another inside the compiled step, for CPUs, where "
        "batching does not pay) or auto (map on CPU, vmap elsewhere)",
    )
    patience: int = _opt(
        0,
        "early stopping: stop once checkpoint.best_metric has not improved for this many "
        "evaluations (every train.eval_every steps); 0 = train all train.steps",
        min=0,
    )
    prefetch: int = _opt(
        2,
        "batches prepared and placed on the device ahead of the step, in a background "
        "thread; 0 = each before its step, in the loop",
        min=0,
    )
    compile_cache: bool | str = _opt(
        "auto",
        "JAX's persistent compilation cache, so reruns and comparison runs load the compiled "
        "step instead of compiling it: auto or on ($XDG_CACHE_HOME/mtlrnn/jax or "
        "~/.cache/mtlrnn/jax), a directory, or off",
    )

    def __post_init__(self) -> None:
        if self.batch_size % self.accumulate:
            raise ValueError(
                f"accumulate: batch_size ({self.batch_size}) must divide by it, got "
                f"{self.accumulate}"
            )


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Data parallelism across devices."""

    mode: Literal["auto", "none", "mesh", "pmap"] = _opt(
        "auto",
        "auto (mesh when more than one device is visible), none (one device), mesh (one "
        "jitted step over a data-sharded batch) or pmap (per-device step, psum of losses "
        "and gradients)",
    )
    fsdp: bool = _opt(
        False,
        "mesh mode: shard parameters, optimizer and weighting state along the data axis "
        "(each array on its largest dimension that divides by the device count) instead of "
        "replicating them",
    )

    coordinator: str = _opt(
        "",
        "multi-host: host:port of process 0 for jax.distributed.initialize; '' = single "
        "process (or JAX's own cluster detection when JAX_COORDINATOR_ADDRESS is set)",
    )
    num_processes: int = _opt(0, "multi-host: number of processes (with coordinator)", min=0)
    process_id: int = _opt(-1, "multi-host: this process's id in [0, num_processes)", min=-1)

    def __post_init__(self) -> None:
        if self.fsdp and self.mode not in ("mesh", "auto"):
            raise ValueError(f"fsdp: needs mode mesh (or auto); mode is {self.mode!r}")
        if self.coordinator:
            if self.num_processes < 1:
                raise ValueError("num_processes: required (>= 1) with coordinator")
            if not 0 <= self.process_id < self.num_processes:
                raise ValueError(
                    f"process_id: must be in [0, {self.num_processes}) with coordinator, got "
                    f"{self.process_id}"
                )
            if self.mode == "pmap":
                raise ValueError("mode: multi-host runs use mesh (pmap is per host)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under <workdir>/checkpoints."""

    enabled: bool = _opt(True, "write checkpoints (and resume from the latest one)")
    every: int = _opt(0, "save every this many steps; 0 = only at the end", min=0)
    keep: int = _opt(2, "how many recent checkpoints to keep", min=1)
    best_metric: str = _opt(
        "",
        "also keep the best checkpoint by this eval metric, 'split/task/metric' (e.g. "
        "dev/upos/accuracy; needs train.eval_every); '' = off",
    )
    best_mode: Literal["max", "min"] = _opt("max", "best_metric: max (accuracy) or min (mse)")
    async_save: bool = _opt(True, "write checkpoints in the background while training goes on")
    resume: bool = _opt(True, "resume from the latest good checkpoint when --workdir has one")

    def __post_init__(self) -> None:
        if self.best_metric and len(self.best_metric.split("/")) != 3:
            raise ValueError(
                f"best_metric: must be 'split/task/metric' (e.g. dev/upos/accuracy), got "
                f"{self.best_metric!r}"
            )


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """What a run reports besides metrics.jsonl and summary.json."""

    progress: bool = _opt(True, "show a progress bar")
    plots: bool = _opt(True, "write loss and metric curves to <workdir>/plots")
    tensorboard: bool = _opt(False, "write TensorBoard event files")
    profile_steps: tuple[int, ...] = _opt(
        (),
        "[A, B]: trace steps A+1..B with jax.profiler into <workdir>/profile (open it with "
        "TensorBoard's profile plugin or Perfetto); [] = no trace",
    )

    def __post_init__(self) -> None:
        steps = self.profile_steps
        if steps and (len(steps) != 2 or not 0 <= steps[0] < steps[1]):
            raise ValueError(
                f"profile_steps: must be [] or [A, B] with 0 <= A < B; got {list(steps)}"
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment."""

    data: DataConfig = _section(DataConfig, "data: where examples come from, how they are batched")
    model: ModelConfig = _section(ModelConfig, "model: the shared recurrent trunk")
    tasks: TasksConfig = _section(TasksConfig, "tasks: which tasks to train, per-task overrides")
    weighting: WeightingConfig = _section(
        WeightingConfig, "weighting: how task losses or gradients are combined"
    )
    optimizer: OptimizerConfig = _section(OptimizerConfig, "optimizer: optax optimizer, schedule")
    train: TrainConfig = _section(TrainConfig, "train: the training loop")
    parallel: ParallelConfig = _section(ParallelConfig, "parallel: data parallelism")
    checkpoint: CheckpointConfig = _section(CheckpointConfig, "checkpoint: orbax checkpoints")
    logging: LoggingConfig = _section(LoggingConfig, "logging: progress, plots, TensorBoard")

    def __post_init__(self) -> None:
        if self.model.char_encoder != "none":
            if self.data.source not in ("conllu", "columns"):
                raise ValueError(
                    f"model.char_encoder: {self.model.char_encoder!r} needs word inputs "
                    f"(data.source conllu or columns); data.source is {self.data.source!r}"
                )
            if self.data.text.max_word_len < 1:
                raise ValueError(
                    "data.text.max_word_len: must be >= 1 when model.char_encoder is "
                    f"{self.model.char_encoder!r} (characters kept per word, e.g. 20)"
                )


def default_config() -> Config:
    """The built-in defaults (identical to ``configs/synthetic.yaml``)."""
    return Config()


# --------------------------------------------------------------------------------------------
# The generic converter: raw YAML values -> typed dataclasses
# --------------------------------------------------------------------------------------------

_NoneType = type(None)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is _NoneType:
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp`` and convert it; ``path`` names it."""
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path)
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{path}: must be one of {', '.join(map(str, args))}; got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and _NoneType in args:
            return None
        arms = [a for a in args if a is not _NoneType]
        if len(arms) == 1:
            return _convert(value, arms[0], path)
        for arm in arms:
            try:
                return _convert(value, arm, path)
            except ConfigError:
                pass
        allowed = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{path}: expected {allowed}, got {_describe(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"{path}: use tuple[X, ...] in config dataclasses, not {tp!r}")
        elem = args[0] if args else Any
        return origin(_convert(v, elem, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        key_tp, val_tp = args or (Any, Any)
        return {
            _convert(k, key_tp, f"{path} (key)"): _convert(v, val_tp, _join(path, k))
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{path}: must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{path}: unsupported type hint {tp!r} in a config dataclass")
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")


def _range_text(meta: Mapping[str, Any]) -> str:
    lo = ("[", meta["min"]) if "min" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["max"]) if "max" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if value is None or not any(k in meta for k in ("min", "max", "gt", "lt")):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_bounds(v, meta, f"{path}[{i}]")
        return
    ok = (
        ("min" not in meta or value >= meta["min"])
        and ("gt" not in meta or value > meta["gt"])
        and ("max" not in meta or value <= meta["max"])
        and ("lt" not in meta or value < meta["lt"])
    )
    if not ok:
        raise ConfigError(f"{path}: must be {_range_text(meta)}, got {value}")


def _prefix(path: str, message: str, fields: Mapping[str, Any]) -> str:
    """Prefix a ``__post_init__`` message with the section path."""
    if not path:
        return message
    m = re.match(r"([A-Za-z_]\w*)[\w.\[\]]*:", message)
    if m and m.group(1) in fields:
        return f"{path}.{message}"
    return f"{path}: {message}"


def _convert_dataclass(value: Any, cls: type, path: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = _plain(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_describe(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs = {}
    for key, raw in value.items():
        sub = _join(path, key)
        if key not in fields:
            names = sorted(fields)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{sub}: unknown key{hint}; allowed: {', '.join(names)}")
        converted = _convert(raw, hints[key], sub)
        _check_bounds(converted, fields[key].metadata, sub)
        kwargs[key] = converted
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(_prefix(path, str(e), fields)) from e


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a nested mapping; missing keys take their defaults.

    Strict: unknown keys, wrong types, values outside a ``Literal``, numbers out of range
    and broken cross-field rules raise :class:`ConfigError` naming the dotted key.
    """
    return _convert_dataclass(raw, Config, "")


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML-able data: dicts, lists (never tuples) and scalars."""
    return _plain(cfg)


def flat_dict(cfg: Config) -> dict[str, Any]:
    """The config as ``{dotted.key: value}`` leaves (an empty mapping is one leaf ``{}``)."""

    def flatten(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, Mapping) and value:
            out: dict[str, Any] = {}
            for k, v in value.items():
                out.update(flatten(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: value}

    return flatten(to_dict(cfg), "")


# --------------------------------------------------------------------------------------------
# YAML in and out, --set overrides
# --------------------------------------------------------------------------------------------

# PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; accept it as a float.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings the loader would read as floats."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def _yaml_problem(e: yaml.YAMLError) -> str:
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = ", ".join(p for p in parts if p)
    return text or str(e)


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}: cannot read config file ({e})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise ConfigError(f"{where}: invalid YAML: {_yaml_problem(e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of sections, got {_describe(raw)}")
    return raw


def _set_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``"a.b.c=value"`` override to a raw nested dict, in place."""
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. model.hidden_size=256")
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {_yaml_problem(e)}") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{key}: {where} is {_describe(child)}, not a section")
        node = child
    node[parts[-1]] = value


def _with_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        _set_override(out, item)
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (``None``: the defaults) and apply ``--set`` overrides.

    Overrides are ``"a.b.c=value"`` strings whose value is parsed as YAML, e.g.
    ``"model.hidden_size=256"``, ``"data.buckets=[16,32]"``, ``"tasks.options.tag0.weight=2"``.
    They are merged into the file's contents before one validation pass, so cross-field
    rules see the final values. Keys missing from the file take their defaults.

    Raises:
      ConfigError: unreadable or invalid YAML (with file and line), malformed override,
        or any invalid key or value (naming the dotted key).
    """
    raw = {} if path is None else _read_yaml(path)
    return from_dict(_with_overrides(raw, overrides))


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of ``cfg`` with ``"a.b.c=value"`` overrides applied and validated."""
    return from_dict(_with_overrides(to_dict(cfg), overrides))


def _flow(value: Any) -> str:
    text = yaml.dump(
        value,
        Dumper=_Dumper,
        default_flow_style=True,
        width=1 << 30,
        sort_keys=False,
        allow_unicode=True,
    )
    return text.removesuffix("\n...\n").strip()


def _emit(key: str, value: Any, depth: int, lines: list[str], comments: bool) -> None:
    pad = "  " * depth
    if dataclasses.is_dataclass(value):
        lines.append(f"{pad}{_flow(key)}:")
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            help_text = " ".join(str(f.metadata.get("help", "")).split())
            if comments and help_text:
                lines.append(f"{pad}  # {help_text}")
            _emit(f.name, getattr(value, f.name), depth + 1, lines, comments)
    elif isinstance(value, Mapping) and value:
        lines.append(f"{pad}{_flow(key)}:")
        for k, v in value.items():
            _emit(k, v, depth + 1, lines, comments=False)
    else:
        lines.append(f"{pad}{_flow(key)}: {_flow(_plain(value))}")


def to_yaml(cfg: Config, *, comments: bool = True) -> str:
    """The config as YAML text, each key preceded by its help line when ``comments``."""
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        if lines:
            lines.append("")
        if comments and f.metadata.get("help"):
            lines.append(f"# {f.metadata['help']}")
        _emit(f.name, getattr(cfg, f.name), 0, lines, comments)
    return "\n".join(lines) + "\n"


def dump_yaml(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``cfg`` as commented YAML that :func:`load_config` reads back to an equal config
    (atomically: a temporary file renamed into place)."""
    from mtlrnn.fileio import write_text_atomic

    write_text_atomic(path, to_yaml(cfg))


# --------------------------------------------------------------------------------------------
# Tasks: the data's TaskSpecs + tasks.include / tasks.options
# --------------------------------------------------------------------------------------------


def _apply_options(spec: TaskSpec, opts: TaskOptions) -> TaskSpec:
    path = f"tasks.options.{spec.name}"
    changes = {
        f.name: getattr(opts, f.name)
        for f in dataclasses.fields(opts)
        if getattr(opts, f.name) is not None
    }
    loss = changes.get("loss", spec.loss)
    if loss not in LOSSES[spec.kind]:
        raise ConfigError(
            f"{path}.loss: {spec.kind} task {spec.name!r} allows "
            f"{', '.join(LOSSES[spec.kind])}; got {loss!r}"
        )
    if "label_smoothing" in changes and spec.kind != "classification":
        raise ConfigError(
            f"{path}.label_smoothing: applies to classification tasks only; "
            f"{spec.name!r} is {spec.kind}"
        )
    if "huber_delta" in changes and loss != "huber":
        raise ConfigError(
            f"{path}.huber_delta: applies to loss huber only; {spec.name!r} uses {loss!r}"
        )
    if "pooling" in changes and spec.level != "sequence":
        raise ConfigError(
            f"{path}.pooling: applies to sequence-level tasks only; {spec.name!r} is "
            f"{spec.level}-level"
        )
    try:
        return spec.replace(**changes)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from e


def resolve_tasks(cfg: TasksConfig, available: Sequence[TaskSpec]) -> tuple[TaskSpec, ...]:
    """The tasks to train: the data's ``available`` specs filtered by ``cfg.include`` (in the
    data's order) with ``cfg.options`` applied.

    Raises:
      ConfigError: a name in ``tasks.include`` or ``tasks.options`` that the data does not
        provide (listing the available names), or an option that does not fit the task
        (e.g. loss ``mse`` on a classification task), naming the key.
    """
    available = tuple(available)
    names = [s.name for s in available]
    listing = ", ".join(names) or "(none)"

    def unknown(key: str, name: str) -> ConfigError:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigError(f"{key}: unknown task {name!r}{hint}; available: {listing}")

    for name in cfg.include:
        if name not in names:
            raise unknown("tasks.include", name)
    for name in cfg.options:
        if name not in names:
            raise unknown(f"tasks.options.{name}", name)
    chosen = [s for s in available if not cfg.include or s.name in cfg.include]
    return tuple(
        _apply_options(s, cfg.options[s.name]) if s.name in cfg.options else s for s in chosen
    )
