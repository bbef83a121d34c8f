"""Stage ``prepare``: locate the dataset and write its manifest.

The manifest (path, split, label, sha256, width, height) is the only thing later
stages depend on; ``source.json`` beside it says where the files were found and
``skipped.csv`` lists files left out under ``data.on_bad_image: skip``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.atomic import write_csv, write_json
from pipeline.dataset import build_manifest, resolve_root
from pipeline.errors import run_cli
from pipeline.params import DEFAULT_PARAMS, load_section, validate_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest", type=Path, default=Path("artifacts/data/manifest.csv"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    validate_all(args.params)  # every stage's params, before any work
    data = load_section("data", args.params)
    root = resolve_root(data)
    manifest, skipped = build_manifest(root, on_bad_image=data.on_bad_image)
    write_csv(args.manifest, manifest)
    write_csv(args.manifest.with_name("skipped.csv"), skipped)
    write_json(args.manifest.with_name("source.json"), {"root": str(root.resolve()), "handle": data.handle})
    counts = manifest.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(f"{len(manifest)} images from {root}; {len(skipped)} skipped\n{counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
