"""``mmpo train`` on records as the RLAIF-V dataset publishes them: a Parquet shard for training, a
directory of shards (images by path, relative to the shards) for evaluation; one step on the tiny LLaVA."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmpo.cli.train import main as train

REPO = Path(__file__).resolve().parents[2]
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def rlaif_v_table(records, images: list[dict]) -> pa.Table:
    """The records in the RLAIF-V dataset's columns, with ``images`` as the ``image`` column."""
    n = len(records)
    return pa.table({
        "ds_name": ["toyworld"] * n,
        "image": pa.array(images, type=IMAGE_STRUCT),
        "question": [r.prompt for r in records],
        "chosen": [r.chosen for r in records],
        "rejected": [r.rejected for r in records],
        "origin_dataset": ["toyworld"] * n,
        "origin_split": ["train"] * n,
        "idx": [r.id for r in records],
        "image_path": [Path(r.image).name for r in records],
    })


def test_mmpo_train_reads_a_parquet_shard_and_a_directory_of_shards(tmp_path, tiny_checkpoint, tiny_records):
    train_file = tmp_path / "RLAIF-V-Dataset_000.parquet"
    pq.write_table(rlaif_v_table(tiny_records[:4], [{"bytes": Path(r.image).read_bytes(), "path": Path(r.image).name}
                                                    for r in tiny_records[:4]]), train_file)
    shards = tmp_path / "eval"
    (shards / "images").mkdir(parents=True)
    for number, part in enumerate((tiny_records[4:6], tiny_records[6:8])):
        for record in part:
            shutil.copy(record.image, shards / "images")
        images = [{"bytes": None, "path": f"images/{Path(r.image).name}"} for r in part]
        pq.write_table(rlaif_v_table(part, images), shards / f"eval-{number:05d}-of-00002.parquet")

    out = tmp_path / "out"
    code = train([str(REPO / "configs" / "toyworld" / "dpo.yaml"), "--model_name_or_path", str(tiny_checkpoint),
                  "--train_file", str(train_file), "--eval_file", str(shards), "--output_dir", str(out),
                  "--max_steps", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
                  "--eval_strategy", "steps", "--eval_steps", "1", "--logging_steps", "1", "--disable_tqdm", "true"])
    assert code == 0
    log = json.loads((out / "log_history.json").read_text())
    steps = [entry for entry in log if "rewards/margins" in entry and "loss" in entry]
    evaluations = [entry for entry in log if "eval_loss" in entry]
    assert len(steps) == 1 and math.isfinite(steps[0]["loss"])
    assert len(evaluations) == 1 and math.isfinite(evaluations[0]["eval_loss"])


def test_mmpo_train_reads_trl_records_with_two_images(tmp_path, tiny_checkpoint, tiny_records):
    """TRL's vision layout with two images per record (the prompt's two image parts take them in
    order), one record with one image beside them; the model card counts the records and the layout."""
    rows = []
    for i, (a, b) in enumerate(zip(tiny_records[:6:2], tiny_records[1:6:2], strict=True)):
        images = [a.image, b.image] if i else [a.image]
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": a.prompt}]
        rows.append({"images": images, "prompt": [{"role": "user", "content": content}],
                     "chosen": [{"role": "assistant", "content": a.chosen}],
                     "rejected": [{"role": "assistant", "content": a.rejected}]})
    train_file = tmp_path / "two-images.jsonl"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    code = train([str(REPO / "configs" / "toyworld" / "dpo.yaml"), "--model_name_or_path", str(tiny_checkpoint),
                  "--train_file", str(train_file), "--output_dir", str(out), "--max_steps", "1",
                  "--per_device_train_batch_size", "3", "--logging_steps", "1", "--disable_tqdm", "true"])
    assert code == 0
    steps = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert len(steps) == 1 and math.isfinite(steps[0]["loss"])
    card = (out / "README.md").read_text()
    assert "two-images.jsonl" in card and "trl" in card
