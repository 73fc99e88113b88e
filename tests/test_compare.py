"""``mtlrnn compare``: planning, resumable and shardable execution, and the Δm/Δp report.

The end-to-end tests train tiny real runs; the execution-logic tests replace
``mtlrnn.training.run.fit`` by a stub that writes a summary, and the report tests read hand-written
summary.json files whose Δm/Δp are computed by hand in the comments.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import statistics

import pytest

from mtlrnn.cli import main
from mtlrnn.compare import Run
from mtlrnn.compare import compare
from mtlrnn.compare import execute
from mtlrnn.compare import plan_runs
from mtlrnn.compare import report
from mtlrnn.config import ConfigError
from mtlrnn.config import dump_yaml
from mtlrnn.config import load_config
from mtlrnn.delta import delta_m
from mtlrnn.delta import delta_p
from mtlrnn.delta import summarize_seeds
from mtlrnn.training import run as run_module

# The smallest config that still trains: a few sequences, a 4-unit RNN, 2 steps.
TINY = [
    "data.synthetic.num_train=32",
    "data.synthetic.num_dev=8",
    "data.synthetic.num_test=16",
    "data.synthetic.max_len=8",
    "data.buckets=[8]",
    "model.cell=rnn",
    "model.embed_dim=4",
    "model.hidden_size=4",
    "model.bidirectional=false",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.steps=2",
    "train.log_every=1",
    "train.eval_splits=[test]",
    "logging.progress=false",
    "logging.plots=false",
    "checkpoint.enabled=false",
    "tasks.include=[tag0,seq_value]",
]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _summaries(outdir):
    out = {}
    for root, _, files in os.walk(os.path.join(outdir, "runs")):
        if "summary.json" in files:
            path = os.path.join(root, "summary.json")
            out[os.path.relpath(root, outdir)] = path
    return out


def _eval(path, split="test"):
    with open(path) as f:
        ev = json.load(f)["eval"][split]
    return {t: {m: v for m, v in ms.items() if m != "count"} for t, ms in ev.items()}


# --------------------------------------------------------------------------------------------
# End to end, real training: 2 tasks x 2 seeds of baselines + 2 methods x 2 seeds = 8 runs,
# trained as two shards.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("cmp"))
    kwargs = dict(overrides=TINY, verbose=False)
    compare(None, ["ew", "uw"], 2, outdir, shard="0/2", **kwargs)
    after_shard0 = set(_summaries(outdir))
    result = compare(None, "ew,uw", 2, outdir, shard=(1, 2), **kwargs)
    with open(os.path.join(outdir, "plan.json")) as f:
        plan = json.load(f)
    return {"outdir": outdir, "after_shard0": after_shard0, "result": result, "plan": plan}


def test_plan_order_and_shards_are_disjoint(trained):
    order = [r["workdir"] for r in trained["plan"]["runs"]]
    expected = [
        os.path.join("runs", name, f"seed{s}")
        for name in ("single-tag0", "single-seq_value", "ew", "uw")
        for s in (0, 1)
    ]
    assert order == expected
    assert trained["plan"]["methods"] == ["ew", "uw"] and trained["plan"]["seeds"] == [0, 1]
    # Shard 0/2 trained exactly the even-indexed runs; shard 1/2 the rest, none twice.
    assert trained["after_shard0"] == set(order[0::2])
    assert set(_summaries(trained["outdir"])) == set(order)
    assert trained["result"]["failed"] == []


def test_report_files_and_delta_recomputed_from_summaries(trained):
    outdir, result = trained["outdir"], trained["result"]
    for name in ("compare.md", "compare.csv", "compare.json", "delta_m.png", "plan.json"):
        assert os.path.isfile(os.path.join(outdir, name)), name

    # Δm and Δp recomputed here from the summary files with mtlrnn.delta.
    summaries = _summaries(outdir)
    tasks = ["tag0", "seq_value"]
    single = {t: [_eval(summaries[f"runs/single-{t}/seed{s}"])[t] for s in (0, 1)] for t in tasks}
    baseline = {
        t: {m: statistics.mean(r[m] for r in single[t]) for m in single[t][0]} for t in tasks
    }
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["single-task", "ew", "uw"]
    with open(os.path.join(outdir, "compare.md")) as f:
        md = f.read()
    with open(os.path.join(outdir, "compare.csv")) as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    for method in ("ew", "uw"):
        evals = [_eval(summaries[f"runs/{method}/seed{s}"]) for s in (0, 1)]
        dm = summarize_seeds([delta_m(e, baseline) for e in evals])
        dp = summarize_seeds([delta_p(e, baseline) for e in evals])
        row = rows[method]
        assert row["n"] == 2
        assert (row["delta_m"]["mean"], row["delta_m"]["std"]) == pytest.approx(dm)
        assert (row["delta_p"]["mean"], row["delta_p"]["std"]) == pytest.approx(dp)
        acc = summarize_seeds([e["tag0"]["accuracy"] for e in evals])
        got = row["scores"]["tag0"]["accuracy"]
        assert (got["mean"], got["std"]) == pytest.approx(acc)
        assert float(csv_rows[method]["delta_m_mean"]) == pytest.approx(dm[0])
        assert float(csv_rows[method]["tag0/accuracy_std"]) == pytest.approx(acc[1])
        assert f"| {method} | 2 | {acc[0]:.4f} ± {acc[1]:.4f} |" in md
        assert f"{dm[0]:+.2f} ± {dm[1]:.2f}" in md
        assert row["step_time_ms"] > 0

    header = next(line for line in md.splitlines() if line.startswith("| method"))
    for col in ("n", "tag0/accuracy", "tag0/macro_f1", "seq_value/mse", "seq_value/mae"):
        assert f"| {col} |" in header
    assert header.endswith("| Δm% ↓ | Δp ↑ | step ms |")
    assert "Maninis et al. 2019" in md and "LibMTL" in md
    assert rows["single-task"]["delta_m"]["mean"] == 0.0
    assert result["baseline"]["tag0"]["accuracy"] == pytest.approx(baseline["tag0"]["accuracy"])
    with open(os.path.join(outdir, "compare.json")) as f:
        assert json.load(f)["rows"][1]["delta_m"]["mean"] == pytest.approx(
            rows["ew"]["delta_m"]["mean"]
        )


def test_rerun_trains_nothing_and_interrupted_run_is_redone(trained, capsys):
    outdir = trained["outdir"]
    summaries = _summaries(outdir)
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in summaries.items()}
    with open(os.path.join(outdir, "compare.md")) as f:
        table = f.read()
    capsys.readouterr()
    assert (
        main(["compare", "--methods", "ew,uw", "--seeds", "2", "--outdir", outdir, *_sets(TINY)])
        == 0
    )
    err = capsys.readouterr().err
    assert "0 trained, 8 already finished" in err
    assert {k: os.stat(p).st_mtime_ns for k, p in summaries.items()} == mtimes
    with open(os.path.join(outdir, "compare.md")) as f:
        assert f.read() == table

    # An interrupted run: its directory exists without summary.json.
    os.remove(summaries["runs/uw/seed1"])
    compare(None, ["ew", "uw"], 2, outdir, overrides=TINY, verbose=True)
    err = capsys.readouterr().err
    assert "interrupted" in err and "1 trained, 7 already finished" in err
    now = {k: os.stat(p).st_mtime_ns for k, p in _summaries(outdir).items()}
    assert [k for k in now if now[k] != mtimes[k]] == ["runs/uw/seed1"]


def test_vectorized_compare_gives_the_same_table(trained, tmp_path):
    # The shard fixture trained every run on its own (a shard holds one seed per method);
    # here each method's two seeds train as one population: the same numbers.
    outdir = str(tmp_path / "vec")
    result = compare(None, ["ew"], 2, outdir, overrides=TINY, verbose=False)
    assert result["failed"] == []
    assert os.path.isfile(os.path.join(outdir, "runs", "ew", "population.json"))
    with open(os.path.join(outdir, "runs", "ew", "seed1", "summary.json")) as f:
        assert json.load(f)["run"]["population"] == 2
    alone = {r["method"]: r for r in trained["result"]["rows"]}
    for row in result["rows"]:
        other = alone[row["method"]]
        assert row["n"] == other["n"] == 2
        for task, metrics in row["scores"].items():
            for metric, cell in metrics.items():
                want = other["scores"][task][metric]["mean"]
                assert cell["mean"] == pytest.approx(want, abs=1e-4)
        if row["delta_m"]["mean"] is not None:
            assert row["delta_m"]["mean"] == pytest.approx(other["delta_m"]["mean"], abs=1e-3)


def test_report_only_reads_the_plan(trained, capsys):
    outdir = trained["outdir"]
    os.remove(os.path.join(outdir, "compare.csv"))
    result = compare(None, None, None, outdir, report_only=True, verbose=False)
    assert [r["method"] for r in result["rows"]] == ["single-task", "ew", "uw"]
    assert os.path.isfile(os.path.join(outdir, "compare.csv"))
    assert main(["compare", "--outdir", outdir, "--report-only", "--metrics", "accuracy"]) == 0
    out, err = capsys.readouterr()
    assert "| method" not in err  # the report is the result: stdout
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    assert "tag0/accuracy" in header and "macro_f1" not in header and "seq_value" not in header


def test_jobs_run_as_subprocesses(tmp_path):
    # One task: the "ew" run has the single-task baseline's exact config, so both processes
    # must produce the same scores and Δm = 0.
    outdir = str(tmp_path / "jobs")
    overrides = [*TINY, "tasks.include=[tag0]"]
    result = compare(None, ["ew"], 1, outdir, overrides=overrides, jobs=2, verbose=False)
    assert result["failed"] == []
    for name in ("single-tag0", "ew"):
        workdir = os.path.join(outdir, "runs", name, "seed0")
        assert os.path.isfile(os.path.join(workdir, "summary.json"))
        with open(os.path.join(workdir, "train.log")) as f:
            assert '"tag0"' in f.read()  # the child's --quiet JSON result
        assert not os.path.exists(workdir + ".lock")
    assert result["rows"][1]["delta_m"]["mean"] == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# Planning and execution logic, with fit() replaced by a stub.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_fit(monkeypatch):
    """``mtlrnn.training.run.fit`` writing config.yaml and a summary in no time; records calls."""
    calls = []

    def fit(cfg, workdir, *, verbose=True):
        if cfg.train.num_seeds > 1:  # a population: each seed into <workdir>/seed<seed>
            return {
                "seeds": {
                    str(s): fit(
                        dataclasses.replace(
                            cfg, train=dataclasses.replace(cfg.train, seed=s, num_seeds=1)
                        ),
                        os.path.join(workdir, f"seed{s}"),
                        verbose=verbose,
                    )
                    for s in range(cfg.train.seed, cfg.train.seed + cfg.train.num_seeds)
                }
            }
        calls.append(workdir)
        if cfg.weighting.name == "pcgrad":
            raise RuntimeError("boom")
        os.makedirs(workdir, exist_ok=True)
        dump_yaml(cfg, os.path.join(workdir, "config.yaml"))
        tasks = cfg.tasks.include or ("tag0", "seq_value")
        shift = 0.01 * cfg.train.seed
        ev = {
            t: {"accuracy": 0.5 + shift, "count": 10.0}
            if t.startswith("tag")
            else {"mse": 0.5 - shift, "count": 10.0}
            for t in tasks
        }
        summary = {"eval": {"test": ev}, "throughput": {"step_time_ms_median": 1.0}}
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary

    monkeypatch.setattr(run_module, "fit", fit)
    return calls


def test_plan_runs_names_seeds_and_overrides(tmp_path):
    shared = [*TINY, "train.seed=5", "weighting.name=cagrad", "weighting.params={c: 0.3}"]
    cfg = load_config(None, shared)
    runs = plan_runs(cfg, None, ["ew", "cagrad", "mgda_ub"], 2, tmp_path, overrides=shared)
    assert [(r.name, r.method, r.seed, r.task) for r in runs] == [
        ("single-tag0", "equal", 5, "tag0"),
        ("single-tag0", "equal", 6, "tag0"),
        ("single-seq_value", "equal", 5, "seq_value"),
        ("single-seq_value", "equal", 6, "seq_value"),
        ("ew", "equal", 5, None),
        ("ew", "equal", 6, None),
        ("cagrad", "cagrad", 5, None),
        ("cagrad", "cagrad", 6, None),
        ("mgda_ub", "mgda_ub", 5, None),
        ("mgda_ub", "mgda_ub", 6, None),
    ]
    assert runs[0].workdir == os.path.join(tmp_path, "runs", "single-tag0", "seed5")
    assert runs[0].overrides == (
        *shared,
        "tasks.include=[tag0]",
        "weighting.name=equal",
        "weighting.params={}",
        "train.seed=5",
    )
    # The config's own hyper-parameters go to its own method only; mgda_ub needs its mode.
    assert "weighting.params={}" in runs[4].overrides
    assert "weighting.params={}" not in runs[6].overrides
    assert "weighting.mode=representation" in runs[8].overrides
    assert all(isinstance(r, Run) for r in runs)


def test_lock_held_by_another_process_skips_the_run(tmp_path, fake_fit, capsys):
    outdir = str(tmp_path)
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew"], 1, outdir, overrides=TINY)
    locked = runs[0].workdir
    os.makedirs(os.path.dirname(locked))
    with open(locked + ".lock", "w") as f:
        f.write("pid 1\n")
    assert execute(runs, verbose=True) == []
    err = capsys.readouterr().err
    assert "another process holds" in err and "1 skipped (locked)" in err
    assert locked not in fake_fit and len(fake_fit) == 2
    assert not os.path.exists(os.path.join(locked, "summary.json"))
    assert os.path.exists(locked + ".lock")  # someone else's lock is left alone
    # The others' locks are gone; the report counts the locked run as missing.
    assert not any(os.path.exists(r.workdir + ".lock") for r in runs[1:])
    result = report(outdir, runs, verbose=False)
    assert result["missing"] == [os.path.relpath(locked, outdir)]
    assert result["baseline"] is None and result["rows"][1]["delta_m"]["mean"] is None


def test_failed_run_does_not_stop_the_others(tmp_path, fake_fit, capsys):
    outdir = str(tmp_path / "out")
    args = ["compare", "--methods", "pcgrad,ew", "--seeds", "1", "--outdir", outdir, *_sets(TINY)]
    assert main(args) == 1
    err = capsys.readouterr().err
    failed = os.path.join(outdir, "runs", "pcgrad", "seed0")
    assert f"FAILED in {failed}: RuntimeError: boom" in err
    assert f"1 run(s) failed: {failed}" in err
    assert os.path.isfile(os.path.join(outdir, "runs", "ew", "seed0", "summary.json"))
    with open(os.path.join(failed, "train.log")) as f:
        assert "RuntimeError: boom" in f.read()
    assert not os.path.exists(failed + ".lock")
    with open(os.path.join(outdir, "compare.json")) as f:
        rows = {r["method"]: r for r in json.load(f)["rows"]}
    assert rows["pcgrad"]["n"] == 0 and rows["ew"]["n"] == 1


def test_finished_run_with_another_config_is_refused(tmp_path, fake_fit):
    outdir = str(tmp_path)
    compare(None, ["ew"], 1, outdir, overrides=TINY, verbose=False)
    n = len(fake_fit)
    with pytest.raises(ConfigError, match=r"--outdir: .*model.hidden_size: 4 vs 8"):
        compare(None, ["ew"], 1, outdir, overrides=[*TINY, "model.hidden_size=8"], verbose=False)
    assert len(fake_fit) == n
    # Cosmetic keys may change; more seeds extend the comparison.
    compare(None, ["ew"], 2, outdir, overrides=[*TINY, "logging.plots=true"], verbose=False)
    assert len(fake_fit) == n + 3


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--methods", "ew,nope"], "--methods"),
        (["--methods", "ew,equal"], "--methods"),
        (["--methods", "ew,"], "--methods"),
        (["--seeds", "0"], "--seeds"),
        (["--jobs", "0"], "--jobs"),
        (["--shard", "3/2"], "--shard"),
        (["--shard", "a"], "--shard"),
        (["--split", "dev"], "--split"),
        (["--metrics", "acc"], "--metrics"),
        (["--set", "model.hidden_size=0"], "model.hidden_size"),
        (["--set", "tasks.include=[nope]"], "tasks.include"),
    ],
)
def test_bad_flags_exit_2_before_training(args, flag, tmp_path, fake_fit, capsys):
    outdir = tmp_path / "out"
    base = ["compare", "--outdir", str(outdir), *_sets(TINY)]
    if "--methods" not in args:
        base += ["--methods", "ew"]
    code = main([*base, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and flag in err, err
    assert fake_fit == [] and not (outdir / "runs").exists()


def test_unknown_method_lists_the_registry(tmp_path):
    with pytest.raises(ConfigError, match=r"--methods: unknown method 'nope'.*pcgrad.*uw"):
        compare(None, ["ew", "nope"], 1, tmp_path, overrides=TINY, verbose=False)
    with pytest.raises(ConfigError, match="plan.json"):
        compare(None, None, None, tmp_path, report_only=True, verbose=False)


# --------------------------------------------------------------------------------------------
# The report on hand-written summaries.
# --------------------------------------------------------------------------------------------


def _write(outdir, name, seed, ev, step_ms=1.0, split="test", task=None):
    workdir = os.path.join(outdir, "runs", name, f"seed{seed}")
    os.makedirs(workdir)
    summary = {"eval": {split: ev}, "throughput": {"step_time_ms_median": step_ms}}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f)
    method = "equal" if task or name == "ew" else name
    return Run(name=name, method=method, seed=seed, workdir=workdir, overrides=(), task=task)


def _hand_written(outdir):
    # Task a: accuracy and macro_f1 (higher is better); task b: mse (lower is better).
    # Baselines (means over seeds 0, 1): a/accuracy (0.8 + 0.6)/2 = 0.7,
    # a/macro_f1 (0.5 + 0.5)/2 = 0.5, b/mse (0.2 + 0.4)/2 = 0.3.
    runs = [
        _write(
            outdir, "single-a", 0, {"a": {"accuracy": 0.8, "macro_f1": 0.5, "count": 9}}, task="a"
        ),
        _write(
            outdir, "single-a", 1, {"a": {"accuracy": 0.6, "macro_f1": 0.5, "count": 9}}, task="a"
        ),
        _write(outdir, "single-b", 0, {"b": {"mse": 0.2, "count": 3}}, task="b"),
        _write(outdir, "single-b", 1, {"b": {"mse": 0.4, "count": 3}}, task="b"),
    ]
    # ew seed 0: relative changes a/acc +0.1, a/f1 +0.1, b/mse -0.1 (all better):
    #   Δm = 100/3 (-0.1 - 0.1 - 0.1) = -10;  Δp = 100/2 ((0.1 + 0.1)/2 + 0.1) = +10.
    # ew seed 1: a/acc 0, a/f1 -0.2, b/mse +0.2:
    #   Δm = 100/3 (0 + 0.2 + 0.2) = 13.333...;  Δp = 100/2 ((0 - 0.2)/2 - 0.2) = -15.
    runs += [
        _write(
            outdir, "ew", 0, {"a": {"accuracy": 0.77, "macro_f1": 0.55}, "b": {"mse": 0.27}}, 10.0
        ),
        _write(
            outdir, "ew", 1, {"a": {"accuracy": 0.70, "macro_f1": 0.40}, "b": {"mse": 0.36}}, 30.0
        ),
    ]
    # uw: only seed 0 finished: a/acc +0.2, a/f1 0, b/mse 0 -> Δm = 100/3 (-0.2) = -6.667,
    # Δp = 100/2 (0.2/2 + 0) = +5; std 0 with one seed.
    runs.append(
        _write(outdir, "uw", 0, {"a": {"accuracy": 0.84, "macro_f1": 0.5}, "b": {"mse": 0.3}})
    )
    runs.append(Run("uw", "uw", 1, os.path.join(outdir, "runs", "uw", "seed1"), ()))
    return runs


def test_report_matches_hand_computed_numbers(tmp_path):
    outdir = str(tmp_path)
    result = report(outdir, _hand_written(outdir), config_path="c.yaml", verbose=False)
    rows = {r["method"]: r for r in result["rows"]}
    assert result["baseline"] == {
        "a": {"accuracy": pytest.approx(0.7), "macro_f1": pytest.approx(0.5)},
        "b": {"mse": pytest.approx(0.3)},
    }
    ew = rows["ew"]
    assert ew["delta_m"]["per_seed"] == {"0": pytest.approx(-10.0), "1": pytest.approx(40 / 3)}
    assert ew["delta_p"]["per_seed"] == {"0": pytest.approx(10.0), "1": pytest.approx(-15.0)}
    # mean ± sample std of (-10, 13.333): 1.6667 ± 23.333/sqrt(2); of (10, -15): -2.5 ± 25/sqrt(2)
    assert ew["delta_m"]["mean"] == pytest.approx(5 / 3)
    assert ew["delta_m"]["std"] == pytest.approx((70 / 3) / math.sqrt(2))
    assert ew["delta_p"]["mean"] == pytest.approx(-2.5)
    assert ew["delta_p"]["std"] == pytest.approx(25 / math.sqrt(2))
    # a/accuracy over seeds: (0.77, 0.70) -> 0.735 ± 0.07/sqrt(2); step: median(10, 30) = 20.
    assert ew["scores"]["a"]["accuracy"]["mean"] == pytest.approx(0.735)
    assert ew["scores"]["a"]["accuracy"]["std"] == pytest.approx(0.07 / math.sqrt(2))
    assert ew["step_time_ms"] == pytest.approx(20.0)
    uw = rows["uw"]
    assert uw["n"] == 1 and uw["seeds"] == [0]
    assert (uw["delta_m"]["mean"], uw["delta_m"]["std"]) == pytest.approx((-20 / 3, 0.0))
    assert (uw["delta_p"]["mean"], uw["delta_p"]["std"]) == pytest.approx((5.0, 0.0))
    assert result["missing"] == [os.path.join("runs", "uw", "seed1")]
    # The baselines against their own mean: 0 on average; seed 0 is
    # 100/3 (-(0.8-0.7)/0.7 - 0 + (0.2-0.3)/0.3) = -100/3 (1/7 + 1/3), seed 1 its negative.
    single = rows["single-task"]
    assert single["delta_m"]["mean"] == 0.0 and single["n"] == 2
    assert single["delta_m"]["std"] == pytest.approx(100 / 3 * (1 / 7 + 1 / 3) * math.sqrt(2))
    assert single["scores"]["b"]["mse"]["mean"] == pytest.approx(0.3)

    with open(os.path.join(outdir, "compare.md")) as f:
        md = f.read()
    assert "config: `c.yaml`; split: test; seeds: 0, 1" in md
    assert "| ew | 2 | 0.7350 ± 0.0495 | 0.4750 ± 0.1061 | 0.3150 ± 0.0636 | +1.67 ± 16.50 " in md
    assert "| -2.50 ± 17.68 | 20.0 |" in md
    assert "not finished (1): runs/uw/seed1" in md
    with open(os.path.join(outdir, "compare.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["single-task", "ew", "uw"]
    assert float(table[1]["delta_p_std"]) == pytest.approx(25 / math.sqrt(2))
    assert float(table[2]["a/accuracy_mean"]) == pytest.approx(0.84)
    assert os.path.isfile(os.path.join(outdir, "delta_m.png"))


def test_report_metric_subset_and_split_fallback(tmp_path):
    outdir = str(tmp_path)
    runs = _hand_written(outdir)
    # ew seed 1 evaluated only "dev": the report uses it, with a note.
    path = os.path.join(runs[5].workdir, "summary.json")
    with open(path) as f:
        summary = json.load(f)
    summary["eval"] = {"dev": summary["eval"]["test"]}
    with open(path, "w") as f:
        json.dump(summary, f)
    result = report(outdir, runs, metrics=["accuracy", "mse"], verbose=False)
    assert result["columns"] == ["a/accuracy", "b/mse"]
    assert any("no 'test' split" in n and "used 'dev'" in n for n in result["notes"])
    # Seed 0: 100/2 (-0.1 - 0.1) = -10; seed 1: 100/2 (0 + 0.2) = +10.
    ew = next(r for r in result["rows"] if r["method"] == "ew")
    assert ew["delta_m"]["per_seed"] == {"0": pytest.approx(-10.0), "1": pytest.approx(10.0)}
    with pytest.raises(ConfigError, match="--metrics: unknown metric 'f1'"):
        report(outdir, runs, metrics=["f1"], verbose=False)
