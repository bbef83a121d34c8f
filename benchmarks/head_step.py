"""One training step of the linear head, two ways: autograd with ``torch.optim.AdamW``, and ``AdamWStep`` (the
same update in public tensor operations, what ``LinearHeadClassifier`` trains with); and a batch's dropout mask
drawn by ``torch.rand`` and by numpy (what ``dropout_`` uses). Makes its own data.

A batch of 64 rows of 1280 features and 4 classes (the shipped head's batch), one thread, 2,000 calls
each after 200 to warm up; prints microseconds a call.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from pipeline.evaluate.linear_head import AdamWStep, make_head

STEPS, WARM = 2000, 200


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1280, generator=generator), torch.randint(0, 4, (64,), generator=generator)
    module = make_head(1280, 4, 0.0, generator=generator)[1]
    flat = copy.deepcopy(module)
    optimiser, loss_fn = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-2), nn.CrossEntropyLoss()
    step = AdamWStep(flat, lr=1e-3, weight_decay=1e-2)

    def torch_step() -> None:
        optimiser.zero_grad()
        loss_fn(module(x), y).backward()
        optimiser.step()

    masks, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    for name, run in [("autograd + torch.optim.AdamW", torch_step), ("AdamWStep", lambda: step(x, y)),
                      ("mask by torch.rand", lambda: torch.rand((64, 1280), generator=masks)),
                      ("mask by numpy (Generator.random, float32)", lambda: rng.random((64, 1280), dtype=np.float32))]:
        for _ in range(WARM):
            run()
        start = time.perf_counter()
        for _ in range(STEPS):
            run()
        print(f"{name}: {(time.perf_counter() - start) / STEPS * 1e6:.0f} us a call (batch 64 x 1280, one thread)")


if __name__ == "__main__":
    main()
