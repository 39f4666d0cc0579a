"""``mmpo train`` writes a model card next to the model, and ``push_to_hub`` uploads that card
(the Hub faked: nothing leaves the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers.trainer
from huggingface_hub import ModelCard

from mmpo.data.records import save_records
from mmpo.training.config import parse_config
from mmpo.training.run import run_training

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHORT = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
         "--logging_steps", "1", "--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none",
         "--use_cpu", "true"]


@pytest.fixture(scope="module")
def records_with_a_bad_one(tiny_records, tmp_path_factory):
    """The eight tiny records and one invalid row (empty chosen response), in a folder with a space."""
    path = save_records(tiny_records, tmp_path_factory.mktemp("records") / "my records" / "train.jsonl")
    with path.open("a") as file:
        file.write(json.dumps({"image": str(tiny_records[0].image), "prompt": "q", "chosen": "", "rejected": "r"})
                   + "\n")
    return path


def test_mmpo_train_writes_a_model_card(tiny_checkpoint, records_with_a_bad_one, tmp_path):
    from mmpo.cli.train import main as train

    out = tmp_path / "out dir"
    argv = [str(CONFIGS / "toyworld" / "mdpo.yaml"), "--model_name_or_path", str(tiny_checkpoint),
            "--train_file", str(records_with_a_bad_one), "--eval_file", str(records_with_a_bad_one),
            "--on_bad_record", "skip", "--eval_strategy", "steps", "--eval_steps", "2", "--output_dir", str(out),
            *SHORT]
    assert train(argv) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags[:3] == ["mmpo", "dpo", "dama"]
    assert card.data.get("base_model") is None  # a local directory is no Hub id
    body = card.text
    assert f"- Model: `{tiny_checkpoint}` (`llava`, `LlavaForConditionalGeneration`)" in body
    assert f"| train | `{records_with_a_bad_one}` | mmpo | 8 | 1 |" in body
    assert f"| eval | `{records_with_a_bad_one}` | mmpo | 8 | 1 |" in body
    assert "- Loss: DPO + MDPO, beta 0.1, plus SFT on the chosen responses x 1.0 (record)" in body
    assert "recipe `authors`, resolved: keep `0.8`" in body
    assert "| `dama_model` | `true` | `false` |" in body and "| `max_steps` | `2` | `-1` |" in body
    assert "`beta`" not in body.split("## Configuration")[1].split("## Results")[0]  # 0.1: the default
    log = json.loads((out / "log_history.json").read_text())
    final = log[-1]
    assert f"| `train_loss` | {final['train_loss']:.4g} | 2 |" in body
    assert "| `rewards/accuracies` |" in body and "| `eval_loss` |" in body
    assert "mmpo train " in body and "--on_bad_record skip" in body and "transformers " in body


def test_a_lora_run_s_card_says_peft_and_is_what_push_to_hub_uploads(tiny_checkpoint, tiny_records, tmp_path,
                                                                       monkeypatch):
    """peft's ``save_pretrained`` writes its own README.md and ``Trainer.push_to_hub`` would write
    ``Trainer``'s: the folder uploaded holds mmpo's card."""
    records = save_records(tiny_records, tmp_path / "train.jsonl")
    out = tmp_path / "lora"
    config = parse_config(None, ["--model_name_or_path", str(tiny_checkpoint), "--train_file", str(records),
                                 "--output_dir", str(out), "--use_lora", "true", "--lora_r", "4", "--lora_alpha", "8",
                                 *SHORT])
    trainer = run_training(config.model, config.data, config.training, config.methods)
    assert (out / "adapter_config.json").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags and "## Configuration" in card.text
    assert "- Tuning: LoRA adapters (peft), r 4, alpha 8" in card.text

    uploaded = {}

    class FakeHub:
        def upload_folder(self, folder_path, **kwargs):
            uploaded["card"] = Path(folder_path, "README.md").read_text()

    monkeypatch.setattr(transformers.trainer, "hf_api", FakeHub)
    trainer.hub_model_id = "someone/tiny-lora"  # as init_hf_repo would set it, without creating a repo
    trainer.push_to_hub(tags=["extra-tag"])
    pushed = ModelCard(uploaded["card"])
    assert pushed.data.library_name == "peft" and "## Configuration" in pushed.text
    assert pushed.data.tags[-1] == "extra-tag" and "mmpo" in pushed.data.tags
