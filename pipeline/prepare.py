"""Stage ``prepare``: check every parameter, locate the dataset and write its manifest.

The manifest (path, split, label, sha256, width, height) is the only thing later
stages depend on for the images' content; ``source.json`` says where the files
were found; ``skipped.csv`` lists files left out under ``data.on_bad_image: skip``.
Every section of params.yaml is validated here first, so a typo in the last
stage's params fails in seconds, not after extraction.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import output_set
from pipeline.common.params import DEFAULT_PARAMS, classifiers_section, load_section, validate_all
from pipeline.data.dataset import build_manifest, resolve_root
from pipeline.embed.backbone import check_model_params, resize_of
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
    model = load_section("model", args.params)
    check_model_params(model)
    resize = resize_of(model, load_section("extract", args.params).resize_size)  # refuse what extract would
    data = load_section("data", args.params)
    root = resolve_root(data)
    manifest, skipped = build_manifest(root, on_bad_image=data.on_bad_image, resize=resize)
    with output_set() as out:  # the three change together or not at all
        out.write_csv(args.manifest, manifest)
        out.write_csv(args.skipped, skipped)
        out.write_json(args.source, {"root": str(root.resolve()), "handle": data.handle})
    counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"{len(manifest)} images from {root}; {len(skipped)} skipped\n{counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
