"""The ``ray`` engine: the missing shards of an extraction, computed by a pool of Ray actors.

Each actor builds the backbone once (and checks it is the driver's, by
fingerprint), then embeds whole shards with the same code as the local engine
(``embed_items``: the project's decoding and transforms, one input shape), so both
engines give the same embeddings. Ray Data's ``map_batches`` hands the shards to
idle actors and restarts an actor that died, retrying its shard; the driver writes each
finished shard as it arrives, so a crash loses only the shards in flight.

The cluster is ``RAY_ADDRESS`` (or ``extract.ray_address``), or a local one
(``pipeline.common.ray_cluster``, shared with ``cv.engine: ray``). Image files
must be readable at the same path on every node (a shared filesystem); only the
driver writes, to ``--scratch`` and ``features/``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from pipeline.common.errors import PipelineError
from pipeline.common.params import ExtractParams
from pipeline.common.ray_cluster import connect
from pipeline.embed.backbone import Backbone, rebuild_backbone
from pipeline.embed.embedding import Settings, Stats, embed_items
from pipeline.embed.loading import Preprocess
from pipeline.embed.work import ShardStore, Work, batches_within

log = logging.getLogger(__name__)


def cluster_device(params: ExtractParams) -> torch.device:
    """The device the actors will run on: CUDA when the cluster has GPUs and the params allow it."""
    ray = connect(params.ray_address, params.ray_timeout_s, engine_key="extract.engine")
    gpus = ray.cluster_resources().get("GPU", 0)
    if params.device == "cuda" and not gpus:
        raise PipelineError("extract.device: cuda, but the Ray cluster has no GPU; set extract.device: auto or cpu.")
    if params.device in ("auto", "cuda") and gpus:
        return torch.device("cuda")
    if params.device == "mps":
        raise PipelineError("extract.device: mps is not supported with extract.engine: ray; use auto or cpu.")
    return torch.device("cpu")


class ShardEmbedder:
    """A Ray actor: one backbone, whole shards embedded per call."""

    def __init__(self, *, info: dict[str, Any], work: Work,
                 batches: list[tuple[int, int]], settings: Settings, preprocess: Preprocess) -> None:
        if settings.threads:
            torch.set_num_threads(settings.threads)  # as the driver: the CPU's rounding depends on it
        self.work, self.batches, self.settings, self.preprocess = work, batches, settings, preprocess
        self.failure = ""  # a failed set-up is reported with the first shard: a dying actor would hide the reason
        try:
            self.backbone = rebuild_backbone(info, where="on a Ray worker")
        except PipelineError as err:
            self.failure = f"on a Ray worker: {err}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed each shard of the batch; an error a user can fix comes back as text, not as a Ray failure."""
        out, errors = [], []
        for start, stop in zip(batch["start"], batch["stop"], strict=True):
            rows = int(stop) - int(start)
            if self.failure:
                out.append(np.zeros((rows, 1), np.float32))
                errors.append(self.failure)
                continue
            planned = batches_within(self.batches, int(start), int(stop))  # the batches a single pass makes
            try:
                pieces = [e for _, e in embed_items(self.backbone, self.work, planned, self.settings, self.preprocess,
                                                    desc=f"shard {start}-{stop}")]
                out.append(np.concatenate(pieces))
                errors.append("")
            except PipelineError as err:
                out.append(np.zeros((rows, self.backbone.info["feature_dim"]), np.float32))
                errors.append(str(err))
        return {"start": batch["start"], "stop": batch["stop"], "embedding": np.stack(out),
                "error": np.array(errors)}


def run_ray(*, work: Work, batches: list[tuple[int, int]], missing: list[tuple[int, int]], store: ShardStore,
            settings: Settings, preprocess: Preprocess, backbone: Backbone, address: str | None,
            actors: int | str, stats: Stats, timeout: float) -> None:
    """Compute the ``missing`` shards on the cluster; the driver writes each one as it arrives."""
    if not missing:
        return
    ray = connect(address, timeout, engine_key="extract.engine")
    gpus = int(ray.cluster_resources().get("GPU", 0)) if settings.device.type == "cuda" else 0
    count = min((gpus or 1) if actors == "auto" else int(actors), len(missing))
    # CPU actors share the cores between them; a GPU actor takes its GPU's share of the cores and decodes with
    # loader workers of its own within it (the driver's count would give each actor a whole node's worth)
    share = max(1, int(ray.cluster_resources().get("CPU", 1) // gpus)) if gpus else 0
    workers = min(settings.num_workers, share - 1) if gpus else 0
    actor_settings = dataclasses.replace(settings, num_workers=workers)
    shards = ray.data.from_items([{"start": a, "stop": b} for a, b in missing], override_num_blocks=len(missing))
    # Ray Data restarts an actor that dies and retries its shard (its defaults); an error the code raises
    # (an unreadable image) is not retried and ends the run, with every shard written so far kept
    embedded = shards.map_batches(
        ShardEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=count), num_gpus=1 if gpus else 0,
        num_cpus=share if gpus else 0.5,
        fn_constructor_kwargs={"info": backbone.info, "work": work, "batches": batches, "settings": actor_settings,
                               "preprocess": preprocess})
    log.info("ray: %d shard(s) on %d actor(s) (%s)", len(missing), count, "GPU" if gpus else "CPU")
    for row in embedded.iter_rows():
        start, stop = int(row["start"]), int(row["stop"])
        if row["error"]:
            raise PipelineError(str(row["error"]))  # every shard written so far is kept for the rerun
        store.write(start, stop, np.asarray(row["embedding"]))
        stats.rows += stop - start
        log.info("ray: shard %d-%d written", start, stop)
