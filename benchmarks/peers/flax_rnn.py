"""Throughput peer: flax.linen nn.Embed + nn.RNN(nn.OptimizedLSTMCell) + K nn.Dense, optax.adam.

The step is one jax.jit'd function with the (params, opt_state) buffers donated, compiled
ahead of time on the first step (XLA's memory estimate is recorded).
--cell gru / rnn use nn.GRUCell / nn.SimpleCell; --unroll N is nn.RNN's unroll; --dtype
bfloat16 sets every module's dtype (computation) to bf16 with float32 parameters. Other
variant options are unsupported.
Run: python benchmarks/peers/flax_rnn.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse
import importlib.metadata
from typing import Any

import common

CELLS = ("lstm", "gru", "rnn")


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    common.require(args, "flax_rnn", cell=CELLS, dtype=common.DTYPES, unroll=True)
    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    classes = tuple(args.classes)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    cell_class = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[
        args.cell]
    rnn_kwargs = {} if args.unroll is None else {"unroll": max(1, args.unroll)}

    class Net(nn.Module):
        @nn.compact
        def __call__(self, tokens: jax.Array) -> tuple[jax.Array, ...]:
            x = nn.Embed(args.vocab, args.embed, dtype=dtype)(tokens)  # [B, L, E]
            for _ in range(args.layers):
                x = nn.RNN(cell_class(args.hidden, dtype=dtype), **rnn_kwargs)(x)  # [B, L, H]
            return tuple(nn.Dense(c, dtype=dtype)(x) for c in classes)  # K x [B, L, C_k]

    model = Net()
    tx = optax.adam(1e-3)
    data = [(jnp.asarray(tokens), tuple(jnp.asarray(y) for y in labels))
            for tokens, labels in batches]
    params = model.init(jax.random.key(args.seed), data[0][0])
    state = (params, tx.init(params))

    def loss_fn(params: dict, tokens: jax.Array, labels: tuple) -> jax.Array:
        logits = model.apply(params, tokens)
        # Sum over tasks of the mean cross-entropy over all B*L tokens (in float32).
        return sum(optax.softmax_cross_entropy_with_integer_labels(
            lo.astype(jnp.float32), y).mean() for lo, y in zip(logits, labels, strict=True))

    def train_step(state: tuple, tokens: jax.Array, labels: tuple) -> tuple:
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    extra: dict[str, Any] = {**common.jax_device_info(jax), "cell_class": cell_class.__name__}
    compiled_step = common.AotStep(jax.jit(train_step, donate_argnums=0), extra)

    def step(i: int) -> tuple:
        nonlocal state
        tokens, labels = data[i % len(data)]
        state, loss = compiled_step(state, tokens, labels)
        return state, loss

    return common.Runner(
        step=step,
        sync=jax.block_until_ready,
        versions={
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "flax": flax.__version__,
            "optax": optax.__version__,
        },
        extra=extra,
        finish=common.jax_finish(jax),
    )


if __name__ == "__main__":
    raise SystemExit(common.main("flax_rnn", build))
