"""mtlrnn.cpu_tuning: the switch, the single-arena rule, and that glibc accepts the values."""

import sys

from mtlrnn import cpu_tuning
from mtlrnn.cli import _largest_buffer
from mtlrnn.config import default_config
from mtlrnn.config import load_config

LINUX = sys.platform.startswith("linux")


def test_switch_off():
    assert not cpu_tuning.enabled({"MTLRNN_CPU_TUNING": "0"})
    off = {"malloc": False, "single_arena": False}
    assert cpu_tuning.apply({"MTLRNN_CPU_TUNING": "off"}, largest_buffer=1 << 40) == off
    assert cpu_tuning.enabled({})


def test_single_arena_only_for_large_buffers(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_tuning, "tune_malloc",
                        lambda single_arena=False: calls.append(single_arena) or True)
    assert cpu_tuning.apply({}) == {"malloc": True, "single_arena": False}
    assert cpu_tuning.apply({}, largest_buffer=(12 << 20) - 1)["single_arena"] is False
    assert cpu_tuning.apply({}, largest_buffer=12 << 20)["single_arena"] is True
    assert calls == [False, False, True]


def test_largest_buffer_from_config():
    # Default job: 32 x 40 (longest bucket) x 2 directions x 4 gates x 128 x 4 bytes.
    assert _largest_buffer(default_config()) == 32 * 40 * 2 * 4 * 128 * 4
    cfg = load_config(None, ["data.buckets=[]", "model.cell=mingru", "model.hidden_size=256"])
    assert _largest_buffer(cfg) is None  # longest sequence unknown before the data is read
    minGRU_1024 = cpu_tuning.largest_buffer_bytes(batch=32, length=1024, hidden=256, gates=2)
    assert minGRU_1024 == 64 << 20


def test_tune_malloc_on_linux():
    # mallopt accepts every value on glibc; elsewhere the function reports False.
    assert cpu_tuning.tune_malloc() is LINUX
