"""Run the frozen backbone over work items: one loader, one input shape, decode and compute overlapped.

Measured on an H100 and an H200, the backbone's first call at a new batch shape
costs seconds in channels_last (cuDNN building its plans; 3.45 s on the H200) and
0.57 s in the default layout, a repeat 20-34 ms. So on a GPU the backbone sees one
shape only (``Settings.pad``, on everywhere but the CPU): a short batch is padded to
the batch size and the padded rows' embeddings dropped. In eval mode each row is
computed alone, so padding changes no real row (tests/test_embedding.py checks it
byte for byte). All items of a run, every split and every view, stream through one
loader and one worker pool; batches are planned per split and view pass
(``pipeline.embed.work``), so a row sits where a split-by-split run puts it.

On CUDA, batch k+1 is read, decoded and copied in on a side stream while the
model runs batch k, and embeddings come back through pinned memory without
blocking the next launch; at most two batches are in flight.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.common.params import ExtractParams
from pipeline.embed.backbone import Backbone
from pipeline.embed.loading import Chunk, Preprocess, WorkImages, collate, decode_on_device
from pipeline.embed.work import PLAIN, Work, plan_batches, work_of_paths

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODES = typing.get_args(typing.get_type_hints(ExtractParams)["decode"])  # auto, cpu, device
CHUNK = 32  # items a loader worker decodes at a time: small, so the first batch is ready soon
GPU_BATCH = 256  # batch_size: auto on CUDA (the H100 measurements used 256)
CPU_BATCH = 32
CPU_WORKERS = 2


class EmbeddingError(PipelineError):
    """The backbone produced embeddings that cannot be used, or an image changed after prepare checked it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Extraction settings with every ``auto`` resolved for the device at hand (recorded in meta.json)."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    decode: str  # cpu | device
    batch_size: int
    num_workers: int
    channels_last: bool
    pad: bool = True  # pad each segment's last batch to batch_size: one input shape per run
    threads: int = 0  # torch's intra-op threads on the CPU (0: as the process has); they change the rounding


def resolve_settings(params: ExtractParams, device: torch.device | None = None) -> Settings:
    """``auto`` values for ``device`` (default: resolved from ``params.device``).

    precision: bf16 autocast on CUDA (tensor cores), fp32 elsewhere; decode: nvjpeg
    on CUDA, PIL elsewhere; batch_size: 256 on CUDA, 32 elsewhere; num_workers: the
    cores less one on CUDA, 2 elsewhere; channels_last: on the CPU only (on CUDA the
    default layout is quicker to start and faster than decoding feeds it, see the
    module docstring: torch 2.11, bf16, batch 256); pad_batches: everywhere but the
    CPU (measured there: padding 200 images to 224 cost 11% of the run, and a new
    shape nothing noticeable).
    """
    device = device or resolve_device(params.device)
    cuda = device.type == "cuda"
    auto = {"precision": "bf16" if cuda else "fp32", "decode": "device" if cuda else "cpu",
            "batch_size": GPU_BATCH if cuda else CPU_BATCH,
            "num_workers": max(1, (os.cpu_count() or 2) - 1) if cuda else CPU_WORKERS,
            "channels_last": not cuda, "pad_batches": device.type != "cpu"}
    chosen = {key: value if getattr(params, key) == "auto" else getattr(params, key) for key, value in auto.items()}
    return Settings(device=device, pad=chosen.pop("pad_batches"), **chosen,
                    threads=torch.get_num_threads() if device.type == "cpu" else 0)


@dataclasses.dataclass
class Stats:
    """Where an extraction's time went, and what the backbone saw."""

    rows: int = 0  # real rows embedded
    padded: int = 0  # rows added to fill the last batch of each split and view pass
    batches: int = 0
    shapes: set[tuple[int, ...]] = dataclasses.field(default_factory=set)  # input shapes the backbone saw
    failed: dict[int, str] = dataclasses.field(default_factory=dict)  # item -> why it could not be read
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(
        ("loader_wait", "preprocess", "model", "copy_back", "host_wait"), 0.0))

    def line(self) -> str:
        parts = " ".join(f"{k}={v:.2f}s" for k, v in self.seconds.items())
        return f"rows={self.rows} padded={self.padded} batches={self.batches} shapes={len(self.shapes)} {parts}"


def _batches(chunks: Iterator[Chunk], sizes: list[int]) -> Iterator[list[tuple[Chunk, int, int]]]:
    """Regroup the loader's chunks into the planned batches (``sizes`` items each), as chunk slices."""
    sizes = iter(sizes)
    size = next(sizes, 0)
    batch: list[tuple[Chunk, int, int]] = []
    filled = 0
    for chunk in chunks:
        start = 0
        while start < len(chunk.items):
            take = min(size - filled, len(chunk.items) - start)
            batch.append((chunk, start, start + take))
            filled += take
            start += take
            if filled == size:
                yield batch
                batch, filled, size = [], 0, next(sizes, 0)


class _Runner:
    """Builds one batch's input on the device and runs the backbone on it."""

    def __init__(self, backbone: Backbone, preprocess: Preprocess, settings: Settings, stats: Stats):
        self.backbone, self.preprocess = backbone, preprocess
        self.settings, self.stats = settings, stats
        self.device = settings.device
        self.cuda = self.device.type == "cuda"
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.model = backbone.model.to(self.device).to(memory_format=self.memory_format)
        self.side = torch.cuda.Stream(self.device) if self.cuda else None
        self.events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []  # device-side timings

    @contextlib.contextmanager
    def _timed(self, phase: str, stream=None):
        """Time a phase: with CUDA events on the device (read at the end), else on the host."""
        if not self.cuda:
            start = time.perf_counter()
            yield
            self.stats.seconds[phase] += time.perf_counter() - start
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = stream or torch.cuda.current_stream(self.device)
        begin.record(stream)
        yield
        end.record(stream)
        self.events.append((phase, begin, end))

    def prepare(self, slices: list[tuple[Chunk, int, int]]):
        """The normalised input batch (``batch_size`` rows when padding), its items and unreadable rows, built on the
        side stream: rows decoded by the workers are gathered on the host (pinned on CUDA) and sent in one copy,
        JPEGs are decoded on the device in one call; padding rows stay zero."""
        crop = self.preprocess.size
        size = self.settings.batch_size if self.settings.pad else sum(hi - lo for _, lo, hi in slices)
        items = np.concatenate([chunk.items[lo:hi] for chunk, lo, hi in slices])
        views = np.concatenate([chunk.views[lo:hi] for chunk, lo, hi in slices])
        failed: dict[int, str] = {}
        host, encoded, encoded_rows, offset = None, [], [], 0
        for chunk, lo, hi in slices:
            failed.update({offset + at - lo: why for at, why in chunk.failed if lo <= at < hi})
            for k, at in enumerate(chunk.encoded_at):
                if lo <= at < hi:
                    encoded.append(chunk.encoded[k])
                    encoded_rows.append(offset + at - lo)
            keep = np.flatnonzero((chunk.pixel_at >= lo) & (chunk.pixel_at < hi))
            if keep.size:
                if host is None:
                    host = torch.zeros((size, 3, *crop), dtype=torch.uint8, pin_memory=self.cuda)
                rows = offset + chunk.pixel_at[keep] - lo
                if rows[-1] - rows[0] == keep[-1] - keep[0] == len(keep) - 1:  # one contiguous run: one copy
                    host[rows[0] : rows[-1] + 1] = chunk.pixels[keep[0] : keep[-1] + 1]
                else:
                    host[torch.from_numpy(rows)] = chunk.pixels[torch.from_numpy(keep)]
            offset += hi - lo
        stream = torch.cuda.stream(self.side) if self.cuda else contextlib.nullcontext()
        with stream, self._timed("preprocess", self.side):
            if host is None:
                pixels = torch.zeros((size, 3, *crop), dtype=torch.uint8, device=self.device)
            else:
                pixels = host.to(self.device, non_blocking=self.cuda)  # pinned only on CUDA
            if encoded:
                decoded, refused = decode_on_device(encoded, self.preprocess, self.device)
                failed.update({encoded_rows[k]: why for k, why in refused.items()})
                if encoded_rows[-1] - encoded_rows[0] == len(encoded_rows) - 1:
                    pixels[encoded_rows[0] : encoded_rows[-1] + 1] = decoded
                else:
                    pixels[torch.tensor(encoded_rows, device=self.device)] = decoded
            # batches are planned per split and view pass: all views or none (padding rows come out any which way)
            assert len(set(views == PLAIN)) == 1, "a batch mixes views and images"
            normalize = self.preprocess.normalize if views[0] == PLAIN else self.preprocess.view_normalize
            batch = normalize(pixels)
            batch = batch.contiguous(memory_format=self.memory_format)
            ready = self.side.record_event() if self.cuda else None
        return batch, items, failed, ready

    def launch(self, batch: torch.Tensor, ready) -> tuple[torch.Tensor | np.ndarray, object]:
        """Run the backbone; on CUDA, start copying the embeddings back without waiting for them."""
        dtype = PRECISIONS[self.settings.precision]
        if ready is not None:
            torch.cuda.current_stream(self.device).wait_event(ready)
            batch.record_stream(torch.cuda.current_stream(self.device))
        self.stats.shapes.add(tuple(batch.shape))
        with self._timed("model"), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            embedding = self.backbone.embed(batch)
        if not self.cuda:
            return embedding.float().cpu().numpy(), None  # MPS tensors reach numpy through the host
        with self._timed("copy_back"):
            host = torch.empty(embedding.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(embedding.float(), non_blocking=True)
            done = torch.cuda.current_stream().record_event()
        return host, done

    def device_seconds(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            for phase, begin, end in self.events:
                self.stats.seconds[phase] += begin.elapsed_time(end) / 1000
            self.events.clear()


@torch.inference_mode()
def embed_items(backbone: Backbone, work: Work, batches: list[tuple[int, int]], settings: Settings,
                preprocess: Preprocess, *, stats: Stats | None = None, desc: str = "embedding",
                skip_unreadable: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(item indices, float32 embeddings)`` batch by batch, for the planned ``batches`` (item ranges
    of at most ``batch_size``, see ``pipeline.embed.work.plan_batches``), in their order.

    ``precision`` other than fp32 runs the backbone under autocast; embeddings come
    back as float32 either way, and a non-finite one is an error naming its image.
    A file that cannot be read is an error naming it, or, with ``skip_unreadable``,
    left out and recorded in ``stats.failed``.
    """
    stats = stats if stats is not None else Stats()
    runner = _Runner(backbone, preprocess, settings, stats)
    assert all(0 < b - a <= settings.batch_size for a, b in batches), "a batch larger than the batch size"
    items = np.concatenate([np.arange(a, b) for a, b in batches]) if batches else np.empty(0, int)
    files = WorkImages(work, items, preprocess, decode_on_device=settings.decode == "device")
    workers = settings.num_workers
    loader = DataLoader(files, batch_size=max(1, min(settings.batch_size, CHUNK)), shuffle=False,
                        num_workers=workers, collate_fn=collate,  # pinned: the gathered batch, not each chunk
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    planned = _batches(iter(loader), [b - a for a, b in batches])

    def fetch():
        start = time.perf_counter()
        slices = next(planned, None)
        stats.seconds["loader_wait"] += time.perf_counter() - start
        return None if slices is None else runner.prepare(slices)

    in_flight: collections.deque = collections.deque()
    with tqdm(total=len(items), desc=desc, unit="img") as bar:
        upcoming = fetch()
        while upcoming is not None or in_flight:
            if upcoming is not None:
                batch, batch_items, failed, ready = upcoming
                if failed and not skip_unreadable:
                    at, why = next(iter(failed.items()))
                    raise EmbeddingError(f"{work.paths[batch_items[at]]} {why}; it changed after prepare checked it. "
                                         "Re-run dvc repro (prepare checks every image again).")
                stats.failed.update({int(batch_items[at]): why for at, why in failed.items()})
                in_flight.append((batch_items, failed, *runner.launch(batch, ready)))
                stats.batches += 1
                stats.padded += len(batch) - len(batch_items)
                upcoming = fetch()  # read, decode and copy in the next batch while the device computes
            if in_flight and (upcoming is None or len(in_flight) > 1):
                batch_items, failed, host, done = in_flight.popleft()
                start = time.perf_counter()
                if done is not None:
                    done.synchronize()
                    host = host.numpy()
                stats.seconds["host_wait"] += time.perf_counter() - start
                good = np.setdiff1d(np.arange(len(batch_items)), list(failed))
                embedding = np.array(host[good])  # padded and unreadable rows are dropped
                batch_items = batch_items[good]
                bad = np.flatnonzero(~np.isfinite(embedding).all(axis=1))
                if bad.size:
                    fix = ("set extract.precision: fp32 or bf16 (fp16 overflows where they do not)"
                           if settings.precision == "fp16" else "the backbone's weights are damaged or diverge "
                           "on this image; check the backbone's checkpoint or file (params.yaml's backbones entry), or "
                           "try another precision")
                    raise EmbeddingError(f"The {settings.precision} embedding of {work.paths[batch_items[bad[0]]]} "
                                         f"is not finite; {fix}.")
                stats.rows += len(batch_items)
                bar.update(len(batch_items) + len(failed))
                yield batch_items, embedding
    runner.device_seconds()


def embed_paths(backbone: Backbone, paths: list[Path], settings: Settings, *, desc: str = "embedding",
                failed: dict[int, str] | None = None) -> np.ndarray:
    """Embeddings (n, dim) of image files through the weights' own transform, in order (for predict).

    With ``failed`` (a dict), unreadable files are left out of the result and
    recorded there (position in ``paths`` -> why); without it they are an error.
    """
    work = work_of_paths(paths)
    stats = Stats()
    chunks = [e for _, e in embed_items(backbone, work, plan_batches(work, settings.batch_size), settings,
                                        Preprocess.of(backbone.transform), stats=stats, desc=desc,
                                        skip_unreadable=failed is not None)]
    if failed is not None:
        failed.update(stats.failed)
    return np.concatenate(chunks) if chunks else np.empty((0, backbone.info["feature_dim"]), np.float32)
