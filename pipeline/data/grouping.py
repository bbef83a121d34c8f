"""Group images into original pictures, so no picture is split across folds or splits.

Three sources of evidence are merged: identical bytes, the dataset's naming of offline
augmentations (``aug-<n>-<original>.jpg`` beside ``<original>.jpg``) and near-duplicates
(resized, re-encoded, mirrored, lightly cropped or rotated copies), which also works on
datasets without such naming. A near-duplicate needs two independent signals: a
difference hash within a few bits finds candidates fast, and the correlation of small
grey thumbnails confirms them, because on everyday photos different pictures meet
within the hash radius (pets, faces, a subject centred on a plain background).
Confirmed links never chain: see ``star_groups``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

import imagehash
import numpy as np
from PIL import Image, ImageOps
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from pipeline.data.neighbours import pairs_within

AUG_NAME = re.compile(r"^aug-\d+-(?P<original>.+)$")


def original_name(path: str) -> str:
    """The picture a file was derived from, by name: ``a/b/aug-3-x.jpg`` -> ``a/b/x.jpg``."""
    p = PurePosixPath(path)
    match = AUG_NAME.match(p.name)
    return str(p.with_name(match["original"])) if match else path


FLAT_RANGE = 8  # grey levels: a thumbnail flatter than this gives a difference hash of noise, or of zeros
THUMBNAIL = 12  # side of the grey thumbnail that confirms a candidate: 144 bytes an image (benchmarks/near_duplicates.py)


@dataclasses.dataclass(frozen=True)
class Hashes:
    """Difference hashes of images and of their mirror images, and whether each carries information."""

    plain: np.ndarray  # (n,) uint64
    mirrored: np.ndarray  # (n,) uint64
    informative: np.ndarray  # (n,) bool: False for flat or nearly flat images
    thumbnails: np.ndarray  # (n, THUMBNAIL**2) uint8 grey thumbnails, row-major


def image_hashes(image: Image.Image) -> tuple[int, int, bool, bytes]:
    """The dHash of a decoded RGB image, that of its mirror image, whether it is informative, and its grey
    ``THUMBNAIL`` x ``THUMBNAIL`` thumbnail (box-averaged, row-major bytes)."""
    # dHash works on the grey image; converting once, then mirroring it, gives the same bits as
    # hashing the RGB image and its mirror image (the conversion is per pixel), at a third of the cost.
    grey = image.convert("L")
    flatness = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return (_as_int(imagehash.dhash(grey)), _as_int(imagehash.dhash(ImageOps.mirror(grey))),
            int(flatness.max()) - int(flatness.min()) >= FLAT_RANGE,
            grey.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX).tobytes())


def _as_int(h: imagehash.ImageHash) -> int:
    return int(str(h), 16)


def near_duplicate_pairs(hashes: Hashes, max_bits: int, *, threads: int | None = None) -> np.ndarray:
    """Candidate pairs (i < j): informative images whose hashes differ in at most ``max_bits`` bits, mirror included.

    Compares image i's hash with both the plain and mirrored hash of image j, so
    a horizontally flipped copy is found as readily as a resized one. Sorted by (i, j).
    Not all pairs: multi-index hashing (``pipeline.data.neighbours``) finds the same
    pairs in about linear time at the usual ``max_bits``, so a million images take a minute.
    """
    keep = np.flatnonzero(hashes.informative)
    plain, mirrored = hashes.plain[keep], hashes.mirrored[keep]
    found = np.concatenate([pairs_within(plain, plain, max_bits, threads=threads),
                            pairs_within(plain, mirrored, max_bits, threads=threads)])
    return keep[np.unique(found, axis=0)].astype(np.int64)  # unique rows: an empty (0, 2) stays one


def thumbnail_correlation(hashes: Hashes, pairs: np.ndarray) -> np.ndarray:
    """For each pair (i, j), the Pearson correlation of i's thumbnail with j's or with j's mirror image, the larger.

    Correlation ignores brightness and contrast; a flat thumbnail correlates with nothing (0).
    Only the images named in ``pairs`` are normalised, so memory follows the candidates, not the dataset.
    """
    if len(pairs) == 0:
        return np.empty(0)
    used, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    plain = hashes.thumbnails[used].astype(np.float32)
    mirrored = plain.reshape(-1, THUMBNAIL, THUMBNAIL)[:, :, ::-1].reshape(len(used), -1)

    def unit(rows: np.ndarray) -> np.ndarray:
        rows = rows - rows.mean(axis=1, keepdims=True)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)

    plain, mirrored = unit(plain), unit(mirrored)
    first, second = plain[local[:, 0]], local[:, 1]
    return np.maximum(np.einsum("pd,pd->p", first, plain[second]), np.einsum("pd,pd->p", first, mirrored[second]))


def confirmed_pairs(hashes: Hashes, max_bits: int, min_correlation: float, *,
                    threads: int | None = None) -> tuple[np.ndarray, int]:
    """Near-duplicate pairs: hash candidates (``near_duplicate_pairs``) whose thumbnails correlate at least
    ``min_correlation``. Returns the confirmed pairs (sorted, as (k, 2) int64) and the number of candidates."""
    candidates = near_duplicate_pairs(hashes, max_bits, threads=threads)
    return candidates[thumbnail_correlation(hashes, candidates) >= min_correlation], len(candidates)


def star_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Groups of linked images in which every member is linked to the group's centre: no chains.

    Images are taken by number of links, most first (then by index); an image not yet grouped
    becomes a centre and takes each of its linked images not yet grouped. So A~B and B~C with
    A and C unlinked give {B, A, C} only when B is the centre, the one image near both; a copy is
    never grouped through a stranger's look-alike. Groups of two or more, each sorted.
    """
    if len(pairs) == 0:
        return []
    ends = np.concatenate([pairs, pairs[:, ::-1]])
    ends = ends[np.lexsort((ends[:, 1], ends[:, 0]))]
    starts = np.searchsorted(ends[:, 0], np.arange(n + 1))
    degree = np.diff(starts)
    centre = np.full(n, -1, dtype=np.int64)
    for i in np.lexsort((np.arange(n), -degree))[: np.count_nonzero(degree)]:
        if centre[i] < 0:
            linked = ends[starts[i]:starts[i + 1], 1]
            linked = linked[centre[linked] < 0]
            centre[i] = i
            centre[linked] = i
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(centre >= 0):
        groups.setdefault(int(centre[i]), []).append(int(i))
    return [g for g in groups.values() if len(g) > 1]


def picture_groups(paths: Sequence[str], near_groups: Iterable[Sequence[int]],
                   exact_pairs: Iterable[tuple[int, int]] = ()) -> list[str]:
    """Assign each image the id of its original picture (the first path of its group).

    Merged: the near-duplicate groups (``star_groups``), images of identical bytes, and images named as
    augmentations of one original. Identical bytes and names are facts about the files, so those
    merge transitively; appearance alone never does beyond ``star_groups``.
    """
    index = {p: i for i, p in enumerate(paths)}
    first_copy: dict[str, int] = {}  # for augmentations whose original is absent: join the siblings
    edges = [(group[0], member) for group in near_groups for member in group[1:]]
    edges += list(exact_pairs)
    for i, path in enumerate(paths):
        original = original_name(path)
        if original != path:
            edges.append((i, index[original] if original in index else first_copy.setdefault(original, i)))
    ends = np.array(edges, dtype=np.int64).reshape(-1, 2)
    n = len(paths)
    links = coo_array((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(n, n))
    _, component = connected_components(links, directed=False)
    _, first = np.unique(component, return_index=True)  # each component's smallest index: its first path
    return [paths[i] for i in first[component]]
