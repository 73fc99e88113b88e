"""The population axis: ``train.num_seeds = S`` trains S seeds in one vmapped step.

Each seed of a population must be the run that seed would be on its own (losses and params to
1e-5, dropout on, batches of different buckets padded to the longest), resume exactly, and
write an ordinary run into ``<workdir>/seed<seed>``.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import TINY

from mtlrnn.config import ConfigError
from mtlrnn.config import load_config
from mtlrnn.config import resolve_tasks
from mtlrnn.data.batching import make_batch
from mtlrnn.data.batching import pad_time
from mtlrnn.data.batching import stack_batches
from mtlrnn.data.batching import train_batches
from mtlrnn.training import run
from mtlrnn.training import window as windows
from mtlrnn.training.loop import Hook

STEPS = 30
BASE = [
    *(o for o in TINY if not o.startswith("train.steps=")),
    f"train.steps={STEPS}",
    "train.log_every=5",
    "checkpoint.every=10",
    "model.dropout=0.2",
    "model.embed_dropout=0.1",
    "model.word_dropout=0.1",
    "model.num_layers=2",
    "weighting.name=uw",  # learned weighting state, per seed
]


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _params(workdir):
    cfg = run.load_run(workdir)
    suite = run.load_suite(cfg)
    model = run.model_for(cfg, resolve_tasks(cfg.tasks, suite.tasks), suite)
    return run.restore_state(workdir, cfg, model, suite).params


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """A 2-seed population run, uninterrupted: ``(workdir, result)``."""
    workdir = tmp_path_factory.mktemp("population") / "pop"
    cfg = load_config(None, [*BASE, "train.num_seeds=2", "train.population_mode=vmap"])
    result = run.fit(cfg, workdir, verbose=False)
    return workdir, result


def test_seeds_pad_to_different_buckets():
    """The test below means something: the two seeds' batches differ in length at some step,
    so one of them is padded further than it would be on its own."""
    cfg = load_config(None, BASE)
    suite = run.load_suite(cfg)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    lengths = [
        [
            b["inputs"].shape[1]
            for _, b in zip(
                range(STEPS),
                train_batches(
                    suite.splits["train"], tasks, batch_size=16, buckets=(8, 16), seed=seed
                ),
                strict=False,
            )
        ]
        for seed in (0, 1)
    ]
    assert any(a != b for a, b in zip(*lengths, strict=True))


def test_each_seed_equals_its_own_run(population, tmp_path):
    workdir, result = population
    assert sorted(result["seeds"]) == ["0", "1"]
    index = json.loads((workdir / "population.json").read_text())
    assert index["workdirs"]["1"] == str(workdir / "seed1")
    for seed in (0, 1):
        alone = tmp_path / f"seed{seed}"
        summary = run.fit(load_config(None, [*BASE, f"train.seed={seed}"]), alone, verbose=False)
        mine = workdir / f"seed{seed}"
        got = [r for r in _records(mine / "metrics.jsonl") if "losses" in r]
        want = [r for r in _records(alone / "metrics.jsonl") if "losses" in r]
        assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(5, 31, 5))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(
                list(a["losses"].values()), list(b["losses"].values()), rtol=1e-5
            )
            np.testing.assert_allclose(
                list(a["weights"].values()), list(b["weights"].values()), rtol=1e-5
            )
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
            _params(mine),
            _params(alone),
        )
        # The seed's directory is an ordinary run of that seed.
        saved = run.load_run(mine)
        assert (saved.train.seed, saved.train.num_seeds) == (seed, 1)
        assert result["seeds"][str(seed)]["run"]["population"] == 2
        assert result["seeds"][str(seed)]["run"]["seed"] == seed
        mine_eval = result["seeds"][str(seed)]["eval"]["dev"]["tag0"]["accuracy"]
        assert mine_eval == pytest.approx(summary["eval"]["dev"]["tag0"]["accuracy"], abs=1e-3)
        assert run.evaluate(mine, verbose=False)["step"] == STEPS
    # The seeds differ from one another.
    assert result["seeds"]["0"]["params_sha256"] != result["seeds"]["1"]["params_sha256"]


class _StopAt(Hook):
    def __init__(self, step):
        self.step = step

    def on_step(self, loop):
        if loop.step == self.step:
            loop.request_stop("test")


def test_population_resumes_exactly(population, tmp_path):
    workdir, result = population
    want = {s: result["seeds"][s]["params_sha256"] for s in ("0", "1")}
    cfg = load_config(None, [*BASE, "train.num_seeds=2", "train.population_mode=vmap"])
    out = tmp_path / "pop"
    stopped = run.fit(cfg, out, verbose=False, hooks=[_StopAt(20)])
    assert stopped["interrupted"] and stopped["step"] == 20
    for seed in (0, 1):
        assert sorted(os.listdir(out / f"seed{seed}" / "checkpoints")) >= ["10", "20"]
    # A kill during step 20's saves: seed 1 only got as far as step 10. Both seeds continue
    # from step 10, and end where the uninterrupted population ended.
    shutil.rmtree(out / "seed1" / "checkpoints" / "20")
    resumed = run.fit(cfg, out, verbose=False)
    assert {s: resumed["seeds"][s]["params_sha256"] for s in ("0", "1")} == want
    assert resumed["seeds"]["0"]["run"]["resumed_from_step"] == 10
    steps = [r["step"] for r in _records(out / "seed0" / "metrics.jsonl") if "losses" in r]
    assert steps == list(range(5, 31, 5))  # records after step 10 dropped, then logged again
    # Complete: a rerun trains nothing and reports the same seeds.
    again = run.fit(cfg, out, verbose=False)
    assert {s: again["seeds"][s]["params_sha256"] for s in ("0", "1")} == want


def test_map_mode_equals_vmap_mode(population, tmp_path):
    """population_mode map (one seed after another inside the step; auto on CPU) trains the
    same seeds as vmap."""
    workdir, result = population
    cfg = load_config(None, [*BASE, "train.num_seeds=2", "train.population_mode=auto"])
    mapped = run.fit(cfg, tmp_path / "map", verbose=False)
    for seed in ("0", "1"):
        assert mapped["seeds"][seed]["run"]["population_mode"] == "map"
        assert result["seeds"][seed]["run"]["population_mode"] == "vmap"
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
            _params(tmp_path / "map" / f"seed{seed}"),
            _params(workdir / f"seed{seed}"),
        )


def test_population_refusals(tmp_path):
    plain = tmp_path / "plain"
    run.fit(load_config(None, [*BASE, "train.steps=2", "checkpoint.enabled=false"]), plain,
            verbose=False)
    with pytest.raises(ConfigError, match=r"train.num_seeds: .* holds an ordinary run"):
        run.fit(load_config(None, [*BASE, "train.num_seeds=2"]), plain, verbose=False)
    with pytest.raises(ConfigError, match=r"train.num_seeds: .*parallel.mode none"):
        run.fit(
            load_config(None, [*BASE, "train.num_seeds=2", "parallel.mode=pmap"]),
            tmp_path / "pmap",
            verbose=False,
        )
    with pytest.raises(ConfigError, match="train.num_seeds"):
        load_config(None, ["train.num_seeds=0"])


def test_stack_batches_pads_token_fields_only():
    cfg = load_config(None, BASE)
    suite = run.load_suite(cfg)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    ds = suite.splits["train"]
    fits = np.flatnonzero(ds.lengths <= 8)[:4]
    short = make_batch(ds, tasks, fits, length=8, batch_size=4)
    long = make_batch(ds, tasks, [0, 1, 2], length=16, batch_size=4)
    stacked = stack_batches([short, long], tasks)
    assert stacked["inputs"].shape == (2, 4, 16)
    np.testing.assert_array_equal(stacked["inputs"][0, :, :8], short["inputs"])
    assert not stacked["inputs"][0, :, 8:].any()
    np.testing.assert_array_equal(stacked["lengths"][0], short["lengths"])
    for t in tasks:
        assert stacked["labels"][t.name].shape[:2] == (2, 4)
        if t.level == "token":
            assert not stacked["masks"][t.name][0, :, 8:].any()
    assert pad_time(long, tasks, 16) is long
    with pytest.raises(ValueError, match="cannot pad"):
        pad_time(long, tasks, 8)


def test_window_folds_each_seed():
    """A population window keeps each seed's tokens and its own first non-finite step."""
    acc = windows.init(2, population=2)
    finite = np.ones((2, 2), bool)
    steps = [
        {"nonfinite": [0, 0], "finite_losses": finite, "tokens": [10, 20]},
        {"nonfinite": [0, 1], "finite_losses": np.array([[1, 1], [1, 0]], bool),
         "tokens": [11, 21]},
        {"nonfinite": [1, 1], "finite_losses": np.zeros((2, 2), bool), "tokens": [12, 22]},
    ]
    for i, m in enumerate(steps):
        metrics = {
            "nonfinite": np.asarray(m["nonfinite"], np.int32),
            "finite_losses": m["finite_losses"],
            "tokens": np.asarray(m["tokens"], np.int32),
            "loss": np.float32([1.0, 2.0]) + i,
            "losses": np.ones((2, 2), np.float32),
            "weights": np.ones((2, 2), np.float32),
            "lr": np.float32([0.1, 0.1]),
            "grad_norm": np.float32([3.0, 4.0]),
        }
        acc = windows.fold(acc, metrics, np.int32(i + 1))
    w0, w1 = windows.read_population(acc, ("a", "b"))
    assert (w0.steps, w0.tokens, w0.nonfinite, w0.first_bad_step) == (3, 33, 1, 3)
    assert (w1.steps, w1.tokens, w1.nonfinite, w1.first_bad_step) == (3, 63, 2, 2)
    assert w0.bad_tasks == ("a", "b") and w1.bad_tasks == ("b",)
    assert float(w1.last["loss"]) == 4.0 and float(w0.last["grad_norm"]) == 3.0


def test_seeds_spread_over_a_mesh_equal_one_device(population, tmp_path):
    """parallel.mode mesh: each of 2 devices trains one seed (the seed axis is sharded)."""
    import subprocess
    import sys

    workdir, _ = population
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", str(tmp_path / "mesh"),
           "--quiet"]
    for item in [*BASE, "train.num_seeds=2", "parallel.mode=mesh"]:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        summary = json.loads((tmp_path / "mesh" / f"seed{seed}" / "summary.json").read_text())
        assert (summary["run"]["devices"], summary["run"]["parallel"]) == (2, "mesh")
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
            _params(tmp_path / "mesh" / f"seed{seed}"),
            _params(workdir / f"seed{seed}"),
        )
