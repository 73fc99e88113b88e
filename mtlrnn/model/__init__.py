"""Model layer: recurrent cells, fused and linear-time recurrences, the shared trunk, task
heads, character encoders, dropout by position and :class:`MultiTaskRNN` (Flax Linen).

Nothing here knows about training, weighting or the config's other sections. The exports
are loaded on first use, so reading a config (which imports :mod:`mtlrnn.model.spec`) does
not import JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

_EXPORTS = {
    "ModelConfig": "mtlrnn.model.spec",
    "MultiTaskRNN": "mtlrnn.model.multitask",
    "Trunk": "mtlrnn.model.trunk",
}
__all__ = ["ModelConfig", "MultiTaskRNN", "Trunk"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from mtlrnn.model.multitask import MultiTaskRNN
    from mtlrnn.model.spec import ModelConfig
    from mtlrnn.model.trunk import Trunk
