"""The fast trunk paths against the reference: fused custom VJP vs plain autodiff scan,
rematerialised vs not, linear cells in the trunk vs :mod:`mtlrnn.model.mincells` directly."""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_spec

from mtlrnn.model import mincells
from mtlrnn.model.fused import fused_recurrence
from mtlrnn.model.trunk import Trunk
from mtlrnn.model.trunk import _autodiff_recurrence
from mtlrnn.model.trunk import recurrent_layer

B, L, IN, H = 4, 7, 5, 6
LENGTHS = np.array([7, 3, 0, 5], np.int32)


def _normal(rng: np.random.Generator, *shape: int) -> jax.Array:
    # Host random values: jax.random outside jit would compile a program per call.
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _inputs(seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = _normal(rng, B, L, IN)
    ct_out = _normal(rng, B, L, 2 * H)
    ct_last = _normal(rng, B, 2 * H)
    return x, jnp.asarray(LENGTHS), ct_out, ct_last


def _init(trunk: Trunk, seed: int, x: jax.Array, lengths: jax.Array) -> dict:
    """Parameters ~ U(-1/sqrt(H), 1/sqrt(H)) (the trunk's own init) from host random values
    in the shapes of ``jax.eval_shape(trunk.init)``: no compile."""
    shapes = jax.eval_shape(trunk.init, jax.random.PRNGKey(seed), x, lengths)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(-(H**-0.5), H**-0.5, a.shape), jnp.float32), shapes)


@functools.cache
def _jitted_loss_and_grads(trunk: Trunk) -> Callable:
    """One program per (hashable) Trunk, shared by the tests: the loss, its gradients with
    respect to params and inputs, and the plain (undifferentiated) forward pass."""
    width = trunk.output_size

    def loss(params: dict, x: jax.Array, lengths: jax.Array, ct_out: jax.Array,
             ct_last: jax.Array) -> jax.Array:
        out, last, finals = trunk.apply({"params": params}, x, lengths)
        extra = sum(jnp.sum(c**2) for layer in finals for d in layer.values() for c in d)
        return jnp.sum(out * ct_out[..., :width]) + jnp.sum(last * ct_last[..., :width]) + extra

    def run(params: dict, x: jax.Array, lengths: jax.Array, ct_out: jax.Array,
            ct_last: jax.Array) -> tuple:
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, x, lengths, ct_out,
                                                                 ct_last)
        return value, grads, trunk.apply({"params": params}, x, lengths)

    return jax.jit(run)


def _loss_and_grads(trunk: Trunk, params: dict, x: jax.Array, lengths: jax.Array,
                    ct_out: jax.Array, ct_last: jax.Array) -> tuple:
    return _jitted_loss_and_grads(trunk)(params, x, lengths, ct_out, ct_last)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_matches_autodiff_scan(cell):
    """Bidirectional, variable lengths (one empty row), two layers for LSTM: outputs, final
    carries and every gradient (params and inputs) of the fused VJP equal jax.grad of the
    plain scan to 1e-5."""
    x, lengths, ct_out, ct_last = _inputs()
    layers = 2 if cell == "lstm" else 1
    kwargs = dict(cell=cell, hidden_size=H, num_layers=layers, bidirectional=True)
    params = _init(Trunk(model_spec(**kwargs)), 1, x, lengths)
    v_ref, g_ref, out_ref = _loss_and_grads(Trunk(model_spec(**kwargs, impl="autodiff")), params, x,
                                            lengths, ct_out, ct_last)
    v_fast, g_fast, out_fast = _loss_and_grads(Trunk(model_spec(**kwargs, impl="fused")), params, x,
                                               lengths, ct_out, ct_last)
    chex.assert_trees_all_close(out_fast, out_ref, atol=1e-6)
    # The loss sums ~400 float32 products: the two summation orders may differ by a few ulps
    # times the terms' magnitude (1.3e-6 relative for rnn with LLVM -O0, see conftest.py).
    np.testing.assert_allclose(v_fast, v_ref, rtol=5e-6)
    chex.assert_trees_all_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)
    # Padded steps are zero in the output and get zero input gradient.
    mask = np.arange(L)[None, :] < LENGTHS[:, None]
    assert np.all(np.asarray(out_fast[0])[~mask] == 0)
    assert np.all(np.asarray(g_fast[1])[~mask] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_initial_carry_gradient(cell):
    """A non-zero initial carry (what a remat chunk starts from) gets the same gradient."""
    d, g = 2, {"lstm": 4, "gru": 3}[cell]
    rng = np.random.default_rng(3)
    gx = _normal(rng, L, d, B, g * H)
    w_hh = 0.3 * _normal(rng, d, H, g * H)
    b_hh = 0.1 * _normal(rng, d, g * H)
    mask = jnp.asarray(np.arange(L)[:, None, None] < LENGTHS[None, None, :]).repeat(d, 1)
    carry0 = tuple(_normal(rng, d, B, H) for _ in range(2 if cell == "lstm" else 1))
    ct = _normal(rng, L, d, B, H)

    def loss(fn: object, *args: jax.Array) -> jax.Array:
        ys, final = fn(*args)
        return jnp.sum(ys * ct) + sum(jnp.sum(jnp.sin(c)) for c in final)

    fused = lambda gx, w, b, c0: fused_recurrence(cell, gx, w, b, mask, carry0=c0)
    plain = lambda gx, w, b, c0: _autodiff_recurrence(cell, gx, w, b, mask, c0, 1)
    both = jax.jit(lambda *a: [jax.grad(lambda *a, fn=fn: loss(fn, *a), argnums=(0, 1, 2, 3))(*a)
                               for fn in (fused, plain)])  # one compile for both
    grads = both(gx, w_hh, b_hh, carry0)
    chex.assert_trees_all_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("cell", "impl", "scan", "chunk"), [
    ("lstm", "fused", "auto", 3),      # 7 steps -> chunks of 3, 3, 1 (padded)
    ("gru", "autodiff", "auto", 0),    # auto chunk = ceil(sqrt(7)) = 3
    ("mingru", "fused", "sequential", 2),
])
def test_remat_matches_plain(cell, impl, scan, chunk):
    x, lengths, ct_out, ct_last = _inputs(1)
    kwargs = dict(cell=cell, hidden_size=H, num_layers=1, bidirectional=True, impl=impl,
                  scan=scan)
    params = _init(Trunk(model_spec(**kwargs)), 2, x, lengths)
    ref = _loss_and_grads(Trunk(model_spec(**kwargs)), params, x, lengths, ct_out, ct_last)
    remat = Trunk(model_spec(**kwargs, remat=True, remat_chunk=chunk))
    got = _loss_and_grads(remat, params, x, lengths, ct_out, ct_last)
    chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_linear_cells_in_trunk(cell):
    """The trunk's minGRU/minLSTM layer is mincells.min_layer per direction (backward =
    time-flipped), and the sequential and associative scans give the same gradients."""
    x, lengths, ct_out, ct_last = _inputs(2)
    kwargs = dict(cell=cell, hidden_size=H, num_layers=1, bidirectional=True)
    params = _init(Trunk(model_spec(**kwargs)), 4, x, lengths)
    assert set(params["layer_0_fwd"]) == {"w_ih", "b_ih"}  # no recurrent weights
    mask = jnp.asarray(np.arange(L)[None, :] < LENGTHS[:, None])

    @jax.jit
    def direct_and_reference(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out, _, _ = Trunk(model_spec(**kwargs)).apply({"params": params}, x, lengths)
        mt = mask.T
        ys = []
        for name, flip in (("layer_0_fwd", False), ("layer_0_bwd", True)):
            p = params[name]
            gx = jnp.einsum("bli,ig->lbg", jnp.where(mask[..., None], x, 0), p["w_ih"])
            gx = gx + p["b_ih"]
            if flip:
                y, _ = mincells.min_layer(cell, gx[::-1], mt[::-1], method="sequential")
                ys.append(y[::-1])
            else:
                y, _ = mincells.min_layer(cell, gx, mt, method="sequential")
                ys.append(y)
        return out, jnp.swapaxes(jnp.concatenate(ys, axis=-1), 0, 1)

    out, expected = direct_and_reference(params, x)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    seq, assoc = (
        _loss_and_grads(Trunk(model_spec(**kwargs, scan=s)), params, x, lengths, ct_out, ct_last)
        for s in ("sequential", "associative")
    )
    chex.assert_trees_all_close(seq, assoc, atol=1e-5, rtol=1e-5)


def test_fused_bfloat16_close_to_float32():
    x, lengths, _, _ = _inputs(3)
    kwargs = dict(cell="lstm", hidden_size=H, num_layers=1, bidirectional=True)
    params = _init(Trunk(model_spec(**kwargs)), 5, x, lengths)
    ref, low = jax.jit(lambda p, x: [Trunk(model_spec(**kwargs, compute_dtype=dtype)).apply(
        {"params": p}, x, lengths)[0] for dtype in ("float32", "bfloat16")])(params, x)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), ref, atol=0.05)


def test_bad_impl_and_cell_are_named():
    x, lengths, _, _ = _inputs()
    params = [{"w_ih": jnp.zeros((IN, 4 * H)), "w_hh": jnp.zeros((H, 4 * H)),
               "b_ih": jnp.zeros(4 * H), "b_hh": jnp.zeros(4 * H)}]
    mask = jnp.ones((B, L), bool)
    with pytest.raises(ValueError, match="impl: must be one of fused, autodiff"):
        recurrent_layer(model_spec(impl="cudnn"), params, x, mask)
    with pytest.raises(ValueError, match="unknown cell 'lru'"):
        recurrent_layer(model_spec(cell="lru"), params, x, mask)
