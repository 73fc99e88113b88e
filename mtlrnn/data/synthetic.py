"""A synthetic multi-task sequence suite with known Bayes-optimal scores, generated from a seed.

Generative process
------------------
A hidden Markov chain over ``S = num_states`` states emits one token per step.

- **Hidden path** ``z_1..z_L``: ``z_1`` is uniform over the ``S`` states; afterwards the chain
  stays in its state with probability ``stickiness`` and otherwise jumps to another state drawn
  from a random (Dirichlet) row of the transition matrix. Lengths ``L`` are uniform in
  ``[min_len, max_len]``.
- **Tokens** ``x_t``: every token id in ``[1, vocab_size)`` is *owned* by ``token_ambiguity``
  distinct states (ownership is balanced, so every state owns about the same number of
  tokens). State ``s`` emits one of its own tokens (random Dirichlet frequencies) with
  probability ``1 - emission_noise`` and a uniformly random token otherwise. With
  ``token_ambiguity >= 2`` a single token cannot tell its owners apart; the neighbouring
  tokens can (the chain is sticky), so a tagger that reads context beats a unigram tagger, and
  one that also reads the future (a BiRNN) beats one that reads only the past.

Every state has a position on a **shared ordering** (one random key per state) and, for every
token task, on a **private ordering** (an independent random key per state and task). Task
``k`` orders the states by ``relatedness * shared_key + (1 - relatedness) * private_key_k``
and cuts that order into ``C_k`` contiguous, equally sized groups: its tag map ``g_k``. So at
``relatedness = 1`` all tasks read the same latent factor (the position on the shared ordering,
at their own resolution, so the tags of one task nearly determine those of another), and at
``relatedness = 0`` each task reads its own private factor (their tags are related only
through the common hidden path). In between the orderings are correlated. With equal class
counts, ``relatedness = 1`` gives identical clean tags. Because every task reads the same
hidden state, a task with ``token_classes[k] >= num_states`` sees the whole state and stays
informative about every other task whatever ``relatedness`` is; the knob bites when class
counts are well below ``num_states``. With few states the private orderings are few random
draws, so the effect of intermediate values varies between seeds.

Tasks (names as in the suite's ``tasks``):

- ``tag0 .. tag{K-1}`` (token classification, ``token_classes[k % len]`` classes): the tag of
  step ``t`` is ``g_k(z_t)``. What it measures: inferring the hidden state from ambiguous tokens
  in context. With ``token_classes[k] >= num_states`` some classes are never the true tag
  (they occur only as label noise).
- ``conflict`` (token classification, ``token_classes[0]`` classes, only with
  ``conflict=True``): the tag of step ``t`` is ``h(z_{t-lag})`` with ``lag = conflict_lag``
  (step 1 stands in for steps before it), where ``h(s) = rank_0(s) mod C_0`` and ``rank_0`` is
  ``s``'s position in ``tag0``'s ordering. ``tag0`` is the *quotient* of that ordering
  (contiguous blocks) and ``conflict`` the *remainder*: states that ``tag0`` groups together
  get different conflict tags, and each conflict tag collects states from different ``tag0``
  groups (rows and columns of a grid). The two tasks ask the shared trunk to cluster the same
  tokens in incompatible ways, and to read the state at different times, so a trunk of
  limited width must trade one against the other (their gradients on the shared parameters
  disagree). The conflict is strongest when ``token_classes[0]`` is well below ``num_states``;
  with ``token_classes[0] >= num_states`` both maps are one-to-one and only the lag remains.
- ``seq_class`` (sequence classification, ``sequence_classes`` classes): how many times the
  hidden path crosses between the *low* and *high* halves of the shared ordering, capped at
  ``sequence_classes - 1``. What it measures: counting regime changes over the whole sequence.
- ``seq_value`` (sequence regression, dim 1): ``loss_scale * (fraction of steps whose state is
  in the high half + value_noise * N(0, 1))``. What it measures: occupancy of a latent regime.
  ``loss_scale`` multiplies both the targets and the natural scale of this task's MSE
  (by ``loss_scale ** 2``), to create loss-scale imbalance between tasks.

Classification labels (token and sequence) are replaced with probability ``label_noise`` by a
class drawn uniformly at random (possibly the true one); ``task_label_noise`` sets that
probability per task (one noisy task among clean ones). ``label_fraction`` labels a task on a
random fraction of the *training* sequences only (the others carry a zero mask for it, so
they add nothing to its loss); dev and test stay fully labelled.

Bayes-optimal scores (``Suite.bayes[split][task][metric]``), computed exactly from the known
process against the split's real (noisy) labels:

- token tasks: forward-backward gives ``p(z_t | x_{1:L})``; the prediction is
  ``argmax_c sum_s p(z_t = s | x) p(tag = c | s)`` (label noise does not move the argmax). Its
  accuracy is micro-averaged over all tokens of the split; ``macro_f1`` is that same
  predictor's F1 averaged over the classes that occur in the labels or the predictions.
- ``seq_class``: a forward pass over the hidden state augmented with the capped crossing count
  gives the exact posterior over the class; the prediction is its argmax.
- ``seq_value``: the posterior mean (exact by linearity from the marginals) is MSE-optimal and
  its ``mse`` is reported; ``mae`` is the MAE *of that MSE-optimal predictor* (the MAE-optimal
  posterior median is not computed).

Random streams are separate per component (process parameters, each split's paths, each
task's label noise), keyed by ``seed``: switching a task on or off, or changing the size of
one split, leaves every other array unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlrnn.data.dataset import SequenceDataset
from mtlrnn.options import option
from mtlrnn.tasks import TaskSpec
from mtlrnn.tasks import check_unique

_field = option

SPLITS: tuple[str, ...] = ("train", "dev", "test")

# Stream ids for np.random.default_rng([seed, *ids]); fixed so arrays never shift.
_PARAMS, _SHARED_KEY, _TOKEN_TASK = 0, 1, 100
_SPLIT_IDS = {"train": 1, "dev": 2, "test": 3}
_PATHS, _NOISE_CONFLICT, _NOISE_SEQ_CLASS, _NOISE_SEQ_VALUE = 0, 1, 2, 3
_LABELLED = 1  # sub-stream of a task's noise stream: which training sequences are labelled




@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic suite (see the module docstring for the generative process)."""

    num_token_tasks: int = _field(3, "token classification tasks tag0..tag{K-1}", min=0, max=64)
    token_classes: tuple[int, ...] = _field(
        (4, 6, 8), "class count of token task k is token_classes[k % len]", min=2, max=1024
    )
    sequence_classification: bool = _field(True, "add the seq_class task")
    sequence_classes: int = _field(4, "classes of seq_class (crossing count cap + 1)", min=2,
                                   max=1024)
    sequence_regression: bool = _field(True, "add the seq_value task")
    num_states: int = _field(16, "hidden states of the Markov chain", min=2, max=1024)
    vocab_size: int = _field(200, "token ids are 1..vocab_size-1; 0 is padding", min=3,
                             max=1_000_000)
    relatedness: float = _field(
        0.5, "1: all tasks read one shared latent factor; 0: each its own", min=0.0, max=1.0
    )
    label_noise: float = _field(
        0.05, "probability a class label is replaced by a random class", min=0.0, lt=1.0
    )
    loss_scale: float = _field(1.0, "seq_value targets are multiplied by this", gt=0.0)
    conflict: bool = _field(False, "add a token task 'conflict' that competes with tag0")
    min_len: int = _field(8, "shortest sequence", min=1, max=100_000)
    max_len: int = _field(40, "longest sequence (>= min_len)", min=1, max=100_000)
    num_train: int = _field(4000, "training sequences", min=1)
    num_dev: int = _field(500, "development sequences", min=1)
    num_test: int = _field(500, "test sequences", min=1)
    seed: int = _field(0, "seed of every random draw", min=0)
    stickiness: float = _field(
        0.8, "probability that the hidden state stays the same", min=0.0, lt=1.0
    )
    token_ambiguity: int = _field(
        2, "hidden states sharing each token id (<= num_states)", min=1, max=1024
    )
    emission_noise: float = _field(
        0.1, "probability a state emits a uniformly random token", min=0.0, max=1.0
    )
    value_noise: float = _field(0.05, "std of the noise added to seq_value (before scaling)",
                                min=0.0)
    conflict_lag: int = _field(1, "the conflict tag at step t reads the state at t - lag", min=0,
                               max=100_000)
    task_label_noise: dict[str, float] = _field(
        {}, "task name -> label noise of that task in [0, 1), instead of label_noise "
        "(classification tasks), e.g. {tag2: 0.8}"
    )
    label_fraction: dict[str, float] = _field(
        {}, "task name -> fraction in (0, 1] of the training sequences labelled for that task "
        "(the rest masked out; dev and test fully labelled), e.g. {tag1: 0.1}"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_classes", tuple(self.token_classes))
        for f in dataclasses.fields(self):
            _check_bounds(f, getattr(self, f.name))
        if not self.token_classes:
            raise ValueError("token_classes: needs at least one class count (each >= 2), got []")
        if self.max_len < self.min_len:
            raise ValueError(
                f"max_len: must be >= min_len ({self.min_len}), got {self.max_len}"
            )
        if self.token_ambiguity > self.num_states:
            raise ValueError(
                f"token_ambiguity: must be <= num_states ({self.num_states}), "
                f"got {self.token_ambiguity}"
            )
        if self.vocab_size - 1 < self.num_states:
            raise ValueError(
                f"vocab_size: must be > num_states ({self.num_states}) so every hidden state "
                f"owns a token, got {self.vocab_size}"
            )
        if self.conflict and self.num_token_tasks < 1:
            raise ValueError(
                "conflict: needs num_token_tasks >= 1 (it conflicts with tag0), got "
                "conflict=True with num_token_tasks=0"
            )
        if not (self.num_token_tasks or self.sequence_classification
                or self.sequence_regression):
            raise ValueError(
                "num_token_tasks: at least one task is needed; set num_token_tasks >= 1 or "
                "enable sequence_classification / sequence_regression, got 0 and both off"
            )
        object.__setattr__(self, "task_label_noise", dict(self.task_label_noise))
        object.__setattr__(self, "label_fraction", dict(self.label_fraction))
        self._check_task_map("task_label_noise", lambda v: 0.0 <= v < 1.0, "in [0, 1)",
                             classification_only=True)
        self._check_task_map("label_fraction", lambda v: 0.0 < v <= 1.0, "in (0, 1]",
                             classification_only=False)

    def _check_task_map(self, key: str, ok: Any, allowed: str, *,
                        classification_only: bool) -> None:
        """A per-task knob names tasks of this suite and holds numbers in range."""
        specs = {t.name: t for t in suite_tasks(self)}
        for name, value in getattr(self, key).items():
            if name not in specs:
                raise ValueError(
                    f"{key}: unknown task {name!r}; this suite's tasks: {', '.join(specs)}"
                )
            if classification_only and specs[name].kind != "classification":
                raise ValueError(f"{key}: {name!r} is a regression task (no class labels)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"{key}.{name}: must be a number {allowed}, got {value!r}")

    def __hash__(self) -> int:
        # Frozen and hashable like every knob set; the per-task maps hash as sorted items.
        return hash(tuple(
            tuple(sorted(v.items())) if isinstance(v, dict) else v
            for v in (getattr(self, f.name) for f in dataclasses.fields(self))
        ))

    def noise_of(self, task: str) -> float:
        """The label noise probability of ``task``."""
        return float(self.task_label_noise.get(task, self.label_noise))


def _check_bounds(f: dataclasses.Field, value: object) -> None:
    """The loader's inclusive ``min``/``max`` and exclusive ``gt``/``lt`` bounds, so a config
    built in Python is held to the same ranges as one loaded from YAML."""
    meta = f.metadata
    if isinstance(value, bool) or not any(k in meta for k in ("min", "max", "gt", "lt")):
        return
    for v in value if isinstance(value, tuple) else (value,):
        ok = (
            ("min" not in meta or v >= meta["min"])
            and ("gt" not in meta or v > meta["gt"])
            and ("max" not in meta or v <= meta["max"])
            and ("lt" not in meta or v < meta["lt"])
        )
        if not ok:
            lo = f"[{meta['min']}" if "min" in meta else f"({meta['gt']}" if "gt" in meta else ""
            hi = f"{meta['max']}]" if "max" in meta else f"{meta['lt']})" if "lt" in meta else ""
            if lo and hi:
                allowed = f"in {lo}, {hi}"
            elif lo:
                allowed = (">= " if lo[0] == "[" else "> ") + lo[1:]
            else:
                allowed = ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
            raise ValueError(f"{f.name}: must be {allowed}, got {value}")


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticProcess:
    """The known generative process behind a suite (``S`` states, ``V`` vocabulary).

    Attributes:
      initial: float64 ``[S]``, distribution of the first hidden state.
      transition: float64 ``[S, S]``, ``transition[i, j] = p(z_{t+1} = j | z_t = i)``.
      emission: float64 ``[S, V]``, ``p(x_t = v | z_t = s)``; column 0 (padding) is zero.
      tag_maps: token task name -> int ``[S]``, the (noise-free) tag of each hidden state.
      tag_lags: token task name -> lag: the tag at step t reads ``z_{max(t - lag, 0)}``.
      high: bool ``[S]``, the high half of the shared ordering (read by the sequence tasks).
      label_noise: probability a class label is replaced by a uniformly random class.
    """

    initial: np.ndarray
    transition: np.ndarray
    emission: np.ndarray
    tag_maps: dict[str, np.ndarray]
    tag_lags: dict[str, int]
    high: np.ndarray
    label_noise: float


@dataclasses.dataclass(frozen=True, eq=False)
class Suite:
    """A generated multi-task suite.

    Attributes:
      tasks: the task specs, token tasks first (``tag0``.., ``conflict``), then ``seq_class``,
        ``seq_value`` (those enabled).
      vocab_size: token ids are in ``[1, vocab_size)``; 0 is padding.
      splits: ``"train"``, ``"dev"``, ``"test"`` datasets.
      bayes: ``bayes[split][task][metric]``, the Bayes-optimal predictor's score on that split
        (see the module docstring for what is computed exactly).
      description: one paragraph for users.
      process: the generative process, for computing further references.
    """

    tasks: tuple[TaskSpec, ...]
    vocab_size: int
    splits: dict[str, SequenceDataset]
    bayes: dict[str, dict[str, dict[str, float]]]
    description: str
    process: SyntheticProcess | None = None


# ----------------------------------------------------------------------------------------------
# Inference on the known HMM.


def _emission_likelihoods(
    emission: np.ndarray, inputs: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step likelihoods ``[N, L, S]`` (1 at padded steps) and the valid mask ``[N, L]``."""
    inputs = np.asarray(inputs)
    valid = np.arange(inputs.shape[1])[None, :] < np.asarray(lengths)[:, None]
    e = emission.T[np.where(valid, inputs, 0)]
    e[~valid] = 1.0
    return e, valid


def posterior_marginals(
    initial: np.ndarray,
    transition: np.ndarray,
    emission: np.ndarray,
    inputs: np.ndarray,
    lengths: np.ndarray,
    *,
    causal: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior marginals of an HMM's hidden states by scaled forward-backward.

    Args:
      initial: ``[S]`` first-state distribution.
      transition: ``[S, S]`` row-stochastic transition matrix.
      emission: ``[S, V]`` emission probabilities.
      inputs: int ``[N, L]`` token ids, padded beyond each length (padding is ignored).
      lengths: int ``[N]`` valid steps per row, each in ``[1, L]``.
      causal: if True return the filtered marginals ``p(z_t | x_{1:t})`` (what a model that
        reads only the past can know) instead of the smoothed ``p(z_t | x_{1:L_n})``.

    Returns:
      ``(marginals, loglik)``: float64 ``[N, L, S]`` marginals (zero at padded steps) and
      float64 ``[N]`` ``log p(x_{1:L_n})``. Scaling keeps it stable for any length.
    """
    e, valid = _emission_likelihoods(emission, inputs, lengths)
    n, length, s = e.shape
    alpha = np.empty((n, length, s))
    scale = np.empty((n, length))
    a = initial[None, :] * e[:, 0]
    for t in range(length):
        if t:
            a = (a @ transition) * e[:, t]
        c = a.sum(axis=1)
        a = a / c[:, None]
        alpha[:, t], scale[:, t] = a, c
    # Padded steps have likelihood 1, so their scale is 1 up to rounding; mask it exactly.
    loglik = np.where(valid, np.log(scale), 0.0).sum(axis=1)
    if causal:
        return np.where(valid[..., None], alpha, 0.0), loglik
    gamma = np.empty_like(alpha)
    b = np.ones((n, s))
    gamma[:, -1] = alpha[:, -1]
    for t in range(length - 2, -1, -1):
        b = ((e[:, t + 1] * b) @ transition.T) / scale[:, t + 1, None]
        gamma[:, t] = alpha[:, t] * b
    gamma /= gamma.sum(axis=2, keepdims=True)
    return np.where(valid[..., None], gamma, 0.0), loglik


def crossing_count_posterior(
    initial: np.ndarray,
    transition: np.ndarray,
    emission: np.ndarray,
    high: np.ndarray,
    inputs: np.ndarray,
    lengths: np.ndarray,
    *,
    cap: int,
) -> np.ndarray:
    """Exact posterior of ``min(#crossings, cap)`` given the tokens, by an augmented forward pass.

    A crossing is a step ``t >= 2`` with ``high[z_t] != high[z_{t-1}]``. The forward pass runs
    over (hidden state, capped count) pairs, ``S * (cap + 1)`` of them.

    Args:
      initial, transition, emission: the HMM, as in :func:`posterior_marginals`.
      high: bool ``[S]``, the state subset whose boundary is counted.
      inputs: int ``[N, L]`` padded token ids; lengths: int ``[N]``.
      cap: counts above ``cap`` are merged into ``cap``.

    Returns:
      float64 ``[N, cap + 1]``, ``p(min(count, cap) = k | x)``.
    """
    e, valid = _emission_likelihoods(emission, inputs, lengths)
    cross = high[:, None] != high[None, :]
    same_t, cross_t = transition * ~cross, transition * cross
    # a[n, k, s] = p(count = k, z_t = s, x_{1:t}) up to a per-row scale; [N, K, S] so that the
    # transition is one batched matmul.
    a = np.zeros((e.shape[0], cap + 1, e.shape[2]))
    a[:, 0, :] = initial[None, :] * e[:, 0]
    a /= a.sum(axis=(1, 2), keepdims=True)
    for t in range(1, e.shape[1]):
        stay, moved = a @ same_t, a @ cross_t
        stay[:, 1:] += moved[:, :-1]
        stay[:, -1] += moved[:, -1]
        stay *= e[:, t, None, :]
        stay /= stay.sum(axis=(1, 2), keepdims=True)
        a = np.where(valid[:, t, None, None], stay, a)
    p = a.sum(axis=2)
    return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# The process and its samples.


def _rng(seed: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, *ids])


def _token_classes(cfg: SyntheticConfig, k: int) -> int:
    return cfg.token_classes[k % len(cfg.token_classes)]


def _ranks(key: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(key, kind="stable"), kind="stable")


def _make_process(cfg: SyntheticConfig) -> SyntheticProcess:
    s, v = cfg.num_states, cfg.vocab_size
    rng = _rng(cfg.seed, _PARAMS)
    # Sticky transitions: stay with prob `stickiness`, else jump along a random Dirichlet row.
    jumps = rng.dirichlet(np.ones(s - 1), size=s)
    transition = np.eye(s) * cfg.stickiness
    off = ~np.eye(s, dtype=bool)
    transition[off] = (1.0 - cfg.stickiness) * jumps.reshape(-1)
    initial = np.full(s, 1.0 / s)
    # Token ownership: the first owner cycles through a permutation (every state owns tokens),
    # the other owners are random distinct states.
    tokens = v - 1
    first = rng.permutation(s)[np.arange(tokens) % s]
    own = np.zeros((s, tokens), dtype=bool)
    own[first, np.arange(tokens)] = True
    for j in range(tokens):
        others = np.delete(np.arange(s), first[j])
        own[rng.choice(others, cfg.token_ambiguity - 1, replace=False), j] = True
    weights = rng.gamma(1.0, size=(s, tokens)) * own
    owned = weights / weights.sum(axis=1, keepdims=True)
    emission = np.zeros((s, v))
    emission[:, 1:] = (1.0 - cfg.emission_noise) * owned + cfg.emission_noise / tokens

    shared = _rng(cfg.seed, _SHARED_KEY).random(s)
    tag_maps, tag_lags = {}, {}
    rank0 = None
    for k in range(cfg.num_token_tasks):
        private = _rng(cfg.seed, _TOKEN_TASK + k).random(s)
        rank = _ranks(cfg.relatedness * shared + (1.0 - cfg.relatedness) * private)
        tag_maps[f"tag{k}"] = (rank * _token_classes(cfg, k)) // s
        tag_lags[f"tag{k}"] = 0
        rank0 = rank if k == 0 else rank0
    if cfg.conflict:
        tag_maps["conflict"] = rank0 % _token_classes(cfg, 0)
        tag_lags["conflict"] = cfg.conflict_lag
    high = _ranks(shared) >= s - s // 2
    return SyntheticProcess(initial, transition, emission, tag_maps, tag_lags, high,
                            cfg.label_noise)


def _sample_categorical(rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
    """One draw per row of ``cdf`` ``[N, C]`` (cumulative probabilities)."""
    u = rng.random(cdf.shape[0])
    return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)


def _sample_paths(
    cfg: SyntheticConfig, proc: SyntheticProcess, n: int, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths ``[n]``, hidden paths ``[n, max_len]`` and tokens ``[n, max_len]`` (0-padded)."""
    rng = _rng(cfg.seed, _SPLIT_IDS[split], _PATHS)
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n).astype(np.int32)
    z = np.empty((n, cfg.max_len), dtype=np.int64)
    x = np.empty((n, cfg.max_len), dtype=np.int32)
    cum_t, cum_e = np.cumsum(proc.transition, axis=1), np.cumsum(proc.emission, axis=1)
    cum_0 = np.broadcast_to(np.cumsum(proc.initial), (n, cfg.num_states))
    z[:, 0] = _sample_categorical(rng, cum_0)
    for t in range(cfg.max_len):
        if t:
            z[:, t] = _sample_categorical(rng, cum_t[z[:, t - 1]])
        x[:, t] = _sample_categorical(rng, cum_e[z[:, t]])
    valid = np.arange(cfg.max_len)[None, :] < lengths[:, None]
    return lengths, z, np.where(valid, x, 0).astype(np.int32)


def _noisy(rng: np.random.Generator, y: np.ndarray, classes: int, p: float) -> np.ndarray:
    # Draw both arrays whatever p is, so more noise flips a superset of the same labels.
    flip = rng.random(y.shape) < p
    other = rng.integers(0, classes, size=y.shape)
    return np.where(flip, other, y).astype(np.int32)


def _lagged(a: np.ndarray, lag: int) -> np.ndarray:
    """``a[:, max(t - lag, 0)]`` for every ``t`` (time on axis 1)."""
    idx = np.maximum(np.arange(a.shape[1]) - lag, 0)
    return a[:, idx]


def _crossings(z_high: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    change = z_high[:, 1:] != z_high[:, :-1]
    valid = np.arange(1, z_high.shape[1])[None, :] < lengths[:, None]
    return (change & valid).sum(axis=1)


def _make_split(
    cfg: SyntheticConfig, proc: SyntheticProcess, tasks: tuple[TaskSpec, ...], split: str, n: int
) -> tuple[SequenceDataset, dict[str, np.ndarray]]:
    """A split's dataset, and the noise-free hidden quantities needed for Bayes scores."""
    lengths, z, x = _sample_paths(cfg, proc, n, split)
    sid = _SPLIT_IDS[split]
    labels: dict[str, list[np.ndarray] | np.ndarray] = {}
    for k, spec in enumerate(tasks):
        if spec.name in proc.tag_maps:
            clean = _lagged(proc.tag_maps[spec.name][z], proc.tag_lags[spec.name])
            stream = _task_stream(k, spec.name)
            y = _noisy(_rng(cfg.seed, sid, stream), clean, spec.num_classes,
                       cfg.noise_of(spec.name))
            labels[spec.name] = [y[i, : lengths[i]] for i in range(n)]
        elif spec.name == "seq_class":
            clean = np.minimum(_crossings(proc.high[z], lengths), spec.num_classes - 1)
            labels[spec.name] = _noisy(
                _rng(cfg.seed, sid, _NOISE_SEQ_CLASS), clean, spec.num_classes,
                cfg.noise_of(spec.name),
            )
        elif spec.name == "seq_value":
            valid = np.arange(cfg.max_len)[None, :] < lengths[:, None]
            frac = (proc.high[z] & valid).sum(axis=1) / lengths
            noise = _rng(cfg.seed, sid, _NOISE_SEQ_VALUE).standard_normal(n)
            y = cfg.loss_scale * (frac + cfg.value_noise * noise)
            labels[spec.name] = y.astype(np.float32)[:, None]
    inputs = [x[i, : lengths[i]].copy() for i in range(n)]
    masks = _partial_masks(cfg, tasks, lengths, sid) if split == "train" else {}
    return SequenceDataset(inputs=inputs, labels=labels, masks=masks), {"x": x, "lengths": lengths}


def _task_stream(k: int, name: str) -> int:
    """The random stream id of task ``name`` at suite position ``k`` (its label noise)."""
    fixed = {"conflict": _NOISE_CONFLICT, "seq_class": _NOISE_SEQ_CLASS,
             "seq_value": _NOISE_SEQ_VALUE}
    return fixed.get(name, _TOKEN_TASK + k)


def _partial_masks(
    cfg: SyntheticConfig, tasks: tuple[TaskSpec, ...], lengths: np.ndarray, sid: int
) -> dict[str, Any]:
    """Label masks of the tasks in ``cfg.label_fraction``: each sequence labelled for the task
    with that probability (its own stream, so a larger fraction labels a superset)."""
    masks: dict[str, Any] = {}
    for k, spec in enumerate(tasks):
        if spec.name not in cfg.label_fraction:
            continue
        u = _rng(cfg.seed, sid, _task_stream(k, spec.name), _LABELLED).random(len(lengths))
        keep = (u < cfg.label_fraction[spec.name]).astype(np.float32)
        if spec.level == "token":
            masks[spec.name] = [np.full(int(n), keep[i], np.float32)
                                for i, n in enumerate(lengths)]
        else:
            masks[spec.name] = keep
    return masks


# ----------------------------------------------------------------------------------------------
# Scores.


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Macro-averaged F1 over the classes occurring in ``labels`` or ``preds`` (both ``[M]``)."""
    labels, preds = np.asarray(labels).reshape(-1), np.asarray(preds).reshape(-1)
    scores = []
    for c in np.union1d(labels, preds):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def _class_scores(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(np.mean(labels == preds)), "macro_f1": macro_f1(labels, preds)}


def bayes_token_predictions(
    proc: SyntheticProcess,
    task: str,
    inputs: np.ndarray,
    lengths: np.ndarray,
    *,
    causal: bool = False,
    marginals: np.ndarray | None = None,
) -> np.ndarray:
    """Bayes-optimal tags of a token task, int ``[N, L]`` (-1 at padded steps).

    ``inputs`` is int ``[N, L]`` padded; ``causal=True`` gives the best predictor that reads
    only ``x_{1:t}`` (a unidirectional model's ceiling; lag-0 tasks only). ``marginals``
    (``[N, L, S]``, smoothed) may be passed to reuse a forward-backward pass.
    """
    lag = proc.tag_lags[task]
    if causal and lag:
        raise ValueError(
            f"causal: only for tasks read at lag 0; task {task!r} reads the state at lag {lag}"
        )
    if marginals is None:
        marginals, _ = posterior_marginals(
            proc.initial, proc.transition, proc.emission, inputs, lengths, causal=causal
        )
    tag_map = proc.tag_maps[task]
    onehot = np.eye(int(tag_map.max()) + 1)[tag_map]
    pred = np.argmax(_lagged(marginals, lag) @ onehot, axis=-1)
    valid = np.arange(pred.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return np.where(valid, pred, -1)


def _bayes_scores(
    cfg: SyntheticConfig,
    proc: SyntheticProcess,
    tasks: tuple[TaskSpec, ...],
    data: SequenceDataset,
    x: np.ndarray,
    lengths: np.ndarray,
) -> dict[str, dict[str, float]]:
    gamma, _ = posterior_marginals(proc.initial, proc.transition, proc.emission, x, lengths)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    out: dict[str, dict[str, float]] = {}
    for spec in tasks:
        if spec.name in proc.tag_maps:
            pred = bayes_token_predictions(proc, spec.name, x, lengths, marginals=gamma)[valid]
            out[spec.name] = _class_scores(np.concatenate(data.labels[spec.name]), pred)
        elif spec.name == "seq_class":
            post = crossing_count_posterior(
                proc.initial, proc.transition, proc.emission, proc.high, x, lengths,
                cap=spec.num_classes - 1,
            )
            out[spec.name] = _class_scores(data.labels[spec.name], np.argmax(post, axis=1))
        elif spec.name == "seq_value":
            mean = cfg.loss_scale * (gamma @ proc.high.astype(float)).sum(axis=1) / lengths
            err = mean - data.labels[spec.name][:, 0].astype(np.float64)
            out[spec.name] = {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}
    return out


# ----------------------------------------------------------------------------------------------
# The suite.


def suite_tasks(cfg: SyntheticConfig) -> tuple[TaskSpec, ...]:
    """The task specs a config produces, in suite order."""
    tasks = [
        TaskSpec(f"tag{k}", "token", "classification", num_classes=_token_classes(cfg, k))
        for k in range(cfg.num_token_tasks)
    ]
    if cfg.conflict:
        tasks.append(TaskSpec("conflict", "token", "classification",
                              num_classes=_token_classes(cfg, 0)))
    if cfg.sequence_classification:
        tasks.append(TaskSpec("seq_class", "sequence", "classification",
                              num_classes=cfg.sequence_classes, pooling="last"))
    if cfg.sequence_regression:
        tasks.append(TaskSpec("seq_value", "sequence", "regression", dim=1, loss="mse",
                              pooling="mean"))
    return check_unique(tasks)


def _describe(cfg: SyntheticConfig, tasks: Sequence[TaskSpec]) -> str:
    names = ", ".join(f"{t.name} ({t.level} {t.kind}"
                      + (f", {t.num_classes} classes)" if t.kind == "classification" else ")")
                      for t in tasks)
    return (
        f"Synthetic multi-task suite (seed {cfg.seed}): sequences of {cfg.min_len}-"
        f"{cfg.max_len} tokens over a vocabulary of {cfg.vocab_size - 1} ids, emitted by a "
        f"sticky hidden Markov chain with {cfg.num_states} states (stay probability "
        f"{cfg.stickiness}); each token is shared by {cfg.token_ambiguity} states, so context "
        f"is needed to infer the state. Tasks: {names}. Token tags are contiguous groups of "
        f"states on an ordering that is shared between tasks with weight relatedness="
        f"{cfg.relatedness}; seq_class counts crossings between the low and high halves of the "
        f"shared ordering (capped), seq_value is the fraction of time in the high half times "
        f"loss_scale={cfg.loss_scale}"
        + ("; 'conflict' tags the remainder of tag0's ordering (grouping what tag0 separates) "
           f"at lag {cfg.conflict_lag}" if cfg.conflict else "")
        + f". Class labels are replaced at random with probability {cfg.label_noise}"
        + "".join(f"; {t}'s with {p}" for t, p in cfg.task_label_noise.items())
        + "".join(f"; {t} is labelled on a fraction {f} of the training sequences"
                  for t, f in cfg.label_fraction.items())
        + ". "
        f"Splits: {cfg.num_train} train, {cfg.num_dev} dev, {cfg.num_test} test. Bayes-optimal "
        f"scores from the known process are in Suite.bayes."
    )


def make_suite(cfg: SyntheticConfig) -> Suite:
    """Generate the suite of ``cfg``: tasks, train/dev/test datasets and Bayes-optimal scores.

    Deterministic in ``cfg`` (every draw comes from ``cfg.seed``). Each split is a
    :class:`SequenceDataset` with ``inputs`` int32 ``[L_i]`` in ``[1, vocab_size)``, token
    labels int32 ``[L_i]``, ``seq_class`` int32 ``[N]``, ``seq_value`` float32 ``[N, 1]``;
    masks only for the training split's tasks in ``label_fraction`` (the rest fully labelled).
    """
    tasks = suite_tasks(cfg)
    proc = _make_process(cfg)
    sizes = {"train": cfg.num_train, "dev": cfg.num_dev, "test": cfg.num_test}
    splits, bayes = {}, {}
    for split in SPLITS:
        data, hidden = _make_split(cfg, proc, tasks, split, sizes[split])
        splits[split] = data
        bayes[split] = _bayes_scores(cfg, proc, tasks, data, hidden["x"], hidden["lengths"])
    return Suite(tasks=tasks, vocab_size=cfg.vocab_size, splits=splits, bayes=bayes,
                 description=_describe(cfg, tasks), process=proc)
