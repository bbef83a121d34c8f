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
from pipeline.data.carving import DROPPED, assign_splits, split_manifest
from pipeline.data.grouping import Hashes, confirmed_pairs, picture_groups, star_groups
from pipeline.data.layouts import SPLITS

LISTED = 20  # paths listed per group in the report: a merged group of thousands would bury the rest


@dataclasses.dataclass
class Audit:
    report: dict[str, Any]
    groups: pd.DataFrame  # path, split, label, group
    splits: pd.DataFrame  # path, split, why: one row per image, in the order of ``manifest``
    manifest: pd.DataFrame  # the manifest with each image's final split, rows train, valid, test

    @property
    def leaks(self) -> list[dict[str, Any]]:
        return self.report["cross_split_leaks"]


def audit_dataset(manifest: pd.DataFrame, hashes: Hashes, *, near_duplicate_bits: int, near_duplicate_correlation: float,
                  carve: CarveParams, given: dict[str, str], on_leak: str = "error") -> Audit:
    """Find exact and near duplicates, group images into pictures, carve the splits the data lacks (with
    ``carve``) and flag cross-split leaks. ``given``: how each split the data has was found (source.json's
    ``splits``). With ``on_leak="drop"`` the images of a leaking picture are kept in its first split of train,
    valid, test and dropped from the later ones (said in ``splits`` and counted in the report); otherwise every
    image stays."""
    paths = manifest["path"].tolist()

    exact = [sorted(g["path"]) for _, g in manifest.groupby("sha256") if len(g) > 1]
    pairs, candidates = confirmed_pairs(hashes, near_duplicate_bits, near_duplicate_correlation)
    near_groups = star_groups(len(paths), pairs)
    row = {p: i for i, p in enumerate(paths)}
    exact_pairs = [(row[g[0]], row[p]) for g in exact for p in g[1:]]
    group_of = picture_groups(paths, near_groups, exact_pairs)

    groups = manifest[["path", "split", "label"]].assign(group=group_of)
    assignment = assign_splits(groups, carve=carve, given=given)
    groups = groups.assign(split=assignment.split)
    manifest = manifest.assign(split=assignment.split.to_numpy())
    origins = assignment.origins
    leaks, dropped = [], {}
    for group, members in groups.groupby("group", sort=True):
        member_splits = sorted(set(members["split"]), key=SPLITS.index)
        if len(member_splits) > 1:
            leaks.append({"group": group, "splits": member_splits, "paths": sorted(members["path"])})
            if on_leak == "drop":
                later = members[members["split"] != member_splits[0]]
                dropped.update(dict.fromkeys(later["path"], f"{DROPPED} its picture ({group}) is in {member_splits[0]}"))
    counts = groups["group"].value_counts(sort=True)  # ties: the first group seen
    largest = groups["path"][groups["group"] == counts.index[0]] if len(counts) else None
    across = [{"group": group, "labels": sorted(set(members["label"])), "images": len(members),
               "paths": sorted(members["path"])[:LISTED]}
              for group, members in groups.groupby("group", sort=True) if members["label"].nunique() > 1]

    why = manifest["split"].map(origins)
    if dropped:
        why = why.where(~manifest["path"].isin(dropped), manifest["path"].map(dropped))
    splits_table = manifest[["path", "split"]].assign(why=why.to_numpy())
    kept = ~manifest["path"].isin(dropped).to_numpy()
    manifest = manifest[kept]
    final = split_manifest(manifest, manifest["split"])
    sizes = final.groupby("split")[["width", "height"]]
    images = _ordered(final.groupby("split").size())
    pictures = _ordered(groups[kept].groupby("split")["group"].nunique())
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
        "near_duplicate_correlation": near_duplicate_correlation,
        # hash candidates, and those the thumbnails confirmed: a large gap means many look-alikes
        "near_duplicate_candidates": candidates,
        "near_duplicate_links": len(pairs),
        "exact_duplicate_groups": exact,
        "near_duplicate_groups": [[paths[i] for i in g] for g in near_groups],
        "largest_group": {"images": len(largest), "paths": sorted(largest)[:LISTED]} if largest is not None else None,
        # a picture whose images carry two labels: a false merge or a label error, a user must look
        "groups_across_classes": across,
        # flat or nearly flat images: their difference hash carries no information, so they are linked
        # to others by identical bytes only, never by appearance
        "uninformative_hashes": [paths[i] for i in np.flatnonzero(~hashes.informative)],
        "cross_split_leaks": leaks,
        "leaks_into_held_out": sum(1 for leak in leaks if set(leak["splits"]) & set(HELD_OUT)),
        "on_leak": on_leak,
        "dropped": sorted(dropped),
        "unreadable": [],  # prepare refuses unreadable files, so none reach the audit
    }
    return Audit(report=report, groups=groups, splits=split_manifest(splits_table, splits_table["split"]),
                 manifest=final)


def _ordered(series: pd.Series) -> dict[str, int]:
    return {s: int(series[s]) for s in SPLITS if s in series}


def render_markdown(report: dict[str, Any], *, max_listed: int = 20) -> str:
    """A readable summary of the audit for people (the JSON is for machines)."""
    lines = ["# Dataset audit", ""]
    leaks = report["cross_split_leaks"]
    dropped = report.get("dropped", [])
    if leaks:
        lines += [f"**LEAK: {len(leaks)} picture(s) appear in more than one split.** " + (
            f"{len(dropped)} image(s) of them were dropped from their later split (audit.on_leak: drop)."
            if report.get("on_leak") == "drop" else "Held-out scores are inflated until they are removed "
            "(by hand, or with audit.on_leak: drop)."), ""]
        for leak in leaks[:max_listed]:
            lines.append(f"- {', '.join(leak['splits'])}: {', '.join(leak['paths'])}")
        lines.append("")
    else:
        lines += ["No picture appears in more than one split.", ""]
    across = report.get("groups_across_classes", [])
    if across:
        lines += [f"**{len(across)} picture(s) hold images of two or more classes**: a false merge or a label "
                  "error; look at them.", ""]
        lines += [f"- {', '.join(g['labels'])} ({g['images']} images): {', '.join(g['paths'])}"
                  for g in across[:max_listed]]
        lines.append("")
    largest = report.get("largest_group")
    if largest:
        lines += [f"Largest picture: {largest['images']} image(s), e.g. {', '.join(largest['paths'][:3])}.", ""]
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
                       (f"Near-duplicates (difference hashes within {report['near_duplicate_bits']} bits, "
                        f"thumbnails correlated at least {report['near_duplicate_correlation']:g}; "
                        f"{report['near_duplicate_links']} of {report['near_duplicate_candidates']} hash candidates "
                        "confirmed)", "near_duplicate_groups")]:
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
