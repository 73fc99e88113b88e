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
from mtlrnn.model.spec import ModelConfig
from mtlrnn.model.trunk import DTYPES
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
      spec: the hyper-parameters (:class:`~mtlrnn.model.spec.ModelConfig`, the config's
        ``model:`` section): ``embed_dim``; the trunk's (:class:`Trunk`); ``dropout``
        between trunk layers and on the trunk output; ``embed_dropout`` on the embeddings;
        ``word_dropout``, in training the probability that a word id is replaced by
        ``unk_id`` (so the model learns to tag unknown words from context and characters);
        ``char_encoder`` (``none``, ``cnn``: :class:`CharCNN`, ``lstm``: :class:`CharLSTM`)
        and its sizes; the dtypes. Every dropout mask is drawn step by step
        (:mod:`mtlrnn.model.dropout`): padding a batch to a longer ``L`` changes no draw on
        its valid steps.
      vocab_size: number of token ids (ignored for feature inputs).
      num_features: ``F`` for real-valued inputs; 0 for token ids.
      unk_id: the unknown-word id used by ``word_dropout``.
      char_vocab_size: number of character ids (with a character encoder).

    The data decides ``tasks``, ``vocab_size``, ``num_features``, ``unk_id`` and
    ``char_vocab_size``; everything else is in ``spec``.
    """

    tasks: tuple[TaskSpec, ...]
    spec: ModelConfig = ModelConfig()
    vocab_size: int = 0
    num_features: int = 0
    unk_id: int = 1
    char_vocab_size: int = 0

    def setup(self) -> None:
        spec = self.spec
        dtypes = {"param_dtype": DTYPES[spec.param_dtype], "dtype": DTYPES[spec.compute_dtype]}
        if self.num_features > 0:
            self.embed = nn.Dense(spec.embed_dim, **dtypes)
        else:
            self.embed = nn.Embed(self.vocab_size, spec.embed_dim, **dtypes)
        encoders = {"cnn": CharCNN, "lstm": CharLSTM}
        if spec.char_encoder in encoders:
            self.chars = encoders[spec.char_encoder](self.char_vocab_size, spec)
        elif spec.char_encoder != "none":
            raise ValueError(
                f"char_encoder: must be one of none, cnn, lstm; got {spec.char_encoder!r}"
            )
        self.trunk = Trunk(spec)
        self.heads = {
            g.name: StackedHeads(g, name=g.name, **dtypes) for g in group_tasks(self.tasks)
        }
        # Masks drawn step by step: padding a batch to a longer bucket changes no draw.
        self.embed_drop = TimeDropout(spec.embed_dropout)
        self.out_drop = TimeDropout(spec.dropout)

    def embed_inputs(
        self,
        inputs: chex.Array,
        chars: chex.Array | None,
        *,
        train: bool,
        row_offset: chex.Numeric = 0,
    ) -> chex.Array:
        """Input vectors ``[B, L, E (+ char features)]``."""
        spec = self.spec
        if train and spec.word_dropout > 0 and self.num_features == 0:
            drop = time_bernoulli(
                self.make_rng("dropout"), spec.word_dropout, inputs.shape, row_offset
            )
            inputs = jnp.where(drop & (inputs > self.unk_id), self.unk_id, inputs)
        x = self.embed(inputs)
        if spec.char_encoder != "none":
            if chars is None:
                raise ValueError(
                    f"char_encoder={spec.char_encoder!r} needs character ids: the batch has no "
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
