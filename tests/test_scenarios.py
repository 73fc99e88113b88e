"""The scenario configs (configs/scenarios/) build what their headers say, and
benchmarks/scenarios.py's summary ranks methods correctly."""

import importlib.util
import math
from pathlib import Path

import pytest

from mtlrnn import config as config_lib
from mtlrnn.data.sources import load_data

REPO = Path(__file__).resolve().parents[1]


def _scenarios_module():
    spec = importlib.util.spec_from_file_location("bench_scenarios",
                                                  REPO / "benchmarks" / "scenarios.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SC = _scenarios_module()


def _load(name: str):
    cfg = config_lib.load_config(REPO / "configs" / "scenarios" / f"{name}.yaml")
    return cfg, load_data(cfg.data).tasks


def test_there_are_at_least_five_scenarios_and_a_control():
    names = SC.scenario_names()
    assert len(names) >= 5 and "control" in names


@pytest.mark.parametrize("name", SC.scenario_names())
def test_every_scenario_loads_small_and_in_representation_mode(name):
    cfg, tasks = _load(name)
    assert cfg.weighting.mode == "representation"
    assert cfg.model.hidden_size == 64 and cfg.train.steps == 1000
    assert cfg.train.eval_every > 0  # the baselines' learning curves
    header = (REPO / "configs" / "scenarios" / f"{name}.yaml").read_text().splitlines()[0]
    assert header.startswith("# Scenario: ")
    assert len(tasks) >= 4


def test_scenarios_differ_from_the_control_by_their_knob():
    control_cfg, control = _load("control")
    names = [t.name for t in control]
    cfg, tasks = _load("imbalance")
    assert [t.loss_scale for t in config_lib.resolve_tasks(cfg.tasks, tasks)] == [
        100.0 if t == "tag0" else 0.01 if t == "seq_value" else 1.0 for t in names]
    _, tasks = _load("conflict")
    assert "conflict" in [t.name for t in tasks]
    cfg, _ = _load("noisy_task")
    assert cfg.data.synthetic.task_label_noise == {"tag2": 0.8}
    cfg, _ = _load("partial_labels")
    assert set(cfg.data.synthetic.label_fraction) == {"tag1", "tag2"}
    _, tasks = _load("many_tasks")
    assert len(tasks) >= 12


def test_methods_cover_the_registry_and_full_only_methods_only_where_said():
    from mtlrnn import weighting

    control = SC.methods_for("control")
    assert control[0] == "ew" and len(control) == len(set(control))
    assert set(control) == {"ew"} | set(weighting.names()) - {"equal", "fixed"}
    imbalance = SC.methods_for("imbalance")
    assert len(imbalance) >= 15 and not set(SC.FULL_ONLY) & set(imbalance)


def _stats(mean, std=0.1):
    return {"mean": mean, "std": std, "n": 3}


def test_mean_ranks_average_over_scenarios_and_share_ties():
    table = {
        "a": {"s1": _stats(-2.0), "s2": _stats(1.0)},
        "b": {"s1": _stats(-1.0), "s2": _stats(1.0)},
        "c": {"s1": _stats(0.5)},
    }
    ranks = SC.mean_ranks(table, ["s1", "s2"])
    # s1: a 1, b 2, c 3; s2: a and b tie for ranks 1 and 2 -> 1.5 each.
    assert ranks == {"a": 1.25, "b": 1.75, "c": 3.0}


def test_summary_table_lists_methods_by_rank_with_the_seed_noise():
    def report(rows):
        return {"rows": [{"method": "single-task", "delta_m": _stats(0.0, 0.4)}]
                + [{"method": m, "delta_m": _stats(v)} for m, v in rows]}

    reports = {"s1": report([("ew", 0.0), ("uw", -1.0)]),
               "s2": report([("ew", 1.0), ("uw", 2.0)])}
    text = SC.summary_markdown(reports)
    lines = text.splitlines()
    assert lines[0] == "| method | s1 | s2 | mean rank |"
    assert "±0.40" in lines[2]
    assert lines[3].startswith("| ew |") or lines[3].startswith("| uw |")
    assert all(math.isfinite(float(line.rsplit("|", 2)[1])) for line in lines[3:])
    assert "-1.00 ± 0.10" in text and "+2.00 ± 0.10" in text
