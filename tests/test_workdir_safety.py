"""A workdir that holds a run is only continued or refused; the user's files are never
written; results on stdout, notices on stderr; extending a run needs no --config."""

from __future__ import annotations

import json
import os
import re

import pytest

from mtlrnn.cli import main
from mtlrnn.config import load_config
from mtlrnn.training.workdir import RESOLVED_CONFIG

USER_CONFIG = """\
# my experiment: keep these comments
model:
  hidden_size: 16   # small on purpose
"""


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (checkpoints on) and its summary text."""
    from conftest import TINY

    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--workdir", str(workdir), *_sets(TINY), "--quiet"]) == 0
    return workdir, (workdir / "summary.json").read_text()


def test_checkpoints_off_into_a_finished_run_is_refused(finished, tiny_overrides, capsys):
    workdir, summary = finished
    capsys.readouterr()
    args = ["train", "--workdir", str(workdir), *_sets(tiny_overrides)]
    code = main([*args, "--set", "checkpoint.enabled=false", "model.hidden_size=8"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2
    assert len(err) == 1 and "checkpoint.enabled=false" in err[0] and "--overwrite" in err[0]
    assert (workdir / "summary.json").read_text() == summary


def test_rerun_of_a_finished_run_reports_it_complete(finished, tiny_overrides, capsys):
    workdir, summary = finished
    capsys.readouterr()
    assert main(["train", "--workdir", str(workdir), *_sets(tiny_overrides), "--quiet"]) == 0
    assert (workdir / "summary.json").read_text() == summary


def test_run_without_checkpoints_is_not_replaced_by_another_config(tiny_overrides, tmp_path,
                                                                    capsys):
    workdir = tmp_path / "nockpt"
    base = ["train", "--workdir", str(workdir), *_sets(tiny_overrides),
            "--set", "checkpoint.enabled=false", "--quiet"]
    assert main(base) == 0
    summary = (workdir / "summary.json").read_text()
    capsys.readouterr()
    # Another trajectory: refused, naming the key, nothing touched.
    assert main([*base, "--set", "model.hidden_size=8"]) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size" in err and "16" in err and "8" in err
    assert (workdir / "summary.json").read_text() == summary
    # A longer run cannot continue without a checkpoint: refused too.
    assert main([*base, "--set", "train.steps=8"]) == 2
    assert "no checkpoint to continue from" in capsys.readouterr().err
    assert (workdir / "summary.json").read_text() == summary
    # The same config: complete, nothing trained.
    assert main(base) == 0
    assert (workdir / "summary.json").read_text() == summary


def test_overwrite_moves_the_old_run_aside(tiny_overrides, tmp_path, capsys):
    workdir = tmp_path / "ow"
    base = ["train", "--workdir", str(workdir), *_sets(tiny_overrides), "--quiet",
            "--set", "checkpoint.enabled=false"]
    assert main(base) == 0
    old = (workdir / "summary.json").read_text()
    (workdir / "notes.txt").write_text("mine")
    assert main([*base, "--set", "model.hidden_size=8", "--overwrite"]) == 0
    aside = [p for p in workdir.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1
    assert (aside[0] / "summary.json").read_text() == old
    assert (aside[0] / RESOLVED_CONFIG).is_file()
    assert (workdir / "notes.txt").read_text() == "mine"  # not the run's: stays
    new = json.loads((workdir / "summary.json").read_text())
    assert new["params_sha256"] != json.loads(old)["params_sha256"]


def test_users_config_yaml_in_the_workdir_is_never_written(tiny_overrides, tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(USER_CONFIG)
    args = ["train", "--config", str(exp / "config.yaml"), "--workdir", str(exp),
            *_sets(tiny_overrides), "--quiet"]
    assert main(args) == 0
    assert (exp / "config.yaml").read_text() == USER_CONFIG
    assert load_config(exp / RESOLVED_CONFIG).model.hidden_size == 16
    # Rerunning the same command continues (here: reports the complete run).
    assert main(args) == 0
    assert (exp / "config.yaml").read_text() == USER_CONFIG


def test_extending_a_run_needs_no_config(finished, tmp_path, capsys):
    import shutil

    src, _ = finished
    workdir = tmp_path / "extend"
    shutil.copytree(src, workdir)
    capsys.readouterr()
    assert main(["train", "--workdir", str(workdir), "--set", "train.steps=8"]) == 0
    out, err = capsys.readouterr()
    assert "resumed from step 6" in err and "using the config of the run" in err
    assert json.loads((workdir / "summary.json").read_text())["run"]["steps"] == 8
    # The result table is on stdout, notices on stderr.
    assert "accuracy" in out and "throughput:" in out
    assert "accuracy" not in err


def test_resume_error_shows_values_as_set(tiny_overrides, tmp_path, capsys):
    workdir = tmp_path / "opts"
    # With --config the saved config is not the base (without it, the rerun would inherit
    # the option and continue the run).
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.yaml")
    base = ["train", "--config", config, "--workdir", str(workdir), *_sets(tiny_overrides),
            "--quiet"]
    assert main([*base, "--set", "tasks.options.seq_value.loss=huber"]) == 0
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "tasks.options.seq_value.loss" in err
    assert "it was 'huber', the config now gives not set" in err
    assert "<absent>" not in err and "{}" not in err


def test_several_overrides_after_one_set_and_ew_alias(tmp_path):
    from mtlrnn.cli import _parser

    args = _parser().parse_args(
        ["train", "--set", "model.hidden_size=8", "train.steps=3", "--set", "weighting.name=ew"]
    )
    assert args.overrides == ["model.hidden_size=8", "train.steps=3", "weighting.name=ew"]
    cfg = load_config(None, args.overrides)
    assert (cfg.model.hidden_size, cfg.train.steps, cfg.weighting.name) == (8, 3, "equal")


def test_progress_without_a_terminal_has_no_carriage_returns(tiny_overrides, tmp_path, capsys):
    overrides = [o for o in tiny_overrides if not o.startswith("logging.progress")]
    code = main(["train", "--workdir", str(tmp_path / "p"), *_sets(overrides),
                 "--set", "logging.progress=true"])
    assert code == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert re.search(r"compiling the step for shape \[16, (8|16)\]", err)
    assert "train step 6/6 (100%)" in err


def test_version_and_help_do_not_start_jax():
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from mtlrnn.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "print('jax' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    version = subprocess.run([sys.executable, "-m", "mtlrnn.cli", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip().startswith("mtlrnn 0.")


def test_cpu_tuning_only_for_the_cpu_backend():
    from mtlrnn import cpu_tuning

    assert cpu_tuning.cpu_backend({"JAX_PLATFORMS": "cpu"})
    assert not cpu_tuning.cpu_backend({"JAX_PLATFORMS": "cuda,cpu"})
    off = {"malloc": False, "single_arena": False}
    assert cpu_tuning.apply({"JAX_PLATFORMS": "tpu"}, largest_buffer=1 << 40) == off


def test_lone_config_yaml_is_not_taken_for_a_run(tmp_path):
    from mtlrnn.training.workdir import run_files
    from mtlrnn.training.workdir import saved_config_path

    (tmp_path / "config.yaml").write_text(USER_CONFIG)
    assert saved_config_path(tmp_path) is None and run_files(tmp_path) == []
    (tmp_path / "summary.json").write_text("{}")  # a run of mtlrnn 0.1.0
    assert saved_config_path(tmp_path) == os.path.join(tmp_path, "config.yaml")
