"""How right the audit's near-duplicate rule is on real photos: copies planted into distinct pictures.

The distinct pictures are the pets dataset's originals (train without its ``aug-`` copies, valid and test:
370 pictures that the audit keeps apart) and, with ``--extra``, any folders of other real photos (the
figures in benchmarks/README.md add the 21 photos that scikit-image, scikit-learn and matplotlib ship:
``pip download --no-deps scikit-image==0.26.0`` and unzip its ``skimage/data``). Each picture gets
``--copies`` planted copies, each made by one edit drawn at random (seeded) from the kinds the rule must
survive: JPEG at quality 10-30, resize to 50-200%, crop up to 10% of each side's length, mirror, rotate up
to 5 degrees, brightness and contrast each within +-20%; and ``combo``, all of them at once but the low
quality (harder than the rule promises; shown apart). Every image then goes through the pipeline's own
code: ``image_hashes`` (as prepare), ``near_duplicate_pairs`` and ``thumbnail_correlation`` (as the audit),
``star_groups`` and ``picture_groups``.

For each hash radius and correlation threshold: recall (planted copies whose final picture group is their
original's, ``combo`` left out), the confirmed links between different pictures, and link precision (links
within one picture / all links). The first row is the rule before (hash alone at 10 bits, chained).
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from pipeline.data.grouping import (
    Hashes,
    image_hashes,
    near_duplicate_pairs,
    picture_groups,
    star_groups,
    thumbnail_correlation,
)
from pipeline.data.images import load_rgb
from pipeline.data.layouts import IMAGE_SUFFIXES

KINDS = ("jpeg", "resize", "crop", "mirror", "rotate", "light", "combo")
PETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "pets-facial-expression"


def originals(pets: Path, extra: list[Path]) -> list[Path]:
    master = pets / "Master Folder"
    found = sorted(p for p in master.rglob("*") if p.is_file() and not p.name.startswith("aug-"))
    for folder in extra:
        found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return found


def planted(image: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    """One copy of ``image`` under the edit ``kind``, saved as JPEG and decoded again, as a file would be."""
    if kind in ("resize", "combo"):
        f = rng.uniform(0.5, 2.0)
        image = image.resize((max(16, round(image.width * f)), max(16, round(image.height * f))),
                             Image.Resampling.BICUBIC)
    if kind in ("crop", "combo"):
        w, h = image.size
        cut_w, cut_h = rng.uniform(0, 0.1) * w, rng.uniform(0, 0.1) * h
        left, top = rng.uniform(0, cut_w), rng.uniform(0, cut_h)
        image = image.crop((round(left), round(top), round(w - cut_w + left), round(h - cut_h + top)))
    if kind == "mirror" or (kind == "combo" and rng.random() < 0.5):
        image = ImageOps.mirror(image)
    if kind in ("rotate", "combo"):
        image = image.rotate(rng.uniform(-5, 5), resample=Image.Resampling.BICUBIC)
    if kind in ("light", "combo"):
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(10, 30) if kind == "jpeg" else 75)
    return load_rgb(buffer.getvalue())


def signatures(files: list[Path], copies: int, seed: int) -> tuple[Hashes, np.ndarray, np.ndarray]:
    """Hashes of every original and its planted copies; the picture of each row and its edit ('' for none)."""
    rng = random.Random(seed)
    rows, picture, kind = [], [], []
    for i, path in enumerate(files):
        image = load_rgb(path.read_bytes())
        rows.append(image_hashes(image))
        picture.append(i)
        kind.append("")
        for edit in rng.sample(KINDS, copies):
            rows.append(image_hashes(planted(image, edit, rng)))
            picture.append(i)
            kind.append(edit)
    hashes = Hashes(plain=np.array([r[0] for r in rows], dtype=np.uint64),
                    mirrored=np.array([r[1] for r in rows], dtype=np.uint64),
                    informative=np.array([r[2] for r in rows], dtype=bool),
                    thumbnails=np.stack([np.frombuffer(r[3], dtype=np.uint8) for r in rows]))
    return hashes, np.array(picture), np.array(kind)


def score(groups: list[str], links: np.ndarray, picture: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    group = np.array(groups)
    first = {p: i for i, p in reversed(list(enumerate(picture)))}  # each picture's original: its first row
    together = group == group[[first[p] for p in picture]]
    planted_rows = (kind != "") & (kind != "combo")
    same = picture[links[:, 0]] == picture[links[:, 1]] if len(links) else np.zeros(0, dtype=bool)
    merged = sum(len(set(picture[group == g])) > 1 for g in set(groups))
    per_kind = {k: together[kind == k].mean() for k in KINDS}
    return {"recall": together[planted_rows].mean(), "false_links": int((~same).sum()),
            "precision": same.mean() if len(same) else 1.0, "merged_groups": merged, **per_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pets", type=Path, default=PETS)
    parser.add_argument("--extra", type=Path, nargs="*", default=[], help="folders of other real photos")
    parser.add_argument("--copies", type=int, default=2, help="planted copies per picture")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 10, 11, 12, 14])
    parser.add_argument("--correlation", type=float, nargs="+", default=[0.75, 0.8, 0.85, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.pets / "Master Folder").is_dir():
        parser.error(f"--pets {args.pets}: no 'Master Folder' there; point it at the pets dataset (Kaggle's layout)")
    files = originals(args.pets, args.extra)
    hashes, picture, kind = signatures(files, args.copies, args.seed)
    n = len(picture)
    print(f"{len(files)} distinct pictures, {n - len(files)} planted copies ({args.copies} each), "
          f"{n * (n - 1) // 2:,} pairs of images")
    names = [str(i) for i in range(n)]
    header = "| rule | candidates | links | false links | link precision | merged groups | recall (no combo) | " + \
        " | ".join(KINDS) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    def row(rule: str, candidates: int, links: np.ndarray, groups: list[str]) -> None:
        s = score(groups, links, picture, kind)
        print(f"| {rule} | {candidates} | {len(links)} | {s['false_links']} | {s['precision']:.4f} | "
              f"{s['merged_groups']} | {s['recall']:.3f} | " + " | ".join(f"{s[k]:.3f}" for k in KINDS) + " |",
              flush=True)

    before = near_duplicate_pairs(hashes, 10)
    # every candidate a link, merged transitively (the names carry no augmentation naming)
    row("before: hash <= 10 bits, chained", len(before), before, picture_groups(names, [], before))
    for bits in args.bits:
        candidates = near_duplicate_pairs(hashes, bits)
        correlation = thumbnail_correlation(hashes, candidates)
        for threshold in args.correlation:
            links = candidates[correlation >= threshold]
            row(f"hash <= {bits} bits, r >= {threshold:g}, stars", len(candidates), links,
                picture_groups(names, star_groups(n, links)))


if __name__ == "__main__":
    main()
