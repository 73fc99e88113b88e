"""Smoke test of benchmarks/throughput.py and its peers at tiny shapes (~15 s on 2 cores).

One harness subprocess runs the flax peer (and the torch peer when torch is importable)
plus a peer whose script does not exist, which must come back as a failure row.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "benchmarks" / "throughput.py"
TINY = ["--batch", "4", "--length", "8", "--hidden", "16", "--embed", "8", "--vocab", "50",
        "--repeats", "2", "--warmup", "1", "--threads", "1", "--rounds", "1"]
PEER_FIELDS = ("step_ms_median", "step_ms_p10", "step_ms_p90", "tokens_per_s",
               "compile_or_first_step_s", "gflops_per_s")


def _load_common():
    spec = importlib.util.spec_from_file_location(
        "bench_peers_common", REPO / "benchmarks" / "peers" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_flops_match_hand_count():
    # Hand count for B=32, L=64, E=128, H=256, heads 17+50+40=107, per token forward:
    # LSTM 8*H*(E+H) = 8*256*384 = 786,432; heads 2*H*107 = 54,784; sum 841,216.
    # Step = 3 * 2048 tokens * 841,216 = 5,168,431,104 FLOPs.
    flops = _load_common().model_flops_per_step(batch=32, length=64, embed=128, hidden=256,
                                                classes=(17, 50, 40), layers=1)
    assert flops["forward_per_token"] == 841_216
    assert flops["step"] == 5_168_431_104


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    peers = ["flax_rnn"]
    if importlib.util.find_spec("torch") is not None:
        peers.append("torch_lstm")
    peers.append("no_such_peer")
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "--peers", ",".join(peers), "--out", str(out), *TINY],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "throughput.md").read_text().startswith("# Training-step throughput")
    return json.loads((out / "throughput.json").read_text()), peers


def test_harness_reports_every_requested_peer(report):
    data, peers = report
    assert [r["peer"] for r in data["results"]] == peers
    assert data["machine"]["cpu_model"]
    assert data["machine"]["thread_env"]["PJRT_NPROC"] == "1"
    assert data["config"]["batch"] == 4 and data["tokens_per_step"] == 32
    assert data["flops"]["step"] > 0


def test_working_peers_have_positive_times(report):
    data, _ = report
    for result in data["results"]:
        if result["peer"] == "no_such_peer":
            continue
        assert result["ok"], result
        for field in PEER_FIELDS:
            assert result[field] > 0, (result["peer"], field)
        assert result["step_ms_p10"] <= result["step_ms_median"] <= result["step_ms_p90"]
        (run,) = result["rounds"]
        assert run["threads"] == 1 and len(run["step_ms"]) == 2
        assert all(t > 0 for t in run["step_ms"])
        assert run["versions"]


def test_missing_peer_is_a_failure_row(report):
    data, _ = report
    missing = data["results"][-1]
    assert missing["ok"] is False
    assert "script missing" in missing["error"]
