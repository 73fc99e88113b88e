"""Throughput peer: jax.experimental.rnn's LSTM (cuDNN on GPU) + embedding + K dense heads.

Model: embedding [V, E] (normal, std 1/sqrt(E)), `jax.experimental.rnn` LSTM with
`num_layers` unidirectional layers (weights from `rnn.init_lstm_weight`, one flat vector in
cuDNN's layout, zero initial state, all sequences full length), K dense heads
(U(-1/sqrt(H), 1/sqrt(H)) weights, zero bias), loss = sum over tasks of the mean token
cross-entropy, optax.adam(1e-3), one jax.jit step with the state donated (compiled ahead of
time on the first step; XLA's memory estimate is recorded).

Path (`lstm_path` in the record): on GPU `rnn.lstm`, whose custom VJP calls cuDNN's RNN
forward/backward (fp32 only; cuDNN may use TF32 tensor cores, as jax's default matmul
precision allows: `cudnn_allow_tf32`). Elsewhere `rnn.lstm_ref`, jax's lax.scan reference
LSTM on the unpacked weights, differentiated by autodiff (no cuDNN on CPU). `--impl cudnn`
or `--impl reference` forces one; cudnn without a GPU lowering is a failure, never a silent
fallback. Only --cell lstm and --dtype float32 are supported (jax.experimental.rnn has no
bf16 LSTM: "bfloat16 support not implemented for LSTM").
Run: python benchmarks/peers/jax_cudnn_lstm.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse
import importlib.metadata
import inspect
from typing import Any

import common

NAME = "jax_cudnn_lstm"


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    common.require(args, NAME, impl=("cudnn", "reference"))
    import jax
    import jax.numpy as jnp
    import optax
    from jax.experimental import rnn

    backend = jax.default_backend()
    use_cudnn = args.impl == "cudnn" or (args.impl is None and backend == "gpu")
    if use_cudnn and backend != "gpu":
        raise RuntimeError(f"--impl cudnn needs the CUDA backend, not {backend!r}")
    if use_cudnn and hasattr(rnn, "gpu_rnn") and rnn.gpu_rnn is None:
        raise RuntimeError("jax.experimental.rnn has no cuDNN lowering here (gpu_rnn is None)")
    E, H, layers = args.embed, args.hidden, args.layers  # noqa: N806 - paper notation

    k_embed, k_lstm, *k_heads = jax.random.split(jax.random.key(args.seed), 2 + len(args.classes))
    scale = 1.0 / H ** 0.5
    params = {
        "embed": jax.random.normal(k_embed, (args.vocab, E), jnp.float32) / E ** 0.5,
        "lstm": rnn.init_lstm_weight(k_lstm, E, H, layers, False),
        "heads": [
            {"w": jax.random.uniform(k, (H, c), jnp.float32, -scale, scale),
             "b": jnp.zeros((c,), jnp.float32)}
            for k, c in zip(k_heads, args.classes, strict=True)
        ],
    }
    tx = optax.adam(1e-3)
    state = (params, tx.init(params))
    data = [(jnp.asarray(tokens), tuple(jnp.asarray(y) for y in labels))
            for tokens, labels in batches]

    def trunk(weights: jax.Array, x: jax.Array) -> jax.Array:
        batch = x.shape[0]
        h0 = jnp.zeros((layers, batch, H), jnp.float32)
        c0 = jnp.zeros((layers, batch, H), jnp.float32)
        seq_lengths = jnp.full((batch,), x.shape[1], jnp.int32)
        if use_cudnn:
            y, _, _ = rnn.lstm(x, h0, c0, weights, seq_lengths, input_size=E, hidden_size=H,
                               num_layers=layers, dropout=0.0, bidirectional=False)
        else:
            w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, E, H, layers, False)
            y, _, _ = rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, E, H,
                                   layers, 0.0, False)
        return y  # [B, L, H]

    def loss_fn(params: dict, tokens: jax.Array, labels: tuple) -> jax.Array:
        hidden = trunk(params["lstm"], params["embed"][tokens])
        total = 0.0
        for head, y in zip(params["heads"], labels, strict=True):
            logits = hidden @ head["w"] + head["b"]
            total = total + optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return total

    def train_step(state: tuple, tokens: jax.Array, labels: tuple) -> tuple:
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    extra: dict[str, Any] = {
        **common.jax_device_info(jax),
        "lstm_path": ("cudnn (jax.experimental.rnn.lstm)" if use_cudnn
                      else "reference (jax.experimental.rnn.lstm_ref, lax.scan + autodiff)"),
        "lstm_signature": str(inspect.signature(rnn.lstm)),
    }
    if use_cudnn:
        extra["cudnn_allow_tf32"] = True  # precision=None -> cuDNN may use TF32 (jax default)
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
            "optax": optax.__version__,
        },
        extra=extra,
        finish=common.jax_finish(jax),
    )


if __name__ == "__main__":
    raise SystemExit(common.main(NAME, build))
