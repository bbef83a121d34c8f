"""One extraction from start to finish: plan the items, compute the missing shards, merge into ``features/``.

Shards finished by an earlier, interrupted run with the same settings are reused;
the local engine streams every missing item through one loader in one pass, the
``ray`` engine spreads the missing shards over a Ray cluster. Either way the
merge writes exactly the features format, atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import PIL
import torch
import torchvision

from pipeline.common import features
from pipeline.common.io import atomic_path, write_csv, write_json
from pipeline.common.params import ExtractParams, ViewsParams
from pipeline.embed.backbone import Backbone
from pipeline.embed.embedding import Settings, Stats, embed_items
from pipeline.embed.loading import Preprocess
from pipeline.embed.work import (
    ShardStore,
    Work,
    batches_per_shard,
    batches_within,
    merge,
    plan_batches,
    plan_work,
    settings_key,
    shard_ranges,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Extraction:
    rows: int  # items in the plan (images plus views)
    shards: int
    reused: int  # shards found finished from an earlier run
    seconds: float
    stats: Stats


def value_settings(backbone: Backbone, settings: Settings, views: ViewsParams, manifest_sha256: str) -> dict[str, Any]:
    """Everything that determines the embeddings' values (the shard key; recorded in meta.json)."""
    return {
        "manifest_sha256": manifest_sha256,
        "arch": backbone.info["arch"],
        "fingerprint": backbone.info["fingerprint"],
        "transform": backbone.info["transform"],
        "device": settings.device.type,
        "precision": settings.precision,
        "decode": settings.decode,
        "channels_last": settings.channels_last,
        # on the CPU a row's float rounding depends on the batch shape, its position in the batch and the
        # thread count (measured: up to 2e-4 relative on a random backbone); the batch plan fixes the first two
        "batch_size": settings.batch_size,
        "pad_batches": settings.pad,
        "threads": settings.threads,
        "views": {"count": views.count, "crop_scale_min": views.crop_scale_min, "hflip": views.hflip,
                  "jitter": views.jitter, "seed": views.seed},
        # kernels, and resizing: on the device by torchvision, in the workers and for every view by Pillow
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__},
    }


def run_local(backbone: Backbone, work: Work, batches: list[tuple[int, int]], missing: list[tuple[int, int]],
              store: ShardStore, settings: Settings, preprocess: Preprocess, stats: Stats) -> None:
    """Every missing shard in one pass: one loader over all their batches, each shard written as it fills
    (a shard is whole batches, so batch by batch the stream fills one shard after the other)."""
    if not missing:
        return
    planned = [batch for start, stop in missing for batch in batches_within(batches, start, stop)]
    # closing(): an error or Ctrl-C between two batches closes the stream (its loader and progress bar) at once
    with contextlib.closing(embed_items(backbone, work, planned, settings, preprocess, stats=stats,
                                        desc="extract")) as stream:
        for start, stop in missing:
            with store.writing(start, stop) as out:
                filled = 0
                while filled < len(out):
                    _, embedding = next(stream)
                    out[filled : filled + len(embedding)] = embedding
                    filled += len(embedding)
        if next(stream, None) is not None:  # also runs the stream to its end, where it closes its progress bar
            raise RuntimeError("the embedding stream outlasted the shards: the batch plan and the shards disagree")


def extract_features(*, manifest: pd.DataFrame, manifest_sha256: str, root: Path, backbone: Backbone,
                     settings: Settings, params: ExtractParams, views: ViewsParams,
                     out: Path, scratch: Path) -> Extraction:
    """Embed every image (and view) of the manifest, resuming from finished shards, and write ``out``."""
    start = time.perf_counter()
    work = plan_work(manifest, root, n_views=views.count)
    preprocess = Preprocess.of(backbone.transform, views=views if views.count else None)
    values = value_settings(backbone, settings, views, manifest_sha256)
    store = ShardStore(scratch, settings_key(values), backbone.info["feature_dim"])
    batches = plan_batches(work, settings.batch_size)
    ranges = shard_ranges(batches, params.shard_rows, settings.batch_size)
    shard_rows = batches_per_shard(params.shard_rows, settings.batch_size) * settings.batch_size
    done = store.finished(ranges)
    missing = [r for r in ranges if r not in done]
    stale = store.other_keys()
    if stale:
        log.info("%s holds shards of %d other setting(s), never reused here; delete them to free disk: %s",
                 scratch, len(stale), [p.name for p in stale])
    log.info("%d items in %d shard(s) of up to %d rows: %d reused from an earlier run, %d to compute",
             len(work), len(ranges), shard_rows, len(done), len(missing))
    stats = Stats()
    computing = time.perf_counter()
    if params.engine == "ray":
        from pipeline.embed.ray_engine import run_ray

        run_ray(work=work, batches=batches, missing=missing, store=store, settings=settings, preprocess=preprocess,
                backbone=backbone, address=params.ray_address, actors=params.ray_actors,
                stats=stats, timeout=params.ray_timeout_s)
    else:
        run_local(backbone, work, batches, missing, store, settings, preprocess, stats)
    seconds = time.perf_counter() - computing

    meta = {
        **backbone.info,
        **values,
        "classes": sorted(manifest.loc[manifest["split"] == "train", "label"].unique()),
        "splits": {split: b - a for split, (a, b) in work.splits.items()},
        "dtype": "float32",
        "num_workers": settings.num_workers,
        "engine": params.engine,
        "shard_rows": shard_rows,
        # accuracy against cost: how fast this backbone embedded here (none when every shard was reused)
        "speed": {"images_per_second": round(stats.rows / seconds, 1) if stats.rows else None,
                  "rows": stats.rows, "seconds": round(seconds, 3), "device": settings.device.type},
        "versions": {**values["versions"], "python": platform.python_version(), "numpy": np.__version__,
                     "scikit-learn": importlib.metadata.version("scikit-learn")},
    }
    with atomic_path(out, is_dir=True) as tmp:
        merge(store, work, ranges, tmp)
        write_csv(tmp / features.INDEX, manifest[features.INDEX_COLUMNS])
        meta[features.HASHES] = features.array_hashes(tmp)  # the loader refuses replaced or swapped splits
        assert set(meta) == set(features.EXTRACT_META_KEYS), sorted(set(meta) ^ set(features.EXTRACT_META_KEYS))
        write_json(tmp / features.META, meta)
    store.clear()
    return Extraction(rows=len(work), shards=len(ranges), reused=len(done), seconds=time.perf_counter() - start,
                      stats=stats)
