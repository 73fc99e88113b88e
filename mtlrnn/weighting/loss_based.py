"""Loss-based strategies: weights computed from the ``[K]`` loss vector alone.

Each factory returns a :class:`~mtlrnn.weighting.base.Strategy` whose ``combine`` maps the
current batch's per-task losses ``losses: [K]`` (float, >= 0, already stop-gradiented) to
weights ``[K]``; the trainer minimises ``sum_k stop_gradient(w_k) * L_k``. A method defined by
a combined objective ``F(L_1, ..., L_K)`` is expressed by the weights ``w_k = dF/dL_k``: they
give the model parameters the same gradient as ``F`` itself.

Methods with parameters of their own (uncertainty weighting, IMTL-L, FAMO) keep them and their
optimizer state in the strategy state and update them inside the jitted step by the analytic
gradient of the method's objective (see :func:`_inner_step`).

Weights are returned in the losses' dtype; state is float32 / int32 whatever the losses' dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from mtlrnn.weighting.base import Info
from mtlrnn.weighting.base import Strategy
from mtlrnn.weighting.base import check_num_tasks
from mtlrnn.weighting.validate import check_choice
from mtlrnn.weighting.validate import check_int
from mtlrnn.weighting.validate import check_number

# Added where a loss is divided by or its log taken. 1e-8 is DB-MTL's and FAMO's constant
# (LibMTL DB_MTL: torch.log(losses + 1e-8); Cranial-XIX/FAMO: losses - min_losses + 1e-8).
_EPS = 1e-8
# Adam constants of the inner optimizer: the defaults of torch.optim.Adam and optax.adam, which
# the FAMO reference uses for its logits (Cranial-XIX/FAMO, torch.optim.Adam(lr, weight_decay)).
_ADAM_B1 = 0.9
_ADAM_B2 = 0.999
_ADAM_EPS = 1e-8
_INNER_OPTIMIZERS = ("adam", "sgd")
# The package's default model learning rate (mtlrnn.config.OptimizerConfig.learning_rate).
_MODEL_LR = 3e-3


# --------------------------------------------------------------------------------------------
# The inner optimizer of a strategy's own parameters.


class InnerOptState(NamedTuple):
    """Optimizer state of a strategy's own ``[K]`` parameters (same structure for every
    inner optimizer, so switching it never changes the state's structure)."""

    mu: chex.Array  # [K] float32: Adam first moment (zeros and unused with "sgd")
    nu: chex.Array  # [K] float32: Adam second moment (zeros and unused with "sgd")
    count: chex.Array  # [] int32: inner steps taken


def _inner_init(num_tasks: int) -> InnerOptState:
    zeros = jnp.zeros((num_tasks,), jnp.float32)
    return InnerOptState(mu=zeros, nu=zeros, count=jnp.zeros((), jnp.int32))


def _inner_step(
    params: chex.Array,
    grad: chex.Array,
    opt: InnerOptState,
    *,
    lr: float,
    optimizer: str,
    weight_decay: float = 0.0,
) -> tuple[chex.Array, InnerOptState]:
    """One descent step on ``params: [K]`` with gradient ``grad: [K]``.

    ``"sgd"``: ``p - lr * (g + weight_decay * p)``. ``"adam"``: Adam (Kingma & Ba 2015) with
    bias correction, ``b1 = 0.9``, ``b2 = 0.999``, ``eps = 1e-8`` outside the square root (as
    ``optax.adam`` and ``torch.optim.Adam``); ``weight_decay`` is added to the gradient
    before the moments (coupled L2, as ``torch.optim.Adam(weight_decay=...)``).
    """
    g = grad + weight_decay * params if weight_decay else grad
    count = opt.count + 1
    if optimizer == "sgd":
        return params - lr * g, opt._replace(count=count)
    mu = _ADAM_B1 * opt.mu + (1.0 - _ADAM_B1) * g
    nu = _ADAM_B2 * opt.nu + (1.0 - _ADAM_B2) * g * g
    t = count.astype(jnp.float32)
    mu_hat = mu / (1.0 - _ADAM_B1**t)
    nu_hat = nu / (1.0 - _ADAM_B2**t)
    new_params = params - lr * mu_hat / (jnp.sqrt(nu_hat) + _ADAM_EPS)
    return new_params, InnerOptState(mu=mu, nu=nu, count=count)


def _as_f32(losses: chex.Array) -> chex.Array:
    return jnp.asarray(losses).astype(jnp.float32)


def _stateless(
    name: str,
    weights_fn: Callable[[chex.Array], chex.Array],
    *,
    check: Callable[[int], None] | None = None,
) -> Strategy:
    """A stateless loss-based Strategy from ``weights_fn(losses [K]) -> weights [K]``.

    ``check(num_tasks)`` validates the task count at ``init`` (e.g. a weight list's length).
    """

    def init(num_tasks: int) -> tuple[()]:
        check_num_tasks(num_tasks)
        if check is not None:
            check(num_tasks)
        return ()

    def combine(
        state: tuple[()],
        losses: chex.Array,
        grads: object = None,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, tuple[()], Info]:
        del grads, key
        weights = weights_fn(losses)
        return weights, state, {"weights": weights}

    return Strategy(name=name, requires="losses", init=init, combine=combine)


# --------------------------------------------------------------------------------------------
# Stateless fixed weights.


def equal() -> Strategy:
    """Equal weighting: every task has weight 1 (the loss is the plain sum over tasks).

    The sum, not the mean, so a single-task run matches ordinary training exactly.
    """
    return _stateless("equal", jnp.ones_like)


def fixed(*, weights: Sequence[float] | None = None) -> Strategy:
    """Fixed per-task weights ``w``: the loss is ``sum_k w_k * loss_k``.

    Args:
      weights: one non-negative weight per task. The trainer fills it from each task's
        ``TaskSpec.weight`` when it is not given. ``None`` means all ones.
    """
    if weights is not None:
        try:
            values = tuple(float(w) for w in weights)
        except (TypeError, ValueError):
            raise ValueError(f"weights: must be a list of numbers, got {weights!r}") from None
        if not values or any(w < 0 or w != w for w in values):
            raise ValueError(f"weights: must be a non-empty list of numbers >= 0, got {weights!r}")
    else:
        values = None

    def check(num_tasks: int) -> None:
        if values is not None and len(values) != num_tasks:
            raise ValueError(
                f"weights: expected {num_tasks} weights (one per task), got {len(values)}"
            )

    def weights_fn(losses: chex.Array) -> chex.Array:
        if values is None:
            return jnp.ones_like(losses)
        return jnp.asarray(values, dtype=losses.dtype)

    return _stateless("fixed", weights_fn, check=check)


# --------------------------------------------------------------------------------------------
# Learned log-scales: uncertainty weighting and IMTL-L.


class LearnedScaleState(NamedTuple):
    """State of :func:`uw` and :func:`imtl_l`."""

    log_scale: chex.Array  # [K] float32: s (UW: log sigma^2; IMTL-L: the log-scale s)
    opt: InnerOptState  # inner optimizer state of ``log_scale``


def _learned_scale(name: str, sign: float, lr: float, optimizer: str) -> Strategy:
    """Weights ``exp(sign * s_k)`` for the objective ``sum_k exp(sign s_k) L_k - sign s_k``;
    ``sign = -1`` is uncertainty weighting, ``sign = +1`` IMTL-L."""
    lr = check_number("lr", lr, low=0.0, low_open=True)
    optimizer = check_choice("optimizer", optimizer, _INNER_OPTIMIZERS)

    def init(num_tasks: int) -> LearnedScaleState:
        check_num_tasks(num_tasks)
        return LearnedScaleState(
            log_scale=jnp.zeros((num_tasks,), jnp.float32), opt=_inner_init(num_tasks)
        )

    def combine(
        state: LearnedScaleState,
        losses: chex.Array,
        grads: object = None,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, LearnedScaleState, Info]:
        del grads, key
        s = state.log_scale
        scale = jnp.exp(sign * s)
        # d/ds_k [exp(sign s_k) L_k - sign s_k] = sign (exp(sign s_k) L_k - 1).
        grad_s = sign * (scale * _as_f32(losses) - 1.0)
        new_s, opt = _inner_step(s, grad_s, state.opt, lr=lr, optimizer=optimizer)
        weights = scale.astype(losses.dtype)
        info = {"weights": weights, "log_scale": s}
        return weights, LearnedScaleState(log_scale=new_s, opt=opt), info

    return Strategy(name=name, requires="losses", init=init, combine=combine)


def uw(*, lr: float = _MODEL_LR, optimizer: str = "adam") -> Strategy:
    """Uncertainty weighting (Kendall, Gal & Cipolla, 2018, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR).

    Objective, with learned ``s_k = log sigma_k^2`` (initialised to 0)::

        F(L, s) = sum_k exp(-s_k) L_k + s_k           weights w_k = exp(-s_k)

    Convention: the paper's two-task loss has ``L_1 / (2 sigma_1^2) + log sigma_1`` for a
    regression (Gaussian) task and ``L_2 / sigma_2^2 + log sigma_2`` for a classification
    task; with ``s = log sigma^2`` these are ``(exp(-s) L + s) / 2`` and
    ``exp(-s) L + s / 2``. We use the common form ``exp(-s_k) L_k + s_k`` for every task: it
    is twice the regression form (same relative weights, same optimum ``s_k = log L_k``) and
    needs no per-task likelihood type. LibMTL's UW uses the regression form, with ``s``
    initialised to -0.5 (LibMTL/weighting/UW.py).

    ``s`` is trained inside ``combine`` by ``dF/ds_k = 1 - exp(-s_k) L_k`` at the current
    batch's losses, with its own optimizer (``optimizer``, ``lr``). Kendall et al. train ``s``
    jointly with the network's optimizer; for per-parameter optimizers (Adam, SGD) this is the
    same update except that the model optimizer's schedule, gradient clipping and weight decay
    are not applied to ``s``. The returned weights are those at the current ``s``, before its
    update.

    Args:
      lr: learning rate of ``s`` (default 3e-3, the package's default model learning rate).
      optimizer: ``"adam"`` (default; b1 0.9, b2 0.999, eps 1e-8) or ``"sgd"``.

    State: :class:`LearnedScaleState`. Info: ``weights [K]``, ``log_scale [K]`` (``s``).
    """
    return _learned_scale("uw", -1.0, lr, optimizer)


def imtl_l(*, lr: float = _MODEL_LR, optimizer: str = "adam") -> Strategy:
    """IMTL-L, the loss-balance half of Impartial Multi-Task Learning (Liu, Li, Kuang, Xue,
    Chen, Yang, Liao & Zhang, 2021, "Towards Impartial Multi-task Learning", ICLR).

    Objective, with learned log-scales ``s_k`` (initialised to 0)::

        F(L, s) = sum_k exp(s_k) L_k - s_k            weights w_k = exp(s_k)

    Its stationary point is ``exp(s_k) L_k = 1``: every scaled loss is balanced to 1. The
    paper applies the scale to both the shared and the task-specific parameters, as the
    trainer does with these weights. Under ``s -> -s`` this objective is :func:`uw`'s (this
    package's convention), so the two give the same weights on the same losses.

    ``s`` is trained inside ``combine`` by ``dF/ds_k = exp(s_k) L_k - 1`` with its own
    optimizer, as in :func:`uw` (same caveats: no model schedule, clipping or decay). The
    returned weights are those at the current ``s``, before its update.

    Args:
      lr: learning rate of ``s`` (default 3e-3, the package's default model learning rate).
      optimizer: ``"adam"`` (default; b1 0.9, b2 0.999, eps 1e-8) or ``"sgd"``.

    State: :class:`LearnedScaleState`. Info: ``weights [K]``, ``log_scale [K]`` (``s``).
    """
    return _learned_scale("imtl_l", 1.0, lr, optimizer)


# --------------------------------------------------------------------------------------------
# Dynamic Weight Average.


class DWAState(NamedTuple):
    """State of :func:`dwa`."""

    prev: chex.Array  # [K] float32: (smoothed) losses of the previous step, L(t-1)
    prev2: chex.Array  # [K] float32: (smoothed) losses two steps back, L(t-2)
    count: chex.Array  # [] int32: steps seen, saturating at 2


def dwa(*, temperature: float = 2.0, ema_decay: float = 0.0) -> Strategy:
    """Dynamic Weight Average (Liu, Johns & Davison, 2019, "End-to-End Multi-Task Learning
    with Attention", CVPR)::

        w_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T),  r_k(t-1) = L_k(t-1) / L_k(t-2)

    with ``w_k = 1`` for the first two steps (``t = 0, 1``) and ``T = 2``.

    Convention: the paper's ``t`` is an epoch and ``L_k(t)`` the average training loss over
    epoch ``t``. ``combine`` sees one batch at a time, so by default ``t`` is a step and
    ``L_k(t)`` that step's loss (the weights at step ``t`` use the losses of steps ``t-1`` and
    ``t-2``, never the current batch's). With ``ema_decay = beta > 0`` ``L_k(t)`` is replaced
    by the moving average ``a(t) = beta a(t-1) + (1 - beta) L(t)``, ``a(0) = L(0)``: a
    smoothed stand-in for epoch averages that damps per-batch noise. The ratio of consecutive
    averages is closer to 1 than a ratio of epoch means, so the weights stay nearer to 1.

    Args:
      temperature: ``T > 0`` (default 2, the paper's). Larger is closer to equal weights.
      ema_decay: ``beta`` in ``[0, 1)`` (default 0: per-step losses).

    State: :class:`DWAState`. Info: ``weights [K]``.
    """
    temperature = check_number("temperature", temperature, low=0.0, low_open=True)
    ema_decay = check_number("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)

    def init(num_tasks: int) -> DWAState:
        check_num_tasks(num_tasks)
        ones = jnp.ones((num_tasks,), jnp.float32)
        return DWAState(prev=ones, prev2=ones, count=jnp.zeros((), jnp.int32))

    def combine(
        state: DWAState,
        losses: chex.Array,
        grads: object = None,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, DWAState, Info]:
        del grads, key
        num_tasks = losses.shape[0]
        ratio = state.prev / (state.prev2 + _EPS)
        dynamic = num_tasks * jax.nn.softmax(ratio / temperature)
        weights = jnp.where(state.count >= 2, dynamic, jnp.ones_like(dynamic))
        current = _as_f32(losses)
        smoothed = ema_decay * state.prev + (1.0 - ema_decay) * current
        smoothed = jnp.where(state.count == 0, current, smoothed)
        new_state = DWAState(prev=smoothed, prev2=state.prev, count=jnp.minimum(state.count + 1, 2))
        weights = weights.astype(losses.dtype)
        return weights, new_state, {"weights": weights}

    return Strategy(name="dwa", requires="losses", init=init, combine=combine)


# --------------------------------------------------------------------------------------------
# Random Loss Weighting.


class RLWState(NamedTuple):
    """State of :func:`rlw`."""

    count: chex.Array  # [] int32: steps taken; folded into the default key when key is None


def rlw(*, std: float = 1.0) -> Strategy:
    """Random Loss Weighting (Lin, Ye, Zhang & Tsang, 2022, "Reasonable Effectiveness of
    Random Weighting: A Litmus Test for Multi-Task Learning", TMLR)::

        w = K softmax(lambda),   lambda ~ Normal(0, std^2 I_K), drawn anew every step

    The paper's default distribution is the standard normal (``std = 1``) followed by a
    softmax, whose weights sum to 1; we scale by ``K`` so that the weights sum to ``K`` like
    :func:`equal`'s (the same relative weights; with plain SGD it is a learning rate times
    ``K``, and Adam is nearly invariant to it).

    Randomness comes from ``combine``'s ``key`` (the trainer passes a fresh per-step key).
    With ``key=None`` a fixed default key ``jax.random.key(0)`` folded with the step count is
    used: deterministic across runs, different across steps.

    Args:
      std: standard deviation of the normal logits (> 0, default 1).

    State: :class:`RLWState`. Info: ``weights [K]``.
    """
    std = check_number("std", std, low=0.0, low_open=True)

    def init(num_tasks: int) -> RLWState:
        check_num_tasks(num_tasks)
        return RLWState(count=jnp.zeros((), jnp.int32))

    def combine(
        state: RLWState,
        losses: chex.Array,
        grads: object = None,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, RLWState, Info]:
        del grads
        if key is None:
            key = jax.random.fold_in(jax.random.key(0), state.count)
        num_tasks = losses.shape[0]
        logits = std * jax.random.normal(key, (num_tasks,), jnp.float32)
        weights = (num_tasks * jax.nn.softmax(logits)).astype(losses.dtype)
        return weights, RLWState(count=state.count + 1), {"weights": weights}

    return Strategy(name="rlw", requires="losses", init=init, combine=combine)


# --------------------------------------------------------------------------------------------
# Transforms of the losses: geometric mean and log losses.


def gls() -> Strategy:
    """Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh, 2019, "MultiNet++:
    Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning",
    CVPR Workshops)::

        F(L) = (prod_k L_k)^(1/K)                     weights w_k = dF/dL_k = F / (K L_k)

    computed as ``F = exp(mean_k log(L_k + eps))`` and ``w_k = F / (K (L_k + eps))``,
    ``eps = 1e-8`` (the exact gradient of ``(prod_k (L_k + eps))^(1/K)``; no overflow of the
    product for large ``K``). No hyper-parameters. Stateless. Info: ``weights [K]``.
    """

    def weights_fn(losses: chex.Array) -> chex.Array:
        shifted = _as_f32(losses) + _EPS
        geo_mean = jnp.exp(jnp.mean(jnp.log(shifted)))
        return (geo_mean / (losses.shape[0] * shifted)).astype(losses.dtype)

    return _stateless("gls", weights_fn)


def log_losses(*, eps: float = _EPS) -> Strategy:
    """DB-MTL's loss-scale balancing (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, 2023,
    "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029), the logarithm transform
    alone (without DB-MTL's gradient-magnitude balancing)::

        F(L) = sum_k log(L_k + eps)                   weights w_k = 1 / (L_k + eps)

    Args:
      eps: > 0 (default 1e-8, DB-MTL's: LibMTL/weighting/DB_MTL.py ``log(losses + 1e-8)``).

    Stateless. Info: ``weights [K]``.
    """
    eps = check_number("eps", eps, low=0.0, low_open=True)

    def weights_fn(losses: chex.Array) -> chex.Array:
        return (1.0 / (_as_f32(losses) + eps)).astype(losses.dtype)

    return _stateless("log_losses", weights_fn)


# --------------------------------------------------------------------------------------------
# FAMO.


class FAMOState(NamedTuple):
    """State of :func:`famo`."""

    logits: chex.Array  # [K] float32: task logits xi; z = softmax(xi)
    opt: InnerOptState  # inner optimizer state of ``logits``


def _famo_bounds(min_losses: Sequence[float] | None) -> tuple[float, ...] | None:
    """FAMO's ``min_losses`` checked and converted to floats (``None`` stays ``None``)."""
    if min_losses is None:
        return None
    message = f"min_losses: must be a non-empty list of finite numbers, got {min_losses!r}"
    if isinstance(min_losses, str) or not isinstance(min_losses, Sequence):
        raise ValueError(message)
    if not min_losses or not all(
        isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b)
        for b in min_losses
    ):
        raise ValueError(message)
    return tuple(float(b) for b in min_losses)


def _famo_shifted(losses: chex.Array, bounds: tuple[float, ...] | None) -> chex.Array:
    """FAMO's shifted losses ``D = max(L - b, 0) + eps: [K]``, float32 (``b = 0`` if ``None``)."""
    values = _as_f32(losses)
    if bounds is not None:
        values = values - jnp.asarray(bounds, jnp.float32)
    return jnp.maximum(values, 0.0) + _EPS


def _famo_init(num_tasks: int, *, bounds: tuple[float, ...] | None) -> FAMOState:
    """FAMO's ``init``: zero logits; ``bounds`` must have one entry per task."""
    check_num_tasks(num_tasks)
    if bounds is not None and len(bounds) != num_tasks:
        raise ValueError(
            f"min_losses: expected {num_tasks} numbers (one per task), got {len(bounds)}"
        )
    return FAMOState(logits=jnp.zeros((num_tasks,), jnp.float32), opt=_inner_init(num_tasks))


def _famo_combine(
    state: FAMOState,
    losses: chex.Array,
    grads: object = None,
    key: chex.PRNGKey | None = None,
    *,
    bounds: tuple[float, ...] | None,
) -> tuple[chex.Array, FAMOState, Info]:
    """FAMO's ``combine``: ``w = (z / D) / sum(z / D)`` at the current logits; state unchanged."""
    del grads, key
    z = jax.nn.softmax(state.logits)
    ratio = z / _famo_shifted(losses, bounds)
    weights = (ratio / jnp.sum(ratio)).astype(losses.dtype)
    return weights, state, {"weights": weights, "task_weights": z}


def _famo_after_update(
    state: FAMOState,
    losses_before: chex.Array,
    losses_after: chex.Array,
    *,
    bounds: tuple[float, ...] | None,
    lr: float,
    gamma: float,
    optimizer: str,
) -> FAMOState:
    """FAMO's ``after_update``: one inner step of the logits on the loss decrease ``delta``;
    the state is kept when ``delta`` is not finite."""
    log_before = jnp.log(_famo_shifted(losses_before, bounds))
    delta = log_before - jnp.log(_famo_shifted(losses_after, bounds))
    z = jax.nn.softmax(state.logits)
    # Vector-Jacobian product of the softmax: J^T delta = z * (delta - <z, delta>).
    grad = z * (delta - jnp.dot(z, delta))
    logits, opt = _inner_step(
        state.logits, grad, state.opt, lr=lr, optimizer=optimizer, weight_decay=gamma
    )
    # A non-finite loss before or after the step would make the logits NaN for good (and
    # every later step non-finite): keep the state, as the trainer keeps the parameters.
    usable = jnp.all(jnp.isfinite(delta))
    return jax.tree.map(
        lambda new, old: jnp.where(usable, new, old), FAMOState(logits=logits, opt=opt), state
    )


def famo(
    *,
    lr: float = 0.025,
    gamma: float = 1e-3,
    optimizer: str = "adam",
    min_losses: Sequence[float] | None = None,
) -> Strategy:
    """Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, 2023, "FAMO: Fast
    Adaptive Multitask Optimization", NeurIPS; Algorithm 1, and Algorithm 2 of its appendix).

    With task logits ``xi`` (initialised to 0), ``z = softmax(xi)`` and the shifted losses
    ``D_k = max(L_k - b_k, 0) + eps`` (``b`` = ``min_losses``, the paper's min-loss
    normalisation ``l_k - l_k^*``; ``eps = 1e-8``), the model's update direction is
    ``d = c sum_k (z_k / D_k) grad L_k`` with ``c = (sum_k z_k / D_k)^-1``, so::

        w_k = (z_k / D_k) / sum_i (z_i / D_i)

    (``sum_k w_k = 1``: a convex combination of the task gradients, the gradients of
    ``log D_k`` weighted by ``c z_k``). After the parameter update the
    trainer calls ``after_update(state, L(theta_t), L(theta_{t+1}))`` with the same batch's
    losses, and the logits descend on::

        delta_k = log D_k(theta_t) - log D_k(theta_{t+1})
        g = J_softmax(xi)^T delta + gamma xi = z * (delta - <z, delta>) + gamma xi

    (Algorithm 1 writes the step as ``xi <- xi - beta g``, which ``optimizer="sgd"`` does;
    Algorithm 2 and the reference code feed ``g`` to Adam with learning rate ``beta`` and
    coupled weight decay ``gamma``, which is the default ``optimizer="adam"``.)

    Defaults: ``beta = lr = 0.025`` and ``gamma = 1e-3`` (Algorithm 2 and LibMTL's config,
    ``--FAMO_w_lr 0.025 --FAMO_w_gamma 1e-3``; the reference code Cranial-XIX/FAMO has
    ``w_lr=0.025`` and a per-experiment gamma; TorchJD's FAMO uses the same 0.025 / 1e-3). The
    reference code also clips the model gradient to norm 1, which the trainer's
    ``optimizer.clip_norm`` (default 1.0) does. ``D_k`` is clamped at ``eps`` (the reference
    does not clamp; a loss below its given minimum would otherwise make ``log`` NaN).

    Without ``after_update`` calls the logits stay 0 and the weights are ``1/D_k`` normalised.
    ``after_update`` returns the state unchanged when a loss before or after the step is not
    finite.
    The returned weights are those at the current logits; ``combine`` does not change state.

    Args:
      lr: ``beta``, the logits' learning rate (> 0, default 0.025).
      gamma: the logits' weight decay (>= 0, default 1e-3).
      optimizer: ``"adam"`` (default; Algorithm 2) or ``"sgd"`` (Algorithm 1).
      min_losses: per-task lower bounds ``b`` (one number per task); ``None`` means zeros.

    State: :class:`FAMOState`. Info: ``weights [K]``, ``task_weights [K]`` (``z``).
    """
    lr = check_number("lr", lr, low=0.0, low_open=True)
    gamma = check_number("gamma", gamma, low=0.0)
    optimizer = check_choice("optimizer", optimizer, _INNER_OPTIMIZERS)
    bounds = _famo_bounds(min_losses)
    update = partial(_famo_after_update, bounds=bounds, lr=lr, gamma=gamma, optimizer=optimizer)
    init = partial(_famo_init, bounds=bounds)
    combine = partial(_famo_combine, bounds=bounds)
    return Strategy(name="famo", requires="losses", init=init, combine=combine, after_update=update)


# --------------------------------------------------------------------------------------------
# Smooth Tchebycheff scalarisation.


class STCHState(NamedTuple):
    """State of :func:`stch`."""

    loss_sum: chex.Array  # [K] float32: sum of the losses over the nadir window
    count: chex.Array  # [] int32: steps seen, saturating at warmup_steps + nadir_steps


def _stch_combine(
    state: STCHState,
    losses: chex.Array,
    grads: object = None,
    key: chex.PRNGKey | None = None,
    *,
    mu: float,
    warmup_steps: int,
    nadir_steps: int,
) -> tuple[chex.Array, STCHState, Info]:
    """STCH's ``combine``: log-loss weights while warming up (the last ``nadir_steps`` of
    them summed into the nadir), then the smooth Tchebycheff weights."""
    del grads, key
    total_warmup = warmup_steps + nadir_steps
    current = _as_f32(losses)
    num_tasks = losses.shape[0]
    active = state.count >= total_warmup
    nadir = jnp.maximum(state.loss_sum / nadir_steps, _EPS)
    objectives = jnp.log(current / nadir + _EPS)
    stch_weights = num_tasks * jax.nn.softmax(objectives / mu) / (current + _EPS * nadir)
    warmup_weights = 1.0 / (current + _EPS)
    weights = jnp.where(active, stch_weights, warmup_weights).astype(losses.dtype)
    in_window = jnp.logical_and(state.count >= warmup_steps, jnp.logical_not(active))
    new_state = STCHState(
        loss_sum=state.loss_sum + jnp.where(in_window, current, 0.0),
        count=jnp.minimum(state.count + 1, total_warmup),
    )
    info = {"weights": weights, "nadir": nadir, "active": active.astype(jnp.float32)}
    return weights, new_state, info


def stch(*, mu: float = 1.0, warmup_steps: int = 200, nadir_steps: int = 50) -> Strategy:
    """Smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Liu, Wang & Zhang, 2024, "Smooth
    Tchebycheff Scalarization for Multi-Objective Optimization", ICML)::

        g_mu(x | lambda) = mu log sum_k exp(lambda_k (f_k(x) - z_k) / mu)

    as the authors apply it to multi-task learning (their STCH_MTL code, Xi-L/STCH, and
    LibMTL/weighting/STCH.py):

    * objectives ``f_k = log(L_k / n_k + eps)``: log losses normalised by a nadir vector
      ``n`` (the mean loss over a window of steps at the end of the warm-up), with ideal
      point ``z = 0`` in that space (``L_k = 0``), uniform preference ``lambda_k = 1`` and the
      total scaled by ``K``: ``F = K mu logsumexp(f / mu)``; hence::

        w_k = dF/dL_k = K softmax(f / mu)_k / (L_k + eps n_k)

    * warm-up: for the first ``warmup_steps + nadir_steps`` steps the loss is
      ``sum_k log(L_k + eps)`` (weights ``1 / (L_k + eps)``, DB-MTL's log losses); the losses
      of the last ``nadir_steps`` of them are averaged into ``n``.

    The reference counts epochs (``STCH_warmup_epoch = 4`` epochs of log losses, then one
    epoch whose mean loss is ``n``); ``combine`` sees steps, so the defaults are 200 + 50
    steps (4 + 1 "epochs" of 50 steps; about 8% of the default 3000-step run). ``mu = 1`` is
    the reference's ``STCH_mu``. ``eps = 1e-8`` (the reference adds 1e-20).

    Args:
      mu: smoothing ``mu > 0`` (default 1). Smaller is closer to ``max_k`` (Tchebycheff).
      warmup_steps: int >= 0, steps of log losses before the nadir window (default 200).
      nadir_steps: int >= 1, steps averaged into the nadir vector (default 50).

    State: :class:`STCHState`. Info: ``weights [K]``, ``nadir [K]`` (meaningful once
    ``active`` is 1), ``active []`` (1.0 in the STCH phase, 0.0 during warm-up).
    """
    mu = check_number("mu", mu, low=0.0, low_open=True)
    warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
    nadir_steps = check_int("nadir_steps", nadir_steps, low=1)

    def init(num_tasks: int) -> STCHState:
        check_num_tasks(num_tasks)
        return STCHState(
            loss_sum=jnp.zeros((num_tasks,), jnp.float32), count=jnp.zeros((), jnp.int32)
        )

    combine = partial(_stch_combine, mu=mu, warmup_steps=warmup_steps, nadir_steps=nadir_steps)
    return Strategy(name="stch", requires="losses", init=init, combine=combine)


FACTORIES = {
    "equal": equal,
    "fixed": fixed,
    "uw": uw,
    "dwa": dwa,
    "rlw": rlw,
    "gls": gls,
    "imtl_l": imtl_l,
    "famo": famo,
    "stch": stch,
    "log_losses": log_losses,
}
