"""Record images built to break the reader (issue 34, round 2): several frames, too many pixels,
decompression bombs. Each is logged once naming the file, downscaled cheaply, or a clear error."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import PIL.Image
import pytest

import mmpo.io
from mmpo.data.records import RecordValidationError, load_records
from mmpo.io import MAX_IMAGE_PIXELS_ENV, ImageTooLargeError, check_image, load_image, max_image_pixels


def frames(n: int = 3) -> list[PIL.Image.Image]:
    return [PIL.Image.new("RGB", (16, 12), (80 * i, 0, 0)) for i in range(n)]


def row(index: int, image: str) -> dict:
    return {"id": f"r{index}", "image": image, "prompt": "What is it?", "chosen": "A red square.",
            "rejected": "A blue circle."}


# ---------------------------------------------------------------------------------------------
# 1. Images of several frames


@pytest.mark.parametrize(("suffix", "kind"), [(".gif", "GIF"), (".png", "PNG"), (".tiff", "TIFF"), (".webp", "WEBP")])
def test_a_multi_frame_image_is_logged_once_naming_file_frames_and_frame_used(tmp_path, caplog, suffix, kind):
    """An animated GIF (APNG, multi-page TIFF, WebP) used to give its first frame silently."""
    first, *rest = frames()
    path = tmp_path / f"anim{suffix}"
    first.save(path, save_all=True, append_images=rest, **({"duration": 100} if suffix != ".tiff" else {}))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(row(i, path.name)) + "\n" for i in range(3)))
    with caplog.at_level(logging.WARNING, logger="mmpo.io"):
        records = load_records(tmp_path / "r.jsonl").records
        for record in records:
            assert load_image(record.image).size == (16, 12)
    notes = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert len(notes) == 1
    assert str(path) in notes[0] and f"a {kind} image of 3 frames" in notes[0] and "uses frame 0" in notes[0]


def test_frames_of_in_memory_images_are_logged_once_per_image(caplog):
    first, *rest = frames()
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=rest)
    with caplog.at_level(logging.WARNING, logger="mmpo.io"):
        for _ in range(3):
            load_image(buffer.getvalue(), "item #4 (id 'cat')")
    notes = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("item #4 (id 'cat'): a GIF image of 3 frames")


# ---------------------------------------------------------------------------------------------
# 8. Too many pixels


@pytest.fixture
def budget(monkeypatch) -> int:
    """A pixel budget of 1,200 (for 144 Mpx in the real case)."""
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1200")
    return 1200


def gradient(width: int, height: int) -> PIL.Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    return PIL.Image.fromarray(np.stack([x, x[::-1], np.full_like(x, 128)], -1).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_an_image_over_the_pixel_budget_is_downscaled_with_a_warning_naming_it(tmp_path, caplog, budget, suffix):
    """A legal 144-megapixel PNG used to take 2.4 GB with no word about the file."""
    path = tmp_path / f"huge{suffix}"
    gradient(400, 300).save(path)
    with caplog.at_level(logging.WARNING, logger="mmpo.io"):
        image = load_image(path)
        again = load_image(path)
    assert image.size == again.size == (40, 30) and image.mode == "RGB"  # 1,200 pixels, the same aspect ratio
    assert abs(float(np.asarray(image)[..., 0].mean()) - 127.5) < 8  # the picture, not a crop
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and str(path) in notes[0] and "400x300" in notes[0] and "to 40x30" in notes[0]


def test_downscaling_keeps_exif_orientation_and_16_bit_scaling(tmp_path, budget):
    pixels = gradient(400, 200)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    pixels.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (23, 45)  # portrait, as the camera meant it
    deep = (np.arange(400 * 300).reshape(300, 400) % 200).astype(np.uint16)  # black to a viewer
    PIL.Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png")).max() <= 1


def test_a_jpeg_over_budget_is_decoded_at_a_smaller_scale(tmp_path, budget, monkeypatch):
    gradient(800, 800).save(tmp_path / "big.jpg")
    decoded = []
    load = PIL.ImageFile.ImageFile.load
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or load(self))
    assert load_image(tmp_path / "big.jpg").size == (34, 34)
    assert decoded and max(w * h for w, h in decoded) <= (800 // 8) ** 2  # draft: 1/8 of each side


def test_the_pixel_budget_setting_is_checked(monkeypatch):
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_IMAGE_PIXELS_ENV):
        max_image_pixels()
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "")
    assert max_image_pixels() == mmpo.io.MAX_IMAGE_PIXELS == 40_000_000


def test_an_image_over_pils_bomb_limit_is_a_skippable_bad_record_naming_the_file(tmp_path, monkeypatch):
    """PIL's DecompressionBombError used to be a traceback at training time."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # errors above 2,000 pixels
    gradient(100, 100).save(tmp_path / "bomb.png")
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    (tmp_path / "r.jsonl").write_text(json.dumps(row(0, "small.png")) + "\n" + json.dumps(row(1, "bomb.png")) + "\n")
    with pytest.raises(RecordValidationError) as caught:
        load_records(tmp_path / "r.jsonl")
    error = caught.value.error
    assert (error.index, error.line, error.field) == (1, 2, "image") and str(tmp_path / "bomb.png") in error.message
    assert "decompression bomb" in error.message and "downscale the image" in error.message
    assert [r.id for r in load_records(tmp_path / "r.jsonl", on_error="skip").records] == ["r0"]
    with pytest.raises(ImageTooLargeError, match=rf"^{tmp_path / 'bomb.png'}: Image size \(10000 pixels\)"):
        load_image(tmp_path / "bomb.png")
    assert isinstance(ImageTooLargeError("x", "y"), ValueError)


def test_image_bytes_over_budget_are_noted_naming_the_record(tmp_path, caplog, budget):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    gradient(400, 300).save(buffer, format="PNG")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": buffer.getvalue(), "path": "x.png"}], type=struct),
                             "prompt": ["What?"], "chosen": ["A."], "rejected": ["B."]}), tmp_path / "r.parquet")
    with caplog.at_level(logging.WARNING, logger="mmpo.io"):
        (record,) = load_records(tmp_path / "r.parquet").records
        assert load_image(record.image).size == (40, 30)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and notes[0].startswith(f"record #0 ({tmp_path / 'r.parquet'} row 0) field 'image': 400x300")


def test_check_image_reads_only_the_header(tmp_path, budget, monkeypatch):
    gradient(400, 300).save(tmp_path / "huge.png")
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    check_image(tmp_path / "huge.png")
