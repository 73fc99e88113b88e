"""The README stays true: every Python block runs as written, the command examples parse, the
files it lists are what a run writes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _bash_commands() -> list[str]:
    """Every ``mtlrnn ...`` command of the README's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mtlrnn ") or " mtlrnn " in f" {part}":
                    commands.append(part[part.index("mtlrnn") :])
    return commands


def test_every_python_block_runs_as_written(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 3
    # Relative paths in the blocks (configs/..., runs/...) as from the repository root, but
    # nothing written into the checkout.
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks):
        namespace: dict = {}
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        if "make_train_step" in block:
            losses = np.asarray(namespace["metrics"]["losses"])
            assert losses.shape == (2,) and np.isfinite(losses).all()
            assert int(namespace["state"].step) == 1
        if "as_optax" in block:
            assert all(np.isfinite(np.asarray(v)).all() for v in namespace["params"].values())
        if "mtlrnn.fit" in block:
            assert namespace["summary"]["run"]["steps"] == 100
            assert (tmp_path / "runs" / "py" / "summary.json").is_file()


@pytest.mark.parametrize("command", _bash_commands())
def test_every_command_example_parses_and_its_config_loads(command):
    from mtlrnn.cli import _parser
    from mtlrnn.config import load_config

    argv = shlex.split(command)[1:]
    args = _parser().parse_args(argv)
    if args.command in ("train", "compare"):
        config = getattr(args, "config", None)
        if config is not None and not os.path.isabs(config):
            config = str(ROOT / config)
        if config is not None and not os.path.isfile(config):
            return  # a placeholder such as `--config C`
        load_config(config, args.overrides)  # raises ConfigError on an inconsistent example


def test_workdir_table_lists_what_a_run_writes():
    from mtlrnn.training.workdir import RUN_FILES

    text = README.read_text()
    table = text[text.index("| file | content |") :].split("\n\n")[0]
    for name in RUN_FILES:
        if name.endswith(".resume"):
            continue  # exists only while a resumed run rewrites metrics.jsonl
        assert f"`{name}" in table, name
