"""How close does extraction get to the backbone's own speed, where does the time go, does memory stay flat?

Default mode, on the machine it runs on:
  (a) model-only ceiling: the backbone on synthetic preprocessed tensors at the
      configured precision, memory format and batch size;
  (b) end to end: the extraction code path (``embed_items``: loader workers,
      decode, transform, one padded batch shape, backbone, copy back) over a
      generated folder of JPEGs, after one warm-up pass over two batches;
and prints both in img/s, a breakdown of (b) (``loader_wait`` host time blocked on
the workers; ``preprocess``, ``model``, ``copy_back`` device time on CUDA, host time
on the CPU; ``host_wait`` host time blocked on results), ``shapes=`` (distinct
input shapes the backbone saw, from a forward hook) and ``ratio=<(b) / (a)>``.

``--stage`` runs the extract stage in a fresh process on 1074 generated JPEGs, the
pets dataset's split sizes, with the shipped params (``auto``: batch and workers
fit the device) unless overridden; prints the wall time (interpreter and torch
start-up included) and the stage's own time, ``stage_seconds=`` (from the start of
its ``main``, model load included).

``--rss N`` runs the extract stage on N and 10*N generated images, each in a fresh
process, and prints their peak resident memory and the ratio.

``--ray N`` runs the extract stage on N generated images with the local engine and
with the ``ray`` engine on 1 and 2 local CPU actors; prints img/s of each (the
extraction alone, and the stage's wall time with Ray's start-up) and the scaling.

``--precision-check N`` embeds N generated JPEGs in fp32 and in each faster
precision and prints the mean cosine similarity to fp32. With ``--data-root``
(a dataset in Kaggle's layout) it embeds that dataset's train and test splits
instead, fits logreg, svm and kNN on each precision's train embeddings and prints
how many test predictions differ from fp32's. Give ``--checkpoint`` (e.g. the real
IMAGENET1K_V2 file) for a meaningful figure; without it the random backbone's
BatchNorm statistics are first re-estimated on the images.

Speed does not depend on weight values, so the backbone is randomly initialised.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from pipeline.common.params import ExtractParams
from pipeline.embed.backbone import build_backbone, parse_backbone
from pipeline.embed.embedding import DECODES, PRECISIONS, Settings, Stats, embed_items, embed_paths, resolve_settings
from pipeline.embed.loading import Preprocess
from pipeline.embed.work import plan_batches, work_of_paths

PROJECT = Path(__file__).resolve().parents[1]
CHANNELS_LAST = {"auto": "auto", "true": True, "false": False}
RANDOM_B1 = parse_backbone("efficientnet_b1", {"source": "torchvision", "model": "efficientnet_b1", "weights": None})


def make_jpegs(folder: Path, n: int, size: tuple[int, int], *, seed: int = 0) -> list[Path]:
    """n photo-like JPEGs (smooth colour fields with noise) of the given width x height; existing ones are kept."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{size[0]}x{size[1]}-{seed}-{i:06d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        noisy = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(path, quality=90)
    return paths


def model_only(backbone, settings: Settings, *, seconds: float) -> float:
    crop = backbone.info["transform"]["crop_size"][0]
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    device = settings.device
    backbone.model.to(device).to(memory_format=memory_format)  # in place
    batch = torch.randn(settings.batch_size, 3, crop, crop, device=device).contiguous(memory_format=memory_format)
    dtype = PRECISIONS[settings.precision]

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            backbone.embed(batch).float().cpu()

    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += settings.batch_size
    return n / (time.perf_counter() - start)


def end_to_end(backbone, paths: list[Path], settings: Settings, *, profile: int = 0) -> tuple[float, Stats, set]:
    work = work_of_paths(paths)
    preprocess = Preprocess.of(backbone.transform)
    batches = plan_batches(work, settings.batch_size)
    for _ in embed_items(backbone, work, batches[:2], settings, preprocess, desc="warm-up"):
        pass
    shapes: set = set()
    hook = backbone.model.features.register_forward_pre_hook(lambda module, args: shapes.add(tuple(args[0].shape)))
    stats = Stats()
    if settings.device.type == "cuda":
        torch.cuda.synchronize()
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in embed_items(backbone, work, batches, settings, preprocess, stats=stats, desc="end-to-end"):
        pass  # each batch is copied back to the host, so the loop ends when the device has finished
    seconds = time.perf_counter() - start
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    hook.remove()
    return len(paths) / seconds, stats, shapes


def run_stage(counts: dict[str, int], work: Path, *, size: tuple[int, int], extract: dict,
              views: int = 0) -> tuple[float, str]:
    """Wall seconds of a fresh process running the extract stage (interpreter start and model load
    included) on generated images, ``counts`` per split, and what it printed."""
    name = "-".join(str(n) for n in counts.values()) + f"-{size[0]}x{size[1]}"
    root = work / f"data{name}"
    for split, count in counts.items():
        make_jpegs(root / "Master Folder" / split / "a", count, size, seed=count)
    folder = work / f"run{name}-{len(list(work.glob('run*')))}"
    folder.mkdir()
    settings = yaml.safe_load((PROJECT / "params.yaml").read_text())
    settings["data"].update(root=str(root))
    settings["backbones"]["efficientnet_b1"].update(weights=None, checkpoint=None)
    settings["extract"].update(extract)
    settings["views"].update(count=views)
    (folder / "params.yaml").write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(PROJECT)}
    common = ["--manifest", "manifest.csv", "--source", "source.json", "--params", "params.yaml"]
    stage_only = ["--backbone", "efficientnet_b1"]
    subprocess.run([sys.executable, "-m", "pipeline.prepare", *common, "--skipped", "skipped.csv"], cwd=folder,
                   check=True, capture_output=True, env=env)
    code = ("import resource, sys; from pipeline import extract; code = extract.main(sys.argv[1:]); "
            "print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}'); sys.exit(code)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *common, *stage_only, "--out", "features", "--scratch", "shards"],
                         cwd=folder, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, out.stdout


def figure(text: str, name: str) -> float:
    return float(re.search(rf"{name}=([\d.]+)", text)[1])


def calibrate_batchnorm(backbone, paths: list[Path]) -> None:
    """Re-estimate BatchNorm running statistics of a random backbone on real preprocessed images."""
    model = backbone.model
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    preprocess = Preprocess.of(backbone.transform)
    from pipeline.data.images import load_rgb

    model.train()
    with torch.no_grad():
        for start in range(0, len(paths), 16):
            model(preprocess.normalize(torch.stack([preprocess.geometry(load_rgb(p))
                                                    for p in paths[start:start + 16]])))
    model.eval()


def precision_check(backbone, paths: list[Path], settings: Settings, *, labels: np.ndarray | None = None,
                    n_train: int = 0) -> None:
    """Cosine of each faster precision's embeddings to fp32's; with ``labels``, the first ``n_train``
    paths train classifiers and the rest are the test images whose predictions are compared."""
    from pipeline.evaluate.classifiers import _GRIDS

    def embed(precision: str) -> np.ndarray:
        return embed_paths(backbone, paths, Settings(**{**settings.__dict__, "precision": precision}), desc=precision)

    def predictions(X: np.ndarray) -> dict[str, np.ndarray]:
        return {name: grid.pipeline(n_train).fit(X[:n_train], labels[:n_train]).predict(X[n_train:])
                for name, grid in _GRIDS.items()}

    reference = embed("fp32")
    print(f"fp32 embedding norm: mean {np.linalg.norm(reference, axis=1).mean():.3g}")
    if labels is not None:
        expected = predictions(reference)
        print("fp32 test accuracy: " + ", ".join(f"{name} {(p == labels[n_train:]).mean():.3f}"
                                                 for name, p in expected.items()))
    for precision in ("bf16", "fp16"):
        other = embed(precision)
        cosine = (reference * other).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
        print(f"{precision} vs fp32: mean cosine {cosine.mean():.5f}, min {cosine.min():.5f}")
        if labels is not None:
            differ = {name: int((p != expected[name]).sum()) for name, p in predictions(other).items()}
            print(f"{precision} vs fp32: test predictions that differ (of {len(labels) - n_train}): "
                  + ", ".join(f"{name} {n}" for name, n in differ.items()))


def settings_from(args, device: torch.device | None = None) -> Settings:
    params = ExtractParams(device=args.device, batch_size=args.batch_size or "auto",
                           num_workers="auto" if args.workers is None else args.workers,
                           channels_last=CHANNELS_LAST[args.channels_last], pad_batches="auto",
                           precision=args.precision, decode=args.decode,
                           crop_size=None, resize_size=None, shard_rows=50000, engine="local", ray_address=None,
                           ray_actors="auto", ray_timeout_s=30.0)
    settings = resolve_settings(params, device)
    if settings.device.type == "cpu" and args.workers is None:
        settings = Settings(**{**settings.__dict__, "num_workers": 0})  # decode inline: the 2 cores run the model
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                        help="auto: on the CPU only (the extract params' default)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: auto (256 on CUDA, 32 elsewhere)")
    parser.add_argument("--workers", type=int, default=None, help="default: auto on CUDA (cores - 1), 0 on the CPU")
    parser.add_argument("--images", type=int, default=None, help="default: 3000 on CUDA, 200 on CPU")
    parser.add_argument("--size", default="500x375", help="JPEG width x height")
    parser.add_argument("--jpegs", type=Path, default=None, help="folder to keep generated JPEGs in (reused)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the model-only measurement")
    parser.add_argument("--decode", default="auto", choices=DECODES)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the main process during the end-to-end pass; print its N costliest functions")
    parser.add_argument("--stage", action="store_true", help="the extract stage's time on 1074 JPEGs (see above)")
    parser.add_argument("--rss", type=int, default=None, metavar="N", help="peak RSS for N and 10*N images")
    parser.add_argument("--rss-crop", type=int, default=64, help="crop size in --rss mode (memory, not speed)")
    parser.add_argument("--ray", type=int, default=None, metavar="N", help="ray engine (1, 2 actors) vs local")
    parser.add_argument("--precision-check", type=int, default=None, metavar="N",
                        help="cosine of bf16/fp16 to fp32 embeddings on N generated images (with --data-root: "
                             "on that dataset, N of its images re-estimating a random backbone's BatchNorm)")
    parser.add_argument("--checkpoint", default=None, help="state dict for --precision-check (real weights)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="--precision-check on this dataset's train/test, classifier predictions included")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    warnings.simplefilter("ignore", UserWarning)  # the random-init warning: expected here

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.rss is not None:
            small = {"device": "cpu", "batch_size": 32, "num_workers": 0, "precision": "fp32",
                     "crop_size": args.rss_crop, "resize_size": args.rss_crop + args.rss_crop // 8}
            rss = [figure(run_stage({"train": n, "valid": 4, "test": 4}, work, size=size, extract=small)[1],
                          "peak_rss_kib") / 1024 for n in (args.rss, 10 * args.rss)]
            print(f"peak RSS, extract of {args.rss} images: {rss[0]:.0f} MiB")
            print(f"peak RSS, extract of {10 * args.rss} images: {rss[1]:.0f} MiB")
            print(f"rss_ratio={rss[1] / rss[0]:.3f}")
            return 0

        if args.stage:
            counts = {"train": 1000, "valid": 36, "test": 38}  # the pets dataset's splits
            extract = {k: v for k, v in {"device": args.device, "precision": args.precision, "decode": args.decode,
                                         "batch_size": args.batch_size, "num_workers": args.workers}.items()
                       if v is not None}
            wall, printed = run_stage(counts, work, size=size, extract={
                **extract, "channels_last": CHANNELS_LAST[args.channels_last]})
            print(next(line for line in printed.splitlines() if "embeddings of dim" in line))
            print(next(line for line in printed.splitlines() if line.startswith("timing:")))
            print(f"wall_seconds={wall:.2f} (fresh process: interpreter, torch import, model load, extraction)")
            print(f"stage_seconds={figure(printed, 'stage_seconds'):.2f}")
            return 0

        if args.ray is not None:
            counts = {"train": args.ray, "valid": 8, "test": 8}
            rates = {}
            base = {"device": "cpu", "precision": "fp32", "batch_size": args.batch_size or 32, "shard_rows": 256,
                    "crop_size": 128, "resize_size": 144}
            for name, extract in [("local", {"engine": "local"}), ("ray, 1 actor", {"engine": "ray", "ray_actors": 1}),
                                  ("ray, 2 actors", {"engine": "ray", "ray_actors": 2})]:
                wall, printed = run_stage(counts, work, size=size, extract={**base, **extract})
                seconds = figure(printed, "extract_seconds")
                rows = sum(counts.values())
                rates[name] = rows / seconds
                print(f"{name}: {rates[name]:.1f} img/s over {rows} images (extraction {seconds:.1f} s; "
                      f"stage wall {wall:.1f} s with interpreter and Ray start-up; peak RSS of the stage "
                      f"process {figure(printed, 'peak_rss_kib') / 1024:.0f} MiB)")
            print(f"scaling_1_actor={rates['ray, 1 actor'] / rates['local']:.3f} "
                  f"scaling_2_actors={rates['ray, 2 actors'] / rates['local']:.3f}")
            return 0

        settings = settings_from(args)
        if args.precision_check is not None:
            labels, n_train = None, 0
            if args.data_root:
                from pipeline.data.dataset import scan_layout

                frame = scan_layout(args.data_root / "Master Folder", {"train": "train", "test": "test"},
                                    skipped=[])  # valid is left out
                paths = [args.data_root / "Master Folder" / p for p in frame["path"]]
                labels, n_train = frame["label"].to_numpy(), int((frame["split"] == "train").sum())
            else:
                paths = make_jpegs(args.jpegs or work / "jpegs", args.precision_check, size)
            if args.checkpoint:
                backbone = build_backbone("efficientnet_b1", parse_backbone("efficientnet_b1", {
                    "source": "torchvision", "model": "efficientnet_b1", "weights": None,
                    "checkpoint": str(args.checkpoint)}))
            else:
                backbone = build_backbone("efficientnet_b1", RANDOM_B1)
                calibrate_batchnorm(backbone, paths[:: max(1, len(paths) // args.precision_check)])
            precision_check(backbone, paths, settings, labels=labels, n_train=n_train)
            return 0

        cuda = settings.device.type == "cuda"
        backbone = build_backbone("efficientnet_b1", RANDOM_B1)
        name = torch.cuda.get_device_name(settings.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}; precision {settings.precision}, channels_last {settings.channels_last}, batch "
              f"{settings.batch_size}, workers {settings.num_workers}, decode {settings.decode}, "
              f"crop {backbone.info['transform']['crop_size'][0]}")
        paths = make_jpegs(args.jpegs or work / "jpegs", args.images or (3000 if cuda else 200), size)
        ceiling = model_only(backbone, settings, seconds=args.seconds)
        print(f"model-only: {ceiling:.1f} img/s")
        achieved, stats, shapes = end_to_end(backbone, paths, settings, profile=args.profile)
        print(f"end-to-end ({len(paths)} JPEGs {size[0]}x{size[1]}): {achieved:.1f} img/s")
        print(f"breakdown: {stats.line()}")
        print(f"shapes={len(shapes)} {sorted(shapes)}")
        print(f"ratio={achieved / ceiling:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
