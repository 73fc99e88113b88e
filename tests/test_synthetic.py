"""Tests of the synthetic multi-task suite and its exact HMM inference."""

import dataclasses
import itertools
import time

import numpy as np
import pytest

from mtlrnn.data import SyntheticConfig
from mtlrnn.data import make_suite
from mtlrnn.data.synthetic import bayes_token_predictions
from mtlrnn.data.synthetic import crossing_count_posterior
from mtlrnn.data.synthetic import macro_f1
from mtlrnn.data.synthetic import posterior_marginals

SMALL = dict(num_train=300, num_dev=100, num_test=100, max_len=20)


def small(**changes) -> SyntheticConfig:
    return SyntheticConfig(**{**SMALL, **changes})


def padded(inputs: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(inputs), max(len(x) for x in inputs)), np.int32)
    for i, x in enumerate(inputs):
        out[i, : len(x)] = x
    return out


@pytest.fixture(scope="module")
def default_suite():
    start = time.perf_counter()
    suite = make_suite(SyntheticConfig())
    return suite, time.perf_counter() - start


# --- determinism, shapes, ranges ---------------------------------------------------------------


def _all_arrays(suite) -> list[np.ndarray]:
    out = []
    for split in ("train", "dev", "test"):
        data = suite.splits[split]
        out += list(data.inputs)
        for value in data.labels.values():
            out += list(value) if isinstance(value, list) else [value]
    return out


def test_same_seed_same_arrays_different_seed_differs():
    a, b = make_suite(small(conflict=True)), make_suite(small(conflict=True))
    c = make_suite(small(conflict=True, seed=1))
    arrays_a, arrays_b = _all_arrays(a), _all_arrays(b)
    assert len(arrays_a) == len(arrays_b)
    for x, y in zip(arrays_a, arrays_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.bayes == b.bayes
    arrays_c = _all_arrays(c)
    same = [x.shape == y.shape and np.array_equal(x, y) for x, y in zip(arrays_a, arrays_c,
                                                                        strict=True)]
    assert np.mean(same) < 0.05  # a few short label sequences may coincide by chance
    assert a.bayes != c.bayes


def test_streams_are_independent_of_other_knobs():
    # Toggling a task or resizing train leaves the other arrays unchanged (separate streams).
    base, more = make_suite(small()), make_suite(small(conflict=True, num_train=50))
    for split in ("dev", "test"):
        for i in range(5):
            np.testing.assert_array_equal(base.splits[split].inputs[i],
                                          more.splits[split].inputs[i])
            np.testing.assert_array_equal(base.splits[split].labels["tag1"][i],
                                          more.splits[split].labels["tag1"][i])
        np.testing.assert_array_equal(base.splits[split].labels["seq_class"],
                                      more.splits[split].labels["seq_class"])


def test_shapes_dtypes_and_label_ranges():
    cfg = small(conflict=True, token_classes=[3, 7], num_token_tasks=3)
    suite = make_suite(cfg)
    names = [t.name for t in suite.tasks]
    assert names == ["tag0", "tag1", "tag2", "conflict", "seq_class", "seq_value"]
    specs = {t.name: t for t in suite.tasks}
    assert [specs[n].num_classes for n in ("tag0", "tag1", "tag2", "conflict")] == [3, 7, 3, 3]
    assert specs["seq_class"].num_classes == cfg.sequence_classes
    assert (specs["seq_value"].level, specs["seq_value"].kind) == ("sequence", "regression")
    sizes = {"train": cfg.num_train, "dev": cfg.num_dev, "test": cfg.num_test}
    for split, data in suite.splits.items():
        data.check(suite.tasks, vocab_size=suite.vocab_size)  # raises on any inconsistency
        assert len(data) == sizes[split]
        assert data.lengths.dtype == np.int32
        assert cfg.min_len <= data.lengths.min() and data.lengths.max() <= cfg.max_len
        assert all(x.dtype == np.int32 and x.min() >= 1 and x.max() < cfg.vocab_size
                   for x in data.inputs)
        for name in ("tag0", "tag1", "tag2", "conflict"):
            y = data.labels[name]
            assert all(a.dtype == np.int32 and a.shape == x.shape
                       for a, x in zip(y, data.inputs, strict=True))
            flat = np.concatenate(y)
            assert flat.min() >= 0 and flat.max() < specs[name].num_classes
        assert data.labels["seq_class"].dtype == np.int32
        assert data.labels["seq_class"].shape == (len(data),)
        assert data.labels["seq_value"].dtype == np.float32
        assert data.labels["seq_value"].shape == (len(data), 1)
        assert data.masks == {}
    assert set(suite.bayes) == {"train", "dev", "test"}
    for split in suite.bayes:
        for spec in suite.tasks:
            assert set(suite.bayes[split][spec.name]) == set(spec.metrics)


def test_only_enabled_tasks_and_no_task_fails():
    suite = make_suite(small(num_token_tasks=0, sequence_regression=False))
    assert [t.name for t in suite.tasks] == ["seq_class"]
    with pytest.raises(ValueError, match="^num_token_tasks: at least one task"):
        SyntheticConfig(num_token_tasks=0, sequence_classification=False,
                        sequence_regression=False)


# --- exact inference against brute force -------------------------------------------------------


def _tiny_hmm(seed: int = 0, s: int = 3, v: int = 5):
    rng = np.random.default_rng(seed)
    initial = rng.dirichlet(np.ones(s))
    transition = rng.dirichlet(np.ones(s), size=s)
    emission = np.zeros((s, v))
    emission[:, 1:] = rng.dirichlet(np.ones(v - 1), size=s)
    return initial, transition, emission


def _brute_force(initial, transition, emission, x):
    """Joint p(z, x) of every hidden path of the token list ``x`` (enumeration)."""
    s = len(initial)
    paths = np.array(list(itertools.product(range(s), repeat=len(x))))
    p = initial[paths[:, 0]] * emission[paths[:, 0], x[0]]
    for t in range(1, len(x)):
        p = p * transition[paths[:, t - 1], paths[:, t]] * emission[paths[:, t], x[t]]
    return paths, p


def test_forward_backward_matches_brute_force_enumeration():
    initial, transition, emission = _tiny_hmm()
    seqs = [np.array([1, 3, 3, 2]), np.array([4, 1]), np.array([2, 2, 4])]
    lengths = np.array([len(x) for x in seqs])
    x = padded(seqs)
    smooth, loglik = posterior_marginals(initial, transition, emission, x, lengths)
    causal, _ = posterior_marginals(initial, transition, emission, x, lengths, causal=True)
    assert smooth.shape == (3, 4, 3)
    for n, seq in enumerate(seqs):
        paths, p = _brute_force(initial, transition, emission, seq)
        np.testing.assert_allclose(loglik[n], np.log(p.sum()), rtol=0, atol=1e-10)
        for t in range(len(seq)):
            want = np.array([p[paths[:, t] == k].sum() for k in range(3)]) / p.sum()
            np.testing.assert_allclose(smooth[n, t], want, rtol=0, atol=1e-10)
            # Filtering: p(z_t | x_{1:t}) is the smoothed marginal of the prefix.
            pp, pr = _brute_force(initial, transition, emission, seq[: t + 1])
            want = np.array([pr[pp[:, t] == k].sum() for k in range(3)]) / pr.sum()
            np.testing.assert_allclose(causal[n, t], want, rtol=0, atol=1e-10)
        assert np.all(smooth[n, len(seq):] == 0.0)


def test_forward_backward_is_stable_for_long_sequences():
    initial, transition, emission = _tiny_hmm(seed=1)
    x = np.random.default_rng(0).integers(1, 5, size=(2, 400))
    marg, loglik = posterior_marginals(initial, transition, emission, x, np.array([400, 300]))
    assert np.all(np.isfinite(marg)) and np.all(np.isfinite(loglik))
    np.testing.assert_allclose(marg[0].sum(axis=1), 1.0, atol=1e-12)
    assert loglik[0] < -300  # ~log(1/4) per step: would underflow without scaling


def test_crossing_count_posterior_matches_brute_force():
    initial, transition, emission = _tiny_hmm(seed=2)
    high = np.array([False, True, True])
    seqs = [np.array([1, 3, 3, 2, 4]), np.array([4, 1]), np.array([2, 2, 4, 1])]
    lengths = np.array([len(x) for x in seqs])
    cap = 2
    post = crossing_count_posterior(initial, transition, emission, high, padded(seqs), lengths,
                                    cap=cap)
    for n, seq in enumerate(seqs):
        paths, p = _brute_force(initial, transition, emission, seq)
        counts = np.minimum((high[paths[:, 1:]] != high[paths[:, :-1]]).sum(axis=1), cap)
        want = np.array([p[counts == k].sum() for k in range(cap + 1)]) / p.sum()
        np.testing.assert_allclose(post[n], want, rtol=0, atol=1e-10)


def test_macro_f1_hand_computed():
    # Hand computation: class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=1 fp=0 fn=1 -> 2/3;
    # class 2: tp=0 fp=1 fn=0 -> 0. Mean = (0.5 + 2/3 + 0) / 3.
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 1, 0])
    assert macro_f1(labels, preds) == pytest.approx((0.5 + 2 / 3) / 3)


# --- Bayes scores and knobs --------------------------------------------------------------------


def test_default_suite_builds_fast_and_bayes_is_informative(default_suite):
    suite, seconds = default_suite
    assert seconds < 5.0
    data = suite.splits["test"]
    x, lengths = padded(data.inputs), data.lengths
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    for spec in suite.tasks:
        if spec.level != "token":
            continue
        labels = np.concatenate(data.labels[spec.name])
        majority = np.bincount(labels).max() / len(labels)
        acc = suite.bayes["test"][spec.name]["accuracy"]
        # Bayes: well above the majority class and below 1 (label noise 0.05 alone caps it
        # near 0.95 + 0.05 / C).
        assert majority + 0.3 < acc < 0.97
        # Context matters: the Bayes predictor reading x_{1:t} beats a unigram one, and the
        # one reading the whole sequence beats the causal one (so a BiRNN can beat an RNN).
        proc = suite.process
        causal = bayes_token_predictions(proc, spec.name, x, lengths, causal=True)[valid]
        unigram_marg = proc.emission.T[x] * valid[..., None]
        unigram_marg /= np.maximum(unigram_marg.sum(-1, keepdims=True), 1e-300)
        unigram = bayes_token_predictions(proc, spec.name, x, lengths,
                                          marginals=unigram_marg)[valid]
        acc_causal, acc_unigram = np.mean(causal == labels), np.mean(unigram == labels)
        assert acc_unigram + 0.05 < acc_causal < acc - 0.02
    assert suite.bayes["test"]["seq_class"]["accuracy"] > 0.6
    value = suite.splits["test"].labels["seq_value"]
    assert suite.bayes["test"]["seq_value"]["mse"] < 0.2 * value.var()
    assert "Synthetic multi-task suite" in suite.description


def test_more_label_noise_lowers_bayes_accuracy():
    eps = 0.3
    clean = make_suite(small(label_noise=0.0))
    noisy = make_suite(small(label_noise=eps))
    specs = {t.name: t for t in clean.tasks}
    for name in ("tag0", "tag1", "tag2", "seq_class"):
        acc_clean = clean.bayes["train"][name]["accuracy"]
        acc_noisy = noisy.bayes["train"][name]["accuracy"]
        # Same paths and the same Bayes predictions (noise does not move the argmax); a label
        # is kept with prob 1 - eps, else uniform, so E[acc] = (1 - eps) * clean + eps / C
        # (hand computation). Tolerance: 4 binomial std for the 300 sequence labels.
        expected = (1 - eps) * acc_clean + eps / specs[name].num_classes
        assert abs(acc_noisy - expected) < 4 * np.sqrt(eps * (1 - eps) / 300)
        assert acc_noisy < acc_clean - 0.1


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def test_relatedness_controls_how_informative_tags_are_about_each_other():
    # Equal class counts: at relatedness 1 every task cuts the same ordering into the same
    # blocks, so the clean tag sequences are identical; at 0 the orderings are independent.
    nmi, agree = {}, {}
    for r in (0.0, 1.0):
        n_values, a_values = [], []
        for seed in range(4):
            cfg = small(relatedness=r, label_noise=0.0, seed=seed, token_classes=[4],
                        num_train=100)
            data = make_suite(cfg).splits["train"]
            tags = [np.concatenate(data.labels[f"tag{k}"]) for k in range(3)]
            for j, k in ((0, 1), (0, 2), (1, 2)):
                # Normalised by H(tag_j): 1 means tag_k determines tag_j.
                n_values.append(_mutual_information(tags[j], tags[k])
                                / _mutual_information(tags[j], tags[j]))
                a_values.append(np.mean(tags[j] == tags[k]))
        nmi[r], agree[r] = np.mean(n_values), np.mean(a_values)
    assert agree[1.0] == 1.0 and nmi[1.0] == pytest.approx(1.0)
    # Measured 0.25-0.45 (agreement) and ~0.4 (NMI) over these seeds; tags stay somewhat
    # informative at 0 because all tasks read the same hidden state.
    assert agree[0.0] < 0.6
    assert nmi[0.0] < 0.7


def test_relatedness_one_makes_tag_maps_nested():
    proc = make_suite(small(relatedness=1.0, token_classes=[3, 6])).process
    # Same ordering cut into 3 and 6 blocks: every 6-block lies inside one 3-block.
    fine, coarse = proc.tag_maps["tag1"], proc.tag_maps["tag0"]
    for c in np.unique(fine):
        assert len(np.unique(coarse[fine == c])) == 1


def test_conflict_splits_what_tag0_groups():
    proc = make_suite(small(conflict=True)).process
    tag0, conflict = proc.tag_maps["tag0"], proc.tag_maps["conflict"]
    for c in np.unique(tag0):
        members = conflict[tag0 == c]
        assert len(np.unique(members)) == len(members)  # tag0's groups are split apart
    assert proc.tag_lags == {"tag0": 0, "tag1": 0, "tag2": 0, "conflict": 1}


def test_loss_scale_scales_regression_targets():
    base, scaled = make_suite(small()), make_suite(small(loss_scale=10.0))
    for split in ("train", "test"):
        np.testing.assert_allclose(scaled.splits[split].labels["seq_value"],
                                   10.0 * base.splits[split].labels["seq_value"], rtol=1e-6)
        assert scaled.bayes[split]["seq_value"]["mse"] == pytest.approx(
            100.0 * base.bayes[split]["seq_value"]["mse"], rel=1e-5)
        assert scaled.bayes[split]["tag0"] == base.bayes[split]["tag0"]


# --- config validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, changes",
    [
        ("num_token_tasks", dict(num_token_tasks=-1)),
        ("token_classes", dict(token_classes=[5, 1])),
        ("token_classes", dict(token_classes=[])),
        ("sequence_classes", dict(sequence_classes=1)),
        ("num_states", dict(num_states=1)),
        ("vocab_size", dict(vocab_size=10, num_states=12)),
        ("relatedness", dict(relatedness=1.5)),
        ("label_noise", dict(label_noise=1.0)),
        ("loss_scale", dict(loss_scale=0.0)),
        ("min_len", dict(min_len=0)),
        ("max_len", dict(max_len=4, min_len=8)),
        ("num_train", dict(num_train=0)),
        ("stickiness", dict(stickiness=1.0)),
        ("token_ambiguity", dict(token_ambiguity=13, num_states=12)),
        ("conflict", dict(conflict=True, num_token_tasks=0)),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(field, changes):
    with pytest.raises(ValueError, match=f"^{field}: "):
        SyntheticConfig(**changes)


def test_config_is_frozen_and_hashable():
    cfg = SyntheticConfig(token_classes=[5, 8])
    assert cfg.token_classes == (5, 8)
    assert hash(cfg) == hash(SyntheticConfig(token_classes=(5, 8)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


# --- scenario knobs: a noisy task, partial labels ----------------------------------------------


def test_task_label_noise_makes_one_task_noisy_and_leaves_the_others():
    base = make_suite(small(label_noise=0.05))
    noisy = make_suite(small(label_noise=0.05, task_label_noise={"tag1": 0.8}))
    for split in ("train", "test"):
        for name in ("tag0", "tag2", "seq_class"):
            assert noisy.bayes[split][name] == base.bayes[split][name]
        np.testing.assert_array_equal(noisy.splits[split].inputs[3], base.splits[split].inputs[3])
    # E[acc] = (1 - eps) * clean + eps / C with the clean accuracy recovered from the base.
    clean = (base.bayes["train"]["tag1"]["accuracy"] - 0.05 / 6) / 0.95
    expected = 0.2 * clean + 0.8 / 6
    n_tokens = sum(len(y) for y in noisy.splits["train"].labels["tag1"])
    assert abs(noisy.bayes["train"]["tag1"]["accuracy"] - expected) < 4 * np.sqrt(0.16 / n_tokens)
    assert "tag1's with 0.8" in noisy.description


def test_label_fraction_masks_training_sequences_only():
    cfg = small(label_fraction={"tag1": 0.2, "seq_value": 0.5})
    suite = make_suite(cfg)
    train = suite.splits["train"]
    assert set(train.masks) == {"tag1", "seq_value"}
    token_keep = np.array([m[0] for m in train.masks["tag1"]])
    for m, x in zip(train.masks["tag1"], train.inputs, strict=True):
        assert m.shape == x.shape and np.all(m == m[0])  # whole sequences, never single tokens
    assert abs(token_keep.mean() - 0.2) < 4 * np.sqrt(0.16 / 300)
    assert abs(train.masks["seq_value"].mean() - 0.5) < 4 * np.sqrt(0.25 / 300)
    assert suite.splits["dev"].masks == {} and suite.splits["test"].masks == {}
    train.check(suite.tasks, vocab_size=suite.vocab_size)
    # A larger fraction labels a superset; labels themselves are unchanged.
    more = make_suite(small(label_fraction={"tag1": 0.6})).splits["train"]
    more_keep = np.array([m[0] for m in more.masks["tag1"]])
    assert np.all(more_keep[token_keep == 1] == 1) and more_keep.sum() > token_keep.sum()
    base = make_suite(small()).splits["train"]
    np.testing.assert_array_equal(np.concatenate(base.labels["tag1"]),
                                  np.concatenate(train.labels["tag1"]))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(task_label_noise={"tagx": 0.5}), "task_label_noise: unknown task 'tagx'"),
        (dict(task_label_noise={"seq_value": 0.5}), "task_label_noise: 'seq_value' is a regr"),
        (dict(task_label_noise={"tag0": 1.0}), r"task_label_noise.tag0: must be a number in \[0"),
        (dict(label_fraction={"tag0": 0.0}), r"label_fraction.tag0: must be a number in \(0, 1\]"),
        (dict(label_fraction={"conflict": 0.5}), "label_fraction: unknown task 'conflict'"),
    ],
)
def test_scenario_knobs_name_the_bad_task_or_value(changes, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)
