"""What a new user meets first: label checks before compiling, plots that show something,
atomic writes of the files a user gets."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mtlrnn.cli import main
from mtlrnn.config import ConfigError
from mtlrnn.config import load_config
from mtlrnn.data.sources import check_labels
from mtlrnn.data.sources import load_data
from mtlrnn.fileio import atomic_writer
from mtlrnn.fileio import write_text_atomic
from mtlrnn.reporting import history_figures

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def _column_file(path, rows: int, *, pos, tag) -> str:
    """``rows`` sentences of 4 words; ``pos(i)``/``tag(i)`` give word i's labels."""
    lines = []
    for s in range(rows):
        for j in range(4):
            i = s * 4 + j
            lines.append(f"{WORDS[i % len(WORDS)]}\t{pos(i)}\t{tag(i)}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _columns_config(tmp_path, *, train_tag, dev_tag):
    pos = lambda i: ["DET", "NOUN", "VERB"][i % 3]  # noqa: E731
    train = _column_file(tmp_path / "train.txt", 12, pos=pos, tag=train_tag)
    dev = _column_file(tmp_path / "dev.txt", 4, pos=pos, tag=dev_tag)
    return [
        "data.source=columns",
        f"data.columns.files={{train: {train}, dev: {dev}}}",
        "data.columns.tasks={pos: 1, tag: 2}",
        "data.buckets=[8]",
        "model.embed_dim=8",
        "model.hidden_size=8",
        "train.batch_size=4",
        "train.eval_batch_size=4",
        "train.steps=2",
        "train.eval_splits=[dev]",
        "logging.progress=false",
        "logging.plots=false",
    ]


def test_task_without_train_labels_is_refused_before_compiling(tmp_path, capsys):
    overrides = _columns_config(tmp_path, train_tag=lambda i: "_", dev_tag=lambda i: "X")
    workdir = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["train", "--workdir", str(workdir), *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "task 'tag'" in err[0] and "no labels in the train split" in err[0]
    assert not workdir.exists()  # refused before anything was written


def test_single_class_and_unlabelled_dev_are_warned_about(tmp_path):
    overrides = _columns_config(tmp_path, train_tag=lambda i: "B", dev_tag=lambda i: "_")
    cfg = load_config(None, overrides)
    data = load_data(cfg.data)
    warnings = check_labels(data, data.tasks, ("train", "dev"))
    assert any("'tag' has a single class in the train split ('B')" in w for w in warnings)
    assert any("'tag' has no labels in the dev split" in w for w in warnings)
    assert not any("'pos'" in w for w in warnings)


def test_masked_task_without_labels_is_refused(tmp_path):
    from mtlrnn.data.dataset import SequenceDataset
    from mtlrnn.data.sources import Data
    from mtlrnn.tasks import TaskSpec

    spec = TaskSpec("y", "sequence", "regression", dim=1)
    ds = SequenceDataset(
        inputs=[np.ones(3, np.int32)] * 2,
        labels={"y": np.zeros((2, 1), np.float32)},
        masks={"y": np.zeros(2, np.float32)},
    )
    with pytest.raises(ConfigError, match="task 'y' has no labels in the train split"):
        check_labels(Data(tasks=(spec,), splits={"train": ds}, vocab_size=4), (spec,), ("train",))


def _history(weights):
    return [
        {"step": 2 * (i + 1), "losses": {"a": 1.0 / (i + 1), "b": 2.0}, "weights": w}
        for i, w in enumerate(weights)
    ]


def test_short_run_plot_has_markers_and_fixed_weights_say_so():
    import matplotlib.pyplot as plt

    figs = history_figures(_history([{"a": 1.0, "b": 1.0}]))
    try:
        (ax,) = figs["losses.png"].axes
        assert len(ax.lines) == 2 and all(line.get_marker() == "o" for line in ax.lines)
        (wax,) = figs["weights.png"].axes
        assert not wax.lines and len(wax.patches) == 2  # bars, not overlapping flat lines
        assert "constant" in wax.get_title()
    finally:
        for f in figs.values():
            plt.close(f)
    figs = history_figures(_history([{"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 1.5}]))
    try:
        (wax,) = figs["weights.png"].axes
        assert len(wax.lines) == 2 and "constant" not in wax.get_title()
    finally:
        for f in figs.values():
            plt.close(f)


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_writer(path) as f:
        f.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_atomic_writer_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert target.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "new"
