"""`mmpo self-pairs` on the tiny checkpoint: each judge's path, resuming, and its usage errors."""

from __future__ import annotations

import json

import pytest

from mmpo.cli.main import main
from mmpo.data.records import load_records
from mmpo.io import read_jsonl


def run(tmp_path, checkpoint, *extra):
    return main(["self-pairs", "--model", str(checkpoint), "--synthetic", "4", "--samples", "3",
                 "--max-new-tokens", "8", "--temperature", "2.0", "--output", str(tmp_path / "pairs.jsonl"),
                 "--no-progress", *extra])


def test_scene_judge_writes_the_journal_and_the_records(tmp_path, tiny_checkpoint, capsys):
    assert run(tmp_path, tiny_checkpoint, "--flip-prob", "0.3") == 0
    rows = read_jsonl(tmp_path / "pairs.samples.jsonl")
    assert len(rows) == 4 and all(len(r["responses"]) == 3 for r in rows)
    assert all(json.loads(r["meta"]["scene"])["objects"] for r in rows)
    records = load_records(tmp_path / "pairs.jsonl").records
    out = capsys.readouterr().out
    assert f"{len(records)} pairs from 4 items" in out and "sampled 12 responses" in out
    # a rerun resumes (nothing left to sample) and re-pairs with other rules
    assert run(tmp_path, tiny_checkpoint, "--flip-prob", "0.3", "--pairs", "all") == 0
    assert "skipped 4 items done by an earlier run" in capsys.readouterr().out
    # other sampling settings are refused, naming the journal
    assert run(tmp_path, tiny_checkpoint, "--flip-prob", "0.1") == 2
    assert "other settings" in capsys.readouterr().err


def test_model_judge_reads_p_yes(tmp_path, tiny_checkpoint):
    assert run(tmp_path, tiny_checkpoint, "--judge", "model", "--judge-model", str(tiny_checkpoint)) == 0
    claims = [c for r in read_jsonl(tmp_path / "pairs.samples.jsonl") for s in r["responses"] for c in s["claims"]]
    assert claims and all(0.0 <= c["p"] <= 1.0 for c in claims)
    assert all(c["correct"] == (c["p"] >= 0.5) for c in claims)


@pytest.mark.parametrize("extra, message", [
    (["--judge", "model"], "--judge-model PATH"),
    (["--samples", "1"], "n (samples per item) must be an integer >= 2"),
    (["--pairs", "all", "--max-pairs-per-item", "0"], "max_pairs_per_item"),
])
def test_usage_errors(tmp_path, tiny_checkpoint, capsys, extra, message):
    with pytest.raises(SystemExit):
        run(tmp_path, tiny_checkpoint, *extra)
    assert message in capsys.readouterr().err


def test_scene_judge_needs_synthetic_items(tmp_path, tiny_checkpoint, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a", "image": "x.png", "prompt": "describe"}) + "\n")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["self-pairs", "--model", str(tiny_checkpoint), "--input", str(items), "--output",
              str(tmp_path / "o.jsonl")])
    assert "--judge scene needs the synthetic world's annotations" in capsys.readouterr().err
