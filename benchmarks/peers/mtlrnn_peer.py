"""Throughput peer: mtlrnn's own train step (MultiTaskRNN + task_losses + equal weights).

Same model as the other peers: embedding, unidirectional recurrent layer(s) (the trunk), one
linear head per task (here stacked on a task axis and applied with one vmapped call),
loss = sum over tasks of the mean token cross-entropy, Adam (lr 1e-3, no clipping, constant
schedule). The step is `mtlrnn.make_train_step`, jitted with the state donated and compiled
ahead of time on the first step (so XLA's memory estimate of the step is recorded).

Variant options (common.add_variant_args) map onto `mtlrnn.MultiTaskRNN` attributes:
--cell -> cell, --impl -> impl, --scan -> scan, --unroll -> unroll, --remat -> remat,
--remat-chunk -> remat_chunk, --dtype bfloat16 -> dtype=jnp.bfloat16 (param_dtype stays
float32). Only options set to a non-default value are passed, so the peer runs against an
mtlrnn that lacks the newer attributes as long as they are not asked for; asking for one it
lacks gives an "unsupported" record.
Run: python benchmarks/peers/mtlrnn_peer.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse
import dataclasses
import importlib.metadata
from typing import Any

import common

# CLI option -> ModelConfig field (the model's hyper-parameters), passed through unchanged.
MODEL_OPTIONS = {"impl": "impl", "scan": "scan", "unroll": "unroll", "remat": "remat",
                 "remat_chunk": "remat_chunk"}
# Attributes recorded in the JSON line (what the model actually used, defaults included).
REPORTED = ("cell", "impl", "scan", "unroll", "remat", "remat_chunk")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig fields for the variant options of `args`: `cell` always, everything else
    only when set to a non-default value."""
    from mtlrnn.model.spec import ModelConfig

    variant = common.variant_of(args)
    options: dict[str, Any] = {"cell": variant["cell"]}
    for key, attribute in MODEL_OPTIONS.items():
        if variant[key] != common.VARIANT_DEFAULTS[key]:
            options[attribute] = variant[key]
    if variant["dtype"] == "bfloat16":
        options["compute_dtype"] = "bfloat16"
        options["param_dtype"] = "float32"
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    missing = sorted(k for k in options if k not in known)
    if missing:
        raise common.Unsupported(f"this mtlrnn's ModelConfig has no field(s) {', '.join(missing)}")
    return options


def build_model(args: argparse.Namespace) -> Any:
    """The reference model: K token heads, unidirectional trunk, no dropout."""
    import mtlrnn

    tasks = tuple(
        mtlrnn.TaskSpec(f"task{k}", "token", "classification", num_classes=c)
        for k, c in enumerate(args.classes)
    )
    from mtlrnn.model.spec import ModelConfig

    spec = ModelConfig(
        embed_dim=args.embed,
        hidden_size=args.hidden,
        num_layers=args.layers,
        bidirectional=False,
        dropout=0.0,
        **model_options(args),
    )
    return mtlrnn.MultiTaskRNN(tasks=tasks, spec=spec, vocab_size=args.vocab)


def reference_model_and_data(args: argparse.Namespace, batches: list) -> tuple:
    """The reference model and the pre-generated batches as mtlrnn batches; shared with
    weighting_worker.py and benchmarks/memory.py."""
    import jax.numpy as jnp

    model = build_model(args)
    lengths = jnp.full((args.batch,), args.length, jnp.int32)
    data = [
        {
            "inputs": jnp.asarray(tokens),
            "lengths": lengths,
            "labels": {t.name: jnp.asarray(y) for t, y in zip(model.tasks, labels,
                                                                strict=True)},
        }
        for tokens, labels in batches
    ]
    return model, data


def model_attributes(model: Any) -> dict[str, Any]:
    """The trunk hyper-parameters the model was built with (absent ones are skipped)."""
    spec = model.spec
    found = {}
    for name in REPORTED:
        if hasattr(spec, name):
            value = getattr(spec, name)
            found[name] = value if isinstance(value, str | int | bool | None) else str(value)
    found["dtype"] = spec.compute_dtype
    found["param_dtype"] = spec.param_dtype
    return found


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    # common.main has applied mtlrnn.cpu_tuning (as `mtlrnn train` does) unless
    # --cpu-tuning off.
    import jax
    import optax

    import mtlrnn
    from mtlrnn import weighting

    model, data = reference_model_and_data(args, batches)
    tx = optax.adam(1e-3)
    strategy = weighting.get("equal")
    state = mtlrnn.create_train_state(model, tx, strategy, data[0], seed=args.seed)
    extra: dict[str, Any] = {**common.jax_device_info(jax), "model": model_attributes(model)}
    train_step = common.AotStep(
        jax.jit(mtlrnn.make_train_step(model, tx, strategy), donate_argnums=0), extra)

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
        extra=extra,
        finish=common.jax_finish(jax),
    )


if __name__ == "__main__":
    raise SystemExit(common.main("mtlrnn", build))
