"""Messy real-world image files: each is decoded to sensible upright 8-bit RGB, or named in an error."""

import numpy as np
import pytest
from PIL import Image

from pipeline.data.dataset import DatasetError, build_manifest, inspect_image
from pipeline.data.images import load_rgb
from tests.conftest import make_dataset, split_layout


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 40), (200, 10, 10))
    image.paste((10, 10, 200), (0, 0, 30, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    upright = load_rgb(tmp_path / "phone.jpg")
    assert upright.size == (40, 60)
    assert upright.getpixel((20, 5))[2] > 150  # blue half now on top
    assert inspect_image(tmp_path / "phone.jpg")[1:3] == (40, 60)


def test_transparency_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "alpha.png")
    out = np.asarray(load_rgb(tmp_path / "alpha.png"))
    assert out[0, 0].tolist() == [255, 0, 0] and out[4, 4].tolist() == [255, 255, 255]
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((4, 4))
    palette.save(tmp_path / "palette.png", transparency=palette.getpixel((4, 4)))
    assert np.asarray(load_rgb(tmp_path / "palette.png"))[4, 4].tolist() == [255, 255, 255]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert abs(out[..., 0].mean() - 127.5) < 2  # a ramp stays a ramp (plain convert gives ~255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_other_modes_become_rgb(tmp_path, mode):
    image = Image.new("RGB", (10, 10), (30, 120, 220)).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    image.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (10, 10)


def test_odd_but_valid_files_pass_the_manifest(tmp_path):
    root = make_dataset(tmp_path / "data", train_per_class=2, held_out_per_class=1, augs=1)
    folder = root / "Master Folder" / "train" / "happy"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(folder / "tiny.png")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(folder / "UPPER.JPG")
    Image.new("RGB", (20, 20), (9, 9, 90)).save(folder / "chat heureux é.jpeg")
    manifest = build_manifest(split_layout(root / "Master Folder"))[0]
    paths = set(manifest["path"])
    assert {"train/happy/tiny.png", "train/happy/UPPER.JPG", "train/happy/chat heureux é.jpeg"} <= paths


@pytest.mark.parametrize("limit", [100 * 100 // 2, 120_000])  # PIL itself refuses above 2x, only warns above 1x
def test_an_image_above_the_pixel_limit_is_refused_with_the_file_named(tmp_path, monkeypatch, limit):
    Image.new("L", (400, 400)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DatasetError, match=rf"bomb.png is too large: 160,000 pixels.*, above the limit "
                                           rf"of {limit:,} \(PIL's decompression-bomb guard\)"):
        inspect_image(tmp_path / "bomb.png")
    Image.new("L", (50, 50)).save(tmp_path / "fine.png")
    assert inspect_image(tmp_path / "fine.png")[1:3] == (50, 50)


def test_zero_byte_file_is_named(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.jpg is not a readable image"):
        inspect_image(tmp_path / "empty.jpg")
