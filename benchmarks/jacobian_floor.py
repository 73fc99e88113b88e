"""How much of a gradient method's step is the per-task Jacobian itself?

Times, in one process on the reference config of benchmarks/throughput.py with K token
tasks: the equal-weights step, and the step of a plain-sum aggregator (direction = sum of the
task gradients, i.e. the same update as equal weights) in gradient modes `full` and
`gramian`, plus one real method. The plain-sum ratios are the floor any gradient method pays
in that mode on this machine.

    python benchmarks/jacobian_floor.py [--tasks 3] [--method pcgrad] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtlrnn
from mtlrnn.weighting.base import gradient_strategy


def plain_sum() -> mtlrnn.weighting.Strategy:
    """Direction = sum of task gradients; from_gram weights = ones (the equal update)."""

    def combine(state, losses, grads, key):
        return jnp.sum(grads, axis=0), state, {"weights": jnp.ones_like(losses)}

    def from_gram(state, losses, gram, key=None):
        return jnp.ones_like(losses), state, {"weights": jnp.ones_like(losses)}

    return gradient_strategy("plain_sum", lambda k: (), combine, from_gram=from_gram)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    classes = [(17, 50, 40)[k % 3] for k in range(args.tasks)]
    b, length, vocab = 32, 64, 5000
    tasks = tuple(
        mtlrnn.TaskSpec(f"t{k}", "token", "classification", num_classes=c)
        for k, c in enumerate(classes)
    )
    spec = mtlrnn.ModelConfig(embed_dim=128, hidden_size=256, bidirectional=False, dropout=0.0)
    model = mtlrnn.MultiTaskRNN(tasks=tasks, spec=spec, vocab_size=vocab)
    rng = np.random.default_rng(0)
    batch = {
        "inputs": jnp.asarray(rng.integers(0, vocab, (b, length)), jnp.int32),
        "lengths": jnp.full((b,), length, jnp.int32),
        "labels": {t.name: jnp.asarray(rng.integers(0, t.num_classes, (b, length)), jnp.int32)
                   for t in tasks},
    }
    tx = optax.adam(1e-3)

    def median_ms(strategy, mode):
        state = mtlrnn.create_train_state(model, tx, strategy, batch, seed=0)
        step = jax.jit(mtlrnn.make_train_step(model, tx, strategy, grad_mode=mode),
                       donate_argnums=0)
        for _ in range(3):
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    for r in range(args.rounds):
        eq = median_ms(mtlrnn.weighting.get("equal"), "full")
        rows = {
            "plain-sum full": median_ms(plain_sum(), "full"),
            "plain-sum gramian": median_ms(plain_sum(), "gramian"),
            f"{args.method} full": median_ms(mtlrnn.weighting.get(args.method), "full"),
        }
        text = "  ".join(f"{k} {v:.1f} ms ({v / eq:.2f}x)" for k, v in rows.items())
        print(f"round {r + 1}, K={args.tasks}: equal {eq:.1f} ms  {text}", flush=True)


if __name__ == "__main__":
    main()
