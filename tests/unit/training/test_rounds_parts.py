"""The parts of on-policy rounds that need no model: the plan, the training summary, merging the
processes' journals, reading a round's result, the settings check, and the reference_model option."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mmpo.data.items import Item
from mmpo.training.config import PreferenceConfig
from mmpo.training.rounds import (
    RoundsPlan,
    check_settings,
    journal_path,
    merge_journals,
    read_round,
    read_rounds,
    together,
    train_summary,
)


def test_train_summary_by_hand():
    log = [{"step": 5, "loss": 0.9, "rewards/margins": 0.1, "rewards/accuracies": 0.5},
           {"step": 10, "loss": 0.7, "rewards/margins": 0.3, "rewards/accuracies": 1.0},
           {"step": 10, "train_loss": 0.8}]
    assert train_summary(log) == {"steps": 10, "loss": 0.8, "reward_margin": pytest.approx(0.2),
                                  "reward_accuracy": 0.75}
    assert train_summary([]) == {"steps": 0, "loss": None, "reward_margin": None, "reward_accuracy": None}


def test_round_k_samples_with_its_own_seed_and_steps_must_fit_the_rounds():
    plan = RoundsPlan(rounds=3, items_per_round=4, steps=(3, 3, 2))
    assert [plan.round_sampling(k).seed for k in (1, 2, 3)] == [0, 1, 2]
    assert plan.describe()["steps"] == [3, 3, 2] and "rounds" not in plan.describe()
    with pytest.raises(ValueError, match="steps gives 2 rounds' steps for 3 rounds"):
        RoundsPlan(rounds=3, items_per_round=4, steps=(3, 3))
    with pytest.raises(ValueError, match="steps of round 2"):
        RoundsPlan(rounds=2, items_per_round=4, steps=(3, 0))


def items(n: int) -> list[Item]:
    return [Item(i, f"item-{i}", "x.png", "describe", {}) for i in range(n)]


def test_the_processes_journals_merge_in_pool_order(tmp_path):
    pool = items(5)
    for rank in (0, 1):
        path = journal_path(tmp_path, rank, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": item.id, "responses": [], "rank": rank}) + "\n"
                                for item in pool[rank::2]))
    (tmp_path / "samples" / "rank-0-of-2.jsonl.progress.jsonl").write_text('{"settings": 1}\n')
    rows = [json.loads(line) for line in merge_journals(tmp_path, pool).read_text().splitlines()]
    assert [row["id"] for row in rows] == [item.id for item in pool]
    assert [row["rank"] for row in rows] == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="1 of 6 items were not sampled \\(e.g. 'item-5'\\)"):
        merge_journals(tmp_path, items(6))


def test_a_damaged_round_result_is_named(tmp_path):
    assert read_round(tmp_path, 1) is None and read_rounds(tmp_path) == []
    (tmp_path / "round-1").mkdir()
    (tmp_path / "round-1" / "round.json").write_text('{"round": 1, "model": "m"}')
    assert [r.round for r in read_rounds(tmp_path)] == [1] and read_round(tmp_path, 1).resumed
    (tmp_path / "round-1" / "round.json").write_text("{")
    with pytest.raises(ValueError, match="round-1/round.json: unreadable round result .* delete the file to redo round 1"):
        read_round(tmp_path, 1)


def test_a_run_directory_keeps_its_settings(tmp_path):
    check_settings(tmp_path, {"plan": 1, "judge": "a"})
    check_settings(tmp_path, {"plan": 1, "judge": "a"})
    with pytest.raises(ValueError, match="other settings \\(judge differ"):
        check_settings(tmp_path, {"plan": 1, "judge": "b"})


def test_one_process_raises_its_own_error():
    state = SimpleNamespace(num_processes=1)
    assert together(state, lambda: 3) == 3
    with pytest.raises(KeyError):
        together(state, lambda: {}["x"])


def test_reference_model_must_name_a_directory(tmp_path):
    with pytest.raises(ValueError, match="reference_model must be a checkpoint directory"):
        PreferenceConfig(output_dir=str(tmp_path), reference_model=" ")
