"""Loss weighting and gradient aggregation strategies (see base.py for the contract)."""

from mtlrnn.weighting.base import Strategy
from mtlrnn.weighting.loss_based import equal
from mtlrnn.weighting.loss_based import fixed
from mtlrnn.weighting.registry import get
from mtlrnn.weighting.registry import hyperparameters
from mtlrnn.weighting.registry import names

__all__ = [
    "Strategy",
    "equal",
    "fixed",
    "get",
    "hyperparameters",
    "names",
]
