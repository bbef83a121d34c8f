"""How close does extraction get to the backbone's own speed, and does its memory stay flat?

Default mode, on the machine it runs on:
  (a) model-only ceiling: the backbone on synthetic preprocessed tensors at the
      configured precision, memory format and batch size;
  (b) end to end: the extraction code path (decode, ``weights.transforms()``,
      batching, backbone) over a generated folder of JPEGs;
and prints both in img/s, then ``ratio=<end-to-end / model-only>`` as the last line.

``--rss N`` instead runs the extract stage on N and 10*N generated images, each in
a fresh process, and prints their peak resident memory and the ratio.

``--precision-check N`` embeds N generated JPEGs in fp32 and in each faster
precision and prints the mean cosine similarity to fp32. Give ``--checkpoint``
(e.g. the real IMAGENET1K_V2 file) for a meaningful figure; without it the
random backbone's BatchNorm statistics are first re-estimated on the images,
since default statistics make every embedding vanish.

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

from pipeline.backbone import build_backbone
from pipeline.embedding import PRECISIONS, iter_embeddings, resolve_device, resolve_precision
from pipeline.params import ModelParams

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
               precision: str, channels_last: bool) -> float:
    warm = paths[: batch_size * 2]
    for _ in iter_embeddings(backbone, warm, batch_size=batch_size, num_workers=workers, device=device,
                             channels_last=channels_last, precision=precision, desc="warm-up"):
        pass
    start = time.perf_counter()
    for _ in iter_embeddings(backbone, paths, batch_size=batch_size, num_workers=workers, device=device,
                             channels_last=channels_last, precision=precision, desc="end-to-end"):
        pass
    return len(paths) / (time.perf_counter() - start)


def peak_rss_of_extract(n: int, work: Path, *, size: tuple[int, int], crop: int) -> float:
    """Peak RSS (MiB) of a fresh process running the extract stage on n generated images."""
    root = work / f"data{n}"
    for split, count in [("train", n), ("valid", 4), ("test", 4)]:
        make_jpegs(root / "Master Folder" / split / "a", count, size, seed=n)
    params = work / f"params{n}.yaml"
    settings = yaml.safe_load(PARAMS.read_text())
    settings["data"].update(root=str(root))
    settings["model"].update(weights=None, checkpoint=None)
    settings["extract"].update(device="cpu", batch_size=32, num_workers=0, precision="fp32", crop_size=crop,
                               resize_size=crop + crop // 8)
    settings["views"].update(count=0)
    params.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    manifest = work / f"manifest{n}" / "manifest.csv"
    subprocess.run([sys.executable, "-m", "pipeline.prepare", "--params", str(params), "--manifest", str(manifest)],
                   check=True, capture_output=True, env=env)
    code = ("import resource, sys; from pipeline import extract; "
            f"extract.main(['--params', '{params}', '--manifest', '{manifest}', '--out', '{work}/features{n}']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def calibrate_batchnorm(backbone, paths: list[Path]) -> None:
    """Re-estimate BatchNorm running statistics of a random backbone on real preprocessed images."""
    from pipeline.embedding import ImageFiles

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


def precision_check(backbone, paths: list[Path], *, device: torch.device, batch_size: int) -> None:
    def embed(precision: str) -> np.ndarray:
        return np.concatenate(list(iter_embeddings(backbone, paths, batch_size=batch_size, num_workers=0,
                                                   device=device, precision=precision, desc=precision)))

    reference = embed("fp32")
    print(f"fp32 embedding norm: mean {np.linalg.norm(reference, axis=1).mean():.3g}")
    for precision in ("bf16", "fp16"):
        other = embed(precision)
        cosine = (reference * other).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
        print(f"{precision} vs fp32: mean cosine {cosine.mean():.5f}, min {cosine.min():.5f}")


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
    parser.add_argument("--rss-crop", type=int, default=64, help="crop size in --rss mode (memory, not speed)")
    parser.add_argument("--precision-check", type=int, default=None, metavar="N",
                        help="cosine of bf16/fp16 to fp32 embeddings on N images")
    parser.add_argument("--checkpoint", default=None, help="state dict for --precision-check (real weights)")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    warnings.simplefilter("ignore", UserWarning)  # the random-init warning: expected here

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.rss is not None:
            small = peak_rss_of_extract(args.rss, work, size=size, crop=args.rss_crop)
            large = peak_rss_of_extract(10 * args.rss, work, size=size, crop=args.rss_crop)
            print(f"peak RSS, extract of {args.rss} images: {small:.0f} MiB")
            print(f"peak RSS, extract of {10 * args.rss} images: {large:.0f} MiB")
            print(f"rss_ratio={large / small:.3f}")
            return 0

        device = resolve_device(args.device)
        cuda = device.type == "cuda"
        if args.precision_check is not None:
            paths = make_jpegs(work / "jpegs", args.precision_check, size)
            if args.checkpoint:
                backbone = build_backbone(ModelParams(arch="efficientnet_b1", weights=None,
                                                      checkpoint=args.checkpoint, init_seed=0))
            else:
                backbone = build_backbone(RANDOM_B1)
                calibrate_batchnorm(backbone, paths)
            precision_check(backbone, paths, device=device, batch_size=args.batch_size or 32)
            return 0
        precision = resolve_precision(args.precision, device)
        batch_size = args.batch_size or (256 if cuda else 32)
        workers = args.workers if args.workers is not None else ((os.cpu_count() or 2) - 1 if cuda else 0)
        channels_last = not args.no_channels_last
        backbone = build_backbone(RANDOM_B1)
        name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}; precision {precision}, channels_last {channels_last}, batch {batch_size}, "
              f"workers {workers}, crop {backbone.info['transform']['crop_size'][0]}")
        paths = make_jpegs(work / "jpegs", args.images or (3000 if cuda else 200), size)
        ceiling = model_only(backbone, batch_size=batch_size, device=device, precision=precision,
                             channels_last=channels_last, seconds=args.seconds)
        print(f"model-only: {ceiling:.1f} img/s")
        achieved = end_to_end(backbone, paths, batch_size=batch_size, workers=workers, device=device,
                              precision=precision, channels_last=channels_last)
        print(f"end-to-end ({len(paths)} JPEGs {size[0]}x{size[1]}): {achieved:.1f} img/s")
        print(f"ratio={achieved / ceiling:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
