"""Smoke test of the benchmark suite benchmarks/run.py at tiny shapes (~20 s on 2 cores).

One `run.py --quick` subprocess runs the matmul peak, the tasks sweep (K = 1, 3) for mtlrnn
and torch_lstm (when torch is importable), and the memory search for the LSTM trunk; the
JSON, markdown and plot must exist and hold sane positive numbers, and `--report-only` must
rebuild the report from the JSON. Plus fast unit checks of the FLOP count per cell, the
variant-option plumbing and the memory search.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RUN = BENCH / "run.py"
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    return _load("bench_peers_common", BENCH / "peers" / "common.py")


def test_flops_per_cell(common):
    ref = dict(batch=32, length=64, embed=128, hidden=256, classes=(17, 50, 40), layers=1)
    heads = 2 * 256 * 107
    expected = {
        "lstm": 8 * 256 * (128 + 256),  # 786,432: the reference count of test_bench_smoke
        "gru": 2 * 128 * 768 + 2 * 256 * 768,
        "rnn": 2 * 128 * 256 + 2 * 256 * 256,
        "mingru": 2 * 128 * 512,  # input projection only, no recurrent matmul
        "minlstm": 2 * 128 * 768,
    }
    for cell, trunk in expected.items():
        flops = common.model_flops_per_step(**ref, cell=cell)
        assert flops["forward_per_token"] == trunk + heads, cell
        assert flops["step"] == 3 * 2048 * (trunk + heads), cell
    assert common.model_flops_per_step(**ref)["step"] == 5_168_431_104
    two = common.model_flops_per_step(**{**ref, "layers": 2}, cell="mingru")
    assert two["forward_per_token"] == 2 * 128 * 512 + 2 * 256 * 512 + heads


def test_variant_options_pass_through_and_unsupported(common):
    import argparse

    parser = argparse.ArgumentParser()
    common.add_model_args(parser)
    common.add_variant_args(parser)
    args = parser.parse_args(["--cell", "mingru", "--scan", "associative", "--remat",
                              "--dtype", "bfloat16"])
    assert common.variant_argv(args) == ["--cell", "mingru", "--scan", "associative",
                                         "--remat", "--dtype", "bfloat16"]
    assert common.variant_argv(parser.parse_args([])) == []
    with pytest.raises(common.Unsupported, match="--cell mingru"):
        common.require(args, "torch_lstm", cell=("lstm", "gru", "rnn"), dtype=common.DTYPES)
    common.require(parser.parse_args(["--dtype", "bfloat16"]), "torch_lstm",
                   dtype=common.DTYPES)


def test_memory_search_brackets_the_budget():
    sys.path.insert(0, str(BENCH / "peers"))
    try:
        memory = _load("bench_memory", BENCH / "memory.py")
    finally:
        sys.path.remove(str(BENCH / "peers"))
    # 1000 bytes per step of L plus 5000 fixed: the budget 105,000 fits exactly L <= 100.
    found = memory.longest_fitting(lambda n: {"length": n, "bytes": 5000 + 1000 * n},
                                   105_000, 8, 2 ** 20, 0.05)
    assert 95 <= found["max_length"] <= 100 and not found["capped"]
    assert found["first_failing_length"] > 100
    capped = memory.longest_fitting(lambda n: {"length": n, "bytes": n}, 10 ** 9, 8, 64, 0.05)
    assert capped["max_length"] == 64 and capped["capped"]
    none = memory.longest_fitting(lambda n: {"length": n, "bytes": 10 ** 9}, 1, 4, 64, 0.05)
    assert none["max_length"] == 0


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    # mtlrnn only: torch through the same harness is covered by test_bench_smoke.py, and
    # every peer process costs seconds of the suite's time budget.
    peers = "mtlrnn"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "peak,tasks,memory", "--peers", peers,
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=150, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "suite.json").read_text())


def test_suite_json_records_machine_and_peak(suite):
    _, data = suite
    assert data["device"] == "cpu" and data["quick"] is True
    assert data["machine"]["cpu_model"] and data["machine"]["device_name"]
    assert data["machine"]["versions"]["jax"]
    peak = data["suites"]["peak"]
    assert peak["status"] == "complete" and peak["record"]["ok"], peak
    assert peak["record"]["peak_gflops"]["float32"] > 0
    assert all(r["gflops"] > 0 for r in peak["record"]["results"] if "error" not in r)


def test_suite_tasks_rows_are_positive(suite):
    _, data = suite
    entry = data["suites"]["tasks"]
    assert entry["status"] == "complete"
    expected_peers = {"mtlrnn"}
    runs = entry["runs"]
    assert {r["peer"] for r in runs} == expected_peers
    assert sorted({r["point"]["tasks"] for r in runs}) == [1, 3]
    for run in runs:
        assert run["ok"], run
        assert run["tokens_per_s"] > 0 and run["step_ms_median"] > 0
        assert run["max_rss_bytes"] > 0
        assert run["device_name"]
        assert len(run["config"]["classes"]) == run["point"]["tasks"]
        if run["peer"] == "mtlrnn":
            assert run["xla_peak_bytes"] > 0 and run["backend"] == "cpu"


def test_suite_memory_finds_a_length(suite):
    _, data = suite
    (record,) = data["suites"]["memory"]["records"]
    assert record["ok"] and record["cell"] == "lstm", record
    assert [run["remat"] for run in record["runs"]] == [False, True]
    for run in record["runs"]:
        assert run["ok"], run
        assert run["max_length"] > 0 and run["bytes_at_max"] <= record["budget_bytes"]
        assert run["bytes_per_token"] > 0
        assert all(q["bytes"] > 0 for q in run["queries"])


def test_suite_markdown_and_plots(suite):
    out, _ = suite
    text = (out / "suite.md").read_text()
    assert text.startswith("# Benchmark suite")
    for heading in ("## Matmul peak", "## tasks", "## memory (`memory.py`)"):
        assert heading in text
    rows = [line for line in text.splitlines() if line.startswith("| K=")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3].replace(",", "")) > 0  # tokens/s
        assert cells[6].endswith("%") and float(cells[6][:-1]) > 0  # % of matmul peak
    if HAS_MPL:
        png = out / "plots" / "throughput_vs_tasks.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_only_rebuilds_markdown(suite):
    out, _ = suite
    (out / "suite.md").unlink()
    proc = subprocess.run([sys.executable, str(RUN), "--report-only", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## tasks" in (out / "suite.md").read_text()
