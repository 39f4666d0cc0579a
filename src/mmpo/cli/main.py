"""The ``mmpo`` command: ``mmpo SUBCOMMAND [options]``; each subcommand is one module here."""

from __future__ import annotations

import importlib
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
}


def usage() -> str:
    lines = ["usage: mmpo SUBCOMMAND [options]   (mmpo SUBCOMMAND --help for its options)", "", "subcommands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mmpo: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"mmpo.cli.{SUBCOMMANDS[name][0]}")
    return module.main(rest)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
