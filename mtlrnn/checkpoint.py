"""Saving and restoring a TrainState with orbax-checkpoint's CheckpointManager.

Typed PRNG keys are stored as their raw ``uint32`` key data and re-wrapped on restore.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mtlrnn.train import TrainState


def manager(directory: str | os.PathLike, *, keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager over ``directory`` keeping the last ``keep`` checkpoints."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _to_storable(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "weight_state": state.weight_state,
        "rng": jax.random.key_data(state.rng),
    }


def save(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    """Save ``state`` under its step (asynchronously; call ``mngr.wait_until_finished()``)."""
    mngr.save(int(state.step), args=ocp.args.StandardSave(_to_storable(state)), force=True)


def restore(
    mngr: ocp.CheckpointManager, target: TrainState, *, step: int | None = None
) -> TrainState:
    """Restore the checkpoint at ``step`` (default: latest) into the structure of ``target``.

    Raises:
      FileNotFoundError: no checkpoint exists.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(target))
    raw = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    return target.replace(
        step=raw["step"],
        params=raw["params"],
        opt_state=raw["opt_state"],
        weight_state=raw["weight_state"],
        rng=jax.random.wrap_key_data(raw["rng"]),
    )
