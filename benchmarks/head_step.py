"""What one training step of the linear head costs on the CPU, and what its dropout mask costs.

Prints, on one thread: the time to draw one batch's mask (64 x 1280) with torch's ``bernoulli_`` (what
``nn.Dropout`` runs), with ``torch.rand`` in float64 and with ``_torch_stream.keep_mask``; the time to gather a
batch's rows and drop them out with ``nn.Dropout``, with ``index_select`` then ``dropout_`` (the loop's two steps before d481a15) and with
``dropped_batches`` (one compiled pass), alternating, fastest and median of the rounds; then ms per step of
the training loop written with torch's own modules (``nn.Dropout``, ``X[b].clone()``: the loop before the
block stream, autograd and ``AdamW``) and of ``LinearHeadClassifier.fit`` (the one-pass dropout and
``head_step``'s flat step), alternating, on the same synthetic rows, and whether the two give the same
weights bit for bit. No network, no files.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from pipeline.evaluate import _torch_stream
from pipeline.evaluate.linear_head import LinearHeadClassifier, dropout_, dropped_batches, make_head

BATCH, DIM = 64, 1280


def per_call_us(draw, repeats: int) -> float:
    draw()
    start = time.perf_counter()
    for _ in range(repeats):
        draw()
    return (time.perf_counter() - start) / repeats * 1e6


def torch_modules_fit(X: np.ndarray, y: np.ndarray, epochs: int) -> nn.Sequential:
    """The head's training with torch's own modules only (LinearHeadClassifier's defaults, no valid set)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    head = make_head(DIM, 4, 0.2)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(X_t), generator=generator).split(BATCH):
            optimiser.zero_grad()
            loss = nn.CrossEntropyLoss()(head(X_t[batch].clone()), y_t[batch])
            loss.backward()
            optimiser.step()
            loss.item()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two training loops")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"block stream matches this torch: {_torch_stream.matches_torch()}")
    n = BATCH * DIM
    for name, draw in [("bernoulli_ (nn.Dropout's draw)", lambda: torch.empty(n).bernoulli_(0.8)),
                       ("torch.rand float64 < keep", lambda: torch.rand(n, dtype=torch.float64) < 0.8),
                       ("_torch_stream.keep_mask", lambda: _torch_stream.keep_mask(n, 0.8))]:
        print(f"mask of {BATCH} x {DIM}, {name}: {per_call_us(draw, 300):.0f} us")

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, DIM), dtype=np.float32)
    y = rng.integers(0, 4, args.rows)
    X_t, batches = torch.from_numpy(X), torch.randperm(args.rows).split(BATCH)
    ways = {"nn.Dropout on X[batch].clone()": lambda b: nn.Dropout(0.2, inplace=True).train()(X_t[b].clone()),
            "dropout_ on X.index_select(0, batch)": lambda b: dropout_(X_t.index_select(0, b), 0.2),
            "dropped_batches (one pass)": dropped_batches(X_t, 0.2, BATCH)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(15):
        for name, way in ways.items():
            start = time.perf_counter()
            for batch in batches:
                way(batch)
            times[name].append((time.perf_counter() - start) / len(batches) * 1e6)
    for name, seen in times.items():
        print(f"rows of a batch of {BATCH} gathered and dropped out, {name}: fastest {min(seen):.0f} us, "
              f"median {sorted(seen)[len(seen) // 2]:.0f} us")
    steps = args.epochs * -(-args.rows // BATCH)
    for round_ in range(args.rounds):
        start = time.perf_counter()
        reference = torch_modules_fit(X, y, args.epochs)
        modules = time.perf_counter() - start
        start = time.perf_counter()
        ours = LinearHeadClassifier(n_classes=4, max_epochs=args.epochs).fit(X, y).head_
        fit = time.perf_counter() - start
        same = all(torch.equal(value, ours.state_dict()[key]) for key, value in reference.state_dict().items())
        print(f"round {round_ + 1}, {args.rows:,} rows x {args.epochs} epochs: torch's modules "
              f"{modules / steps * 1e3:.2f} ms/step, LinearHeadClassifier.fit {fit / steps * 1e3:.2f} ms/step, "
              f"same weights: {same}")


if __name__ == "__main__":
    main()
