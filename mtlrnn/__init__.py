"""mtlrnn: fast multi-task recurrent networks in JAX.

One shared recurrent trunk (``lax.scan`` over time) feeds many task heads (stacked and
vmapped); per-task losses are combined by a weighting strategy and applied through optax.

The one-call API is :func:`fit` (``mtlrnn train``), :func:`evaluate` (``mtlrnn eval``),
``mtlrnn.predict.predict`` (``mtlrnn predict``) and ``mtlrnn.compare.compare``
(``mtlrnn compare``);
the building blocks are importable for custom training loops.
"""

from mtlrnn import gradients
from mtlrnn import interop
from mtlrnn import weighting
from mtlrnn.cells import get_cell
from mtlrnn.config import Config
from mtlrnn.config import ConfigError
from mtlrnn.config import default_config
from mtlrnn.config import load_config
from mtlrnn.losses import task_losses
from mtlrnn.metrics import batch_stats
from mtlrnn.metrics import finalize
from mtlrnn.model import MultiTaskRNN
from mtlrnn.run import evaluate
from mtlrnn.run import fit
from mtlrnn.sources import load_data
from mtlrnn.tasks import TaskSpec
from mtlrnn.train import TrainState
from mtlrnn.train import create_train_state
from mtlrnn.train import make_eval_step
from mtlrnn.train import make_optimizer
from mtlrnn.train import make_train_step
from mtlrnn.train import params_sha256
from mtlrnn.trunk import Trunk

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
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
