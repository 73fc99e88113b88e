"""Durable training: checkpoints, exact resume, SIGTERM/SIGKILL, damaged checkpoints.

The faults are injected with fit's testing hooks (MTLRNN_FAULT_SIGNAL_AT_STEP and
MTLRNN_FAULT_SIGNAL) in `python -m mtlrnn.cli train` subprocesses, so that a kill lands at a
known step. The subprocesses share a persistent XLA compilation cache: only the first one
compiles.

The reference is one uninterrupted 40-step run (checkpoints at 20 and 40, evaluation every
10 steps, dropout on, uncertainty weighting, whose learned log-variances are weighting
state). Every interrupted-and-resumed run must end with its params_sha256: the step's
randomness is fold_in(rng, step) and train_batches(start_step=step) replays the data, so a
restored state plus its step is an exact continuation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import TINY

import mtlrnn
from mtlrnn.cli import main
from mtlrnn.config import ConfigError
from mtlrnn.config import load_config
from mtlrnn.training.run import _StopRequest
from mtlrnn.training.run import fit

STEPS = 40
BASE = [
    *(o for o in TINY if not o.startswith("train.steps=")),
    f"train.steps={STEPS}",
    "checkpoint.every=20",
    "train.eval_every=10",
    "checkpoint.best_metric=dev/tag0/accuracy",
    "weighting.name=uw",
]
TIMING = ("tokens_per_s", "step_time_ms", "data_ms", "flop_per_s")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(mtlrnn.__file__)))


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _train(workdir, cache, *extra, fault=None):
    """`mtlrnn train` in a subprocess; ``fault=(step, "KILL"|"TERM")`` sets the test hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLRNN_FAULT_")}
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p),
    )
    if fault is not None:
        env.update(MTLRNN_FAULT_SIGNAL_AT_STEP=str(fault[0]), MTLRNN_FAULT_SIGNAL=fault[1])
    cmd = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", str(workdir), "--quiet"]
    cmd += _sets([*BASE, *extra])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        for key in TIMING:
            r.pop(key, None)
    return records


def _steps(workdir):
    ckpt = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: ``{"workdir", "cache", "sha"}``."""
    root = tmp_path_factory.mktemp("resume")
    cache = root / "xla-cache"
    proc = _train(root / "reference", cache)
    assert proc.returncode == 0, proc.stderr
    return {
        "workdir": root / "reference",
        "cache": cache,
        "sha": _summary(root / "reference")["params_sha256"],
    }


def _copy(reference, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(reference["workdir"], dst)
    return dst


def test_sigkill_after_a_checkpoint_then_rerun_matches_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "killed"
    proc = _train(workdir, reference["cache"], fault=(25, "KILL"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _steps(workdir) == [20]
    assert not (workdir / "summary.json").exists()

    proc = _train(workdir, reference["cache"])
    assert proc.returncode == 0, proc.stderr
    assert "mtlrnn: resumed from step 20" in proc.stderr
    assert _summary(workdir)["params_sha256"] == reference["sha"]
    # Records of steps 21-25 from the killed process were dropped, then logged again: each
    # step once, and (timing aside) identical to the uninterrupted run's.
    records = _records(workdir)
    assert [r["step"] for r in records if "loss" in r] == list(range(2, STEPS + 1, 2))
    assert [r["step"] for r in records if "eval" in r] == [10, 20, 30, 40]
    assert records == _records(reference["workdir"])
    assert _summary(workdir)["run"]["resumed_from_step"] == 20


def test_sigterm_saves_a_checkpoint_exits_0_and_the_rerun_resumes(reference, tmp_path):
    workdir = tmp_path / "terminated"
    proc = _train(workdir, reference["cache"], fault=(10, "TERM"))
    assert proc.returncode == 0, proc.stderr
    message = (
        "mtlrnn: stopped by SIGTERM at step 10; checkpoint saved; rerun the same command to resume"
    )
    assert proc.stderr.strip().splitlines()[-1] == message
    assert proc.stdout == ""  # no evaluation printed for a stopped run
    assert _steps(workdir) == [10]
    assert not (workdir / "summary.json").exists()

    proc = _train(workdir, reference["cache"])
    assert proc.returncode == 0, proc.stderr
    assert "mtlrnn: resumed from step 10" in proc.stderr
    assert _summary(workdir)["params_sha256"] == reference["sha"]
    assert _records(workdir) == _records(reference["workdir"])


def _damage(step_dir, how):
    if how == "truncate":  # an OCDBT data file of the state, cut short
        data = step_dir / "state" / "d"
        path = data / sorted(os.listdir(data))[0]
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "delete":
        os.remove(step_dir / "state" / "manifest.ocdbt")
    else:  # "unfinished": what a kill mid-save leaves, orbax's temporary directory
        os.rename(step_dir, step_dir.parent / f"{step_dir.name}.orbax-checkpoint-tmp-123")


@pytest.mark.parametrize("how", ["truncate", "delete", "unfinished"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, how):
    workdir = _copy(reference, tmp_path)
    ckpt = workdir / "checkpoints"
    _damage(ckpt / "40", how)

    proc = _train(workdir, reference["cache"])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "warning" in line)
    assert str(ckpt / "40") in warning and "moved it aside" in warning
    assert "mtlrnn: resumed from step 20" in proc.stderr
    assert _summary(workdir)["params_sha256"] == reference["sha"]
    # The damaged checkpoint is kept aside, not deleted; orbax only sees the good ones.
    aside = [n for n in os.listdir(ckpt) if n.startswith("corrupt-40-")]
    assert len(aside) == 1
    assert (ckpt / aside[0] / "state").is_dir()
    assert _steps(workdir) == [20, 40]


def test_no_restorable_checkpoint_is_a_config_error_and_moves_nothing(reference, tmp_path):
    workdir = _copy(reference, tmp_path)
    ckpt = workdir / "checkpoints"
    for step in ("20", "40"):
        _damage(ckpt / step, "delete")
    with pytest.raises(ConfigError, match="no checkpoint in .*checkpoints can be restored"):
        fit(load_config(None, BASE), workdir, verbose=False)
    assert _steps(workdir) == [20, 40]
    assert not [n for n in os.listdir(ckpt) if n.startswith("corrupt")]


@pytest.mark.parametrize(
    ("change", "key", "old", "new"),
    [
        ("model.hidden_size=32", "model.hidden_size", "16", "32"),
        ("train.seed=1", "train.seed", "0", "1"),
        ("weighting.name=equal", "weighting.name", "'uw'", "'equal'"),
    ],
)
def test_changed_config_on_resume_names_the_key(reference, tmp_path, capsys, change, key, old, new):
    workdir = _copy(reference, tmp_path)
    with pytest.raises(ConfigError) as info:
        fit(load_config(None, [*BASE, change]), workdir, verbose=False)
    message = str(info.value)
    assert message.startswith(f"{key}: cannot change when resuming"), message
    assert f"it was {old}, the config now gives {new}" in message

    capsys.readouterr()
    code = main(["train", "--workdir", str(workdir), *_sets([*BASE, change])])
    # Without --config the run's own config is the base (one notice says so), then one line.
    err = [line for line in capsys.readouterr().err.splitlines() if "using the config" not in line]
    assert code == 2 and len(err) == 1 and key in err[0], err
    assert _summary(workdir)["params_sha256"] == reference["sha"]  # nothing was touched


def test_complete_run_is_reported_and_extending_steps_resumes(reference, tmp_path, capsys):
    workdir = _copy(reference, tmp_path)
    summary = fit(load_config(None, BASE), workdir, verbose=False)
    assert "is already complete (step 40)" in capsys.readouterr().err
    assert summary == _summary(reference["workdir"])

    # train.steps may grow (as may eval and logging intervals): the run continues.
    proc = _train(workdir, reference["cache"], "train.steps=44", "train.log_every=4")
    assert proc.returncode == 0, proc.stderr
    assert "mtlrnn: resumed from step 40" in proc.stderr
    assert _summary(workdir)["run"]["steps"] == 44
    steps = [r["step"] for r in _records(workdir) if "loss" in r]
    assert steps == [*range(2, STEPS + 1, 2), 44]
    assert [r["step"] for r in _records(workdir) if "eval" in r] == [10, 20, 30, 40, 44]


def test_best_checkpoint_is_kept_besides_the_last_ones(reference):
    workdir = reference["workdir"]
    values = {r["step"]: r["eval"]["dev/tag0/accuracy"] for r in _records(workdir) if "eval" in r}
    best_value = max(values.values())
    best_step = min(s for s, v in values.items() if v == best_value)
    best_dir = workdir / "checkpoints" / "best"
    assert sorted(int(n) for n in os.listdir(best_dir) if n.isdigit()) == [best_step]
    with open(best_dir / str(best_step) / "meta" / "metadata") as f:
        meta = json.load(f)
    assert meta["best_value"] == best_value and meta["best_metric"] == "dev/tag0/accuracy"
    assert meta["step"] == best_step and meta["seed"] == 0 and meta["batch_size"] == 16
    assert meta["config"]["model.hidden_size"] == 16 and len(meta["config_sha256"]) == 64
    assert meta["mtlrnn_version"] == mtlrnn.__version__
    assert _steps(workdir) == [20, 40]  # the last checkpoint.keep=2 steps


@pytest.mark.parametrize(
    "override",
    [
        "checkpoint.best_metric=train/tag0/accuracy",  # split not in train.eval_splits
        "checkpoint.best_metric=dev/nope/accuracy",
        "checkpoint.best_metric=dev/tag0/mse",
        "train.eval_every=0",
    ],
)
def test_best_metric_must_be_evaluated(tmp_path, capsys, override):
    code = main(["train", "--workdir", str(tmp_path / "w"), *_sets([*BASE, override])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "checkpoint.best_metric" in err, err
    assert not (tmp_path / "w").exists()


def test_resume_false_keeps_the_refusal(reference, tmp_path, capsys):
    workdir = _copy(reference, tmp_path)
    code = main(["train", "--workdir", str(workdir), *_sets([*BASE, "checkpoint.resume=false"])])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run with checkpoints" in err, err


def test_stop_request_catches_signals_and_restores_the_handlers():
    def previous(signum, frame):
        raise AssertionError("the previous handler must not run inside")

    old = signal.signal(signal.SIGTERM, previous)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with _StopRequest() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.signal == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGTERM, old)
