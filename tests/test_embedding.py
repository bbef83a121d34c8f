"""The two decode paths: PIL in the loader workers, and batched JPEG decoding on the device."""

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.embed import embedding
from pipeline.common.params import ModelParams
from pipeline.embed.backbone import build_backbone
from pipeline.embed.embedding import (
    EmbeddingError,
    EncodedImageFiles,
    ImageFiles,
    iter_embeddings,
    preprocess_on_device,
    resolve_decode,
)

CPU = torch.device("cpu")
ONE_LEVEL = 1 / 255 / min(torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms().std)


def transform():
    return torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(crop_size=64, resize_size=72)


def mixed_folder(folder, rng):
    """Photo-like images in every form a folder may hold; returns {name: path}."""
    folder.mkdir()
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((200, 150), Image.BICUBIC)
    photo = Image.fromarray(np.clip(np.asarray(coarse, np.int16) + rng.integers(-10, 11, (150, 200, 3)), 0, 255)
                            .astype(np.uint8))
    paths = {name: folder / name for name in ["rgb.jpg", "gray.jpg", "progressive.jpg", "cmyk.jpg", "rotated.jpg",
                                              "alpha.png", "upper.JPG"]}
    photo.save(paths["rgb.jpg"], quality=90)
    photo.convert("L").save(paths["gray.jpg"], quality=90)
    photo.save(paths["progressive.jpg"], quality=90, progressive=True)
    photo.convert("CMYK").save(paths["cmyk.jpg"], quality=90)
    exif = Image.Exif()
    exif[embedding.EXIF_ORIENTATION] = 6  # shown rotated by 90 degrees
    photo.save(paths["rotated.jpg"], quality=90, exif=exif)
    photo.convert("RGBA").save(paths["alpha.png"])
    photo.resize((120, 90)).save(paths["upper.JPG"], quality=80)
    return paths


def test_plain_jpegs_go_to_the_device_and_everything_else_takes_the_cpu_path(tmp_path):
    paths = mixed_folder(tmp_path / "images", np.random.default_rng(0))
    files = EncodedImageFiles(list(paths.values()), transform())
    routed = {name: files[i][1].dim() == 1 for i, name in enumerate(paths)}
    assert routed == {"rgb.jpg": True, "gray.jpg": True, "progressive.jpg": True, "upper.JPG": True,
                      "cmyk.jpg": False, "rotated.jpg": False, "alpha.png": False}


def test_device_decoded_pixels_match_the_cpu_path_within_one_grey_level(tmp_path):
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(1)).values())
    cpu = torch.stack([ImageFiles(paths, transform())[i] for i in range(len(paths))])
    files = EncodedImageFiles(paths, transform())
    device = preprocess_on_device([files[i] for i in range(len(paths))], files, CPU)
    assert device.shape == cpu.shape == (len(paths), 3, 64, 64)
    difference = (device - cpu).abs()
    assert difference.max() <= ONE_LEVEL * 1.01  # IDCT and resampling rounding only
    assert difference.mean() < ONE_LEVEL / 4
    rotated = [p.name for p in paths].index("rotated.jpg")
    assert difference[rotated].max() == 0  # took the cpu path, so the EXIF rotation was applied there


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_device_decoding_moves_embeddings_less_than_one_grey_level_of_noise(tmp_path, calibrated_checkpoint):
    """A random backbone amplifies any input change (it is not a measure of real features), so the
    device path is held against the smallest change an image can have: +-1 grey level of noise."""
    paths = list(mixed_folder(tmp_path / "a", np.random.default_rng(2)).values())
    paths += list(mixed_folder(tmp_path / "b", np.random.default_rng(3)).values())
    backbone = build_backbone(ModelParams(arch="efficientnet_b1", weights=None, checkpoint=str(calibrated_checkpoint),
                                          init_seed=0), crop_size=64, resize_size=72)

    def embed(decode, batch_size):
        return np.concatenate(list(iter_embeddings(backbone, paths, batch_size=batch_size, num_workers=0, device=CPU,
                                                   decode=decode)))

    cpu, device = embed("cpu", 5), embed("device", 5)
    pixels = torch.stack([ImageFiles(paths, backbone.transform)[i] for i in range(len(paths))])
    levels = torch.randint(-1, 2, pixels.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        noisy = backbone.embed(pixels + levels * ONE_LEVEL).numpy()
    assert cosine(device, cpu).mean() > cosine(noisy, cpu).mean()
    # batching and order: the same embeddings whatever the batch size (up to the conv kernels' float
    # rounding, which a random backbone amplifies)
    assert cosine(embed("device", 3), device).min() > 0.9999


def test_a_batch_the_device_decoder_refuses_is_decoded_by_pil(tmp_path, monkeypatch):
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(4)).values())
    files = EncodedImageFiles(paths, transform())
    items = [files[i] for i in range(len(paths))]

    def refuse(*args, **kwargs):  # what nvjpeg does with a JPEG variant it does not support
        raise RuntimeError("nvjpegDecodeBatched failed")

    monkeypatch.setattr(embedding, "decode_jpeg", refuse)
    fallback = preprocess_on_device(items, files, CPU)
    cpu = torch.stack([ImageFiles(paths, transform())[i] for i in range(len(paths))])
    assert torch.equal(fallback, cpu)


def test_auto_decodes_on_the_device_only_on_cuda():
    assert resolve_decode("auto", torch.device("cuda")) == "device"
    assert resolve_decode("auto", CPU) == "cpu"
    assert resolve_decode("device", CPU) == "device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_decoding_matches_the_cpu_path(tmp_path):
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(5)).values())
    cpu = torch.stack([ImageFiles(paths, transform())[i] for i in range(len(paths))])
    files = EncodedImageFiles(paths, transform())
    cuda = preprocess_on_device([files[i] for i in range(len(paths))], files, torch.device("cuda"))
    assert cuda.device.type == "cuda"
    assert (cuda.cpu() - cpu).abs().mean() < ONE_LEVEL  # nvjpeg's IDCT and upsampling differ slightly


def test_encoded_items_are_the_file_bytes(tmp_path):
    path = mixed_folder(tmp_path / "images", np.random.default_rng(6))["rgb.jpg"]
    index, item = EncodedImageFiles([path], transform())[0]
    assert index == 0 and bytes(item.numpy()) == path.read_bytes()
    assert Image.open(io.BytesIO(bytes(item.numpy()))).size == (200, 150)


def test_an_embedding_that_overflows_in_fp16_is_an_error_naming_the_image(tmp_path, calibrated_checkpoint):
    state = torch.load(calibrated_checkpoint, weights_only=True)
    state["features.8.0.weight"] *= 1e5  # activations beyond fp16's range (65504), fine in fp32
    torch.save(state, tmp_path / "loud.pth")
    backbone = build_backbone(ModelParams(arch="efficientnet_b1", weights=None, checkpoint=str(tmp_path / "loud.pth"),
                                          init_seed=0), crop_size=64, resize_size=72)
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(7)).values())[:2]
    settings = dict(batch_size=2, num_workers=0, device=CPU)
    assert all(np.isfinite(e).all() for e in iter_embeddings(backbone, paths, precision="fp32", **settings))
    with pytest.raises(EmbeddingError, match=r"The fp16 embedding of .*rgb.jpg is not finite; set extract.precision"):
        list(iter_embeddings(backbone, paths, precision="fp16", **settings))
