"""Saving and restoring a TrainState with orbax-checkpoint's CheckpointManager.

Layout of ``<workdir>/checkpoints``::

    <step>/state              the TrainState (orbax StandardSave; typed PRNG keys stored as
                              their raw uint32 key data and re-wrapped on restore)
    <step>/meta               a small JSON item: step, seed, batch_size, the config keys that
                              fix the trajectory and their sha256, mtlrnn and jax versions
    best/<step>/...           the best checkpoint by ``checkpoint.best_metric`` (a second
                              manager keeping one step; its meta also holds metric and value)
    corrupt-<step>-<time>/    a checkpoint that could not be restored, or an orbax temporary
                              directory left by a kill mid-save: moved aside, never deleted

The step of a checkpoint is also the position in the training stream
(``train_batches(start_step=step)``), so state plus step is an exact continuation.

A checkpoint counts as good when its meta and its whole state restore into the target's
structure: a truncated or deleted file of orbax's OCDBT store fails the restore rather than
reading back as zeros (tests/test_resume.py damages checkpoints both ways).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtlrnn.training.step import TrainState

ITEMS = ("state", "meta")
BEST_DIR = "best"
# Orbax writes a step into "<step>.orbax-checkpoint-tmp-<n>" and renames it when complete.
_TMP_RE = re.compile(r"^(?:.*?_)?(\d+)\.orbax-checkpoint-tmp")


def manager(
    directory: str | os.PathLike,
    *,
    keep: int = 2,
    async_save: bool = True,
    create: bool = True,
) -> ocp.CheckpointManager:
    """A CheckpointManager over ``directory`` keeping the last ``keep`` checkpoints.

    Items ``state`` and ``meta`` (see the module docstring). ``async_save`` writes in a
    background thread: call ``wait_until_finished()`` (or ``close()``) before exiting.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def _to_storable(state: TrainState) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "weight_state": state.weight_state,
        "rng": jax.random.key_data(state.rng),
    }


def save(mngr: ocp.CheckpointManager, state: TrainState, meta: Mapping[str, Any]) -> int:
    """Save ``state`` and the JSON ``meta`` under ``state.step``; returns the step.

    The arrays are handed to orbax as they are, sharded or not: each process writes the
    shards it holds (so a state sharded across processes is saved without gathering it).
    Orbax copies them to host memory before ``save`` returns (its synchronous transfer), so
    the next train step may donate their buffers while the write goes on in the background
    (tests/test_checkpoint_async.py). Asynchronous when the manager is; call
    ``mngr.wait_until_finished()``.
    """
    step = int(state.step)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_to_storable(state)),
        meta=ocp.args.JsonSave({**meta, "step": step}),
    )
    mngr.save(step, args=args, force=True)
    return step


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The JSON meta item of the checkpoint at ``step``."""
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("step") != step:
        raise ValueError(f"meta item does not describe step {step}: {meta!r}")
    return meta


def restore(
    mngr: ocp.CheckpointManager, target: TrainState, *, step: int | None = None
) -> TrainState:
    """Restore the checkpoint at ``step`` (default: latest) into the structure of ``target``.

    Each array comes back with the sharding of ``target``'s (a fresh state: on one device,
    for the caller to place like a fresh one; a placed state: directly onto its devices,
    each process reading only its shards).

    Raises:
      FileNotFoundError: no checkpoint exists.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    abstract = jax.tree.map(_abstract, _to_storable(target))
    raw = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    raw = raw["state"]
    if int(raw["step"]) != step:
        raise ValueError(f"state holds step {int(raw['step'])}, not {step}")
    return target.replace(
        step=raw["step"],
        params=raw["params"],
        opt_state=raw["opt_state"],
        weight_state=raw["weight_state"],
        rng=jax.random.wrap_key_data(raw["rng"]),
    )


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """What to restore ``x`` as: its shape, dtype and (for a device array) sharding."""
    sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if sharding is None else x.dtype,
                                sharding=sharding)


def _ignore_closed_loop_callbacks() -> None:
    """Silence the leftovers of a failed restore, for the rest of the process.

    When one array of a restore fails, orbax closes its asyncio loop while tensorstore is
    still reading the others; their completion callbacks then raise "Event loop is closed"
    (harmlessly, seconds later, through ``sys.unraisablehook``), which Python prints as
    tracebacks. This hook drops exactly those and passes everything else on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_mtlrnn_filter", False):
        return

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._mtlrnn_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def move_aside(path: str, step: int | str) -> str:
    """Rename the checkpoint directory ``path`` to ``corrupt-<step>-<time>`` next to it.

    Orbax ignores that name, and nothing is deleted. Returns the new path.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = os.path.dirname(os.path.abspath(path))
    new = os.path.join(parent, f"corrupt-{step}-{stamp}")
    n = 1
    while os.path.exists(new):
        n += 1
        new = os.path.join(parent, f"corrupt-{step}-{stamp}-{n}")
    os.rename(path, new)
    return new


def incomplete(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """``(step, path)`` of the orbax temporary directories in ``directory`` (unfinished saves)."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        match = _TMP_RE.match(name)
        if match and os.path.isdir(os.path.join(directory, name)):
            out.append((int(match.group(1)), os.path.join(os.fspath(directory), name)))
    return out


def has_checkpoints(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a finished checkpoint step or an unfinished save."""
    if not os.path.isdir(directory):
        return False
    return any(name.isdigit() or _TMP_RE.match(name) for name in os.listdir(directory))


def read_latest_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The meta of the newest checkpoint in ``directory`` whose meta reads, or None."""
    if not os.path.isdir(directory):
        return None
    mngr = manager(directory, create=False)
    try:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                return read_meta(mngr, step)
            except Exception:  # a damaged checkpoint: restore_latest_good reports it
                continue
        return None
    finally:
        mngr.close()


def _move_unfinished_saves(directory: str, warn: Callable[[str], None]) -> None:
    """Move every orbax temporary directory in ``directory`` aside, with a warning each."""
    for step, path in incomplete(directory):
        new = move_aside(path, step)
        warn(
            f"mtlrnn: warning: {path} is an unfinished save (interrupted while writing step "
            f"{step}); moved it aside to {new}"
        )


def _report_bad_steps(
    directory: str,
    bad: list[tuple[int, str]],
    used: int,
    *,
    warn: Callable[[str], None],
    move_bad: bool,
) -> None:
    """Warn about each ``(step, why)`` of ``bad`` that step ``used`` replaced; when
    ``move_bad``, move its directory aside first."""
    for bad_step, why in bad:
        path = os.path.join(directory, str(bad_step))
        moved = f"moved it aside to {move_aside(path, bad_step)} and " if move_bad else ""
        warn(
            f"mtlrnn: warning: checkpoint {path} cannot be restored ({why}); "
            f"{moved}used step {used}"
        )


def restore_latest_good(
    directory: str | os.PathLike,
    target: TrainState,
    *,
    check_meta: Callable[[dict[str, Any]], None] = lambda meta: None,
    warn: Callable[[str], None] = print,
    move_bad: bool = True,
) -> tuple[TrainState, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that restores: ``(state, meta)``.

    Steps are tried newest first. A step whose meta or state does not restore is skipped
    with a warning and, when ``move_bad``, moved aside (:func:`move_aside`) once an older
    good one is found; orbax temporary directories are always moved aside when ``move_bad``.
    ``check_meta`` runs on each readable meta before its state is restored; what it raises
    (e.g. a :class:`~mtlrnn.config.ConfigError` for a changed config) propagates.

    Returns None when ``directory`` holds no finished checkpoint (only unfinished saves, or
    nothing).

    Raises:
      RuntimeError: finished checkpoints exist but none restores; nothing is moved, as
        failing everywhere points at the environment or the data rather than the files.
    """
    directory = os.path.abspath(directory)
    if move_bad:
        _move_unfinished_saves(directory, warn)
    if not os.path.isdir(directory):
        return None
    _ignore_closed_loop_callbacks()  # a failing restore's leftovers start before it raises
    mngr = manager(directory, create=False)  # never saves: restoring only
    try:
        bad: list[tuple[int, str]] = []
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                meta = read_meta(mngr, step)
            except Exception as e:  # any unreadable meta: a damaged checkpoint
                bad.append((step, _one_line(e)))
                continue
            check_meta(meta)
            try:
                state = restore(mngr, target, step=step)
            except Exception as e:  # any failed restore: a damaged checkpoint
                bad.append((step, _one_line(e)))
                continue
            _report_bad_steps(directory, bad, step, warn=warn, move_bad=move_bad)
            return state, meta
        if bad:
            detail = "; ".join(f"step {s}: {why}" for s, why in bad)
            raise RuntimeError(f"no checkpoint in {directory} can be restored ({detail})")
        return None
    finally:
        mngr.close()


def restore_step(
    directory: str | os.PathLike, target: TrainState, step: int
) -> tuple[TrainState, dict[str, Any]]:
    """The checkpoint of ``step`` in ``directory``: ``(state, meta)``; read-only.

    Raises:
      KeyError: no finished checkpoint of that step (the message lists the steps there).
      RuntimeError: it exists but cannot be restored.
    """
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise KeyError(f"no checkpoint of step {step} in {directory} (steps there: none)")
    _ignore_closed_loop_callbacks()
    mngr = manager(directory, create=False)
    try:
        steps = mngr.all_steps()
        if step not in steps:
            have = ", ".join(map(str, sorted(steps))) or "none"
            raise KeyError(f"no checkpoint of step {step} in {directory} (steps there: {have})")
        try:
            meta = read_meta(mngr, step)
            return restore(mngr, target, step=step), meta
        except Exception as e:  # any failed restore: a damaged checkpoint
            raise RuntimeError(
                f"checkpoint {os.path.join(directory, str(step))} cannot be restored "
                f"({_one_line(e)})"
            ) from None
    finally:
        mngr.close()


def improves(value: float | None, best: float | None, mode: str) -> bool:
    """Whether metric ``value`` beats ``best`` (``mode`` max or min); a missing or non-finite
    value never does, anything finite beats no best yet."""
    if value is None or not np.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


class RunCheckpoints:
    """The checkpoints of one training run: the last ``keep`` steps under ``directory`` and,
    with ``best_metric``, the best step by that metric under ``directory/best``.

    The best checkpoint lives in its own manager (``max_to_keep=1``) so that the last-k
    retention of the main one never removes it; a new best is written only when an
    evaluation improves on the best value so far, which is read back from its meta on
    resume.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int,
        async_save: bool,
        meta: Mapping[str, Any],
        best_metric: str = "",
        best_mode: str = "max",
        warn: Callable[[str], None] = print,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.meta = dict(meta)
        self.last = manager(self.directory, keep=keep, async_save=async_save)
        self.last_saved: int | None = self.last.latest_step()
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.best: ocp.CheckpointManager | None = None
        self.best_value: float | None = None
        if best_metric:
            best_dir = os.path.join(self.directory, BEST_DIR)
            for step, path in incomplete(best_dir):
                new = move_aside(path, step)
                warn(f"mtlrnn: warning: {path} is an unfinished save; moved it aside to {new}")
            self.best = manager(best_dir, keep=1, async_save=async_save)
            self._load_best(warn)

    def _load_best(self, warn: Callable[[str], None]) -> None:
        assert self.best is not None
        step = self.best.latest_step()
        if step is None:
            return
        try:
            meta = read_meta(self.best, step)
        except Exception as e:  # a damaged best checkpoint: move it aside, track anew
            path = os.path.join(self.best.directory, str(step))
            new = move_aside(path, step)
            self.best.reload()
            warn(
                f"mtlrnn: warning: best checkpoint {path} cannot be read ({_one_line(e)}); "
                f"moved it aside to {new}"
            )
            return
        same = ("best_metric", "best_mode", "config_sha256")
        mine = {"best_metric": self.best_metric, "best_mode": self.best_mode, **self.meta}
        if all(meta.get(k) == mine.get(k) for k in same):
            self.best_value = meta.get("best_value")
        # Else it ranks another metric or run: the next evaluation replaces it.

    def save(self, state: TrainState, step: int | None = None) -> None:
        """Save ``state`` as the latest checkpoint (unless its step is already saved);
        ``step``: ``state.step`` when the caller knows it (saves reading it back)."""
        step = int(state.step) if step is None else step
        if step != self.last_saved:
            self.last_saved = save(self.last, state, self.meta)

    def improves(self, value: float | None) -> bool:
        """Whether ``value`` of ``best_metric`` beats the best checkpoint so far."""
        return self.best is not None and improves(value, self.best_value, self.best_mode)

    def save_best(self, state: TrainState, value: float, step: int | None = None) -> bool:
        """Save ``state`` as the best checkpoint if ``value`` improves on it; returns whether."""
        if not self.improves(value):
            return False
        assert self.best is not None
        step = int(state.step) if step is None else step
        # A resumed run replays steps; a best step at or after this one is superseded.
        for old in self.best.all_steps():
            if old >= step:
                self.best.delete(old)
        meta = {
            **self.meta,
            "best_metric": self.best_metric,
            "best_mode": self.best_mode,
            "best_value": float(value),
        }
        save(self.best, state, meta)
        self.best_value = float(value)
        return True

    def wait(self) -> None:
        """Block until every pending (asynchronous) save is on disk."""
        self.last.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the managers."""
        self.last.close()
        if self.best is not None:
            self.best.close()
