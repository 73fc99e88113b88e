"""Throughput peer: PyTorch nn.Embedding + nn.LSTM(batch_first=True) + K nn.Linear, Adam.

Run: python benchmarks/peers/torch_lstm.py [--batch 32 --length 64 ... --threads N]
Prints one JSON line (see common.py).
"""

import argparse

import common


def build(args: argparse.Namespace, batches: list) -> common.Runner:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
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

    model = Net().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = [
        (torch.as_tensor(tokens, dtype=torch.long, device=device),
         [torch.as_tensor(y, dtype=torch.long, device=device).reshape(-1) for y in labels])
        for tokens, labels in batches
    ]

    def step(i: int) -> torch.Tensor:
        tokens, labels = data[i % len(data)]
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens)
        # Sum over tasks of the mean cross-entropy over all B*L tokens.
        loss = sum(F.cross_entropy(lo.reshape(-1, lo.shape[-1]), y)
                   for lo, y in zip(logits, labels, strict=True))
        loss.backward()
        optimizer.step()
        return loss

    def sync(loss: torch.Tensor) -> None:
        # CPU kernels run synchronously; on GPU wait for the stream.
        if device.type == "cuda":
            torch.cuda.synchronize()

    return common.Runner(
        step=step,
        sync=sync,
        versions={"torch": torch.__version__},
        extra={
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "backend": str(device),
        },
    )


if __name__ == "__main__":
    raise SystemExit(common.main("torch_lstm", build))
