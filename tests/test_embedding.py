"""The two decode paths, PIL in the loader workers and batched JPEG decoding on the device, and the
embedding loop: one input shape, padding that changes no real row, the non-finite check."""

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.embed import loading
from pipeline.embed.backbone import build_backbone, parse_backbone
from pipeline.embed.embedding import EmbeddingError, Settings, embed_paths, resolve_settings
from pipeline.embed.loading import Preprocess, WorkImages, collate, decode_on_device
from pipeline.embed.work import work_of_paths

CPU = torch.device("cpu")
ONE_LEVEL = 1 / 255 / min(torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms().std)


def preprocess():
    return Preprocess.of(torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(crop_size=64,
                                                                                             resize_size=72))


def transform():
    return torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(crop_size=64, resize_size=72)


def work_of(paths):
    return work_of_paths(paths)


def items_of(paths, *, decode_on_device):
    """What the loader workers hand over for each file: (item, view, tensor)."""
    files = WorkImages(work_of(paths), np.arange(len(paths)), preprocess(), decode_on_device=decode_on_device)
    return [files[i] for i in range(len(paths))]


def settings(**overrides):
    base = dict(device=CPU, precision="fp32", decode="cpu", batch_size=4, num_workers=0, channels_last=True)
    return Settings(**{**base, **overrides})


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
    exif[loading.EXIF_ORIENTATION] = 6  # shown rotated by 90 degrees
    photo.save(paths["rotated.jpg"], quality=90, exif=exif)
    photo.convert("RGBA").save(paths["alpha.png"])
    photo.resize((120, 90)).save(paths["upper.JPG"], quality=80)
    return paths


def test_plain_jpegs_go_to_the_device_and_everything_else_takes_the_cpu_path(tmp_path):
    paths = mixed_folder(tmp_path / "images", np.random.default_rng(0))
    routed = {name: isinstance(item[2], bytes) for name, item in zip(paths, items_of(list(paths.values()),
                                                                                      decode_on_device=True))}
    assert routed == {"rgb.jpg": True, "gray.jpg": True, "progressive.jpg": True, "upper.JPG": True,
                      "cmyk.jpg": False, "rotated.jpg": False, "alpha.png": False}


def test_the_split_transform_gives_exactly_the_weights_transform(tmp_path):
    """8-bit geometry in the workers, normalisation on the device: the same pixels as weights.transforms()."""
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(8)).values())
    from pipeline.data.images import load_rgb

    expected = torch.stack([transform()(load_rgb(p)) for p in paths])
    pixels = torch.stack([item[2] for item in items_of(paths, decode_on_device=False)])
    assert pixels.dtype == torch.uint8
    assert torch.equal(preprocess().normalize(pixels), expected)


def device_pixels(paths):
    """The 8-bit batch the device path makes of ``paths`` (decoded here on the CPU, where decode_jpeg uses libjpeg)."""
    items = items_of(paths, decode_on_device=True)
    out = torch.stack([torch.zeros(3, 64, 64, dtype=torch.uint8) if isinstance(item[2], bytes) else item[2]
                       for item in items])
    encoded = [k for k, item in enumerate(items) if isinstance(item[2], bytes)]
    out[encoded] = decode_on_device([items[k][2] for k in encoded], preprocess(), CPU)[0]
    return out


def test_device_decoded_pixels_match_the_cpu_path_within_one_grey_level(tmp_path):
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(1)).values())
    cpu = preprocess().normalize(torch.stack([item[2] for item in items_of(paths, decode_on_device=False)]))
    device = preprocess().normalize(device_pixels(paths))
    assert device.shape == cpu.shape == (len(paths), 3, 64, 64)
    difference = (device - cpu).abs()
    assert difference.max() <= ONE_LEVEL * 1.01  # IDCT and resampling rounding only
    assert difference.mean() < ONE_LEVEL / 4
    rotated = [p.name for p in paths].index("rotated.jpg")
    assert difference[rotated].max() == 0  # took the cpu path, so the EXIF rotation was applied there


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def calibrated(checkpoint):
    return build_backbone("b", parse_backbone("b", {"source": "torchvision", "model": "efficientnet_b1", "weights": None,
                                                    "checkpoint": str(checkpoint)}),
                          crop_size=64, resize_size=72)


def test_device_decoding_moves_embeddings_less_than_one_grey_level_of_noise(tmp_path, calibrated_checkpoint):
    """A random backbone amplifies any input change (it is not a measure of real features), so the
    device path is held against the smallest change an image can have: +-1 grey level of noise."""
    paths = list(mixed_folder(tmp_path / "a", np.random.default_rng(2)).values())
    paths += list(mixed_folder(tmp_path / "b", np.random.default_rng(3)).values())
    backbone = calibrated(calibrated_checkpoint)
    cpu = embed_paths(backbone, paths, settings(decode="cpu", batch_size=5))
    device = embed_paths(backbone, paths, settings(decode="device", batch_size=5))
    pixels = preprocess().normalize(torch.stack([item[2] for item in items_of(paths, decode_on_device=False)]))
    levels = torch.randint(-1, 2, pixels.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        noisy = backbone.embed(pixels + levels * ONE_LEVEL).numpy()
    assert cosine(device, cpu).mean() > cosine(noisy, cpu).mean()


def test_padding_the_last_batch_changes_no_real_row(tmp_path, calibrated_checkpoint):
    """Eval mode computes each row alone: the zero rows that pad the last batch change no real row, byte for
    byte (fp32, CPU), and the engine gives exactly the backbone's output on the same batches, in order."""
    paths = list(mixed_folder(tmp_path / "a", np.random.default_rng(9)).values())
    paths += list(mixed_folder(tmp_path / "b", np.random.default_rng(10)).values())  # 14 files
    backbone = calibrated(calibrated_checkpoint)
    whole = embed_paths(backbone, paths, settings(batch_size=7))  # two full batches
    padded = embed_paths(backbone, paths[:13], settings(batch_size=7))  # the second batch padded with one row
    assert np.array_equal(padded, whole[:13])
    pixels = preprocess().normalize(torch.stack([item[2] for item in items_of(paths, decode_on_device=False)]))
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = torch.cat([backbone.embed(pixels[:7]), backbone.embed(pixels[7:])]).numpy()
    assert np.array_equal(whole, reference)


def test_a_rows_place_in_the_batch_changes_only_float_rounding(tmp_path, calibrated_checkpoint):
    """On the CPU, oneDNN's rounding depends on where a row sits in its batch (measured: up to 2e-4 relative
    on this random backbone, which amplifies it), so rows are compared by cosine here; shards start on batch
    boundaries so that resumed and distributed runs are byte-identical all the same (tests/test_extract.py)."""
    paths = list(mixed_folder(tmp_path / "a", np.random.default_rng(9)).values())
    paths += list(mixed_folder(tmp_path / "b", np.random.default_rng(10)).values())
    backbone = calibrated(calibrated_checkpoint)
    whole = embed_paths(backbone, paths, settings(batch_size=7))
    shifted = embed_paths(backbone, paths[1:], settings(batch_size=7))  # every row one place earlier
    assert cosine(shifted, whole[1:]).min() > 0.99999


def test_the_backbone_sees_one_input_shape_whatever_the_number_of_images(tmp_path, calibrated_checkpoint):
    paths = list(mixed_folder(tmp_path / "a", np.random.default_rng(11)).values())
    backbone = calibrated(calibrated_checkpoint)
    shapes = set()
    backbone.model.features.register_forward_pre_hook(lambda module, args: shapes.add(tuple(args[0].shape)))
    for n in (1, 3, 7):
        embed_paths(backbone, paths[:n], settings(batch_size=4))
    assert shapes == {(4, 3, 64, 64)}


def test_a_batch_the_device_decoder_refuses_is_decoded_by_pil(tmp_path, monkeypatch):
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(4)).values())
    items = items_of(paths, decode_on_device=True)
    encoded = [k for k, item in enumerate(items) if isinstance(item[2], bytes)]

    def refuse(*args, **kwargs):  # what nvjpeg does with a JPEG variant it does not support
        raise RuntimeError("nvjpegDecodeBatched failed")

    monkeypatch.setattr(loading, "decode_jpeg", refuse)
    fallback, failed = decode_on_device([items[k][2] for k in encoded], preprocess(), CPU)
    cpu = torch.stack([items_of([paths[k]], decode_on_device=False)[0][2] for k in encoded])
    assert torch.equal(fallback, cpu) and failed == {}
    # a valid header over a damaged body: that file alone fails, named by position, the others stay
    damaged = [items[k][2] for k in encoded]
    damaged[1] = damaged[1][:400]
    fallback, failed = decode_on_device(damaged, preprocess(), CPU)
    assert list(failed) == [1] and "is not a readable image" in failed[1]
    assert torch.equal(fallback[0], cpu[0]) and not fallback[1].any()


def test_auto_settings_fit_the_device():
    from pipeline.common.params import ExtractParams

    params = ExtractParams(device="auto", batch_size="auto", num_workers="auto", channels_last="auto",
                           pad_batches="auto", precision="auto",
                           decode="auto", crop_size=None, resize_size=None, shard_rows=10, engine="local",
                           ray_address=None, ray_actors="auto", ray_timeout_s=30.0)
    cuda = resolve_settings(params, torch.device("cuda"))
    assert (cuda.decode, cuda.precision, cuda.batch_size, cuda.channels_last, cuda.pad) == \
        ("device", "bf16", 256, False, True)
    assert cuda.num_workers >= 1
    cpu = resolve_settings(params, CPU)
    assert (cpu.decode, cpu.precision, cpu.batch_size, cpu.num_workers, cpu.channels_last, cpu.pad) == \
        ("cpu", "fp32", 32, 2, True, False)
    explicit = ExtractParams(**{**params.__dict__, "decode": "device", "batch_size": 8})
    assert resolve_settings(explicit, CPU).decode == "device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_decoding_matches_the_cpu_path(tmp_path):
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(5)).values())
    cpu = torch.stack([item[2] for item in items_of(paths, decode_on_device=False)])
    items = items_of(paths, decode_on_device=True)
    encoded = [k for k, item in enumerate(items) if isinstance(item[2], bytes)]
    cuda, failed = decode_on_device([items[k][2] for k in encoded], preprocess(), torch.device("cuda"))
    assert cuda.device.type == "cuda" and cuda.dtype == torch.uint8
    difference = (cuda.cpu().float() - cpu[encoded].float()).abs()
    assert difference.mean() < 1.0  # grey levels: nvjpeg's IDCT and upsampling differ slightly


def test_encoded_items_are_the_file_bytes(tmp_path):
    path = mixed_folder(tmp_path / "images", np.random.default_rng(6))["rgb.jpg"]
    item, view, data = items_of([path], decode_on_device=True)[0]
    assert item == 0 and view == -1 and data == path.read_bytes()
    assert Image.open(io.BytesIO(data)).size == (200, 150)
    chunk = collate(items_of([path, path], decode_on_device=True))
    assert chunk.pixels is None and len(chunk.encoded) == 2 and chunk.encoded_at.tolist() == [0, 1]


def test_an_embedding_that_overflows_in_fp16_is_an_error_naming_the_image(tmp_path, calibrated_checkpoint):
    state = torch.load(calibrated_checkpoint, weights_only=True)
    state["features.8.0.weight"] *= 1e5  # activations beyond fp16's range (65504), fine in fp32
    torch.save(state, tmp_path / "loud.pth")
    backbone = calibrated(tmp_path / "loud.pth")
    paths = list(mixed_folder(tmp_path / "images", np.random.default_rng(7)).values())[:2]
    assert np.isfinite(embed_paths(backbone, paths, settings(batch_size=2))).all()
    with pytest.raises(EmbeddingError, match=r"The fp16 embedding of .*rgb.jpg is not finite; set extract.precision"):
        embed_paths(backbone, paths, settings(batch_size=2, precision="fp16"))
