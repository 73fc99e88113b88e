"""Tests for mtlrnn.delta: Δm, Δp and seed summaries."""

import math

import pytest

from mtlrnn.delta import delta_m
from mtlrnn.delta import delta_p
from mtlrnn.delta import summarize_seeds

# Two tasks, one metric each.
#   A: accuracy, MTL 0.80 vs STL 0.75 -> rel = 0.05 / 0.75 = +1/15 (better, higher-is-better)
#   B: mse,      MTL 0.10 vs STL 0.08 -> rel = 0.02 / 0.08 = +0.25 (worse, lower-is-better)
# Δm = 100/2 * ( -(1/15) + 0.25 ) = 50 * 0.183333... = 9.1666...
# Δp = ( +100/15 + (-25) ) / 2 = (6.6666... - 25) / 2 = -9.1666...
MTL = {"A": {"accuracy": 0.80}, "B": {"mse": 0.10}}
STL = {"A": {"accuracy": 0.75}, "B": {"mse": 0.08}}


def test_hand_computed_one_metric_per_task():
    assert delta_m(MTL, STL) == pytest.approx(50.0 * (0.25 - 1.0 / 15.0))
    assert delta_m(MTL, STL) == pytest.approx(9.1666666667)
    assert delta_p(MTL, STL) == pytest.approx(-9.1666666667)


def test_single_metric_tasks_give_opposite_signs():
    assert delta_p(MTL, STL) == pytest.approx(-delta_m(MTL, STL))


def test_all_better_signs():
    mtl = {"A": {"accuracy": 0.9, "macro_f1": 0.7}, "B": {"mse": 0.05, "mae": 0.2}}
    stl = {"A": {"accuracy": 0.8, "macro_f1": 0.6}, "B": {"mse": 0.08, "mae": 0.3}}
    assert delta_m(mtl, stl) < 0
    assert delta_p(mtl, stl) > 0
    # and all worse flips both
    assert delta_m(stl, mtl) > 0
    assert delta_p(stl, mtl) < 0


def test_identical_scores_are_zero():
    assert delta_m(STL, STL) == 0.0
    assert delta_p(STL, STL) == 0.0


def test_two_metric_task_per_metric_vs_per_task_averaging():
    # A: accuracy 0.9 vs 0.8 -> +12.5 % (better); macro_f1 0.7 vs 0.7 -> 0
    # B: mse 0.1 vs 0.1 -> 0
    # Δm averages over the 3 metrics: -12.5 / 3 = -4.1666...
    # Δp averages within A first (12.5 / 2 = 6.25), then over 2 tasks: 6.25 / 2 = 3.125
    mtl = {"A": {"accuracy": 0.9, "macro_f1": 0.7}, "B": {"mse": 0.1}}
    stl = {"A": {"accuracy": 0.8, "macro_f1": 0.7}, "B": {"mse": 0.1}}
    dm, dp = delta_m(mtl, stl), delta_p(mtl, stl)
    assert dm == pytest.approx(-12.5 / 3)
    assert dp == pytest.approx(3.125)
    assert abs(dp) != pytest.approx(abs(dm))


def test_custom_direction_and_override():
    mtl = {"A": {"bleu": 30.0}}
    stl = {"A": {"bleu": 25.0}}
    # bleu +20 %, higher is better
    assert delta_m(mtl, stl, higher_is_better={"bleu": True}) == pytest.approx(-20.0)
    assert delta_p(mtl, stl, higher_is_better={"bleu": True}) == pytest.approx(20.0)
    # overriding a default flips the sign: treat accuracy as lower-is-better
    assert delta_m(MTL, STL, higher_is_better={"accuracy": False}) == pytest.approx(
        50.0 * (0.25 + 1.0 / 15.0)
    )


def test_negative_baseline_uses_signed_denominator():
    # (M - S) / S with S < 0: (-1 - -2) / -2 = -0.5; loss is lower-is-better -> Δm = -50
    assert delta_m({"A": {"loss": -1.0}}, {"A": {"loss": -2.0}}) == pytest.approx(-50.0)


def test_unknown_metric_names_it():
    with pytest.raises(ValueError, match="'bleu'"):
        delta_m({"A": {"bleu": 1.0}}, {"A": {"bleu": 2.0}})
    with pytest.raises(ValueError, match="'bleu'"):
        delta_p({"A": {"bleu": 1.0}}, {"A": {"bleu": 2.0}})


def test_missing_task_names_it():
    with pytest.raises(ValueError, match="'B'"):
        delta_m(MTL, {"A": STL["A"]})
    with pytest.raises(ValueError, match="'C'"):
        delta_p(MTL, {**STL, "C": {"mse": 1.0}})


def test_missing_metric_names_it():
    mtl = {"A": {"accuracy": 0.8, "macro_f1": 0.5}}
    stl = {"A": {"accuracy": 0.7}}
    with pytest.raises(ValueError, match="macro_f1"):
        delta_m(mtl, stl)
    with pytest.raises(ValueError, match="macro_f1"):
        delta_p(stl, mtl)


def test_zero_baseline_names_it():
    with pytest.raises(ValueError, match=r"'B'.*'mse'.*zero"):
        delta_m(MTL, {"A": STL["A"], "B": {"mse": 0.0}})
    with pytest.raises(ValueError, match="zero"):
        delta_p(MTL, {"A": STL["A"], "B": {"mse": 0.0}})


def test_empty_and_nonfinite_rejected():
    with pytest.raises(ValueError):
        delta_m({}, {})
    with pytest.raises(ValueError, match="no metrics"):
        delta_p({"A": {}}, {"A": {}})
    with pytest.raises(ValueError, match="finite"):
        delta_m({"A": {"mse": math.nan}}, {"A": {"mse": 1.0}})


def test_summarize_seeds():
    mean, std = summarize_seeds([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    # sample variance: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert std == pytest.approx(math.sqrt(5.0 / 3.0))
    assert summarize_seeds([7.5]) == (7.5, 0.0)
    assert summarize_seeds((2.0, 2.0)) == (2.0, 0.0)
    with pytest.raises(ValueError):
        summarize_seeds([])
