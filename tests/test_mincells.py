"""minGRU / minLSTM as linear recurrences (mtlrnn.model.mincells).

Reference: the equations of Feng et al. 2024, "Were RNNs All We Needed?" (minGRU: Alg. 1-2,
minLSTM with normalised gates: Alg. 3-4), stepped per row over its valid prefix in float64
numpy, sharing no code with the module under test.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.model.cells import LINEAR_CELLS
from mtlrnn.model.cells import get_cell
from mtlrnn.model.mincells import SCANS
from mtlrnn.model.mincells import choose_scan
from mtlrnn.model.mincells import coefficients
from mtlrnn.model.mincells import linear_scan
from mtlrnn.model.mincells import min_layer

L, B, H = 7, 3, 4  # time, batch, hidden
LENGTHS = np.array([L, 0, 4])  # full, empty, partial
MASK = np.arange(L)[:, None] < LENGTHS[None, :]  # [L, B], time-major


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _gx(cell, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(scale * rng.normal(size=(L, B, get_cell(cell).num_gates * H)), jnp.float32)


def _reference(cell, gx, lengths):
    """Python loop over each row's valid prefix, straight from the paper (float64)."""
    gx = np.asarray(gx, np.float64)
    length, batch, _ = gx.shape
    ys = np.zeros((length, batch, H))
    finals = np.zeros((batch, H))
    for row in range(batch):
        h = np.zeros(H)
        for t in range(int(lengths[row])):
            g = gx[t, row]
            if cell == "mingru":
                z = _sigmoid(g[:H])
                h_tilde = g[H:]
                h = (1.0 - z) * h + z * h_tilde
            else:
                f = _sigmoid(g[:H])
                i = _sigmoid(g[H : 2 * H])
                h_tilde = g[2 * H :]
                h = f / (f + i) * h + i / (f + i) * h_tilde
            ys[t, row] = h
        finals[row] = h
    return ys, finals


def _loss(cell, method, unroll=1, mask=MASK):
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(L, B, H)), jnp.float32)

    def loss(gx):
        ys, h_final = min_layer(cell, gx, jnp.asarray(mask), method=method, unroll=unroll)
        return jnp.sum(ys * weights) + jnp.sum(jnp.sin(h_final))

    return loss


@pytest.mark.parametrize("method", SCANS)
@pytest.mark.parametrize("cell", list(LINEAR_CELLS))
def test_matches_reference(cell, method):
    gx = _gx(cell)
    ys, h_final = min_layer(cell, gx, jnp.asarray(MASK), method=method)
    ref_ys, ref_final = _reference(cell, gx, LENGTHS)
    chex.assert_shape(ys, (L, B, H))
    chex.assert_shape(h_final, (B, H))
    chex.assert_trees_all_close((ys, h_final), (ref_ys, ref_final), atol=1e-5, rtol=1e-5)
    assert not np.any(np.asarray(ys)[:, 1]) and not np.any(np.asarray(h_final)[1])  # empty row


@pytest.mark.parametrize("method", SCANS)
@pytest.mark.parametrize("cell", list(LINEAR_CELLS))
def test_backward_direction_by_flipping(cell, method):
    """The caller's backward direction: flip time, scan (padding first), flip back."""
    gx = _gx(cell, seed=1)
    ys, h_final = min_layer(cell, gx[::-1], jnp.asarray(MASK[::-1]), method=method)
    for row, n in enumerate(LENGTHS):
        ref_ys, ref_final = _reference(cell, gx[:n, row : row + 1][::-1], [n])
        chex.assert_trees_all_close(ys[::-1][:n, row][::-1], ref_ys[:, 0], atol=1e-5)
        chex.assert_trees_all_close(h_final[row], ref_final[0], atol=1e-5)


@pytest.mark.parametrize("cell", list(LINEAR_CELLS))
def test_sequential_and_associative_agree_with_gradients(cell):
    gx = _gx(cell, seed=2)
    results = {
        name: jax.value_and_grad(_loss(cell, method, unroll))(gx)
        for name, method, unroll in [
            ("seq", "sequential", 1),
            ("seq_unrolled", "sequential", 3),
            ("assoc", "associative", 1),
        ]
    }
    chex.assert_trees_all_close(results["seq"], results["assoc"], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(results["seq"], results["seq_unrolled"], atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(results["seq"][1])[~MASK] == 0.0)  # padded inputs get no gradient


@pytest.mark.parametrize("method", SCANS)
@pytest.mark.parametrize("cell", list(LINEAR_CELLS))
def test_nan_in_padded_gx_does_not_leak(cell, method):
    gx = _gx(cell, seed=4)
    poisoned = jnp.where(jnp.asarray(MASK)[:, :, None], gx, jnp.nan)
    clean = min_layer(cell, gx, jnp.asarray(MASK), method=method)
    dirty = min_layer(cell, poisoned, jnp.asarray(MASK), method=method)
    chex.assert_tree_all_finite(dirty)
    chex.assert_trees_all_close(dirty, clean)
    assert np.all(np.asarray(dirty[0])[~MASK] == 0.0)
    grad_clean = jax.grad(_loss(cell, method))(gx)
    grad_dirty = jax.grad(_loss(cell, method))(poisoned)
    chex.assert_tree_all_finite(grad_dirty)
    chex.assert_trees_all_close(grad_dirty, grad_clean)


@pytest.mark.parametrize("method", SCANS)
def test_linear_scan_masks_with_where(method):
    """NaN/inf coefficients on padded steps: outputs, final state and gradients stay clean."""
    rng = np.random.default_rng(5)
    pad = jnp.asarray(~MASK)[:, :, None]
    a = jnp.where(pad, jnp.nan, jnp.asarray(rng.uniform(size=(L, B, H)), jnp.float32))
    b = jnp.where(pad, jnp.inf, jnp.asarray(rng.normal(size=(L, B, H)), jnp.float32))

    def loss(a, b):
        ys, h_final = linear_scan(a, b, jnp.asarray(MASK), method=method)
        return jnp.sum(ys**2) + jnp.sum(h_final)

    ys, h_final = linear_scan(a, b, jnp.asarray(MASK), method=method)
    chex.assert_tree_all_finite((ys, h_final))
    assert np.all(np.asarray(ys)[~MASK] == 0.0)
    grads = jax.grad(loss, argnums=(0, 1))(a, b)
    chex.assert_tree_all_finite(grads)
    assert all(np.all(np.asarray(g)[~MASK] == 0.0) for g in grads)


@pytest.mark.parametrize("cell", list(LINEAR_CELLS))
def test_saturated_gates_stay_finite(cell):
    gx = _gx(cell, seed=6, scale=1e4)
    a, b = coefficients(cell, gx)
    chex.assert_tree_all_finite((a, b))
    assert np.all((np.asarray(a) >= 0.0) & (np.asarray(a) <= 1.0))
    values, grad = jax.value_and_grad(_loss(cell, "sequential"))(gx)
    chex.assert_tree_all_finite((values, grad))


def test_choose_scan():
    assert choose_scan("auto", platform="cpu", length=1 << 16) == "sequential"
    assert choose_scan("auto", platform="gpu", length=4096) == "associative"
    assert choose_scan("auto", platform="tpu", length=4096) == "associative"
    assert choose_scan("auto", platform="gpu", length=4) == "sequential"
    assert choose_scan("associative", platform="cpu", length=4) == "associative"
    assert choose_scan("sequential", platform="gpu", length=4096) == "sequential"
    with pytest.raises(ValueError, match="sequential"):
        choose_scan("parallel", platform="cpu", length=8)
    with pytest.raises(ValueError, match="sequential"):
        linear_scan(jnp.ones((2, 1, 1)), jnp.ones((2, 1, 1)), jnp.ones((2, 1), bool), method="auto")


def test_unknown_cell():
    with pytest.raises(ValueError, match="mingru"):
        min_layer("gru", _gx("mingru"), jnp.asarray(MASK))


def test_empty_sequence():
    ys, h_final = min_layer("mingru", jnp.zeros((0, B, 2 * H)), jnp.zeros((0, B), bool))
    chex.assert_shape((ys, h_final), [(0, B, H), (B, H)])
    assert not np.any(np.asarray(h_final))


@pytest.mark.parametrize("method", SCANS)
@pytest.mark.parametrize("cell", list(LINEAR_CELLS))
def test_bfloat16(cell, method):
    gx = _gx(cell, seed=7).astype(jnp.bfloat16)
    ys, h_final = min_layer(cell, gx, jnp.asarray(MASK), method=method)
    assert ys.dtype == jnp.bfloat16 and h_final.dtype == jnp.bfloat16
    # Same (bf16-rounded) inputs in float32: only the final cast to bf16 differs.
    ref = min_layer(cell, gx.astype(jnp.float32), jnp.asarray(MASK), method=method)
    chex.assert_trees_all_close(
        jax.tree.map(lambda v: v.astype(jnp.float32), (ys, h_final)), ref, atol=1e-2, rtol=1e-2
    )
    grad = jax.grad(lambda g: jnp.sum(min_layer(cell, g, jnp.asarray(MASK))[0]))(gx)
    assert grad.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(grad)
