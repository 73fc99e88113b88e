"""Build weighting strategies by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mtlrnn.weighting import dual
from mtlrnn.weighting import loss_based
from mtlrnn.weighting import projection
from mtlrnn.weighting.base import Strategy

_FACTORIES: dict[str, Callable[..., Strategy]] = {
    **loss_based.FACTORIES,
    **projection.FACTORIES,
    **dual.FACTORIES,
}


def names() -> tuple[str, ...]:
    """All registered strategy names, sorted."""
    return tuple(sorted(_FACTORIES))


def hyperparameters(name: str) -> tuple[str, ...]:
    """The keyword hyper-parameters the strategy ``name`` accepts."""
    factory = _lookup(name)
    return tuple(inspect.signature(factory).parameters)


def get(name: str, **hparams: Any) -> Strategy:
    """Build the strategy ``name`` with keyword hyper-parameters.

    Raises:
      ValueError: unknown name, unknown hyper-parameter, or a bad value (the message names it).
    """
    factory = _lookup(name)
    allowed = hyperparameters(name)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        allowed_text = ", ".join(allowed) if allowed else "none"
        raise ValueError(
            f"{unknown[0]}: unknown hyper-parameter for weighting {name!r}; allowed: {allowed_text}"
        )
    return factory(**hparams)


def _lookup(name: str) -> Callable[..., Strategy]:
    if name not in _FACTORIES:
        raise ValueError(f"unknown weighting {name!r}; allowed: {', '.join(names())}")
    return _FACTORIES[name]
