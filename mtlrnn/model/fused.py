"""Fused recurrences with a hand-written backward pass, in the style of cuDNN's RNN kernels.

The plain trunk (:func:`mtlrnn.model.trunk.scan_direction`) lets JAX differentiate through
``lax.scan``: the backward scan then computes the recurrent weight gradient step by step
(``L`` small ``[H, B] x [B, G*H]`` products accumulated in the loop carry) and keeps every
intermediate of the cell. Here the recurrence is a :func:`jax.custom_vjp` whose

* forward scan does only the recurrent matmul and one fused pass over the gates per step,
  saving the activated gates and the carries;
* backward scan does only the transposed recurrent matmul ``dgates @ W_hh^T`` and the gate
  derivatives per step, and emits ``dgates`` for every step;
* weight gradient is one large matmul after the backward scan:
  ``dW_hh = sum_t h_{t-1}^T dgates_t`` over all ``L * B`` rows at once.

The input projection ``gx = x @ W_ih + b_ih`` for all steps is done by the caller before the
scan, so ``dx`` and ``dW_ih`` are also single large matmuls (autodiff of that einsum). Both
directions of a bidirectional layer run in one scan: a leading direction axis ``D`` on every
array, the backward direction's inputs flipped in time by the caller.

Shapes (``L`` steps, ``D`` directions, ``B`` batch, ``H`` hidden, ``G`` gate blocks)::

    gx [L, D, B, G*H]   w_hh [D, H, G*H]   b_hh [D, G*H]   mask [L, D, B] (bool)
      -> ys [L, D, B, H] (zero on masked steps), final carry: tuple of [D, B, H]

Both time loops are :func:`_scan`, ``lax.scan``'s semantics with inputs read and outputs
written by index, so that under ``jax.vmap`` (a population of seeds, ``train.num_seeds``)
the seed axis stays in front of every ``[L, ...]`` array instead of being transposed behind
the time axis around each loop.

Masking is the trunk's: on a masked step the carry is unchanged and the output is zero.
Equations and gate order are :mod:`mtlrnn.model.cells`' (PyTorch's). The reference for every
gradient here is ``jax.grad`` of the plain scan; tests/test_fused.py compares them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

from mtlrnn.model.cells import CLASSIC_CELLS
from mtlrnn.model.cells import Carry
from mtlrnn.model.cells import get_cell


def _bdot(h: chex.Array, w: chex.Array) -> chex.Array:
    """``[D, B, H] x [D, H, N] -> [D, B, N]``: one matmul per direction (a plain 2-D matmul
    for one direction, which XLA:CPU runs faster than a batched one)."""
    if h.shape[0] == 1:
        return (h[0] @ w[0])[None]
    return jnp.einsum("dbh,dhn->dbn", h, w)


def _shift(seq: chex.Array, first: chex.Array) -> chex.Array:
    """``seq[t - 1]`` for every ``t`` along axis 0, ``first`` (the initial carry) at ``t = 0``."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _where(m: chex.Array, a: chex.Array, b: chex.Array) -> chex.Array:
    return jnp.where(m[..., None], a, b)


def _scan(
    body: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any,
    *,
    reverse: bool = False,
    unroll: int = 1,
) -> tuple[Any, Any]:
    """``jax.lax.scan(body, carry, xs, reverse=reverse, unroll=unroll)`` over axis 0, with
    ``xs`` read and the outputs written by time index inside the loop instead of scanned.

    The same values as ``lax.scan`` (its reference; tests/test_population_step.py). The
    difference is the layout under ``jax.vmap`` (the population step, ``train.num_seeds``):
    ``lax.scan`` moves the batch axis of ``xs`` and of the stacked outputs behind the time
    axis, so every vmapped scan transposes its ``[L, ...]`` inputs in and its outputs out, a
    full copy of each (about a sixth of the vmapped step at S=4 on CPU). Here ``xs`` are loop
    constants and the outputs loop-carried buffers, which ``vmap`` keeps batch-first, and each
    step reads and writes its slice in place (XLA turns vmap's one-index gathers and scatters
    back into dynamic-slice and dynamic-update-slice). Un-vmapped, both lower to the same loop.
    """
    length = jax.tree.leaves(xs)[0].shape[0]
    first = jax.tree.map(lambda a: a[0], xs)
    out_shapes = jax.eval_shape(lambda c, x: body(c, x)[1], carry, first)
    outs = jax.tree.map(lambda o: jnp.zeros((length, *o.shape), o.dtype), out_shapes)

    def step(i: chex.Array, state: tuple[Any, Any]) -> tuple[Any, Any]:
        c, ys = state
        t = length - 1 - i if reverse else i
        x_t = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, t, 0, keepdims=False), xs)
        c, y = body(c, x_t)
        ys = jax.tree.map(lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, t, 0), ys, y)
        return c, ys

    return jax.lax.fori_loop(0, length, step, (carry, outs), unroll=unroll)


# ---------------------------------------------------------------------------------- forward


def _lstm_scale(hidden: int, dtype: jnp.dtype) -> chex.Array:
    """``[G*H]`` column scale: 2 on the cell-input block ``g``, 1 elsewhere.

    With the ``g`` pre-activations doubled, one sigmoid over all ``4H`` columns yields every
    gate: ``tanh(x) = 2 * sigmoid(2x) - 1``. One transcendental pass instead of two, and the
    saved activations are a single array.
    """
    ones = jnp.ones((hidden,), dtype)
    return jnp.concatenate([ones, ones, 2 * ones, ones])


def _lstm_forward(
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    carry0: Carry,
    unroll: int,
) -> tuple[tuple[chex.Array, ...], tuple[chex.Array, ...]]:
    hidden = w_hh.shape[1]
    scale = _lstm_scale(hidden, gx.dtype)
    # Both biases act the same way: fold them into gx once, outside the scan; the g-block
    # scaling is folded into gx and into a scaled copy of w_hh (exact: a power of two).
    gx = (gx + b_hh[None, :, None, :]) * scale
    w_scaled = w_hh * scale

    def step(carry: Carry, inputs: tuple[chex.Array, chex.Array]) -> tuple[Carry, tuple]:
        h, c = carry
        gx_t, m_t = inputs
        act = jax.nn.sigmoid(gx_t + _bdot(h, w_scaled))
        i, f, o = act[..., :hidden], act[..., hidden : 2 * hidden], act[..., 3 * hidden :]
        g = 2.0 * act[..., 2 * hidden : 3 * hidden] - 1.0
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        h, c = _where(m_t, h_new, h), _where(m_t, c_new, c)
        return (h, c), (h, c, act)

    final, (hs, cs, act) = _scan(step, carry0, (gx, mask), unroll=unroll)
    return final, (hs, cs, act)


def _gru_forward(
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    carry0: Carry,
    unroll: int,
) -> tuple[tuple[chex.Array, ...], tuple[chex.Array, ...]]:
    hidden = w_hh.shape[1]
    b = b_hh[:, None, :]

    def step(carry: Carry, inputs: tuple[chex.Array, chex.Array]) -> tuple[Carry, tuple]:
        (h,) = carry
        gx_t, m_t = inputs
        gh = _bdot(h, w_hh) + b
        rz = jax.nn.sigmoid(gx_t[..., : 2 * hidden] + gh[..., : 2 * hidden])
        r, z = rz[..., :hidden], rz[..., hidden:]
        gh_n = gh[..., 2 * hidden :]
        n = jnp.tanh(gx_t[..., 2 * hidden :] + r * gh_n)
        h = _where(m_t, (1.0 - z) * n + z * h, h)
        return (h,), (h, jnp.concatenate([r, z, n, gh_n], axis=-1))

    final, (hs, saved) = _scan(step, carry0, (gx, mask), unroll=unroll)
    return final, (hs, saved)


def _rnn_forward(
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    carry0: Carry,
    unroll: int,
) -> tuple[tuple[chex.Array, ...], tuple[chex.Array, ...]]:
    gx = gx + b_hh[None, :, None, :]

    def step(carry: Carry, inputs: tuple[chex.Array, chex.Array]) -> tuple[Carry, chex.Array]:
        (h,) = carry
        gx_t, m_t = inputs
        h = _where(m_t, jnp.tanh(gx_t + _bdot(h, w_hh)), h)
        return (h,), h

    final, hs = _scan(step, carry0, (gx, mask), unroll=unroll)
    return final, (hs,)


_FORWARD = {"lstm": _lstm_forward, "gru": _gru_forward, "rnn": _rnn_forward}


# --------------------------------------------------------------------------------- backward
#
# Every backward scan runs from the last step to the first with the carry cotangents
# (dh[, dc]) [D, B, H]. On a valid step the cotangent of the new state, dh + dy_t, flows
# into the cell; on a masked step the carry passed through unchanged, so its cotangent
# passes through too and nothing reaches the gates.


def _lstm_backward(
    res: tuple, d_final: Carry, dys: chex.Array, w_hh: chex.Array, unroll: int
) -> tuple[chex.Array, chex.Array, chex.Array, Carry]:
    hs, cs, act, mask, (h0, c0) = res
    hidden = w_hh.shape[1]
    # Everything that does not depend on the incoming cotangent is computed here for all
    # steps at once (one large elementwise pass), so each step of the backward scan is two
    # multiply-adds, one product with the saved coefficients and the recurrent matmul.
    # On masked steps the coefficients are 0 (nothing reaches the gates), f is 1 and keep is
    # 1: the carry cotangents pass through unchanged.
    m = mask[..., None].astype(act.dtype)
    i, f, o = act[..., :hidden], act[..., hidden : 2 * hidden], act[..., 3 * hidden :]
    g = 2.0 * act[..., 2 * hidden : 3 * hidden] - 1.0
    tc = jnp.tanh(cs)
    c_prev = _shift(cs, c0)
    dh_to_dc = m * o * (1.0 - tc * tc)
    coef = m * jnp.concatenate(
        [g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o)],
        axis=-1,
    )
    forget = jnp.where(mask[..., None], f, jnp.ones_like(f))
    keep = 1.0 - m

    w_t = jnp.swapaxes(w_hh, 1, 2)  # [D, G*H, H], transposed once for the backward matmul

    def step(carry: Carry, inputs: tuple) -> tuple[Carry, chex.Array]:
        dh, dc = carry
        dh_to_dc_t, coef_t, forget_t, keep_t, dy_t = inputs
        dhn = dh + dy_t
        dcn = dc + dhn * dh_to_dc_t
        dpre = coef_t * jnp.concatenate([dcn, dcn, dcn, dhn], axis=-1)
        return (_bdot(dpre, w_t) + dh * keep_t, dcn * forget_t), dpre

    inputs = (dh_to_dc, coef, forget, keep, dys)
    d_carry0, dgx = _scan(step, d_final, inputs, reverse=True, unroll=unroll)
    dw_hh = jnp.einsum("ldbh,ldbn->dhn", _shift(hs, h0), dgx)
    db_hh = jnp.sum(dgx, axis=(0, 2))
    return dgx, dw_hh, db_hh, d_carry0


def _gru_backward(
    res: tuple, d_final: Carry, dys: chex.Array, w_hh: chex.Array, unroll: int
) -> tuple[chex.Array, chex.Array, chex.Array, Carry]:
    hs, saved, mask, (h0,) = res
    hidden = w_hh.shape[1]
    w_t = jnp.swapaxes(w_hh, 1, 2)

    def step(carry: Carry, inputs: tuple) -> tuple[Carry, tuple[chex.Array, chex.Array]]:
        (dh,) = carry
        saved_t, h_prev, dy_t, m_t = inputs
        r, z = saved_t[..., :hidden], saved_t[..., hidden : 2 * hidden]
        n, gh_n = saved_t[..., 2 * hidden : 3 * hidden], saved_t[..., 3 * hidden :]
        dhn = dh + dy_t
        dn_pre = dhn * (1.0 - z) * (1.0 - n * n)
        dr_pre = dn_pre * gh_n * r * (1.0 - r)
        dz_pre = dhn * (h_prev - n) * z * (1.0 - z)
        dgx_t = jnp.concatenate([dr_pre, dz_pre, dn_pre], axis=-1)
        dgx_t = _where(m_t, dgx_t, jnp.zeros_like(dgx_t))
        dgh_n = dgx_t[..., 2 * hidden :] * r
        dgh = jnp.concatenate([dgx_t[..., : 2 * hidden], dgh_n], axis=-1)
        dh = _where(m_t, dhn * z + _bdot(dgh, w_t), dh)
        return (dh,), (dgx_t, dgh_n)

    h_prev = _shift(hs, h0)
    inputs = (saved, h_prev, dys, mask)
    d_carry0, (dgx, dgh_n) = _scan(step, d_final, inputs, reverse=True, unroll=unroll)
    dgh = jnp.concatenate([dgx[..., : 2 * hidden], dgh_n], axis=-1)
    dw_hh = jnp.einsum("ldbh,ldbn->dhn", h_prev, dgh)
    db_hh = jnp.sum(dgh, axis=(0, 2))
    return dgx, dw_hh, db_hh, d_carry0


def _rnn_backward(
    res: tuple, d_final: Carry, dys: chex.Array, w_hh: chex.Array, unroll: int
) -> tuple[chex.Array, chex.Array, chex.Array, Carry]:
    hs, mask, (h0,) = res
    w_t = jnp.swapaxes(w_hh, 1, 2)

    def step(carry: Carry, inputs: tuple) -> tuple[Carry, chex.Array]:
        (dh,) = carry
        h_t, dy_t, m_t = inputs
        dpre = (dh + dy_t) * (1.0 - h_t * h_t)
        dpre = _where(m_t, dpre, jnp.zeros_like(dpre))
        dh = _where(m_t, _bdot(dpre, w_t), dh)
        return (dh,), dpre

    d_carry0, dgx = _scan(step, d_final, (hs, dys, mask), reverse=True, unroll=unroll)
    dw_hh = jnp.einsum("ldbh,ldbn->dhn", _shift(hs, h0), dgx)
    return dgx, dw_hh, jnp.sum(dgx, axis=(0, 2)), d_carry0


_BACKWARD = {"lstm": _lstm_backward, "gru": _gru_backward, "rnn": _rnn_backward}


# ------------------------------------------------------------------------------ custom_vjp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(
    cell: str,
    unroll: int,
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    carry0: Carry,
) -> tuple[chex.Array, Carry]:
    return _recurrence_fwd(cell, unroll, gx, w_hh, b_hh, mask, carry0)[0]


def _recurrence_fwd(
    cell: str,
    unroll: int,
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    carry0: Carry,
) -> tuple[tuple[chex.Array, Carry], tuple]:
    final, saved = _FORWARD[cell](gx, w_hh, b_hh, mask, carry0, unroll)
    ys = _where(mask, saved[0], jnp.zeros_like(saved[0]))
    return (ys, final), (*saved, mask, tuple(carry0), w_hh)


def _recurrence_bwd(
    cell: str, unroll: int, res: tuple, cotangents: tuple[chex.Array, Carry]
) -> tuple[chex.Array, chex.Array, chex.Array, None, Carry]:
    *saved, w_hh = res
    dys, d_final = cotangents
    mask = saved[-2]
    # The output is zero on masked steps: its cotangent there reaches nothing.
    dys = _where(mask, dys, jnp.zeros_like(dys))
    dgx, dw_hh, db_hh, d_carry0 = _BACKWARD[cell](
        tuple(saved), tuple(d_final), dys, w_hh, unroll
    )
    return dgx, dw_hh, db_hh, None, tuple(d_carry0)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def fused_recurrence(
    cell: str,
    gx: chex.Array,
    w_hh: chex.Array,
    b_hh: chex.Array,
    mask: chex.Array,
    *,
    carry0: Carry | None = None,
    unroll: int = 1,
) -> tuple[chex.Array, Carry]:
    """Run a classic cell over all directions of one layer with the fused backward pass.

    Args:
      cell: ``lstm``, ``gru`` or ``rnn``.
      gx: ``[L, D, B, G*H]`` input projections ``x @ w_ih + b_ih`` (time-major; the caller
        flips the backward direction's time axis).
      w_hh: ``[D, H, G*H]`` recurrent weights.
      b_hh: ``[D, G*H]`` recurrent biases.
      mask: ``[L, D, B]`` bool, True on valid steps.
      carry0: the initial carry (``(h, c)`` for LSTM, ``(h,)`` otherwise, ``[D, B, H]``);
        zeros when omitted.
      unroll: ``lax.scan`` unroll factor of both scans.
    Returns:
      ``(ys [L, D, B, H], final carry)``: ``ys`` is zero on masked steps; the final carry
      (same structure as ``carry0``) is the state after the last valid step.
    """
    get_cell(cell, among=CLASSIC_CELLS)  # ValueError naming the allowed cells
    if carry0 is None:
        zeros = jnp.zeros(gx.shape[1:3] + (w_hh.shape[1],), gx.dtype)
        carry0 = (zeros, zeros) if cell == "lstm" else (zeros,)
    return _recurrence(cell, int(unroll), gx, w_hh, b_hh, mask, tuple(carry0))
