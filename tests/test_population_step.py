"""The population step's fast path (``train.num_seeds``: the train step under ``jax.vmap``
over seeds) against its references.

mtlrnn.model.fused runs its time loops with :func:`mtlrnn.model.fused._scan`, which reads inputs and
writes outputs by index instead of scanning over them, so that a vmapped recurrence keeps
the seed axis in front and needs no transposes (benchmarks/population_step.py). Checked here:
``_scan`` equals ``jax.lax.scan`` (values and gradients, vmapped or not), the vmapped fused
recurrence equals the plain autodiff scan of each seed on its own (outputs, final carries and
every gradient, to 1e-5), and the vmapped recurrence moves no time axis.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.model.fused import _scan
from mtlrnn.model.fused import fused_recurrence
from mtlrnn.model.trunk import _autodiff_recurrence

S, L, D, B, H = 3, 6, 2, 4, 5
# Per seed and row; a 0 (an all-padding row) and a full row in each seed.
LENGTHS = np.array([[6, 2, 0, 4], [3, 6, 1, 0], [0, 5, 6, 2]], np.int32)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> jax.Array:
    # Host random values: no compile per draw.
    return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def _body(carry: tuple, x: tuple) -> tuple:
    """A small nonlinear recurrence with a pytree carry, pytree inputs and pytree outputs."""
    h, c = carry
    a, m = x
    h_new = jnp.tanh(a @ jnp.ones((3, 3)) * 0.5 + h * c)
    h = jnp.where(m, h_new, h)
    return (h, c + 0.1 * h), {"h": h, "sq": (h * a)[:2]}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 2])
def test_scan_matches_lax_scan(reverse, unroll):
    """``_scan`` == ``lax.scan`` (forward and reversed, unrolled or not): carry, outputs and
    the gradient w.r.t. carry and inputs, plain and under vmap over a leading seed axis."""
    rng = np.random.default_rng(0)
    carry = (_normal(rng, S, 3), _normal(rng, S, 3))
    xs = (_normal(rng, S, L, 3), jnp.asarray(rng.random((S, L, 3)) > 0.3))

    def run(scan_fn: object, carry: tuple, xs: tuple) -> tuple:
        return scan_fn(_body, carry, xs, reverse=reverse, unroll=unroll)

    def loss(scan_fn: object, carry: tuple, a: jax.Array, m: jax.Array) -> jax.Array:
        final, ys = run(scan_fn, carry, (a, m))
        return jnp.sum(jnp.sin(ys["h"])) + jnp.sum(ys["sq"] ** 2) + jnp.sum(final[0] * final[1])

    def both(carry: tuple, a: jax.Array, m: jax.Array) -> list:
        out = []
        for fn in (_scan, jax.lax.scan):
            grad = jax.grad(lambda c, a, fn=fn: loss(fn, c, a, m), argnums=(0, 1))(carry, a)
            out.append((run(fn, carry, (a, m)), grad))
        return out

    one = lambda tree: jax.tree.map(lambda v: v[0], tree)  # noqa: E731
    fast, ref = jax.jit(both)(one(carry), *one(xs))
    chex.assert_trees_all_close(fast, ref, atol=1e-6, rtol=1e-6)
    fast, ref = jax.jit(jax.vmap(both))(carry, *xs)
    chex.assert_trees_all_close(fast, ref, atol=1e-6, rtol=1e-6)


def _recurrence_inputs(cell: str, seed: int = 0) -> tuple:
    """Per-seed ``gx [S, L, D, B, G*H]``, ``w_hh``, ``b_hh``, ``mask``, ``carry0`` and output
    cotangents, as the population step stacks them (the backward slot's mask reversed in
    time, as the trunk builds it)."""
    rng = np.random.default_rng(seed)
    g = GATES[cell] * H
    gx = _normal(rng, S, L, D, B, g)
    w_hh = _normal(rng, S, D, H, g, scale=0.4)
    b_hh = _normal(rng, S, D, g, scale=0.1)
    valid = np.arange(L)[None, :, None] < LENGTHS[:, None, :]  # [S, L, B]
    mask = jnp.asarray(np.stack([valid, valid[:, ::-1]], axis=2))  # [S, L, D, B]
    carry0 = tuple(_normal(rng, S, D, B, H) for _ in range(2 if cell == "lstm" else 1))
    ct = _normal(rng, S, L, D, B, H)
    return gx, w_hh, b_hh, mask, carry0, ct


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_vmapped_fused_matches_autodiff_per_seed(cell):
    """Under ``jax.vmap`` over seeds (per-seed weights, inputs, masks with padding and an
    empty row, non-zero initial carries) the fused recurrence's outputs, final carries and
    gradients w.r.t. ``gx``, ``w_hh``, ``b_hh`` and ``carry0`` equal ``jax.grad`` of the plain
    autodiff scan run on each seed alone, to 1e-5."""
    gx, w_hh, b_hh, mask, carry0, ct = _recurrence_inputs(cell)

    def loss(fn: object, gx: jax.Array, w: jax.Array, b: jax.Array, m: jax.Array,
             c0: tuple, ct: jax.Array) -> jax.Array:
        ys, final = fn(gx, w, b, m, c0)
        return jnp.sum(ys * ct) + sum(jnp.sum(jnp.sin(c)) for c in final)

    fused = lambda gx, w, b, m, c0: fused_recurrence(cell, gx, w, b, m, carry0=c0)  # noqa: E731
    plain = lambda gx, w, b, m, c0: _autodiff_recurrence(cell, gx, w, b, m, c0, 1)  # noqa: E731

    def outputs_and_grads(fn: object, *args: jax.Array) -> tuple:
        grads = jax.grad(lambda gx, w, b, c0: loss(fn, gx, w, b, args[3], c0, args[5]),
                         argnums=(0, 1, 2, 3))(args[0], args[1], args[2], args[4])
        return fn(*args[:5]), grads

    args = (gx, w_hh, b_hh, mask, carry0, ct)

    @jax.jit
    def both(*args: jax.Array) -> tuple:
        vmapped = jax.vmap(lambda *a: outputs_and_grads(fused, *a))(*args)
        per_seed = [outputs_and_grads(plain, *jax.tree.map(lambda v, s=s: v[s], args))
                    for s in range(S)]
        return vmapped, jax.tree.map(lambda *v: jnp.stack(v), *per_seed)

    vmapped, reference = both(*args)
    chex.assert_trees_all_close(vmapped, reference, atol=1e-5, rtol=1e-5)
    ys = np.asarray(vmapped[0][0])
    assert np.all(ys[~np.asarray(mask)] == 0)  # padded steps stay zero


def _transposed_shapes(jaxpr: jax.extend.core.Jaxpr) -> list[tuple[int, ...]]:
    """Operand shapes of every transpose in ``jaxpr`` and its sub-jaxprs (loop bodies)."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "transpose":
            shapes.append(tuple(eqn.invars[0].aval.shape))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    shapes += _transposed_shapes(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    shapes += _transposed_shapes(sub)
    return shapes


def test_vmapped_fused_recurrence_moves_no_time_axis():
    """The vmapped fused recurrence and its VJP transpose no array with a time axis (only
    ``w_hh``, once): ``lax.scan`` under vmap moves the seed axis behind time on the way in and
    back on the way out, a copy of every ``[L, ...]`` array (see mtlrnn.model.fused._scan)."""
    gx, w_hh, b_hh, mask, carry0, ct = _recurrence_inputs("lstm")

    def grads_of(fn: object) -> list[tuple[int, ...]]:
        def loss(gx: jax.Array, w: jax.Array, b: jax.Array, m: jax.Array, c0: tuple,
                 ct: jax.Array) -> jax.Array:
            return jnp.sum(fn(gx, w, b, m, c0)[0] * ct)

        grads = jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 4)))
        return _transposed_shapes(jax.make_jaxpr(grads)(gx, w_hh, b_hh, mask, carry0, ct).jaxpr)

    fused = lambda gx, w, b, m, c0: fused_recurrence("lstm", gx, w, b, m, carry0=c0)  # noqa: E731
    plain = lambda gx, w, b, m, c0: _autodiff_recurrence("lstm", gx, w, b, m, c0, 1)  # noqa: E731
    assert [shape for shape in grads_of(fused) if L in shape] == []
    # The reference (a vmapped lax.scan) does move it: the check above can fail.
    assert [shape for shape in grads_of(plain) if L in shape] != []
