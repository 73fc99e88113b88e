"""Marginal wall time per step of `mtlrnn train`: runs of N and 2N steps, for one or more
source trees (e.g. two commits checked out with `git worktree`), each run its own process.

    python benchmarks/loop_marginal.py --steps 1000 --repeats 2 old=/tmp/old new=.

The difference of the 2N and N wall times over N is the cost of a step as a user lives it
(data, dispatch, logging, the loop), without start-up, compilation and evaluation. Reported
per tree: the wall times of every run and the marginal ms/step from the fastest of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

SMALL = [
    "data.synthetic.max_len=32",
    "data.buckets=[32]",
    "model.embed_dim=32",
    "model.hidden_size=64",
    "train.batch_size=32",
    "checkpoint.enabled=false",
    "logging.progress=false",
    "logging.plots=false",
    "train.log_every=50",
    "train.eval_every=0",
]


def _run(tree: str, steps: int, sets: list[str]) -> float:
    workdir = tempfile.mkdtemp(prefix="loop-marginal-")
    args = [sys.executable, "-m", "mtlrnn.cli", "train", "--workdir", workdir, "--quiet"]
    for item in [*sets, f"train.steps={steps}"]:
        args += ["--set", item]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, cwd=tree, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="name=path of a source tree")
    parser.add_argument("--steps", type=int, default=1000, help="N (the runs are N and 2N)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", nargs="+", default=[], action="extend", help="more overrides")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    sets = SMALL + args.set
    walls: dict[str, dict[int, list[float]]] = {k: {args.steps: [], 2 * args.steps: []}
                                                for k in trees}
    for _ in range(args.repeats):  # trees alternate, so load drift hits each alike
        for name, tree in trees.items():
            for steps in (args.steps, 2 * args.steps):
                walls[name][steps].append(_run(tree, steps, sets))
    for name, runs in walls.items():
        short, long = min(runs[args.steps]), min(runs[2 * args.steps])
        shown = {k: [round(x, 2) for x in v] for k, v in runs.items()}
        print(f"{name}: wall s {shown}; marginal {1e3 * (long - short) / args.steps:.2f} ms/step")


if __name__ == "__main__":
    main()
