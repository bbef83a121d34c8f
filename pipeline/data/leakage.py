"""What is in the dataset: duplicates, original pictures, the split of each, leaks between splits, balance.

Pure functions over the manifest and perceptual hashes; ``pipeline.audit`` does the I/O.
The splits the data lacks are carved here, from the picture groups (``carving``), so the
leak check and every count below are of the splits the later stages use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.features import HELD_OUT
from pipeline.common.params import CarveParams
from pipeline.data.carving import assign_splits, split_manifest
from pipeline.data.grouping import Hashes, components, near_duplicate_pairs, picture_groups


@dataclasses.dataclass
class Audit:
    report: dict[str, Any]
    groups: pd.DataFrame  # path, split, label, group
    splits: pd.DataFrame  # path, split, why: one row per image, in the order of ``manifest``
    manifest: pd.DataFrame  # the manifest with each image's final split, rows train, valid, test

    @property
    def leaks(self) -> list[dict[str, Any]]:
        return self.report["cross_split_leaks"]


def audit_dataset(manifest: pd.DataFrame, hashes: Hashes, *, near_duplicate_bits: int,
                  carve: CarveParams | None = None, given: dict[str, str] | None = None) -> Audit:
    """Find exact and near duplicates, group images into pictures, carve the splits the data lacks (with
    ``carve``; without it the splits stay as given) and flag cross-split leaks. ``given``: how each split
    the data has was found (source.json's ``splits``)."""
    paths = manifest["path"].tolist()

    exact = [sorted(g["path"]) for _, g in manifest.groupby("sha256") if len(g) > 1]
    pairs = near_duplicate_pairs(hashes, near_duplicate_bits)
    near = [[paths[i] for i in comp] for comp in components(len(paths), pairs)]
    row = {p: i for i, p in enumerate(paths)}
    exact_pairs = [(row[g[0]], row[p]) for g in exact for p in g[1:]]
    all_pairs = np.concatenate([pairs, np.array(exact_pairs, dtype=np.int64).reshape(-1, 2)])
    group_of = picture_groups(paths, all_pairs)

    groups = manifest[["path", "split", "label"]].assign(group=group_of)
    if carve is not None:
        assignment = assign_splits(groups, carve=carve, given=given or {})
        groups = groups.assign(split=assignment.split)
        manifest = manifest.assign(split=assignment.split.to_numpy())
        origins = assignment.origins
    else:
        origins = {s: (given or {}).get(s, "as given") for s in dict.fromkeys(manifest["split"])}
    leaks = []
    for group, members in groups.groupby("group", sort=True):
        member_splits = sorted(set(members["split"]))
        if len(member_splits) > 1:
            leaks.append({"group": group, "splits": member_splits, "paths": sorted(members["path"])})

    final = split_manifest(manifest, manifest["split"])
    sizes = final.groupby("split")[["width", "height"]]
    images = _ordered(final.groupby("split").size(), final["split"].to_numpy())
    pictures = _ordered(groups.groupby("split")["group"].nunique(), final["split"].to_numpy())
    report = {
        "images_per_split": images,
        "groups_per_split": pictures,
        # how each split was made: as the data came (a folder, a list) or carved from train by picture
        "splits": {s: {"how": origins[s], "images": images[s], "pictures": pictures[s]} for s in images},
        "class_balance": {
            split: frame.groupby("label").size().astype(int).to_dict()
            for split, frame in final.groupby("split", sort=False)
        },
        "image_size": {
            split: {
                "width_min": int(s["width"].min()), "width_median": float(s["width"].median()),
                "width_max": int(s["width"].max()), "height_min": int(s["height"].min()),
                "height_median": float(s["height"].median()), "height_max": int(s["height"].max()),
            }
            for split, s in sizes
        },
        "near_duplicate_bits": near_duplicate_bits,
        "exact_duplicate_groups": exact,
        "near_duplicate_groups": near,
        # flat or nearly flat images: their difference hash carries no information, so they are linked
        # to others by identical bytes only, never by appearance
        "uninformative_hashes": [paths[i] for i in np.flatnonzero(~hashes.informative)],
        "cross_split_leaks": leaks,
        "leaks_into_held_out": sum(1 for leak in leaks if set(leak["splits"]) & set(HELD_OUT)),
        "unreadable": [],  # prepare refuses unreadable files, so none reach the audit
    }
    why = final[["path", "split"]].assign(why=final["split"].map(origins))
    return Audit(report=report, groups=groups, splits=why, manifest=final)


def _ordered(series: pd.Series, splits: np.ndarray) -> dict[str, int]:
    order = list(dict.fromkeys(splits))
    return {s: int(series[s]) for s in order if s in series}


def render_markdown(report: dict[str, Any], *, max_listed: int = 20) -> str:
    """A readable summary of the audit for people (the JSON is for machines)."""
    lines = ["# Dataset audit", ""]
    leaks = report["cross_split_leaks"]
    if leaks:
        lines += [f"**LEAK: {len(leaks)} picture(s) appear in more than one split.** "
                  "Held-out scores are inflated until they are removed.", ""]
        for leak in leaks[:max_listed]:
            lines.append(f"- {', '.join(leak['splits'])}: {', '.join(leak['paths'])}")
        lines.append("")
    else:
        lines += ["No picture appears in more than one split.", ""]
    lines += ["| split | images | original pictures | how |", "|---|---:|---:|---|"]
    hows = {split: entry["how"] for split, entry in report.get("splits", {}).items()}
    for split, n in report["images_per_split"].items():
        lines.append(f"| {split} | {n} | {report['groups_per_split'][split]} | {hows.get(split, '–')} |")
    lines += ["", "## Class balance", ""]
    classes = sorted({c for counts in report["class_balance"].values() for c in counts})
    lines += ["| split | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for split, counts in report["class_balance"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in classes) + " |")
    lines += ["", "## Image sizes (width x height, min / median / max)", ""]
    for split, s in report["image_size"].items():
        lines.append(
            f"- {split}: {s['width_min']}x{s['height_min']} / {s['width_median']:g}x{s['height_median']:g}"
            f" / {s['width_max']}x{s['height_max']}"
        )
    for title, key in [("Exact duplicates (same bytes)", "exact_duplicate_groups"),
                       (f"Near-duplicates (perceptual hash within {report['near_duplicate_bits']} bits)",
                        "near_duplicate_groups")]:
        groups = report[key]
        lines += ["", f"## {title}: {len(groups)} group(s)", ""]
        lines += [f"- {', '.join(g)}" for g in groups[:max_listed]]
        if len(groups) > max_listed:
            lines.append(f"- ... and {len(groups) - max_listed} more (see audit.json)")
    flat = report.get("uninformative_hashes", [])
    if flat:
        lines += ["", f"## Flat images, linked to others by identical bytes only: {len(flat)}", ""]
        lines += [f"- {path}" for path in flat[:max_listed]]
    return "\n".join(lines) + "\n"
