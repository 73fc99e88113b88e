"""Gradient-based strategies solved as small optimisation problems over task weights (MGDA,
UPGrad, DualProj, Nash-MTL, FairGrad, MoCo, ExcessMTL, DB-MTL, GradNorm)."""

from __future__ import annotations

FACTORIES: dict = {}
