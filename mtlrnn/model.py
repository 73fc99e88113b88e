"""MultiTaskRNN: embedding -> shared recurrent trunk -> stacked task heads (Flax Linen)."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

from mtlrnn.heads import StackedHeads
from mtlrnn.heads import group_tasks
from mtlrnn.tasks import TaskSpec
from mtlrnn.trunk import Trunk


class MultiTaskRNN(nn.Module):
    """The multi-task recurrent network.

    Inputs are token ids ``[B, L]`` (embedded, id 0 is padding) when ``num_features == 0``,
    or real-valued features ``[B, L, F]`` (projected by a dense layer) otherwise.

    Attributes:
      tasks: the task specs; the order defines the ``[K]`` axis.
      vocab_size: number of token ids (ignored for feature inputs).
      num_features: ``F`` for real-valued inputs; 0 for token ids.
      embed_dim: ``E``.
      cell, hidden_size, num_layers, bidirectional, unroll, remat: see :class:`Trunk`.
      dropout: dropout between trunk layers and on the trunk output.
      embed_dropout: dropout on the embeddings.
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
    unroll: int = 1
    remat: bool = False
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.num_features > 0:
            self.embed = nn.Dense(self.embed_dim, param_dtype=self.param_dtype, dtype=self.dtype)
        else:
            self.embed = nn.Embed(
                self.vocab_size, self.embed_dim, param_dtype=self.param_dtype, dtype=self.dtype
            )
        self.trunk = Trunk(
            cell=self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            unroll=self.unroll,
            remat=self.remat,
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )
        self.heads = {
            g.name: StackedHeads(g, param_dtype=self.param_dtype, dtype=self.dtype, name=g.name)
            for g in group_tasks(self.tasks)
        }
        self.embed_drop = nn.Dropout(self.embed_dropout)
        self.out_drop = nn.Dropout(self.dropout)

    def encode(
        self, inputs: chex.Array, lengths: chex.Array, *, train: bool = False
    ) -> tuple[chex.Array, chex.Array]:
        """Shared representation: ``(outputs [B, L, D], last [B, D])``, zero on padded steps."""
        x = self.embed(inputs)
        x = self.embed_drop(x, deterministic=not train)
        outputs, last, _ = self.trunk(x, lengths, train=train)
        outputs = self.out_drop(outputs, deterministic=not train)
        last = self.out_drop(last, deterministic=not train)
        mask = jnp.arange(outputs.shape[1])[None, :, None] < lengths[:, None, None]
        return jnp.where(mask, outputs, 0), last

    def decode(
        self, outputs: chex.Array, last: chex.Array, lengths: chex.Array
    ) -> dict[str, chex.Array]:
        """Head outputs by group name: ``[Kg, B, L, O]`` (token) or ``[Kg, B, O]`` (sequence)."""
        return {name: head(outputs, last, lengths) for name, head in self.heads.items()}

    def __call__(
        self, inputs: chex.Array, lengths: chex.Array, *, train: bool = False
    ) -> dict[str, chex.Array]:
        """``inputs: [B, L]`` ids or ``[B, L, F]`` features, ``lengths: [B]`` -> head outputs."""
        outputs, last = self.encode(inputs, lengths, train=train)
        return self.decode(outputs, last, lengths)
