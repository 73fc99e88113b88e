"""mtlrnn.cpu_tuning: which XLA:CPU flags are added, that the user's choice wins, malloc."""

import sys

from mtlrnn import cpu_tuning
from mtlrnn.cpu_tuning import CPU_FLAGS
from mtlrnn.cpu_tuning import xla_flags_to_add

FLAG = next(iter(CPU_FLAGS))


def test_adds_flags_for_checked_jaxlib():
    added = xla_flags_to_add({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}, "0.10.2")
    assert added == [f"--{FLAG}={CPU_FLAGS[FLAG]}"]


def test_user_flag_wins_and_switch_off():
    assert xla_flags_to_add({"XLA_FLAGS": f"--{FLAG}=dot"}, "0.10.2") == []
    assert xla_flags_to_add({"MTLRNN_CPU_TUNING": "0"}, "0.10.2") == []
    assert cpu_tuning.apply({"MTLRNN_CPU_TUNING": "off"}) == {"xla_flags": [], "malloc": False}


def test_unchecked_jaxlib_gets_nothing():
    # XLA aborts on unknown flags, so versions where the flag was not checked get none.
    assert xla_flags_to_add({}, "0.11.0") == []
    assert xla_flags_to_add({}, "") == []


def test_apply_appends_to_existing_flags(monkeypatch):
    monkeypatch.setattr(cpu_tuning, "_jaxlib_version", lambda: "0.10.2")
    monkeypatch.setattr(cpu_tuning, "tune_malloc", lambda: True)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = cpu_tuning.apply(env)
    assert done == {"xla_flags": [f"--{FLAG}=-dot"], "malloc": True}
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 --{FLAG}=-dot"
    assert cpu_tuning.apply(env)["xla_flags"] == []  # idempotent


def test_tune_malloc_on_linux():
    # mallopt accepts both values on glibc; elsewhere the function reports False.
    assert cpu_tuning.tune_malloc() is sys.platform.startswith("linux")
