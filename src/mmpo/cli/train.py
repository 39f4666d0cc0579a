"""``mmpo train CONFIG.yaml [--field value ...]``: preference training from a YAML config.

``--resume_from_checkpoint true`` resumes from the newest complete checkpoint in ``output_dir``
(newer, half-written ones are skipped and named); ``--resume_from_checkpoint PATH`` from that one.

Writes the model, its processor, ``log_history.json`` and a model card, ``README.md``
(:mod:`mmpo.training.model_card`), to ``output_dir``. One run at a time per ``output_dir``: a second
is refused, naming the first's pid (the lock file ``_mmpo_train.lock`` in ``output_dir``); an
``output_dir`` that is the model's own directory is refused before anything is loaded.
"""

from __future__ import annotations

import logging


def main(argv: list[str]) -> int:
    from ..training.config import parse_command_line
    from ..training.model_card import command_line
    from ..training.run import run_training

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_command_line(argv, __doc__)
    if config is None:
        return 0
    run_training(config.model, config.data, config.training, config.methods,
                 resume_from_checkpoint=config.training.resume_from_checkpoint,
                 command=command_line(["mmpo", "train", *argv]))
    return 0
