"""Throughput peer: PyTorch nn.Embedding + nn.LSTM(batch_first=True) + K nn.Linear, Adam.

--cell gru / rnn use nn.GRU / nn.RNN (tanh) instead of nn.LSTM (cuDNN on GPU for all three);
--dtype bfloat16 runs forward and loss under torch.autocast(bfloat16) with float32
parameters and optimizer (whether the recurrent layer itself runs in bf16 is the autocast
policy's choice: recorded as `trunk_dtype`). Other variant options are unsupported.
On GPU the record has `cuda_max_allocated_bytes` (torch.cuda.max_memory_allocated over the
whole run) and the card's name.
Run: python benchmarks/peers/torch_lstm.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse
import contextlib
from typing import Any

import common

CELLS = ("lstm", "gru", "rnn")


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    common.require(args, "torch_lstm", cell=CELLS, dtype=common.DTYPES)
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    if args.device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("--device gpu but torch.cuda.is_available() is False")
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    recurrent = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[args.cell]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(args.vocab, args.embed)
            self.rnn = recurrent(args.embed, args.hidden, num_layers=args.layers,
                                 batch_first=True)
            self.heads = nn.ModuleList(nn.Linear(args.hidden, c) for c in args.classes)

        def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
            hidden, _ = self.rnn(self.embed(tokens))  # [B, L, H]
            self.trunk_dtype = hidden.dtype
            return [head(hidden) for head in self.heads]  # K x [B, L, C_k]

    model = Net().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = [
        (torch.as_tensor(tokens, dtype=torch.long, device=device),
         [torch.as_tensor(y, dtype=torch.long, device=device).reshape(-1) for y in labels])
        for tokens, labels in batches
    ]
    bf16 = args.dtype == "bfloat16"

    def autocast() -> Any:
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def step(i: int) -> torch.Tensor:
        tokens, labels = data[i % len(data)]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(tokens)
            # Sum over tasks of the mean cross-entropy over all B*L tokens (autocast keeps
            # cross-entropy in float32).
            loss = sum(F.cross_entropy(lo.reshape(-1, lo.shape[-1]), y)
                       for lo, y in zip(logits, labels, strict=True))
        loss.backward()
        optimizer.step()
        return loss

    def sync(loss: torch.Tensor) -> None:
        # CPU kernels run synchronously; on GPU wait for the stream.
        if device.type == "cuda":
            torch.cuda.synchronize()

    extra: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "backend": str(device),
        "module": recurrent.__name__,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else common.cpu_model()),
    }
    if device.type == "cuda":
        extra.update({
            "cudnn": bool(torch.backends.cudnn.enabled),
            "cudnn_version": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        })
        torch.cuda.reset_peak_memory_stats(device)

    def finish() -> dict[str, Any]:
        done = {"trunk_dtype": str(getattr(model, "trunk_dtype", "unknown"))}
        if device.type == "cuda":
            done["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        return done

    return common.Runner(
        step=step,
        sync=sync,
        versions={"torch": torch.__version__},
        extra=extra,
        finish=finish,
    )


if __name__ == "__main__":
    raise SystemExit(common.main("torch_lstm", build))
