"""Data parallelism and gradient accumulation give the global-batch algorithm.

Runs in subprocesses with 8 simulated CPU devices (XLA_FLAGS must be set before JAX starts).
Single device, mesh, pmap and single device with 4 micro-batches train the same tiny synthetic
job for 20 steps, with dropout on (every dropout draw depends on the row's index in the global
batch, mtlrnn.model.dropout): per-task losses and parameters must agree to 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from mtlrnn.config import load_config, resolve_tasks
    from mtlrnn.data.sources import load_data
    from mtlrnn.data.batching import train_batches
    from mtlrnn.training.gradients import task_jacobian
    from mtlrnn.training.losses import task_losses
    from mtlrnn.training.parallel import Placement
    from mtlrnn.training.step import (build_model, build_strategy, create_train_state,
                              make_optimizer, make_train_step, split_params)

    OVERRIDES = json.loads(sys.argv[1])
    SECTIONS = sys.argv[2].split(",")
    STEPS = 20
    assert len(jax.devices()) == 8, jax.devices()

    def run(name, mode, accumulate, grad_mode, fsdp=False):
        cfg = load_config(None, OVERRIDES + [f"weighting.name={name}",
                                             f"weighting.mode={grad_mode}"])
        data = load_data(cfg.data)
        tasks = resolve_tasks(cfg.tasks, data.tasks)
        model = build_model(cfg.model, tasks, vocab_size=data.vocab_size)
        strategy = build_strategy(cfg.weighting, tasks)
        tx, schedule = make_optimizer(cfg.optimizer, STEPS)
        stream = train_batches(data.splits["train"], tasks, batch_size=cfg.train.batch_size,
                               buckets=cfg.data.buckets, seed=0)
        batches = [next(stream) for _ in range(STEPS)]
        placement = Placement(mode, (cfg.train.batch_size,), fsdp=fsdp)
        state = placement.state(create_train_state(model, tx, strategy, batches[0], seed=0))
        step = placement.compile_step(make_train_step(
            model, tx, strategy, schedule, grad_mode=grad_mode, accumulate=accumulate,
            axis_name=placement.axis_name), state)
        losses = []
        for b in batches:
            state, m = step(state, placement.batch(b))
            losses.append(np.asarray(placement.step_metrics(m)["losses"]))
        params = jax.device_get(placement.unreplicate(state.params))
        return np.stack(losses), params, batches, model, cfg

    out = {}
    CASES = {
        "equal": ("full", (("mesh", 1), ("pmap", 1), ("none", 4), ("pmap", 2), ("fsdp", 1))),
        "pcgrad": ("full", (("mesh", 1), ("pmap", 1), ("none", 4))),
        "upgrad": ("gramian", (("pmap", 2),)),
    }
    for name, (grad_mode, runs) in CASES.items():
        if name not in SECTIONS:
            continue
        ref_l, ref_p, batches, model, cfg = run(name, "none", 1, grad_mode)
        for mode, acc in runs:
            if mode == "fsdp":
                l, p, *_ = run(name, "mesh", acc, grad_mode, fsdp=True)
            else:
                l, p, *_ = run(name, mode, acc, grad_mode)
            dp = max(float(np.max(np.abs(a - b))) for a, b in
                     zip(jax.tree.leaves(ref_p), jax.tree.leaves(p)))
            out[f"{name}/{mode}/acc{acc}"] = {
                "loss": float(np.max(np.abs(l - ref_l))), "params": dp}
        out[f"{name}/moved"] = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(ref_p))

    if "per_device" in SECTIONS:
        # Per-device PCGrad then averaging is a different algorithm from PCGrad on the
        # global Jacobian: on the first batch the two directions differ.
        cfg = load_config(None, OVERRIDES + ["weighting.name=pcgrad"])
        data = load_data(cfg.data)
        tasks = resolve_tasks(cfg.tasks, data.tasks)
        model = build_model(cfg.model, tasks, vocab_size=data.vocab_size)
        strategy = build_strategy(cfg.weighting, tasks)
        tx, _ = make_optimizer(cfg.optimizer, STEPS)
        b0 = next(train_batches(data.splits["train"], tasks, batch_size=cfg.train.batch_size,
                                buckets=cfg.data.buckets, seed=0))
        state = create_train_state(model, tx, strategy, b0, seed=0)
        shared, heads = split_params(model, state.params)
        wstate = strategy.init(len(tasks))

        @jax.jit  # compiled once per batch shape (the global batch, then every shard)
        def direction(batch):
            f = lambda s: task_losses(tasks, model.apply({"params": {**s, **heads}},
                                                         batch["inputs"], batch["lengths"]),
                                      batch)
            losses, J = task_jacobian(f, shared)
            d, _, _ = strategy.combine(wstate, losses, J, key=jax.random.key(0))
            return d

        global_dir = direction(b0)
        n = 8
        parts = [direction(jax.tree.map(lambda x: x[i::n], b0)) for i in range(n)]
        local_dir = jax.tree.map(lambda *xs: sum(xs) / n, *parts)
        out["per_device_vs_global"] = max(float(np.max(np.abs(a - b))) for a, b in
            zip(jax.tree.leaves(global_dir), jax.tree.leaves(local_dir)))

    if "fit" in SECTIONS:
        # The whole job (fit: train, checkpoint, evaluate) under each mode.
        import tempfile
        from mtlrnn.training.run import fit
        fits = {}
        for mode in ("none", "pmap", "fsdp"):
            extra = ["parallel.mode=mesh", "parallel.fsdp=true"] if mode == "fsdp" else [
                f"parallel.mode={mode}"]
            cfg = load_config(None, OVERRIDES + extra + [
                "train.steps=6", "train.eval_batch_size=32", "logging.plots=false",
                "logging.progress=false"])
            s = fit(cfg, tempfile.mkdtemp(), verbose=False)
            fits[mode] = (s["eval"]["test"]["tag0"]["accuracy"],
                          s["eval_loss"]["test"]["tag0"], s["run"]["parallel"],
                          s["run"]["devices"])
        out["fit"] = fits

    if "indivisible" in SECTIONS:
        from mtlrnn.config import ConfigError
        for mode in ("mesh", "pmap"):
            try:
                Placement(mode, (30,))
            except ConfigError as e:
                out[f"indivisible/{mode}"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)
# Independent parts of the script, run as concurrent processes (compiling is single-threaded,
# so two processes keep both cores of a small CI machine busy), about equal in work.
PARTS = ("equal,upgrad,indivisible", "pcgrad,per_device,fit")

TINY = [
    "data.synthetic.num_train=256",
    "data.synthetic.num_dev=32",
    "data.synthetic.num_test=32",
    "data.synthetic.max_len=16",
    "data.buckets=[16]",  # one length: one compile per step function (and per eval)
    "model.embed_dim=8",
    "model.hidden_size=8",
    "model.dropout=0.3",
    "model.embed_dropout=0.2",
    "model.word_dropout=0.1",
    "train.batch_size=32",
    "tasks.include=[tag0,tag1,seq_value]",
]


def _run_script() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(TINY), part],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for part in PARTS
    ]
    result = {}
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=900)
            assert proc.returncode == 0, stderr[-4000:]
            line = next(x for x in stdout.splitlines() if x.startswith("RESULT"))
            result.update(json.loads(line[len("RESULT"):]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return result


@pytest.fixture(scope="module")
def result() -> dict:
    return _run_script()


RUNS = [
    *(("equal", r) for r in ("mesh/acc1", "pmap/acc1", "none/acc4", "pmap/acc2", "fsdp/acc1")),
    *(("pcgrad", r) for r in ("mesh/acc1", "pmap/acc1", "none/acc4")),
    ("upgrad", "pmap/acc2"),
]


@pytest.mark.parametrize("name, run", RUNS)
def test_modes_match_single_device(result, name, run):
    diff = result[f"{name}/{run}"]
    assert diff["loss"] < 1e-5, diff
    assert diff["params"] < 1e-5, diff
    assert result[f"{name}/moved"] > 0.01  # the runs trained (parameters are not all ~0)


def test_per_device_aggregation_is_a_different_algorithm(result):
    # Averaging per-device PCGrad directions is not PCGrad of the global batch.
    assert result["per_device_vs_global"] > 1e-4


def test_batch_not_divisible_by_devices_is_a_config_error(result):
    for mode in ("mesh", "pmap"):
        assert result[f"indivisible/{mode}"] == (
            f"train.batch_size: must be divisible by the 8 devices of parallel.mode {mode}; "
            "got 30"
        )


def test_fit_runs_in_every_mode(result):
    fits = result["fit"]
    assert [fits[m][2:] for m in ("none", "pmap", "fsdp")] == [
        ["none", 1], ["pmap", 8], ["mesh", 8]]
    for mode in ("pmap", "fsdp"):
        assert abs(fits[mode][1] - fits["none"][1]) < 1e-5  # eval loss after 6 steps
