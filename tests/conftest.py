"""Shared fixtures: a tiny synthetic configuration that trains in seconds."""

from __future__ import annotations

import pytest

from mtlrnn.config import Config
from mtlrnn.config import load_config

TINY = [
    "data.synthetic.num_train=256",
    "data.synthetic.num_dev=64",
    "data.synthetic.num_test=64",
    "data.synthetic.max_len=16",
    "data.buckets=[8,16]",
    "model.embed_dim=16",
    "model.hidden_size=16",
    "train.batch_size=16",
    "train.eval_batch_size=32",
    "train.steps=6",
    "train.log_every=2",
    "logging.progress=false",
    "logging.plots=false",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config() -> Config:
    return load_config(None, TINY)
