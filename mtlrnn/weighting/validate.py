"""Hyper-parameter checks shared by every weighting factory.

Plain Python, run in the factories (before any tracing). Each raises ValueError with a
message that starts with the parameter's name and states the allowed values, e.g.
``lr: must be a number > 0, got 0.0``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_num_tasks(num_tasks: Any) -> None:
    """Raise ValueError unless ``num_tasks`` is a positive int."""
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed`` (booleans never match an int choice)."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite real number within the bounds.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. Messages read
    ``must be a number > 0``, ``>= 0``, ``<= 1`` or ``in [0, 1)``.
    """
    if low is not None and high is not None:
        allowed = (
            f"must be a number in {'(' if low_open else '['}{_fmt(low)}, "
            f"{_fmt(high)}{')' if high_open else ']'}"
        )
    elif low is not None:
        allowed = f"must be a number {'>' if low_open else '>='} {_fmt(low)}"
    elif high is not None:
        allowed = f"must be a number {'<' if high_open else '<='} {_fmt(high)}"
    else:
        allowed = "must be a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: {allowed}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name}: {allowed}, got {value!r}")
    return v


def check_int(name: str, value: Any, *, low: int) -> int:
    """``value`` if it is an int (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")
    return int(value)


def check_dim(dim: Any) -> int:
    """``dim`` (the flat gradient width ``D``) if it is a positive int."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"dim: must be a positive int (the gradient width D), got {dim!r}")
    return int(dim)
