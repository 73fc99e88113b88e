"""mtlrnn.cpu_tuning: the switch, and that glibc accepts the malloc settings."""

import sys

from mtlrnn import cpu_tuning


def test_switch_off():
    assert not cpu_tuning.enabled({"MTLRNN_CPU_TUNING": "0"})
    assert cpu_tuning.apply({"MTLRNN_CPU_TUNING": "off"}) == {"malloc": False}
    assert cpu_tuning.enabled({})


def test_tune_malloc_on_linux():
    # mallopt accepts both values on glibc; elsewhere the function reports False.
    assert cpu_tuning.tune_malloc() is sys.platform.startswith("linux")
    assert cpu_tuning.apply({}) == {"malloc": sys.platform.startswith("linux")}
