"""Character-level word encoders: one vector per word from its characters.

Both encoders map character ids ``chars: [B, L, C]`` (``C`` characters per word, id 0 is
padding) to word vectors ``[B, L, F]``; a word with no characters (a padded step) gets zeros.
They are what lets a tagger label rare and unseen words from their spelling (suffixes,
capitalisation, digits, hyphens).

- :class:`CharCNN`: character embeddings, one 1-D convolution over the characters of a word
  (``same`` padding), tanh, max over the word's real characters (Ma & Hovy 2016; Kim et al.
  2016). Cheap on every platform.
- :class:`CharLSTM`: a bidirectional LSTM over the characters of each word, whose two final
  states are concatenated (Plank et al. 2016; Lample et al. 2016). It reuses the project's
  :class:`~mtlrnn.model.trunk.Trunk`, so words are ``B * L`` sequences of length ``C``.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

from mtlrnn.model.spec import ModelConfig
from mtlrnn.model.trunk import DTYPES
from mtlrnn.model.trunk import Trunk


class CharCNN(nn.Module):
    """``chars [B, L, C]`` -> ``[B, L, char_features]`` by convolution and max-pooling.

    Attributes:
      vocab_size: number of character ids (0 = padding).
      spec: the model's hyper-parameters: ``char_embed_dim`` (character embedding width),
        ``char_features`` (filters: the output width), ``char_kernel`` (convolution width in
        characters) and the dtypes.
    """

    vocab_size: int
    spec: ModelConfig

    @nn.compact
    def __call__(self, chars: chex.Array) -> chex.Array:
        spec = self.spec
        dtypes = {"param_dtype": DTYPES[spec.param_dtype], "dtype": DTYPES[spec.compute_dtype]}
        b, length, c = chars.shape
        valid = (chars > 0)[..., None]  # [B, L, C, 1]
        x = nn.Embed(self.vocab_size, spec.char_embed_dim, **dtypes)(chars)
        x = x.reshape(b * length, c, spec.char_embed_dim)
        x = nn.Conv(spec.char_features, (spec.char_kernel,), padding="SAME", **dtypes)(x)
        x = jnp.tanh(x).reshape(b, length, c, spec.char_features)
        # tanh is in (-1, 1): -2 marks padded characters so they never win the max.
        pooled = jnp.max(jnp.where(valid, x, -2.0), axis=2)
        return jnp.where(jnp.any(valid, axis=2), pooled, 0.0)


class CharLSTM(nn.Module):
    """``chars [B, L, C]`` -> ``[B, L, 2 * char_features]``: a char BiLSTM's final states.

    Attributes:
      vocab_size: number of character ids (0 = padding).
      spec: the model's hyper-parameters: ``char_embed_dim`` (character embedding width),
        ``char_features`` (LSTM width per direction) and the dtypes; the char LSTM is one
        bidirectional fused layer whatever the word-level trunk is.
    """

    vocab_size: int
    spec: ModelConfig

    @nn.compact
    def __call__(self, chars: chex.Array) -> chex.Array:
        spec = self.spec
        b, length, c = chars.shape
        flat = chars.reshape(b * length, c)
        char_lengths = jnp.sum(flat > 0, axis=1).astype(jnp.int32)
        x = nn.Embed(
            self.vocab_size,
            spec.char_embed_dim,
            param_dtype=DTYPES[spec.param_dtype],
            dtype=DTYPES[spec.compute_dtype],
        )(flat)
        trunk = ModelConfig(
            cell="lstm",
            hidden_size=spec.char_features,
            num_layers=1,
            bidirectional=True,
            dropout=0.0,
            param_dtype=spec.param_dtype,
            compute_dtype=spec.compute_dtype,
        )
        _, last, _ = Trunk(trunk)(x, char_lengths)
        last = jnp.where((char_lengths > 0)[:, None], last, 0.0)
        return last.reshape(b, length, 2 * spec.char_features)
