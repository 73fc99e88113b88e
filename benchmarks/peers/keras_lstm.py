"""Throughput peer: the Keras 3 functional model of the original design, on the JAX backend.

Input -> Embedding -> LSTM(H, return_sequences=True) -> one Dense(C_k, softmax) per task;
Adam(1e-3); sparse categorical cross-entropy per output, summed with weight 1 (so the loss is
the sum of the K per-task means, as in every other peer); no metrics. The timed call is
`model.train_on_batch`, which returns Python floats and therefore syncs.
--cell gru / rnn use keras.layers.GRU / SimpleRNN; --dtype bfloat16 sets Keras's
"mixed_bfloat16" dtype policy (bf16 compute, float32 variables; the softmax heads stay
float32, as Keras's mixed-precision guide recommends). Other variant options are unsupported.
Run: python benchmarks/peers/keras_lstm.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py); {"ok": false, "error": "keras not installed"} without it.
"""

import argparse
import importlib.metadata
import os

import common

CELLS = ("lstm", "gru", "rnn")


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    common.require(args, "keras_lstm", cell=CELLS, dtype=common.DTYPES)
    os.environ["KERAS_BACKEND"] = "jax"  # must precede the first keras import
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"keras imported with backend {keras.backend.backend()!r}, not jax")
    import jax
    import jax.numpy as jnp

    keras.utils.set_random_seed(args.seed)
    if args.dtype == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    recurrent = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU,
                 "rnn": keras.layers.SimpleRNN}[args.cell]
    tokens_in = keras.Input(shape=(args.length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(args.vocab, args.embed)(tokens_in)  # [B, L, E]
    for _ in range(args.layers):
        x = recurrent(args.hidden, return_sequences=True)(x)  # [B, L, H]
    outputs = [keras.layers.Dense(c, activation="softmax", name=f"task{k}", dtype="float32")(x)
               for k, c in enumerate(args.classes)]  # K x [B, L, C_k]
    model = keras.Model(tokens_in, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=[keras.losses.SparseCategoricalCrossentropy() for _ in args.classes],
    )
    # Inputs already on the device, as in the other peers; keras still wraps them per call.
    data = [(jnp.asarray(tokens), [jnp.asarray(y) for y in labels])
            for tokens, labels in batches]

    def step(i: int) -> object:
        tokens, labels = data[i % len(data)]
        return model.train_on_batch(tokens, labels)  # Python floats: already synced

    def sync(logs: object) -> None:
        # train_on_batch converts its logs to Python floats, which waits for the step;
        # float() here makes that explicit and fails loudly if that ever changes.
        float(logs[0] if isinstance(logs, list | tuple) else logs)

    return common.Runner(
        step=step,
        sync=sync,
        versions={
            "keras": keras.__version__,
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
        },
        extra={**common.jax_device_info(jax), "keras_jit_compile": bool(model.jit_compile),
               "dtype_policy": keras.config.dtype_policy().name},
        finish=common.jax_finish(jax),
    )


if __name__ == "__main__":
    raise SystemExit(common.main("keras_lstm", build))
