"""On-policy rounds (``mmpo.training.rounds``, ``mmpo iterate``) on the shipped base model of the
synthetic world: what each round writes, the reference each round trains against, resuming after an
interruption at any stage with the same final model, the methods' data, and refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmpo.cli.main import main
from mmpo.data.construct.self_pairs import SamplingSettings
from mmpo.data.records import load_records
from mmpo.io import read_jsonl
from mmpo.toyworld.judge import SceneJudge
from mmpo.toyworld.rounds import world_pool
from mmpo.toyworld.shipped import SHIPPED_DIR
from mmpo.training.config import CONFIG_CLASSES, keyed, parse_config
from mmpo.training.rounds import (
    IterateArguments,
    RoundsPlan,
    read_rounds,
    run_rounds,
)

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "mmpo" / "configs" / "toyworld"
(BASE,) = sorted(SHIPPED_DIR.glob("base-*"))


class Killed(BaseException):
    """An interruption, as the code under test sees a kill: nothing catches it."""


def config(out: Path, method: str = "dpo", *extra: str):
    parsed = parse_config(CONFIGS / f"{method}.yaml", [
        "--model_name_or_path", str(BASE), "--output_dir", str(out), "--max_steps", "6", "--save_strategy", "steps",
        "--save_steps", "2", "--per_device_train_batch_size", "4", "--warmup_steps", "1", "--logging_steps", "1",
        "--disable_tqdm", "true", *extra])
    return parsed.model, parsed.training, parsed.methods


PLAN = RoundsPlan(rounds=3, items_per_round=8, sampling=SamplingSettings(n=3, max_new_tokens=24),
                  sample_batch_size=2)


def rounds(tmp_path: Path, out: Path, plan: RoundsPlan = PLAN, judge=None, method: str = "dpo", **kwargs):
    model_args, args, methods = config(out, method)
    items = world_pool(plan.rounds * plan.items_per_round, 0, tmp_path / "pool")
    return run_rounds(model_args, args, methods, plan, items, judge or SceneJudge(), **kwargs)


def weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounds")
    results = rounds(tmp, tmp / "run")
    return tmp / "run", results


def test_each_round_samples_the_previous_rounds_model_and_writes_its_folder(uninterrupted):
    run, results = uninterrupted
    assert [r.round for r in results] == [1, 2, 3]
    starts = [str(BASE.resolve()), str(run / "round-1" / "model"), str(run / "round-2" / "model")]
    for result, start in zip(results, starts, strict=True):
        folder = run / f"round-{result.round}"
        assert result.reference == start  # round_reference: previous, RLAIF-V's
        pairs = load_records(folder / "pairs.jsonl").records
        assert result.pairs["written"] == len(pairs) > 0 and result.items == 8
        assert {r.meta["round"] for r in pairs} == {result.round}
        assert {r.meta["policy"] for r in pairs} == {start}  # sampled from the round's starting model
        ids = [row["id"] for row in read_jsonl(folder / "samples.jsonl")]
        assert ids == [f"pref-{i:06d}" for i in range(8 * (result.round - 1), 8 * result.round)]
        assert result.train["steps"] == 6 and result.train["reward_margin"] is not None
        assert set(result.seconds) == {"sample", "judge", "pair", "enrich", "train", "evaluate"}
        assert not list((folder / "model").glob("checkpoint-*"))  # removed once the round finished
        assert json.loads((folder / "round.json").read_text())["model"] == str(folder / "model")
    # each round's model differs from the one it started from
    assert max_difference(weights(run / "round-1" / "model"), weights(run / "round-2" / "model")) > 0
    assert [r.round for r in read_rounds(run)] == [1, 2, 3]
    assert [r["round"] for r in json.loads((run / "rounds.json").read_text())] == [1, 2, 3]


def test_a_rerun_redoes_no_finished_round(tmp_path, uninterrupted):
    run, _ = uninterrupted
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "round-" in str(p)}
    results = rounds(run.parent, run)
    assert all(r.resumed for r in results)
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize("where", ["sampling", "training"])
def test_interrupted_anywhere_then_rerun_gives_the_same_final_model(tmp_path, uninterrupted, monkeypatch, where):
    """Interrupted inside round 2 (after two of its four sampling batches, or after its training step 3,
    with checkpoint-2 saved), then rerun: the same final model as the uninterrupted run, to the bit."""
    run, _ = uninterrupted
    out = tmp_path / "run"

    class KillingJudge(SceneJudge):
        calls = 0

        def judge(self, queries):
            if queries[0].key.startswith("pref-0000") and int(queries[0].key[5:11]) >= 12:  # round 2, 3rd batch
                raise Killed
            return super().judge(queries)

    from mmpo.training import trainer as trainer_module

    original = trainer_module.PreferenceTrainer.training_step

    def killing_step(self, *args, **kwargs):
        if "round-2" in str(self.args.output_dir) and self.state.global_step == 3:
            raise Killed
        return original(self, *args, **kwargs)

    if where == "training":
        monkeypatch.setattr(trainer_module.PreferenceTrainer, "training_step", killing_step)
        judge = SceneJudge()
    else:
        judge = KillingJudge()
    with pytest.raises(Killed):
        rounds(tmp_path, out, judge=judge)
    assert (out / "round-1" / "round.json").exists() and not (out / "round-2" / "round.json").exists()
    if where == "training":
        assert (out / "round-2" / "model" / "checkpoint-2").is_dir()
        monkeypatch.setattr(trainer_module.PreferenceTrainer, "training_step", original)
    else:
        done = read_jsonl(out / "round-2" / "samples" / "rank-0-of-1.jsonl")
        assert len(done) == 4  # two batches of two
    results = rounds(tmp_path, out)
    assert [r.resumed for r in results] == [True, False, False]
    assert max_difference(weights(out / "round-3" / "model"), weights(run / "round-3" / "model")) == 0.0


def test_round_reference_initial_trains_every_round_against_the_first_model(tmp_path):
    plan = dataclasses.replace(PLAN, rounds=2, round_reference="initial")
    results = rounds(tmp_path, tmp_path / "run", plan)
    assert [r.reference for r in results] == [str(BASE.resolve())] * 2
    # round 2's policy starts away from its reference: its first logged rewards are not zero
    log = json.loads((tmp_path / "run" / "round-2" / "log_history.json").read_text())
    assert abs(log[0]["rewards/chosen"]) > 0


def test_the_methods_data_is_added_each_round(tmp_path):
    """ASPO's sentence scores and DAMA's alpha_D from the world's tiny CLIP, AdaViP's rejected images
    from the annotation backends, in each round's train.jsonl."""
    from mmpo.scoring.clip import CLIPScorer
    from mmpo.toyworld.rounds import world_vision_pipeline
    from mmpo.training.rounds import method_enricher

    (clip,) = sorted(SHIPPED_DIR.glob("clip-*"))
    scorer = CLIPScorer(clip, cache_dir=tmp_path / "cache")
    _, _, methods = config(tmp_path / "run", "dama", "--aspo", "true", "--adavip", "true")
    assert methods.aspo.enabled and methods.dama.data and methods.adavip.enabled
    enrich = method_enricher(methods, scorer=scorer, vision_pipeline=world_vision_pipeline(scorer))
    plan = dataclasses.replace(PLAN, rounds=1)
    model_args, args, _ = config(tmp_path / "run", "dama", "--aspo", "true", "--adavip", "true")
    items = world_pool(8, 0, tmp_path / "pool")
    (result,) = run_rounds(model_args, args, methods, plan, items, SceneJudge(), enrich=enrich)
    records = load_records(tmp_path / "run" / "round-1" / "train.jsonl").records
    assert len(records) == result.pairs["written"]
    assert all(r.chosen_sentence_scores and r.data_alpha is not None for r in records)
    assert any(r.rejected_image is not None for r in records)
    with pytest.raises(ValueError, match="clip_model"):
        method_enricher(methods, scorer=None)


def test_an_evaluator_scores_the_start_and_every_round(tmp_path):
    calls = []

    def evaluate(model, processor):
        calls.append(type(model).__name__)
        return {"chair_i": 0.5, "pope_f1": 0.5}

    plan = dataclasses.replace(PLAN, rounds=1, pairs_per_round=2)
    results = rounds(tmp_path, tmp_path / "run", plan, evaluate=evaluate)
    assert [r.round for r in results] == [0, 1] and len(calls) == 2
    assert results[1].metrics == {"chair_i": 0.5, "pope_f1": 0.5}
    assert results[1].pairs["written"] == 2 and results[1].pairs["dropped"]["cap"] >= 1
    assert len(load_records(tmp_path / "run" / "round-1" / "pairs.jsonl").records) == 2


def test_refusals_name_the_problem(tmp_path, uninterrupted):
    run, _ = uninterrupted
    with pytest.raises(ValueError, match="other settings.*plan"):
        rounds(run.parent, run, dataclasses.replace(PLAN, sampling=SamplingSettings(n=4, max_new_tokens=24)))
    with pytest.raises(ValueError, match="holds 24 items, and 4 rounds of 8 need 32"):
        model_args, args, methods = config(tmp_path / "small")
        run_rounds(model_args, args, methods, dataclasses.replace(PLAN, rounds=4), world_pool(24, 0, tmp_path / "p"),
                   SceneJudge())
    with pytest.raises(ValueError, match="round_reference"):
        RoundsPlan(rounds=1, items_per_round=1, round_reference="first")


@pytest.mark.parametrize("overrides, message", [
    ({"judge": "model"}, "judge_model"),
    ({"judge": "scene", "items_file": "x.jsonl"}, "judge: scene"),
    ({"vision_detector": "owlv2"}, "vision_detector_path"),
    ({"samples": 1}, "samples"),
    ({"round_reference": "start"}, "round_reference"),
    ({"sample_top_p": 0.0}, "sample_top_p"),
])
def test_iterate_arguments_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        IterateArguments(**overrides)


def test_iterate_plan_divides_the_pool():
    plan = IterateArguments(rounds=3, samples=4).plan(100, seed=7)
    assert plan.items_per_round == 33 and plan.sampling.n == 4 and plan.round_sampling(3).seed == 9
    with pytest.raises(ValueError, match="fewer than rounds"):
        IterateArguments(rounds=3).plan(2, seed=0)


def test_iterate_arguments_do_not_clash_with_the_training_config():
    from transformers import HfArgumentParser

    HfArgumentParser(tuple(keyed(cls) for cls in (*CONFIG_CLASSES, IterateArguments)))  # a duplicate key raises


def test_mmpo_iterate_runs_rounds_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["iterate", str(CONFIGS / "dpo.yaml"), "--rounds", "2", "--world_scenes", "12", "--samples", "3",
            "--sample_max_new_tokens", "24", "--eval_scenes", "6", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--model_name_or_path", str(BASE), "--output_dir", str(out),
            "--disable_tqdm", "true"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "round 0 (the starting model" in text and "round 2:" in text and "chair_i" in text
    summary = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in summary] == [0, 1, 2]
    assert all(0 <= r["metrics"]["chair_i"] <= 1 for r in summary)
    assert main([*argv[:-2], "--samples", "4", "--disable_tqdm", "true"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_mmpo_iterate_help_lists_the_rounds_options(capsys):
    assert main(["iterate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--round_reference" in text and "--items_per_round" in text and "--beta" in text


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this Python")
def test_two_processes_sample_their_shares_and_train_together(tmp_path):
    """Under torchrun (2 CPU processes, gloo) each process samples and judges every other prompt of
    the round into its own journal, the main process pairs them once in pool order, both train."""
    out = tmp_path / "run"
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "mmpo.cli.main", "iterate", str(CONFIGS / "dpo.yaml"),
               "--rounds", "1", "--world_scenes", "8", "--samples", "3", "--sample_max_new_tokens", "24",
               "--sample_batch_size", "2", "--eval_scenes", "0", "--max_steps", "2", "--per_device_train_batch_size",
               "2", "--model_name_or_path", str(BASE), "--output_dir", str(out), "--disable_tqdm", "true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("1 rounds in") == 1  # said once, by the main process
    folder = out / "round-1"
    shares = [[row["id"] for row in read_jsonl(folder / "samples" / f"rank-{r}-of-2.jsonl")] for r in (0, 1)]
    pool = [f"pref-{i:06d}" for i in range(8)]
    assert shares == [pool[0::2], pool[1::2]]
    assert [row["id"] for row in read_jsonl(folder / "samples.jsonl")] == pool
    pairs = load_records(folder / "pairs.jsonl").records
    assert [r.id for r in pairs] == sorted(r.id for r in pairs) and pairs
    result = json.loads((folder / "round.json").read_text())
    assert result["pairs"]["written"] == len(pairs) and result["train"]["steps"] == 2
    assert (folder / "model" / "model.safetensors").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_lora_rounds_merge_each_rounds_adapters(tmp_path):
    """With LoRA each round's adapters are merged into the round's model (whole weights, the next
    round's start); round_reference: initial then uses a frozen copy of the first model."""
    model_args, args, methods = config(tmp_path / "run", "dpo", "--use_lora", "true", "--lora_r", "4")
    plan = dataclasses.replace(PLAN, rounds=2, round_reference="initial")
    results = run_rounds(model_args, args, methods, plan, world_pool(16, 0, tmp_path / "pool"), SceneJudge())
    for result in results:
        model = Path(result.model)
        assert (model / "model.safetensors").exists() and not (model / "adapter_config.json").exists()
        assert (model.parent / "train" / "adapter_config.json").exists()
    merged = weights(results[0].model)
    assert set(merged) == set(weights(BASE)) and max_difference(merged, weights(BASE)) > 0


def test_mmpo_iterate_on_your_own_items_with_a_model_judge(tmp_path, capsys):
    items = world_pool(20, 0, tmp_path / "pool")
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"id": i, "image": image, "prompt": prompt}) + "\n" for i, image, prompt, _ in items))
    out = tmp_path / "run"
    argv = ["iterate", str(CONFIGS / "dpo.yaml"), "--rounds", "2", "--items_file", str(path), "--judge", "model",
            "--judge_model", str(BASE), "--samples", "4", "--sample_max_new_tokens", "24", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--model_name_or_path", str(BASE), "--output_dir", str(out),
            "--disable_tqdm", "true"]
    assert main(argv) == 0
    results = read_rounds(out)
    assert [r.round for r in results] == [1, 2] and all(r.metrics is None for r in results)  # no evaluator
    claims = [c for row in read_jsonl(out / "round-1" / "samples.jsonl") for s in row["responses"] for c in s["claims"]]
    assert claims and all(0 <= c["p"] <= 1 for c in claims)  # the model judge's p(yes)
    assert main([*argv[:2], "--rounds", "1", "--items_file", str(path), "--model_name_or_path", str(BASE),
                 "--output_dir", str(tmp_path / "other")]) == 2
    assert "judge: scene reads the synthetic world's annotations" in capsys.readouterr().err
