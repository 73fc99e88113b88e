"""Gradient-based strategies solved as small optimisation problems over task weights.

MGDA (and MGDA-UB), UPGrad, DualProj, Nash-MTL, FairGrad, MoCo, ExcessMTL, DB-MTL and
GradNorm. Notation: ``K`` tasks, ``D`` flat gradient width, ``J: [K, D]`` the per-task
gradients (rows ``g_k``), ``G = J J^T: [K, K]`` their Gramian.

Methods whose direction is ``w @ J`` with ``w`` a function of ``G`` (and the losses and the
state) are written once as a *Gramian weighting* ``(state, losses, G, key) -> (w, state,
info)``: it is the strategy's ``from_gram``, and its ``combine`` forms ``G`` from ``J``, calls
the same function and returns ``w @ J``, so both paths give the same direction by
construction. MoCo, ExcessMTL and DB-MTL keep ``[K, D]`` moving statistics of the gradients
in their state (``needs_dim=True``) and have no ``from_gram``.

Solvers (jittable, written from the papers' equations):

* :func:`mtlrnn.weighting.solvers.min_norm_active_set`: MGDA's min-norm point over the
  simplex, exactly, by Wolfe's active-set algorithm.
* :func:`mtlrnn.weighting.solvers.nonneg_qp`: ``argmin_{u >= 0} 1/2 u^T G u + q^T u`` by
  the Lawson-Hanson active-set method (exact up to float rounding after finitely many
  steps), used for UPGrad and DualProj (a fixed-step FISTA solver stalled far from the
  solution on their ill-conditioned regularised Gramians, condition number up to 1e4).
* :func:`_solve_power_system`: the ``v > 0`` with ``G v = v^(-p)`` (Nash-MTL: ``p = 1``;
  FairGrad: ``p = 1 / alpha``) by damped Newton on a strictly convex potential.

All run in (at least) float32. On well-conditioned Gramians they are accurate to float32
rounding; when the gradients are nearly linearly dependent (e.g. ``K > D``) the error grows
with the condition number (measured: about 2e-4 on UPGrad's shifts for ``K = 40, D = 10``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from mtlrnn.weighting.base import Info
from mtlrnn.weighting.base import Strategy
from mtlrnn.weighting.base import check_num_tasks
from mtlrnn.weighting.base import combine_rows
from mtlrnn.weighting.base import gradient_strategy
from mtlrnn.weighting.base import gram_strategy
from mtlrnn.weighting.base import gramian
from mtlrnn.weighting.base import stateless_init
from mtlrnn.weighting.solvers import MIN_NORM_METHODS
from mtlrnn.weighting.solvers import min_norm_simplex
from mtlrnn.weighting.solvers import nonneg_qp
from mtlrnn.weighting.solvers import project_simplex
from mtlrnn.weighting.validate import check_choice
from mtlrnn.weighting.validate import check_dim
from mtlrnn.weighting.validate import check_int
from mtlrnn.weighting.validate import check_number

_TINY = 1e-12  # guards divisions by norms/losses that may be exactly zero
# Ridge added to the scale-normalised Gramian before solving G v = v^(-p): the system has no
# positive solution when a positive combination of gradients vanishes (e.g. a zero gradient).
_POWER_REG = 1e-6


# --------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------


def _normalize_regularize(gram: chex.Array, norm_eps: float, reg_eps: float) -> chex.Array:
    """TorchJD's Gramian conditioning for UPGrad/DualProj: ``G / tr(G) + reg_eps I`` (or
    ``reg_eps I`` when ``tr(G) < norm_eps``). ``tr(G)`` is the squared Frobenius norm of J."""
    trace = jnp.trace(gram)
    normalized = jnp.where(trace < norm_eps, 0.0, gram / jnp.maximum(trace, _TINY))
    return normalized + reg_eps * jnp.eye(gram.shape[0], dtype=gram.dtype)


def _solve_power_system(
    gram: chex.Array, power: float, *, max_iter: int = 50, tol: float = 1e-12
) -> chex.Array:
    """The ``v: [K] > 0`` with ``G v = v^(-power)``, for ``G`` positive definite, ``power > 0``.

    The equation is the stationarity condition of the strictly convex potential
    ``f(v) = 1/2 v^T G v - sum_i phi(v_i)`` with ``phi' (v) = v^(-power)`` (``phi = log`` for
    ``power = 1``), whose Hessian ``G + diag(power v^(-power-1))`` is positive definite, so
    the solution is unique. Newton's method on ``f``: start from the diagonal solution
    ``v_i = G_ii^(-1/(1+power))`` rescaled by the exact minimiser of ``f`` along that ray;
    each step solves ``H d = grad f``, is cut to stay inside ``v > 0`` (at most 95% of the way
    to the boundary) and halved until ``f`` decreases (Armijo, with a float-rounding slack so
    that full steps are taken near the solution, where Newton converges quadratically). Stops
    when the squared Newton decrement ``grad^T H^-1 grad <= tol`` or after ``max_iter`` steps.
    """
    p = float(power)

    def potential(v: chex.Array) -> chex.Array:
        barrier = jnp.log(v) if p == 1.0 else v ** (1.0 - p) / (1.0 - p)
        return 0.5 * v @ gram @ v - jnp.sum(barrier)

    diag = jnp.maximum(jnp.diagonal(gram), _TINY)
    v0 = diag ** (-1.0 / (1.0 + p))
    # f(t v0) is minimised at t^(1+p) = sum(v0^(1-p)) / (v0^T G v0).
    ray = (jnp.sum(v0 ** (1.0 - p)) / jnp.maximum(v0 @ gram @ v0, _TINY)) ** (1.0 / (1.0 + p))
    v0 = v0 * ray

    def cond(carry: tuple) -> chex.Array:
        i, _, decrement = carry
        return jnp.logical_and(i < max_iter, decrement > tol)

    def body(carry: tuple) -> tuple:
        i, v, _ = carry
        grad = gram @ v - v ** (-p)
        hess = gram + jnp.diag(p * v ** (-p - 1.0))
        delta = jnp.linalg.solve(hess, grad)
        decrement = grad @ delta
        to_boundary = jnp.where(delta > 0.0, v / jnp.maximum(delta, _TINY), jnp.inf)
        step0 = jnp.minimum(1.0, 0.95 * jnp.min(to_boundary))
        f0 = potential(v)
        slack = 1e-6 * (1.0 + jnp.abs(f0))

        def shrink(carry: tuple) -> tuple:
            j, s = carry
            return j + 1, 0.5 * s

        def too_long(carry: tuple) -> chex.Array:
            j, s = carry
            worse = potential(v - s * delta) > f0 - 0.25 * s * decrement + slack
            return jnp.logical_and(j < 40, worse)

        _, step = jax.lax.while_loop(too_long, shrink, (0, step0))
        return i + 1, v - step * delta, decrement

    init = (0, v0, jnp.asarray(jnp.inf, gram.dtype))
    return jax.lax.while_loop(cond, body, init)[1]


# --------------------------------------------------------------------------------------
# MGDA / MGDA-UB
# --------------------------------------------------------------------------------------

_MGDA_NORMALIZE = ("none", "l2", "loss", "loss+")


def _mgda(
    name: str,
    *,
    solver: str,
    normalize: str,
    max_iter: int,
    tol: float,
    modes: tuple[str, ...] | None,
) -> Strategy:
    check_choice("solver", solver, MIN_NORM_METHODS)
    check_choice("normalize", normalize, _MGDA_NORMALIZE)
    check_int("max_iter", max_iter, low=1)
    check_number("tol", tol, low=0.0, low_open=True)

    def weighting(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del key
        l2 = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        loss = losses.astype(gram.dtype)
        scale = {
            "none": jnp.ones_like(l2),
            "l2": l2,
            "loss": loss,
            "loss+": loss * l2,
        }[normalize]
        scale = jnp.where(jnp.abs(scale) < _TINY, _TINY, scale)
        scaled = gram / (scale[:, None] * scale[None, :])
        weights = min_norm_simplex(scaled, method=solver, max_iter=max_iter, tol=tol)
        return weights, state, {"weights": weights}

    return gram_strategy(name, stateless_init, weighting, modes=modes)


def mgda(
    *,
    solver: str = "active_set",
    normalize: str = "none",
    max_iter: int = 250,
    tol: float = 1e-7,
) -> Strategy:
    """MGDA: the min-norm point of the convex hull of the task gradients.

    Sener & Koltun, 2018, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS.
    ``w = argmin_{w in simplex} || sum_k w_k g_k / n_k ||^2`` and the direction is
    ``sum_k w_k g_k`` (Sec. 3.1; the K = 2 case in closed form, Alg. 1). ``n_k`` is the
    optional gradient normaliser of the authors' code (``gradient_normalizers``):
    ``"none"``: 1, ``"l2"``: ``||g_k||``, ``"loss"``: ``L_k``, ``"loss+"``: ``L_k ||g_k||``. As in
    their code, the weights are solved on the normalised gradients and applied to the raw
    losses (so the direction uses the raw gradients); they sum to 1 (the Nash-MTL
    benchmark's copy multiplies them by K instead). The ``loss`` normalisers assume positive
    losses.

    The min-norm problem is solved exactly (Wolfe's active-set algorithm, see
    :func:`mtlrnn.weighting.solvers.min_norm_active_set`): the weights satisfy its KKT
    conditions to float32 rounding. The paper's Frank-Wolfe (and the authors' code, which
    stops after ``MinNormSolver.MAX_ITER = 250`` iterations) only approaches the minimiser,
    as ``O(1/t)``: after 250 iterations its direction was off by 0.3% (K = 3) to 13%
    (K = 10) on random Jacobians; it stays available as ``solver="frank_wolfe"``.

    Args:
      solver: ``"active_set"`` (default, exact), ``"frank_wolfe"`` (the paper's Alg. 2 with
        exact line search; approximate) or ``"projected_gradient"`` (accelerated projected
        gradient on the simplex; converges to the minimiser, slowly when ``G`` is
        ill-conditioned). K = 2 always uses the closed form.
      normalize: gradient normaliser, default ``"none"``.
      max_iter: solver iteration cap (250: ``MinNormSolver.MAX_ITER`` of the authors' code;
        the active-set solver needs ``K`` to ``2K`` steps).
      tol: active set: the KKT violation, relative to the largest squared gradient norm, at
        which to stop; the iterative solvers: stop when the weights change less than this
        (max-abs). Default 1e-7.
    """
    return _mgda("mgda", solver=solver, normalize=normalize, max_iter=max_iter, tol=tol, modes=None)


def mgda_ub(
    *,
    solver: str = "active_set",
    normalize: str = "none",
    max_iter: int = 250,
    tol: float = 1e-7,
) -> Strategy:
    """MGDA-UB: MGDA on the gradients of the shared representation (Sener & Koltun, 2018,
    Sec. 3.3 and Thm. 1: minimising the norm there minimises an upper bound of the MGDA
    objective). Identical to :func:`mgda` but restricted to the ``representation`` gradient
    mode; any other mode is a configuration error. Arguments as for :func:`mgda`."""
    return _mgda(
        "mgda_ub",
        solver=solver,
        normalize=normalize,
        max_iter=max_iter,
        tol=tol,
        modes=("representation",),
    )


# --------------------------------------------------------------------------------------
# UPGrad / DualProj
# --------------------------------------------------------------------------------------


def _check_jd_eps(norm_eps: float, reg_eps: float) -> tuple[float, float]:
    norm_eps = check_number("norm_eps", norm_eps, low=0.0)
    return norm_eps, check_number("reg_eps", reg_eps, low=0.0, low_open=True)


def upgrad(*, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Strategy:
    """UPGrad: the mean of every gradient projected onto the dual cone of all of them.

    Quinton & Rey, 2024, "Jacobian Descent for Multi-Objective Optimization" (arXiv
    2406.16232). The projection of ``g_i`` onto ``{d : J d >= 0}`` is ``lambda_i^T J`` with
    ``lambda_i = argmin_{lambda >= e_i} lambda^T G lambda`` (their Prop. 1, the dual of the
    projection); the weights are ``w = mean_i lambda_i`` and the direction ``w @ J`` (``J d >=
    0``: no task's loss increases to first order). Each ``lambda_i = e_i + u`` with
    ``u = argmin_{u >= 0} 1/2 u^T G u + (G e_i)^T u``, solved exactly (active set).

    Conventions (TorchJD's, whose published values these reproduce): the Gramian is first
    divided by its trace (the squared Frobenius norm of J; the projection is invariant to
    this scaling), set to zero when the trace is below ``norm_eps``, and ``reg_eps I`` is
    added so it is positive definite. The regularisation shifts the weights by
    ``O(reg_eps)``; it is not in the paper's equations.

    Args:
      norm_eps: trace below which G is treated as zero (weights then ``1/K``). Default 1e-4.
      reg_eps: ridge added to the trace-normalised Gramian, > 0. Default 1e-4.
    """
    norm_eps, reg_eps = _check_jd_eps(norm_eps, reg_eps)

    def weighting(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        gram = _normalize_regularize(gram, norm_eps, reg_eps)
        k = gram.shape[0]
        # Row i: the shift u of lambda_i = e_i + u; the linear term is G e_i = G[i].
        shifts = jax.vmap(lambda q: nonneg_qp(gram, q))(gram)
        weights = jnp.mean(shifts + jnp.eye(k, dtype=gram.dtype), axis=0)
        return weights, state, {"weights": weights}

    return gram_strategy("upgrad", stateless_init, weighting)


def dualproj(*, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Strategy:
    """DualProj: the mean gradient projected onto the dual cone of the task gradients.

    Quinton & Rey, 2024, "Jacobian Descent for Multi-Objective Optimization" (arXiv
    2406.16232). ``w = argmin_{lambda >= 1/K} lambda^T G lambda`` and the direction
    ``w @ J`` is the projection of ``mean_k g_k`` onto ``{d : J d >= 0}``. Same Gramian
    conventions as :func:`upgrad` (trace normalisation, ``norm_eps``, ``reg_eps`` ridge).
    """
    norm_eps, reg_eps = _check_jd_eps(norm_eps, reg_eps)

    def weighting(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        gram = _normalize_regularize(gram, norm_eps, reg_eps)
        k = gram.shape[0]
        mean = jnp.full((k,), 1.0 / k, gram.dtype)
        weights = mean + nonneg_qp(gram, gram @ mean)
        return weights, state, {"weights": weights}

    return gram_strategy("dualproj", stateless_init, weighting)


# --------------------------------------------------------------------------------------
# Nash-MTL / FairGrad
# --------------------------------------------------------------------------------------


def _clip_weights(weights: chex.Array, gram: chex.Array, max_norm: float) -> tuple:
    """Scale ``w`` so that ``||w @ J|| = sqrt(w^T G w) <= max_norm`` (0 disables)."""
    norm = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
    if max_norm <= 0.0:
        return weights, norm
    scale = jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, _TINY), 1.0)
    return weights * scale, norm


class NashMTLState(NamedTuple):
    """Nash-MTL state (``update_weights_every`` reuse)."""

    alpha: chex.Array  # [K] float32: last solved (unclipped) bargaining weights, at ``scale``
    step: chex.Array  # [] int32: calls so far


_NASH_SCALES = ("raw", "frobenius")


def _nash_mtl_init(num_tasks: int) -> NashMTLState:
    """Nash-MTL's ``init``: ``alpha = 1`` (replaced at the first call), step 0."""
    check_num_tasks(num_tasks)
    return NashMTLState(jnp.ones((num_tasks,), jnp.float32), jnp.zeros((), jnp.int32))


def _nash_mtl_weighting(
    state: NashMTLState,
    losses: chex.Array,
    gram: chex.Array,
    key: chex.PRNGKey | None = None,
    *,
    every: int,
    max_norm: float,
    scale: str,
    max_iter: int,
    tol: float,
) -> tuple[chex.Array, NashMTLState, Info]:
    """Nash-MTL's Gramian weighting: solve ``G alpha = 1 / alpha`` every ``every`` calls
    (reuse ``state.alpha`` in between), then clip the direction to ``max_norm``."""
    del losses, key
    k = gram.shape[0]

    def solve(_: None) -> chex.Array:
        frob = jnp.linalg.norm(gram)
        safe = jnp.maximum(frob, _TINY)
        scaled = gram / safe + _POWER_REG * jnp.eye(k, dtype=gram.dtype)
        alpha = _solve_power_system(scaled, 1.0, max_iter=max_iter, tol=tol)
        if scale == "raw":
            alpha = alpha / jnp.sqrt(safe)  # G alpha = 1 / alpha on the raw scale
        return jnp.where(frob > _TINY, alpha, 1.0).astype(state.alpha.dtype)

    alpha = jax.lax.cond(state.step % every == 0, solve, lambda _: state.alpha, None)
    weights, norm = _clip_weights(alpha.astype(gram.dtype), gram, max_norm)
    new_state = NashMTLState(alpha, state.step + 1)
    return weights, new_state, {"weights": weights, "direction_norm": norm}


def nash_mtl(
    *,
    update_weights_every: int = 1,
    max_norm: float = 1.0,
    scale: str = "raw",
    max_iter: int = 50,
    tol: float = 1e-12,
) -> Strategy:
    """Nash-MTL: the Nash bargaining solution over update directions.

    Navon et al., 2022, "Multi-Task Learning as a Bargaining Game", ICML. The direction is
    ``alpha @ J`` with ``alpha > 0`` solving ``G alpha = 1 / alpha`` (their Eq. 4 and Thm.
    5.1: every task's directional derivative ``g_k^T d`` is the inverse of its weight). Then
    ``||alpha @ J||^2 = alpha^T G alpha = sum_k alpha_k (G alpha)_k = K``: the bargaining
    direction has norm ``sqrt(K)`` whatever the gradients' scale.

    Solved here exactly, in JAX, by damped Newton on the convex potential
    ``1/2 a^T G a - sum log a`` (see :func:`_solve_power_system`; at most ``max_iter`` steps,
    stop at squared Newton decrement ``<= tol``), not by the paper's sequential convex
    approximation with cvxpy (20 iterations). For float32 conditioning the system is solved
    on ``G / ||G||_F`` (plus a ridge of 1e-6, so a zero gradient does not make it
    unsolvable) and the solution ``v`` is rescaled exactly: ``alpha = v / sqrt(||G||_F)``.

    Conventions of the authors' code (AvivNavon/nash-mtl, ``NashMTL``; TorchJD's ``NashMTL``
    adapts it): the bargaining equation holds on the raw Gramian (their constraint
    ``alpha_k (G alpha)_k >= 1`` multiplies the normalised Gramian back by its Frobenius
    norm), and after aggregation the shared-parameter gradient is clipped to norm
    ``max_norm`` (``clip_grad_norm_`` with default 1.0; ``max_norm = 0`` disables it). So by
    default the step is a unit step, ``min(sqrt(K), max_norm)``. The clipping is folded into
    the weights: ``w = alpha * min(1, max_norm / ||alpha @ J||)``, so it acts on this
    strategy's direction only.

    Args:
      update_weights_every: solve every N calls and reuse the last ``alpha`` in between
        (the clipping still uses the current gradients). Default 1.
      max_norm: clip the direction's norm to this; 0 disables. Default 1.0.
      scale: ``"raw"`` (default, the reference's solution: ``G alpha = 1 / alpha`` on the raw
        Gramian, step ``min(sqrt(K), max_norm)``) or ``"frobenius"`` (this package's earlier
        behaviour, kept as an option: ``alpha`` solved on ``G / ||G||_F`` and used as is, so
        ``||alpha @ J|| = sqrt(K ||G||_F)`` and the step is ``min(sqrt(K ||G||_F),
        max_norm)``: it shrinks with the gradients, e.g. ten times smaller than the
        reference's when ``K ||G||_F = 0.01``).
      max_iter: Newton steps cap. tol: squared Newton decrement at which to stop.

    ``info``: ``weights`` (after clipping) and ``direction_norm`` (``||alpha @ J||`` before).
    """
    every = check_int("update_weights_every", update_weights_every, low=1)
    max_norm = check_number("max_norm", max_norm, low=0.0)
    check_choice("scale", scale, _NASH_SCALES)
    check_int("max_iter", max_iter, low=1)
    check_number("tol", tol, low=0.0, low_open=True)

    weighting = partial(
        _nash_mtl_weighting, every=every, max_norm=max_norm, scale=scale, max_iter=max_iter, tol=tol
    )
    return gram_strategy("nash_mtl", _nash_mtl_init, weighting)


def fairgrad(
    *,
    alpha: float = 1.0,
    max_norm: float = 1.0,
    max_iter: int = 50,
    tol: float = 1e-12,
) -> Strategy:
    """FairGrad: alpha-fair allocation of the update over tasks.

    Ban & Ji, 2024, "Fair Resource Allocation in Multi-Task Learning", ICML. The direction
    ``w @ J`` maximises the alpha-fair utility of the loss decreases ``g_k^T d``; its
    weights ``w > 0`` solve ``G w = w^(-1/alpha)`` (their Eq. 4). ``alpha -> 0`` tends to
    equal weighting, ``alpha = 1`` is proportional fairness (Nash-MTL's equation, without
    its normalisation), ``alpha -> inf`` max-min fairness (MGDA-like).

    Solved exactly on the unnormalised ``G`` as in the authors' code (which calls scipy's
    ``least_squares`` on ``G w - w^(-1/alpha)``): here damped Newton on a convex potential
    (:func:`_solve_power_system`) applied to ``G / c`` with ``c = tr(G) / K`` (for float32
    conditioning), then rescaled exactly by ``c^(-1/(1 + 1/alpha))``; a ridge of 1e-6 is
    added to ``G / c``.

    ``alpha`` default 1.0: the default of the authors' code (``--alpha``) and of LibMTL
    (``FairGrad_alpha``); the authors' run scripts use 2.0 for CelebA and QM9. Like
    Nash-MTL, their code clips the shared-parameter gradient to ``max_norm`` (default 1.0),
    folded into the weights here (0 disables). Their code also multiplies the direction by
    K before clipping ("to match the sum loss"); that factor is not applied here.

    Args:
      alpha: fairness parameter, > 0. Default 1.0.
      max_norm: clip the direction's norm to this; 0 disables. Default 1.0.
      max_iter: Newton steps cap. tol: squared Newton decrement at which to stop.
    """
    alpha = check_number("alpha", alpha, low=0.0, low_open=True)
    max_norm = check_number("max_norm", max_norm, low=0.0)
    check_int("max_iter", max_iter, low=1)
    check_number("tol", tol, low=0.0, low_open=True)
    power = 1.0 / alpha

    def weighting(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        k = gram.shape[0]
        c = jnp.maximum(jnp.trace(gram) / k, _TINY)
        scaled = gram / c + _POWER_REG * jnp.eye(k, dtype=gram.dtype)
        solution = _solve_power_system(scaled, power, max_iter=max_iter, tol=tol)
        solution = solution * c ** (-1.0 / (1.0 + power))
        weights, norm = _clip_weights(solution, gram, max_norm)
        return weights, state, {"weights": weights, "direction_norm": norm}

    return gram_strategy("fairgrad", stateless_init, weighting)


# --------------------------------------------------------------------------------------
# MoCo
# --------------------------------------------------------------------------------------


class MoCoState(NamedTuple):
    """MoCo state."""

    tracked: chex.Array  # [K, D] float32: tracked gradients Y (rows y_k)
    lambd: chex.Array  # [K] float32: task weights on the simplex
    step: chex.Array  # [] int32: calls so far


def _moco_combine(
    state: MoCoState,
    losses: chex.Array,
    grads: chex.Array,
    key: chex.PRNGKey | None = None,
    *,
    beta: float,
    beta_sigma: float,
    gamma: float,
    gamma_sigma: float,
    rho: float,
    normalize: str,
) -> tuple[chex.Array, MoCoState, Info]:
    """MoCo's step on ``grads: [K, D]``: track the gradients, take a projected gradient step
    on ``lambda`` and return ``lambda @ Y: [D]`` in ``grads``' dtype."""
    del key
    step = state.step + 1
    t = step.astype(jnp.float32)
    g = grads.astype(state.tracked.dtype)
    if normalize == "l2_times_loss":
        norms = jnp.linalg.norm(g, axis=1, keepdims=True)
        g = g / (norms + 1e-8) * losses.astype(g.dtype)[:, None]
    tracked = state.tracked - (beta / t**beta_sigma) * (state.tracked - g)
    k = tracked.shape[0]
    yy = gramian(tracked) + rho * jnp.eye(k, dtype=tracked.dtype)
    step_point = state.lambd - (gamma / t**gamma_sigma) * (yy @ state.lambd)
    # The projection is shift-invariant; shifting by the max keeps solvers.project_simplex
    # exact when the step is huge (its support count rounds to zero for entries ~1e8).
    lambd = project_simplex(step_point - jnp.max(step_point))
    direction = combine_rows(lambd, tracked).astype(grads.dtype)
    return direction, MoCoState(tracked, lambd, step), {"weights": lambd}


def moco(
    *,
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    normalize: str = "none",
) -> Strategy:
    """MoCo: MGDA on tracked gradients, with the weights updated by projected gradient.

    Fernando et al., 2023, "Mitigating Gradient Bias in Multi-Objective Learning: A Provably
    Convergent Approach", ICLR. At step ``t = 1, 2, ...`` (their Alg. 1)::

      Y      <- Y - beta_t (Y - J)                                 (gradient tracking)
      lambda <- Pi_simplex(lambda - gamma_t (Y Y^T + rho I) lambda)
      d       = lambda @ Y

    with ``beta_t = beta / t^beta_sigma``, ``gamma_t = gamma / t^gamma_sigma``, ``Y_0 = 0``,
    ``lambda_0 = 1/K``. The paper's projection of each ``y_k`` onto a bounded set is omitted
    (as in every public implementation). ``Pi_simplex`` is the Euclidean projection of the
    paper; LibMTL and TorchJD use a softmax instead. ``info["weights"]`` is ``lambda``: it
    weights the tracked gradients ``Y``, not the current ``J``.

    Defaults (LibMTL's ``MoCo_*`` arguments, also TorchJD's): ``beta = 0.5``,
    ``beta_sigma = 0.5``, ``gamma = 0.1``, ``gamma_sigma = 0.5``, ``rho = 0``.

    Args:
      normalize: ``"none"`` (the paper) or ``"l2_times_loss"``: track
        ``g_k / ||g_k|| * L_k`` instead of ``g_k`` (LibMTL's practical variant).
    """
    beta = check_number("beta", beta, low=0.0, high=1.0)
    beta_sigma = check_number("beta_sigma", beta_sigma, low=0.0)
    gamma = check_number("gamma", gamma, low=0.0)
    gamma_sigma = check_number("gamma_sigma", gamma_sigma, low=0.0)
    rho = check_number("rho", rho, low=0.0)
    check_choice("normalize", normalize, ("none", "l2_times_loss"))

    def init(num_tasks: int, *, dim: int) -> MoCoState:
        check_num_tasks(num_tasks)
        dim = check_dim(dim)
        return MoCoState(
            jnp.zeros((num_tasks, dim), jnp.float32),
            jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    matrix_combine = partial(
        _moco_combine,
        beta=beta,
        beta_sigma=beta_sigma,
        gamma=gamma,
        gamma_sigma=gamma_sigma,
        rho=rho,
        normalize=normalize,
    )
    return gradient_strategy("moco", init, matrix_combine, needs_dim=True)


# --------------------------------------------------------------------------------------
# ExcessMTL
# --------------------------------------------------------------------------------------


class ExcessMTLState(NamedTuple):
    """ExcessMTL state."""

    weights: chex.Array  # [K] float32: task weights, summing to K
    sq_grad_sum: chex.Array  # [K, D] float32: sum over steps of squared per-task gradients
    excess_sum: chex.Array  # [K] float32: sum of the excess-risk estimates of warm-up steps
    step: chex.Array  # [] int32: calls so far


def _excess_mtl_combine(
    state: ExcessMTLState,
    losses: chex.Array,
    grads: chex.Array,
    key: chex.PRNGKey | None = None,
    *,
    eta: float,
    warmup: int,
) -> tuple[chex.Array, ExcessMTLState, Info]:
    """ExcessMTL's step on ``grads: [K, D]``: estimate the excess risks, update the weights
    (after ``warmup`` baseline calls) and return ``w @ J: [D]``."""
    del losses, key
    g = grads.astype(state.sq_grad_sum.dtype)
    sq_grad_sum = state.sq_grad_sum + g * g
    excess = jnp.sum(g * g / jnp.sqrt(sq_grad_sum + 1e-7), axis=1)
    warming = state.step < warmup
    excess_sum = jnp.where(warming, state.excess_sum + excess, state.excess_sum)
    baseline = jnp.maximum(excess_sum / warmup, _TINY)
    k = excess.shape[0]
    logits = jnp.log(state.weights) + eta * excess / baseline
    updated = k * jax.nn.softmax(logits)
    weights = jnp.where(warming, state.weights, updated)
    new_state = ExcessMTLState(weights, sq_grad_sum, excess_sum, state.step + 1)
    # The reference trains every parameter on sum_k w_k L_k, the heads included.
    info = {"weights": weights, "excess_risk": excess, "head_weights": weights}
    return combine_rows(weights, grads), new_state, info


def excess_mtl(*, robust_step_size: float = 1e-2, warmup_steps: int = 1) -> Strategy:
    """ExcessMTL: weights tasks by exponentiated gradient ascent on estimated excess risks.

    He et al., 2024, "Robust Multi-Task Learning with Excess Risks", ICML. The excess risk
    ``L_k(theta) - L_k(theta_k*)`` is estimated by a second-order expansion,
    ``1/2 g_k^T H_k^-1 g_k`` (their Eq. 6), with the Hessian replaced by AdaGrad's diagonal
    ``diag(sqrt(sum_s g_{k,s}^2))`` (Eq. 7) accumulated over all steps so far:
    ``e_k = sum_d g_kd^2 / sqrt(S_kd + 1e-7)``. The estimates are divided by a baseline
    ``e_k^0`` (scale invariance across tasks) and the weights take an exponentiated gradient
    step ``w_k <- w_k exp(eta e_k / e_k^0)`` (Eq. 9), renormalised to sum to K. The
    direction is ``w @ J`` with the updated weights.

    Practical algorithm of the authors' code (LibMTL fork): weights start at 1; the baseline
    is the estimate at the first call, during which the weights are not updated
    (``warmup_steps = 1``). With ``warmup_steps = n`` the weights stay at 1 for ``n`` calls
    and the baseline is the mean estimate over them (the paper's App. C.1 collects three
    epochs). The constant 1/2 cancels in the ratio. The update runs in log space (a
    softmax), which is the same map without overflow.

    Task-specific parameters (the heads) get ``w_k`` times their task's gradient: the
    reference back-propagates ``sum_k w_k L_k`` through the whole network
    (``info["head_weights"] = w``).

    Args:
      robust_step_size: ``eta`` (default 1e-2: the ``--robust_step_size`` default of the
        authors' code).
      warmup_steps: calls used for the baseline, >= 1. Default 1.
    """
    eta = check_number("robust_step_size", robust_step_size, low=0.0, low_open=True)
    warmup = check_int("warmup_steps", warmup_steps, low=1)

    def init(num_tasks: int, *, dim: int) -> ExcessMTLState:
        check_num_tasks(num_tasks)
        dim = check_dim(dim)
        return ExcessMTLState(
            jnp.ones((num_tasks,), jnp.float32),
            jnp.zeros((num_tasks, dim), jnp.float32),
            jnp.zeros((num_tasks,), jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    matrix_combine = partial(_excess_mtl_combine, eta=eta, warmup=warmup)
    return gradient_strategy("excess_mtl", init, matrix_combine, needs_dim=True)


# --------------------------------------------------------------------------------------
# DB-MTL
# --------------------------------------------------------------------------------------


class DBMTLState(NamedTuple):
    """DB-MTL state."""

    buffer: chex.Array  # [K, D] float32: EMA of the log-loss gradients
    step: chex.Array  # [] int32: calls so far


def db_mtl(*, beta: float = 0.9, beta_sigma: float = 0.0) -> Strategy:
    """DB-MTL: log-loss balancing plus max-norm gradient-magnitude balancing.

    Lin et al., 2023, "Dual-Balancing Multi-Task Learning" (arXiv 2308.12029). Loss-scale
    balancing: each task is trained on ``log L_k`` (gradient ``g_k / L_k``). Gradient-magnitude
    balancing: an exponential moving average of those gradients,
    ``m_k <- beta_t m_k + (1 - beta_t) g_k / (L_k + 1e-8)`` with ``beta_t = beta /
    t^beta_sigma`` and ``m_0 = 0``, is rescaled to the largest norm::

      d = sum_k (max_j ||m_j|| / (||m_k|| + 1e-8)) m_k

    ``info["weights"]`` holds the scales ``max_j ||m_j|| / ||m_k||``; they multiply the
    moving averages, not the current gradients. Assumes positive losses.

    Task-specific parameters (the heads) are trained on ``sum_k log(L_k + 1e-8)``, as in
    LibMTL's ``DB_MTL`` (it back-propagates the log losses through the whole network and
    then replaces only the shared parameters' gradient): ``info["head_weights"] = 1 /
    (L_k + 1e-8)``.

    Defaults ``beta = 0.9``, ``beta_sigma = 0`` (LibMTL's ``DB_beta``, ``DB_beta_sigma``,
    maintained by the paper's authors).
    """
    beta = check_number("beta", beta, low=0.0, high=1.0)
    beta_sigma = check_number("beta_sigma", beta_sigma, low=0.0)

    def init(num_tasks: int, *, dim: int) -> DBMTLState:
        check_num_tasks(num_tasks)
        dim = check_dim(dim)
        return DBMTLState(jnp.zeros((num_tasks, dim), jnp.float32), jnp.zeros((), jnp.int32))

    def matrix_combine(
        state: DBMTLState, losses: chex.Array, grads: chex.Array, key: chex.PRNGKey | None = None
    ) -> tuple[chex.Array, DBMTLState, Info]:
        del key
        step = state.step + 1
        beta_t = beta / step.astype(jnp.float32) ** beta_sigma
        inv_losses = 1.0 / (losses.astype(state.buffer.dtype) + 1e-8)  # d log(L + eps) / dL
        log_grads = grads.astype(state.buffer.dtype) * inv_losses[:, None]
        buffer = log_grads + beta_t * (state.buffer - log_grads)
        norms = jnp.linalg.norm(buffer, axis=1)
        scales = jnp.max(norms) / (norms + 1e-8)
        direction = combine_rows(scales, buffer).astype(grads.dtype)
        info = {"weights": scales, "head_weights": inv_losses}
        return direction, DBMTLState(buffer, step), info

    return gradient_strategy("db_mtl", init, matrix_combine, needs_dim=True)


# --------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------


class GradNormState(NamedTuple):
    """GradNorm state."""

    weights: chex.Array  # [K] float32: learnable task weights, summing to K
    initial_losses: chex.Array  # [K] float32: L_k(0), set on the first call
    step: chex.Array  # [] int32: calls so far


def gradnorm(*, alpha: float = 1.5, lr: float = 0.025) -> Strategy:
    """GradNorm: learn task weights that equalise weighted gradient norms at training rates.

    Chen et al., 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
    Deep Multitask Networks", ICML. With weights ``w`` (state, start at 1), gradient norms
    ``G_k = ||w_k g_k|| = w_k sqrt(G_kk)``, their mean ``G_bar``, loss ratios
    ``Ltilde_k = L_k / L_k(0)`` and inverse training rates ``r_k = Ltilde_k / mean(Ltilde)``,
    the GradNorm loss is ``L_grad = sum_k |G_k - G_bar r_k^alpha|`` with the target treated
    as a constant (their Eq. 2). The direction is ``sum_k w_k g_k`` with the current ``w``
    (returned as ``info["weights"]``); then ``w`` takes one gradient step on ``L_grad`` (its
    analytic gradient ``sign(G_k - target_k) sqrt(G_kk)``), is clipped at 0 and renormalised
    to sum to K (Alg. 1). ``L_k(0)`` are the losses of the first call.

    The paper computes ``g_k`` on the last shared layer's weights only (for cost); here
    they are whatever the gradient mode provides (all shared parameters, the representation,
    or the Gramian's diagonal in ``gramian`` mode).

    Args:
      alpha: asymmetry, default 1.5 (the paper's NYUv2 value; LibMTL's default).
      lr: learning rate of the plain gradient step on ``w``. The paper trains ``w`` with the
        network's optimizer and gives no separate rate; 0.025 is the method-parameter
        learning rate default (``--method-params-lr``) of the Nash-MTL benchmark code.
    """
    alpha = check_number("alpha", alpha, low=0.0)
    lr = check_number("lr", lr, low=0.0, low_open=True)

    def init(num_tasks: int) -> GradNormState:
        check_num_tasks(num_tasks)
        return GradNormState(
            jnp.ones((num_tasks,), jnp.float32),
            jnp.ones((num_tasks,), jnp.float32),
            jnp.zeros((), jnp.int32),
        )

    def weighting(
        state: GradNormState,
        losses: chex.Array,
        gram: chex.Array,
        key: chex.PRNGKey | None = None,
    ) -> tuple[chex.Array, GradNormState, Info]:
        del key
        dtype = state.weights.dtype
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram).astype(dtype), 0.0))
        losses = losses.astype(dtype)
        initial = jnp.where(state.step == 0, losses, state.initial_losses)
        weights = state.weights
        weighted = weights * norms
        ratios = losses / jnp.maximum(initial, _TINY)
        rates = jnp.maximum(ratios / jnp.maximum(jnp.mean(ratios), _TINY), 0.0)
        target = jnp.mean(weighted) * rates**alpha
        gradnorm_loss = jnp.sum(jnp.abs(weighted - target))
        new = jnp.maximum(weights - lr * jnp.sign(weighted - target) * norms, 0.0)
        total = jnp.sum(new)
        k = weights.shape[0]
        new = jnp.where(total > _TINY, new * (k / jnp.maximum(total, _TINY)), 1.0)
        info = {"weights": weights, "gradnorm_loss": gradnorm_loss}
        return weights, GradNormState(new, initial, state.step + 1), info

    return gram_strategy("gradnorm", init, weighting)


FACTORIES: dict[str, Callable[..., Strategy]] = {
    "mgda": mgda,
    "mgda_ub": mgda_ub,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "nash_mtl": nash_mtl,
    "fairgrad": fairgrad,
    "moco": moco,
    "excess_mtl": excess_mtl,
    "db_mtl": db_mtl,
    "gradnorm": gradnorm,
}
