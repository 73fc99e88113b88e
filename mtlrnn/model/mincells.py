"""Parallel-in-time cells minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

Both cells drop the hidden-to-hidden matmul, so every gate depends on ``x_t`` alone and the
layer is a *linear* recurrence in the state::

    h_t = a_t * h_{t-1} + b_t,        h_{-1} = 0

Data flow of one layer and direction (the input projection is the caller's, as for the
classic cells in :mod:`mtlrnn.model.cells`)::

    x [B, L, I] --one matmul--> gx [L, B, G*H] --coefficients--> (a, b) [L, B, H]
        --linear_scan (lax.scan or lax.associative_scan)--> y [L, B, H], h_final [B, H]

Gate order along the ``G*H`` axis of ``gx = x @ w_ih + b_ih`` (pre-activations):

* minGRU (G=2): update ``z``, candidate ``h_tilde``::

      z = sigmoid(gx_z);  h_tilde = gx_h;  h_t = (1 - z) * h_{t-1} + z * h_tilde

* minLSTM (G=3): forget ``f``, input ``i``, candidate ``h_tilde``, with the paper's
  normalisation (which makes the state time-independent in scale)::

      f = sigmoid(gx_f);  i = sigmoid(gx_i);  f' = f / (f + i);  i' = i / (f + i)
      h_t = f' * h_{t-1} + i' * h_tilde

Because ``(a, b)`` pairs compose associatively, ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``,
the recurrence can run as a sequential ``lax.scan`` (L dependent steps, cheapest in total work)
or as ``lax.associative_scan`` (O(log L) depth, ~2x the work): see :func:`choose_scan`.

Padding: step ``t`` of row ``b`` is valid where ``mask[t, b]``. A padded step uses ``a = 1,
b = 0`` (selected with ``where``, so NaN/inf in padded coefficients cannot leak), which leaves
the state unchanged; its output is zero and the final state is the one after the last valid
step. A backward direction is the caller's: flip time of ``gx`` and ``mask``, call, flip ``y``.

Precision: the scan accumulates in at least float32. For bfloat16/float16 ``gx``,
:func:`coefficients` returns float32 ``(a, b)`` (a bf16 ``a = 1 - z`` near 1 would round to
1 or to 1 - 2^-8 and wreck long memory), and :func:`min_layer` casts ``y`` and ``h_final``
back to ``gx.dtype``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from mtlrnn.model.cells import LINEAR_CELLS
from mtlrnn.model.cells import get_cell

SCANS = ("sequential", "associative")

# Sequence length from which "auto" picks the associative scan on an accelerator. A
# sequential scan on GPU/TPU is a device while-loop: each of its L iterations costs a
# kernel launch / loop round trip (microseconds) no matter how small B*H is, while the
# associative scan runs ~2*log2(L) levels of fused elementwise kernels over at most [L, B, H].
# At L = 32 that is ~10 levels against 32 dependent iterations, and the gap only grows with L
# (the extra O(L*B*H) memory traffic is tiny at HBM bandwidth). Below it the sequential loop is
# short enough that the associative scan's fixed per-level overhead is not worth paying.
# Not yet timed on a device: re-tune with the benchmarks when one is available.
#
# On CPU "auto" is always sequential. Measured (2 shared cores, jit, median, B=32, H=256,
# float32; forward / forward+backward in ms):
#   L=256:  sequential 1.8 / 17, unroll=8 5.6 / 27, associative 6.7 / 30
#   L=1024: sequential 29 / 79,  unroll=8 42 / 118, associative 100 / 259
#   L=4096: sequential 195 / 478, unroll=8 257 / 494, associative 258 / 589
# A hand-written custom_vjp for the sequential scan (reverse linear scan) gave no consistent
# gain over autodiff, so plain autodiff is used.
ASSOCIATIVE_MIN_LENGTH = 32
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def _check_cell(cell: str) -> int:
    """Gate count of the linear cell ``cell``; ValueError naming the linear cells otherwise."""
    return get_cell(cell, among=LINEAR_CELLS).num_gates


def _accum_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """At least float32: float32 for bf16/f16, the dtype itself for float32/float64."""
    return jnp.promote_types(dtype, jnp.float32)


def coefficients(cell: str, gx: chex.Array) -> tuple[chex.Array, chex.Array]:
    """The recurrence coefficients of every step.

    Args:
      cell: ``mingru`` or ``minlstm``.
      gx: ``[L, B, G*H]`` gate pre-activations (input projection including its bias), in the
        gate order of the module docstring.
    Returns:
      ``(a [L, B, H], b [L, B, H])`` with ``h_t = a_t * h_{t-1} + b_t``, in the accumulation
      dtype (float32 for bf16/f16 ``gx``, else ``gx.dtype``). ``0 <= a <= 1`` and both are
      finite for any finite ``gx``.
    """
    num_gates = _check_cell(cell)
    if gx.shape[-1] % num_gates:
        raise ValueError(f"{cell}: last axis of gx ({gx.shape[-1]}) is not {num_gates} * H")
    gx = gx.astype(_accum_dtype(gx.dtype))
    if cell == "mingru":
        gx_z, h_tilde = jnp.split(gx, 2, axis=-1)
        # 1 - sigmoid(u) == sigmoid(-u), without the cancellation of 1 - z for large u.
        return jax.nn.sigmoid(-gx_z), jax.nn.sigmoid(gx_z) * h_tilde
    gx_f, gx_i, h_tilde = jnp.split(gx, 3, axis=-1)
    # f / (f + i) = 1 / (1 + i / f) = sigmoid(log f - log i), with log f = log_sigmoid(gx_f):
    # no division, no 0/0 when both gates saturate at 0, and f' + i' = 1 exactly in real terms.
    log_f = jax.nn.log_sigmoid(gx_f)
    log_i = jax.nn.log_sigmoid(gx_i)
    return jax.nn.sigmoid(log_f - log_i), jax.nn.sigmoid(log_i - log_f) * h_tilde


def _combine(
    earlier: tuple[chex.Array, chex.Array], later: tuple[chex.Array, chex.Array]
) -> tuple[chex.Array, chex.Array]:
    """Compose two affine maps ``h -> a h + b``: first ``earlier``, then ``later``."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _sequential_states(
    a: chex.Array, b: chex.Array, h0: chex.Array, unroll: int
) -> chex.Array:
    """All states ``h_t`` of the recurrence from ``h0`` with a ``lax.scan``."""

    def body(h: chex.Array, ab: tuple[chex.Array, chex.Array]) -> tuple[chex.Array, chex.Array]:
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    _, hs = jax.lax.scan(body, h0, (a, b), unroll=unroll)
    return hs


def _associative_states(a: chex.Array, b: chex.Array) -> chex.Array:
    """All states ``h_t`` with ``lax.associative_scan``: with ``h_{-1} = 0``, ``h_t`` is the
    ``b`` part of the composition of steps ``0..t``."""
    _, hs = jax.lax.associative_scan(_combine, (a, b), axis=0)
    return hs


def linear_scan(
    a: chex.Array,
    b: chex.Array,
    mask: chex.Array,
    *,
    method: str,
    unroll: int = 1,
    h0: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
    """``h_t = a_t * h_{t-1} + b_t`` with ``h_{-1} = h0`` (default 0), over axis 0, for a
    padded batch.

    Args:
      a: ``[L, B, H]`` multiplicative coefficients.
      b: ``[L, B, H]`` additive coefficients.
      mask: ``[L, B]`` bool, True on valid steps. A padded step keeps the state (it is run
        as ``a = 1, b = 0``, chosen with ``where``) and outputs zero.
      method: ``sequential`` (``lax.scan``) or ``associative`` (``lax.associative_scan``).
      unroll: ``lax.scan`` unroll factor (sequential only).
      h0: ``[B, H]`` initial state (a remat chunk after the first); zeros when None.
    Returns:
      ``(ys [L, B, H], h_final [B, H])``: ``ys`` is zero on padded steps; ``h_final`` is the
      state after the last valid step (``h0`` for an empty row). Computed in at least float32,
      returned in the result dtype of ``a`` and ``b``.
    """
    if method not in SCANS:
        raise ValueError(f"unknown scan method {method!r}; allowed: {', '.join(SCANS)}")
    chex.assert_equal_shape((a, b))
    chex.assert_shape(mask, a.shape[:2])
    out_dtype = jnp.result_type(a, b)
    dtype = _accum_dtype(out_dtype)
    start = jnp.zeros(a.shape[1:], dtype) if h0 is None else h0.astype(dtype)
    if a.shape[0] == 0:
        return jnp.zeros(a.shape, out_dtype), start.astype(out_dtype)
    m = mask[:, :, None]
    a = jnp.where(m, a.astype(dtype), jnp.ones((), dtype))
    b = jnp.where(m, b.astype(dtype), jnp.zeros((), dtype))
    if method == "sequential":
        hs = _sequential_states(a, b, start, unroll)
    else:
        hs = _associative_states(a, b)
        if h0 is not None:
            # Linear in the state: the zero-start solution plus the start decayed by
            # prod(a) so far (a is 1 on padded steps, so they keep it).
            hs = hs + jnp.cumprod(a, axis=0) * start
    ys = jnp.where(m, hs, jnp.zeros((), dtype))
    # Padded steps keep the state, so the last step's state is the last valid step's.
    return ys.astype(out_dtype), hs[-1].astype(out_dtype)


def choose_scan(method: str, *, platform: str, length: int) -> str:
    """Resolve the scan method.

    Args:
      method: ``auto``, ``sequential`` or ``associative``.
      platform: ``jax.default_backend()``-style name (``cpu``, ``gpu``, ``tpu``, ...).
      length: sequence length ``L``.
    Returns:
      ``method`` itself unless it is ``auto``; for ``auto``: ``sequential`` on CPU (measured
      fastest there at every length, forward and backward: see the timings by
      ``ASSOCIATIVE_MIN_LENGTH``), and on an accelerator ``associative`` from
      ``ASSOCIATIVE_MIN_LENGTH`` steps on, else ``sequential``.
    """
    if method == "auto":
        if platform.lower() in _ACCELERATORS and length >= ASSOCIATIVE_MIN_LENGTH:
            return "associative"
        return "sequential"
    if method not in SCANS:
        raise ValueError(f"unknown scan method {method!r}; allowed: auto, {', '.join(SCANS)}")
    return method


def min_layer(
    cell: str,
    gx: chex.Array,
    mask: chex.Array,
    *,
    method: str = "auto",
    unroll: int = 1,
    h0: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
    """One direction of one minGRU / minLSTM layer over a padded, time-major batch.

    Args:
      cell: ``mingru`` or ``minlstm``.
      gx: ``[L, B, G*H]`` input projection ``x @ w_ih + b_ih``.
      mask: ``[L, B]`` bool, True on valid steps.
      method: ``auto``, ``sequential`` or ``associative`` (see :func:`choose_scan`).
      unroll: ``lax.scan`` unroll factor for the sequential scan.
      h0: ``[B, H]`` initial state; zeros when None.
    Returns:
      ``(y [L, B, H], h_final [B, H])`` in ``gx.dtype``; ``y`` is zero on padded steps.
    """
    _check_cell(cell)
    method = choose_scan(method, platform=jax.default_backend(), length=gx.shape[0])
    # Zero padded pre-activations first: their coefficients are discarded by linear_scan's
    # where(), but a NaN there would still turn the (zero) gradient into 0 * NaN.
    gx = jnp.where(mask[:, :, None], gx, jnp.zeros((), gx.dtype))
    a, b = coefficients(cell, gx)
    ys, h_final = linear_scan(a, b, mask, method=method, unroll=unroll, h0=h0)
    return ys.astype(gx.dtype), h_final.astype(gx.dtype)
