"""Images reach the model as a viewer shows them: 16-bit scaled, EXIF orientation applied, alpha on white."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import mmpo.prompting
import mmpo.scoring.clip
from mmpo.io import load_image


def grey_ramp_16bit() -> np.ndarray:
    """64x64 uint16 values 0, 16, ..., 65520 (a full 16-bit range)."""
    return (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16bit_png_is_scaled_not_clipped(tmp_path: Path, mode: str):
    values = grey_ramp_16bit()
    image = PIL.Image.fromarray(values) if mode == "I;16" else PIL.Image.fromarray(values.astype(np.int32), "I")
    source = image  # PIL opens 16-bit PNGs as I;16 or I depending on its version; it saves only I;16
    if mode == "I;16":
        source = tmp_path / "deep.png"
        image.save(source)
    rgb = np.asarray(load_image(source))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(values / 257).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected)
    # Before: PIL's convert clipped every value above 255 to white, so about 99.6% of the ramp was 255.
    assert (rgb == 255).mean() < 0.01


def test_a_float_image_in_0_1_is_scaled(tmp_path: Path):
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    rgb = np.asarray(load_image(PIL.Image.fromarray(values, "F")))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[32, 0, 0] <= 135


def test_exif_orientation_is_applied(tmp_path: Path):
    pixels = PIL.Image.new("RGB", (40, 20), (0, 0, 0))
    pixels.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left of the stored pixels
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "phone.jpg"
    pixels.save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.size == (20, 40)  # portrait as the camera meant it
    top = np.asarray(shown)[:8].mean(axis=(0, 1))
    assert top[0] > 150  # the stored left band is now at the top


def test_transparency_is_composited_on_white():
    rgba = PIL.Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]
    half = PIL.Image.new("LA", (8, 8), (0, 128))
    assert 120 <= np.asarray(load_image(half))[0, 0, 0] <= 135


def test_the_model_inputs_and_clip_scoring_read_images_with_the_one_loader():
    assert mmpo.prompting.load_image is load_image and mmpo.scoring.clip.load_image is load_image


@pytest.mark.parametrize("where", ["file", "I;16B"])
def test_a_dark_16bit_image_stays_dark(tmp_path: Path, where: str):
    """Values 0..199 of 65535 are black to a viewer; read as 8-bit values they came out up to 199."""
    values = (np.arange(64 * 64).reshape(64, 64) % 200).astype(np.uint16)
    if where == "file":
        PIL.Image.fromarray(values).save(tmp_path / "dark.png")
        image = tmp_path / "dark.png"
    else:
        image = PIL.Image.frombytes("I;16B", (64, 64), values.astype(">u2").tobytes())
    assert np.asarray(load_image(image)).max() <= 1


def test_premultiplied_la_is_composited_like_la():
    assert np.asarray(load_image(PIL.Image.new("La", (4, 4), (0, 0))))[0, 0].tolist() == [255, 255, 255]
