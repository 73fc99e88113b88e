"""Cells and the scanned trunk (no torch).

References: PyTorch's documented equations for nn.LSTM / nn.GRU / nn.RNN
(https://pytorch.org/docs/stable/generated/torch.nn.LSTM.html, .../torch.nn.GRU.html,
.../torch.nn.RNN.html) computed by hand in numpy, and `mtlrnn.model.cells.reference_layer`, which
steps each sequence over its valid prefix in Python (the Flax recurrent.py test pattern:
compare the scanned layer with stepping the cell by hand).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import model_spec

from mtlrnn.model.cells import CELLS
from mtlrnn.model.cells import CLASSIC_CELLS
from mtlrnn.model.cells import get_cell
from mtlrnn.model.cells import reference_layer
from mtlrnn.model.trunk import Trunk

B, L, IN, H = 4, 6, 3, 5  # batch, time, input width, hidden
LENGTHS = np.array([L, 0, 3, 1])  # full, empty, partial, single step
MASK = np.arange(L)[None, :] < LENGTHS[:, None]  # [B, L]


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _x(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, L, IN)), jnp.float32)


@functools.cache
def _params(cell, num_layers, bidirectional):
    trunk = Trunk(model_spec(
        cell=cell, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional))
    # Shapes from eval_shape (no compile), values ~ U(-1/sqrt(H), 1/sqrt(H)) as PyTorch's init.
    shapes = jax.eval_shape(trunk.init, jax.random.key(7), _x(), jnp.asarray(LENGTHS))["params"]
    rng = np.random.default_rng(7)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(-(H**-0.5), H**-0.5, a.shape), jnp.float32), shapes
    )


def _loss_fn(trunk, lengths=LENGTHS):
    """Scalar loss touching outputs, ``last`` and every final carry; fixed random weights.

    Returns ``loss(params, x) -> (value, (outputs, last, finals))``.
    """
    rng = np.random.default_rng(3)
    w_out = jnp.asarray(rng.normal(size=(B, L, trunk.output_size)), jnp.float32)
    w_last = jnp.asarray(rng.normal(size=(B, trunk.output_size)), jnp.float32)

    def loss(params, x):
        outputs, last, finals = trunk.apply({"params": params}, x, jnp.asarray(lengths))
        carries = sum(jnp.sum(c * (i + 1.0)) for f in finals for d in f for i, c in enumerate(f[d]))
        value = jnp.sum(outputs * w_out) + jnp.sum(last * w_last) + 0.1 * carries
        return value.astype(jnp.float32), (outputs, last, finals)

    return loss


@functools.cache
def _jitted_grads(trunk):
    # Cached per (hashable) Trunk so each configuration compiles once per test session.
    return jax.jit(jax.value_and_grad(_loss_fn(trunk), argnums=(0, 1), has_aux=True))


@functools.cache
def _jitted_apply(trunk):
    """``apply(params, x, lengths) -> (outputs, last, finals)``, compiled once per Trunk."""
    return jax.jit(lambda params, x, lengths: trunk.apply({"params": params}, x, lengths))


def _run_with_grads(trunk, params, x):
    """``((loss, (outputs, last, finals)), (grad_params, grad_x))``."""
    return _jitted_grads(trunk)(params, x)


# --- one step against PyTorch's documented equations -------------------------------------


@pytest.mark.parametrize("cell", list(CLASSIC_CELLS))
def test_step_matches_pytorch_equations(cell):
    rng = np.random.default_rng(0)
    c = get_cell(cell)
    g = c.num_gates * H
    x, h, cc = rng.normal(size=(2, IN)), rng.normal(size=(2, H)), rng.normal(size=(2, H))
    w_ih, w_hh = rng.normal(size=(IN, g)), rng.normal(size=(H, g))
    b_ih, b_hh = rng.normal(size=g), rng.normal(size=g)
    gi, gh = x @ w_ih + b_ih, h @ w_hh + b_hh
    carry = (h, cc) if cell == "lstm" else (h,)
    new, out = c.step(
        tuple(jnp.asarray(v, jnp.float32) for v in carry),
        jnp.asarray(gi, jnp.float32),
        jnp.asarray(w_hh, jnp.float32),
        jnp.asarray(b_hh, jnp.float32),
    )
    if cell == "lstm":  # i, f, g, o gate order
        i, f, gg, o = np.split(gi + gh, 4, axis=-1)
        c_new = _sigmoid(f) * cc + _sigmoid(i) * np.tanh(gg)
        expected = (_sigmoid(o) * np.tanh(c_new), c_new)
    elif cell == "gru":  # r, z, n gate order; b_hn inside the reset product
        (xr, xz, xn), (hr, hz, hn) = np.split(gi, 3, -1), np.split(gh, 3, -1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        expected = ((1 - z) * n + z * h,)
    else:
        expected = (np.tanh(gi + gh),)
    assert len(new) == c.carry_size == len(expected)
    for got, want in zip(new, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(out, expected[0], atol=1e-5)


def test_one_registry_names_every_cell_the_config_allows():
    import typing

    from mtlrnn.model.cells import LINEAR_CELLS
    from mtlrnn.model.spec import ModelConfig

    allowed = typing.get_args(typing.get_type_hints(ModelConfig)["cell"])
    assert allowed == tuple(CELLS) == CLASSIC_CELLS + LINEAR_CELLS
    assert CLASSIC_CELLS == ("lstm", "gru", "rnn") and LINEAR_CELLS == ("mingru", "minlstm")
    with pytest.raises(ValueError, match="unknown cell 'mingru'; allowed: lstm, gru, rnn"):
        get_cell("mingru", among=CLASSIC_CELLS)


def test_get_cell_and_init_carry():
    allowed = "lstm, gru, rnn, mingru, minlstm"
    with pytest.raises(ValueError, match=f"unknown cell 'lru'; allowed: {allowed}"):
        get_cell("lru")
    carry = get_cell("lstm").init_carry(3, 4, jnp.bfloat16)
    assert len(carry) == 2 and all(c.shape == (3, 4) and c.dtype == jnp.bfloat16 for c in carry)
    assert len(get_cell("gru").init_carry(3, 4)) == 1


# --- the scanned trunk against the hand-stepped reference ---------------------------------


def _reference_trunk(cell, params, x, num_layers, bidirectional):
    directions = ("fwd", "bwd") if bidirectional else ("fwd",)
    finals = []
    for layer in range(num_layers):
        outs, carries = [], {}
        for d in directions:
            p = params[f"layer_{layer}_{d}"]
            y, carry = reference_layer(get_cell(cell), p, x, LENGTHS, reverse=d == "bwd")
            outs.append(y)
            carries[d] = carry
        x = jnp.concatenate(outs, axis=-1)
        finals.append(carries)
    return x, finals


@pytest.mark.parametrize(
    "cell,num_layers,bidirectional", [(c, 2, True) for c in CLASSIC_CELLS] + [("gru", 1, False)]
)
def test_trunk_matches_reference(cell, num_layers, bidirectional):
    params = _params(cell, num_layers, bidirectional)
    trunk = Trunk(model_spec(
        cell=cell, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional))
    x = _x(1)
    outputs, last, finals = _jitted_apply(trunk)(params, x, jnp.asarray(LENGTHS))
    ref_out, ref_finals = _reference_trunk(cell, params, x, num_layers, bidirectional)
    np.testing.assert_allclose(outputs, ref_out, atol=1e-5)
    assert len(finals) == num_layers
    for ours, ref in zip(finals, ref_finals, strict=True):
        assert set(ours) == set(ref)
        for d in ref:
            assert len(ours[d]) == get_cell(cell).carry_size
            for got, want in zip(ours[d], ref[d], strict=True):
                np.testing.assert_allclose(got, want, atol=1e-5)
    top = jnp.concatenate([ref_finals[-1][d][0] for d in ref_finals[-1]], axis=-1)
    np.testing.assert_allclose(last, top, atol=1e-5)


@pytest.mark.parametrize("cell", list(CLASSIC_CELLS))
def test_final_state_is_last_valid_and_padding_is_zero(cell):
    params = _params(cell, 2, True)
    trunk = Trunk(model_spec(cell=cell, hidden_size=H, num_layers=2, bidirectional=True))
    outputs, last, finals = _jitted_apply(trunk)(params, _x(), jnp.asarray(LENGTHS))
    outputs = np.asarray(outputs)
    assert np.all(outputs[~MASK] == 0.0)
    fwd_h, bwd_h = np.asarray(finals[-1]["fwd"][0]), np.asarray(finals[-1]["bwd"][0])
    for b, n in enumerate(LENGTHS):
        if n == 0:  # an empty row keeps the zero initial carry
            for f in finals:
                assert all(np.all(np.asarray(c[b]) == 0.0) for d in f for c in f[d])
            continue
        # Forward ends at step n-1; backward ends at step 0 (it starts at the last valid one).
        np.testing.assert_array_equal(fwd_h[b], outputs[b, n - 1, :H])
        np.testing.assert_array_equal(bwd_h[b], outputs[b, 0, H:])
        assert not np.allclose(fwd_h[b], outputs[b, L - 1, :H]) or n == L
    np.testing.assert_array_equal(last, np.concatenate([fwd_h, bwd_h], axis=-1))


@pytest.mark.parametrize("cell", list(CLASSIC_CELLS))
def test_padding_invariance(cell):
    params = _params(cell, 2, True)
    trunk = Trunk(model_spec(cell=cell, hidden_size=H, num_layers=2, bidirectional=True))
    x = _x(2)
    noise = 1e3 * np.random.default_rng(9).normal(size=x.shape)
    x_junk = jnp.where(MASK[:, :, None], x, jnp.asarray(noise, jnp.float32))
    assert not np.allclose(x, x_junk)
    a, b = _run_with_grads(trunk, params, x), _run_with_grads(trunk, params, x_junk)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # loss, outputs, finals and grads
    g_x = np.asarray(a[1][1])
    assert np.all(g_x[~MASK] == 0.0) and np.any(g_x[MASK] != 0.0)


# The scan machinery does not depend on the cell: two cases cover both carry arities and
# both scan directions (L=6 is not a multiple of unroll=4, so the remainder path runs too).
@pytest.mark.parametrize("cell,bidirectional", [("lstm", True), ("gru", False)])
def test_unroll_and_remat_agree(cell, bidirectional):
    params = _params(cell, 1, bidirectional)
    x = _x(3)
    results = [
        _run_with_grads(
            Trunk(model_spec(
                cell=cell,
                hidden_size=H,
                bidirectional=bidirectional,
                unroll=unroll,
                remat=remat,
            )),
            params,
            x,
        )
        for unroll, remat in [(1, False), (4, False), (1, True)]
    ]
    for other in results[1:]:  # loss, outputs, last, finals, grads w.r.t. params and x
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), results[0], other)


@pytest.mark.parametrize("cell", list(CLASSIC_CELLS))
def test_bfloat16_compute_is_close_to_float32(cell):
    params = _params(cell, 2, True)
    x = _x(4)
    kwargs = dict(cell=cell, hidden_size=H, num_layers=2, bidirectional=True)
    ref, _, _ = _jitted_apply(Trunk(model_spec(**kwargs)))(params, x, jnp.asarray(LENGTHS))
    (_, (out, last, finals)), grads = _run_with_grads(
        Trunk(model_spec(**kwargs, compute_dtype="bfloat16")), params, x
    )
    assert out.dtype == last.dtype == finals[0]["fwd"][0].dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32))
    assert np.all(out[~MASK] == 0.0)
    # bfloat16 has an 8-bit mantissa (~4e-3 relative); errors compound over steps and layers.
    np.testing.assert_allclose(out, ref, atol=5e-2)
    assert grads[0]["layer_0_fwd"]["w_hh"].dtype == jnp.float32  # param_dtype is kept
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("cell", list(CLASSIC_CELLS))
def test_grad_matches_finite_differences(cell):
    # float64 so central differences are accurate (error ~eps^2); tiny case, two layers, both
    # directions, one empty-free padded row. Directional derivatives along random directions.
    with jax.enable_x64(True):
        lengths = jnp.array([3, 1])
        trunk = Trunk(model_spec(
            cell=cell,
            hidden_size=2,
            num_layers=2,
            bidirectional=True,
            compute_dtype="float64",
            param_dtype="float64",
        ))
        rng = np.random.default_rng(5)
        x = jnp.asarray(rng.normal(size=(2, 3, 2)))
        shapes = jax.eval_shape(trunk.init, jax.random.key(0), x, lengths)["params"]
        params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-1, 1, a.shape)), shapes)
        w = jnp.asarray(rng.normal(size=(2, 3, 4)))

        def f(args):
            params, x = args
            outputs, last, finals = trunk.apply({"params": params}, x, lengths)
            return jnp.sum(outputs * w) + jnp.sum(last**2) + jnp.sum(finals[0]["bwd"][-1])

        value_and_grad = jax.jit(jax.value_and_grad(f))  # one compile serves both
        args = (params, x)
        _, grad = value_and_grad(args)
        eps = 1e-5
        for seed in range(3):
            leaves, treedef = jax.tree.flatten(args)
            directions = np.random.default_rng(100 + seed)  # host values: no eager compiles
            v = treedef.unflatten(
                [jnp.asarray(directions.normal(size=a.shape), a.dtype) for a in leaves]
            )
            shift = lambda s: jax.tree.map(lambda a, d: a + s * eps * d, args, v)  # noqa: B023
            numeric = (value_and_grad(shift(1.0))[0] - value_and_grad(shift(-1.0))[0]) / (2 * eps)
            pairs = zip(jax.tree.leaves(grad), jax.tree.leaves(v), strict=True)
            analytic = sum(jnp.vdot(g, d) for g, d in pairs)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-8)


def test_nan_in_padding_keeps_gradients_finite():
    """Padded steps holding NaN (e.g. padded time series) must not poison any gradient."""
    trunk = Trunk(model_spec(cell="gru", hidden_size=3, bidirectional=True))
    x = np.ones((2, 4, 2), np.float32)
    lengths = jnp.array([4, 2])
    params = jax.jit(trunk.init)(jax.random.key(0), x, lengths)["params"]
    x_nan = x.copy()
    x_nan[1, 2:] = np.nan

    def loss(p, inputs):
        return trunk.apply({"params": p}, inputs, lengths)[0].sum()

    grad = jax.jit(jax.grad(loss))  # one compile serves both inputs
    grads = grad(params, x_nan)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    chex.assert_trees_all_close(grads, grad(params, x), atol=1e-6)
