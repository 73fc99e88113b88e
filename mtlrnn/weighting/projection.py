"""Gradient-based strategies of the projection family: PCGrad, GradVac, GradDrop, CAGrad,
IMTL-G, Aligned-MTL and ConFIG.

Every method except GradDrop returns a direction ``d = weights @ J`` whose weights are a
function of the Gramian ``G = J J^T`` (``[K, K]``) alone, so each is written once as a
weights function of ``G`` (the ``from_gram`` path); ``matrix_combine`` forms ``G`` from the
``[K, D]`` matrix ``J`` and applies those weights. The sequential methods (PCGrad, GradVac)
track each surgically modified gradient as a combination ``g_i^PC = sum_k C[i, k] g_k`` of
the original gradients: every inner product the algorithms need is then ``C[i] @ G[:, j]``
and every norm ``sqrt(C[i] @ G @ C[i])``, which is exactly the paper's arithmetic.

Conventions shared by the module:

* Computation runs in float32 (or wider, if the input is wider); the direction is cast
  back to the dtype of ``grads`` and the Gramian's products use ``Precision.HIGHEST``.
* Random methods (PCGrad, GradVac, GradDrop) draw from the ``key`` argument; ``key=None``
  uses the fixed key ``jax.random.key(0)`` (deterministic, so pass a per-step key, e.g.
  ``fold_in(key, step)``, to get the random behaviour the papers describe).
* Where a method is invariant to scaling ``G``, ``G`` is first divided by its mean diagonal
  (the mean squared gradient norm) so thresholds and solver tolerances are relative.
"""

from __future__ import annotations

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
from mtlrnn.weighting.base import compute_dtype
from mtlrnn.weighting.base import gradient_strategy
from mtlrnn.weighting.base import gram_strategy
from mtlrnn.weighting.base import stateless_init
from mtlrnn.weighting.solvers import project_simplex
from mtlrnn.weighting.validate import check_choice
from mtlrnn.weighting.validate import check_int
from mtlrnn.weighting.validate import check_number

_TINY = 1e-30  # guards divisions whose numerator is then exactly zero
_REL_EPS = 1e-6  # relative threshold on normalised norms (mean squared gradient norm = 1)


# ----------------------------------------------------------------------------------------
# Shared helpers.


def _default_key(key: chex.PRNGKey | None) -> chex.PRNGKey:
    return jax.random.key(0) if key is None else key


def _safe_div(num: chex.Array, den: chex.Array) -> chex.Array:
    """``num / den`` where ``den > 0``, else 0."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _normalise(gram: chex.Array) -> chex.Array:
    """``G`` divided by its mean diagonal (the mean squared task-gradient norm)."""
    scale = jnp.trace(gram) / gram.shape[0]
    return jnp.where(scale > _TINY, gram / jnp.maximum(scale, _TINY), jnp.zeros_like(gram))


def _task_orders(key: chex.PRNGKey | None, num_tasks: int) -> chex.Array:
    """``[K, K]`` int: row ``i`` is the random order in which task ``i`` visits the others
    (an independent permutation of all tasks per ``i``; ``i`` itself is skipped)."""
    # argsort of i.i.d. uniforms: a uniformly random permutation per row (one sort).
    draws = jax.random.uniform(_default_key(key), (num_tasks, num_tasks))
    return jnp.argsort(draws, axis=1)


def _reduce(coefficients: chex.Array, reduction: str) -> chex.Array:
    """Weights of the sum (or mean) of the modified gradients, ``coefficients: [K, K]``."""
    weights = coefficients.sum(axis=0)
    return weights / coefficients.shape[0] if reduction == "mean" else weights


# ----------------------------------------------------------------------------------------
# PCGrad.


def _pcgrad_coefficients(gram: chex.Array, orders: chex.Array) -> chex.Array:
    """``C: [K, K]`` with ``g_i^PC = sum_k C[i, k] g_k`` after Yu et al.'s Alg. 1."""
    k = gram.shape[0]

    def one_task(i: chex.Array, order: chex.Array) -> chex.Array:
        def visit(t: int, c: chex.Array) -> chex.Array:
            j = order[t]
            inner = c @ gram[:, j]  # g_i^PC . g_j
            fire = (j != i) & (inner < 0)
            return c.at[j].add(jnp.where(fire, -_safe_div(inner, gram[j, j]), 0.0))

        return jax.lax.fori_loop(0, k, visit, jax.nn.one_hot(i, k, dtype=gram.dtype))

    return jax.vmap(one_task)(jnp.arange(k), orders)


def pcgrad(*, reduction: str = "sum") -> Strategy:
    """PCGrad: Yu, Kumar, Gupta, Levine, Hausman and Finn (2020), "Gradient Surgery for
    Multi-Task Learning", NeurIPS.

    For every task ``i`` (Alg. 1), starting from ``g_i^PC = g_i`` and visiting the other
    tasks ``j`` in a random order, whenever ``g_i^PC . g_j < 0``::

        g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

    (projections onto the normal plane of the *original* ``g_j``). The direction is
    ``sum_i g_i^PC`` (Alg. 1's update), i.e. ``weights @ J`` with ``weights = sum_i C[i]``
    for the coefficient rows ``C[i]`` of ``g_i^PC``; both are computed from ``G`` alone.

    Randomness: each task draws its own order of the others from ``key`` (one permutation
    per task per step, as in the paper's "for g_j in random order" and the official code).
    For ``K = 2`` the order is irrelevant.

    Args:
      reduction: ``"sum"`` (default; the update of the paper's Alg. 1) or ``"mean"``
        (divide by ``K``). Implementations differ: TorchJD sums, while the widely used
        PyTorch port (Pytorch-PCGrad) averages by default, which halves the step for K = 2;
        compare learning rates accordingly.

    ``info["weights"]: [K]``: the effective coefficients of the original gradients.
    """
    check_choice("reduction", reduction, ("sum", "mean"))

    def weights_fn(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses
        coefficients = _pcgrad_coefficients(gram, _task_orders(key, gram.shape[0]))
        weights = _reduce(coefficients, reduction)
        return weights, state, {"weights": weights}

    return gram_strategy("pcgrad", stateless_init, weights_fn)


# ----------------------------------------------------------------------------------------
# GradVac.


class GradVacState(NamedTuple):
    """State of GradVac."""

    phi_hat: chex.Array  # [K, K] float32: EMA target cosine of (i, j); diagonal unused


def _gradvac_step(
    gram: chex.Array, phi_hat: chex.Array, orders: chex.Array, beta: float
) -> tuple[chex.Array, chex.Array]:
    """Coefficients ``C: [K, K]`` of the vaccinated gradients and the updated EMA targets."""
    k = gram.shape[0]
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))

    def one_task(
        i: chex.Array, order: chex.Array, targets: chex.Array
    ) -> tuple[chex.Array, chex.Array]:
        def visit(t: int, carry: tuple) -> tuple:
            c, row = carry
            j = order[t]
            gc = gram @ c
            inner = gc[j]  # g_i^PC . g_j
            norm_i = jnp.sqrt(jnp.maximum(c @ gc, 0.0))
            phi = jnp.clip(_safe_div(inner, norm_i * norms[j]), -1.0, 1.0)
            target = row[j]
            other = j != i
            fire = other & (phi < target) & (norm_i > 0) & (norms[j] > 0)
            sin_phi = jnp.sqrt(jnp.maximum(1.0 - phi * phi, 0.0))
            # A target of exactly +-1 would need an infinite step: floor its sine.
            sin_target = jnp.maximum(jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0)), 1e-6)
            w = norm_i * (target * sin_phi - phi * sin_target)
            w = _safe_div(w, norms[j] * sin_target)
            c = c.at[j].add(jnp.where(fire, w, 0.0))
            row = row.at[j].set(jnp.where(other, (1.0 - beta) * target + beta * phi, target))
            return c, row

        init = (jax.nn.one_hot(i, k, dtype=gram.dtype), targets)
        return jax.lax.fori_loop(0, k, visit, init)

    return jax.vmap(one_task)(jnp.arange(k), orders, phi_hat.astype(gram.dtype))


def gradvac(*, beta: float = 0.5, reduction: str = "sum") -> Strategy:
    """GradVac: Wang, Tsvetkov, Firat and Cao (2021), "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models", ICLR.

    A PCGrad-like sequential surgery with adaptive targets: for every task ``i`` and the
    other tasks ``j`` in a random order, with ``phi_ij = cos(g_i^PC, g_j)`` and the target
    ``phi_hat_ij``, if ``phi_ij < phi_hat_ij``::

        g_i^PC <- g_i^PC + ||g_i^PC|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                           / (||g_j|| sqrt(1 - phi_hat^2)) g_j

    which sets ``cos(g_i^PC, g_j)`` to exactly ``phi_hat_ij``; then (whether or not it
    fired) ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij`` (the paper's EMA, with the
    cosine measured before the update). The targets start at 0, so the first step equals
    PCGrad. The direction is ``sum_i g_i^PC`` (or the mean).

    Args:
      beta: EMA rate of the targets, in ``[0, 1]``. Default 0.5, the default of the
        reference implementations (LibMTL, TorchJD).
      reduction: ``"sum"`` (default, as PCGrad's Alg. 1) or ``"mean"``.

    Conventions: one target per task pair for the whole gradient (the paper's
    "whole model" granularity; its per-layer variant is not implemented). The order of the
    other tasks is drawn per task from ``key`` as in :func:`pcgrad`.
    State: :class:`GradVacState`. ``info["weights"]``: effective coefficients.
    """
    beta = check_number("beta", beta, low=0.0, high=1.0)
    check_choice("reduction", reduction, ("sum", "mean"))

    def init(num_tasks: int) -> GradVacState:
        check_num_tasks(num_tasks)
        return GradVacState(phi_hat=jnp.zeros((num_tasks, num_tasks), jnp.float32))

    def weights_fn(
        state: GradVacState, losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None
    ) -> tuple[chex.Array, GradVacState, Info]:
        del losses
        orders = _task_orders(key, gram.shape[0])
        coefficients, phi_hat = _gradvac_step(gram, state.phi_hat, orders, beta)
        weights = _reduce(coefficients, reduction)
        new_state = GradVacState(phi_hat=phi_hat.astype(state.phi_hat.dtype))
        return weights, new_state, {"weights": weights}

    return gram_strategy("gradvac", init, weights_fn)


# ----------------------------------------------------------------------------------------
# GradDrop.


def _graddrop_leaks(leak: float | Sequence[float]) -> tuple[tuple[float, ...] | None, float]:
    """GradDrop's ``leak`` checked: ``(None, l)`` for one number, ``(per-task leaks, 0.0)``
    for a list."""
    if isinstance(leak, int | float) and not isinstance(leak, bool):
        return None, check_number("leak", leak, low=0.0, high=1.0)
    try:
        leaks = tuple(check_number("leak", float(x), low=0.0, high=1.0) for x in leak)
    except (TypeError, ValueError):
        raise ValueError(
            f"leak: must be a number in [0, 1] or a list of them (one per task), got {leak!r}"
        ) from None
    if not leaks:
        raise ValueError(f"leak: must not be empty, got {leak!r}")
    return leaks, 0.0


def _graddrop_combine(
    state: tuple[()],
    losses: chex.Array,
    grads: chex.Array,
    key: chex.PRNGKey | None,
    *,
    leaks: tuple[float, ...] | None,
    scalar_leak: float,
) -> tuple[chex.Array, tuple[()], Info]:
    """GradDrop on ``grads: [K, D]``: the sign-dropout direction ``[D]`` in ``grads``' dtype
    (leak ``scalar_leak`` for every task when ``leaks`` is ``None``)."""
    del losses
    k, dim = grads.shape
    matrix = grads.astype(compute_dtype(grads.dtype))
    if leaks is None:
        leak_vec = jnp.full((k, 1), scalar_leak, matrix.dtype)
    else:
        if len(leaks) != k:
            raise ValueError(f"leak: expected {k} values (one per task), got {len(leaks)}")
        leak_vec = jnp.asarray(leaks, matrix.dtype)[:, None]
    purity = 0.5 * (1.0 + _safe_div(matrix.sum(0), jnp.abs(matrix).sum(0)))
    draw = jax.random.uniform(_default_key(key), (dim,), matrix.dtype)
    keep = ((purity > draw) & (matrix > 0)) | ((purity < draw) & (matrix < 0))
    direction = jnp.sum((leak_vec + (1.0 - leak_vec) * keep) * matrix, axis=0)
    nonzero = matrix != 0
    dropped = jnp.sum(nonzero & ~keep) / jnp.maximum(jnp.sum(nonzero), 1)
    return direction.astype(grads.dtype), state, {"drop_fraction": dropped}


def graddrop(*, leak: float | Sequence[float] = 0.0) -> Strategy:
    """GradDrop: Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov (2020), "Just Pick
    a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS.

    Elementwise over the ``D`` coordinates of ``J: [K, D]`` (Alg. 1): the positive-sign
    purity ``P = (1 + sum_i g_i / sum_i |g_i|) / 2``, one uniform draw ``U`` per coordinate
    (shared by the tasks), the masks ``M_i = [P > U and g_i > 0] or [P < U and g_i < 0]``,
    and the direction ``sum_i (l_i + (1 - l_i) M_i) g_i`` for the leak ``l_i``. So where all
    tasks agree in sign the gradients are summed unchanged; elsewhere only one sign survives,
    chosen with probability proportional to its share of the gradient mass.

    Args:
      leak: ``l``, one number in ``[0, 1]`` for every task or one per task. Default 0 (the
        paper's GradDrop; 1 is plain summation).

    Conventions: the purity is used as is (the paper's monotone transform ``f`` is the
    identity). Random: ``U`` is drawn from ``key`` (``None``: a fixed key).
    ``info["drop_fraction"]``: the fraction of non-zero entries of ``J`` dropped. No
    ``from_gram`` (elementwise).

    Modes: ``full`` only. There ``J`` is the Jacobian of the shared parameters, each entry
    already summed over the batch, and the masks are drawn per parameter: TorchJD's
    ``GradDrop`` aggregator (lines 10-15 of the paper's Alg. 1 applied to a Jacobian). The
    paper applies GradDrop at a shared activation ``A`` and, for batch-separated activations,
    sums ``sign(A) * dL_i/dA`` over the batch before computing the purity, drawing one mask
    per feature (LibMTL's ``GradDrop`` does the same with ``rep_grad``). This package's
    ``representation`` mode gives a strategy one gradient per batch element and time step,
    without the activations' signs, so GradDrop there would compute its purity and masks per
    element: a different algorithm. The mode is refused (a configuration error on
    ``weighting.mode``) rather than run under the paper's name.
    """
    leaks, scalar_leak = _graddrop_leaks(leak)

    def init(num_tasks: int) -> tuple[()]:
        check_num_tasks(num_tasks)
        if leaks is not None and len(leaks) != num_tasks:
            raise ValueError(f"leak: expected {num_tasks} values (one per task), got {len(leaks)}")
        return ()

    matrix_combine = partial(_graddrop_combine, leaks=leaks, scalar_leak=scalar_leak)
    return gradient_strategy("graddrop", init, matrix_combine, modes=("full",))


# ----------------------------------------------------------------------------------------
# CAGrad.


def _cagrad_dual(
    gram: chex.Array, sqrt_phi: chex.Array, *, max_iter: int, tol: float
) -> tuple[chex.Array, chex.Array]:
    """``argmin_{w in simplex} w^T b + sqrt_phi sqrt(w^T G w)``, ``b = G 1 / K``.

    Projected gradient descent (projection by :func:`project_simplex`) from the uniform
    weights with an adaptive step ``s``. A candidate ``w' = P(w - s grad(w))`` is accepted
    when ``(grad(w') - grad(w)) . dw <= ||dw||^2 / (2 s)``, which for a convex objective
    implies the usual sufficient decrease ``F(w') <= F(w) + grad(w) . dw + ||dw||^2 / (2 s)``
    but, unlike comparing objective values, is not swamped by float32 round-off near the
    minimum. Accepted: ``s`` doubles; rejected: ``s`` halves. Stops when an accepted step
    moves the weights less than ``tol`` (max-abs) or after ``max_iter`` iterations; typical
    problems (K <= 16) need 5 to 100 iterations. Returns the weights and the iteration count.
    """
    k = gram.shape[0]
    b = gram.mean(axis=1)

    def objective_grad(w: chex.Array) -> chex.Array:
        gw = gram @ w
        return b + sqrt_phi * gw / jnp.sqrt(jnp.maximum(w @ gw, 0.0) + 1e-20)

    def cond(carry: tuple) -> chex.Array:
        i, _, _, _, change = carry
        return (i < max_iter) & (change > tol)

    def body(carry: tuple) -> tuple:
        i, w, grad, step, _ = carry
        cand = project_simplex(w - step * grad)
        grad_cand = objective_grad(cand)
        dw = cand - w
        ok = (grad_cand - grad) @ dw <= (dw @ dw) / (2.0 * step)
        w = jnp.where(ok, cand, w)
        grad = jnp.where(ok, grad_cand, grad)
        step = jnp.where(ok, 2.0 * step, 0.5 * step)
        change = jnp.where(ok, jnp.max(jnp.abs(dw)), jnp.inf)
        return i + 1, w, grad, step, change

    w0 = jnp.full((k,), 1.0 / k, gram.dtype)
    carry = (0, w0, objective_grad(w0), jnp.ones((), gram.dtype), jnp.asarray(jnp.inf, gram.dtype))
    i, w, *_ = jax.lax.while_loop(cond, body, carry)
    return w, i


def cagrad(*, c: float = 0.4, rescale: int = 1, max_iter: int = 500, tol: float = 1e-7) -> Strategy:
    """CAGrad: Liu, Liu, Jin, Stone and Liu (2021), "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS.

    With the mean gradient ``g_0 = J^T 1 / K`` and ``phi = c^2 ||g_0||^2``, the dual of the
    paper's ``max_d min_i g_i . d`` s.t. ``||d - g_0|| <= sqrt(phi)`` is::

        w* = argmin_{w in simplex} g_w . g_0 + sqrt(phi) ||g_w||,   g_w = J^T w

    and the direction is ``d = g_0 + sqrt(phi) / ||g_w*|| g_w*``, i.e. weights
    ``1 / K + sqrt(phi) / ||g_w*|| w*``, then divided by the rescale factor. All terms are
    Gramian entries (``g_w . g_0 = w^T G 1 / K``), so ``from_gram`` is exact.

    Args:
      c: the radius factor, ``>= 0``. Default 0.4 (the paper's choice for the multi-task
        supervised benchmarks; ``c = 0`` gives the mean gradient).
      rescale: ``0`` no rescaling (the paper's Alg. 1, and TorchJD), ``1`` divide by
        ``1 + c^2``, ``2`` divide by ``1 + c`` (the options of the authors' code). Default
        1: the authors' code uses it, LibMTL follows it, and it keeps the step size
        comparable to the mean gradient's as ``c`` grows (``||d|| <= (1 + c) ||g_0||``).
      max_iter, tol: of the dual solver, projected gradient descent on the simplex with an
        adaptive step (see ``_cagrad_dual``); it stops when an accepted step moves the
        weights less than ``tol`` (max-abs). The authors' code runs 20 SGD steps on a
        softmax parameterisation instead; this solver converges to the exact minimiser.

    Gramian normalisation: ``G`` is divided by its mean diagonal before solving (the weights
    are invariant to it; it makes ``tol`` relative). If ``||g_w*||`` is below ``1e-6`` of the
    root-mean-square task-gradient norm the correction is undefined and the mean gradient
    (times the rescale factor) is returned.
    ``info``: ``weights`` and ``solver_iterations``.
    """
    c = check_number("c", c, low=0.0)
    check_choice("rescale", rescale, (0, 1, 2))
    max_iter = check_int("max_iter", max_iter, low=1)
    tol = check_number("tol", tol, low=0.0, high=1.0)
    factor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]

    def weights_fn(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        k = gram.shape[0]
        gram = _normalise(gram)
        sqrt_phi = c * jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0))  # c ||g_0||
        w, iters = _cagrad_dual(gram, sqrt_phi, max_iter=max_iter, tol=tol)
        gw_norm = jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0))
        lam = jnp.where(gw_norm > _REL_EPS, sqrt_phi / jnp.maximum(gw_norm, _REL_EPS), 0.0)
        weights = (1.0 / k + lam * w) / factor
        return weights, state, {"weights": weights, "solver_iterations": iters}

    return gram_strategy("cagrad", stateless_init, weights_fn)


# ----------------------------------------------------------------------------------------
# IMTL-G.


def imtl_g() -> Strategy:
    """IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang (2021), "Towards Impartial
    Multi-task Learning", ICLR (the gradient part of IMTL).

    The direction ``g = sum_i a_i g_i`` with ``sum_i a_i = 1`` whose projections onto every
    unit task gradient ``u_i = g_i / ||g_i||`` are equal, ``g . u_i = g . u_j``. The paper's
    closed form is ``a_{2:K} = g_1 U^T (D U^T)^{-1}``, ``a_1 = 1 - sum a_{2:K}``, with rows
    ``D_k = g_1 - g_k`` and ``U_k = u_1 - u_k``. In Gramian terms the condition reads
    ``G a = t n`` for the norms ``n_i = sqrt(G_ii)``, so ``a = G^+ n / (1^T G^+ n)`` (the same
    solution when ``G`` is invertible, and defined with the pseudo-inverse when it is not,
    as in TorchJD's generalisation). No hyper-parameters.

    Conventions: ``G`` is normalised by its mean diagonal (no effect on the weights); when
    ``|1^T G^+ n|`` is below ``1e-6`` the weights are 0. ``info["weights"]``: ``a``.
    """

    def weights_fn(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        gram = _normalise(gram)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        v = jnp.linalg.pinv(gram, hermitian=True) @ norms
        total = v.sum()
        ok = jnp.abs(total) > _REL_EPS
        weights = jnp.where(ok, v / jnp.where(ok, total, 1.0), 0.0)
        return weights, state, {"weights": weights}

    return gram_strategy("imtl_g", stateless_init, weights_fn)


# ----------------------------------------------------------------------------------------
# Aligned-MTL.


def _balance_transform(gram: chex.Array, scale: str) -> chex.Array:
    """Aligned-MTL's ``B: [K, K]`` (symmetric) with ``B J`` having all non-zero singular
    values equal to the chosen scale."""
    k = gram.shape[0]
    lam, vecs = jnp.linalg.eigh(gram)  # ascending
    tol = jnp.max(lam) * k * jnp.finfo(gram.dtype).eps
    nonzero = lam > tol
    rank = jnp.sum(nonzero)
    inv_sqrt = jnp.where(nonzero, 1.0 / jnp.sqrt(jnp.where(nonzero, lam, 1.0)), 0.0)
    # The non-zero eigenvalues are lam[k - rank:], in ascending order.
    first = k - rank
    if scale == "min":
        target = lam[jnp.minimum(first, k - 1)]
    elif scale == "median":
        lo = lam[jnp.minimum(first + (rank - 1) // 2, k - 1)]
        hi = lam[jnp.minimum(first + rank // 2, k - 1)]
        target = 0.5 * (jnp.sqrt(lo) + jnp.sqrt(hi))
        target = target * target
    else:  # rmse
        target = _safe_div(jnp.sum(jnp.where(nonzero, lam, 0.0)), rank.astype(lam.dtype))
    balance = jnp.sqrt(jnp.maximum(target, 0.0)) * (vecs * inv_sqrt) @ vecs.T
    return jnp.where(rank > 0, balance, jnp.eye(k, dtype=gram.dtype))


def aligned_mtl(*, scale: str = "min", reduction: str = "sum") -> Strategy:
    """Aligned-MTL: Senushkin, Patakin, Kuznetsov and Konushin (2023), "Independent Component
    Alignment for Multi-Task Learning", CVPR.

    Aligns the task gradients so the aligned matrix has condition number 1: with the
    eigendecomposition ``G = V diag(lambda) V^T`` (``lambda_i = sigma_i^2``, restricted to the
    non-zero eigenvalues), ``B = sigma V diag(lambda)^{-1/2} V^T`` and ``J_hat = B J``, whose
    non-zero singular values all equal ``sigma`` (``J_hat J_hat^T = sigma^2 V V^T``). The
    direction is ``J_hat^T w`` for task weights ``w``, i.e. weights ``B w``.

    Args:
      scale: ``sigma``: ``"min"`` (default; the paper's Alg. 1, the smallest non-zero
        singular value), ``"median"`` (median singular value) or ``"rmse"`` (root mean
        square of the non-zero singular values), the options of the authors' code.
      reduction: ``w = 1`` (``"sum"``, default, the authors' code) or ``w = 1 / K``
        (``"mean"``, TorchJD's default).

    Eigenvalues below ``max(lambda) K eps`` are treated as zero (numerical rank). The
    weights are invariant to scaling ``G`` up to that threshold. ``info["weights"]``: ``B w``.
    """
    check_choice("scale", scale, ("min", "median", "rmse"))
    check_choice("reduction", reduction, ("sum", "mean"))

    def weights_fn(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        k = gram.shape[0]
        gram = _normalise(gram)
        pref = jnp.full((k,), 1.0 if reduction == "sum" else 1.0 / k, gram.dtype)
        weights = _balance_transform(gram, scale) @ pref
        return weights, state, {"weights": weights}

    return gram_strategy("aligned_mtl", stateless_init, weights_fn)


# ----------------------------------------------------------------------------------------
# ConFIG.


def config() -> Strategy:
    """ConFIG: Liu, Chu and Thuerey (2025), "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR.

    With unit gradients ``u_i = g_i / ||g_i||`` stacked in ``U: [K, D]``, the conflict-free
    unit direction ``g_u = U^+ 1 / ||U^+ 1||`` has equal positive cosine to every ``g_i`` (when
    the gradients are linearly independent), and the direction is
    ``(sum_i g_i . g_u) g_u`` (the paper's Eq. 2, with equal weights on the targets).

    Gramian form: with ``C = N^{-1} G N^{-1}`` the cosine matrix (``N = diag(||g_i||)``),
    ``U^+ 1 = J^T N^{-1} C^+ 1``; writing ``beta = N^{-1} C^+ 1``, the weights are
    ``(1^T G beta) beta / (beta^T G beta)``. Zero gradients get a zero unit vector; if
    ``U^+ 1 = 0`` the direction is 0. No hyper-parameters. ``info["weights"]``: the weights.
    """

    def weights_fn(
        state: tuple[()], losses: chex.Array, gram: chex.Array, key: chex.PRNGKey | None
    ) -> tuple[chex.Array, tuple[()], Info]:
        del losses, key
        gram = _normalise(gram)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        inv_norms = _safe_div(1.0, norms)
        cosines = inv_norms[:, None] * gram * inv_norms[None, :]
        beta = inv_norms * (jnp.linalg.pinv(cosines, hermitian=True) @ jnp.ones_like(norms))
        gb = gram @ beta
        sq_norm = beta @ gb  # ||U^+ 1||^2
        ok = sq_norm > _REL_EPS * _REL_EPS
        weights = jnp.where(ok, gb.sum() * beta / jnp.where(ok, sq_norm, 1.0), 0.0)
        return weights, state, {"weights": weights}

    return gram_strategy("config", stateless_init, weights_fn)


FACTORIES: dict[str, Callable[..., Strategy]] = {
    "pcgrad": pcgrad,
    "gradvac": gradvac,
    "graddrop": graddrop,
    "cagrad": cagrad,
    "imtl_g": imtl_g,
    "aligned_mtl": aligned_mtl,
    "config": config,
}
