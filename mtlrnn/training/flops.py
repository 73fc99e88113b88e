"""Matmul FLOPs of a step, counted from its jaxpr, and the peak FLOP/s of known devices.

XLA's ``compiled.cost_analysis()`` counts the body of a while loop once, so for a recurrence
(a ``lax.scan`` over ``L`` steps) it reports about ``1/L`` of the work. Here the step's jaxpr
is walked instead: every ``dot_general`` counts ``2 * batch * M * N * K`` FLOPs, a ``scan``
body counts ``length`` times, both branches of a ``cond`` count their maximum, and a
``while`` body (the weighting solvers' iterations, whose trip count is data-dependent) counts
once. Only matmuls are counted, as model-FLOPs utilisation (MFU) usually is: elementwise work
(gates, activations, losses) is left out, so MFU is a lower bound of the work done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

#: Dense peak FLOP/s by device kind (substring of ``jax.Device.device_kind``, first match)
#: and matmul input dtype, from the vendors' data sheets (no sparsity). float32 matmuls on
#: NVIDIA GPUs run as TF32 under JAX's default precision, so their peak is TF32's.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 494.7e12}),
    ("H100", {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 494.7e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("TPU v5p", {"bfloat16": 459e12}),
    ("TPU v5 lite", {"bfloat16": 197e12}),
    ("TPU v4", {"bfloat16": 275e12}),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The dense peak FLOP/s of ``device_kind`` for ``dtype`` matmuls, or None (unknown
    device, e.g. a CPU, or a dtype the table lacks)."""
    for name, peaks in PEAKS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    contracted = int(np.prod([lhs[d] for d in lhs_contract], dtype=np.int64))
    del rhs, lhs_batch  # the output holds the batch and free dimensions
    return 2.0 * float(np.prod(out, dtype=np.float64)) * contracted


def _sub_jaxprs(eqn: Any) -> list[tuple[Any, float]]:
    """``(jaxpr, times)`` of the jaxprs inside ``eqn``."""
    name = eqn.primitive.name
    params = eqn.params
    if name == "scan":
        return [(params["jaxpr"].jaxpr, float(params["length"]))]
    if name == "cond":
        return [(max(params["branches"], key=lambda b: jaxpr_matmul_flops(b.jaxpr)).jaxpr, 1.0)]
    if name == "while":
        return [(params["body_jaxpr"].jaxpr, 1.0), (params["cond_jaxpr"].jaxpr, 1.0)]
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):  # a Jaxpr
                found.append((item, 1.0))
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):  # a ClosedJaxpr
                found.append((item.jaxpr, 1.0))
    return found


def jaxpr_matmul_flops(jaxpr: Any) -> float:
    """Matmul FLOPs of one evaluation of ``jaxpr`` (see the module docstring)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_flops(eqn)
            continue
        for inner, times in _sub_jaxprs(eqn):
            total += times * jaxpr_matmul_flops(inner)
    return total


def matmul_flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matmul FLOPs of one call ``fn(*args)`` (traced, not run)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
