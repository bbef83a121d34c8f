"""Stage ``audit``: duplicates, original-picture groups and split leaks of the dataset.

Writes ``audit.json`` (machines), ``audit.md`` (people) and ``groups.csv``, the
picture grouping that every cross-validation in the pipeline follows. A picture
shared between train and valid/test fails the stage unless ``audit.on_leak: warn``;
the reports are written first so the leak can be inspected.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.atomic import write_csv, write_json, write_text
from pipeline.audit_report import audit_dataset, render_markdown
from pipeline.dataset import read_manifest
from pipeline.errors import run_cli
from pipeline.grouping import perceptual_hashes
from pipeline.params import DEFAULT_PARAMS, load_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest", type=Path, default=Path("artifacts/data/manifest.csv"))
    parser.add_argument("--report", type=Path, default=Path("artifacts/audit.json"))
    parser.add_argument("--groups", type=Path, default=Path("artifacts/data/groups.csv"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_section("audit", args.params)
    manifest = read_manifest(args.manifest)
    root = Path(json.loads(args.manifest.with_name("source.json").read_text())["root"])
    hashes = perceptual_hashes(root / p for p in manifest["path"])
    audit = audit_dataset(manifest, hashes, near_duplicate_bits=params.near_duplicate_bits)

    write_json(args.report, audit.report)
    write_text(args.report.with_suffix(".md"), render_markdown(audit.report))
    write_csv(args.groups, audit.groups)
    r = audit.report
    print(f"pictures per split: {r['groups_per_split']} (images: {r['images_per_split']}); "
          f"{len(r['exact_duplicate_groups'])} exact and {len(r['near_duplicate_groups'])} near-duplicate "
          f"group(s); {len(audit.leaks)} cross-split leak(s)")
    if r["leaks_into_held_out"] and params.on_leak == "error":
        print(f"ERROR: {r['leaks_into_held_out']} picture(s) shared between train and valid/test; see "
              f"{args.report.with_suffix('.md')}. Remove them, or set audit.on_leak: warn to proceed.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
