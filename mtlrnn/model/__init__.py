"""Model layer: recurrent cells, fused and linear-time recurrences, the shared trunk, task
heads, character encoders, dropout by position and :class:`MultiTaskRNN` (Flax Linen).

Nothing here knows about training, weighting or configs' other sections.
"""

from mtlrnn.model.multitask import MultiTaskRNN
from mtlrnn.model.trunk import Trunk

__all__ = ["MultiTaskRNN", "Trunk"]
