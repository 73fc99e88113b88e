"""Recurrent cells with PyTorch's equations (nn.LSTM, nn.GRU, nn.RNN with tanh).

Every cell shares one contract: ``step(carry, gx, w_hh, b_hh) -> (carry, h)`` where
``gx = x @ w_ih + b_ih`` is the input projection of this time step, computed for all steps
at once outside the scan (one large matmul instead of L small ones). ``carry`` is a tuple of
``[B, H]`` arrays, ``h: [B, H]`` is the step's output.

Parameter layout per layer and direction (``G`` gates, ``I`` input width):

* ``w_ih: [I, G*H]``, ``w_hh: [H, G*H]``, ``b_ih: [G*H]``, ``b_hh: [G*H]``.
  These are PyTorch's ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}`` and
  ``bias_hh_l{k}`` transposed (see :mod:`mtlrnn.model.interop`).

Gate order along the ``G*H`` axis, as in PyTorch:

* LSTM (G=4): input ``i``, forget ``f``, cell ``g``, output ``o``::

      i, f, g, o = split(gx + h @ w_hh + b_hh)
      c' = sigmoid(f) * c + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c')

* GRU (G=3): reset ``r``, update ``z``, new ``n``; ``b_hh``'s ``n`` part sits inside the
  reset product, which is why both biases are kept::

      r = sigmoid(gx_r + gh_r);  z = sigmoid(gx_z + gh_z);  n = tanh(gx_n + r * gh_n)
      h' = (1 - z) * n + z * h          where gh = h @ w_hh + b_hh

* RNN (G=1): ``h' = tanh(gx + h @ w_hh + b_hh)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

Carry = tuple[chex.Array, ...]
StepFn = Callable[[Carry, chex.Array, chex.Array, chex.Array], tuple[Carry, chex.Array]]


def _lstm_step(
    carry: Carry, gx: chex.Array, w_hh: chex.Array, b_hh: chex.Array
) -> tuple[Carry, chex.Array]:
    h, c = carry
    gates = gx + h @ w_hh + b_hh
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _gru_step(
    carry: Carry, gx: chex.Array, w_hh: chex.Array, b_hh: chex.Array
) -> tuple[Carry, chex.Array]:
    (h,) = carry
    gh = h @ w_hh + b_hh
    x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return (h,), h


def _rnn_step(
    carry: Carry, gx: chex.Array, w_hh: chex.Array, b_hh: chex.Array
) -> tuple[Carry, chex.Array]:
    (h,) = carry
    h = jnp.tanh(gx + h @ w_hh + b_hh)
    return (h,), h


class Cell(NamedTuple):
    """A recurrent cell: its name, gate count, carry arity and step function.

    ``step`` is None for the linear cells (minGRU, minLSTM: no ``w_hh``, the state enters
    linearly); their recurrence is :mod:`mtlrnn.model.mincells`' scan over coefficients.
    """

    name: str
    num_gates: int
    carry_size: int
    step: StepFn | None

    @property
    def linear(self) -> bool:
        """True for minGRU / minLSTM (parallel in time, no recurrent weights)."""
        return self.step is None

    def init_carry(self, batch: int, hidden: int, dtype: jnp.dtype = jnp.float32) -> Carry:
        """Zero carry: a tuple of ``carry_size`` arrays ``[B, H]``."""
        return tuple(jnp.zeros((batch, hidden), dtype) for _ in range(self.carry_size))


#: The one registry of cells: every other module asks it (by name) what a cell is.
CELLS: dict[str, Cell] = {
    "lstm": Cell("lstm", num_gates=4, carry_size=2, step=_lstm_step),
    "gru": Cell("gru", num_gates=3, carry_size=1, step=_gru_step),
    "rnn": Cell("rnn", num_gates=1, carry_size=1, step=_rnn_step),
    # Feng et al. 2024: minGRU's gates (z, h~), minLSTM's (f, i, h~).
    "mingru": Cell("mingru", num_gates=2, carry_size=1, step=None),
    "minlstm": Cell("minlstm", num_gates=3, carry_size=1, step=None),
}
#: Cells with a recurrent step (``w_hh``): the fused and autodiff recurrences run these.
CLASSIC_CELLS: tuple[str, ...] = tuple(n for n, c in CELLS.items() if not c.linear)
#: Cells linear in the state: :mod:`mtlrnn.model.mincells` runs these.
LINEAR_CELLS: tuple[str, ...] = tuple(n for n, c in CELLS.items() if c.linear)


def get_cell(name: str, *, among: tuple[str, ...] = tuple(CELLS)) -> Cell:
    """The cell called ``name``; ValueError naming the allowed ones unless it is in ``among``
    (e.g. :data:`CLASSIC_CELLS` where only cells with a recurrent step fit)."""
    if name not in among:
        raise ValueError(f"unknown cell {name!r}; allowed: {', '.join(among)}")
    return CELLS[name]


def reference_layer(
    cell: Cell,
    params: dict[str, chex.Array],
    x: chex.Array,
    lengths: chex.Array,
    *,
    reverse: bool = False,
) -> tuple[chex.Array, Carry]:
    """Slow, obviously-correct reference: one direction of one layer, stepped in Python.

    Each sequence is run on its own valid prefix only (reversed for ``reverse``), so no
    masking logic is shared with the fast path it checks.

    Args:
      cell: the cell.
      params: ``w_ih [I, G*H]``, ``w_hh [H, G*H]``, ``b_ih [G*H]``, ``b_hh [G*H]``.
      x: ``[B, L, I]`` inputs.
      lengths: ``[B]`` valid lengths (host integers).
    Returns:
      ``(outputs [B, L, H], final carry)``: padded steps are zero; the final carry is the one
      after the last valid step (``[B, H]`` arrays).
    """
    batch, length, _ = x.shape
    hidden = params["w_hh"].shape[0]
    outputs = jnp.zeros((batch, length, hidden), x.dtype)
    finals = []
    for b in range(batch):
        n = int(lengths[b])
        carry = cell.init_carry(1, hidden, x.dtype)
        steps = range(n - 1, -1, -1) if reverse else range(n)
        for t in steps:
            gx = x[b : b + 1, t] @ params["w_ih"] + params["b_ih"]
            carry, h = cell.step(carry, gx, params["w_hh"], params["b_hh"])
            outputs = outputs.at[b, t].set(h[0])
        finals.append(carry)
    final = tuple(jnp.concatenate([c[i] for c in finals], axis=0) for i in range(cell.carry_size))
    return outputs, final
