"""Loss weighting and gradient aggregation strategies (see base.py for the contract)."""

from mtlrnn.weighting.base import Strategy
from mtlrnn.weighting.base import gradient_strategy
from mtlrnn.weighting.loss_based import equal
from mtlrnn.weighting.loss_based import fixed
from mtlrnn.weighting.registry import get
from mtlrnn.weighting.registry import hyperparameters
from mtlrnn.weighting.registry import names
from mtlrnn.weighting.transform import as_optax

__all__ = [
    "Strategy",
    "as_optax",
    "equal",
    "fixed",
    "get",
    "gradient_strategy",
    "hyperparameters",
    "names",
]
