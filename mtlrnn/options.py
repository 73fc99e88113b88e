"""Config fields with the loader's metadata, shared by every layer that owns a config section.

A section is a frozen dataclass defined next to the code it configures (the model's
hyper-parameters in :mod:`mtlrnn.model.spec`, the synthetic suite's knobs in
:mod:`mtlrnn.data.synthetic`); :mod:`mtlrnn.config` composes them and its loader reads the
metadata written here. This module imports nothing of the package.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any


def option(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with a default, a one-line ``help`` and optional bounds: inclusive
    ``min`` / ``max``, exclusive ``gt`` / ``lt`` (checked by the config loader)."""
    metadata = {"help": help, **bounds}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, help: str) -> Any:
    """A nested config section (a dataclass built with its defaults) with a ``help`` line."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


class ConfigError(ValueError):
    """A config problem, always one line: ``"<dotted.key>: <problem>; <what is allowed>"``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
