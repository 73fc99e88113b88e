"""The model's hyper-parameters: one object from the config to every module that needs them.

:class:`ModelConfig` is the ``model:`` section of a config (:mod:`mtlrnn.config` composes it)
and the one argument :class:`~mtlrnn.model.multitask.MultiTaskRNN` and
:class:`~mtlrnn.model.trunk.Trunk` take for their sizes and choices; what the data decides
(vocabulary sizes, feature width, the tasks) travels separately. Reading a config imports no
JAX: the dtypes are names here, mapped to JAX dtypes by the modules.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from mtlrnn.options import option as _opt

DType = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The shared recurrent trunk."""

    cell: Literal["lstm", "gru", "rnn", "mingru", "minlstm"] = _opt(
        "lstm",
        "recurrent cell: lstm, gru, rnn, or the parallel-in-time mingru, minlstm "
        "(Feng et al. 2024)",
    )
    embed_dim: int = _opt(64, "token embedding width E", min=1)
    hidden_size: int = _opt(128, "recurrent state width H (per direction)", min=1)
    num_layers: int = _opt(1, "stacked recurrent layers", min=1)
    bidirectional: bool = _opt(True, "run a backward layer too and concatenate both")
    dropout: float = _opt(
        0.1, "dropout between layers and on the trunk output, in [0, 1)", min=0, lt=1
    )
    embed_dropout: float = _opt(0.0, "dropout on the embeddings, in [0, 1)", min=0, lt=1)
    word_dropout: float = _opt(
        0.0, "training: replace word ids by <unk> with this probability, in [0, 1)", min=0, lt=1
    )
    char_encoder: Literal["none", "cnn", "lstm"] = _opt(
        "none", "character word encoder (needs data.text.max_word_len > 0): none, cnn or lstm"
    )
    char_embed_dim: int = _opt(32, "character embedding width", min=1)
    char_features: int = _opt(
        64, "char encoder width: CNN filters, or LSTM hidden size per direction", min=1
    )
    char_kernel: int = _opt(3, "char CNN kernel width in characters", min=1)
    impl: Literal["fused", "autodiff"] = _opt(
        "fused",
        "lstm/gru/rnn trunk: fused (hand-written backward, weight gradients as one matmul) "
        "or autodiff (plain lax.scan, the reference)",
    )
    scan: Literal["auto", "sequential", "associative"] = _opt(
        "auto",
        "mingru/minlstm time scan: auto (sequential on CPU, associative on GPU/TPU from 32 "
        "steps), sequential or associative",
    )
    unroll: int = _opt(0, "lax.scan unroll factor over time; 0 = per platform", min=0)
    remat: bool = _opt(
        False,
        "rematerialise the trunk in chunks of time in the backward pass (long sequences: "
        "less memory, about one more forward pass of compute)",
    )
    remat_chunk: int = _opt(0, "time steps per remat chunk; 0 = ceil(sqrt(length))", min=0)
    param_dtype: DType = _opt("float32", "dtype of the parameters: float32 or bfloat16")
    compute_dtype: DType = _opt("float32", "dtype of the activations: float32 or bfloat16")
