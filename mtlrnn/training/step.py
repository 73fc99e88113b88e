"""TrainState, the jitted train and eval steps, and optimizer construction.

The step is the whole update of DESIGN.md: forward, per-task losses ``[K]``, the weighting
strategy, one backward pass, optax. It is a pure function ``(state, batch) -> (state,
metrics)``, jitted once per batch shape with the state donated.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlrnn.model.heads import group_tasks
from mtlrnn.model.multitask import MultiTaskRNN
from mtlrnn.model.spec import ModelConfig
from mtlrnn.tasks import TaskSpec
from mtlrnn.training.gradients import MODES
from mtlrnn.training.gradients import effective_weights
from mtlrnn.training.gradients import gramian
from mtlrnn.training.gradients import sum_tasks
from mtlrnn.training.gradients import vmap_vjp
from mtlrnn.training.losses import Batch
from mtlrnn.training.losses import task_counts
from mtlrnn.training.losses import task_loss_sums
from mtlrnn.training.losses import task_losses
from mtlrnn.training.metrics import Stats
from mtlrnn.training.metrics import batch_stats
from mtlrnn.weighting import Strategy
from mtlrnn.weighting import get as get_strategy
from mtlrnn.weighting.base import combine_rows

StepFn = Callable[["TrainState", Batch], tuple["TrainState", dict[str, chex.Array]]]


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training, as one pytree.

    Attributes:
      step: int32 scalar, number of updates applied.
      params: model parameters.
      opt_state: optax state.
      weight_state: the weighting strategy's state.
      rng: PRNG key; step ``t`` uses ``fold_in(rng, t)`` for dropout.
    """

    step: chex.Array
    params: Any
    opt_state: Any
    weight_state: Any
    rng: chex.PRNGKey


def build_model(
    model_cfg: ModelConfig,
    tasks: tuple[TaskSpec, ...],
    *,
    vocab_size: int,
    num_features: int = 0,
    char_vocab_size: int = 0,
) -> MultiTaskRNN:
    """A :class:`MultiTaskRNN` of the hyper-parameters ``model_cfg`` sized for the data."""
    return MultiTaskRNN(
        tasks=tasks,
        spec=model_cfg,
        vocab_size=vocab_size,
        num_features=num_features,
        char_vocab_size=char_vocab_size,
    )


def build_strategy(weighting_cfg: Any, tasks: tuple[TaskSpec, ...]) -> Strategy:
    """The weighting strategy of a ``WeightingConfig``.

    ``fixed`` without explicit ``weights`` takes each task's ``TaskSpec.weight``.
    """
    params = dict(weighting_cfg.params)
    if weighting_cfg.name == "fixed":
        params.setdefault("weights", [t.weight for t in tasks])
    return get_strategy(weighting_cfg.name, **params)


def make_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule: linear warm-up, then constant or cosine decay to
    ``learning_rate * end_lr_fraction`` at ``total_steps``."""
    lr = opt_cfg.learning_rate
    warmup = min(opt_cfg.warmup_steps, max(total_steps - 1, 0))
    if opt_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=lr * opt_cfg.end_lr_fraction,
        )
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )


def make_optimizer(
    opt_cfg: Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax optimizer of an ``OptimizerConfig``: adam, adamw or sgd (+momentum), with the
    schedule of :func:`make_schedule` and optional global-norm clipping."""
    schedule = make_schedule(opt_cfg, total_steps)
    if opt_cfg.name == "adam":
        opt = optax.adam(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps)
    elif opt_cfg.name == "adamw":
        opt = optax.adamw(
            schedule,
            b1=opt_cfg.b1,
            b2=opt_cfg.b2,
            eps=opt_cfg.eps,
            weight_decay=opt_cfg.weight_decay,
        )
    elif opt_cfg.name == "sgd":
        opt = optax.sgd(schedule, momentum=opt_cfg.momentum or None, nesterov=opt_cfg.nesterov)
    else:
        raise ValueError(f"optimizer.name: must be one of adam, adamw, sgd; got {opt_cfg.name!r}")
    if opt_cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(opt_cfg.clip_norm), opt)
    return opt, schedule


def create_train_state(
    model: MultiTaskRNN,
    optimizer: optax.GradientTransformation,
    strategy: Strategy,
    example_batch: Batch,
    *,
    seed: int,
) -> TrainState:
    """Initialise parameters, optimizer and weighting state from ``seed``."""
    init_key, rng = jax.random.split(jax.random.key(seed))
    chars = example_batch.get("chars")
    variables = model.init(
        init_key,
        jnp.asarray(example_batch["inputs"]),
        jnp.asarray(example_batch["lengths"]),
        None if chars is None else jnp.asarray(chars),
    )
    params = variables["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        weight_state=(
            strategy.init(len(model.tasks), dim=shared_dim(model, params))
            if strategy.needs_dim
            else strategy.init(len(model.tasks))
        ),
        rng=rng,
    )
    # Strategies may build their initial state from one shared array (e.g. two zero moments);
    # distinct buffers are needed because the train step donates the state.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def split_params(model: MultiTaskRNN, params: Mapping[str, Any]) -> tuple[dict, dict]:
    """``(shared, heads)``: the trunk and embedding parameters, and the task heads'."""
    heads = {g.name for g in group_tasks(model.tasks)}
    shared = {k: v for k, v in params.items() if k not in heads}
    return shared, {k: v for k, v in params.items() if k in heads}


def shared_dim(model: MultiTaskRNN, params: Mapping[str, Any]) -> int:
    """``D`` of the full-Jacobian mode: the number of shared parameters."""
    shared, _ = split_params(model, params)
    return int(sum(np.size(x) for x in jax.tree.leaves(shared)))


def _split_micro(batch: Batch, accumulate: int) -> Batch:
    """``[B, ...]`` leaves -> ``[accumulate, B / accumulate, ...]`` (consecutive rows)."""

    def split(x: chex.Array) -> chex.Array:
        return x.reshape(accumulate, x.shape[0] // accumulate, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    model: MultiTaskRNN,
    optimizer: optax.GradientTransformation,
    strategy: Strategy,
    schedule: optax.Schedule | None = None,
    *,
    grad_mode: str = "full",
    chunk_size: int = 0,
    accumulate: int = 1,
    axis_name: str | None = None,
) -> StepFn:
    """The (un-jitted) train step ``(state, batch) -> (state, metrics)``.

    metrics: ``losses [K]``, ``loss`` (``sum_k weights_k * losses_k``), ``weights [K]`` (the
    method's weights, or for a gradient method that defines none the least-squares
    coefficients of its update on the task gradients: see
    :func:`mtlrnn.training.gradients.effective_weights`), ``grad_norm``, ``lr``, ``tokens`` (valid
    time steps in the batch), ``nonfinite`` (1 if a loss or the gradient was NaN/inf: the
    step was then skipped) and ``finite_losses [K]`` (which task losses were finite).

    Loss-based strategies take one backward pass: the VJP of the loss vector with the
    (stop-gradient) weights as cotangent is the gradient of ``sum_k w_k * loss_k``. Gradient
    strategies get per-task gradients in ``grad_mode`` (see :mod:`mtlrnn.training.gradients`); head
    parameters receive their own task's gradient (scaled by ``info["head_weights"]`` where
    the method's reference does so: :func:`head_grads`).

    Every per-task loss is a masked mean over the *global* batch: with ``accumulate = m`` the
    batch is split into ``m`` micro-batches of consecutive rows and with ``axis_name`` (inside
    ``pmap``/``shard_map``) it is spread over devices; each part contributes its loss *sum*
    divided by the global label count, so losses, per-task gradients and Jacobians are exactly
    those of the whole batch before the strategy sees them (the same numbers as one big batch
    on one device up to float summation order, dropout included: each part passes the global
    index of its first row as ``row_offset``, and every dropout draw depends on the row's
    global index, :mod:`mtlrnn.model.dropout`). Loss-based methods with
    ``m > 1`` run one extra forward pass (the weights need the global losses before the
    backward passes). ``representation`` mode needs ``m = 1`` and no ``axis_name``.

    A step whose losses or gradient are not finite leaves params, optimizer and weighting
    state unchanged (``step`` still advances, so the data position and randomness move on)
    and reports ``nonfinite = 1``; the caller decides to skip or stop. For strategies with
    ``after_update`` (FAMO), a non-finite loss after the update leaves the weighting state
    unchanged too.
    """
    if grad_mode not in MODES:
        raise ValueError(f"grad_mode: must be one of {', '.join(MODES)}; got {grad_mode!r}")
    if strategy.requires == "grads" and grad_mode not in strategy.modes:
        raise ValueError(
            f"weighting.mode: {strategy.name!r} cannot run in mode {grad_mode!r}; "
            f"allowed: {', '.join(strategy.modes)}"
        )
    if accumulate < 1:
        raise ValueError(f"train.accumulate: must be >= 1, got {accumulate}")
    if (
        strategy.requires == "grads"
        and grad_mode == "representation"
        and (accumulate > 1 or axis_name is not None)
    ):
        raise ValueError(
            "weighting.mode: representation needs the whole batch's activations in one place; "
            "use full or gramian with train.accumulate > 1 or parallel.mode pmap"
        )

    mode = "losses" if strategy.requires == "losses" else grad_mode
    per_task = _PER_TASK[mode]  # the per-task gradient function, chosen once

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, chex.Array]]:
        ctx = _StepParts.build(model, state, batch, accumulate, axis_name, chunk_size)
        direction = per_task(ctx, strategy, state.params, state.weight_state)
        return _update(ctx, strategy, optimizer, schedule, state, direction)

    return step


@dataclasses.dataclass(frozen=True)
class _StepParts:
    """What every per-task gradient mode of one step uses: the keys, the batch and how its
    parts (micro-batches, devices) add up to the global loss vector."""

    model: MultiTaskRNN
    batch: Batch
    drop_key: chex.PRNGKey
    weight_key: chex.PRNGKey
    offset: chex.Array  # the global index of this device's first row
    denom: chex.Array  # [K] global label counts
    micro: Batch | None  # [m, B / m, ...] micro-batches, or None
    micro_rows: chex.Array | None  # [m] global index of each micro-batch's first row
    axis_name: str | None
    chunk_size: int

    @staticmethod
    def build(
        model: MultiTaskRNN,
        state: TrainState,
        batch: Batch,
        accumulate: int,
        axis_name: str | None,
        chunk_size: int,
    ) -> _StepParts:
        key = jax.random.fold_in(state.rng, state.step)
        drop_key, weight_key = jax.random.split(key)
        # Dropout draws depend on each row's index in the global batch (mtlrnn.model.dropout), so a
        # device's rows and a micro-batch's rows draw what they would in the whole batch.
        rows = batch["lengths"].shape[0]
        offset = jnp.zeros((), jnp.int32)
        if axis_name is not None:
            offset = jax.lax.axis_index(axis_name).astype(jnp.int32) * rows
        counts = task_counts(model.tasks, batch)
        if axis_name is not None:
            counts = jax.lax.psum(counts, axis_name)
        micro, micro_rows = None, None
        if accumulate > 1:
            micro = _split_micro(batch, accumulate)
            micro_rows = offset + jnp.arange(accumulate, dtype=jnp.int32) * (rows // accumulate)
        return _StepParts(
            model=model,
            batch=batch,
            drop_key=drop_key,
            weight_key=weight_key,
            offset=offset,
            # Global label counts: constants of the step, known before any forward pass.
            denom=jnp.maximum(counts, 1.0),
            micro=micro,
            micro_rows=micro_rows,
            axis_name=axis_name,
            chunk_size=chunk_size,
        )

    def psum(self, x: Any) -> Any:
        """Sum over the device axis (identity on one device)."""
        return x if self.axis_name is None else jax.lax.psum(x, self.axis_name)

    def partial_losses(self, params: Any, mb: Batch, first_row: chex.Array) -> chex.Array:
        """A part's contribution to the global loss vector ``[K]``."""
        outputs = self.model.apply(
            {"params": params},
            mb["inputs"],
            mb["lengths"],
            mb.get("chars"),
            train=True,
            row_offset=first_row,
            rngs={"dropout": self.drop_key},
        )
        sums, _ = task_loss_sums(self.model.tasks, outputs, mb)
        return sums / self.denom

    def over_parts(self, fn: Callable[[Batch, chex.Array], Any]) -> Any:
        """``sum_i fn(part_i, first_row_i)`` over this device's micro-batches (via lax.scan),
        or ``fn(batch, offset)`` without accumulation; not summed over devices."""
        if self.micro is None:
            return fn(self.batch, self.offset)
        assert self.micro_rows is not None
        first = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], self.micro), self.micro_rows[0])
        zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), first)

        def body(acc: Any, xs: tuple[Batch, chex.Array]) -> tuple[Any, None]:
            return jax.tree.map(jnp.add, acc, fn(*xs)), None

        total, _ = jax.lax.scan(body, zero, (self.micro, self.micro_rows))
        return total

    def global_losses(self, params: Any) -> chex.Array:
        """The loss vector ``[K]`` of the global batch."""
        return self.psum(self.over_parts(lambda mb, row: self.partial_losses(params, mb, row)))


# (losses [K], gradient pytree, new weighting state, info, effective weights [K])
_Direction = tuple[chex.Array, Any, Any, dict[str, chex.Array], chex.Array]


def _no_effective(num_tasks: int) -> chex.Array:
    return jnp.full((num_tasks,), jnp.nan, jnp.float32)


def _loss_weighted(ctx: _StepParts, strategy: Strategy, params: Any, wstate: Any) -> _Direction:
    """A loss-based method: weights from the losses, then one backward pass with the
    (stop-gradient) weights as the loss vector's cotangent."""
    if ctx.micro is None:
        part, vjp = jax.vjp(lambda p: ctx.partial_losses(p, ctx.batch, ctx.offset), params)
        losses = ctx.psum(part)
    else:
        losses = ctx.global_losses(params)
    weights, wstate, info = strategy.combine(
        wstate, jax.lax.stop_gradient(losses), key=ctx.weight_key
    )
    cot = jax.lax.stop_gradient(weights).astype(losses.dtype)
    if ctx.micro is None:
        (grads,) = vjp(cot)
    else:

        def part_grads(mb: Batch, row: chex.Array) -> Any:
            _, vjp_i = jax.vjp(lambda p: ctx.partial_losses(p, mb, row), params)
            return vjp_i(cot)[0]

        grads = ctx.over_parts(part_grads)
    return losses, ctx.psum(grads), wstate, info, _no_effective(len(ctx.model.tasks))


def _representation(ctx: _StepParts, strategy: Strategy, params: Any, wstate: Any) -> _Direction:
    """Per-task gradients w.r.t. the trunk output (one device, no accumulation)."""
    losses, grads, wstate, info = _representation_grads(
        ctx.model, params, ctx.batch, ctx.drop_key, strategy, wstate, ctx.weight_key,
        ctx.chunk_size,
    )
    effective = info.pop("effective_weights")
    return losses, grads, wstate, info, effective


def _task_jacobian(
    ctx: _StepParts, params: Any
) -> tuple[chex.Array, Any, Any]:
    """``(losses [K], shared-parameter Jacobian [K, ...], head Jacobian [K, ...])`` of the
    global batch (parts summed, then devices)."""
    shared, heads = split_params(ctx.model, params)
    num_tasks = len(ctx.model.tasks)

    def part_jacobian(mb: Batch, row: chex.Array) -> tuple[chex.Array, Any, Any]:
        part, vjp = jax.vjp(lambda s, h: ctx.partial_losses({**s, **h}, mb, row), shared, heads)
        js, jh = vmap_vjp(vjp, num_tasks, chunk_size=ctx.chunk_size)
        return part, js, jh

    return ctx.psum(ctx.over_parts(part_jacobian))


def _full(ctx: _StepParts, strategy: Strategy, params: Any, wstate: Any) -> _Direction:
    """The method aggregates the full Jacobian of the shared parameters."""
    losses, jac_shared, jac_heads = _task_jacobian(ctx, params)
    direction, wstate, info = strategy.combine(wstate, losses, jac_shared, key=ctx.weight_key)
    effective = (
        effective_weights(jac_shared, direction)
        if "weights" not in info
        else _no_effective(len(ctx.model.tasks))
    )
    return losses, {**direction, **head_grads(jac_heads, info)}, wstate, info, effective


def _gramian(ctx: _StepParts, strategy: Strategy, params: Any, wstate: Any) -> _Direction:
    """The method weights the tasks from the Jacobian's Gramian; the update is the weighted
    sum of the Jacobian's rows."""
    losses, jac_shared, jac_heads = _task_jacobian(ctx, params)
    weights, wstate, info = strategy.from_gram(
        wstate, losses, gramian(jac_shared), key=ctx.weight_key
    )
    direction = jax.tree.map(lambda j: _weighted_rows(weights, j), jac_shared)
    return losses, {**direction, **head_grads(jac_heads, info)}, wstate, info, weights


#: The per-task gradient function of each mode ("losses": a loss-based method).
_PER_TASK: dict[str, Callable[[_StepParts, Strategy, Any, Any], _Direction]] = {
    "losses": _loss_weighted,
    "representation": _representation,
    "full": _full,
    "gramian": _gramian,
}


def _update(
    ctx: _StepParts,
    strategy: Strategy,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule | None,
    state: TrainState,
    direction: _Direction,
) -> tuple[TrainState, dict[str, chex.Array]]:
    """The shared end of every step: the optax update, FAMO-style ``after_update``, the
    non-finite guard (a bad step leaves the state as it was) and the metrics."""
    losses, grads, wstate, info, effective = direction
    weights = info.get("weights", effective)
    weights = jax.lax.stop_gradient(weights).astype(losses.dtype)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if strategy.after_update is not None:
        losses_after = ctx.global_losses(params)
        after = strategy.after_update(wstate, jax.lax.stop_gradient(losses), losses_after)
        # A non-finite loss before or after the update leaves the strategy's state as it was
        # (FAMO's logits would otherwise turn NaN for good).
        usable = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(losses_after))
        wstate = jax.tree.map(lambda new, old: jnp.where(usable, new, old), after, wstate)
    grad_norm = optax.tree.norm(grads)
    finite_losses = jnp.isfinite(losses)
    finite = jnp.all(finite_losses) & jnp.isfinite(grad_norm)
    metrics = {
        "losses": losses,
        "loss": jnp.sum(weights * losses),
        "weights": weights,
        "grad_norm": grad_norm,
        "lr": schedule(state.step) if schedule is not None else jnp.nan,
        "tokens": ctx.psum(jnp.sum(ctx.batch["lengths"])),
        "nonfinite": (~finite).astype(jnp.int32),
        "finite_losses": finite_losses,
    }
    updated = (params, opt_state, wstate)
    kept = (state.params, state.opt_state, state.weight_state)
    params, opt_state, wstate = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), updated, kept
    )
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, weight_state=wstate
    )
    return new_state, metrics


#: How the S seeds of a population step share the step: ``vmap`` batches them into one
#: program (every op S times wider: the gain on accelerators), ``map`` runs the one-seed step
#: for each in turn inside one compiled step (``lax.map``; on CPUs, where batching the
#: recurrence does not pay: benchmarks/RESULTS.md), ``auto`` picks map on CPU, vmap elsewhere.
POPULATION_MODES = ("auto", "vmap", "map")


def population_step(step: StepFn, mode: str = "vmap", platform: str | None = None) -> StepFn:
    """The step of a population: ``step`` over S stacked states and batches (leading axis),
    by ``mode`` (:data:`POPULATION_MODES`; ``auto`` by ``platform``, default JAX's backend).
    Un-jitted, like ``step``."""
    if mode not in POPULATION_MODES:
        raise ValueError(
            f"train.population_mode: must be one of {', '.join(POPULATION_MODES)}; got {mode!r}"
        )
    if mode == "auto":
        mode = "map" if (platform or jax.default_backend()) == "cpu" else "vmap"
    if mode == "vmap":
        return jax.vmap(step)

    def mapped(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, chex.Array]]:
        return jax.lax.map(lambda pair: step(*pair), (state, batch))

    return mapped


def head_grads(jac_heads: Any, info: Mapping[str, chex.Array]) -> Any:
    """The heads' gradient from per-task head gradients ``[K, ...]`` (each task's rows are
    non-zero only on its own head): their sum, or with ``info["head_weights"]: [K]`` (a
    method whose reference trains the heads on re-weighted losses, e.g. DB-MTL, ExcessMTL)
    the weighted sum."""
    weights = info.get("head_weights")
    if weights is None:
        return sum_tasks(jac_heads)
    weights = jax.lax.stop_gradient(weights)
    return jax.tree.map(lambda j: _weighted_rows(weights, j), jac_heads)


def _weighted_rows(weights: chex.Array, rows: chex.Array) -> chex.Array:
    """``sum_k w_k rows[k]`` for ``rows: [K, ...]``, at the precision of the full mode's
    ``w @ J`` (:func:`mtlrnn.weighting.base.combine_rows`)."""
    k = rows.shape[0]
    return combine_rows(weights, rows.reshape(k, -1)).reshape(rows.shape[1:])


def _representation_grads(
    model: MultiTaskRNN,
    params: Any,
    batch: Batch,
    drop_key: chex.PRNGKey,
    strategy: Strategy,
    wstate: Any,
    weight_key: chex.PRNGKey,
    chunk_size: int,
) -> tuple[chex.Array, Any, Any, dict[str, chex.Array]]:
    """Per-task gradients w.r.t. the trunk output, aggregated, then one trunk backward."""
    shared, heads = split_params(model, params)
    inputs, lengths = batch["inputs"], batch["lengths"]

    def encode(s: Any) -> tuple[chex.Array, chex.Array]:
        return model.apply(
            {"params": {**s, **heads}},
            inputs,
            lengths,
            batch.get("chars"),
            train=True,
            rngs={"dropout": drop_key},
            method=MultiTaskRNN.encode,
        )

    def head_losses(h: Any, rep: chex.Array, last: chex.Array) -> chex.Array:
        outputs = model.apply(
            {"params": {**shared, **h}}, rep, last, lengths, method=MultiTaskRNN.decode
        )
        return task_losses(model.tasks, outputs, batch)

    (rep, last), encode_vjp = jax.vjp(encode, shared)
    losses, head_vjp = jax.vjp(head_losses, heads, rep, last)
    # Per-task rows only for the representation; the heads' gradient is one more (cheap)
    # pull-back below, since each task touches only its own head.
    jac_rep, jac_last = vmap_vjp(
        lambda cot: head_vjp(cot)[1:], len(model.tasks), chunk_size=chunk_size
    )
    rep_jac = {"rep": jac_rep, "last": jac_last}
    if strategy.from_gram is not None:
        # A Gramian method: its direction w @ J is the heads' pull-back of w (linear in the
        # cotangent), which is cheaper than reading the [K, B, L, D] rows a second time.
        weights, wstate, info = strategy.from_gram(
            wstate, losses, gramian(rep_jac), key=weight_key
        )
        _, d_rep, d_last = head_vjp(weights.astype(losses.dtype))
        direction = {"rep": d_rep, "last": d_last}
        info = {**info, "effective_weights": weights}
    else:
        direction, wstate, info = strategy.combine(wstate, losses, rep_jac, key=weight_key)
        effective = info.get("weights")
        if effective is None:
            effective = effective_weights(rep_jac, direction)
        info = {**info, "effective_weights": effective}
    (shared_grads,) = encode_vjp((direction["rep"], direction["last"]))
    head_cot = jax.lax.stop_gradient(info.get("head_weights", jnp.ones_like(losses)))
    heads_grads = head_vjp(head_cot.astype(losses.dtype))[0]
    return losses, {**shared_grads, **heads_grads}, wstate, info


def make_eval_step(model: MultiTaskRNN) -> Callable[[Any, Batch], tuple[chex.Array, Stats]]:
    """The (un-jitted) eval step ``(params, batch) -> (losses [K], stats)``."""

    def step(params: Any, batch: Batch) -> tuple[chex.Array, Stats]:
        outputs = model.apply(
            {"params": params}, batch["inputs"], batch["lengths"], batch.get("chars")
        )
        return task_losses(model.tasks, outputs, batch), batch_stats(model.tasks, outputs, batch)

    return step


def params_sha256(params: Mapping[str, Any]) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()
