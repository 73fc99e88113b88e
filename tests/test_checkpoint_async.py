"""checkpoint.save hands device arrays to orbax; an asynchronous save must not be corrupted
by the next train step donating (and overwriting) those buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtlrnn.training import checkpoint
from mtlrnn.training.step import TrainState


def _state(value: float) -> TrainState:
    big = jnp.full((512, 512), value, jnp.float32)  # large enough for a write to take time
    return TrainState(
        step=jnp.asarray(3, jnp.int32),
        params={"w": big, "b": jnp.arange(7, dtype=jnp.float32) + value},
        opt_state={"m": big * 2},
        weight_state=jnp.ones(3) * value,
        rng=jax.random.key(1),
    )


def test_async_save_survives_a_donating_step(tmp_path):
    state = jax.device_put(_state(1.0))
    want = jax.device_get((state.params, state.opt_state, state.weight_state))
    mngr = checkpoint.manager(tmp_path / "ckpt", keep=2, async_save=True)
    try:
        checkpoint.save(mngr, state, {"note": "x"})
        bump = jax.jit(lambda s: jax.tree.map(lambda x: x + 100, s), donate_argnums=0)
        trees = (state.params, state.opt_state, state.weight_state)
        bumped = jax.block_until_ready(bump(trees))
        # (JAX donates each buffer, or copies it while orbax still reads it.)
        assert float(bumped[0]["b"][0]) == 101.0
        mngr.wait_until_finished()
        got = checkpoint.restore(mngr, jax.device_put(_state(0.0)), step=3)
    finally:
        mngr.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(
        (got.params, got.opt_state, got.weight_state)), want)
    assert int(got.step) == 3
    np.testing.assert_array_equal(jax.random.key_data(got.rng),
                                  jax.random.key_data(jax.random.key(1)))
