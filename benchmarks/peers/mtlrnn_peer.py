"""Throughput peer: mtlrnn's own train step (MultiTaskRNN + task_losses + equal weights).

Same model as the other peers: embedding, one unidirectional LSTM layer (the scanned trunk),
one linear head per task (here stacked on a task axis and applied with one vmapped call),
loss = sum over tasks of the mean token cross-entropy, Adam (lr 1e-3, no clipping, constant
schedule). The step is `mtlrnn.make_train_step`, jitted with the state donated.
Run: python benchmarks/peers/mtlrnn_peer.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse
import importlib.metadata

import common


def reference_model_and_data(args: argparse.Namespace, batches: list) -> tuple:
    """The reference model (K token heads, one unidirectional LSTM, no dropout) and the
    pre-generated batches as mtlrnn batches; shared with weighting_worker.py."""
    import jax.numpy as jnp

    import mtlrnn

    tasks = tuple(
        mtlrnn.TaskSpec(f"task{k}", "token", "classification", num_classes=c)
        for k, c in enumerate(args.classes)
    )
    model = mtlrnn.MultiTaskRNN(
        tasks=tasks,
        vocab_size=args.vocab,
        embed_dim=args.embed,
        cell="lstm",
        hidden_size=args.hidden,
        num_layers=args.layers,
        bidirectional=False,
        dropout=0.0,
    )
    lengths = jnp.full((args.batch,), args.length, jnp.int32)
    data = [
        {
            "inputs": jnp.asarray(tokens),
            "lengths": lengths,
            "labels": {t.name: jnp.asarray(y) for t, y in zip(tasks, labels, strict=True)},
        }
        for tokens, labels in batches
    ]
    return model, data


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    import jax
    import optax

    import mtlrnn
    from mtlrnn import weighting

    model, data = reference_model_and_data(args, batches)
    tx = optax.adam(1e-3)
    strategy = weighting.get("equal")
    state = mtlrnn.create_train_state(model, tx, strategy, data[0], seed=args.seed)
    train_step = jax.jit(mtlrnn.make_train_step(model, tx, strategy), donate_argnums=0)

    def step(i: int) -> tuple:
        nonlocal state
        state, metrics = train_step(state, data[i % len(data)])
        return state, metrics["loss"]

    return common.Runner(
        step=step,
        sync=jax.block_until_ready,
        versions={
            "mtlrnn": mtlrnn.__version__,
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "flax": importlib.metadata.version("flax"),
            "optax": optax.__version__,
        },
        extra={"backend": jax.default_backend(), "devices": len(jax.devices())},
    )


if __name__ == "__main__":
    raise SystemExit(common.main("mtlrnn", build))
