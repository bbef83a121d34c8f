"""Stage ``extract``: run the frozen backbone once and cache the embeddings in ``features/``.

Arrays are streamed into memory-mapped ``.npy`` files in a temporary folder that
is renamed onto the output only when complete.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import atomic_path, read_json, write_csv, write_json
from pipeline.common.params import DEFAULT_PARAMS, load_section
from pipeline.data.dataset import read_manifest
from pipeline.embed import features
from pipeline.embed.backbone import build_backbone
from pipeline.embed.embedding import (
    iter_embeddings,
    resolve_decode,
    resolve_device,
    resolve_precision,
    view_transform,
)

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="where prepare found the images")
    parser.add_argument("--out", type=Path, required=True, help="the features folder")
    args = parser.parse_args(argv)

    model_params = load_section("model", args.params)
    params = load_section("extract", args.params)
    views = load_section("views", args.params)
    manifest = read_manifest(args.manifest)
    root = Path(read_json(args.source, what="Source file", fix="run the prepare stage (dvc repro prepare).")["root"])
    device = resolve_device(params.device)
    precision = resolve_precision(params.precision, device)
    decode = resolve_decode(params.decode, device)
    backbone = build_backbone(model_params, crop_size=params.crop_size, resize_size=params.resize_size)
    classes = sorted(manifest.loc[manifest["split"] == "train", "label"].unique())

    dim = backbone.info["feature_dim"]

    def embed_into(out: np.ndarray, rows, **kwargs) -> None:
        """Stream the embeddings of ``rows`` into ``out``, batch by batch."""
        offset = 0
        for emb in iter_embeddings(backbone, [root / p for p in rows["path"]], batch_size=params.batch_size,
                                   num_workers=params.num_workers, device=device,
                                   channels_last=params.channels_last, precision=precision, decode=decode,
                                   **kwargs):
            out[offset : offset + len(emb)] = emb
            offset += len(emb)

    start = time.perf_counter()
    with atomic_path(args.out, is_dir=True) as tmp:
        for split, rows in manifest.groupby("split", sort=False):
            out = features.allocate(tmp, split, len(rows), dim)
            embed_into(out, rows, desc=f"extract {split}")
            out.flush()
        if views.count:  # train only: augmentation is for fitting, never for scoring
            train = manifest[manifest["split"] == "train"]
            out = features.allocate(tmp, "train", len(train), dim, views=views.count)
            augment = view_transform(backbone.transform, views)
            for k in range(views.count):
                embed_into(out[k], train, transform=augment, seed=(views.seed, k),
                           desc=f"train view {k + 1}/{views.count}")
            out.flush()
        del out
        write_csv(tmp / features.INDEX, manifest[features.INDEX_COLUMNS])
        write_json(tmp / features.META, {
            **backbone.info,
            "classes": classes,
            "splits": manifest.groupby("split", sort=False).size().to_dict(),
            "manifest_sha256": hashlib.sha256(args.manifest.read_bytes()).hexdigest(),
            "device": device.type,
            "dtype": "float32",
            "channels_last": params.channels_last,
            "precision": precision,
            "decode": decode,
            "views": {"count": views.count, "crop_scale_min": views.crop_scale_min, "hflip": views.hflip,
                      "jitter": views.jitter, "seed": views.seed},
            "batch_size": params.batch_size,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "scikit-learn": sklearn.__version__},
        })
    seconds = time.perf_counter() - start
    print(f"{len(manifest)} embeddings of dim {backbone.info['feature_dim']} on {device.type} in {seconds:.1f} s "
          f"({len(manifest) / seconds:.1f} img/s) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
