"""Matmul FLOPs from the jaxpr: scan bodies count once per step (XLA's cost analysis does not)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import model_spec

from mtlrnn.model.trunk import Trunk
from mtlrnn.training.flops import matmul_flops
from mtlrnn.training.flops import peak_flops


def _recurrence(x, w):
    def body(h, _):
        return jnp.tanh(h @ w), None

    h, _ = jax.lax.scan(body, x, None, length=10)
    return h.sum()


def test_scan_counts_every_step_and_grad_adds_the_backward():
    x, w = jnp.ones((64, 128)), jnp.ones((128, 128))
    one = 2 * 64 * 128 * 128
    assert matmul_flops(_recurrence, x, w) == 10 * one
    # Backward: per step one matmul for dh and one for dw (the forward is run again too).
    assert matmul_flops(jax.grad(_recurrence, argnums=1), x, w) == 3 * 10 * one
    assert matmul_flops(jax.jit(_recurrence), x, w) == 10 * one  # through jit


def test_cond_counts_its_larger_branch_and_while_its_body_once():
    x = jnp.ones((8, 16))

    def f(p):
        return jax.lax.cond(p, lambda a: a @ a.T @ a, lambda a: a + 1, x)

    assert matmul_flops(f, True) == 2 * 8 * 8 * 16 + 2 * 8 * 8 * 16

    def g(a):
        return jax.lax.while_loop(lambda c: c[1] < 5, lambda c: (c[0] @ c[0], c[1] + 1),
                                  (a, 0))[0]

    assert matmul_flops(g, jnp.ones((4, 4))) == 2 * 4 * 4 * 4


@pytest.mark.parametrize("impl", ["fused", "autodiff"])
def test_lstm_layer_forward_matches_the_formula(impl):
    B, L, E, H = 4, 7, 5, 6
    trunk = Trunk(model_spec(cell="lstm", hidden_size=H, impl=impl))
    x, lengths = jnp.ones((B, L, E)), jnp.full((B,), L)
    params = trunk.init(jax.random.key(0), x, lengths)
    flops = matmul_flops(lambda p: trunk.apply(p, x, lengths)[0], params)
    assert flops == 2 * B * L * E * 4 * H + 2 * B * L * H * 4 * H


def test_peak_table():
    assert peak_flops("NVIDIA H200", "bfloat16") == pytest.approx(989.4e12)
    assert peak_flops("cpu", "float32") is None
    assert peak_flops("TPU v4", "float32") is None
