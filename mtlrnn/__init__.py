"""mtlrnn: fast multi-task recurrent networks in JAX.

One shared recurrent trunk (``lax.scan`` over time) feeds many task heads (stacked and
vmapped); per-task losses are combined by a weighting strategy and applied through optax.

The one-call API is :func:`fit` (``mtlrnn train``), :func:`evaluate` (``mtlrnn eval``),
``mtlrnn.predict.predict`` (``mtlrnn predict``) and ``mtlrnn.compare.compare``
(``mtlrnn compare``);
the building blocks are importable for custom training loops.

Names are imported on first use (PEP 562), so ``import mtlrnn`` and ``mtlrnn --help`` do
not start JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it (a submodule itself when the name is one).
_EXPORTS: dict[str, str] = {
    "Config": "mtlrnn.config",
    "ConfigError": "mtlrnn.config",
    "ModelConfig": "mtlrnn.model.spec",
    "MultiTaskRNN": "mtlrnn.model.multitask",
    "TaskSpec": "mtlrnn.tasks",
    "TrainState": "mtlrnn.training.step",
    "Trunk": "mtlrnn.model.trunk",
    "batch_stats": "mtlrnn.training.metrics",
    "create_train_state": "mtlrnn.training.step",
    "default_config": "mtlrnn.config",
    "evaluate": "mtlrnn.training.run",
    "finalize": "mtlrnn.training.metrics",
    "fit": "mtlrnn.training.run",
    "get_cell": "mtlrnn.model.cells",
    "gradients": "mtlrnn.training.gradients",
    "interop": "mtlrnn.model.interop",
    "load_config": "mtlrnn.config",
    "load_data": "mtlrnn.data.sources",
    "make_eval_step": "mtlrnn.training.step",
    "make_optimizer": "mtlrnn.training.step",
    "make_train_step": "mtlrnn.training.step",
    "params_sha256": "mtlrnn.training.step",
    "task_losses": "mtlrnn.training.losses",
    "weighting": "mtlrnn.weighting",
}

__all__ = [
    "Config",
    "ConfigError",
    "ModelConfig",
    "MultiTaskRNN",
    "TaskSpec",
    "TrainState",
    "Trunk",
    "batch_stats",
    "create_train_state",
    "default_config",
    "evaluate",
    "finalize",
    "fit",
    "get_cell",
    "gradients",
    "interop",
    "load_config",
    "load_data",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "params_sha256",
    "task_losses",
    "weighting",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'mtlrnn' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs; not executed
    from mtlrnn import weighting
    from mtlrnn.config import Config
    from mtlrnn.config import ConfigError
    from mtlrnn.config import default_config
    from mtlrnn.config import load_config
    from mtlrnn.data.sources import load_data
    from mtlrnn.model import interop
    from mtlrnn.model.cells import get_cell
    from mtlrnn.model.multitask import MultiTaskRNN
    from mtlrnn.model.spec import ModelConfig
    from mtlrnn.model.trunk import Trunk
    from mtlrnn.tasks import TaskSpec
    from mtlrnn.training import gradients
    from mtlrnn.training.losses import task_losses
    from mtlrnn.training.metrics import batch_stats
    from mtlrnn.training.metrics import finalize
    from mtlrnn.training.run import evaluate
    from mtlrnn.training.run import fit
    from mtlrnn.training.step import TrainState
    from mtlrnn.training.step import create_train_state
    from mtlrnn.training.step import make_eval_step
    from mtlrnn.training.step import make_optimizer
    from mtlrnn.training.step import make_train_step
    from mtlrnn.training.step import params_sha256
