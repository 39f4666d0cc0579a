"""The ``mmpo`` command: ``mmpo SUBCOMMAND [options]``; each subcommand is one module here.

Errors: a ``ValueError``, ``OSError`` (``FileNotFoundError``, ...) or ``RuntimeError`` raised by a
subcommand — bad input, a missing file, a failed service — is printed as one line,
``mmpo SUBCOMMAND: error: <message>``, and the exit status is 2; Ctrl-C exits with 130. So are the
errors of damaged or unreadable files that libraries raise outside those types (:func:`file_errors`:
safetensors, pickle, YAML, a truncated file's ``EOFError``), input nested too deeply to read
(``RecursionError``) and running out of memory, each with its likely cause (:func:`likely_cause`).
mmpo converts these where it reads a file, naming the file; this is the net under that. Any other
exception is a bug and keeps its traceback. ``--debug`` anywhere on the command line (or
``MMPO_DEBUG=1``) shows the full traceback of every error.
"""

from __future__ import annotations

import errno
import importlib
import os
import pickle
import sys

#: subcommand -> (module under mmpo.cli, one-line help)
SUBCOMMANDS = {
    "demo": ("demo", "run a method end to end on the built-in synthetic world (the main job)"),
    "train": ("train", "train a VLM on preference records from a YAML config (+ --field value overrides)"),
    "base-model": ("base_model", "build the synthetic world's base model (tokenizer + tiny LLaVA + SFT)"),
    "evaluate": ("evaluate", "evaluate a checkpoint on hallucination benchmarks from local files"),
    "score-sentences": ("score_sentences", "CLIP scores per sentence (ASPO) and DAMA's data hardness alpha_D"),
    "vision-rejected": ("vision_rejected", "build AdaViP vision-rejected images: tag, detect, segment, inpaint, select"),
    "noisy-pairs": ("noisy_pairs", "build SeVa preference pairs: answers on clean vs diffusion-noised images"),
    "self-pairs": ("self_pairs", "RLAIF-V-style pairs: sample the policy, judge every claim, pair best vs worst"),
    "iterate": ("iterate", "on-policy rounds: sample the current policy, judge, pair, train; round after round"),
    "report": ("report", "one self-contained HTML page of runs: metrics, curves, answers with hallucinations marked"),
}
#: Set to 1 to see the traceback of every error (as ``--debug`` does).
DEBUG_ENV = "MMPO_DEBUG"
#: Exit status of a reported error (as argparse's) and of Ctrl-C (128 + SIGINT).
ERROR_STATUS, INTERRUPTED_STATUS = 2, 130
#: What mmpo raises for bad input, missing files and failed services (``RecordValidationError`` is a
#: ``ValueError``): reported in one line. ``NOT_REPORTED`` are the subclasses that mean a bug.
REPORTED = (ValueError, OSError, RuntimeError)
NOT_REPORTED = (NotImplementedError,)
DEBUG_HINT = f"(run with --debug or {DEBUG_ENV}=1 for the traceback)"


def usage() -> str:
    lines = ["usage: mmpo SUBCOMMAND [options]   (mmpo SUBCOMMAND --help for its options)", "", "subcommands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", f"--debug (or {DEBUG_ENV}=1) shows the full traceback of an error"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _pop_debug(argv)
    debug = debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mmpo: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"mmpo.cli.{SUBCOMMANDS[name][0]}")
        return module.main(rest)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mmpo {name}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    except (*REPORTED, *file_errors(), EOFError, MemoryError) as error:
        if debug or isinstance(error, NOT_REPORTED):
            raise
        print(f"mmpo {name}: error: {one_line(error)}", file=sys.stderr)
        print(DEBUG_HINT, file=sys.stderr)
        return ERROR_STATUS


def file_errors() -> tuple[type[BaseException], ...]:
    """What libraries raise for a damaged or unreadable file outside ``REPORTED``'s types: safetensors'
    ``SafetensorError``, pickle's ``UnpicklingError`` (torch's ``weights_only`` refusals among them) and
    ``yaml.YAMLError``. Imported only when an error is being caught, and only those installed."""
    found: list[type[BaseException]] = []
    found.append(pickle.UnpicklingError)
    for module, name in (("safetensors", "SafetensorError"), ("yaml", "YAMLError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


#: (fragment of a lower-cased message, likely cause) for errors whose message alone does not say it.
_CAUSES = (
    ("no space left", "the disk is full: free space, or write to another directory"),
    ("disk quota", "the disk quota is used up: free space, or write to another directory"),
    ("incomplete metadata", "a .safetensors file is truncated or damaged: copy or save it again"),
    ("header too large", "a .safetensors file is truncated or damaged: copy or save it again"),
    ("invalid header", "a .safetensors file is truncated or damaged: copy or save it again"),
)


def likely_cause(error: BaseException) -> str | None:
    """What most likely caused ``error``, when its own message does not say, or None."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return _CAUSES[0][1] if error.errno == errno.ENOSPC else _CAUSES[1][1]
    if isinstance(error, RecursionError):
        return "the input is nested too deeply to read (a JSON or YAML value of thousands of levels?)"
    if isinstance(error, MemoryError):
        return "out of memory: a very large input (a huge text or image?), or too large a batch"
    if isinstance(error, EOFError):
        return "a file ended early: it is truncated (an interrupted copy or save?)"
    if isinstance(error, pickle.UnpicklingError):
        return "a pickled file (.pt, .pth, .bin) is damaged or holds objects mmpo does not load"
    lowered = str(error).lower()
    return next((cause for fragment, cause in _CAUSES if fragment in lowered), None)


def one_line(error: BaseException) -> str:
    """``str(error)`` on one line (its lines joined with "; "), or the type's name when it is empty;
    errors that are not mmpo's own bad-input types are prefixed with their type and followed by their
    likely cause (:func:`likely_cause`), when the message does not already hold it."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if not isinstance(error, REPORTED) or isinstance(error, RecursionError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    cause = likely_cause(error)
    if cause and cause.lower() not in text.lower():
        text = f"{text}. Likely cause: {cause}" if text else cause
    return text or type(error).__name__


def _pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without its ``--debug`` flags, and whether there was one.

    ``mmpo train CONFIG ... --debug VALUE`` is left alone: there ``--debug`` takes a value and is
    ``transformers.TrainingArguments.debug`` (``mmpo --debug train ...`` still means mmpo's).
    """
    kept, debug = [], False
    for i, arg in enumerate(argv):
        if arg != "--debug":
            kept.append(arg)
        elif argv[:1] == ["train"] and i >= 2 and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            kept.append(arg)
        else:
            debug = True
    return kept, debug


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
