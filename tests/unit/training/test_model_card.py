"""The model card: exactly the non-default values, front matter the Hub's parser reads, user strings
escaped, the last metrics (a whole ``mmpo train`` run: tests/integration/test_train_writes_model_card.py)."""

from __future__ import annotations

import re

import pytest
import yaml

from mmpo.training.config import parse_config
from mmpo.training.model_card import (
    HIDDEN,
    DataFacts,
    changed_values,
    command_line,
    model_card,
    run_facts,
    text,
    write_model_card,
)

REQUIRED = ["--model_name_or_path", "/models/tiny", "--train_file", "t.jsonl", "--output_dir", "runs/x"]
HISTORY = [
    {"loss": 0.6931, "rewards/accuracies": 0.25, "rewards/margins": 0.0, "step": 1, "epoch": 0.5},
    {"loss": 0.61, "rewards/accuracies": 0.75, "rewards/margins": 0.125, "step": 2, "epoch": 1.0},
    {"eval_loss": 0.66, "eval_rewards/accuracies": 0.5, "step": 2, "epoch": 1.0},
    {"train_loss": 0.65, "train_runtime": 1.5, "step": 2, "epoch": 1.0},
]


def facts(*overrides: str, train: DataFacts | None = None, **kwargs):
    config = parse_config(None, [*REQUIRED, *overrides])
    return run_facts(config, train or DataFacts("t.jsonl", "mmpo", 10, 8), **kwargs)


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def cells(line: str) -> list[str]:
    """A GFM table row split into cells: a ``|`` ends a cell unless a backslash escapes it (a
    backslash escapes whatever follows it, another backslash included)."""
    found, current, chars = [], "", iter(line.strip()[1:-1])  # rows are "| ... |"
    for char in chars:
        if char == "\\":
            current += char + next(chars, "")
        elif char == "|":
            found.append(current.strip())
            current = ""
        else:
            current += char
    return found + [current.strip()]


def section(card: str, title: str) -> list[str]:
    lines = card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    return [line for line in lines if line.startswith("|")]


def test_the_configuration_lists_exactly_the_values_that_differ_from_their_defaults():
    # --beta 0.1, --report_to none and --activation_checkpointing false give the defaults (the last two as
    # TrainingArguments' __post_init__ resolves them: [] and false); false for ddp_find_unused_parameters,
    # whose unset default (None) lets transformers decide, is a choice.
    card_facts = facts("--beta", "0.1", "--report_to", "none", "--activation_checkpointing", "false",
                       "--ddp_find_unused_parameters", "false", "--learning_rate", "1e-5", "--sft_weight", "0.5",
                       "--aspo", "true", "--aspo_alpha", "0.3", "--dama_keep", "0.75", "--adavip_loss", "plus_vision")
    changed = {"model_name_or_path", "train_file", "output_dir", "ddp_find_unused_parameters", "learning_rate",
               "sft_weight", "aspo", "aspo_alpha", "dama_keep", "adavip_loss"}
    assert set(card_facts.changed) == changed
    assert card_facts.changed["aspo_alpha"] == (0.3, 0.5) and card_facts.changed["learning_rate"][0] == 1e-5
    rows = section(model_card(card_facts), "Configuration")[2:]
    assert {cells(line)[0].strip("`") for line in rows} == changed
    assert ["`sft_weight`", "`0.5`", "`0.0`"] in [cells(line) for line in rows]


def test_a_default_config_changes_only_the_required_values():
    assert set(changed_values(parse_config(None, REQUIRED))) == {"model_name_or_path", "train_file", "output_dir"}


def test_front_matter_parses_with_yaml_and_the_hub_card_parser(tmp_path, monkeypatch):
    import huggingface_hub.repocard
    from huggingface_hub import ModelCard

    def offline(*args, **kwargs):
        raise AssertionError("ModelCard.load went to the network")

    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", offline)
    path = write_model_card(tmp_path, facts("--aspo", "true", "--dama_data", "true"), HISTORY, ["extra"])
    card = path.read_text()
    front = front_matter(card)
    assert front["library_name"] == "transformers" and "base_model" not in front and "datasets" not in front
    assert front["tags"] == ["mmpo", "dpo", "aspo", "dama", "vision-language", "extra"]
    loaded = ModelCard.load(path)
    assert loaded.data.library_name == "transformers" and loaded.data.tags == front["tags"]
    assert loaded.data.pipeline_tag == "image-text-to-text"
    assert "## Configuration" in loaded.text and "DPO + ASPO + D2PO" in loaded.text


def test_lora_says_peft_and_a_hub_id_becomes_base_model(tmp_path):
    """A local directory is no Hub id (the Hub refuses it as base_model); an owner/name that is not on disk is."""
    local = facts("--use_lora", "true", "--model_name_or_path", str(tmp_path))
    front = front_matter(model_card(local))
    assert front["library_name"] == "peft" and "lora" in front["tags"] and "base_model" not in front
    hub = front_matter(model_card(facts("--model_name_or_path", "llava-hf/llava-1.5-7b-hf", "--allow_download", "true")))
    assert hub["base_model"] == "llava-hf/llava-1.5-7b-hf" and hub["library_name"] == "transformers"


def test_paths_with_spaces_pipes_and_backslashes_stay_one_cell_and_valid_yaml(tmp_path):
    odd = "my data/a|b `x`.jsonl"
    card = model_card(facts("--train_file", odd, "--output_dir", "runs/a: b | c",
                            "--lora_target_modules", r"q_proj\|v_proj", "--model_name_or_path", "/m odd/|*_x_*",
                            train=DataFacts(odd, "trl", 3, 3)))
    front_matter(card)  # the title's colon and pipe stay out of the YAML
    data = section(card, "Data")[2]
    assert cells(data) == ["train", "``my data/a\\|b `x`.jsonl``", "trl", "3", "0"]
    config = {cells(line)[0]: cells(line) for line in section(card, "Configuration")[2:]}
    assert config["`output_dir`"][1] == "`runs/a: b \\| c`"
    # a code span cannot protect '\|' in a table: the value is escaped text, still one cell
    assert config["`lora_target_modules`"][1] == r"q\_proj\\\|v\_proj"
    assert "- Model: `/m odd/|*_x_*`" in card  # outside a table a code span keeps it literal


@pytest.mark.parametrize(("value", "shown"), [
    ("plain", "`plain`"), ("a`b", "``a`b``"), ("`a", "`` `a ``"), (" a ", "`  a  `"), ("", '""'),
    ("two\nlines", "`two lines`")])
def test_code_spans_fence_backticks_and_keep_spaces(value, shown):
    assert text(value, code=True) == shown


def test_results_hold_the_last_value_of_each_metric_and_its_step():
    card = model_card(facts(), HISTORY)
    rows = {cells(line)[0].strip("`"): cells(line)[1:] for line in section(card, "Results")[2:]}
    assert rows["loss"] == ["0.61", "2"] and rows["rewards/accuracies"] == ["0.75", "2"]
    assert rows["eval_loss"] == ["0.66", "2"] and rows["train_loss"] == ["0.65", "2"]
    assert "step" not in rows and "epoch" not in rows
    assert "after 2 steps (epoch 1)" in card
    assert "## Results" not in model_card(facts(), [])


def test_the_command_line_and_the_config_hide_the_hub_token():
    line = command_line(["mmpo", "train", "c y.yaml", "--hub_token", "hf_secret", "--hub_tok=hf_two", "--beta", "0.2"])
    assert line == "mmpo train 'c y.yaml' --hub_token '<hidden>' '--hub_tok=<hidden>' --beta 0.2"
    card_facts = facts("--hub_token", "hf_secret", command=line)
    card = model_card(card_facts)
    assert "hf_secret" not in card and "hf_two" not in card
    assert card_facts.changed["hub_token"] == (HIDDEN, None)
    assert "```bash\nmmpo train 'c y.yaml'" in card


def test_data_methods_and_versions_are_stated():
    card = model_card(facts("--dama_model", "true", "--dama_recipe", "paper", "--on_bad_record", "skip",
                            "--sft_weight", "1.0", train=DataFacts("t.jsonl", "rlaif-v", 10, 8)))
    assert cells(section(card, "Data")[2]) == ["train", "`t.jsonl`", "rlaif-v", "8", "2"]
    assert "Skipped: invalid records left out (`on_bad_record: skip`)" in card
    assert "- Loss: DPO + MDPO, beta 0.1, plus SFT on the chosen responses x 1.0 (token)" in card
    assert "recipe `paper`, resolved: keep `0.75`" in card
    assert re.search(r"^- mmpo \S+$", card, re.M) and re.search(r"^- torch \S+$", card, re.M)
    assert "## Command" not in card  # no command line was given
