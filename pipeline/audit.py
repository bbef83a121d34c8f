"""Stage ``audit``: duplicates, original-picture groups, the split of every image, and split leaks.

Writes ``audit.json`` (machines), ``audit.md`` (people) and ``groups.csv``, the
picture grouping that every cross-validation in the pipeline follows. A split the data
lacks (valid, test, or both) is carved from train by whole picture, stratified by class,
seeded (``data.carve``); ``splits.csv`` says for every image its split and why, and
``split_manifest.csv`` is the manifest with those splits, the one every later stage reads.
A picture shared between train and valid/test fails the stage (exit status 1) unless
``audit.on_leak`` is ``warn`` (go on) or ``drop`` (its images leave valid/test, each said in
``splits.csv``); the reports are written first so the leak can be inspected.
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
    parser.add_argument("--splits", type=Path, required=True, help="path, split, why: one row per image")
    parser.add_argument("--split-manifest", type=Path, required=True,
                        help="the manifest with every image's final split, read by every later stage")
    args = parser.parse_args(argv)

    params = load_section("audit", args.params)
    carve = load_section("data", args.params).carve
    manifest = read_manifest(args.manifest)
    source = read_source(args.source)  # the audit reads no image, but the manifest belongs with it
    hashes = manifest_hashes(manifest)  # recorded by prepare: no image is decoded again
    audit = audit_dataset(manifest, hashes, near_duplicate_bits=params.near_duplicate_bits,
                          near_duplicate_correlation=params.near_duplicate_correlation, carve=carve,
                          given=source.get("splits") or {}, on_leak=params.on_leak)

    with output_set() as out:  # the five change together or not at all
        out.write_json(args.report, audit.report)
        out.write_text(args.summary, render_markdown(audit.report))
        out.write_csv(args.groups, audit.groups)
        out.write_csv(args.splits, audit.splits)
        out.write_csv(args.split_manifest, audit.manifest)
    r = audit.report
    print(f"pictures per split: {r['groups_per_split']} (images: {r['images_per_split']}); "
          f"{len(r['exact_duplicate_groups'])} exact and {len(r['near_duplicate_groups'])} near-duplicate "
          f"group(s); {len(audit.leaks)} cross-split leak(s); largest picture: {(r['largest_group'] or {}).get('images', 0)} "
          f"image(s); {len(r['groups_across_classes'])} picture(s) across classes")
    if r["dropped"]:
        print(f"dropped {len(r['dropped'])} image(s) whose picture is in an earlier split (audit.on_leak: drop); "
              f"see {args.summary}")
    for split, entry in r["splits"].items():
        print(f"{split}: {entry['how']}")
    if r["leaks_into_held_out"] and params.on_leak == "error":
        print(f"error: {r['leaks_into_held_out']} picture(s) shared between train and valid/test; see "
              f"{args.summary}. Remove them, set audit.on_leak: drop to drop them from valid/test, or "
              "audit.on_leak: warn to proceed with them.", file=sys.stderr)
        return EXIT_LEAK
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
