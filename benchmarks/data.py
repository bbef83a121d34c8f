"""How fast are prepare and audit, and the near-duplicate search alone, at scale? Makes its own data.

``--search N [N ...]``: N random 64-bit hashes (plain and mirrored) and random thumbnails, with planted
near copies (a few bits flipped, by plain and by mirrored hash; the thumbnail copied with noise); times
``confirmed_pairs`` (the search and the thumbnail confirmation) at ``--bits`` and ``--correlation``
(default: params.yaml's) in a fresh process per N (the compiled kernels are warmed up first, on 1,000
images, outside the timing) and prints seconds, candidates, confirmed pairs, the bytes held per image
and the process's peak RSS. ``--check`` also runs the all-pairs comparison (the search as it was) and
prints whether the candidate pairs are equal.

``--stages N``: N synthetic JPEGs (``--size``, default 500x375) in Kaggle's layout (70/15/15
train/valid/test, 4 classes), with planted exact copies and mirrored, resized, re-encoded
copies across splits (one of each per 50 images); runs the prepare and audit stages, each
in a fresh process as dvc would, once per ``--workers`` count, and prints wall time, images/s,
the largest process's peak RSS and workers; then whether the manifests are byte-identical
across worker counts and what the audit found of the planted copies. ``--extract`` also runs
the extract stage (random backbone, shipped params) on the same images.

One line per figure. The machine may be shared: compare figures of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageOps

from stage_run import PROJECT, run_stage

CLASSES = ("Angry", "Other", "Sad", "happy")


def planted_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random plain and mirrored hashes and thumbnails; 1 in 20 a near copy (0-10 bits flipped) of another, plain or
    mirrored, its thumbnail the other's (mirrored for a mirrored copy) plus noise."""
    from pipeline.data.grouping import THUMBNAIL

    rng = np.random.default_rng(seed)
    plain = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    mirrored = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    thumbnails = rng.integers(0, 256, size=(n, THUMBNAIL * THUMBNAIL), dtype=np.uint8)
    targets = rng.choice(n, size=n // 20, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), targets), size=len(targets))  # a copy of a copy's source: stale
    bits = rng.integers(0, 11, size=len(targets))
    for target, source, flips in zip(targets, sources, bits):
        mask = np.uint64(sum(1 << int(b) for b in rng.choice(64, size=flips, replace=False)))
        copy = thumbnails[source].reshape(THUMBNAIL, THUMBNAIL)
        if rng.random() < 0.5:
            plain[target] = plain[source] ^ mask
        else:
            mirrored[target] = plain[source] ^ mask  # a mirrored copy
            copy = copy[:, ::-1]
        noise = rng.integers(-8, 9, size=copy.shape)
        thumbnails[target] = np.clip(copy.astype(np.int16) + noise, 0, 255).astype(np.uint8).ravel()
    return plain, mirrored, thumbnails


def search_once(n: int, bits: int, correlation: float, check: bool) -> None:
    """In this process: time the search and its confirmation on n images, print one line (and the check's)."""
    from pipeline.data.grouping import Hashes, confirmed_pairs, near_duplicate_pairs

    plain, mirrored, thumbnails = planted_hashes(n)
    hashes = Hashes(plain, mirrored, np.ones(n, dtype=bool), thumbnails)
    per_image = plain.itemsize + mirrored.itemsize + 1 + thumbnails.shape[1]
    warm = Hashes(plain[:1000], mirrored[:1000], np.ones(1000, dtype=bool), thumbnails[:1000])
    confirmed_pairs(warm, bits, correlation)  # compiles (or loads) the kernels
    start = time.perf_counter()
    pairs, candidates = confirmed_pairs(hashes, bits, correlation)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"search and confirmation n={n:,} bits={bits} r>={correlation:g}: {seconds:.2f} s, {candidates:,} candidates, "
          f"{len(pairs):,} confirmed, {per_image} bytes an image held, peak RSS {rss:.0f} MiB, "
          f"threads={len(os.sched_getaffinity(0))}", flush=True)
    if check:
        start = time.perf_counter()
        expected = all_pairs(plain, mirrored, bits)
        equal = np.array_equal(near_duplicate_pairs(hashes, bits), expected)
        print(f"all-pairs n={n:,} bits={bits}: {time.perf_counter() - start:.2f} s, candidates equal={equal}", flush=True)


def all_pairs(plain: np.ndarray, mirrored: np.ndarray, bits: int, chunk: int = 1024) -> np.ndarray:
    """The search before this work: every pair, in blocks of rows."""
    found = []
    for start in range(0, len(plain), chunk):
        block = plain[start : start + chunk, None]
        dist = np.minimum(np.bitwise_count(block ^ plain[None, :]), np.bitwise_count(block ^ mirrored[None, :]))
        i, j = np.nonzero(dist <= bits)
        i = i + start
        found.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(found)


def make_images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> dict[str, int]:
    """N JPEGs in ``root/<split>/<class>/``: smooth random pictures with grain, plus planted copies across splits."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * 70 + ["valid"] * 15 + ["test"] * 15
    planted = {"exact": 0, "near": 0}
    originals: list[Path] = []
    for i in range(n):
        split, label = splits[i % 100], CLASSES[i % len(CLASSES)]
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:07d}.jpg"
        if i % 50 == 17 and originals:  # an exact copy of an earlier image, likely in another split
            shutil.copyfile(originals[int(rng.integers(len(originals)))], target)
            planted["exact"] += 1
            continue
        if i % 50 == 41 and originals:  # mirrored, 90 % size, re-encoded
            with Image.open(originals[int(rng.integers(len(originals)))]) as source:
                copy = ImageOps.mirror(source).resize((size[0] * 9 // 10, size[1] * 9 // 10))
            copy.save(target, quality=80)
            planted["near"] += 1
            continue
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(target, quality=90)
        originals.append(target)
    return planted


def stages(n: int, size: tuple[int, int], worker_counts: list[int], extract: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data = Path(tmp) / "images"
        start = time.perf_counter()
        planted = make_images(data, n, size)
        print(f"made {n:,} JPEGs {size[0]}x{size[1]} in {time.perf_counter() - start:.1f} s "
              f"({planted['exact']} exact and {planted['near']} mirrored copies planted)", flush=True)
        params = yaml.safe_load((PROJECT / "params.yaml").read_text())
        manifests = {}
        for workers in worker_counts:
            work = Path(tmp) / f"w{workers}"
            work.mkdir()
            params["data"].update(root=str(data), layout_dir="", num_workers=workers)
            params["audit"]["on_leak"] = "warn"
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            a = "artifacts/data/"
            wall_p, rss_p, out = run_stage(work, "pipeline.prepare", [
                "--manifest", a + "manifest.csv", "--skipped", a + "skipped.csv", "--source", a + "source.json"])
            line = out.splitlines()[0]
            wall_a, rss_a, out_a = run_stage(work, "pipeline.audit", [
                "--manifest", a + "manifest.csv", "--source", a + "source.json", "--report", "artifacts/audit.json",
                "--summary", "artifacts/audit.md", "--groups", a + "groups.csv", "--splits", a + "splits.csv",
                "--split-manifest", a + "split_manifest.csv"])
            print(f"prepare workers={workers}: {wall_p:.1f} s, {n / wall_p:.0f} img/s, peak RSS {rss_p:.0f} MiB "
                  f"({line})", flush=True)
            print(f"audit (after prepare, workers={workers}): {wall_a:.1f} s, peak RSS {rss_a:.0f} MiB "
                  f"({next(x for x in out_a.splitlines() if x.startswith('pictures per split'))})", flush=True)
            print(f"prepare+audit workers={workers}: {wall_p + wall_a:.1f} s, {n / (wall_p + wall_a):.0f} img/s",
                  flush=True)
            manifests[workers] = (work / a / "manifest.csv").read_bytes()
            report = json.loads((work / "artifacts" / "audit.json").read_text())
            in_groups = sum(len(g) - 1 for g in report["exact_duplicate_groups"])
            print(f"audit found: {in_groups} exact copies in {len(report['exact_duplicate_groups'])} group(s), "
                  f"{len(report['near_duplicate_groups'])} near-duplicate group(s), "
                  f"{len(report['cross_split_leaks'])} cross-split leak(s)", flush=True)
        if len(manifests) > 1:
            same = len(set(manifests.values())) == 1
            print(f"manifests byte-identical across workers {worker_counts}: {same}", flush=True)
        if extract:
            work = Path(tmp) / f"w{worker_counts[0]}"
            params["backbones"]["efficientnet_b1"]["weights"] = None
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            wall_e, rss_e, out = run_stage(work, "pipeline.extract", [
                "--backbone", "efficientnet_b1", "--manifest", "artifacts/data/split_manifest.csv",
                "--source", "artifacts/data/source.json",
                "--out", "features/efficientnet_b1", "--scratch", ".extract-shards/efficientnet_b1"])
            print(f"extract (random backbone, shipped params): {wall_e:.1f} s, {n / wall_e:.0f} img/s, "
                  f"peak RSS {rss_e:.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", type=int, nargs="+", metavar="N")
    parser.add_argument("--bits", type=int, default=None, help="default: params.yaml's audit.near_duplicate_bits")
    parser.add_argument("--correlation", type=float, default=None,
                        help="default: params.yaml's audit.near_duplicate_correlation")
    parser.add_argument("--check", action="store_true", help="also compare with the all-pairs search")
    parser.add_argument("--stages", type=int, metavar="N")
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--extract", action="store_true")
    parser.add_argument("--_search_once", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    audit = yaml.safe_load((PROJECT / "params.yaml").read_text())["audit"]
    bits = args.bits if args.bits is not None else audit["near_duplicate_bits"]
    correlation = args.correlation if args.correlation is not None else audit["near_duplicate_correlation"]
    if args._search_once:
        search_once(args._search_once, bits, correlation, args.check)
        return
    for n in args.search or []:  # a fresh process each, so each peak RSS is its own
        subprocess.run([sys.executable, __file__, "--_search_once", str(n), "--bits", str(bits),
                        "--correlation", str(correlation), *(["--check"] if args.check else [])], check=True,
                       env={**os.environ, "PYTHONPATH": str(PROJECT)})
    if args.stages:
        width, height = (int(v) for v in args.size.split("x"))
        stages(args.stages, (width, height), args.workers, args.extract)


if __name__ == "__main__":
    main()
