"""train.compile_cache: the persistent compilation cache in the user's cache directory."""

from __future__ import annotations

import os
import subprocess
import sys

from mtlrnn import compile_cache


def _train(tmp_path, name: str, xdg: str, overrides: list[str]):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=xdg, JAX_ENABLE_COMPILATION_CACHE="true")
    args = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", str(tmp_path / name),
            "--quiet"]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def test_auto_writes_the_user_cache_and_off_writes_nothing(tiny_overrides, tmp_path):
    on = _train(tmp_path, "a", str(tmp_path / "xdg"), tiny_overrides)
    assert on.returncode == 0, on.stderr[-2000:]
    entries = os.listdir(tmp_path / "xdg" / "mtlrnn" / "jax")
    assert any(e.endswith("-cache") for e in entries), entries
    off = _train(tmp_path, "b", str(tmp_path / "xdg2"), [*tiny_overrides,
                                                         "train.compile_cache=off"])
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "xdg2").exists()


def test_an_unusable_directory_is_refused_naming_the_key(tiny_overrides, tmp_path):
    (tmp_path / "file").write_text("mine")
    bad = _train(tmp_path, "c", str(tmp_path / "xdg"),
                 [*tiny_overrides, f"train.compile_cache={tmp_path / 'file' / 'sub'}"])
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("mtlrnn: error: train.compile_cache:")
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "c").exists()


def test_default_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_dir() == os.path.join(str(tmp_path), "mtlrnn", "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compile_cache.default_dir().endswith(os.path.join(".cache", "mtlrnn", "jax"))
