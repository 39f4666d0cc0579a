"""A record's ``weight`` and ``beta_scale``: checked at load in every format, carried through saving,
and never confused with ``meta``."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import PIL.Image
import pytest

from mmpo.data.records import RecordValidationError, load_records, records_to_dataset, save_records


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "scene.png"
    PIL.Image.new("RGB", (16, 16), (10, 200, 10)).save(path)
    return str(path)


def row(fmt: str, image: str, index: int, **fields) -> dict:
    """Record ``index`` in format ``fmt`` with extra columns ``fields``."""
    if fmt == "trl":
        base = {"id": f"r{index}", "images": [image], "prompt": "What is it?"}
    elif fmt == "rlaif-v":
        base = {"idx": f"r{index}", "image": image, "question": "What is it?"}
    else:
        base = {"id": f"r{index}", "image": image, "prompt": "What is it?"}
    return {**base, "chosen": "A green square.", "rejected": "A red circle.", **fields}


FORMATS = ["mmpo", "trl", "rlaif-v"]
WEIGHT_RANGE = "must be a finite number in [0, 1000]"
SCALE_RANGE = "must be a finite number in (0, 1000]"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("field", "value", "message"), [
    ("weight", -1, f"{WEIGHT_RANGE}, got -1"),
    ("weight", math.nan, f"{WEIGHT_RANGE}, got nan"),
    ("weight", math.inf, f"{WEIGHT_RANGE}, got inf"),
    ("weight", 1e4, f"{WEIGHT_RANGE}, got 10000.0"),
    ("weight", "2", f"{WEIGHT_RANGE}, got '2' (str)"),
    ("weight", True, f"{WEIGHT_RANGE}, got True (bool)"),
    ("beta_scale", 0, f"{SCALE_RANGE}, got 0"),
    ("beta_scale", -0.5, f"{SCALE_RANGE}, got -0.5"),
    ("beta_scale", math.nan, f"{SCALE_RANGE}, got nan"),
    ("beta_scale", 1e300, f"{SCALE_RANGE}, got 1e+300"),
    ("beta_scale", "3", f"{SCALE_RANGE}, got '3' (str)"),
    ("beta_scale", False, f"{SCALE_RANGE}, got False (bool)"),
])
def test_a_bad_value_is_an_error_naming_the_record_and_the_field(image, fmt, field, value, message):
    with pytest.raises(RecordValidationError) as caught:
        load_records([row(fmt, image, 0), row(fmt, image, 1, **{field: value})], format=fmt)
    assert (caught.value.error.index, caught.value.error.field) == (1, field)
    assert "'r1'" in str(caught.value) and f"field '{field}': {message}" in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_good_values_load_as_record_fields_in_every_format(image, fmt):
    rows = [row(fmt, image, 0, weight=0, beta_scale=1e-300), row(fmt, image, 1, weight=1000.0, beta_scale=1000),
            row(fmt, image, 2, weight=2.5), row(fmt, image, 3)]
    records = load_records(rows, format=fmt).records
    assert [(r.weight, r.beta_scale) for r in records] == [(0.0, 1e-300), (1000.0, 1000.0), (2.5, None),
                                                           (None, None)]
    assert all(type(r.weight) is float for r in records[:3])
    assert not any({"weight", "beta_scale"} & set(r.meta) for r in records)  # not in meta


def test_saved_jsonl_and_datasets_keep_them_and_drop_them_when_absent(tmp_path, image):
    records = load_records([row("mmpo", image, 0, weight=2.0, beta_scale=3.0), row("mmpo", image, 1, weight=0.5),
                            row("mmpo", image, 2)]).records
    assert "weight" not in records[2].to_dict() and "beta_scale" not in records[1].to_dict()
    back = load_records(save_records(records, tmp_path / "r.jsonl")).records
    assert [(r.weight, r.beta_scale) for r in back] == [(2.0, 3.0), (0.5, None), (None, None)]

    dataset = records_to_dataset(records)
    assert dataset.features["weight"] == datasets.Value("float64") and dataset["beta_scale"] == [3.0, None, None]
    back = load_records(dataset).records
    assert [(r.weight, r.beta_scale) for r in back] == [(2.0, 3.0), (0.5, None), (None, None)]
    assert "weight" not in records_to_dataset(records[2:]).column_names
