"""The training loop: no host reads between log steps, the device-side window, user hooks."""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtlrnn.config import ConfigError
from mtlrnn.config import apply_overrides
from mtlrnn.training import window as windows
from mtlrnn.training.loop import Hook
from mtlrnn.training.prefetch import Prefetch
from mtlrnn.training.run import fit


class _HostReads:
    """Counts reads of device values on the host (``float(x)``, ``int(x)``, ``device_get``,
    ``x.tolist()``...: everything that goes through ``jax.Array._value``). On a CPU,
    ``jax.transfer_guard_device_to_host`` sees nothing (the device is the host's memory), so
    the test counts at the one place every such read passes. ``np.asarray(x)`` is not seen."""

    def __init__(self, monkeypatch):
        self.count = 0
        array_type = type(jnp.zeros(()))
        original = array_type._value

        def counted(array):
            self.count += 1
            return original.fget(array)

        monkeypatch.setattr(array_type, "_value", property(counted))


class _Record(Hook):
    def __init__(self, reads: _HostReads) -> None:
        self.reads = reads
        self.at_step: list[tuple[int, int]] = []
        self.logged: list[int] = []

    def on_step(self, loop):
        self.at_step.append((loop.step, self.reads.count))

    def on_log(self, loop, window):
        self.logged.append(loop.step)


def test_no_host_read_between_log_steps(tiny_config, tmp_path, monkeypatch):
    cfg = apply_overrides(
        tiny_config, ["train.steps=12", "train.log_every=4", "checkpoint.enabled=false"]
    )
    reads = _HostReads(monkeypatch)
    hook = _Record(reads)
    fit(cfg, tmp_path / "w", verbose=False, hooks=[hook])
    assert hook.logged == [4, 8, 12]
    steps = [s for s, _ in hook.at_step]
    assert steps == list(range(1, 13))
    for (_, before), (step, after) in zip(hook.at_step, hook.at_step[1:], strict=False):
        if step % 4:  # not a log step: the loop only dispatched work
            assert after == before, f"{after - before} host read(s) before step {step}"
    # The spy sees the reads that do happen (the window read at each log step).
    log_reads = [after - before for (_, before), (s, after) in
                 zip(hook.at_step, hook.at_step[1:], strict=False) if s % 4 == 0]
    assert all(n > 0 for n in log_reads), log_reads


class _StopAt(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, loop):
        if loop.step == self.step:
            loop.request_stop("enough")


def test_a_user_hook_stops_the_run_with_a_checkpoint_and_the_rerun_resumes(tiny_config,
                                                                         tmp_path):
    cfg = apply_overrides(tiny_config, ["train.steps=6", "checkpoint.every=0"])
    out = fit(cfg, tmp_path / "w", verbose=False, hooks=[_StopAt(3)])
    assert out == {"interrupted": True, "signal": "enough", "step": 3,
                   "workdir": str(tmp_path / "w")}
    assert (tmp_path / "w" / "checkpoints" / "3").is_dir()
    records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]  # the partial window is logged too
    resumed = fit(cfg, tmp_path / "w", verbose=False)
    whole = fit(cfg, tmp_path / "whole", verbose=False)
    assert resumed["run"]["resumed_from_step"] == 3
    assert resumed["params_sha256"] == whole["params_sha256"]
    # Batches prepared in the loop instead of the prefetch thread: the same run.
    inline = fit(apply_overrides(cfg, ["train.prefetch=0"]), tmp_path / "inline", verbose=False)
    assert inline["params_sha256"] == whole["params_sha256"]


def test_prefetch_keeps_order_raises_where_the_stream_fails_and_stops():
    placed = []

    def place(batch):
        placed.append(batch["i"])
        return {"i": jnp.asarray(batch["i"])}

    def stream(fail_at=None):
        i = 0
        while True:
            if i == fail_at:
                raise ValueError(f"bad batch {i}")
            yield {"i": i}
            i += 1

    with Prefetch(iter([{"i": 0}, {"i": 1}, {"i": 2}]), place, depth=2) as feed:
        got = [(b["i"], int(d["i"])) for b, d in feed]
    assert got == [(0, 0), (1, 1), (2, 2)]
    with Prefetch(stream(fail_at=3), place, depth=2) as feed:
        assert [next(feed)[0]["i"] for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad batch 3"):
            next(feed)
        with pytest.raises(StopIteration):
            next(feed)
    # An endless stream: the thread reads at most ``depth`` (+1 in hand) ahead and stops.
    placed.clear()
    feed = Prefetch(stream(), place, depth=2)
    assert next(feed)[0]["i"] == 0
    time.sleep(0.2)
    assert len(placed) <= 4
    feed.close()
    assert not feed._thread.is_alive()
    with pytest.raises(ValueError, match="depth"):
        Prefetch(stream(), place, depth=0)


def _reference_window(steps: list[dict], task_names):
    """The window of ``steps`` computed on the host, step by step."""
    bad = [i for i, m in enumerate(steps) if m["nonfinite"]]
    last = steps[-1]
    return {
        "steps": len(steps),
        "tokens": sum(int(m["tokens"]) for m in steps),
        "nonfinite": len(bad),
        "first_bad_step": bad[0] + 1 if bad else None,
        "bad_tasks": tuple(n for n, ok in zip(task_names, steps[bad[0]]["finite_losses"],
                                             strict=True) if not ok) if bad else (),
        "loss": last["loss"],
        "losses": last["losses"],
    }


def test_window_fold_equals_the_host_reference():
    names = ("a", "b", "c")
    rng = np.random.default_rng(0)
    steps = []
    for i in range(7):
        finite = rng.random(3) > 0.3 if i in (2, 5) else np.ones(3, bool)
        steps.append({
            "loss": np.float32(rng.random()),
            "losses": rng.random(3).astype(np.float32),
            "weights": rng.random(3).astype(np.float32),
            "lr": np.float32(0.1),
            "grad_norm": np.float32(rng.random()),
            "tokens": np.int32(rng.integers(1, 100)),
            "nonfinite": np.int32(0 if finite.all() and i not in (2, 5) else 1),
            "finite_losses": finite,
        })
    acc = windows.init(3)
    for i, m in enumerate(steps):
        acc = windows.fold(acc, jax.device_put(m), np.int32(i + 1))
    got = windows.read(acc, names)
    want = _reference_window(steps, names)
    assert (got.steps, got.tokens, got.nonfinite) == (want["steps"], want["tokens"],
                                                      want["nonfinite"])
    assert got.first_bad_step == want["first_bad_step"] == 3
    assert got.bad_tasks == want["bad_tasks"]
    np.testing.assert_allclose(got.last["loss"], want["loss"])
    np.testing.assert_allclose(got.last["losses"], want["losses"])
    empty = windows.read(windows.init(3), names)
    assert empty.first_bad_step is None and empty.bad_tasks == () and empty.nonfinite == 0


def test_profile_steps_trace_into_the_workdir_and_data_wait_is_reported(tiny_config, tmp_path):
    cfg = apply_overrides(
        tiny_config, ["logging.profile_steps=[2,4]", "checkpoint.enabled=false"]
    )
    summary = fit(cfg, tmp_path / "w", verbose=False)
    traces = list((tmp_path / "w" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    tp = summary["throughput"]
    assert 0 < tp["data_wait_s"] < summary["run"]["wall_s"] and tp["step_time_ms_median"] > 0
    records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["data_ms"] > 0 for r in records if "loss" in r)


def test_profile_steps_must_be_a_range():
    import pytest

    from mtlrnn.config import ConfigError
    from mtlrnn.config import load_config

    for bad in ("[3]", "[4,2]", "[-1,2]"):
        with pytest.raises(ConfigError, match=r"logging.profile_steps: must be \[\] or \[A, B\]"):
            load_config(None, [f"logging.profile_steps={bad}"])


def test_early_stopping_ends_the_run_and_a_rerun_reports_it_complete(tiny_config, tmp_path):
    # Learning rate ~0: the watched metric never improves after the first evaluation (step 2),
    # so with patience 2 the run stops at the evaluation of step 6.
    cfg = apply_overrides(
        tiny_config,
        [
            "train.steps=40",
            "train.eval_every=2",
            "train.patience=2",
            "optimizer.learning_rate=1e-12",
            "checkpoint.best_metric=dev/tag0/accuracy",
        ],
    )
    summary = fit(cfg, tmp_path / "w", verbose=False)
    early = summary["run"]["stopped_early"]
    assert summary["run"]["steps"] == 6
    assert (early["step"], early["best_step"], early["patience"]) == (6, 2, 2)
    assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) >= ["6", "best"]
    records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 6
    # Complete: the same config trains nothing more.
    again = fit(cfg, tmp_path / "w", verbose=False)
    assert again["run"] == summary["run"]
    # More patience continues from step 6, with the evaluations so far counted: it stops at 8.
    more = fit(apply_overrides(cfg, ["train.patience=3"]), tmp_path / "w", verbose=False)
    assert more["run"]["resumed_from_step"] == 6 and more["run"]["steps"] == 8
    assert more["run"]["stopped_early"]["best_step"] == 2


def test_early_stopping_needs_a_metric_and_one_seed(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"train.patience: .*best_metric is ''"):
        fit(apply_overrides(tiny_config, ["train.patience=2"]), tmp_path / "a", verbose=False)
    with pytest.raises(ConfigError, match=r"train.patience: .*train.num_seeds=2"):
        fit(
            apply_overrides(
                tiny_config,
                [
                    "train.patience=2",
                    "train.num_seeds=2",
                    "train.eval_every=2",
                    "checkpoint.best_metric=dev/tag0/accuracy",
                ],
            ),
            tmp_path / "b",
            verbose=False,
        )


def test_fit_on_data_in_memory(tiny_config, tmp_path):
    from mtlrnn.data.sources import data_sha256
    from mtlrnn.training.run import evaluate
    from mtlrnn.training.run import load_suite

    cfg = apply_overrides(tiny_config, ["train.steps=4"])
    suite = load_suite(cfg)
    from_config = fit(cfg, tmp_path / "cfg", verbose=False)
    given = fit(cfg, tmp_path / "mem", verbose=False, data=suite)
    assert given["params_sha256"] == from_config["params_sha256"]
    assert given["run"]["data_sha256"] == data_sha256(suite)
    assert from_config["run"]["data_sha256"] is None
    # Other data: a resume or a rerun of the complete run is refused, naming the data.
    fewer = dataclasses.replace(
        suite, splits={**suite.splits, "train": suite.splits["train"].subset(range(100))}
    )
    assert data_sha256(fewer) != data_sha256(suite)
    with pytest.raises(ConfigError, match="data: the run in .* other data"):
        fit(cfg, tmp_path / "mem", verbose=False, data=fewer)
    with pytest.raises(ConfigError, match="data: the run in .* fit\\(data=...\\)"):
        fit(apply_overrides(cfg, ["train.steps=6"]), tmp_path / "mem", verbose=False)
    longer = fit(apply_overrides(cfg, ["train.steps=6"]), tmp_path / "mem", verbose=False,
                 data=suite)
    assert longer["run"]["resumed_from_step"] == 4
    with pytest.raises(ConfigError, match="evaluate it with mtlrnn.evaluate"):
        evaluate(tmp_path / "mem", verbose=False)
    assert evaluate(tmp_path / "mem", verbose=False, data=suite)["step"] == 6
