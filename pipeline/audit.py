"""Stage ``audit``: duplicates, original-picture groups and split leaks of the dataset.

Writes ``audit.json`` (machines), ``audit.md`` (people) and ``groups.csv``, the
picture grouping that every cross-validation in the pipeline follows. A picture
shared between train and valid/test fails the stage (exit status 1) unless
``audit.on_leak: warn``; the reports are written first so the leak can be inspected.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import output_set
from pipeline.common.params import DEFAULT_PARAMS, load_section
from pipeline.data.dataset import manifest_hashes, read_manifest, read_source
from pipeline.data.leakage import audit_dataset, render_markdown

EXIT_LEAK = 1


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--source", type=Path, required=True, help="where prepare found the images")
    parser.add_argument("--report", type=Path, required=True, help="audit JSON")
    parser.add_argument("--summary", type=Path, required=True, help="audit markdown")
    parser.add_argument("--groups", type=Path, required=True)
    args = parser.parse_args(argv)

    params = load_section("audit", args.params)
    manifest = read_manifest(args.manifest)
    read_source(args.source)  # checked: the audit reads no image, but the manifest belongs with it
    hashes = manifest_hashes(manifest)  # recorded by prepare: no image is decoded again
    audit = audit_dataset(manifest, hashes, near_duplicate_bits=params.near_duplicate_bits)

    with output_set() as out:  # the three change together or not at all
        out.write_json(args.report, audit.report)
        out.write_text(args.summary, render_markdown(audit.report))
        out.write_csv(args.groups, audit.groups)
    r = audit.report
    print(f"pictures per split: {r['groups_per_split']} (images: {r['images_per_split']}); "
          f"{len(r['exact_duplicate_groups'])} exact and {len(r['near_duplicate_groups'])} near-duplicate "
          f"group(s); {len(audit.leaks)} cross-split leak(s)")
    if r["leaks_into_held_out"] and params.on_leak == "error":
        print(f"error: {r['leaks_into_held_out']} picture(s) shared between train and valid/test; see "
              f"{args.summary}. Remove them, or set audit.on_leak: warn to proceed.", file=sys.stderr)
        return EXIT_LEAK
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
