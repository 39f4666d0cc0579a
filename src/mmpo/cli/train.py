"""``mmpo train CONFIG.yaml [--field value ...]``: preference training from a YAML config.

``--resume_from_checkpoint true`` resumes from the newest complete checkpoint in ``output_dir``
(newer, half-written ones are skipped and named); ``--resume_from_checkpoint PATH`` from that one.
"""

from __future__ import annotations

import logging


def main(argv: list[str]) -> int:
    from ..training.config import Methods, parse_config
    from ..training.run import run_training

    if not argv or argv[0] in ("-h", "--help"):
        from transformers import HfArgumentParser

        from ..training.config import CONFIG_CLASSES

        print(__doc__)
        HfArgumentParser(CONFIG_CLASSES).print_help()
        return 0
    path, overrides = (argv[0], argv[1:]) if not argv[0].startswith("--") else (None, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_args, data_args, args, aspo, dama, adavip = parse_config(path, overrides)
    run_training(model_args, data_args, args, Methods(aspo, dama, adavip),
                 resume_from_checkpoint=args.resume_from_checkpoint)
    return 0
