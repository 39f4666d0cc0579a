"""The one reader of mmpo's YAML files (training configs, judge configs): :func:`read_yaml`.

PyYAML's ``safe_load`` keeps the *last* of two equal keys without a word, so a config with ``beta``
twice trains with a value its author may not have meant. Here a repeated key is an error naming both
lines, and every YAML error (a tag that would build a Python object, an unclosed bracket, a tab used
as indentation) is one :class:`YamlFileError` naming the file, the line and the column instead of a
traceback. Nothing in a file is ever executed: only the safe loader's plain data types are built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A YAML file that cannot be read as plain data: the message names the file, line and column."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {first} and {line}); keep one",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _describe(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where, with a hint for the usual causes."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return " ".join(str(error).split())
    problem = " ".join(str(error.problem or error.context or "invalid YAML").split())
    mark = error.problem_mark or error.context_mark
    hint = ""
    if "could not determine a constructor" in problem:
        hint = " (tags that build Python objects are not allowed: a config holds plain values only)"
    elif "'\\t'" in problem or "tab" in problem:
        hint = " (YAML indents with spaces, never tabs)"
    elif error.context and "flow" in str(error.context):
        hint = f" ({' '.join(str(error.context).split())} at {_where(error.context_mark)}: is a bracket unclosed?)"
    return f"{_where(mark)}: {problem}{hint}"


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """The plain data in the YAML file ``path`` (``None`` for an empty file).

    Raises:
        FileNotFoundError: no such file.
        YamlFileError: (a ``ValueError``) the file is not valid YAML, repeats a key in one mapping,
            uses a tag that would build a Python object, or is not UTF-8: the message names the
            file, the line and the column.
    """
    path = Path(os.fspath(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise YamlFileError(f"{what} {path}: not UTF-8 text (byte {error.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise YamlFileError(f"{what} {path}: {_describe(error)}") from None
    except RecursionError:
        raise YamlFileError(f"{what} {path}: nested too deeply to read") from None
