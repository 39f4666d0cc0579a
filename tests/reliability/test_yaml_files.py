"""YAML files (training configs, ``--judge-config``) are read by :func:`mmpo.yamlfile.read_yaml`.

Before: a key given twice trained with its last value, without a word; a ``!!python/object`` tag, an
unclosed bracket or a tab used as indentation were tracebacks (the payload never ran). Now each is one
``ValueError`` naming the file, the line and the column, and ``mmpo train`` / ``mmpo evaluate`` print it
as one line.
"""

from __future__ import annotations

import pytest

from mmpo.cli.main import main
from mmpo.training.config import parse_config
from mmpo.yamlfile import YamlFileError, read_yaml

BASE = "model_name_or_path: /models/m\ntrain_file: train.jsonl\noutput_dir: out\nreport_to: none\n"

#: (YAML text, what the error must say)
BAD = {
    "repeated key": (BASE + "beta: 0.1\nlearning_rate: 1.0e-5\nbeta: 0.5\n",
                     "line 7, column 1: key 'beta' appears twice (lines 5 and 7)"),
    "repeated key in a flow mapping": ("a: {b: 1, b: 2}\n", "key 'b' appears twice"),
    "repeated nested key": ("outer:\n  x: 1\n  x: 2\n", "key 'x' appears twice (lines 2 and 3)"),
    "python tag": (BASE + "beta: !!python/object/apply:os.system ['touch /tmp/mmpo-pwned']\n",
                   "tags that build Python objects are not allowed"),
    "unclosed bracket": (BASE + "lr_list: [1, 2\nbeta: 0.1\n", "is a bracket unclosed?"),
    "tab indentation": ("outer:\n\tbeta: 0.1\n", "never tabs"),
    "deep nesting": ("a: " + "[" * 20000 + "\n", "nested too deeply"),
    "not utf-8": (b"beta: \xff\xfe\n", "not UTF-8"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_yaml_is_one_error_naming_file_and_place(tmp_path, case):
    text, expected = BAD[case]
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(YamlFileError) as caught:
        read_yaml(path, "config")
    message = str(caught.value)
    assert message.startswith(f"config {path}: ") and expected in message and "\n" not in message


def test_a_python_tag_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "config.yaml"
    path.write_text(f"beta: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(YamlFileError):
        read_yaml(path)
    assert not marker.exists()


def test_plain_yaml_is_read_as_before(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("a: 1\nlist:\n  - {x: 1}\n  - {x: 2}\nempty:\n")
    assert read_yaml(path) == {"a": 1, "list": [{"x": 1}, {"x": 2}], "empty": None}
    (tmp_path / "blank.yaml").write_text("")
    assert read_yaml(tmp_path / "blank.yaml") is None


def test_train_config_with_a_repeated_key_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(BASE + "beta: 0.1\nbeta: 0.5\n")
    with pytest.raises(ValueError, match=r"key 'beta' appears twice \(lines 5 and 6\)"):
        parse_config(path)


@pytest.mark.parametrize("case", ["repeated key", "python tag", "unclosed bracket", "tab indentation"])
def test_mmpo_train_prints_one_line(tmp_path, capsys, case):
    path = tmp_path / "config.yaml"
    path.write_text(BAD[case][0])
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"mmpo train: error: config {path}: ") and BAD[case][1] in err[0]
    assert len(err) == 2 and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("case", ["repeated key", "python tag", "unclosed bracket", "tab indentation"])
def test_mmpo_evaluate_judge_config_is_refused_naming_file_and_line(tmp_path, capsys, case):
    judge = tmp_path / "judge.yaml"
    judge.write_text(BAD[case][0])
    answers = tmp_path / "mmhal_answers.json"  # MMHal answers to be judged: the judge config is read
    answers.write_text('[{"question": "q", "model_answer": "a"}]')
    with pytest.raises(SystemExit) as caught:
        main(["evaluate", "--benchmark", "mmhal", "--predictions", str(answers),
              "--judge-config", str(judge), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err
    assert f"error: judge config {judge}: " in err and BAD[case][1] in err, err
