"""``mtlrnn compare`` keeps to the directory it was given, writes atomically, lets a lock
expire with its holder, and gives each job its own accelerators.

Training is replaced by a stub of ``mtlrnn.training.run.fit`` (or of the ``mtlrnn train``
subprocess) that writes a summary, so every test runs in a second or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from mtlrnn import accelerators
from mtlrnn import compare as compare_module
from mtlrnn.compare import assign_devices
from mtlrnn.compare import compare
from mtlrnn.compare import execute
from mtlrnn.compare import path_component
from mtlrnn.compare import plan_runs
from mtlrnn.config import ConfigError
from mtlrnn.config import dump_yaml
from mtlrnn.config import load_config
from mtlrnn.training import run as run_module
from mtlrnn.training import runlock

# As tests/test_compare.py: the smallest synthetic config (never trained here).
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
    "train.steps=2",
    "train.eval_splits=[test]",
    "logging.progress=false",
    "logging.plots=false",
    "checkpoint.enabled=false",
    "tasks.include=[tag0,seq_value]",
]


def _summary(cfg) -> dict:
    tasks = cfg.tasks.include or ("tag0", "seq_value")
    ev = {t: {"accuracy": 0.5 + 0.01 * cfg.train.seed + 0.01 * i} for i, t in enumerate(tasks)}
    return {"eval": {"test": ev}, "throughput": {"step_time_ms_median": 1.0}}


@pytest.fixture
def fake_fit(monkeypatch):
    """``mtlrnn.training.run.fit`` that writes config.yaml and a summary; records the workdirs."""
    calls = []

    def fit(cfg, workdir, *, verbose=True):
        workdir = os.fspath(workdir)
        calls.append(workdir)
        if cfg.weighting.name == "pcgrad":
            raise RuntimeError("boom")
        os.makedirs(workdir, exist_ok=True)
        dump_yaml(cfg, os.path.join(workdir, "config.yaml"))
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(_summary(cfg), f)

    monkeypatch.setattr(run_module, "fit", fit)
    return calls


def _files(root):
    return {
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, names in os.walk(root)
        for n in names + dirs
    }


# --------------------------------------------------------------------------------------------
# Names become safe path components; nothing is written outside --outdir.
# --------------------------------------------------------------------------------------------

ODD = ["../../escape", "../../../../escape", "..", ".", "a/b", "a\\b", "a\x00b", "ü b%", "x" * 300]


@pytest.mark.parametrize("name", ODD)
def test_path_component_is_one_safe_reversible_name(name):
    got = path_component(f"single-{name}")
    assert not set(got) & set("/\\\x00 ") and got not in (".", "..")
    assert not got.startswith(".") and not got.endswith(".") and 0 < len(got) <= 120
    if len(name) < 100:
        assert urllib.parse.unquote(got) == f"single-{name}"
    assert path_component(name) == path_component(name)  # deterministic


def test_path_components_of_distinct_names_are_distinct():
    names = [*ODD, "a%2Fb", "x" * 299, "x" * 300 + "y", "A", "ab.", "ab", ".ab", "%2Eab"]
    assert len({path_component(n) for n in names}) == len(names)
    assert path_component("tag0") == "tag0" and path_component("single-seq_value.2") == (
        "single-seq_value.2"
    )
    with pytest.raises(ValueError, match="name"):
        path_component("")


def _columns_data(root, names):
    """Column files with one label column per task name: word, then one column per task."""
    os.makedirs(root, exist_ok=True)
    lines = []
    for i in range(12):
        lines += [f"w{i % 5} " + " ".join(f"L{(i + k) % 3}" for k in range(len(names))), ""]
    for split in ("train", "test"):
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines))
    tasks = ", ".join(f"{json.dumps(n)}: {k + 1}" for k, n in enumerate(names))
    return [
        "data.source=columns",
        f"data.columns.files={{train: {root}/train.txt, test: {root}/test.txt}}",
        f"data.columns.tasks={{{tasks}}}",
        "train.eval_splits=[test]",
        "model.hidden_size=4",
        "model.embed_dim=4",
        "train.steps=2",
        "logging.progress=false",
        "logging.plots=false",
        "checkpoint.enabled=false",
    ]


def test_columns_task_names_never_leave_outdir(tmp_path, fake_fit):
    # Taken as a path, "runs/single-../../../../escape" is a/b/c/escape, outside outdir
    # (the old code wrote a whole run there) and "t\x00x" cannot be a file name at all.
    names = ["../../escape", "../../../../escape", "a/b", "..", "t\x00x", "y" * 300]
    overrides = _columns_data(str(tmp_path / "data"), names)
    outdir = tmp_path / "a" / "b" / "c" / "out"
    before = _files(tmp_path)
    result = compare(None, ["ew"], 1, outdir, overrides=overrides, verbose=False)
    assert result["failed"] == []
    created = _files(tmp_path) - before - {"a", os.path.join("a", "b"), os.path.join("a", "b", "c")}
    assert created and all(p.startswith(os.path.join("a", "b", "c", "out")) for p in created)
    runs_dir = outdir / "runs"
    assert sorted(os.listdir(runs_dir)) == sorted(
        [path_component(f"single-{n}") for n in names] + ["ew"]
    )
    # The report and the plan keep the real names.
    assert result["tasks"] == names and result["baseline"] is not None
    with open(outdir / "plan.json") as f:
        plan = json.load(f)
    assert [r["task"] for r in plan["runs"][: len(names)]] == names
    assert json.dumps(names[0])[1:-1] + "/accuracy" in (outdir / "compare.md").read_text()
    # Every fit went to a workdir inside outdir.
    assert all(os.path.realpath(w).startswith(os.path.realpath(outdir) + os.sep) for w in fake_fit)


def test_empty_task_name_is_refused_in_one_line(tmp_path, fake_fit, capsys):
    from mtlrnn.cli import main

    args = ["compare", "--methods", "ew", "--seeds", "1", "--outdir", str(tmp_path / "out")]
    for item in _columns_data(str(tmp_path / "data"), [""]):
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "task name must be a non-empty string" in err
    assert fake_fit == [] and not (tmp_path / "out").exists()


def test_names_equal_but_for_case_are_refused(tmp_path, fake_fit):
    overrides = _columns_data(str(tmp_path / "data"), ["POS", "pos"])
    with pytest.raises(ConfigError, match=r"'POS' and 'pos' would share the directory"):
        compare(None, ["ew"], 1, tmp_path / "out", overrides=overrides, verbose=False)
    assert fake_fit == [] and not (tmp_path / "out").exists()


def test_runs_dir_that_leads_outside_outdir_is_refused(tmp_path, fake_fit):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    os.symlink(elsewhere, outdir / "runs")
    with pytest.raises(ConfigError, match="--outdir: .* outside "):
        compare(None, ["ew"], 1, outdir, overrides=TINY, verbose=False)
    assert fake_fit == [] and os.listdir(elsewhere) == []


def test_plan_json_pointing_outside_outdir_is_refused(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    run = {"name": "ew", "method": "equal", "seed": 0, "overrides": [], "task": None}
    plan = {"config_path": None, "runs": [{**run, "workdir": "../victim/seed0"}]}
    (outdir / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ConfigError, match="outside"):
        compare(None, None, None, outdir, report_only=True, verbose=False)


# --------------------------------------------------------------------------------------------
# Files written for the user: temporary file, then an atomic rename.
# --------------------------------------------------------------------------------------------


def test_report_files_never_write_through_a_planted_temporary_name(tmp_path, fake_fit):
    # The old writer used "<file>.<pid>.tmp": a symlink planted there sent the report into
    # whatever file it pointed to.
    outdir = tmp_path / "out"
    outdir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's data\n")
    names = ("plan.json", "compare.md", "compare.csv", "compare.json", "delta_m.png")
    for name in names:
        os.symlink(victim, outdir / f"{name}.{os.getpid()}.tmp")
    compare(None, ["ew"], 1, outdir, overrides=TINY, verbose=False)
    assert victim.read_text() == "the user's data\n"
    for name in names:
        assert (outdir / name).is_file() and not (outdir / name).is_symlink(), name
    assert not [n for n in os.listdir(outdir) if n.endswith(".tmp") and n.startswith(".")]


def test_train_log_replaces_a_symlink_instead_of_following_it(tmp_path, fake_fit):
    outdir = tmp_path / "out"
    workdir = outdir / "runs" / "pcgrad" / "seed0"
    workdir.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's data\n")
    os.symlink(victim, workdir / "train.log")
    result = compare(None, ["pcgrad"], 1, outdir, overrides=TINY, verbose=False)
    assert result["failed"] == [str(workdir)]
    assert victim.read_text() == "the user's data\n"
    assert not (workdir / "train.log").is_symlink()
    assert "RuntimeError: boom" in (workdir / "train.log").read_text()


# --------------------------------------------------------------------------------------------
# Locks expire with their holder.
# --------------------------------------------------------------------------------------------


def _one_run(tmp_path):
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew"], 1, tmp_path, overrides=TINY)
    run = runs[-1]
    os.makedirs(os.path.dirname(run.workdir), exist_ok=True)
    return run


def _write_lock(run, *, mtime=None, **holder):
    record = {
        "version": 1,
        "nonce": "someone-else",
        **runlock._host_identity(),
        "pid": os.getpid(),
        "start": None,
        "child": None,
        "since": time.time(),
        "lease_s": 300.0,
        **holder,
    }
    path = run.workdir + ".lock"
    with open(path, "w") as f:
        json.dump(record, f)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid runs nothing (until the system reuses it)
    return child.pid


def test_lock_of_a_dead_process_is_taken_over_and_the_run_resumed(tmp_path, fake_fit, capsys):
    run = _one_run(tmp_path)
    lock = _write_lock(run, pid=_dead_pid())
    os.makedirs(run.workdir)  # what the killed holder left: no summary.json
    assert execute([run], verbose=True) == []
    err = capsys.readouterr().err
    assert "took over a stale lock" in err and "is no longer running" in err
    assert "interrupted); resuming" in err and "1 trained" in err
    assert fake_fit == [run.workdir] and not os.path.exists(lock)


def test_lock_of_an_earlier_version_left_by_a_killed_process_is_taken_over(tmp_path, fake_fit):
    run = _one_run(tmp_path)
    path = run.workdir + ".lock"
    with open(path, "w") as f:
        f.write("pid 12345 host somewhere since 1700000000\n")
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert execute([run], verbose=False) == []
    assert fake_fit == [run.workdir] and not os.path.exists(path)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc start times")
def test_lock_of_a_recycled_pid_is_taken_over(tmp_path, fake_fit):
    # The pid runs (it is this very process) but started at another time: not the holder.
    run = _one_run(tmp_path)
    _write_lock(run, pid=os.getpid(), start="1")
    assert execute([run], verbose=False) == []
    assert fake_fit == [run.workdir]


@pytest.mark.parametrize("who", ["holder", "child"])
def test_lock_of_a_live_holder_is_respected(tmp_path, fake_fit, capsys, who):
    run = _one_run(tmp_path)
    live = runlock._process_record(os.getpid())
    if who == "holder":
        lock = _write_lock(run, mtime=time.time() - 3600, **live)
    else:  # the compare process died but its training subprocess still runs
        lock = _write_lock(run, mtime=time.time() - 3600, pid=_dead_pid(), child=live)
    assert execute([run], verbose=True) == []
    err = capsys.readouterr().err
    assert "another process holds" in err and "(running)" in err and "1 skipped (locked)" in err
    assert fake_fit == [] and os.path.exists(lock)


def test_lease_of_another_host(tmp_path, fake_fit, capsys, monkeypatch):
    run = _one_run(tmp_path)
    elsewhere = {"host": "elsewhere", "boot_id": "b", "pidns": "p", "pid": 1}
    lock = _write_lock(run, **elsewhere)  # renewed just now
    assert execute([run], verbose=True) == []
    assert "renewed 0 s ago (lease 300 s)" in capsys.readouterr().err and fake_fit == []
    _write_lock(run, mtime=time.time() - 400, **elsewhere)
    assert execute([run], lock_lease_s=1000, verbose=False) == [] and fake_fit == []
    monkeypatch.setenv("MTLRNN_LOCK_LEASE_S", "500")
    assert execute([run], verbose=False) == [] and fake_fit == []
    monkeypatch.delenv("MTLRNN_LOCK_LEASE_S")
    assert execute([run], verbose=True) == []  # 400 s > the default lease of 300 s
    err = capsys.readouterr().err
    assert "took over a stale lock: pid 1 on elsewhere has not renewed it for 400 s" in err
    assert fake_fit == [run.workdir] and not os.path.exists(lock)
    with pytest.raises(ConfigError, match="lock_lease_s: must be a number of seconds > 0"):
        execute([run], lock_lease_s=0)
    monkeypatch.setenv("MTLRNN_LOCK_LEASE_S", "soon")
    with pytest.raises(ConfigError, match="MTLRNN_LOCK_LEASE_S"):
        execute([run])


def test_holder_renews_its_lease_while_it_runs(tmp_path, monkeypatch):
    path = str(tmp_path / "run.lock")
    lock, notes = runlock.acquire(path, lease_s=1.0)  # renewed every 0.25 s
    assert lock is not None and notes == []
    # Seen from another host, only the lease can tell that the holder lives.
    here = runlock._host_identity()
    monkeypatch.setattr(runlock, "_host_identity", lambda: {**here, "host": "other"})
    try:
        first = os.stat(path).st_mtime
        for _ in range(8):
            time.sleep(0.25)
            snap = runlock._snapshot(path)
            info = runlock._lock_info(snap[2])
            stale, _ = runlock._lock_state(info, snap[1], 1.0, time.time())
            assert not stale
        assert os.stat(path).st_mtime > first
        assert runlock.acquire(path, lease_s=1.0)[0] is None
    finally:
        lock.release()
    assert not os.path.exists(path)


def test_two_processes_taking_over_one_stale_lock_leave_one_holder(tmp_path):
    # Threads stand in for processes (each acquire makes its own lock record); repeated so
    # that the renames and exclusive links interleave in different orders.
    for attempt in range(25):
        path = str(tmp_path / f"r{attempt}.lock")
        with open(path, "w") as f:
            json.dump({"nonce": "dead", "host": "elsewhere", "pid": 1}, f)
        os.utime(path, (0, 0))
        barrier = threading.Barrier(6)
        won = []

        def contend(path=path, barrier=barrier, won=won):
            barrier.wait()
            lock, _ = runlock.acquire(path, lease_s=60)
            if lock is not None:
                won.append(lock)

        threads = [threading.Thread(target=contend) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, attempt
        assert runlock._lock_info(open(path).read())["nonce"] == won[0].record["nonce"]
        won[0].release()
        assert [n for n in os.listdir(tmp_path) if "stale" in n] == []


_CONTENDER = """
import sys, time
from mtlrnn.training.runlock import acquire as _acquire
path, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
lock, notes = _acquire(path, lease_s=60)
print("won" if lock else "lost", flush=True)
if lock:
    time.sleep(max(0.0, start + 2.0 - time.time()))  # hold it while the others look
    lock.release()
"""


def test_processes_taking_over_one_stale_lock_leave_one_holder(tmp_path):
    path = str(tmp_path / "run.lock")
    with open(path, "w") as f:
        json.dump({"nonce": "dead", "host": "elsewhere", "pid": 1}, f)
    os.utime(path, (0, 0))
    root = os.path.dirname(os.path.dirname(os.path.abspath(compare_module.__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    start = time.time() + 3.0  # all four have imported by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, path, str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["lost", "lost", "lost", "won"]
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Accelerators per job.
# --------------------------------------------------------------------------------------------


def test_assign_devices():
    ids = ["0", "1", "2", "3"]
    assert assign_devices(ids, 2) == [["0", "1"], ["2", "3"]]
    assert assign_devices(ids, 3) == [["0", "1"], ["2"], ["3"]]
    assert assign_devices(ids, 4) == [["0"], ["1"], ["2"], ["3"]]
    assert assign_devices(["a", "b"], 3) == [["a"], ["b"], ["a"]]  # shared round-robin
    assert assign_devices([], 2) == [[], []]
    # TPU chips: disjoint groups of 1, 2 or 4, never shared.
    assert assign_devices(ids, 2, shareable=False) == [["0", "1"], ["2", "3"]]
    assert assign_devices([str(i) for i in range(6)], 2, shareable=False) == [
        ["0", "1"],
        ["2", "3"],
    ]
    assert assign_devices([str(i) for i in range(8)], 2, shareable=False) == [
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
    ]
    assert assign_devices(["0", "1"], 4, shareable=False) == [["0"], ["1"]]


def test_visible_accelerators_without_starting_jax(monkeypatch):
    visible = accelerators.visible_accelerators
    monkeypatch.setattr(accelerators, "jax_plugins", lambda: frozenset({"cuda"}))
    assert visible({"CUDA_VISIBLE_DEVICES": "2, 5,GPU-ab"}) == ("cuda", ["2", "5", "GPU-ab"])
    assert visible({"CUDA_VISIBLE_DEVICES": ""}) == ("", [])
    assert visible({"CUDA_VISIBLE_DEVICES": "-1"}) == ("", [])
    assert visible({"CUDA_VISIBLE_DEVICES": "0,1", "JAX_PLATFORMS": "cpu"}) == ("", [])
    monkeypatch.setattr(accelerators, "jax_plugins", lambda: frozenset())
    assert visible({"CUDA_VISIBLE_DEVICES": "0,1"}) == ("", [])  # a CPU-only jax
    monkeypatch.setattr(accelerators, "jax_plugins", lambda: frozenset({"tpu"}))
    assert visible({"TPU_VISIBLE_CHIPS": "1,3"}) == ("tpu", ["1", "3"])
    listing = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaa)\n"
        "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbb)\n"
        "  MIG 3g.20gb     Device  0: (UUID: MIG-ccc)\n"
        "  MIG 3g.20gb     Device  1: (UUID: MIG-ddd)\n"
    )
    assert accelerators.nvidia_ids(listing) == ["0", "MIG-ccc", "MIG-ddd"]


class _FakePopen:
    """``mtlrnn train`` as a subprocess: records its environment, writes a summary."""

    envs: list = []
    running: set = set()
    overlaps: list = []
    lock = threading.Lock()

    def __init__(self, cmd, *, stdout, stderr, env):
        self.workdir = cmd[cmd.index("--workdir") + 1]
        self.cmd = cmd
        self.pid = os.getpid()
        self.env = env
        key = env.get("CUDA_VISIBLE_DEVICES") or env.get("TPU_VISIBLE_CHIPS") or ""
        with self.lock:
            self.envs.append(env)
            mine = set(key.split(",")) - {""}
            self.overlaps += [r for r in self.running if set(r.split(",")) & mine]
            self.running.add(key)
        self.key = key
        stdout.write("{}\n")

    def wait(self):
        time.sleep(0.05)
        sets = dict(
            a.split("=", 1) for a in self.cmd[self.cmd.index("--workdir"):] if "=" in a
        )
        count, first = int(sets.get("train.num_seeds", 1)), int(sets.get("train.seed", 0))
        # A population writes each seed's run into <workdir>/seed<seed>.
        where = [self.workdir] if count == 1 else [
            os.path.join(self.workdir, f"seed{s}") for s in range(first, first + count)
        ]
        for workdir in where:
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "summary.json"), "w") as f:
                json.dump({"eval": {"test": {"tag0": {"accuracy": 0.5}}}}, f)
        with self.lock:
            self.running.discard(self.key)
        return 0

    def kill(self):
        pass


@pytest.fixture
def fake_popen(monkeypatch):
    _FakePopen.envs, _FakePopen.running, _FakePopen.overlaps = [], set(), []
    monkeypatch.setattr(compare_module.subprocess, "Popen", _FakePopen)
    return _FakePopen


def test_jobs_get_disjoint_gpus(tmp_path, fake_popen, monkeypatch, capsys):
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew", "uw"], 2, tmp_path, overrides=TINY)  # 8 runs
    monkeypatch.setattr(
        compare_module, "visible_accelerators", lambda env: ("cuda", ["0", "1", "2", "3"])
    )
    assert execute(runs, jobs=2, verbose=True, vectorize=False) == []
    assert "GPUs per job: 0,1 | 2,3" in capsys.readouterr().err
    assert len(fake_popen.envs) == 8 and fake_popen.overlaps == []
    assert {e["CUDA_VISIBLE_DEVICES"] for e in fake_popen.envs} == {"0,1", "2,3"}
    assert all(e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for e in fake_popen.envs)
    # Each run's lock recorded its training subprocess while it ran; none is left.
    assert not any(os.path.exists(r.workdir + ".lock") for r in runs)


def test_more_jobs_than_gpus_share_them_and_say_so(tmp_path, fake_popen, monkeypatch, capsys):
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew"], 2, tmp_path, overrides=TINY)  # 6 runs
    monkeypatch.setattr(compare_module, "visible_accelerators", lambda env: ("cuda", ["7", "9"]))
    assert execute(runs, jobs=3, verbose=False, vectorize=False) == []
    assert "only 2 GPU(s); jobs share them round-robin (7, 9)" in capsys.readouterr().err
    assert {e["CUDA_VISIBLE_DEVICES"] for e in fake_popen.envs} <= {"7", "9"}


def test_tpu_chips_are_never_shared(tmp_path, fake_popen, monkeypatch, capsys):
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew"], 2, tmp_path, overrides=TINY)  # 6 runs
    monkeypatch.setattr(compare_module, "visible_accelerators", lambda env: ("tpu", ["0", "1"]))
    assert execute(runs, jobs=4, verbose=False, vectorize=False) == []
    assert "cannot be shared between processes; running 2 job(s) at a time" in (
        capsys.readouterr().err
    )
    assert fake_popen.overlaps == []
    envs = fake_popen.envs
    assert {e["TPU_VISIBLE_CHIPS"] for e in envs} == {"0", "1"}
    assert {e["TPU_CHIPS_PER_PROCESS_BOUNDS"] for e in envs} == {"1,1,1"}
    assert len({e["TPU_PROCESS_PORT"] for e in envs}) == 2


def test_jobs_train_each_method_as_one_population(tmp_path, fake_popen, monkeypatch, capsys):
    # Vectorized (the default): one subprocess per method and baseline, its seeds together.
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew", "uw"], 2, tmp_path, overrides=TINY)  # 8 runs
    monkeypatch.setattr(
        compare_module, "visible_accelerators", lambda env: ("cuda", ["0", "1", "2", "3"])
    )
    assert execute(runs, jobs=2, verbose=True) == []
    assert "runs: 8 trained" in capsys.readouterr().err
    assert len(fake_popen.envs) == 4 and fake_popen.overlaps == []
    assert all(os.path.isfile(os.path.join(r.workdir, "summary.json")) for r in runs)
    assert not any(os.path.exists(r.workdir + ".lock") for r in runs)
    logs = sorted(os.listdir(os.path.dirname(runs[-1].workdir)))
    assert "train-seed0-2.log" in logs


def test_cpu_jobs_keep_the_environment(tmp_path, fake_popen, monkeypatch):
    cfg = load_config(None, TINY)
    runs = plan_runs(cfg, None, ["ew"], 1, tmp_path, overrides=TINY)
    monkeypatch.setattr(compare_module, "visible_accelerators", lambda env: ("", []))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert execute(runs, jobs=2, verbose=False) == []
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in fake_popen.envs)
