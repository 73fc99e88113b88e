"""Multi-host data parallelism: two processes on localhost (CPU, gloo collectives) train the
same run as one process with two devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

EXTRA = ["model.dropout=0.0", "train.steps=8", "checkpoint.every=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cmd(settings, workdir, *extra):
    cmd = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", str(workdir), "--quiet"]
    for item in [*settings, *EXTRA, *extra]:
        cmd += ["--set", item]
    return cmd


def _env(devices: int) -> dict:
    env = dict(os.environ)
    # Added to the session's XLA_FLAGS (fast-compile flags of conftest.py); the last wins.
    env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_two_processes_match_one_process_with_two_devices(tiny_overrides, tmp_path):
    port = _free_port()
    multi = tmp_path / "multi"
    procs = [
        subprocess.Popen(
            _cmd(tiny_overrides, multi, f"parallel.coordinator=localhost:{port}",
                 "parallel.num_processes=2", f"parallel.process_id={i}"),
            env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    single = subprocess.run(_cmd(tiny_overrides, tmp_path / "single", "parallel.mode=mesh"),
                            env=_env(2), capture_output=True, text=True, timeout=600, check=False)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]

    a = json.loads((multi / "summary.json").read_text())
    b = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert a["run"]["processes"] == 2 and a["run"]["devices"] == 2
    assert b["run"]["processes"] == 1 and b["run"]["devices"] == 2
    for task, loss in b["eval_loss"]["test"].items():
        assert abs(a["eval_loss"]["test"][task] - loss) < 1e-5, task
    # Process 1 kept its own logs apart; both wrote the shared checkpoints.
    assert (multi / "process-1" / "summary.json").exists()
    steps = sorted(int(d.name) for d in (multi / "checkpoints").iterdir() if d.name.isdigit())
    assert steps == [4, 8]
