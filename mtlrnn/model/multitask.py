"""MultiTaskRNN: embedding -> shared recurrent trunk -> stacked task heads (Flax Linen)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

from mtlrnn.model.char_encoder import CharCNN
from mtlrnn.model.char_encoder import CharLSTM
from mtlrnn.model.dropout import TimeDropout
from mtlrnn.model.dropout import time_bernoulli
from mtlrnn.model.heads import StackedHeads
from mtlrnn.model.heads import group_tasks
from mtlrnn.model.trunk import Trunk
from mtlrnn.tasks import TaskSpec


class MultiTaskRNN(nn.Module):
    """The multi-task recurrent network.

    Inputs are token ids ``[B, L]`` (embedded, id 0 is padding) when ``num_features == 0``,
    or real-valued features ``[B, L, F]`` (projected by a dense layer) otherwise. With a
    character encoder, each word's vector is its embedding concatenated with the encoding of
    its characters ``chars [B, L, C]``.

    Attributes:
      tasks: the task specs; the order defines the ``[K]`` axis.
      vocab_size: number of token ids (ignored for feature inputs).
      num_features: ``F`` for real-valued inputs; 0 for token ids.
      embed_dim: ``E``.
      cell, hidden_size, num_layers, bidirectional, impl, scan, unroll, remat, remat_chunk:
        see :class:`Trunk`.
      dropout: dropout between trunk layers and on the trunk output.
      embed_dropout: dropout on the embeddings.
      word_dropout: training only: the probability that a word id is replaced by ``unk_id``,
        so the model learns to tag unknown words from context and characters.
        Every dropout mask is drawn step by step (:mod:`mtlrnn.model.dropout`): padding a batch to
        a longer ``L`` changes no draw on its valid steps.
      unk_id: the unknown-word id used by ``word_dropout``.
      char_encoder: ``"none"``, ``"cnn"`` (:class:`CharCNN`) or ``"lstm"`` (:class:`CharLSTM`).
      char_vocab_size, char_embed_dim, char_features, char_kernel: its sizes (``char_features``
        is the CNN's filter count or the char LSTM's width per direction).
      param_dtype, dtype: parameter storage and compute dtypes.
    """

    tasks: tuple[TaskSpec, ...]
    vocab_size: int = 0
    num_features: int = 0
    embed_dim: int = 64
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.0
    embed_dropout: float = 0.0
    word_dropout: float = 0.0
    unk_id: int = 1
    char_encoder: str = "none"
    char_vocab_size: int = 0
    char_embed_dim: int = 32
    char_features: int = 64
    char_kernel: int = 3
    impl: str = "fused"
    scan: str = "auto"
    unroll: int = 0
    remat: bool = False
    remat_chunk: int = 0
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.num_features > 0:
            self.embed = nn.Dense(self.embed_dim, param_dtype=self.param_dtype, dtype=self.dtype)
        else:
            self.embed = nn.Embed(
                self.vocab_size, self.embed_dim, param_dtype=self.param_dtype, dtype=self.dtype
            )
        if self.char_encoder == "cnn":
            self.chars = CharCNN(
                self.char_vocab_size,
                self.char_embed_dim,
                self.char_features,
                self.char_kernel,
                param_dtype=self.param_dtype,
                dtype=self.dtype,
            )
        elif self.char_encoder == "lstm":
            self.chars = CharLSTM(
                self.char_vocab_size,
                self.char_embed_dim,
                self.char_features,
                param_dtype=self.param_dtype,
                dtype=self.dtype,
            )
        elif self.char_encoder != "none":
            raise ValueError(
                f"char_encoder: must be one of none, cnn, lstm; got {self.char_encoder!r}"
            )
        self.trunk = Trunk(
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            impl=self.impl,
            scan=self.scan,
            unroll=self.unroll,
            remat=self.remat,
            remat_chunk=self.remat_chunk,
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )
        self.heads = {
            g.name: StackedHeads(g, param_dtype=self.param_dtype, dtype=self.dtype, name=g.name)
            for g in group_tasks(self.tasks)
        }
        # Masks drawn step by step: padding a batch to a longer bucket changes no draw.
        self.embed_drop = TimeDropout(self.embed_dropout)
        self.out_drop = TimeDropout(self.dropout)

    def embed_inputs(
        self,
        inputs: chex.Array,
        chars: chex.Array | None,
        *,
        train: bool,
        row_offset: chex.Numeric = 0,
    ) -> chex.Array:
        """Input vectors ``[B, L, E (+ char features)]``."""
        if train and self.word_dropout > 0 and self.num_features == 0:
            drop = time_bernoulli(
                self.make_rng("dropout"), self.word_dropout, inputs.shape, row_offset
            )
            inputs = jnp.where(drop & (inputs > self.unk_id), self.unk_id, inputs)
        x = self.embed(inputs)
        if self.char_encoder != "none":
            if chars is None:
                raise ValueError(
                    f"char_encoder={self.char_encoder!r} needs character ids: the batch has no "
                    "'chars' (the data source must provide them)"
                )
            x = jnp.concatenate([x, self.chars(chars).astype(x.dtype)], axis=-1)
        return self.embed_drop(x, deterministic=not train, row_offset=row_offset)

    def encode(
        self,
        inputs: chex.Array,
        lengths: chex.Array,
        chars: chex.Array | None = None,
        *,
        train: bool = False,
        row_offset: chex.Numeric = 0,
    ) -> tuple[chex.Array, chex.Array]:
        """Shared representation: ``(outputs [B, L, D], last [B, D])``, zero on padded steps.

        ``row_offset``: the global batch index of this batch's first row (a device's or a
        micro-batch's part of a batch): dropout draws depend on it (:mod:`mtlrnn.model.dropout`).
        """
        x = self.embed_inputs(inputs, chars, train=train, row_offset=row_offset)
        outputs, last, _ = self.trunk(x, lengths, train=train, row_offset=row_offset)
        off = not train
        outputs = self.out_drop(outputs, deterministic=off, row_offset=row_offset)
        last = self.out_drop(last[:, None], deterministic=off, row_offset=row_offset)[:, 0]
        mask = jnp.arange(outputs.shape[1])[None, :, None] < lengths[:, None, None]
        return jnp.where(mask, outputs, 0), last

    def decode(
        self, outputs: chex.Array, last: chex.Array, lengths: chex.Array
    ) -> dict[str, chex.Array]:
        """Head outputs by group name: ``[Kg, B, L, O]`` (token) or ``[Kg, B, O]`` (sequence)."""
        return {name: head(outputs, last, lengths) for name, head in self.heads.items()}

    def __call__(
        self,
        inputs: chex.Array,
        lengths: chex.Array,
        chars: chex.Array | None = None,
        *,
        train: bool = False,
        row_offset: chex.Numeric = 0,
    ) -> dict[str, chex.Array]:
        """``inputs: [B, L]`` ids or ``[B, L, F]`` features, ``lengths: [B]``, optional
        ``chars: [B, L, C]`` -> head outputs."""
        outputs, last = self.encode(inputs, lengths, chars, train=train, row_offset=row_offset)
        return self.decode(outputs, last, lengths)
