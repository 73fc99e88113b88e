"""Smoke test of benchmarks/weighting_overhead.py at tiny shapes (~25 s on 2 cores).

One harness subprocess, K=2, mode full: `equal`, one registered gradient method (if any),
a name that is not registered (must be an error row, not a crash), and the PyTorch per-task
baseline when torch is importable. Plus the goal verdicts of the markdown on made-up numbers.
"""

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtlrnn import weighting

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
HARNESS = BENCH / "weighting_overhead.py"
TINY = ["--batch", "4", "--length", "8", "--hidden", "16", "--embed", "8", "--vocab", "50",
        "--repeats", "2", "--warmup", "1", "--threads", "1", "--tasks", "2", "--modes", "full"]
MISSING = "no_such_method"


def _gradient_method() -> str | None:
    """A registered gradient method that runs in mode full, preferring pcgrad and mgda."""
    registered = weighting.names()
    for name in ("pcgrad", "mgda", *registered):
        if name not in registered:
            continue
        try:
            strategy = weighting.get(name)
        except (TypeError, ValueError):  # needs hyper-parameters
            continue
        if strategy.requires == "grads" and "full" in strategy.modes:
            return name
    return None


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_weighting")
    grad = _gradient_method()
    methods = ["equal", *([grad] if grad else []), MISSING]
    has_torch = importlib.util.find_spec("torch") is not None
    cmd = [sys.executable, str(HARNESS), "--methods", ",".join(methods), "--out", str(out),
           *TINY, *([] if has_torch else ["--no-torch"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (out / "weighting_overhead.md").read_text()
    assert markdown.startswith("# Weighting overhead")
    return json.loads((out / "weighting_overhead.json").read_text()), grad, has_torch, markdown


def test_equal_is_the_baseline(harness):
    data, _, _, markdown = harness
    assert data["machine"]["cpu_model"] and data["machine"]["thread_env"]["PJRT_NPROC"] == "1"
    (run,) = [r for r in data["runs"] if r["kind"] == "jax"]
    record = run["record"]
    assert record["ok"], record
    assert record["tasks"] == 2 and record["mode"] == "full"
    assert record["config"]["classes"] == [17, 50]  # the first K of the 17, 50, 40 cycle
    equal = record["rows"][0]
    assert equal["method"] == "equal" and equal["ratio_to_equal"] == 1.0
    assert len(equal["step_ms"]) == 4  # two timed passes of --repeats 2, pooled
    assert equal["compilations"] in (1, None)
    assert data["summary"]["table"]["full"]["equal"]["2"]["step_ms_median"] > 0
    assert "| equal | loss | 1.00x" in markdown


def test_gradient_method_has_a_ratio(harness):
    data, grad, _, _ = harness
    if grad is None:
        pytest.skip("no gradient weighting method registered yet")
    (run,) = [r for r in data["runs"] if r["kind"] == "jax"]
    (row,) = [r for r in run["record"]["rows"] if r["method"] == grad]
    assert row["status"] == "ok", row
    assert row["requires"] == "grads"
    assert row["ratio_to_equal"] > 0 and len(row["step_ms"]) == 2
    assert row["compilations"] in (1, None)  # no retracing while timed
    (goal,) = [g for g in data["summary"]["goals"] if g["method"] == grad]
    assert goal["threshold"] == 1.5 and goal["ratio"] is None  # K=3 was not run


def test_unregistered_method_is_an_error_row(harness):
    data, _, _, markdown = harness
    cell = data["summary"]["table"]["full"][MISSING]["2"]
    assert cell["status"] == "error" and "not registered" in cell["error"]
    assert f"| {MISSING} | - | error |" in markdown


def test_torch_pertask_baseline(harness):
    data, _, has_torch, markdown = harness
    if not has_torch:
        pytest.skip("torch not installed")
    (run,) = [r for r in data["runs"] if r["kind"] == "torch"]
    record = run["record"]
    assert record["ok"], record
    assert record["tasks"] == 2 and record["torch_threads"] == 1
    assert record["ratio"] > 0 and record["equal"]["step_ms_median"] > 0
    # Shared parameters: embedding 50*8 + LSTM 4*16*(8+16) + two biases 2*4*16 = 2064.
    assert record["shared_dim"] == 2064
    assert "per-task loop, K backward passes" in markdown


def test_goal_verdicts_at_three_tasks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("weighting_overhead")
    assert bench.MODES == ("full", "representation", "gramian")
    assert bench.classes_for(4, (17, 50, 40)) == (17, 50, 40, 17)
    args = bench.parse_args(["--tasks", "3", "--modes", "full,representation", "--no-torch"])

    def row(method, requires, ratio):
        return {"method": method, "status": "ok", "requires": requires,
                "ratio_to_equal": ratio, "step_ms_median": 10.0 * ratio}

    def run(mode, rows):
        return {"kind": "jax", "tasks": 3, "mode": mode, "record": {"ok": True, "rows": rows}}

    runs = [
        run("full", [row("equal", "losses", 1.0), row("fast", "grads", 1.4),
                     row("slow", "grads", 1.6), row("lossy", "losses", 3.0)]),
        run("representation", [row("equal", "losses", 1.0), row("fast", "grads", 1.2)]),
    ]
    summary = bench.summarize_results(args, runs)
    verdicts = {(g["mode"], g["method"]): g["pass"] for g in summary["goals"]}
    # 1.4 <= 1.5 passes, 1.6 fails; in mode representation 1.2 > 1.15 fails; loss-based
    # methods have no goal.
    assert verdicts == {("full", "fast"): True, ("full", "slow"): False,
                        ("representation", "fast"): False}
    report = {"machine": {"cpu_model": "x", "logical_cores": 2, "schedulable_cores": 2,
                          "threads_per_peer": 1, "platform": "p", "versions": {"python": "3"}},
              "config": bench.common.config_of(args), "summary": summary, "tasks": [3],
              "torch": False, "started": "now"}
    text = bench.markdown(report)
    assert "| slow | gradient | 1.60x (16 ms) | <= 1.5x: FAIL |" in text
    assert "| lossy | loss | 3.00x (30 ms) | no goal |" in text
