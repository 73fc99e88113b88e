"""Data layer: datasets, readers (CoNLL-U, column files, CSV time series), vocabularies, the
synthetic multi-task suite and length-bucketed batching.

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
from mtlrnn.data.columns import read_columns
from mtlrnn.data.conllu_reader import load_ud
from mtlrnn.data.conllu_reader import read_conllu
from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.data.synthetic import Suite
from mtlrnn.data.synthetic import SyntheticConfig
from mtlrnn.data.synthetic import SyntheticProcess
from mtlrnn.data.synthetic import make_suite
from mtlrnn.data.text import TextData
from mtlrnn.data.text import encode_text
from mtlrnn.data.timeseries import Target
from mtlrnn.data.timeseries import TimeSeries
from mtlrnn.data.timeseries import load_timeseries
from mtlrnn.data.vocab import LabelVocabulary
from mtlrnn.data.vocab import Vocabulary

__all__ = [
    "Batch",
    "LabelVocabulary",
    "SequenceDataset",
    "Suite",
    "SyntheticConfig",
    "SyntheticProcess",
    "Target",
    "TextData",
    "TimeSeries",
    "Vocabulary",
    "bucket_lengths",
    "encode_text",
    "epoch_plan",
    "eval_batches",
    "eval_plan",
    "load_timeseries",
    "load_ud",
    "make_batch",
    "make_suite",
    "read_columns",
    "read_conllu",
    "steps_per_epoch",
    "train_batches",
]
