"""Stage ``extract@<backbone>``: run one frozen backbone once and cache its embeddings in ``features/<backbone>/``.

Every image of every split, and each augmented view of the train images, goes
through the backbone in one pass with one input shape. Work is written in shards
to a scratch folder (``--scratch``, outside DVC's outputs) so that a rerun after a
crash resumes; the finished shards are merged into ``features/``, which appears
only when complete. ``extract.engine: ray`` computes the shards on a Ray cluster.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import file_sha256
from pipeline.common.params import BACKBONES_SECTION, DEFAULT_PARAMS, backbones_section, entry_of, load_section
from pipeline.data.dataset import read_manifest, read_source
from pipeline.embed.backbone import build_backbone, parse_backbone
from pipeline.embed.embedding import resolve_settings
from pipeline.embed.extraction import extract_features


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--backbone", required=True, help="a key of params.yaml's backbones section")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="where prepare found the images")
    parser.add_argument("--out", type=Path, required=True, help="the features folder")
    parser.add_argument("--scratch", type=Path, required=True,
                        help="folder for finished shards (kept only until the merge; ignored by DVC and git)")
    args = parser.parse_args(argv)

    entry = parse_backbone(args.backbone, entry_of(backbones_section(args.params), args.backbone,
                                                   section_name=BACKBONES_SECTION, path=args.params))
    params = load_section("extract", args.params)
    views = load_section("views", args.params)
    manifest = read_manifest(args.manifest)
    root = Path(read_source(args.source)["root"])
    device = None  # resolved from the params, on this machine
    if params.engine == "ray":
        from pipeline.embed.ray_engine import cluster_device

        device = cluster_device(params)
    settings = resolve_settings(params, device)
    backbone = build_backbone(args.backbone, entry, crop_size=params.crop_size, resize_size=params.resize_size)
    result = extract_features(manifest=manifest, manifest_sha256=file_sha256(args.manifest),
                              root=root, backbone=backbone, settings=settings, params=params,
                              views=views, out=args.out, scratch=args.scratch)
    print(f"{args.backbone}: {result.rows} embeddings of dim {backbone.info['feature_dim']} on {settings.device.type} "
          f"(batch {settings.batch_size}, {settings.num_workers} workers, {settings.precision}, decode "
          f"{settings.decode}, engine {params.engine}): {result.reused} of {result.shards} shard(s) reused, "
          f"{result.stats.rows} rows computed -> {args.out}")
    if params.engine == "local":  # the Ray actors keep their timings to themselves
        print(f"timing: {result.stats.line()}")
    print(f"stage_seconds={time.perf_counter() - started:.2f} extract_seconds={result.seconds:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
