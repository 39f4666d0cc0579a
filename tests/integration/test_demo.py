"""`mmpo demo` end to end at a tiny scale: the run directory and the metrics.json schema; its
command line and its method configs."""

import dataclasses
import json

import pytest

from mmpo.cli import demo
from mmpo.cli.main import main
from mmpo.toyworld import pipeline


def test_demo_writes_metrics_log_and_plot(tmp_path):
    out = tmp_path / "run"
    code = main(["demo", "--method", "dpo", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--base-steps", "20", "--base-scenes", "64", "--n-pairs", "24", "--n-eval-scenes", "8",
                 "--steps", "4", "--batch-size", "4", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "dpo"
    for phase in ("before", "after"):
        for key in ("chair_i", "chair_s", "coverage", "pope_f1"):
            assert isinstance(metrics[phase][key], float) and 0.0 <= metrics[phase][key] <= 1.0
    log = json.loads((out / "train_log.json").read_text())
    assert any("rewards/margins" in e for e in log)
    assert (out / "rewards.png").stat().st_size > 1000
    # the default pairs: the base model's own samples, judged against the scenes; the control beside the method
    assert metrics["data"] == "self" and metrics["n_records"] > 0
    assert (out / "data" / "train.jsonl").read_text().count("\n") == metrics["n_records"]
    assert metrics["self_pairs"]["written"] == metrics["n_records"] <= 24
    assert set(metrics["control"]) == set(metrics["after"])
    assert len(list((tmp_path / "cache").glob("demo-data-*/control-metrics-*.json"))) == 1
    # The options as run: the ones left to the method's config carry the config's values.
    assert metrics["config"] == str(pipeline.CONFIG_DIR / "dpo.yaml")
    assert metrics["options"]["steps"] == 4 and metrics["options"]["learning_rate"] == pytest.approx(3e-4)
    # The base model is cached: a second demo reuses it.
    assert len(list((tmp_path / "cache").glob("toyworld-base-*"))) == 1


@pytest.mark.parametrize("method, data", [("aspo", "seva"), ("dama", "self"), ("adavip", "truth")])
def test_every_method_runs_end_to_end(tmp_path, method, data):
    """ASPO on SeVa pairs with CLIP sentence scores, DAMA with alpha_D from CLIP on self-generated
    pairs, AdaViP with vision-rejected images on ground-truth pairs: each path at a tiny scale,
    sharing one cache (without the control, which the first test covers)."""
    out = tmp_path / method
    code = main(["demo", "--method", method, "--data", data, "--output-dir", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--base-steps", "20", "--base-scenes", "64", "--clip-steps", "3",
                 "--n-pairs", "16", "--n-eval-scenes", "6", "--steps", "3", "--batch-size", "4", "--no-progress",
                 "--no-control"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["data"] == data and metrics["n_records"] > 0
    assert "control" not in metrics
    assert {"chair_i", "chair_s", "coverage", "pope_f1"} <= set(metrics["after"])
    log = json.loads((out / "train_log.json").read_text())
    namespace = {"aspo": "aspo/weight_mean", "dama": "dama/alpha_model", "adavip": "adavip/weight_vision"}[method]
    assert any(namespace in e for e in log)
    if method == "adavip":
        assert (out / "contact_sheet.png").exists() and (out / "adavip.png").exists()


def test_unknown_subcommand_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- options
def test_the_parser_is_built_from_the_options():
    """Every DemoOptions field is a flag with help text, and no flag given is the dataclass's defaults."""
    parser = demo.build_parser()
    assert pipeline.DemoOptions(**vars(parser.parse_args([]))) == pipeline.DemoOptions()
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(pipeline.DemoOptions)}
    assert all(action.help for action in flags.values())
    assert flags["progress"].option_strings == ["--no-progress"]
    assert flags["method"].choices == list(pipeline.method_configs())
    ns = parser.parse_args(["--method", "adavip-plus-vision", "--n-pairs", "3", "--beta", "0.5", "--no-progress"])
    assert (ns.method, ns.n_pairs, ns.beta, ns.progress) == ("adavip-plus-vision", 3, 0.5, False)


def test_the_methods_are_the_shipped_configs():
    assert set(pipeline.method_configs()) == {"dpo", "aspo", "d2po", "mdpo", "dama", "adavip", "adavip-plus-vision",
                                          "aspo-dama-adavip", "sft-chosen"}


#: method -> (aspo, dama_data, dama_model, adavip, adavip_loss) as its config sets them
SWITCHES = {"dpo": (False, False, False, False, "plackett_luce"), "aspo": (True, False, False, False, "plackett_luce"),
            "d2po": (False, True, False, False, "plackett_luce"), "mdpo": (False, False, True, False, "plackett_luce"),
            "dama": (False, True, True, False, "plackett_luce"), "adavip": (False, False, False, True, "plackett_luce"),
            "adavip-plus-vision": (False, False, False, True, "plus_vision"),
            "aspo-dama-adavip": (True, True, True, True, "plackett_luce"),
            "sft-chosen": (False, False, False, False, "plackett_luce")}


@pytest.mark.parametrize("method", sorted(SWITCHES))
def test_the_demo_reads_the_method_config(method, tmp_path):
    """The switches and training settings come from the config; the demo's paths, seed and device
    override it, and so do the settings given on its command line."""
    path, config = pipeline.demo_config(
        pipeline.DemoOptions(method=method, seed=7, progress=False), tmp_path)
    assert path == pipeline.method_configs()[method]
    args, data_args, (aspo, dama, adavip) = config.training, config.data, vars(config.methods).values()
    assert (aspo.enabled, dama.data, dama.model, adavip.enabled, adavip.loss) == SWITCHES[method]
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate, args.beta, args.sft_weight,
            args.warmup_steps) == (200, 16, pytest.approx(3e-4), pytest.approx(0.1), pytest.approx(1.0), 10)
    assert args.output_dir == str(tmp_path / "train") and data_args.train_file == str(tmp_path / "data" / "train.jsonl")
    assert args.seed == 7 and args.disable_tqdm and args.save_strategy == "no"
    assert args.preference_weight == (0.0 if method == "sft-chosen" else 1.0)


def test_the_command_line_overrides_the_config(tmp_path):
    opts = pipeline.DemoOptions(method="dama", steps=4, batch_size=2, learning_rate=1e-3, beta=0.2, sft_weight=0.0)
    _, config = pipeline.demo_config(opts, tmp_path)
    args, dama = config.training, config.methods.dama
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate, args.beta, args.sft_weight) == \
        (4, 2, pytest.approx(1e-3), pytest.approx(0.2), 0.0)
    assert args.warmup_steps == 0  # a short run warms up for at most a tenth of its steps
    assert dama.data and dama.model


def test_an_unknown_method_or_data_kind_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown method 'nope': the configs in .* are adavip, adavip-plus-vision"):
        pipeline.demo_config(pipeline.DemoOptions(method="nope"), tmp_path)
    with pytest.raises(ValueError, match=r"data must be self or truth or seva, not 'both'"):
        pipeline.demo_config(pipeline.DemoOptions(data="both"), tmp_path)


def test_the_control_keeps_an_nll_term(tmp_path):
    assert pipeline.control_options(pipeline.DemoOptions(method="dpo", sft_weight=0.0)).sft_weight is None  # the config's 1
    assert pipeline.control_options(pipeline.DemoOptions(method="dpo", sft_weight=0.5)).sft_weight == 0.5
    _, config = pipeline.demo_config(pipeline.control_options(pipeline.DemoOptions(sft_weight=0.0)), tmp_path)
    args = config.training
    assert (args.preference_weight, args.sft_weight) == (0.0, 1.0)


def test_missing_configs_are_an_error_naming_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        pipeline.method_configs(tmp_path)


def test_metrics_table():
    metrics = {"before": {"chair_i": 0.5, "pope_f1": 0.25, "n": 3}, "after": {"chair_i": 0.375, "pope_f1": 0.5}}
    assert pipeline.metrics_table(metrics) == ("| metric | before | after | change |\n"
                                           "| --- | ---: | ---: | ---: |\n"
                                           "| chair_i | 0.500 | 0.375 | -0.125 |\n"
                                           "| pope_f1 | 0.250 | 0.500 | +0.250 |")


def test_metrics_table_with_the_control():
    metrics = {"method": "dpo", "before": {"chair_i": 0.5}, "after": {"chair_i": 0.25}, "control": {"chair_i": 0.375}}
    assert pipeline.metrics_table(metrics) == ("| metric | before | SFT control | dpo | change | dpo - control |\n"
                                           "| --- | ---: | ---: | ---: | ---: | ---: |\n"
                                           "| chair_i | 0.500 | 0.375 | 0.250 | -0.250 | -0.125 |")


def test_demo_rounds_train_beside_the_offline_pass_at_equal_pairs_and_steps(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["demo", "--rounds", "2", "--no-control", "--output-dir", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--n-pairs", "24", "--n-eval-scenes", "6", "--steps", "5",
                 "--batch-size", "4", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert rounds["n"] == 2 and rounds["steps"] == [3, 2] and rounds["items_per_round"] == 12
    assert rounds["offline"] == {"pairs": metrics["n_records"], "steps": 5} and metrics["n_records"] % 2 == 0
    start, *trained = rounds["rounds"]
    assert start["round"] == 0 and start["metrics"]["chair_i"] == metrics["before"]["chair_i"]
    assert [r["train"]["steps"] for r in trained] == [3, 2]
    assert all(0 < r["pairs"]["written"] <= metrics["n_records"] // 2 for r in trained)
    assert all((out / "rounds" / f"round-{k}" / "round.json").exists() for k in (1, 2))
    text = capsys.readouterr().out
    assert "| metric | base | offline pass | round 1 | round 2 |" in text
    assert "<section id='rounds'>" in (out / "report.html").read_text()


def test_demo_rounds_need_self_pairs(tmp_path):
    with pytest.raises(ValueError, match="--rounds .* needs --data self"):
        pipeline.run_demo(pipeline.DemoOptions(rounds=2, data="truth", output_dir=str(tmp_path)))


def test_demo_mixed_prompts_need_self_pairs_and_no_rounds(tmp_path):
    for options in ({"data": "truth"}, {"rounds": 2}):
        with pytest.raises(ValueError, match="--prompts mixed asks the policy questions .* needs --data self"):
            pipeline.run_demo(pipeline.DemoOptions(prompts="mixed", output_dir=str(tmp_path), **options))


def test_demo_mixed_prompts_train_on_questions_and_descriptions(tmp_path):
    out = tmp_path / "run"
    code = main(["demo", "--method", "aspo", "--prompts", "mixed", "--output-dir", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--base-steps", "20", "--base-scenes", "64", "--n-pairs", "24",
                 "--n-eval-scenes", "8", "--steps", "2", "--batch-size", "4", "--no-progress", "--no-control",
                 "--no-report"])
    assert code == 0
    # the base model is built from the recipe that also answers the questions (the shipped one does not)
    (base,) = (tmp_path / "cache").glob("toyworld-base-*")
    assert json.loads((base / "recipe.json").read_text())["question_kinds"] == ["colour", "count", "position"]
    samples = (tmp_path / "cache").glob("demo-data-*/self.samples.jsonl")
    prompts = {json.loads(line)["prompt"] for path in samples for line in path.read_text().splitlines()
               if '"prompt"' in line}
    assert "describe the image ." in prompts and len(prompts) > 1
