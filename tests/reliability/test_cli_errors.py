"""The ``mmpo`` command reports errors in one line and exits 2; ``--debug`` / ``MMPO_DEBUG=1`` show
the traceback; Ctrl-C exits 130; bugs (other exception types) keep their traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmpo.cli import base_model, train
from mmpo.cli.main import main
from mmpo.data.records import RecordError, RecordValidationError

DEBUG_ENV = "MMPO_DEBUG"
DEBUG_HINT = "(run with --debug or MMPO_DEBUG=1 for the traceback)"


class Raiser:
    """Stands in for a subcommand's ``main``: records its argv, then raises ``error``."""

    def __init__(self, error: BaseException | None):
        self.error, self.argv = error, None

    def __call__(self, argv):
        self.argv = list(argv)
        if self.error is not None:
            raise self.error
        return 0


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def run(monkeypatch, error, argv=("base-model", "--output-dir", "x")):
    raiser = Raiser(error)
    monkeypatch.setattr(base_model, "main", raiser)
    return main(list(argv)), raiser


@pytest.mark.parametrize("error", [
    ValueError("--steps must be >= 1"),
    FileNotFoundError(2, "No such file or directory", "data/train.jsonl"),
    PermissionError(13, "Permission denied", "/root/out"),
    OSError("disk full"),
    RuntimeError("judge request failed: HTTP 500"),
    RecordValidationError(RecordError(3, "a", "chosen", "empty response")),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
], ids=lambda e: type(e).__name__)
def test_errors_are_one_line_and_status_2(monkeypatch, capsys, error):
    code, _ = run(monkeypatch, error)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.splitlines() == [f"mmpo base-model: error: {error}", DEBUG_HINT]
    assert "Traceback" not in captured.err


def test_a_multi_line_message_is_joined_into_one_line(monkeypatch, capsys):
    code, _ = run(monkeypatch, ValueError("bad config:\n  field a\n\n  field b\n"))
    assert code == 2
    assert capsys.readouterr().err.splitlines()[0] == "mmpo base-model: error: bad config:; field a; field b"


@pytest.mark.parametrize("where", ["first", "after the subcommand", "last"])
def test_debug_anywhere_reraises_and_is_not_passed_on(monkeypatch, where):
    argv = ["base-model", "--output-dir", "x"]
    argv.insert({"first": 0, "after the subcommand": 1, "last": 3}[where], "--debug")
    raiser = Raiser(ValueError("boom"))
    monkeypatch.setattr(base_model, "main", raiser)
    with pytest.raises(ValueError, match="boom"):
        main(argv)
    assert raiser.argv == ["--output-dir", "x"]


def test_debug_env_reraises(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(OSError, match="disk full"):
        run(monkeypatch, OSError("disk full"))


def test_without_an_error_debug_changes_nothing(monkeypatch):
    code, raiser = run(monkeypatch, None, ["base-model", "--debug", "--steps", "3"])
    assert code == 0 and raiser.argv == ["--steps", "3"]


def test_trainings_own_debug_option_is_left_alone(monkeypatch):
    """``mmpo train CONFIG --debug underflow_overflow`` is ``TrainingArguments.debug``."""
    raiser = Raiser(None)
    monkeypatch.setattr(train, "main", raiser)
    assert main(["train", "c.yaml", "--debug", "underflow_overflow", "--max_steps", "2"]) == 0
    assert raiser.argv == ["c.yaml", "--debug", "underflow_overflow", "--max_steps", "2"]
    assert main(["--debug", "train", "c.yaml", "--max_steps", "2"]) == 0
    assert raiser.argv == ["c.yaml", "--max_steps", "2"]


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    code, _ = run(monkeypatch, KeyboardInterrupt())
    assert code == 130 and capsys.readouterr().err.splitlines() == ["mmpo base-model: interrupted"]


@pytest.mark.parametrize("error", [TypeError("bug"), KeyError("bug"), AttributeError("bug"),
                                   NotImplementedError("bug"), AssertionError("bug")],
                         ids=lambda e: type(e).__name__)
def test_bugs_keep_their_traceback(monkeypatch, error):
    with pytest.raises(type(error)):
        run(monkeypatch, error)


def test_argparse_errors_still_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["noisy-pairs", "--model", "m"])
    assert caught.value.code == 2 and "required" in capsys.readouterr().err


def test_a_real_error_from_a_subcommand(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    code = main(["score-sentences", "--input", str(missing), "--output", str(tmp_path / "o.jsonl"),
                 "--clip", str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[0].startswith("mmpo score-sentences: error: ") and str(missing) in err[0]


def test_the_installed_command_in_a_subprocess(tmp_path):
    argv = [sys.executable, "-m", "mmpo.cli.main", "evaluate", "--model", str(tmp_path / "nope"),
            "--benchmark", "synthetic", "--output-dir", str(tmp_path / "run")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no MMPO_DEBUG, no MMPO_ALLOW_DOWNLOAD
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert plain.returncode == 2, plain.stderr
    lines = plain.stderr.splitlines()
    assert lines[0].startswith("mmpo evaluate: error: model path ") and str(tmp_path / "nope") in lines[0]
    assert lines[1:] == [DEBUG_HINT] and "Traceback" not in plain.stderr


def _safetensor_error(message: str) -> BaseException:
    """The error safetensors itself raises for ``message`` (its class is not importable by name alone)."""
    from safetensors import SafetensorError

    return SafetensorError(message)


@pytest.mark.parametrize("error, cause", [
    (lambda: RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (lambda: _safetensor_error("Error while deserializing header: incomplete metadata, file not fully covered"),
     "truncated or damaged"),
    (lambda: _safetensor_error("Error while serializing: IoError(No space left on device (os error 28))"),
     "the disk is full"),
    (lambda: __import__("pickle").UnpicklingError("invalid load key, 'x'."), "pickled file"),
    (lambda: __import__("yaml").YAMLError("found character that cannot start any token"), None),
    (lambda: EOFError("Ran out of input"), "truncated"),
    (lambda: OSError(28, "No space left on device", "/out/model.safetensors"), "the disk is full"),
    (lambda: MemoryError(), "out of memory"),
], ids=["recursion", "safetensors-truncated", "safetensors-enospc", "pickle", "yaml", "eof", "enospc", "memory"])
def test_damaged_files_and_resources_are_one_line_with_a_cause(monkeypatch, capsys, error, cause):
    """Errors libraries raise outside ValueError/OSError/RuntimeError for damaged files, deep nesting,
    a full disk or exhausted memory: one line with the error's type and its likely cause, exit 2."""
    raised = error()
    code, _ = run(monkeypatch, raised)
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines[1:] == [DEBUG_HINT] and len(lines) == 2
    assert lines[0].startswith("mmpo base-model: error: ")
    if not isinstance(raised, OSError):
        assert type(raised).__name__ in lines[0]
    if cause:
        assert cause in lines[0]


def test_damaged_files_still_reraise_under_debug(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RecursionError):
        run(monkeypatch, RecursionError("deep"))
