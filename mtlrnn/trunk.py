"""The shared recurrent trunk: stacked (bi)directional layers, each one ``lax.scan`` over time.

Data flow of one layer and direction::

    x [B, L, I] --one matmul--> gx [L, B, G*H] --lax.scan(cell.step)--> y [L, B, H]

Padding: step ``t`` of row ``b`` is valid when ``t < lengths[b]``. On a padded step the carry
is left unchanged and the output is zero, so padding never leaks into states or outputs; the
final carry is the one after the last valid step. A backward direction scans with
``reverse=True``: its carry stays at the initial zeros through the padded tail and starts
exactly at the last valid step, so no per-row flipping is needed.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mtlrnn.cells import Carry
from mtlrnn.cells import Cell
from mtlrnn.cells import get_cell

DTYPES: dict[str, jnp.dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _torch_uniform(scale: float) -> nn.initializers.Initializer:
    """PyTorch's RNN init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""

    def init(
        key: chex.PRNGKey, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
    ) -> chex.Array:
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def scan_direction(
    cell: Cell,
    params: dict[str, chex.Array],
    x: chex.Array,
    mask: chex.Array,
    *,
    reverse: bool,
    unroll: int = 1,
    remat: bool = False,
) -> tuple[chex.Array, Carry]:
    """One direction of one layer over a padded batch.

    Args:
      cell: the recurrent cell.
      params: ``w_ih [I, G*H]``, ``w_hh [H, G*H]``, ``b_ih [G*H]``, ``b_hh [G*H]``, already
        in the compute dtype.
      x: ``[B, L, I]`` inputs.
      mask: ``[B, L]`` bool, True on valid steps.
      reverse: scan from the last step to the first.
      unroll: ``lax.scan`` unroll factor.
      remat: recompute each step in the backward pass instead of storing its activations.
    Returns:
      ``(y [B, L, H], final carry)``; ``y`` is zero on padded steps.
    """
    batch = x.shape[0]
    hidden = params["w_hh"].shape[0]
    # Zero padded inputs first: a masked step's cotangent is 0, and 0 * NaN would still
    # poison the weight gradient if padding held NaN (e.g. padded time series).
    x = jnp.where(mask[:, :, None], x, jnp.zeros_like(x))
    # The input projection of every step in one matmul, time-major for the scan.
    gx = jnp.einsum("bli,ig->lbg", x, params["w_ih"]) + params["b_ih"]
    mask_t = jnp.swapaxes(mask, 0, 1)[:, :, None]  # [L, B, 1]
    w_hh, b_hh = params["w_hh"], params["b_hh"]

    def body(carry: Carry, inputs: tuple[chex.Array, chex.Array]) -> tuple[Carry, chex.Array]:
        gx_t, m_t = inputs
        new_carry, h = cell.step(carry, gx_t, w_hh, b_hh)
        carry = tuple(jnp.where(m_t, n, o) for n, o in zip(new_carry, carry, strict=True))
        return carry, jnp.where(m_t, h, jnp.zeros_like(h))

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    carry0 = cell.init_carry(batch, hidden, x.dtype)
    final, ys = jax.lax.scan(body, carry0, (gx, mask_t), reverse=reverse, unroll=unroll)
    return jnp.swapaxes(ys, 0, 1), final


class RecurrentDirection(nn.Module):
    """Parameters of one direction of one layer, and its scan."""

    cell: str
    hidden_size: int
    reverse: bool = False
    unroll: int = 1
    remat: bool = False
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: chex.Array, mask: chex.Array) -> tuple[chex.Array, Carry]:
        """``x: [B, L, I]``, ``mask: [B, L]`` -> ``(y [B, L, H], final carry)``."""
        cell = get_cell(self.cell)
        width = cell.num_gates * self.hidden_size
        init = _torch_uniform(self.hidden_size**-0.5)
        shapes = {
            "w_ih": (x.shape[-1], width),
            "w_hh": (self.hidden_size, width),
            "b_ih": (width,),
            "b_hh": (width,),
        }
        params = {
            name: self.param(name, init, shape, self.param_dtype).astype(self.dtype)
            for name, shape in shapes.items()
        }
        return scan_direction(
            cell,
            params,
            x.astype(self.dtype),
            mask,
            reverse=self.reverse,
            unroll=self.unroll,
            remat=self.remat,
        )


class Trunk(nn.Module):
    """Stacked recurrent layers with optional bidirectionality and dropout between layers.

    Parameters live under ``layer_{l}/fwd`` and ``layer_{l}/bwd``.

    Attributes:
      cell: ``lstm``, ``gru`` or ``rnn``.
      hidden_size: ``H`` per direction.
      num_layers: stacked layers.
      bidirectional: add a backward direction per layer; outputs are ``[fwd, bwd]``
        concatenated, so the output width is ``2H``.
      dropout: dropout rate on each layer's output except the last (as in PyTorch).
      unroll: ``lax.scan`` unroll factor.
      remat: rematerialise scan steps in the backward pass (less memory, more compute).
      param_dtype: storage dtype of the parameters.
      dtype: compute dtype.
    """

    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    unroll: int = 1
    remat: bool = False
    param_dtype: jnp.dtype = jnp.float32
    dtype: jnp.dtype = jnp.float32

    @property
    def output_size(self) -> int:
        """Width of the trunk output: ``H`` or ``2H`` when bidirectional."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @nn.compact
    def __call__(
        self, x: chex.Array, lengths: chex.Array, *, train: bool = False
    ) -> tuple[chex.Array, chex.Array, list[dict[str, Carry]]]:
        """Run the trunk.

        Args:
          x: ``[B, L, I]`` inputs.
          lengths: ``[B]`` int valid lengths (0 allowed: the row is all padding).
          train: enables dropout (needs the ``dropout`` RNG).
        Returns:
          ``outputs [B, L, D]`` (zero on padded steps), ``last [B, D]`` (the top layer's
          final hidden state per direction, i.e. the last valid state) and the final carries
          per layer, ``[{"fwd": carry, "bwd": carry}, ...]``. ``D`` is ``output_size``.
        """
        mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
        finals: list[dict[str, Carry]] = []
        directions = ("fwd", "bwd") if self.bidirectional else ("fwd",)
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
                x = jnp.where(mask[:, :, None], x, 0)
            outs, carries = [], {}
            for direction in directions:
                y, carry = RecurrentDirection(
                    cell=self.cell,
                    hidden_size=self.hidden_size,
                    reverse=direction == "bwd",
                    unroll=self.unroll,
                    remat=self.remat,
                    param_dtype=self.param_dtype,
                    dtype=self.dtype,
                    name=f"layer_{layer}_{direction}",
                )(x, mask)
                outs.append(y)
                carries[direction] = carry
            x = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
            finals.append(carries)
        last = jnp.concatenate([finals[-1][d][0] for d in directions], axis=-1)
        return x, last, finals
