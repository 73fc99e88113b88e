"""Methods as published: each checked against an independent reference.

* MGDA's min-norm point against an exact float64 QP solve (quadprog: Goldfarb & Idnani's dual
  active-set method), on random Jacobians.
* Nash-MTL's default step against a numpy re-derivation of the authors' solution
  (AvivNavon/nash-mtl ``NashMTL``): ``G alpha = 1 / alpha`` on the raw Gramian (Navon et al.
  2022, Eq. 4 / Thm. 5.1), then the shared gradient clipped to ``max_norm``.
* GradDrop refuses the ``representation`` mode (the paper's batch-summed form is not what
  that mode provides).
* DB-MTL and ExcessMTL train the heads as their reference (LibMTL ``DB_MTL``: gradient of
  ``log L_k``; ``ExcessMTL``: of ``w_k L_k``).
* FAMO keeps its state when a loss before or after the step is not finite.
* One Gramian at full precision for every mode; the weighting package never imports the
  layers above it.
"""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtlrnn
from mtlrnn.config import ConfigError
from mtlrnn.config import apply_overrides
from mtlrnn.config import from_dict
from mtlrnn.config import resolve_tasks
from mtlrnn.data.batching import train_batches
from mtlrnn.training import gradients
from mtlrnn.training import step as train
from mtlrnn.training.losses import task_losses
from mtlrnn.training.run import load_suite
from mtlrnn.training.step import build_model
from mtlrnn.training.step import build_strategy
from mtlrnn.training.step import create_train_state
from mtlrnn.training.step import make_train_step
from mtlrnn.training.step import split_params
from mtlrnn.weighting import base
from mtlrnn.weighting import dual
from mtlrnn.weighting import loss_based
from mtlrnn.weighting import registry

# ----------------------------------------------------------------------------- MGDA (exact)


def _jacobian(k, d, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(k, d)) * rng.uniform(0.1, 3.0, size=(k, 1))).astype(np.float32)


def _qp_min_norm(matrix):
    """``argmin_{w in simplex} ||w @ J||^2`` by quadprog in float64 (the reference)."""
    quadprog = pytest.importorskip("quadprog")
    j = np.asarray(matrix, np.float64)
    k = j.shape[0]
    gram = j @ j.T
    gram = gram / np.max(np.diag(gram)) + 1e-12 * np.eye(k)  # quadprog needs G > 0
    constraints = np.concatenate([np.ones((k, 1)), np.eye(k)], axis=1)  # sum = 1, w >= 0
    bounds = np.concatenate([[1.0], np.zeros(k)])
    weights = quadprog.solve_qp(gram, np.zeros(k), constraints, bounds, meq=1)[0]
    return weights, weights @ j


MGDA = dual.mgda()
MGDA_COMBINE = jax.jit(MGDA.combine)
MGDA_FROM_GRAM = jax.jit(MGDA.from_gram)


@pytest.mark.parametrize("k", range(2, 11))
def test_mgda_direction_is_the_exact_min_norm_point(k):
    # Frank-Wolfe (the previous default) was off by up to 2% (K = 3) to 13% (K = 10) here.
    pytest.importorskip("quadprog")
    for seed in range(6):
        matrix = _jacobian(k, 20, seed)
        direction, _, info = MGDA_COMBINE((), jnp.ones(k), jnp.asarray(matrix))
        want_w, want = _qp_min_norm(matrix)
        err = np.linalg.norm(np.asarray(direction, np.float64) - want) / np.linalg.norm(want)
        assert err <= 1e-5, (k, seed, err)
        np.testing.assert_allclose(info["weights"], want_w, atol=1e-5)
        # The Gramian-only mode: the same weights from the trainer's Gramian.
        weights, _, _ = MGDA_FROM_GRAM((), jnp.ones(k), gradients.gramian(jnp.asarray(matrix)))
        np.testing.assert_allclose(weights, info["weights"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [3, 5])
def test_mgda_ub_and_normalised_mgda_share_the_exact_solver(k):
    pytest.importorskip("quadprog")
    matrix = _jacobian(k, 12, 100 + k)
    direction, _, _ = jax.jit(dual.mgda_ub().combine)((), jnp.ones(k), jnp.asarray(matrix))
    _, want = _qp_min_norm(matrix)
    assert np.linalg.norm(np.asarray(direction) - want) <= 1e-5 * np.linalg.norm(want)
    # normalize="l2": min-norm point of the unit gradients, weights applied to the raw ones.
    units = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    want_w, _ = _qp_min_norm(units)
    _, _, info = dual.mgda(normalize="l2").combine((), jnp.ones(k), jnp.asarray(matrix))
    np.testing.assert_allclose(info["weights"], want_w, atol=1e-5)


def test_mgda_degenerate_hulls():
    # More tasks than dimensions: compare with the QP; with g and -g among the tasks the
    # origin is in the hull and the min-norm point is 0.
    pytest.importorskip("quadprog")
    matrix = _jacobian(8, 3, 7)
    direction, _, info = MGDA_COMBINE((), jnp.ones(8), jnp.asarray(matrix))
    _, want = _qp_min_norm(matrix)
    largest = np.max(np.linalg.norm(matrix, axis=1))
    assert np.linalg.norm(np.asarray(direction) - want) <= 1e-5 * largest
    assert float(jnp.min(info["weights"])) >= 0 and abs(float(jnp.sum(info["weights"])) - 1) < 1e-5
    opposed = np.concatenate([matrix[:5], -matrix[1:2]])
    direction, _, _ = MGDA_COMBINE((), jnp.ones(6), jnp.asarray(opposed))
    assert float(jnp.linalg.norm(direction)) <= 1e-5 * largest
    # A zero gradient is the min-norm point; a duplicated task changes nothing.
    zero = jnp.asarray(_jacobian(4, 6, 8)).at[2].set(0.0)
    direction, _, info = MGDA_COMBINE((), jnp.ones(4), zero)
    np.testing.assert_allclose(direction, 0.0, atol=1e-7)
    base3 = _jacobian(3, 6, 9)
    dup = jnp.asarray(np.concatenate([base3, base3[:1]]))
    d_dup, _, _ = MGDA_COMBINE((), jnp.ones(4), dup)
    d_ref, _, _ = MGDA_COMBINE((), jnp.ones(3), jnp.asarray(base3))
    np.testing.assert_allclose(d_dup, d_ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- Nash-MTL


def _nash_reference(matrix, max_norm):
    """The authors' step, re-derived in float64: ``alpha > 0`` with ``G alpha = 1 / alpha``
    on the raw Gramian (their constraint ``alpha_k (G alpha)_k >= 1`` at the fixed point of
    their sequential convex approximation), direction ``alpha @ J`` clipped to ``max_norm``
    (``clip_grad_norm_`` on the shared parameters)."""
    j = np.asarray(matrix, np.float64)
    gram = j @ j.T
    alpha = 1.0 / np.sqrt(np.diag(gram))
    for _ in range(100):  # Newton on G a - 1/a = 0 (Jacobian G + diag(1/a^2)), kept positive
        step = np.linalg.solve(gram + np.diag(alpha**-2), gram @ alpha - 1.0 / alpha)
        t = 1.0
        while np.any(alpha - t * step <= 0):
            t /= 2
        alpha = alpha - t * step
    np.testing.assert_allclose(gram @ alpha * alpha, 1.0, rtol=1e-9)
    direction = alpha @ j
    norm = np.linalg.norm(direction)
    if max_norm > 0 and norm > max_norm:
        direction = direction * max_norm / norm
    return direction, norm


@pytest.mark.parametrize("k, grad_scale", [(2, 1e-2), (3, 1e-2), (4, 0.1), (3, 10.0)])
def test_nash_mtl_default_is_the_reference_unit_step(k, grad_scale):
    matrix = _jacobian(k, 8, 40 + k) * grad_scale
    strategy = dual.nash_mtl()
    direction, _, info = jax.jit(strategy.combine)(
        strategy.init(k), jnp.ones(k), jnp.asarray(matrix)
    )
    want, want_norm = _nash_reference(matrix, max_norm=1.0)
    np.testing.assert_allclose(float(info["direction_norm"]), want_norm, rtol=1e-4)
    np.testing.assert_allclose(want_norm, np.sqrt(k), rtol=1e-6)  # ||alpha @ J||^2 = K
    # (1e-4: the 1e-6 ridge of the solver; the authors' loop stops at ||G a - 1/a|| < 1e-3.)
    assert np.linalg.norm(np.asarray(direction) - want) <= 1e-4 * np.linalg.norm(want)
    np.testing.assert_allclose(float(jnp.linalg.norm(direction)), 1.0, rtol=1e-5)
    # Without clipping the bargaining direction itself (norm sqrt(K)).
    free = dual.nash_mtl(max_norm=0.0)
    direction, _, _ = free.combine(free.init(k), jnp.ones(k), jnp.asarray(matrix))
    want, _ = _nash_reference(matrix, max_norm=0.0)
    assert np.linalg.norm(np.asarray(direction) - want) <= 1e-4 * np.linalg.norm(want)


def test_nash_mtl_frobenius_scale_keeps_the_earlier_step():
    # scale="frobenius": alpha solved on G / ||G||_F and used as is, so the step is
    # min(max_norm, sqrt(K ||G||_F)): 0.1-ish here, where the reference takes a unit step.
    k = 3
    matrix = jnp.asarray(_jacobian(k, 8, 43) * 1e-2)
    strategy = dual.nash_mtl(scale="frobenius")
    direction, _, info = strategy.combine(strategy.init(k), jnp.ones(k), matrix)
    frob = float(jnp.linalg.norm(base.gramian(matrix)))
    expected = min(1.0, np.sqrt(k * frob))
    assert expected < 0.5
    np.testing.assert_allclose(float(jnp.linalg.norm(direction)), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="^scale: must be one of raw, frobenius, got 'l2'"):
        registry.get("nash_mtl", scale="l2")


# ----------------------------------------------------------------------------- GradDrop


def test_graddrop_refuses_the_representation_mode():
    assert registry.get("graddrop").modes == ("full",)
    with pytest.raises(ConfigError, match="weighting.mode: .*'graddrop'.*allowed: full"):
        from_dict({"weighting": {"name": "graddrop", "mode": "representation"}})
    assert from_dict({"weighting": {"name": "graddrop", "mode": "full"}}).weighting.mode == "full"


# ----------------------------------------------------------------------------- heads


def test_db_mtl_and_excess_mtl_head_weights():
    k, d = 3, 10
    losses = jnp.asarray([0.5, 2.0, 4.0])
    grads = jnp.asarray(_jacobian(k, d, 50))
    db = dual.db_mtl()
    _, _, info = db.combine(db.init(k, dim=d), losses, grads)
    np.testing.assert_allclose(info["head_weights"], 1.0 / (np.asarray(losses) + 1e-8), rtol=1e-6)
    excess = dual.excess_mtl()
    state = excess.init(k, dim=d)
    for seed in range(3):
        _, state, info = excess.combine(state, losses, jnp.asarray(_jacobian(k, d, 51 + seed)))
    np.testing.assert_array_equal(info["head_weights"], info["weights"])
    assert float(jnp.max(jnp.abs(info["weights"] - 1.0))) > 1e-4  # past the warm-up


def test_head_grads_weights_each_task_on_its_own_head():
    jac = {"a": jnp.arange(6.0).reshape(3, 2), "b": jnp.ones((3, 2, 2))}
    np.testing.assert_allclose(train.head_grads(jac, {})["a"], [6.0, 9.0])
    weighted = train.head_grads(jac, {"head_weights": jnp.asarray([1.0, 0.0, 2.0])})
    np.testing.assert_allclose(weighted["a"], [0.0 + 8.0, 1.0 + 10.0])
    np.testing.assert_allclose(weighted["b"], 3.0)


def test_db_mtl_train_step_gives_heads_the_log_loss_gradient(tiny_config):
    # LibMTL DB_MTL back-propagates log(L_k + 1e-8) through the whole network and replaces
    # only the shared gradient, so the heads get the gradient of sum_k log(L_k + 1e-8).
    cfg = apply_overrides(
        tiny_config, ["weighting.name=db_mtl", "weighting.mode=full", "model.dropout=0.0"]
    )
    suite = load_suite(cfg)
    tasks = resolve_tasks(cfg.tasks, suite.tasks)
    model = build_model(cfg.model, tasks, vocab_size=suite.vocab_size)
    strategy = build_strategy(cfg.weighting, tasks)
    optimizer = optax.sgd(1.0)  # update = -gradient
    stream = train_batches(suite.splits["train"], tasks, batch_size=8, buckets=(16,), seed=0)
    batch = jax.device_put(next(stream))
    state = create_train_state(model, optimizer, strategy, batch, seed=0)
    new_state, _ = jax.jit(make_train_step(model, optimizer, strategy, grad_mode="full"))(
        state, batch
    )

    def log_losses(params):
        out = model.apply({"params": params}, batch["inputs"], batch["lengths"])
        return jnp.sum(jnp.log(task_losses(tasks, out, batch) + 1e-8))

    _, want = split_params(model, jax.jit(jax.grad(log_losses))(state.params))
    _, before = split_params(model, state.params)
    _, after = split_params(model, new_state.params)
    got = jax.tree.map(lambda b, a: b - a, before, after)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6), got, want)


# ----------------------------------------------------------------------------- FAMO


def test_famo_keeps_its_state_when_a_loss_is_not_finite():
    famo = loss_based.famo()
    state = famo.init(3)
    before = jnp.asarray([1.0, 2.0, 3.0])
    state = famo.after_update(state, before, jnp.asarray([0.9, 1.5, 2.9]))
    after_update = jax.jit(famo.after_update)
    for bad in (jnp.nan, jnp.inf):
        kept = after_update(state, before, jnp.asarray([0.9, bad, 2.9]))
        jax.tree.map(np.testing.assert_array_equal, kept, state)
        kept = after_update(state, jnp.asarray([bad, 2.0, 3.0]), before)
        jax.tree.map(np.testing.assert_array_equal, kept, state)
    weights, _, _ = famo.combine(kept, before)
    assert bool(jnp.all(jnp.isfinite(weights)))
    moved = after_update(state, before, jnp.asarray([0.5, 1.9, 2.0]))
    assert not np.array_equal(moved.logits, state.logits)


# ----------------------------------------------------------------------------- plumbing


def _dot_precisions(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    return [e.params["precision"] for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_one_gramian_at_highest_precision_symmetrised():
    assert gradients.gramian is base.gramian
    tree = {"w": jnp.asarray(_jacobian(3, 6, 60)).reshape(3, 2, 3), "b": jnp.ones((3, 4))}
    precisions = _dot_precisions(base.gramian, tree)
    assert precisions and all(
        p == (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST) for p in precisions
    )
    gram = base.gramian(tree)
    np.testing.assert_array_equal(gram, gram.T)
    flat = np.concatenate([np.asarray(x, np.float64).reshape(3, -1) for x in tree.values()], 1)
    np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-6)
    assert base.gramian(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.float32


@pytest.mark.parametrize("name", ["upgrad", "pcgrad", "mgda"])
def test_full_and_gramian_paths_use_the_same_gramian(name):
    # Both the strategy's combine (full mode) and the trainer's gramian mode go through
    # base.gramian, so the weights agree exactly whatever the backend's matmul defaults.
    strategy = registry.get(name)
    matrix = jnp.asarray(_jacobian(4, 9, 61))
    key = jax.random.key(0)
    _, _, info = strategy.combine(strategy.init(4), jnp.ones(4), matrix, key=key)
    weights, _, _ = strategy.from_gram(
        strategy.init(4), jnp.ones(4), gradients.gramian(matrix), key
    )
    np.testing.assert_array_equal(weights, info["weights"])


def test_weighting_does_not_import_upper_layers():
    package = pathlib.Path(mtlrnn.__file__).parent / "weighting"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("mtlrnn") and not name.startswith("mtlrnn.weighting"):
                    raise AssertionError(f"{path.name} imports {name}")


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        # One set of validators: the same wording in every module of the package.
        ("cagrad", {"c": -1.0}, "c: must be a number >= 0, got -1.0"),
        ("moco", {"beta": 1.5}, r"beta: must be a number in \[0, 1\], got 1.5"),
        ("mgda", {"solver": "cvxpy"}, "solver: must be one of active_set, frank_wolfe, "),
        ("fairgrad", {"alpha": 0}, "alpha: must be a number > 0, got 0"),
        ("uw", {"lr": 0.0}, "lr: must be a number > 0, got 0.0"),
        ("gradvac", {"reduction": True}, "reduction: must be one of sum, mean, got True"),
    ],
)
def test_one_set_of_validators(name, hparams, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        registry.get(name, **hparams)
