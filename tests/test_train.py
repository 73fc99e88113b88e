"""The train step: compiles once, is deterministic, learns, and matches a plain reference."""

from __future__ import annotations

import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlrnn.config import apply_overrides
from mtlrnn.config import resolve_tasks
from mtlrnn.data.batching import train_batches
from mtlrnn.training.losses import task_losses
from mtlrnn.training.run import fit
from mtlrnn.training.run import load_suite
from mtlrnn.training.step import build_model
from mtlrnn.training.step import build_strategy
from mtlrnn.training.step import create_train_state
from mtlrnn.training.step import make_optimizer
from mtlrnn.training.step import make_train_step


def _setup(cfg):
    suite = load_suite(cfg)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    model = build_model(cfg.model, tasks, vocab_size=suite.vocab_size)
    optimizer, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    strategy = build_strategy(cfg.weighting, tasks)
    stream = train_batches(
        suite.splits["train"], tasks, batch_size=cfg.train.batch_size, buckets=(16,), seed=0
    )
    return suite, tasks, model, optimizer, schedule, strategy, stream


def test_step_compiles_once_across_steps(tiny_config):
    _, _, model, optimizer, schedule, strategy, stream = _setup(tiny_config)
    batch = next(stream)
    state = create_train_state(model, optimizer, strategy, batch, seed=0)
    step = jax.jit(
        chex.assert_max_traces(make_train_step(model, optimizer, strategy, schedule), n=1),
        donate_argnums=0,
    )
    losses = []
    for _ in range(5):
        state, metrics = step(state, jax.device_put(next(stream)))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 5
    assert len(set(losses)) > 1  # real, different batches went through the one trace


def test_weighted_step_equals_grad_of_weighted_sum(tiny_config):
    """The VJP-with-weights step must equal optax on jax.grad of sum_k w_k L_k (reference)."""
    cfg = apply_overrides(tiny_config, ["weighting.name=fixed", "model.dropout=0.0"])
    _, tasks, model, optimizer, schedule, strategy, stream = _setup(cfg)
    cfg_w = apply_overrides(cfg, ["weighting.params={weights: [1, 2, 0.5, 3, 0.25]}"])
    strategy = build_strategy(cfg_w.weighting, tasks)
    batch = jax.device_put(next(stream))
    state = create_train_state(model, optimizer, strategy, batch, seed=0)
    w = jnp.asarray([1, 2, 0.5, 3, 0.25])

    def total(params):
        out = model.apply({"params": params}, batch["inputs"], batch["lengths"])
        return jnp.sum(w * task_losses(tasks, out, batch))

    @jax.jit
    def reference(state):
        grads = jax.grad(total)(state.params)
        updates, _ = optimizer.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates)

    want = reference(state)
    new_state, metrics = jax.jit(make_train_step(model, optimizer, strategy, schedule))(
        state, batch
    )
    np.testing.assert_allclose(metrics["weights"], w)
    chex.assert_trees_all_close(new_state.params, want, atol=1e-6, rtol=1e-5)


def test_same_seed_same_params_different_seed_differs(tiny_config, tmp_path):
    a = fit(tiny_config, tmp_path / "a", verbose=False)
    b = fit(tiny_config, tmp_path / "b", verbose=False)
    c = fit(apply_overrides(tiny_config, ["train.seed=1"]), tmp_path / "c", verbose=False)
    assert a["params_sha256"] == b["params_sha256"]
    assert a["params_sha256"] != c["params_sha256"]


def test_training_learns_every_task(tiny_config, tmp_path):
    cfg = apply_overrides(
        tiny_config,
        [
            "train.steps=150",
            "train.log_every=1",
            "optimizer.learning_rate=0.01",
            "data.synthetic.num_train=512",
        ],
    )
    summary = fit(cfg, tmp_path / "run", verbose=False)
    first = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    dev = summary["eval"]["dev"]
    data = load_suite(cfg).splits["dev"]
    for task, values in dev.items():
        labels = data.labels[task]
        y = np.concatenate(labels) if isinstance(labels, list) else np.asarray(labels)
        if task.startswith("tag"):
            # Beat the majority-class predictor (the best label-blind guess) clearly.
            majority = np.bincount(y).max() / len(y)
            assert values["accuracy"] > majority + 0.15, (task, values, majority)
        elif task == "seq_value":
            # Beat the best constant predictor (MSE = variance of the targets).
            assert values["mse"] < 0.9 * np.var(y), (task, values, np.var(y))
    for task, loss in summary["eval_loss"]["dev"].items():
        assert loss < first["losses"][task], (task, loss, first["losses"][task])


_MESH_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
from mtlrnn.config import load_config
from mtlrnn.training.run import fit
overrides = json.loads(sys.argv[1])
out = {}
for mode in ("none", "mesh"):
    cfg = load_config(None, overrides + [f"parallel.mode={mode}"])
    s = fit(cfg, sys.argv[2] + "/" + mode, verbose=False)
    out[mode] = {"eval": s["eval"]["dev"], "devices": s["run"]["devices"]}
print(json.dumps(out))
"""


def test_mesh_data_parallel_matches_single_device(tiny_overrides, tmp_path):
    # The script asks for two CPU devices itself; the session's XLA_FLAGS (fast compile) stay.
    proc = subprocess.run(
        [sys.executable, "-c", _MESH_SCRIPT, json.dumps(tiny_overrides), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["none"]["devices"] == 1 and out["mesh"]["devices"] == 2
    for task, values in out["none"]["eval"].items():
        for metric, v in values.items():
            np.testing.assert_allclose(out["mesh"]["eval"][task][metric], v, rtol=1e-4, atol=1e-5)
