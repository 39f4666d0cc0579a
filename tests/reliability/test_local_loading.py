"""Checkpoints load from local directories only: a mistyped path is a clear FileNotFoundError
naming it, raised at once, with no Hub look-up and no DNS query.

The network is blocked for every test here (``socket.getaddrinfo`` and ``socket.create_connection``
record the attempt and fail), and the Hub's download functions record any call.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import huggingface_hub
import pytest
import transformers
import transformers.utils.hub

from mmpo import hub, models
from mmpo.cli.main import main
from mmpo.data.records import save_records
from mmpo.methods.adavip.vision_hf_models import GroundingDinoDetector, OwlV2Detector, SamSegmenter
from mmpo.scoring.clip import CLIPScorer
from mmpo.scoring.sentences import LLMSplitter
from mmpo.toyworld.data import ground_truth_pairs
from mmpo.toyworld.scenes import WorldConfig, sample_scenes
from mmpo.training.config import ModelArguments

TYPO = os.path.join("checkpoints", "no-such-model")
CONFIGS = Path(__file__).parents[2] / "configs" / "toyworld"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Work in an empty directory with the network blocked; returns the list of attempts."""
    attempts: list[tuple] = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append((name, args[:2]))
            raise OSError(f"network blocked by the test ({name})")
        return blocked

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    for module in (huggingface_hub, huggingface_hub.file_download, transformers.utils.hub):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    monkeypatch.delenv(hub.ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return attempts


def assert_names_the_path(error: BaseException, tmp_path, what: str) -> None:
    message = str(error)
    assert what in message and repr(TYPO) in message, message
    assert str(tmp_path / TYPO) in message and "does not exist" in message, message
    assert hub.ALLOW_DOWNLOAD_ENV in message  # says how to allow downloads


@pytest.mark.parametrize("load, what", [
    (lambda: models.load_policy(ModelArguments(model_name_or_path=TYPO), what="model"), "model path"),
    (lambda: CLIPScorer(TYPO), "CLIP model path"),
    (lambda: OwlV2Detector(TYPO), "OWLv2 detector path"),
    (lambda: GroundingDinoDetector(TYPO), "Grounding DINO detector path"),
    (lambda: SamSegmenter(TYPO), "SAM segmenter path"),
    (lambda: LLMSplitter(TYPO), "sentence-splitter LLM path"),
], ids=["vlm", "clip", "owlv2", "grounding-dino", "sam", "llm-splitter"])
def test_a_mistyped_path_is_a_clear_error_without_any_network(offline, tmp_path, load, what):
    with pytest.raises(FileNotFoundError) as caught:
        load()
    assert_names_the_path(caught.value, tmp_path, what)
    assert offline == []


def test_a_file_is_not_a_checkpoint(offline, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a checkpoint directory"):
        CLIPScorer("model.safetensors")
    assert offline == []


def test_a_local_checkpoint_loads_with_local_files_only(offline, monkeypatch, tiny_checkpoint):
    seen: list[dict] = []
    for cls in (transformers.AutoModelForImageTextToText, transformers.AutoProcessor):
        original = cls.from_pretrained

        def spy(path, *args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    model, processor = models.load_policy(ModelArguments(model_name_or_path=str(tiny_checkpoint)),
                                                 device="cpu")
    assert model is not None and processor is not None and not model.training  # eval mode, for generation
    assert next(model.parameters()).device.type == "cpu"
    assert len(seen) == 2 and all(kwargs.get("local_files_only") is True for kwargs in seen)
    assert offline == []


@pytest.fixture
def records_file(tmp_path):
    world = WorldConfig(seed=1)
    records = ground_truth_pairs(sample_scenes(world, 2, prefix="l"), world, tmp_path / "images")
    return save_records(records, tmp_path / "records.jsonl")


@pytest.mark.parametrize("argv", [
    ["evaluate", "--model", TYPO, "--benchmark", "synthetic", "--output-dir", "run"],
    ["noisy-pairs", "--model", TYPO, "--synthetic", "2", "--output", "pairs.jsonl"],
    ["score-sentences", "--input", "{records}", "--output", "scored.jsonl", "--clip", TYPO],
    ["vision-rejected", "--input", "{records}", "--output", "adavip.jsonl", "--clip", TYPO, "--no-progress"],
], ids=lambda argv: argv[0])
def test_the_clis_report_a_mistyped_model_path_in_one_line(offline, tmp_path, records_file, capsys, argv):
    argv = [arg.replace("{records}", str(records_file)) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"mmpo {argv[0]}: error: ") and str(tmp_path / TYPO) in err[0]
    assert len(err) == 2 and "--debug" in err[1]
    assert offline == []
    assert not (tmp_path / "pairs.jsonl").exists()  # noisy-pairs checks the model before any work


def test_allow_download_is_passed_to_the_loaders_and_then_reset(offline, monkeypatch, capsys):
    allowed: list[bool] = []

    def stand_in(model_args, device=None, what=None):
        allowed.append(hub.downloads_allowed(True if model_args.allow_download else None))
        raise RuntimeError("stand-in stops here")

    monkeypatch.setattr(models, "load_policy", stand_in)
    base = ["noisy-pairs", "--model", "org/model", "--synthetic", "1", "--output", "p.jsonl"]
    assert main([*base, "--allow-download"]) == 2 and main(base) == 2
    assert allowed == [True, False]
    assert hub.ALLOW_DOWNLOAD_ENV not in os.environ
    assert "stand-in stops here" in capsys.readouterr().err


@pytest.mark.parametrize("subcommand", ["evaluate", "noisy-pairs", "score-sentences", "vision-rejected"])
def test_help_documents_the_download_switch(subcommand, capsys):
    with pytest.raises(SystemExit):
        main([subcommand, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--allow-download" in text and hub.ALLOW_DOWNLOAD_ENV in text


def torchvision_usable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture
def smolvlm_checkpoint(tmp_path):
    """A tiny SmolVLM saved as a real one is: its processor declared as transformers' SmolVLMProcessor,
    which has a video-processor slot (the tests' own processor class, without it, is renamed away)."""
    from mmpo.testing.families import build_family

    model, processor = build_family("smolvlm")
    path = tmp_path / "smolvlm"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    for name in ("processor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.exists():
            file.write_text(file.read_text().replace("SmolVLMProcessorWithoutVideo", "SmolVLMProcessor"))
    return path


def test_a_processor_that_cannot_be_built_is_one_train_error_naming_directory_class_and_cause(
        offline, smolvlm_checkpoint, records_file, capsys):
    argv = ["train", str(CONFIGS / "dpo.yaml"), "--model_name_or_path", str(smolvlm_checkpoint),
            "--train_file", str(records_file), "--output_dir", "out", "--max_steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "--debug" in err[1], err
    assert err[0].startswith(f"mmpo train: error: cannot load the processor in {smolvlm_checkpoint} (SmolVLMProcessor): ")
    if torchvision_usable():
        assert "video_preprocessor_config.json" in err[0]
    else:
        assert "Likely cause: torchvision is not installed" in err[0]
    assert offline == []


def test_a_damaged_weights_file_is_one_error_naming_the_class(offline, tmp_path, tiny_checkpoint):
    import shutil

    path = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a copy that stopped
    with pytest.raises(hub.CheckpointLoadError) as caught:
        models.load_policy(ModelArguments(model_name_or_path=str(path)))
    message = str(caught.value)
    assert message.startswith(f"cannot load the model in {path} (LlavaForConditionalGeneration): "), message
    assert "truncated or damaged" in message and caught.value.__cause__ is not None
    assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)  # what loads raised before


def test_the_declared_class_comes_from_the_checkpoints_files(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}')
    (tmp_path / "processor_config.json").write_text('{"processor_class": "LlavaProcessor"}')
    assert hub.declared_class(tmp_path, "model") == "LlavaForConditionalGeneration"
    assert hub.declared_class(tmp_path, "processor") == "LlavaProcessor"
    assert hub.declared_class(tmp_path / "nowhere", "model") is None
    (tmp_path / "config.json").write_text("[not a config")
    assert hub.declared_class(tmp_path, "model") is None
    error = hub.load_failure(tmp_path, "model", KeyError("x"))
    assert str(error) == f"cannot load the model in {tmp_path}: KeyError: 'x'"  # no cause guessed
