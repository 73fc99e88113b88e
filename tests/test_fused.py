"""The fast trunk paths against the reference: fused custom VJP vs plain autodiff scan,
rematerialised vs not, linear cells in the trunk vs :mod:`mtlrnn.mincells` directly."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn import mincells
from mtlrnn.fused import fused_recurrence
from mtlrnn.trunk import Trunk
from mtlrnn.trunk import _autodiff_recurrence
from mtlrnn.trunk import recurrent_layer

B, L, IN, H = 4, 7, 5, 6
LENGTHS = np.array([7, 3, 0, 5], np.int32)


def _inputs(seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k1, (B, L, IN))
    ct_out = jax.random.normal(k2, (B, L, 2 * H))
    ct_last = jax.random.normal(k3, (B, 2 * H))
    return x, jnp.asarray(LENGTHS), ct_out, ct_last


def _loss_and_grads(trunk: Trunk, params: dict, x: jax.Array, lengths: jax.Array,
                    ct_out: jax.Array, ct_last: jax.Array) -> tuple:
    width = trunk.output_size

    def loss(params: dict, x: jax.Array) -> jax.Array:
        out, last, finals = trunk.apply({"params": params}, x, lengths)
        extra = sum(jnp.sum(c**2) for layer in finals for d in layer.values() for c in d)
        return jnp.sum(out * ct_out[..., :width]) + jnp.sum(last * ct_last[..., :width]) + extra

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    out = jax.jit(trunk.apply)({"params": params}, x, lengths)
    return value, grads, out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_matches_autodiff_scan(cell):
    """Bidirectional, variable lengths (one empty row), two layers for LSTM: outputs, final
    carries and every gradient (params and inputs) of the fused VJP equal jax.grad of the
    plain scan to 1e-5."""
    x, lengths, ct_out, ct_last = _inputs()
    layers = 2 if cell == "lstm" else 1
    kwargs = dict(cell=cell, hidden_size=H, num_layers=layers, bidirectional=True)
    params = Trunk(**kwargs).init(jax.random.PRNGKey(1), x, lengths)["params"]
    v_ref, g_ref, out_ref = _loss_and_grads(Trunk(**kwargs, impl="autodiff"), params, x,
                                            lengths, ct_out, ct_last)
    v_fast, g_fast, out_fast = _loss_and_grads(Trunk(**kwargs, impl="fused"), params, x,
                                               lengths, ct_out, ct_last)
    chex.assert_trees_all_close(out_fast, out_ref, atol=1e-6)
    np.testing.assert_allclose(v_fast, v_ref, rtol=1e-6)
    chex.assert_trees_all_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)
    # Padded steps are zero in the output and get zero input gradient.
    mask = np.arange(L)[None, :] < LENGTHS[:, None]
    assert np.all(np.asarray(out_fast[0])[~mask] == 0)
    assert np.all(np.asarray(g_fast[1])[~mask] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_initial_carry_gradient(cell):
    """A non-zero initial carry (what a remat chunk starts from) gets the same gradient."""
    d, g = 2, {"lstm": 4, "gru": 3}[cell]
    keys = jax.random.split(jax.random.PRNGKey(3), 6)
    gx = jax.random.normal(keys[0], (L, d, B, g * H))
    w_hh = 0.3 * jax.random.normal(keys[1], (d, H, g * H))
    b_hh = 0.1 * jax.random.normal(keys[2], (d, g * H))
    mask = jnp.asarray(np.arange(L)[:, None, None] < LENGTHS[None, None, :]).repeat(d, 1)
    carry0 = tuple(jax.random.normal(k, (d, B, H)) for k in keys[3 : 3 + (2 if cell == "lstm"
                                                                          else 1)])
    ct = jax.random.normal(keys[5], (L, d, B, H))

    def loss(fn: object, *args: jax.Array) -> jax.Array:
        ys, final = fn(*args)
        return jnp.sum(ys * ct) + sum(jnp.sum(jnp.sin(c)) for c in final)

    fused = lambda gx, w, b, c0: fused_recurrence(cell, gx, w, b, mask, carry0=c0)
    plain = lambda gx, w, b, c0: _autodiff_recurrence(cell, gx, w, b, mask, c0, 1)
    grads = [jax.jit(jax.grad(lambda *a, fn=fn: loss(fn, *a), argnums=(0, 1, 2, 3)))(
        gx, w_hh, b_hh, carry0) for fn in (fused, plain)]
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
    params = Trunk(**kwargs).init(jax.random.PRNGKey(2), x, lengths)["params"]
    ref = _loss_and_grads(Trunk(**kwargs), params, x, lengths, ct_out, ct_last)
    got = _loss_and_grads(Trunk(**kwargs, remat=True, remat_chunk=chunk), params, x, lengths,
                          ct_out, ct_last)
    chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_linear_cells_in_trunk(cell):
    """The trunk's minGRU/minLSTM layer is mincells.min_layer per direction (backward =
    time-flipped), and the sequential and associative scans give the same gradients."""
    x, lengths, ct_out, ct_last = _inputs(2)
    kwargs = dict(cell=cell, hidden_size=H, num_layers=1, bidirectional=True)
    params = Trunk(**kwargs).init(jax.random.PRNGKey(4), x, lengths)["params"]
    assert set(params["layer_0_fwd"]) == {"w_ih", "b_ih"}  # no recurrent weights
    out, last, _ = Trunk(**kwargs).apply({"params": params}, x, lengths)
    mask = jnp.asarray(np.arange(L)[None, :] < LENGTHS[:, None])
    mt = mask.T
    ys = []
    for name, flip in (("layer_0_fwd", False), ("layer_0_bwd", True)):
        p = params[name]
        gx = jnp.einsum("bli,ig->lbg", jnp.where(mask[..., None], x, 0), p["w_ih"]) + p["b_ih"]
        if flip:
            y, _ = mincells.min_layer(cell, gx[::-1], mt[::-1], method="sequential")
            ys.append(y[::-1])
        else:
            y, _ = mincells.min_layer(cell, gx, mt, method="sequential")
            ys.append(y)
    expected = jnp.swapaxes(jnp.concatenate(ys, axis=-1), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    seq = _loss_and_grads(Trunk(**kwargs, scan="sequential"), params, x, lengths, ct_out,
                          ct_last)
    assoc = _loss_and_grads(Trunk(**kwargs, scan="associative"), params, x, lengths, ct_out,
                            ct_last)
    chex.assert_trees_all_close(seq, assoc, atol=1e-5, rtol=1e-5)


def test_fused_bfloat16_close_to_float32():
    x, lengths, _, _ = _inputs(3)
    kwargs = dict(cell="lstm", hidden_size=H, num_layers=1, bidirectional=True)
    params = Trunk(**kwargs).init(jax.random.PRNGKey(5), x, lengths)["params"]
    ref, _, _ = Trunk(**kwargs).apply({"params": params}, x, lengths)
    low, _, _ = Trunk(**kwargs, dtype=jnp.bfloat16).apply({"params": params}, x, lengths)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), ref, atol=0.05)


def test_bad_impl_and_cell_are_named():
    x, lengths, _, _ = _inputs()
    params = [{"w_ih": jnp.zeros((IN, 4 * H)), "w_hh": jnp.zeros((H, 4 * H)),
               "b_ih": jnp.zeros(4 * H), "b_hh": jnp.zeros(4 * H)}]
    mask = jnp.ones((B, L), bool)
    with pytest.raises(ValueError, match="impl: must be one of fused, autodiff"):
        recurrent_layer("lstm", params, x, mask, impl="cudnn")
    with pytest.raises(ValueError, match="unknown cell 'lru'"):
        recurrent_layer("lru", params, x, mask)
