"""The command line: a smoke run, the workdir contents, eval, and every input-error path."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from mtlrnn.cli import main


def test_train_writes_workdir_and_eval_reads_it(tiny_overrides, tmp_path, capsys):
    workdir = tmp_path / "run"
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    assert main(["train", "--workdir", str(workdir), *sets, "--set", "logging.plots=true"]) == 0
    for name in ("resolved_config.yaml", "metrics.jsonl", "summary.json", "plots/losses.png"):
        assert (workdir / name).is_file(), name
    assert (workdir / "checkpoints").is_dir()

    summary = json.loads((workdir / "summary.json").read_text())
    tasks = ["tag0", "tag1", "tag2", "seq_class", "seq_value"]
    for split in ("dev", "test"):
        assert sorted(summary["eval"][split]) == sorted(tasks)
        assert set(summary["eval"][split]["tag0"]) >= {"accuracy", "macro_f1"}
        assert set(summary["eval"][split]["seq_value"]) >= {"mse", "mae"}
    tp = summary["throughput"]
    assert tp["tokens_per_second"] > 0 and tp["step_time_ms_median"] > 0 and tp["compile_s"] > 0
    assert len(summary["params_sha256"]) == 64
    assert summary["bayes"]["test"]["tag0"]["accuracy"] > 0

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "losses" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        assert sorted(r["losses"]) == sorted(tasks) and sorted(r["weights"]) == sorted(tasks)
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            assert math.isfinite(r[key]), key
    capsys.readouterr()

    assert main(["eval", "--workdir", str(workdir), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 6
    # The restored parameters reproduce the training run's final evaluation exactly.
    assert result["eval"] == summary["eval"]


def test_tensorboard_events_written(tiny_overrides, tmp_path):
    workdir = tmp_path / "tb"
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    assert (
        main(
            [
                "train",
                "--workdir",
                str(workdir),
                *sets,
                "--set",
                "logging.tensorboard=true",
                "--quiet",
            ]
        )
        == 0
    )
    files = os.listdir(workdir / "tensorboard")
    assert any(f.startswith("events.out.tfevents") for f in files)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--set", "model.hiden_size=3"], "model.hiden_size"),
        (["--set", "model.cell=lsmt"], "model.cell"),
        (["--set", "train.steps=abc"], "train.steps"),
        (["--set", "model.dropout=1.5"], "model.dropout"),
        (["--set", "weighting.name=nope"], "weighting.name"),
        (["--set", "weighting.name=fixed", "--set", "weighting.params={w: 1}"], "weighting.params"),
        (["--set", "tasks.include=[nope]"], "tasks.include"),
        (["--set", "data.buckets=[8]"], "data.buckets"),
        (["--set", "train.eval_splits=[valid]"], "train.eval_splits"),
        (["--set", "noequals"], "noequals"),
        (["--set", "weighting.name=mgda_ub", "--set", "weighting.mode=full"], "weighting.mode"),
        (
            ["--set", "weighting.name=moco", "--set", "weighting.mode=representation"],
            "weighting.mode",
        ),
        (["--set", "weighting.name=graddrop", "--set", "weighting.mode=gramian"], "weighting.mode"),
        (
            ["--set", "weighting.name=cagrad", "--set", "weighting.params={c: -1}"],
            "weighting.params.c",
        ),
        (
            ["--set", "weighting.name=pcgrad", "--set", "weighting.chunk_size=2"],
            "weighting.chunk_size",
        ),
        (["--config", "/nonexistent/cfg.yaml"], "/nonexistent/cfg.yaml"),
    ],
)
def test_config_errors_exit_2_with_one_line(args, key, tiny_overrides, tmp_path, capsys):
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    code = main(["train", "--workdir", str(tmp_path / "w"), *sets, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert key in err, err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_bad_yaml_file_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  cell: [lstm\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"bad\.yaml:\d+:\d+: invalid YAML", err), err


def test_eval_on_missing_workdir_is_an_input_error(tmp_path, capsys):
    assert main(["eval", "--workdir", str(tmp_path / "none")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--workdir", str(tmp_path / "empty")]) == 2
    assert "resolved_config.yaml" in capsys.readouterr().err


def test_console_script_help():
    proc = subprocess.run(
        [sys.executable, "-m", "mtlrnn.cli", "train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--workdir" in proc.stdout


@pytest.mark.parametrize(("name", "mode"), [("pcgrad", "full"), ("mgda_ub", "representation")])
def test_gradient_method_run_logs_weights_and_plots(name, mode, tiny_overrides, tmp_path):
    workdir = tmp_path / name
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    args = [
        "train",
        "--workdir",
        str(workdir),
        *sets,
        "--set",
        "logging.plots=true",
        "--set",
        f"weighting.name={name}",
        "--set",
        f"weighting.mode={mode}",
        "--quiet",
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "weights" in r]
    assert train and all(
        v is not None and math.isfinite(v) for r in train for v in r["weights"].values()
    )
    assert (workdir / "plots" / "weights.png").is_file()


def test_eval_checkpoint_latest_best_and_step(tiny_overrides, tmp_path, capsys):
    workdir = tmp_path / "run"
    extra = ["checkpoint.every=2", "checkpoint.keep=3", "train.eval_every=2",
             "checkpoint.best_metric=dev/tag0/accuracy", "checkpoint.best_mode=min"]
    sets = [a for o in [*tiny_overrides, *extra] for a in ("--set", o)]
    assert main(["train", "--workdir", str(workdir), "--quiet", *sets]) == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval"] for r in records if "eval" in r}
    assert sorted(evals) == [2, 4, 6]
    capsys.readouterr()

    def evaluate(which):
        code = main(["eval", "--workdir", str(workdir), "--quiet", "--checkpoint", which])
        captured = capsys.readouterr()
        return code, (json.loads(captured.out) if code == 0 else captured.err.strip())

    for which, step in (("latest", 6), ("2", 2), ("4", 4)):
        code, result = evaluate(which)
        assert code == 0 and result["step"] == step, (which, result)
        assert result["eval"]["dev"]["tag0"]["accuracy"] == evals[step]["dev/tag0/accuracy"]
    code, best = evaluate("best")
    # best_mode=min: the step with the lowest dev accuracy (the first such one is kept).
    lowest = min(v["dev/tag0/accuracy"] for v in evals.values())
    assert code == 0 and best["checkpoint"] == "best"
    assert best["eval"]["dev"]["tag0"]["accuracy"] == lowest
    assert evals[best["step"]]["dev/tag0/accuracy"] == lowest

    code, err = evaluate("5")
    assert code == 2 and err.startswith("mtlrnn: error: --checkpoint: no checkpoint of step 5")
    assert "steps there: 2, 4, 6" in err
    code, err = evaluate("newest")
    assert code == 2 and err == (
        "mtlrnn: error: --checkpoint: must be latest, best or a step number; got 'newest'"
    )


def test_eval_checkpoint_best_needs_a_best_metric(tiny_overrides, tmp_path, capsys):
    workdir = tmp_path / "run"
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    assert main(["train", "--workdir", str(workdir), "--quiet", *sets]) == 0
    capsys.readouterr()
    assert main(["eval", "--workdir", str(workdir), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.best_metric" in err, err
