"""Where arrays live and how the train step is compiled: one device, a mesh, or pmap.

``parallel.mode``:

- ``none``: one device; ``jax.jit`` with the state donated.
- ``mesh`` (``auto`` picks it when more than one device is visible): a ``jax.sharding.Mesh``
  over all devices with one ``data`` axis; the batch is sharded along its leading axis, the
  state replicated, and one jitted step sees the global batch (XLA inserts the reductions).
- ``mesh`` with ``fsdp``: parameters, optimizer and weighting state are sharded along the
  same ``data`` axis (each array on its largest dimension divisible by the device count;
  small arrays stay replicated) and XLA gathers them where the step needs them: memory per
  device falls with the device count, the numbers stay those of the global batch.
- ``pmap``: the classic per-device step: ``jax.pmap`` over all local devices with axis
  ``data``; each device takes ``B / n`` rows and the step ``psum``s per-task loss sums, label
  counts and gradients (or per-task Jacobians) before the weighting method combines them
  (see :func:`mtlrnn.training.step.make_train_step`), so every method sees the global batch.

Multi-host (``mesh``): :func:`initialize_distributed` calls ``jax.distributed.initialize``
from ``parallel.coordinator/num_processes/process_id`` (or lets JAX detect the cluster when
``JAX_COORDINATOR_ADDRESS`` is set). Every process computes the same global batch plan (same
data files, same seed), keeps its own contiguous block of rows and builds the global array
with ``jax.make_array_from_process_local_data``; the mesh spans every process's devices.

In every mode the per-task losses and gradients are those of the whole global batch, so the
three modes give the same training run up to float summation order (tests check 1e-5).
Batch sizes must divide by the device count.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from mtlrnn.config import ConfigError

AXIS = "data"


def initialize_distributed(parallel_cfg: Any) -> bool:
    """Join a multi-process run if the config (or the environment) asks for one.

    Returns True for a multi-process run. Must run before JAX uses a device; calling it
    again is a no-op. CPU processes talk through gloo collectives.
    """
    import os

    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if parallel_cfg.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=parallel_cfg.coordinator,
            num_processes=parallel_cfg.num_processes,
            process_id=parallel_cfg.process_id,
        )
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
    else:
        return False
    return jax.process_count() > 1


class Placement:
    """Device placement for one run (see the module docstring).

    Attributes:
      mode: the resolved mode, ``none``, ``mesh`` or ``pmap``.
      mesh: the mesh (``mesh`` mode) or ``None``.
      num_devices: devices the batch is spread over.
      axis_name: ``"data"`` in pmap mode (pass it to ``make_train_step``), else ``None``.
    """

    def __init__(
        self, mode: str, batch_sizes: tuple[int, ...] = (), *, fsdp: bool = False
    ) -> None:
        devices = jax.local_devices() if mode == "pmap" else jax.devices()
        if mode == "auto":
            mode = "mesh" if len(devices) > 1 else "none"
        if mode not in ("none", "mesh", "pmap"):
            raise ConfigError(f"parallel.mode: must be auto, none, mesh or pmap; got {mode!r}")
        self.mode = mode
        self.devices = devices if mode != "none" else devices[:1]
        self.mesh = Mesh(np.array(devices), (AXIS,)) if mode == "mesh" else None
        self.num_devices = len(self.devices)
        self.axis_name = AXIS if mode == "pmap" else None
        self.fsdp = fsdp and mode == "mesh"
        self.processes = jax.process_count() if mode == "mesh" else 1
        if jax.process_count() > 1 and mode != "mesh":
            raise ConfigError(
                f"parallel.mode: a multi-process run needs mode mesh (or auto); got {mode}"
            )
        keys = ("train.batch_size", "train.eval_batch_size")
        for key, size in zip(keys, batch_sizes, strict=False):
            if mode != "none" and size % self.num_devices:
                raise ConfigError(
                    f"{key}: must be divisible by the {self.num_devices} devices of "
                    f"parallel.mode {mode}; got {size}"
                )

    def batch(self, batch: Mapping[str, Any]) -> Any:
        """Move a host batch ``[B, ...]`` to the device(s) (``[n, B / n, ...]`` for pmap)."""
        if self.mode == "none":
            return jax.device_put(batch)
        if self.mode == "mesh":
            sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
            if self.processes == 1:
                return jax.device_put(batch, sharding)
            # Multi-host: this process's contiguous block of rows of the global batch.
            p, n = jax.process_index(), self.processes
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(
                    sharding, np.asarray(x)[p * len(x) // n : (p + 1) * len(x) // n]
                ),
                batch,
            )
        n = self.num_devices
        split = jax.tree.map(lambda x: np.reshape(x, (n, -1, *np.shape(x)[1:])), batch)
        return _put_pmap(split, self.devices)

    def batch_sharding(self) -> NamedSharding:
        """``mesh`` mode: arrays split on their leading axis over the devices."""
        if self.mesh is None:
            raise ValueError("batch_sharding: only in mesh mode")
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    def eval_batch(self, batch: Mapping[str, Any]) -> Any:
        """Evaluation runs jitted on the global batch (a mesh in pmap mode too: no psum)."""
        if self.mode == "pmap":
            return jax.device_put(batch, self.devices[0])
        return self.batch(batch)

    def state(self, state: Any) -> Any:
        """Move the train state to the device(s): replicated (a leading device axis in pmap)."""
        if self.mode == "none":
            return jax.device_put(state, self.devices[0])
        if self.mode == "mesh":
            if self.processes > 1:
                return jax.tree.map(lambda x: _global_array(x, self._state_sharding(x)), state)
            if self.fsdp:
                return jax.tree.map(lambda x: jax.device_put(x, self._fsdp_sharding(x)), state)
            return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))
        return _put_pmap(jax.tree.map(lambda x: _stack([x] * self.num_devices), state),
                         self.devices)

    def _state_sharding(self, x: Any) -> NamedSharding:
        if self.fsdp:
            return self._fsdp_sharding(x)
        return NamedSharding(self.mesh, PartitionSpec())

    def _fsdp_sharding(self, x: Any) -> NamedSharding:
        """Shard ``x`` on its largest axis divisible by the device count (else replicate)."""
        shape = np.shape(x)
        n = self.num_devices
        axes = sorted(range(len(shape)), key=lambda a: -shape[a])
        for a in axes:
            if shape[a] >= n and shape[a] % n == 0:
                spec = [None] * len(shape)
                spec[a] = AXIS
                return NamedSharding(self.mesh, PartitionSpec(*spec))
        return NamedSharding(self.mesh, PartitionSpec())

    def unreplicate(self, tree: Any) -> Any:
        """One copy of a replicated tree (device 0's in pmap mode; identity otherwise)."""
        if self.mode != "pmap":
            return tree
        return jax.tree.map(lambda x: jax.device_put(x[0], self.devices[0]), tree)

    def compile_step(self, step_fn: Callable[..., Any], state: Any = None) -> Any:
        """``step_fn`` jitted (``none``/``mesh``) or pmapped over ``data``, state donated.

        With ``fsdp`` pass the placed ``state``: the new state keeps its sharding (so the
        compiled step can be called again on its own output) and metrics are replicated.
        """
        if self.mode == "pmap":
            return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=0, devices=self.devices)
        if self.fsdp:
            if state is None:
                raise ValueError("compile_step: fsdp needs the placed state")
            shardings = jax.tree.map(lambda x: x.sharding, state)
            replicated = NamedSharding(self.mesh, PartitionSpec())
            return jax.jit(step_fn, donate_argnums=0, out_shardings=(shardings, replicated))
        return jax.jit(step_fn, donate_argnums=0)

    def compile_eval(self, eval_fn: Callable[..., Any]) -> Any:
        """The jitted eval step; its (summed) outputs are replicated on every device."""
        if self.mode == "mesh":
            replicated = NamedSharding(self.mesh, PartitionSpec())
            return jax.jit(eval_fn, out_shardings=replicated)
        return jax.jit(eval_fn)

    def host(self, tree: Any) -> Any:
        """Host numpy copies of the state's arrays (replicated or fsdp-sharded), any mode."""
        tree = self.unreplicate(tree)
        if self.processes > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.device_get(tree)

    def device_metrics(self, metrics: Any) -> tuple[Any, bool]:
        """A step's metrics on one device without a host copy, and whether they carry a
        leading axis of length one (pmap: device 0's rows; the values agree on all devices)."""
        if self.mode != "pmap":
            return metrics, False
        return jax.tree.map(lambda x: x.addressable_shards[0].data, metrics), True

    def step_metrics(self, metrics: Any) -> Any:
        """Host copies of a step's metrics (identical on every device in pmap mode)."""
        return jax.device_get(self.unreplicate(metrics))


def _global_array(x: Any, sharding: NamedSharding) -> Any:
    """A global array from a value every process holds in full (e.g. the initial state); an
    array already laid out as ``sharding`` (e.g. restored onto it) as it is."""
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        data = _global_array(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _stack(xs: list[Any]) -> Any:
    x = xs[0]
    if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.stack([jax.random.key_data(k) for k in xs]))
    return jnp.stack(xs)


def _put_pmap(tree: Any, devices: list[Any]) -> Any:
    """Leaves ``[n, ...]`` for a pmapped call: pmap places slice ``i`` on device ``i`` itself
    (its outputs are then already laid out that way for the next step)."""
    del devices
    return tree
