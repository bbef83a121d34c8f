"""What a pair costs on this machine: the backbone's size, FLOPs and speed, and its classifier's.

Extraction records its own images/s, but that is the speed of a run that shared the machine with whatever else
ran (the same exported model read 12 img/s on a busy machine and 53 alone). Here the backbone's forward pass is
timed on its own, on synthetic batches at its input size (decoding left out), with the machine's load recorded
beside the figure so that a reader can tell a quiet measurement from a busy one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.embed.embedding import PRECISIONS, Settings
from pipeline.embed.sources.base import Backbone


def timed(step: Callable[[], Any], *, seconds: float, at_least: int = 2,
          sync: Callable[[], None] = lambda: None) -> tuple[int, float]:
    """Run ``step`` once untimed (first-call costs: allocation, cuDNN planning), then until ``seconds`` have passed
    and ``at_least`` calls are made; the calls made and the seconds they took."""
    step()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < at_least or time.perf_counter() - start < seconds:
        step()
        calls += 1
    sync()
    return calls, time.perf_counter() - start


@torch.inference_mode()
def backbone_cost(backbone: Backbone, settings: Settings, *, seconds: float) -> dict[str, Any]:
    """Parameters, GFLOPs per image (``torch.utils.flop_counter``: a multiply-add counts 2) and images/s of the
    forward pass at extraction's device, precision, batch size and memory layout."""
    h, w = backbone.transform.size
    model = backbone.model.to(settings.device)
    with FlopCounterMode(display=False) as counter:
        backbone.embed(torch.zeros(1, 3, h, w, device=settings.device))
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    batch = torch.randn(settings.batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    batch = batch.to(settings.device).contiguous(memory_format=layout)
    dtype = PRECISIONS[settings.precision]
    sync = torch.cuda.synchronize if settings.device.type == "cuda" else (lambda: None)
    # the 1-minute load average (runnable processes), where the system gives one
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    def step() -> None:
        with torch.autocast(settings.device.type, dtype=dtype, enabled=dtype is not None):
            backbone.embed(batch)

    calls, elapsed = timed(step, seconds=seconds, sync=sync)
    return {"params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": counter.get_total_flops() / 1e9, "images_per_second": calls * settings.batch_size / elapsed,
            "timed_images": calls * settings.batch_size, "timed_seconds": elapsed, "load_average": load,
            "cpus": os.cpu_count(), "device": str(settings.device), "precision": settings.precision,
            "batch_size": settings.batch_size, "input": [3, h, w]}


def classifier_cost(predict_proba: Callable[[np.ndarray], Any], X: np.ndarray, *, seconds: float) -> float:
    """Milliseconds to predict 1,000 embeddings (``X``'s rows repeated or cut to 1,000), the fastest call. Only
    the rows used are read, which matters when ``X`` is a memory-mapped train split of many rows."""
    rows = np.resize(np.asarray(X[:1000]), (1000, X.shape[1])).astype(X.dtype)
    times = []

    def step() -> None:
        start = time.perf_counter()
        predict_proba(rows)
        times.append(time.perf_counter() - start)

    timed(step, seconds=seconds, at_least=3)
    return 1000 * min(times[1:])
