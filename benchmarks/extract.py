"""How close does extraction get to the backbone's own speed, and does its memory stay flat?

Default mode, on the machine it runs on:
  (a) model-only ceiling: the backbone on synthetic preprocessed tensors at the
      configured precision, memory format and batch size;
  (b) end to end: the extraction code path (decode, ``weights.transforms()``,
      batching, backbone) over a generated folder of JPEGs;
and prints both in img/s, then ``ratio=<end-to-end / model-only>`` as the last line.

``--rss N`` instead runs the extract stage on N and 10*N generated images, each in
a fresh process, and prints their peak resident memory and the ratio.

``--stage`` times the extract stage in a fresh process (model load included) on
1074 generated JPEGs, the pets dataset's split sizes; last line ``stage_seconds=``.

``--precision-check N`` embeds N generated JPEGs in fp32 and in each faster
precision and prints the mean cosine similarity to fp32. With ``--data-root``
(a dataset in Kaggle's layout) it embeds that dataset's train and test splits
instead, fits logreg, svm and kNN (default hyperparameters) on each precision's
train embeddings and prints how many test predictions differ from fp32's. Give
``--checkpoint`` (e.g. the real IMAGENET1K_V2 file) for a meaningful figure;
without it the random backbone's BatchNorm statistics are first re-estimated on
the images, since default statistics make every embedding vanish.

``--decode cpu|device|auto`` picks the decode path measured end to end
(``device``: nvjpeg on CUDA; see ``pipeline.embed.embedding``).

Speed does not depend on weight values, so the backbone is randomly initialised.
"""

from __future__ import annotations

import argparse
import os
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

from pipeline.common.params import ModelParams
from pipeline.embed.backbone import build_backbone
from pipeline.embed.embedding import (
    DECODES,
    PRECISIONS,
    iter_embeddings,
    resolve_decode,
    resolve_device,
    resolve_precision,
)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
RANDOM_B1 = ModelParams(arch="efficientnet_b1", weights=None, checkpoint=None, init_seed=0)


def make_jpegs(folder: Path, n: int, size: tuple[int, int], *, seed: int = 0) -> list[Path]:
    """n photo-like JPEGs (smooth colour fields with noise) of the given width x height."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        noisy = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3)), 0, 255)
        paths.append(folder / f"{i:06d}.jpg")
        Image.fromarray(noisy.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def model_only(backbone, *, batch_size: int, device: torch.device, precision: str, channels_last: bool,
               seconds: float) -> float:
    crop = backbone.info["transform"]["crop_size"][0]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone.model.to(device).to(memory_format=memory_format)  # in place
    batch = torch.randn(batch_size, 3, crop, crop, device=device).contiguous(memory_format=memory_format)
    dtype = PRECISIONS[precision]

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            backbone.embed(batch).float().cpu()

    for _ in range(2):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += batch_size
    return n / (time.perf_counter() - start)


def end_to_end(backbone, paths: list[Path], *, batch_size: int, workers: int, device: torch.device,
               precision: str, channels_last: bool, decode: str) -> float:
    settings = dict(batch_size=batch_size, num_workers=workers, device=device, channels_last=channels_last,
                    precision=precision, decode=decode)
    for _ in iter_embeddings(backbone, paths[: batch_size * 2], desc="warm-up", **settings):
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in iter_embeddings(backbone, paths, desc="end-to-end", **settings):
        pass  # each batch is copied back to the host, so the loop ends when the device has finished
    return len(paths) / (time.perf_counter() - start)


def extract_stage(counts: dict[str, int], work: Path, *, size: tuple[int, int], extract: dict) -> tuple[float, float]:
    """Wall seconds (interpreter start and model load included) and peak RSS (MiB) of a fresh
    process running the extract stage on generated images, ``counts`` per split."""
    name = "-".join(str(n) for n in counts.values())
    root = work / f"data{name}"
    for split, count in counts.items():
        make_jpegs(root / "Master Folder" / split / "a", count, size, seed=count)
    params = work / f"params{name}.yaml"
    settings = yaml.safe_load(PARAMS.read_text())
    settings["data"].update(root=str(root))
    settings["model"].update(weights=None, checkpoint=None)
    settings["extract"].update(extract)
    settings["views"].update(count=0)
    params.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    manifest = work / f"manifest{name}" / "manifest.csv"
    subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(params), "--manifest", str(manifest)],
                   check=True, capture_output=True, env=env)
    code = ("import resource, sys; from pipeline import extract; "
            f"extract.main(['--params', '{params}', '--manifest', '{manifest}', '--out', '{work}/features{name}']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, int(out.stdout.strip().splitlines()[-1]) / 1024


def calibrate_batchnorm(backbone, paths: list[Path]) -> None:
    """Re-estimate BatchNorm running statistics of a random backbone on real preprocessed images."""
    from pipeline.embed.embedding import ImageFiles

    model = backbone.model
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    images = ImageFiles(paths, backbone.transform)
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(torch.stack([images[i] for i in range(start, min(start + 16, len(images)))]))
    model.eval()


def precision_check(backbone, paths: list[Path], *, device: torch.device, batch_size: int, workers: int,
                    decode: str, labels: np.ndarray | None = None, n_train: int = 0) -> None:
    """Cosine of each faster precision's embeddings to fp32's; with ``labels``, the first ``n_train``
    paths train classifiers and the rest are the test images whose predictions are compared."""
    from pipeline.evaluate.classifiers import CLASSIFIERS

    def embed(precision: str) -> np.ndarray:
        return np.concatenate(list(iter_embeddings(backbone, paths, batch_size=batch_size, num_workers=workers,
                                                   device=device, precision=precision, decode=decode,
                                                   desc=precision)))

    def predictions(X: np.ndarray) -> dict[str, np.ndarray]:
        return {name: spec.build().fit(X[:n_train], labels[:n_train]).predict(X[n_train:])
                for name, spec in CLASSIFIERS.items()}

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS])
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count - 1 on CUDA, 0 on CPU")
    parser.add_argument("--images", type=int, default=None, help="default: 3000 on CUDA, 200 on CPU")
    parser.add_argument("--size", default="500x375", help="JPEG width x height")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the model-only measurement")
    parser.add_argument("--rss", type=int, default=None, metavar="N", help="peak RSS for N and 10*N images")
    parser.add_argument("--stage", action="store_true",
                        help="wall time of the extract stage (fresh process, model load included) on 1074 JPEGs, "
                             "the pets dataset's split sizes; use --size 224x224 for the pets images' size")
    parser.add_argument("--rss-crop", type=int, default=64, help="crop size in --rss mode (memory, not speed)")
    parser.add_argument("--precision-check", type=int, default=None, metavar="N",
                        help="cosine of bf16/fp16 to fp32 embeddings on N generated images (with --data-root: "
                             "on that dataset, N of its images re-estimating a random backbone's BatchNorm)")
    parser.add_argument("--checkpoint", default=None, help="state dict for --precision-check (real weights)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="--precision-check on this dataset's train/test, classifier predictions included")
    parser.add_argument("--decode", default="auto", choices=DECODES)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    warnings.simplefilter("ignore", UserWarning)  # the random-init warning: expected here

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.rss is not None:
            settings = dict(device="cpu", batch_size=32, num_workers=0, precision="fp32", crop_size=args.rss_crop,
                            resize_size=args.rss_crop + args.rss_crop // 8)
            _, small = extract_stage({"train": args.rss, "valid": 4, "test": 4}, work, size=size, extract=settings)
            _, large = extract_stage({"train": 10 * args.rss, "valid": 4, "test": 4}, work, size=size,
                                     extract=settings)
            print(f"peak RSS, extract of {args.rss} images: {small:.0f} MiB")
            print(f"peak RSS, extract of {10 * args.rss} images: {large:.0f} MiB")
            print(f"rss_ratio={large / small:.3f}")
            return 0

        if args.stage:
            counts = {"train": 1000, "valid": 36, "test": 38}  # the pets dataset's splits
            cuda = resolve_device(args.device).type == "cuda"
            settings = dict(device=args.device, precision=args.precision, decode=args.decode,
                            channels_last=not args.no_channels_last,
                            batch_size=args.batch_size or (256 if cuda else 32),
                            num_workers=args.workers if args.workers is not None else (os.cpu_count() or 2) - 1)
            seconds, rss = extract_stage(counts, work, size=size, extract=settings)
            print(f"extract stage on {sum(counts.values())} generated {size[0]}x{size[1]} JPEGs ({settings}): "
                  f"peak RSS {rss:.0f} MiB")
            print(f"stage_seconds={seconds:.2f}")
            return 0

        device = resolve_device(args.device)
        cuda = device.type == "cuda"
        decode = resolve_decode(args.decode, device)
        workers = args.workers if args.workers is not None else ((os.cpu_count() or 2) - 1 if cuda else 0)
        if args.precision_check is not None:
            labels, n_train = None, 0
            if args.data_root:
                from pipeline.data.dataset import scan_layout

                frame = scan_layout(args.data_root / "Master Folder", ("train", "test"))
                paths = [args.data_root / "Master Folder" / p for p in frame["path"]]
                labels, n_train = frame["label"].to_numpy(), int((frame["split"] == "train").sum())
            else:
                paths = make_jpegs(work / "jpegs", args.precision_check, size)
            if args.checkpoint:
                backbone = build_backbone(ModelParams(arch="efficientnet_b1", weights=None,
                                                      checkpoint=args.checkpoint, init_seed=0))
            else:
                backbone = build_backbone(RANDOM_B1)
                calibrate_batchnorm(backbone, paths[:: max(1, len(paths) // args.precision_check)])
            precision_check(backbone, paths, device=device, batch_size=args.batch_size or 32, workers=workers,
                            decode=decode, labels=labels, n_train=n_train)
            return 0
        precision = resolve_precision(args.precision, device)
        batch_size = args.batch_size or (256 if cuda else 32)
        channels_last = not args.no_channels_last
        backbone = build_backbone(RANDOM_B1)
        name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}; precision {precision}, channels_last {channels_last}, batch {batch_size}, "
              f"workers {workers}, decode {decode}, crop {backbone.info['transform']['crop_size'][0]}")
        paths = make_jpegs(work / "jpegs", args.images or (3000 if cuda else 200), size)
        ceiling = model_only(backbone, batch_size=batch_size, device=device, precision=precision,
                             channels_last=channels_last, seconds=args.seconds)
        print(f"model-only: {ceiling:.1f} img/s")
        achieved = end_to_end(backbone, paths, batch_size=batch_size, workers=workers, device=device,
                              precision=precision, channels_last=channels_last, decode=decode)
        print(f"end-to-end ({len(paths)} JPEGs {size[0]}x{size[1]}): {achieved:.1f} img/s")
        print(f"ratio={achieved / ceiling:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
