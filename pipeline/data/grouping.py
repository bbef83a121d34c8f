"""Group images into original pictures, so no picture is split across folds or splits.

Two sources of evidence are merged: the dataset's naming of offline augmentations
(``aug-<n>-<original>.jpg`` beside ``<original>.jpg``) and perceptual-hash
near-duplicates (resized, re-encoded, mirrored or lightly cropped copies), which
also works on datasets without such naming.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import imagehash
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.common.errors import PipelineError
from pipeline.data.images import ImageError, load_rgb
from pipeline.data.neighbours import pairs_within

AUG_NAME = re.compile(r"^aug-\d+-(?P<original>.+)$")


def original_name(path: str) -> str:
    """The picture a file was derived from, by name: ``a/b/aug-3-x.jpg`` -> ``a/b/x.jpg``."""
    p = PurePosixPath(path)
    match = AUG_NAME.match(p.name)
    return str(p.with_name(match["original"])) if match else path


FLAT_RANGE = 8  # grey levels: a thumbnail flatter than this gives a difference hash of noise, or of zeros


@dataclasses.dataclass(frozen=True)
class Hashes:
    """Difference hashes of images and of their mirror images, and whether each carries information."""

    plain: np.ndarray  # (n,) uint64
    mirrored: np.ndarray  # (n,) uint64
    informative: np.ndarray  # (n,) bool: False for flat or nearly flat images


def perceptual_hashes(paths: Iterable[Path]) -> Hashes:
    """64-bit difference hashes (dHash) of each image and of its mirror image.

    dHash compares neighbouring pixels of a 9x8 thumbnail: robust to resizing,
    re-encoding and light crops. On the pets data, at 10 bits, it links no two
    different pictures. A flat image (its thumbnail spans fewer than ``FLAT_RANGE``
    grey levels) hashes to zeros or to noise, so it is marked uninformative and
    never linked by appearance: two unrelated one-colour images are not one picture.
    """
    plain, mirrored, informative = [], [], []
    for path in tqdm(list(paths), desc="perceptual hashes", unit="img"):
        try:
            image = load_rgb(path)
        except ImageError as err:
            raise PipelineError(f"{path} {err}; it changed after prepare checked it: re-run dvc repro "
                                "(prepare checks every image again).") from err
        hashed = image_hashes(image)
        plain.append(hashed[0])
        mirrored.append(hashed[1])
        informative.append(hashed[2])
    return Hashes(plain=np.array(plain, dtype=np.uint64), mirrored=np.array(mirrored, dtype=np.uint64),
                  informative=np.array(informative, dtype=bool))


def image_hashes(image: Image.Image) -> tuple[int, int, bool]:
    """The dHash of a decoded RGB image, that of its mirror image, and whether it is informative."""
    # dHash works on the grey image; converting once, then mirroring it, gives the same bits as
    # hashing the RGB image and its mirror image (the conversion is per pixel), at a third of the cost.
    grey = image.convert("L")
    thumbnail = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return (_as_int(imagehash.dhash(grey)), _as_int(imagehash.dhash(ImageOps.mirror(grey))),
            int(thumbnail.max()) - int(thumbnail.min()) >= FLAT_RANGE)


def _as_int(h: imagehash.ImageHash) -> int:
    return int(str(h), 16)


def near_duplicate_pairs(hashes: Hashes, max_bits: int, *, threads: int | None = None) -> np.ndarray:
    """Index pairs (i < j) of informative images whose hashes differ in at most ``max_bits`` bits, mirror included.

    Compares image i's hash with both the plain and mirrored hash of image j, so
    a horizontally flipped copy is found as readily as a resized one. Sorted by (i, j).
    Not all pairs: multi-index hashing (``pipeline.data.neighbours``) finds the same
    pairs in about linear time at the usual ``max_bits``, so a million images take a minute.
    """
    keep = np.flatnonzero(hashes.informative)
    plain, mirrored = hashes.plain[keep], hashes.mirrored[keep]
    found = np.concatenate([pairs_within(plain, plain, max_bits, threads=threads),
                            pairs_within(plain, mirrored, max_bits, threads=threads)])
    found = np.unique(found, axis=0) if len(found) else np.empty((0, 2), dtype=np.int64)
    return keep[found].reshape(-1, 2).astype(np.int64)


class UnionFind:
    """Disjoint sets over 0..n-1; the smallest index represents each set."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (as sorted index lists) of size >= 2."""
    uf = UnionFind(n)
    for i, j in edges:
        uf.union(int(i), int(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def picture_groups(paths: Sequence[str], near_pairs: np.ndarray) -> list[str]:
    """Assign each image the id of its original picture (the first path of its group).

    Images named as augmentations of one original, and images linked by a chain
    of near-duplicate pairs, end in the same group.
    """
    index = {p: i for i, p in enumerate(paths)}
    first_copy: dict[str, int] = {}  # for augmentations whose original is absent: join the siblings
    edges = [tuple(pair) for pair in near_pairs]
    for i, path in enumerate(paths):
        original = original_name(path)
        if original != path:
            edges.append((i, index[original] if original in index else first_copy.setdefault(original, i)))
    uf = UnionFind(len(paths))
    for i, j in edges:
        uf.union(int(i), int(j))
    return [paths[uf.find(i)] for i in range(len(paths))]
