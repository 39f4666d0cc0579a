"""``mmpo self-pairs``: RLAIF-V-style preference pairs from the policy's own samples.

For each item the model samples ``--samples`` responses; each is split into sentences (claims), every
claim is judged, a response scores minus its judged-wrong claims, and responses with different
scores are paired (best vs worst, or ``--pairs all``). See ``mmpo.data.construct.self_pairs``.

Judges (``--judge``):
  scene     the synthetic world's annotations (exact; ``--flip-prob`` flips that fraction of verdicts);
            needs items with a scene, i.e. ``--synthetic N``
  model     a local VLM checkpoint (``--judge-model PATH``) asked each claim as a yes/no question;
            the verdict is p(yes) >= 0.5, as RLAIF-V's labeler reads it
  endpoint  an OpenAI-compatible chat server (vLLM, SGLang, ...): ``--judge-url``, ``--judge-model-name``,
            the API key from $MMPO_JUDGE_API_KEY (a URL holding a key is refused); images are sent inline

A claim the judge cannot tell (a reply that says neither yes nor no) is unknown: it counts neither
wrong nor right, and the run stops when more than ``--judge-max-unknown`` of the claims are unknown.

The expensive part (sampling and judging) is journaled per item in ``OUTPUT.samples.jsonl`` (next to
``--output``): run the same command again to resume a killed run. The records are rebuilt from the
journal each time, so changing only the pairing options (``--pairs``, ``--score``, ``--tie-break``,
``--max-length-ratio``) re-pairs without sampling again.

Input: ``--input items.jsonl`` (``{"id", "image", "prompt"}`` per line, as ``mmpo noisy-pairs``
reads), or ``--synthetic N`` scenes of the built-in world (held-out split: no priors).

examples:
  mmpo self-pairs --model runs/demo/model --synthetic 600 --judge scene --output runs/self/pairs.jsonl
  mmpo self-pairs --model ckpt/ --input items.jsonl --judge model --judge-model judge-ckpt/ --output pairs.jsonl
  MMPO_JUDGE_API_KEY=... mmpo self-pairs --model ckpt/ --input items.jsonl --judge endpoint \\
      --judge-url http://localhost:8000/v1 --judge-model-name Qwen2.5-VL-72B-Instruct --output pairs.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    from ..chat_http import MAX_UNREADABLE, MIN_REPLIES_CHECKED
    from ..hub import ALLOW_DOWNLOAD_HELP

    p = argparse.ArgumentParser(prog="mmpo self-pairs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the policy: a local checkpoint directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSONL of items: id, image, prompt (or instruction)")
    source.add_argument("--synthetic", type=int, metavar="N", help="use N held-out scenes of the synthetic world")
    p.add_argument("--output", required=True, help="JSONL file of preference records (its journal: OUTPUT.samples.jsonl)")
    p.add_argument("--judge", choices=("scene", "model", "endpoint"), default="scene", help="the claim judge")
    p.add_argument("--flip-prob", type=float, default=0.0, help="scene judge: fraction of verdicts flipped")
    p.add_argument("--judge-model", help="model judge: local checkpoint directory")
    p.add_argument("--question", help="model/endpoint judge: question template with {claim} (default: a generic "
                                      "yes/no question; with --synthetic and --judge model: the world's POPE question)")
    p.add_argument("--judge-url", help="endpoint judge: base URL (default $MMPO_JUDGE_URL)")
    p.add_argument("--judge-model-name", help="endpoint judge: the served model's name (default $MMPO_JUDGE_MODEL)")
    p.add_argument("--judge-workers", type=int, default=8, help="endpoint judge: concurrent requests")
    p.add_argument("--judge-timeout", type=float, default=60.0,
                   help="endpoint judge: seconds per request in all, the whole reply read (default 60)")
    p.add_argument("--judge-max-unknown", type=float, default=MAX_UNREADABLE, metavar="FRACTION",
                   help="stop when more than this fraction of the claims get an unknown verdict (a judge reply "
                        f"that says neither yes nor no), checked from {MIN_REPLIES_CHECKED} claims on; 1 never stops "
                        f"(default {MAX_UNREADABLE})")
    p.add_argument("--samples", type=int, default=6, help="responses sampled per item (>= 2)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--max-new-tokens", type=int, default=256, help="response length limit")
    p.add_argument("--pairs", choices=("best_worst", "all"), default="best_worst",
                   help="one pair per item (best vs worst) or every pair of different scores")
    p.add_argument("--score", choices=("wrong_count", "wrong_rate"), default="wrong_count",
                   help="minus the number (RLAIF-V) or the fraction of judged-wrong claims")
    p.add_argument("--tie-break", choices=("more_correct", "fewer_claims", "first"), default="more_correct",
                   help="order of responses with the same score")
    p.add_argument("--max-length-ratio", type=float, help="drop pairs whose longer response has more than this "
                                                          "many times the words of the shorter")
    p.add_argument("--max-pairs-per-item", type=int, help="with --pairs all: keep the widest score gaps")
    p.add_argument("--batch-size", type=int, default=8, help="items per generate call (x --samples rows)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and the synthetic world's)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype ('auto': as saved)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--allow-download", action="store_true", help=ALLOW_DOWNLOAD_HELP)
    return p


def synthetic_items(n: int, seed: int, image_dir: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``n`` held-out scenes of the synthetic world (no co-occurrence or colour priors) rendered to
    ``image_dir``, with the describe prompt and the scene in meta (what the scene judge reads)."""
    from ..toyworld.rounds import scene_items
    from ..toyworld.scenes import WorldConfig, sample_scenes

    return scene_items(sample_scenes(WorldConfig(seed=seed).held_out(seed=seed + 1), n, prefix="self"), image_dir)


def make_judge(ns: argparse.Namespace, parser: argparse.ArgumentParser):
    """The judge the options name; a missing option is a usage error."""
    if ns.judge == "scene":
        if ns.input:
            parser.error("--judge scene needs the synthetic world's annotations (--synthetic N); use --judge model "
                         "or --judge endpoint for your own items")
        from ..toyworld.judge import SceneJudge

        return SceneJudge(flip_prob=ns.flip_prob, seed=ns.seed)
    if ns.judge == "model":
        if not ns.judge_model:
            parser.error("--judge model needs --judge-model PATH (a local checkpoint)")
        from ..data.construct.claim_judges import DEFAULT_QUESTION, VLMClaimJudge

        question: Any = ns.question or DEFAULT_QUESTION
        if not ns.question and ns.synthetic is not None:
            from ..toyworld.judge import claim_question

            question = claim_question
        return VLMClaimJudge.from_pretrained(ns.judge_model, device=ns.device, dtype=ns.dtype, question=question)
    from ..data.construct.claim_judges import DEFAULT_QUESTION, endpoint_judge_from_env

    return endpoint_judge_from_env(url=ns.judge_url, model=ns.judge_model_name, question=ns.question or DEFAULT_QUESTION,
                                   max_workers=ns.judge_workers, timeout=ns.judge_timeout)


def main(argv: list[str]) -> int:
    from .. import progress
    from ..data.construct.self_pairs import PairingRule, SamplingSettings, build_self_pairs
    from ..hub import allowing_downloads
    from ..io import read_items
    from ..models import load_policy
    from ..training.config import ModelArguments

    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if ns.synthetic is not None and ns.synthetic < 1:
        parser.error("--synthetic needs N >= 1")
    if not 0 <= ns.judge_max_unknown <= 1:
        parser.error(f"--judge-max-unknown must be a fraction in [0, 1], got {ns.judge_max_unknown}")
    if not ns.judge_timeout > 0:
        parser.error(f"--judge-timeout must be > 0 seconds, got {ns.judge_timeout}")
    try:
        sampling = SamplingSettings(n=ns.samples, temperature=ns.temperature, top_p=ns.top_p,
                                    max_new_tokens=ns.max_new_tokens, seed=ns.seed)
        rule = PairingRule(pairs=ns.pairs, score=ns.score, tie_break=ns.tie_break,
                           max_length_ratio=ns.max_length_ratio, max_pairs_per_item=ns.max_pairs_per_item)
    except ValueError as error:
        parser.error(str(error))
    with allowing_downloads(ns.allow_download):  # a mistyped --model fails before any work
        judge = make_judge(ns, parser)
        model, processor = load_policy(ModelArguments(model_name_or_path=ns.model, dtype=ns.dtype),
                                       device=ns.device, what="model")
    output = Path(ns.output)
    if ns.input:
        try:
            items: list = read_items(ns.input)
        except (OSError, ValueError) as error:
            parser.error(str(error))
    else:
        items = synthetic_items(ns.synthetic, ns.seed, output.parent / "images")
    with progress.bars(not ns.no_progress):
        sampled, paired = build_self_pairs(model, processor, items, judge, output, sampling=sampling, rule=rule,
                                           batch_size=ns.batch_size, meta={"model": str(ns.model)},
                                           max_unknown=ns.judge_max_unknown, max_unknown_setting="--judge-max-unknown")
    print(sampled.summary())
    print(paired.summary())
    return 0
