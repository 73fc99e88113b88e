"""LibMTL-style baseline: the cost of per-task gradients in PyTorch, one backward per task.

Same model and data as benchmarks/peers/torch_lstm.py (nn.Embedding + nn.LSTM(batch_first)
+ K nn.Linear heads, loss_k = mean token cross-entropy, Adam lr 1e-3), two training steps:

  (a) equal: one backward pass of sum_k loss_k (what torch_lstm.py times);
  (b) per-task loop, as LibMTL's `_compute_grad(mode="backward")`: one forward, then for each
      task `losses[k].backward(retain_graph=True)` (not retained on the last task), the shared
      parameters' gradients (embedding + LSTM) copied into row k of a fresh [K, D] matrix and
      zeroed; the direction is the plain
      sum of the rows, written back into the shared `.grad`s. Head k keeps the gradient of its
      own loss (the other tasks' backward passes do not reach it). Then `optimizer.step()`.

(b) aggregates by the plain sum, so it is exactly (a)'s update: (b) / (a) is the price of
obtaining per-task gradients the LibMTL way, before any weighting method does its own work.
(a) is timed before and after (b); its median pools both passes (`equal_drift` = after /
before). Timing follows common.py.

Run: python benchmarks/peers/torch_pertask.py --classes 17,50,40 [--threads N ...]
Prints one JSON line (see common.py).
"""

import argparse
import os
import platform
import sys
import traceback
from typing import Any

import common
import numpy as np

NAME = "torch_pertask"


def build(args: argparse.Namespace, batches: list) -> dict[str, Any]:
    """The runners of steps (a) and (b), on two identically initialised models."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    device = torch.device("cuda" if args.device == "gpu" else "cpu")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(args.vocab, args.embed)
            self.lstm = nn.LSTM(args.embed, args.hidden, num_layers=args.layers,
                                batch_first=True)
            self.heads = nn.ModuleList(nn.Linear(args.hidden, c) for c in args.classes)

        def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
            hidden, _ = self.lstm(self.embed(tokens))  # [B, L, H]
            return [head(hidden) for head in self.heads]  # K x [B, L, C_k]

    data = [
        (torch.as_tensor(tokens, dtype=torch.long, device=device),
         [torch.as_tensor(y, dtype=torch.long, device=device).reshape(-1) for y in labels])
        for tokens, labels in batches
    ]

    def task_losses(model: Net, i: int) -> list[torch.Tensor]:
        tokens, labels = data[i % len(data)]
        return [F.cross_entropy(lo.reshape(-1, lo.shape[-1]), y)
                for lo, y in zip(model(tokens), labels, strict=True)]

    def sync(value: Any) -> None:
        # CPU kernels run synchronously; on GPU wait for the stream.
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fresh() -> tuple[Net, torch.optim.Optimizer]:
        torch.manual_seed(args.seed)
        model = Net().to(device).train()
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    equal_model, equal_opt = fresh()

    def equal_step(i: int) -> torch.Tensor:
        equal_opt.zero_grad(set_to_none=True)
        loss = sum(task_losses(equal_model, i))
        loss.backward()
        equal_opt.step()
        return loss

    model, optimizer = fresh()
    shared = [*model.embed.parameters(), *model.lstm.parameters()]
    sizes = [p.numel() for p in shared]
    dim = sum(sizes)
    num_tasks = len(args.classes)

    def pertask_step(i: int) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        losses = task_losses(model, i)
        grads = torch.zeros(num_tasks, dim, device=device)  # LibMTL allocates it every step
        for k, loss in enumerate(losses):
            loss.backward(retain_graph=k + 1 < num_tasks)  # LibMTL frees it on the last task
            begin = 0
            for p, size in zip(shared, sizes, strict=True):
                grads[k, begin:begin + size] = p.grad.reshape(-1)
                begin += size
                p.grad.zero_()
        direction = grads.sum(0)  # the aggregator: plain sum, i.e. equal weights
        begin = 0
        for p, size in zip(shared, sizes, strict=True):
            p.grad = direction[begin:begin + size].reshape(p.shape).clone()
            begin += size
        optimizer.step()
        return sum(loss.detach() for loss in losses)

    return {
        "equal": common.Runner(step=equal_step, sync=sync, versions={}),
        "pertask": common.Runner(step=pertask_step, sync=sync, versions={}),
        "shared_dim": dim,
        "versions": {"torch": torch.__version__},
        "extra": {
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "backend": str(device),
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    built = build(args, common.make_batches(args))
    tokens_per_step = args.batch * args.length

    def measure(runner: common.Runner) -> tuple[float, list[float]]:
        return common.time_steps(runner, warmup=args.warmup, repeats=args.repeats)

    first_equal, before = measure(built["equal"])
    first_pertask, pertask = measure(built["pertask"])
    _, after = measure(built["equal"])
    equal = common.summarize(before + after, tokens_per_step)
    loop = common.summarize(pertask, tokens_per_step)
    return {
        "peer": NAME,
        "ok": True,
        "tasks": len(args.classes),
        "shared_dim": built["shared_dim"],
        "equal": {**equal, "compile_or_first_step_s": first_equal,
                  "step_ms": [t * 1e3 for t in before + after]},
        "pertask": {**loop, "compile_or_first_step_s": first_pertask,
                    "step_ms": [t * 1e3 for t in pertask]},
        "ratio": loop["step_ms_median"] / equal["step_ms_median"],
        "equal_drift": float(np.median(after) / np.median(before)),
        "threads": args.threads,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     **built["versions"]},
        **built["extra"],
    }


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(argv)
    os.environ.update(common.thread_env(args.threads, args.device))  # before importing torch
    config = common.config_of(args)
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # stdout carries the JSON line only
    try:
        record = run(args)
    except ModuleNotFoundError as err:
        sys.stdout = real_stdout
        common.emit(common.failure(NAME, f"{err.name} not installed", config=config))
        return 0
    except Exception as err:
        traceback.print_exc()
        sys.stdout = real_stdout
        common.emit(common.failure(NAME, f"{type(err).__name__}: {err}", config=config))
        return 1
    sys.stdout = real_stdout
    common.emit({**record, "config": config})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
