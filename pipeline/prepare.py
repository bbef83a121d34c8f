"""Stage ``prepare``: check every parameter, locate the dataset and write its manifest.

The manifest (path, split, label, sha256, width, height, and the perceptual hashes
the audit groups by) is the only thing later stages depend on for the images' content:
each image is read and decoded once, here, on ``data.num_workers`` processes. Its split
is the one each image came with (split folders, or a list's split column; train for
class folders without splits); the audit carves the splits the data lacks.
``source.json`` says where the files were found and how each split was given;
``skipped.csv`` lists files left out under ``data.on_bad_image: skip``.
Every section of params.yaml is validated here first, so a typo in the last
stage's params fails in seconds, not after extraction.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import output_set
from pipeline.common.params import DEFAULT_PARAMS, backbones_section, classifiers_section, load_section, validate_all
from pipeline.data.dataset import build_manifest, dataset_origin, resolve_layout
from pipeline.data.pool import resolve_workers
from pipeline.embed.backbone import check_backbones, parse_backbone, resize_of
from pipeline.evaluate.classifiers import check_classifiers


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--skipped", type=Path, required=True, help="files left out (data.on_bad_image: skip)")
    parser.add_argument("--source", type=Path, required=True, help="where the images were found")
    args = parser.parse_args(argv)

    validate_all(args.params)  # every stage's params, before any work
    check_classifiers(classifiers_section(args.params))
    backbones = backbones_section(args.params)
    check_backbones(backbones)
    extract = load_section("extract", args.params)
    # refuse what extract would refuse: the largest resize any backbone makes
    resize = max(resize_of(parse_backbone(name, raw), extract.resize_size) for name, raw in backbones.items())
    data = load_section("data", args.params)
    layout = resolve_layout(data)
    root = layout.root
    workers = resolve_workers(data.num_workers)
    start = time.perf_counter()
    manifest, skipped = build_manifest(layout, on_bad_image=data.on_bad_image, workers=workers, resize=resize)
    seconds = time.perf_counter() - start
    given = {split: layout.origin(split) for split in manifest["split"].unique()}  # the audit carves the others
    with output_set() as out:  # the three change together or not at all
        out.write_csv(args.manifest, manifest)
        out.write_csv(args.skipped, skipped)
        out.write_json(args.source, {"root": str(root.resolve()), **dataset_origin(data), "splits": given})
    counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"{len(manifest)} images from {root}; {len(skipped)} skipped; {workers} worker(s), "
          f"{seconds:.1f} s ({(len(manifest) + len(skipped)) / seconds:.0f} img/s)\n{counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
