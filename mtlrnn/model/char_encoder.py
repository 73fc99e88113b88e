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

from mtlrnn.model.trunk import Trunk

ENCODERS: tuple[str, ...] = ("none", "cnn", "lstm")


class CharCNN(nn.Module):
    """``chars [B, L, C]`` -> ``[B, L, features]`` by convolution and max-pooling.

    Attributes:
      vocab_size: number of character ids (0 = padding).
      embed_dim: character embedding width.
      features: output width ``F`` (number of filters).
      kernel_size: convolution width in characters.
    """

    vocab_size: int
    embed_dim: int = 32
    features: int = 64
    kernel_size: int = 3
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, chars: chex.Array) -> chex.Array:
        b, length, c = chars.shape
        valid = (chars > 0)[..., None]  # [B, L, C, 1]
        x = nn.Embed(self.vocab_size, self.embed_dim, param_dtype=self.param_dtype,
                     dtype=self.dtype)(chars)
        x = x.reshape(b * length, c, self.embed_dim)
        x = nn.Conv(self.features, (self.kernel_size,), padding="SAME",
                    param_dtype=self.param_dtype, dtype=self.dtype)(x)
        x = jnp.tanh(x).reshape(b, length, c, self.features)
        # tanh is in (-1, 1): -2 marks padded characters so they never win the max.
        pooled = jnp.max(jnp.where(valid, x, -2.0), axis=2)
        return jnp.where(jnp.any(valid, axis=2), pooled, 0.0)


class CharLSTM(nn.Module):
    """``chars [B, L, C]`` -> ``[B, L, 2 * hidden_size]``: a char BiLSTM's final states.

    Attributes:
      vocab_size: number of character ids (0 = padding).
      embed_dim: character embedding width.
      hidden_size: LSTM width per direction.
    """

    vocab_size: int
    embed_dim: int = 32
    hidden_size: int = 32
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, chars: chex.Array) -> chex.Array:
        b, length, c = chars.shape
        flat = chars.reshape(b * length, c)
        char_lengths = jnp.sum(flat > 0, axis=1).astype(jnp.int32)
        x = nn.Embed(self.vocab_size, self.embed_dim, param_dtype=self.param_dtype,
                     dtype=self.dtype)(flat)
        _, last, _ = Trunk(
            cell="lstm",
            hidden_size=self.hidden_size,
            num_layers=1,
            bidirectional=True,
            param_dtype=self.param_dtype,
            dtype=self.dtype,
        )(x, char_lengths)
        last = jnp.where((char_lengths > 0)[:, None], last, 0.0)
        return last.reshape(b, length, 2 * self.hidden_size)


def char_features(encoder: str, embed_dim: int, features: int) -> int:
    """Width of the word vectors that ``encoder`` produces (0 for ``"none"``)."""
    if encoder == "cnn":
        return features
    if encoder == "lstm":
        return 2 * features
    if encoder == "none":
        return 0
    raise ValueError(f"char_encoder: must be one of {', '.join(ENCODERS)}; got {encoder!r}")
