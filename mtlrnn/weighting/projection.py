"""Gradient-based strategies of the projection family (PCGrad, GradVac, GradDrop, CAGrad,
IMTL-G, Aligned-MTL, ConFIG)."""

from __future__ import annotations

FACTORIES: dict = {}
