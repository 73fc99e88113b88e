"""Throughput peer: flax.linen nn.Embed + nn.RNN(nn.OptimizedLSTMCell) + K nn.Dense, optax.adam.

The step is one jax.jit'd function with the (params, opt_state) buffers donated.
Run: python benchmarks/peers/flax_rnn.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse
import importlib.metadata

import common


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    classes = tuple(args.classes)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, tokens: jax.Array) -> tuple[jax.Array, ...]:
            x = nn.Embed(args.vocab, args.embed)(tokens)  # [B, L, E]
            for _ in range(args.layers):
                x = nn.RNN(nn.OptimizedLSTMCell(args.hidden))(x)  # [B, L, H]
            return tuple(nn.Dense(c)(x) for c in classes)  # K x [B, L, C_k]

    model = Net()
    tx = optax.adam(1e-3)
    data = [(jnp.asarray(tokens), tuple(jnp.asarray(y) for y in labels))
            for tokens, labels in batches]
    params = model.init(jax.random.key(args.seed), data[0][0])
    state = (params, tx.init(params))

    def loss_fn(params: dict, tokens: jax.Array, labels: tuple) -> jax.Array:
        logits = model.apply(params, tokens)
        # Sum over tasks of the mean cross-entropy over all B*L tokens.
        return sum(optax.softmax_cross_entropy_with_integer_labels(lo, y).mean()
                   for lo, y in zip(logits, labels, strict=True))

    @jax.jit(donate_argnums=0)
    def train_step(state: tuple, tokens: jax.Array, labels: tuple) -> tuple:
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def step(i: int) -> tuple:
        nonlocal state
        tokens, labels = data[i % len(data)]
        state, loss = train_step(state, tokens, labels)
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
        extra={"backend": jax.default_backend(), "devices": len(jax.devices())},
    )


if __name__ == "__main__":
    raise SystemExit(common.main("flax_rnn", build))
