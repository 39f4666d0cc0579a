"""``mmpo iterate CONFIG.yaml [--rounds N] [--field value ...]``: on-policy rounds.

Each round samples ``samples`` responses per prompt from the *current* policy (a fresh slice of the
prompt pool), judges every claim, pairs the best against the worst response, adds what the enabled
methods need (ASPO's sentence scores, DAMA's alpha_D, AdaViP's vision-rejected images) and trains
from the current policy, as RLAIF-V does for its four rounds. See ``mmpo.training.rounds``.

CONFIG is a training config (the one ``mmpo train`` reads; ``max_steps`` is per round, ``output_dir``
the run directory, ``train_file`` is not used) plus the rounds' own keys (``mmpo iterate --help``
lists them): ``rounds``, ``items_file`` (default: the synthetic world's scenes), ``items_per_round``,
``samples``, ``judge`` (scene, model or endpoint), ``round_reference`` (previous or initial), ...

Each round writes ``OUTPUT_DIR/round-K/`` (pairs.jsonl, train.jsonl, model/, round.json). Run the
same command again after a kill: finished rounds are kept, sampling resumes per item and training
from the round's last complete checkpoint (with ``save_strategy: steps``). Under ``accelerate
launch`` every process samples and judges its share of each round's prompts, and all train.

examples:
  mmpo base-model --output-dir runs/base-model     # the model configs/toyworld/*.yaml start from
  mmpo iterate configs/toyworld/dpo.yaml --rounds 3 --output_dir runs/rounds --max_steps 70 --save_strategy steps --save_steps 10
  mmpo iterate my_llava.yaml --rounds 4 --items_file prompts.jsonl --judge endpoint \\
      --judge_url http://localhost:8000/v1 --judge_model_name Qwen2.5-VL-72B-Instruct
  accelerate launch --num_processes 4 -m mmpo.cli.main iterate my_llava.yaml --rounds 4 --items_file prompts.jsonl --judge model --judge_model judge-ckpt/
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    from .. import progress
    from ..training.config import parse_command_line
    from ..training.rounds import IterateArguments

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = parse_command_line(argv, __doc__, extra=(IterateArguments,))
    if config is None:
        return 0
    with progress.bars(not config.training.disable_tqdm):
        return iterate(config)


def iterate(config: Any) -> int:
    """``mmpo iterate`` on a parsed :class:`~mmpo.training.config.RunConfig`."""
    from accelerate import PartialState

    from ..training.rounds import method_enricher, run_rounds

    model_args, data_args, args, methods = config.model, config.data, config.training, config.methods
    (it,) = config.extra
    run_dir = Path(args.output_dir)

    synthetic = it.items_file is None
    if synthetic:
        from ..toyworld.rounds import world_pool

        per_round = it.items_per_round or 0
        items: list = world_pool(it.world_scenes or (per_round * it.rounds if per_round else 600), args.seed,
                                 run_dir / "pool")
    else:
        from ..io import read_items

        items = read_items(it.items_file)
    plan = it.plan(len(items), args.seed)
    judge = make_judge(it, args, synthetic)
    scorer = clip_scorer(it, methods, synthetic)
    enrich = method_enricher(methods, scorer=scorer, say=say,
                             vision_pipeline=vision_pipeline(it, scorer, synthetic) if methods.adavip.enabled else None)
    evaluate = None
    if synthetic and it.eval_scenes:
        from ..toyworld.rounds import world_evaluator
        from ..toyworld.scenes import WorldConfig

        evaluate = world_evaluator(WorldConfig(seed=args.seed), it.eval_scenes, seed=args.seed)
    if data_args.train_file:
        logging.getLogger(__name__).info("train_file (%s) is not used: each round trains on its own pairs",
                                         data_args.train_file)
    results = run_rounds(model_args, args, methods, plan, items, judge, enrich=enrich, evaluate=evaluate,
                         data_args=data_args, say=say)
    state = PartialState()
    if state.is_main_process:
        say(f"\n{len(results) - (1 if results and results[0].round == 0 else 0)} rounds in {run_dir}; the last model: "
            f"{results[-1].model}")
    # every process leaves together: gloo aborts a process that exits with its group alive ("terminate
    # called without an active exception", about 1 run in 5 on 2 CPU processes)
    state.wait_for_everyone()
    state.destroy_process_group()
    return 0


def make_judge(it: Any, args: Any, synthetic: bool):
    """The claim judge ``it.judge`` names."""
    if it.judge == "scene":
        from ..toyworld.judge import SceneJudge

        return SceneJudge(flip_prob=it.judge_flip, seed=args.seed)
    from ..data.construct.claim_judges import DEFAULT_QUESTION, VLMClaimJudge, endpoint_judge_from_env

    if it.judge == "model":
        question: Any = it.judge_question or DEFAULT_QUESTION
        if not it.judge_question and synthetic:
            from ..toyworld.judge import claim_question

            question = claim_question
        return VLMClaimJudge.from_pretrained(it.judge_model, question=question)
    return endpoint_judge_from_env(url=it.judge_url, model=it.judge_model_name,
                                   question=it.judge_question or DEFAULT_QUESTION, max_workers=it.judge_workers,
                                   timeout=it.judge_timeout)


def clip_scorer(it: Any, methods: Any, synthetic: bool):
    """The CLIP scorer the methods need (``None`` when none does)."""
    if not (methods.aspo.enabled or methods.dama.data or methods.adavip.enabled):
        return None
    from ..io import default_cache_dir
    from ..scoring.clip import CLIPScorer

    cache_dir = it.cache_dir or str(default_cache_dir())
    clip = it.clip_model or ("toyworld" if synthetic else None)
    if clip is None:
        raise ValueError("the methods on (ASPO, DAMA's data-aware beta or AdaViP) score with CLIP: set clip_model "
                         "to a local CLIP checkpoint")
    if clip == "toyworld":
        from ..toyworld.clip import ensure_tiny_clip

        clip, _ = ensure_tiny_clip(cache_dir)
    return CLIPScorer(clip, cache_dir=cache_dir)


def vision_pipeline(it: Any, scorer: Any, synthetic: bool):
    """``records -> VisionRejectedPipeline`` for AdaViP: the world's annotation backends with the
    synthetic pool, else the detector and segmenter checkpoints the options name."""
    if it.vision_detector == "annotations" and it.vision_segmenter == "annotations":
        if not synthetic:
            raise ValueError("vision_detector / vision_segmenter: annotations need the synthetic world's scenes; "
                             "with items_file use owlv2 or grounding-dino, and box or sam")
        from ..toyworld.rounds import world_vision_pipeline

        return world_vision_pipeline(scorer)
    if "annotations" in (it.vision_detector, it.vision_segmenter):
        raise ValueError("vision_detector and vision_segmenter: use annotations for both (the synthetic world) "
                         "or for neither")
    from ..methods.adavip.inpainting import TeleaInpainter
    from ..methods.adavip.vision_hf_models import SamSegmenter, load_detector
    from ..methods.adavip.vision_rejected import VisionRejectedPipeline
    from ..methods.adavip.vision_steps import BoxSegmenter, NounTagger

    detector = load_detector(it.vision_detector, it.vision_detector_path)
    segmenter = SamSegmenter(it.vision_segmenter_path) if it.vision_segmenter == "sam" else BoxSegmenter()
    tagger = NounTagger(vocabulary(it.vision_vocabulary))
    pipeline = VisionRejectedPipeline(tagger=tagger, detector=detector, segmenter=segmenter,
                                      inpainter=TeleaInpainter(), scorer=scorer)
    return lambda records: pipeline


def vocabulary(value: str) -> list[str]:
    """The object names AdaViP may remove: the world's shapes, or a file's lines."""
    if value == "toyworld":
        from ..toyworld.scenes import SHAPES

        return list(SHAPES)
    from ..methods.adavip.vision_steps import read_vocabulary

    return read_vocabulary(value)


def say(message: str) -> None:
    print(message, flush=True)
