"""The precomputed-reference cache: keyed by image content, loaded without unpickling code, repaired."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import PIL.Image
import torch

from mmpo.training import reference
from mmpo.types import PreferenceRecord


def records_on(tmp: Path, colour) -> list[PreferenceRecord]:
    path = tmp / "scene.png"
    PIL.Image.new("RGB", (8, 8), colour).save(path)
    return [PreferenceRecord(image=str(path), prompt="What?", chosen="Red.", rejected="Blue.", id="a")]


def test_replacing_an_image_file_changes_the_fingerprint(tmp_path):
    model = torch.nn.Linear(2, 2)
    before = reference.reference_fingerprint(model, records_on(tmp_path, (255, 0, 0)), {})
    after = reference.reference_fingerprint(model, records_on(tmp_path, (0, 0, 255)), {})  # same path
    assert before != after
    assert reference.reference_fingerprint(model, records_on(tmp_path, (0, 0, 255)), {}) == after


def test_in_memory_images_are_hashed_by_pixels():
    red, blue = PIL.Image.new("RGB", (4, 4), (255, 0, 0)), PIL.Image.new("RGB", (4, 4), (0, 0, 255))
    assert reference.image_digest(red) != reference.image_digest(blue)
    assert reference.image_digest(red) == reference.image_digest(red.copy())


class _Marker:
    """Unpickling this would create a file: the proof that a cache load ran foreign code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def fake_setup(tmp_path, monkeypatch):
    table = [{"chosen": torch.zeros(3), "rejected": torch.ones(2)}]
    calls = []
    monkeypatch.setattr(reference, "compute_reference_table", lambda *a, **k: calls.append(1) or table)
    dataset = SimpleNamespace(records=records_on(tmp_path, (1, 2, 3)))
    collator = SimpleNamespace(encoder=SimpleNamespace(settings=lambda: {"max_length": None}), vision_rows=False)
    return dataset, collator, calls


def test_a_damaged_or_foreign_cache_file_is_recomputed_without_running_its_code(tmp_path, monkeypatch, caplog):
    dataset, collator, calls = fake_setup(tmp_path, monkeypatch)
    model = torch.nn.Linear(2, 2)
    _, path = reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")
    assert calls == [1]
    reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")
    assert calls == [1]  # reused

    path.write_bytes(path.read_bytes()[:20])  # a kill or a full disk truncated it
    table, _ = reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")
    assert calls == [1, 1] and "unreadable" in caplog.text
    assert torch.equal(table.table[0]["rejected"], torch.ones(2))

    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps(_Marker(str(marker))))
    reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")
    assert not marker.exists() and calls == [1, 1, 1]


def test_the_processors_image_settings_are_part_of_the_key(tmp_path, monkeypatch):
    """Qwen2-VL's max_pixels changes every image's tokens; the old key reused the stale table."""
    dataset, collator, calls = fake_setup(tmp_path, monkeypatch)
    model = torch.nn.Linear(2, 2)
    paths = []
    for max_pixels in (200_000, 800_000):
        processor = SimpleNamespace(image_processor=SimpleNamespace(to_dict=lambda n=max_pixels: {"max_pixels": n}))
        collator.encoder.processor = processor
        paths.append(reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")[1])
    assert paths[0] != paths[1] and calls == [1, 1]


def test_a_readable_cache_of_the_wrong_shape_is_recomputed(tmp_path, monkeypatch, caplog):
    dataset, collator, calls = fake_setup(tmp_path, monkeypatch)
    model = torch.nn.Linear(2, 2)
    _, path = reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")
    torch.save([], path)  # loads fine under weights_only, but holds no record
    table, _ = reference.load_or_compute_reference(model, dataset, collator, 1, tmp_path / "cache")
    assert calls == [1, 1] and len(table.table) == 1 and "unreadable" in caplog.text
