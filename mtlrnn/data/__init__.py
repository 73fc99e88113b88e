"""Data layer: datasets, the synthetic multi-task suite and length-bucketed batching.

Pure numpy; nothing here imports JAX.
"""

from mtlrnn.data.batching import Batch
from mtlrnn.data.batching import bucket_lengths
from mtlrnn.data.batching import epoch_plan
from mtlrnn.data.batching import eval_batches
from mtlrnn.data.batching import eval_plan
from mtlrnn.data.batching import make_batch
from mtlrnn.data.batching import steps_per_epoch
from mtlrnn.data.batching import train_batches
from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.synthetic import Suite
from mtlrnn.data.synthetic import SyntheticConfig
from mtlrnn.data.synthetic import SyntheticProcess
from mtlrnn.data.synthetic import make_suite

__all__ = [
    "Batch",
    "SequenceDataset",
    "Suite",
    "SyntheticConfig",
    "SyntheticProcess",
    "bucket_lengths",
    "epoch_plan",
    "eval_batches",
    "eval_plan",
    "make_batch",
    "make_suite",
    "steps_per_epoch",
    "train_batches",
]
