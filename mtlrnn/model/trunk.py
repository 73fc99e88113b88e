"""The shared recurrent trunk: stacked (bi)directional layers, each one scan over time.

Data flow of one layer (both directions at once, ``D`` = 1 or 2)::

    x [B, L, I] --time-major, bwd slot time-reversed--> xt [L, D, B, I]
      --one matmul--> gx [L, D, B, G*H]
      --recurrence--> ys [L, D, B, H] --bwd slot reversed back, concat--> y [B, L, D*H]

The recurrence is one of

* ``fused`` (default, classic cells): :func:`mtlrnn.model.fused.fused_recurrence`, a custom VJP
  whose weight gradient is one matmul after the backward scan;
* ``autodiff`` (classic cells): the cell's step in a plain ``lax.scan`` that JAX
  differentiates -- the reference every fast path is tested against;
* linear cells (minGRU, minLSTM): :mod:`mtlrnn.model.mincells`, sequential or associative scan.

Padding: step ``t`` of row ``b`` is valid when ``t < lengths[b]``. On a padded step the carry
is left unchanged and the output is zero, so padding never leaks into states or outputs; the
final carry is the one after the last valid step. The backward direction reads time reversed:
its carry stays at the initial zeros through the padded tail and starts exactly at the last
valid step, so no per-row flipping is needed.

Rematerialisation (``remat``): the layer runs as an outer scan over chunks of ``remat_chunk``
steps under ``jax.checkpoint``; the backward pass keeps only each chunk's input carry and
recomputes the chunk (input projection included) before differentiating it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mtlrnn.model.cells import CLASSIC_CELLS
from mtlrnn.model.cells import Carry
from mtlrnn.model.cells import get_cell
from mtlrnn.model.dropout import TimeDropout
from mtlrnn.model.fused import fused_recurrence
from mtlrnn.model.mincells import choose_scan
from mtlrnn.model.mincells import coefficients
from mtlrnn.model.mincells import linear_scan
from mtlrnn.model.spec import ModelConfig

#: The config's dtype names (float64 for tests that run with jax_enable_x64).
DTYPES: dict[str, jnp.dtype] = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float64": jnp.float64,
}
IMPLS = ("fused", "autodiff")


def _torch_uniform(scale: float) -> nn.initializers.Initializer:
    """PyTorch's RNN init: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""

    def init(
        key: chex.PRNGKey, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
    ) -> chex.Array:
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def default_unroll(platform: str) -> int:
    """``lax.scan`` unroll factor used when ``unroll=0`` ("auto").

    CPU: 1. Measured on a 2-core AMD EPYC (jax 0.10.2, B=32, H=256, L=64, fused LSTM):
    forward 7.9 / 8.0 / 8.3 / 8.3 ms and forward+backward 27.8 / 29.9 / 34.4 / 43.5 ms for
    unroll 1 / 2 / 4 / 8: unrolling only adds code for XLA:CPU's thunk executor to run.
    GPU/TPU: 4, the usual choice to amortise loop overhead per kernel launch (not yet timed
    here; benchmarks/run.py --device gpu measures it).
    """
    return 1 if platform == "cpu" else 4


def _autodiff_recurrence(
    cell: str,
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    carry0: Carry,
    unroll: int,
) -> tuple[chex.Array, Carry]:
    """The reference: :mod:`mtlrnn.model.cells`' step in a plain ``lax.scan``, differentiated
    by JAX.

    Same contract as :func:`mtlrnn.model.fused.fused_recurrence` (time-major, direction axis ``D``).
    """
    step = get_cell(cell, among=CLASSIC_CELLS).step
    b_hh = b_hh[:, None, :]

    def body(carry: Carry, inputs: tuple[chex.Array, chex.Array]) -> tuple[Carry, chex.Array]:
        gx_t, m_t = inputs
        new_carry, h = step(carry, gx_t, w_hh, b_hh)
        m = m_t[..., None]
        carry = tuple(jnp.where(m, n, o) for n, o in zip(new_carry, carry, strict=True))
        return carry, jnp.where(m, h, jnp.zeros_like(h))

    final, ys = jax.lax.scan(body, tuple(carry0), (gx, mask), unroll=unroll)
    return ys, final


def _min_recurrence(
    cell: str,
    gx: chex.Array,
    mask: chex.Array,
    carry0: Carry | None,
    method: str,
    unroll: int,
) -> tuple[chex.Array, Carry]:
    """minGRU / minLSTM over ``[L, D, B, G*H]`` (directions folded into the batch);
    ``carry0`` None means a zero initial state."""
    length, dirs, batch, _ = gx.shape
    h0 = None if carry0 is None else carry0[0].reshape(dirs * batch, -1)
    # mincells.min_layer without its where() over gx: padded inputs are already zero here,
    # so padded gx is the (finite) bias, and a second pass over [L, B, G*H] costs ~8% at
    # L=1024.
    method = choose_scan(method, platform=jax.default_backend(), length=length)
    a, b = coefficients(cell, gx.reshape(length, dirs * batch, -1))
    ys, final = linear_scan(
        a, b, mask.reshape(length, dirs * batch), method=method, unroll=unroll, h0=h0
    )
    ys = ys.reshape(length, dirs, batch, -1).astype(gx.dtype)
    return ys, (final.reshape(dirs, batch, -1).astype(gx.dtype),)


def _zero_carry(cell: str, dirs: int, batch: int, hidden: int, dtype: jnp.dtype) -> Carry:
    zeros = jnp.zeros((dirs, batch, hidden), dtype)
    return (zeros,) * get_cell(cell).carry_size


def _time_major(x: chex.Array, dirs: int) -> chex.Array:
    """``[B, L, ...] -> [L, D, B, ...]``, the backward slot (if any) reversed in time."""
    xt = jnp.swapaxes(x, 0, 1)
    return jnp.stack([xt, xt[::-1]], axis=1) if dirs == 2 else xt[:, None]


def _stacked(params: list[dict[str, chex.Array]], name: str) -> chex.Array:
    return jnp.stack([p[name] for p in params])


def recurrent_layer(
    spec: ModelConfig,
    params: list[dict[str, chex.Array]],
    x: chex.Array,
    mask: chex.Array,
) -> tuple[chex.Array, list[Carry]]:
    """One layer, all its directions in one scan.

    Args:
      spec: the recurrence's choices: ``cell``, ``impl`` (classic cells: ``fused``,
        :mod:`mtlrnn.model.fused`'s hand-written backward, or ``autodiff``, a plain
        ``lax.scan`` differentiated by JAX: the reference), ``scan`` (linear cells: auto,
        sequential or associative), ``unroll`` (0 = :func:`default_unroll`), ``remat``
        (recompute the layer chunk by chunk in the backward pass, keeping only the carry at
        chunk boundaries: memory ~ L/chunk + chunk steps instead of L) and ``remat_chunk``
        (0 = ceil(sqrt(L))). Its sizes are read from ``params``.
      params: one dict per direction (forward first): ``w_ih [I, G*H]``, ``b_ih [G*H]`` and,
        for classic cells, ``w_hh [H, G*H]``, ``b_hh [G*H]``; already in the compute dtype.
      x: ``[B, L, I]`` inputs.
      mask: ``[B, L]`` bool, True on valid steps.
    Returns:
      ``(y [B, L, D*H], finals)``: ``y`` is zero on padded steps, directions concatenated
      (forward first); ``finals[d]`` is direction ``d``'s carry after its last valid step.
    """
    if spec.impl not in IMPLS:
        raise ValueError(f"impl: must be one of {', '.join(IMPLS)}; got {spec.impl!r}")
    cell = get_cell(spec.cell)
    dirs = len(params)
    # Zero padded inputs first: a masked step's cotangent is 0, and 0 * NaN would still
    # poison the weight gradient if padding held NaN (e.g. padded time series).
    x = jnp.where(mask[:, :, None], x, jnp.zeros_like(x))
    # Time-major, one slot per direction; the backward direction reads time reversed, so
    # right padding comes first for it and its carry stays at the initial zeros until its
    # first valid step (no per-row flipping).
    mt = _time_major(mask, dirs)
    w_ih, b_ih = _stacked(params, "w_ih"), _stacked(params, "b_ih")
    w_hh = None if cell.linear else _stacked(params, "w_hh")
    b_hh = None if cell.linear else _stacked(params, "b_hh")
    unroll = spec.unroll or default_unroll(jax.default_backend())

    def recurrence(
        gx: chex.Array, mc: chex.Array, carry: Carry | None
    ) -> tuple[chex.Array, Carry]:
        if cell.linear:
            return _min_recurrence(cell.name, gx, mc, carry, spec.scan, unroll)
        if carry is None:
            carry = _zero_carry(cell.name, dirs, gx.shape[2], w_hh.shape[1], gx.dtype)
        if spec.impl == "fused":
            return fused_recurrence(cell.name, gx, w_hh, b_hh, mc, carry0=carry, unroll=unroll)
        return _autodiff_recurrence(cell.name, gx, w_hh, b_hh, mc, carry, unroll)

    if spec.remat:
        hidden = w_ih.shape[-1] // cell.num_gates
        carry0 = _zero_carry(cell.name, dirs, x.shape[0], hidden, x.dtype)
        ys, final = _rematerialised(recurrence, w_ih, b_ih, x, mt, carry0, spec.remat_chunk)
    else:
        ys, final = recurrence(_projected(x, w_ih, b_ih), mt, None)
    outs = [ys[:, 0]] if dirs == 1 else [ys[:, 0], ys[::-1, 1]]
    y = jnp.swapaxes(jnp.concatenate(outs, axis=-1), 0, 1)
    finals = [tuple(c[d] for c in final) for d in range(dirs)]
    return y, finals


def _projected(x: chex.Array, w_ih: chex.Array, b_ih: chex.Array) -> chex.Array:
    """``[B, L, I] -> gx [L, D, B, G*H]``: one ``[L*B, I] x [I, D*G*H]`` matmul projects
    every step of both directions; the backward direction's half is then reversed in time."""
    batch, length, _ = x.shape
    dirs, width = w_ih.shape[0], w_ih.shape[-1]
    xt = jnp.swapaxes(x, 0, 1).reshape(length * batch, -1)
    gx = xt @ jnp.concatenate(list(w_ih), axis=-1) + b_ih.reshape(-1)
    gx = gx.reshape(length, batch, dirs * width)
    if dirs == 2:
        return jnp.stack([gx[..., :width], gx[::-1, :, width:]], axis=1)
    return gx[:, None]


def _rematerialised(
    recurrence: Callable[[chex.Array, chex.Array, Carry | None], tuple[chex.Array, Carry]],
    w_ih: chex.Array,
    b_ih: chex.Array,
    x: chex.Array,
    mt: chex.Array,
    carry0: Carry,
    remat_chunk: int,
) -> tuple[chex.Array, Carry]:
    """The layer as an outer scan over chunks of time under ``jax.checkpoint``: the backward
    pass keeps each chunk's input carry and recomputes the chunk, input projection included."""
    dirs, length = w_ih.shape[0], x.shape[1]
    chunk = remat_chunk or max(1, math.ceil(math.sqrt(length)))
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    xt = _time_major(x, dirs)
    if pad:  # padded steps are masked: the carry passes through, outputs are zero
        xt = jnp.pad(xt, ((0, pad), (0, 0), (0, 0), (0, 0)))
        mt = jnp.pad(mt, ((0, pad), (0, 0), (0, 0)))
    xt = xt.reshape(chunks, chunk, *xt.shape[1:])
    mt = mt.reshape(chunks, chunk, *mt.shape[1:])

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(carry: Carry, inputs: tuple[chex.Array, chex.Array]) -> tuple[Carry, chex.Array]:
        xc, mc = inputs
        gx = jnp.einsum("ldbi,dig->ldbg", xc, w_ih) + b_ih[None, :, None, :]
        ys, carry = recurrence(gx, mc, carry)
        return carry, ys

    final, ys = jax.lax.scan(body, carry0, (xt, mt))
    return ys.reshape(chunks * chunk, *ys.shape[2:])[:length], final


class DirectionParams(nn.Module):
    """The parameters of one direction of one layer (PyTorch's init and layout)."""

    cell: str
    hidden_size: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_size: int) -> dict[str, chex.Array]:
        """``{"w_ih": [I, G*H], "b_ih": [G*H]}`` plus ``w_hh [H, G*H]``, ``b_hh [G*H]`` for
        the classic cells."""
        cell = get_cell(self.cell)
        width = cell.num_gates * self.hidden_size
        init = _torch_uniform(self.hidden_size**-0.5)
        shapes = {"w_ih": (input_size, width)}
        if not cell.linear:
            shapes["w_hh"] = (self.hidden_size, width)
        shapes["b_ih"] = (width,)
        if not cell.linear:
            shapes["b_hh"] = (width,)
        return {
            name: self.param(name, init, shape, self.param_dtype) for name, shape in shapes.items()
        }


class Trunk(nn.Module):
    """Stacked recurrent layers with optional bidirectionality and dropout between layers.

    Parameters live under ``layer_{l}_fwd`` and ``layer_{l}_bwd``.

    Attributes:
      spec: the model's hyper-parameters (:class:`~mtlrnn.model.spec.ModelConfig`); the trunk
        reads ``cell`` (classic ``lstm``, ``gru``, ``rnn`` or the linear ``mingru``,
        ``minlstm``: :mod:`mtlrnn.model.mincells`), ``hidden_size`` (``H`` per direction),
        ``num_layers``, ``bidirectional`` (outputs ``[fwd, bwd]`` concatenated: width
        ``2H``), ``dropout`` (on each layer's output except the last, as in PyTorch; drawn
        step by step, :class:`mtlrnn.model.dropout.TimeDropout`, so padding in time changes
        no draw on valid steps), the recurrence's ``impl``, ``scan``, ``unroll``, ``remat``
        and ``remat_chunk`` (:func:`recurrent_layer`) and the ``param_dtype`` /
        ``compute_dtype`` names.
    """

    spec: ModelConfig

    @property
    def output_size(self) -> int:
        """Width of the trunk output: ``H`` or ``2H`` when bidirectional."""
        return self.spec.hidden_size * (2 if self.spec.bidirectional else 1)

    @nn.compact
    def __call__(
        self,
        x: chex.Array,
        lengths: chex.Array,
        *,
        train: bool = False,
        row_offset: chex.Numeric = 0,
    ) -> tuple[chex.Array, chex.Array, list[dict[str, Carry]]]:
        """Run the trunk.

        Args:
          x: ``[B, L, I]`` inputs.
          lengths: ``[B]`` int valid lengths (0 allowed: the row is all padding).
          train: enables dropout (needs the ``dropout`` RNG).
          row_offset: the global batch index of row 0 (dropout draws depend on it).
        Returns:
          ``outputs [B, L, D]`` (zero on padded steps), ``last [B, D]`` (the top layer's
          final hidden state per direction, i.e. the last valid state) and the final carries
          per layer, ``[{"fwd": carry, "bwd": carry}, ...]``. ``D`` is ``output_size``.
        """
        spec = self.spec
        dtype = DTYPES[spec.compute_dtype]
        mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
        finals: list[dict[str, Carry]] = []
        directions = ("fwd", "bwd") if spec.bidirectional else ("fwd",)
        for layer in range(spec.num_layers):
            if layer > 0 and spec.dropout > 0:
                x = TimeDropout(spec.dropout)(x, deterministic=not train, row_offset=row_offset)
                x = jnp.where(mask[:, :, None], x, 0)
            params = [
                jax.tree.map(
                    lambda p: p.astype(dtype),
                    DirectionParams(
                        spec.cell,
                        spec.hidden_size,
                        DTYPES[spec.param_dtype],
                        name=f"layer_{layer}_{direction}",
                    )(x.shape[-1]),
                )
                for direction in directions
            ]
            x, layer_finals = recurrent_layer(spec, params, x.astype(dtype), mask)
            finals.append(dict(zip(directions, layer_finals, strict=True)))
        last = jnp.concatenate([finals[-1][d][0] for d in directions], axis=-1)
        return x, last, finals
