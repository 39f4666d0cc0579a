"""The ``mmpo`` command: ``mmpo SUBCOMMAND [options]``; each subcommand is one module here.

Errors: a ``ValueError``, ``OSError`` (``FileNotFoundError``, ...) or ``RuntimeError`` raised by a
subcommand — bad input, a missing file, a failed service — is printed as one line,
``mmpo SUBCOMMAND: error: <message>``, and the exit status is 2; Ctrl-C exits with 130. Any other
exception is a bug and keeps its traceback. ``--debug`` anywhere on the command line (or
``MMPO_DEBUG=1``) shows the full traceback of every error.
"""

from __future__ import annotations

import importlib
import os
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
NOT_REPORTED = (NotImplementedError, RecursionError)
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
    except REPORTED as error:
        if debug or isinstance(error, NOT_REPORTED):
            raise
        print(f"mmpo {name}: error: {one_line(error)}", file=sys.stderr)
        print(DEBUG_HINT, file=sys.stderr)
        return ERROR_STATUS


def one_line(error: BaseException) -> str:
    """``str(error)`` on one line (its lines joined with "; "), or the type's name when it is empty."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
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
