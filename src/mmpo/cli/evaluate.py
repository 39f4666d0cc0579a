"""``mmpo evaluate``: evaluate a local checkpoint on hallucination benchmarks read from local files.

Each ``--benchmark`` needs its files in the published format (one module per benchmark in
``mmpo.evaluation``: chair, pope, amber, mmhal):

  chair, object_halbench
             --coco-annotations DIR (instances_*.json + captions_*.json, as CHAIR reads them) or
             --coco-instances FILE... [--coco-captions FILE...]; --coco-images val2014/
             [--chair-questions questions.jsonl]   (both benchmarks share one generation)
  pope       --pope-dir DIR (holds <dataset>_pope_<split>.json) or --pope-file SPLIT=PATH ...,
             --pope-images val2014/
  amber      --amber-queries query_all.json --amber-annotations annotations.json --amber-images image/
             (relation.json, safe_words.txt, metrics.txt are read from beside annotations.json, or
             --amber-relation / --amber-safe-words / --amber-metrics)
  mmhal      --mmhal-template response_template.json --mmhal-images images/, and a judge:
             --judge-url / --judge-config FILE / $MMPO_JUDGE_URL (key: config or $MMPO_JUDGE_API_KEY)
  synthetic  nothing: the built-in synthetic world's held-out scenes

Scoring answers produced elsewhere (vLLM, SGLang, lmms-eval, ...): give one --benchmark, its
ground-truth files and --predictions; no model and no images are loaded.

  chair / object_halbench  --predictions FILE: {"image_id", "caption"|"text"} JSONL, or CHAIR's
                           {"imgToEval": ...} JSON
  pope                     --predictions random=FILE --predictions popular=FILE ... (AoiDragon's
                           {"question", "answer"} lines or LLaVA's {"question_id", "text"} lines);
                           one LLaVA answers file without SPLIT= serves every split (add
                           --pope-questions llava_pope_test.jsonl to pair as LLaVA does)
  amber                    --predictions FILE: AMBER's [{"id", "response"}] JSON
  mmhal                    --predictions FILE: the judge's review file (the reference's
                           [{"choices": [{"message": {"content"}}]}], or a JSON list of reply strings),
                           or the response template with model_answer filled in (then judged)

Text is read by each benchmark's reference rules (--parsing reference, the default: the numbers of
the published scorers); --parsing lenient is mmpo's more tolerant reading, a documented deviation.
The run directory gets results.json, results.md, predictions/<benchmark>.json (every answer with the
spans the scorer matched and their verdicts) and report.html (`mmpo report`: metrics and the answers
with each hallucinated object marked; --no-report skips it).
``--compare RUN_DIR ...`` prints (and, with --output-dir, writes comparison.md) a side-by-side
table of existing runs; given with --benchmark, the new run is the first column.

examples:
  mmpo evaluate --model ckpt/ --benchmark pope --pope-dir pope/coco --pope-images val2014 --output-dir runs/base
  mmpo evaluate --benchmark pope --pope-dir pope/coco --predictions random=answers_random.jsonl \
      --predictions popular=answers_popular.jsonl --predictions adversarial=answers_adv.jsonl --output-dir runs/vllm
  mmpo evaluate --compare runs/base runs/dpo --output-dir runs
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

BENCHMARKS = ("chair", "object_halbench", "pope", "amber", "mmhal", "synthetic")
#: benchmarks answered by one generation pass (Object HalBench scores CHAIR's captions its own way)
CAPTION_BENCHMARKS = ("chair", "object_halbench")
POPE_SPLITS = ("random", "popular", "adversarial")
#: result entries too bulky for results.json; they go to predictions/<benchmark>.json
BULKY_KEYS = ("predictions", "per_response", "reviews", "samples", "per_scene", "per_question")


def _prediction(text: str) -> tuple[str | None, str]:
    """``--predictions [SPLIT=]PATH``: the split is read only when the prefix is a POPE split."""
    split, sep, path = text.partition("=")
    if sep and split in POPE_SPLITS:
        return split, path
    return None, text


def _split_file(text: str) -> tuple[str, str]:
    split, sep, path = text.partition("=")
    if not sep or split not in POPE_SPLITS:
        raise argparse.ArgumentTypeError(f"expected SPLIT=PATH with SPLIT in {POPE_SPLITS}; got {text!r}")
    return split, path


def build_parser() -> argparse.ArgumentParser:
    from ..evaluation.chair import DEFAULT_PROMPT
    from ..evaluation.common import PARSINGS
    from ..hub import ALLOW_DOWNLOAD_HELP

    p = argparse.ArgumentParser(prog="mmpo evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local checkpoint directory (AutoModelForImageTextToText + AutoProcessor)")
    p.add_argument("--benchmark", action="append", choices=BENCHMARKS, default=[],
                   help="benchmark to run (repeatable)")
    p.add_argument("--output-dir", help="run directory to write (required with --benchmark)")
    p.add_argument("--run-name", help="name of the run in tables (default: the output directory's name)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per generate call")
    p.add_argument("--max-new-tokens", type=int, default=256, help="length limit of descriptions / open answers")
    p.add_argument("--yes-no-max-new-tokens", type=int, default=8, help="length limit of yes/no answers")
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each benchmark (smoke runs)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype ('auto': as saved)")
    p.add_argument("--progress", action="store_true", help="show generation progress bars")
    p.add_argument("--allow-download", action="store_true", help=ALLOW_DOWNLOAD_HELP)
    p.add_argument("--parsing", choices=PARSINGS, default="reference",
                   help="how model text is read: 'reference' (each benchmark's published scorer, exactly; default) "
                        "or 'lenient' (mmpo's more tolerant reading; a deviation from published numbers)")
    p.add_argument("--predictions", action="append", type=_prediction, default=[], metavar="[SPLIT=]FILE",
                   help="score this answers file instead of generating (one --benchmark; no --model needed); "
                        "POPE takes SPLIT=FILE per split")

    g = p.add_argument_group("CHAIR / Object HalBench")
    g.add_argument("--coco-annotations", help="COCO annotations folder (instances_*.json, captions_*.json)")
    g.add_argument("--coco-instances", nargs="+", help="COCO instances_*.json file(s)")
    g.add_argument("--coco-captions", nargs="+", default=[], help="COCO captions_*.json file(s) (optional)")
    g.add_argument("--coco-images", help="folder of the COCO images")
    g.add_argument("--chair-questions", help="Object HalBench-style JSONL {image_id, question, image?} (optional)")
    g.add_argument("--chair-prompt", default=DEFAULT_PROMPT,
                   help="prompt for every image when no --chair-questions is given")

    g = p.add_argument_group("POPE")
    g.add_argument("--pope-dir", help="folder with <dataset>_pope_{random,popular,adversarial}.json")
    g.add_argument("--pope-file", action="append", type=_split_file, default=[], metavar="SPLIT=PATH",
                   help="one split's question file (repeatable; overrides --pope-dir for that split)")
    g.add_argument("--pope-images", help="folder of the images the questions name")
    g.add_argument("--pope-questions", help="with --predictions: LLaVA's question file ({question_id, ..., "
                                            "category} lines); answers are then paired with each label file as "
                                            "LLaVA's eval_pope.py pairs them (by category, in order)")
    g.add_argument("--pope-prompt-suffix", default="", help="appended to every question")

    g = p.add_argument_group("AMBER")
    g.add_argument("--amber-queries", help="query_all.json (or any query_*.json)")
    g.add_argument("--amber-annotations", help="annotations.json")
    g.add_argument("--amber-images", help="folder of the AMBER images")
    g.add_argument("--amber-relation", help="relation.json word associations (default: beside annotations.json)")
    g.add_argument("--amber-safe-words", help="safe_words.txt (optional)")
    g.add_argument("--amber-metrics", help="metrics.txt, the counters' initial values (optional)")
    g.add_argument("--amber-yes-no-suffix", default="", help="appended to discriminative queries")
    g.add_argument("--amber-spacy-model", metavar="PATH",
                   help="spaCy pipeline with word vectors (AMBER uses en_core_web_lg) for AMBER's similarity "
                        "fallback; without it only exact word matches count (needs `pip install spacy`)")

    g = p.add_argument_group("MMHal-Bench")
    g.add_argument("--mmhal-template", help="response_template.json")
    g.add_argument("--mmhal-images", help="folder of the images (file names of image_src)")
    g.add_argument("--judge-url", help="OpenAI-compatible endpoint (default: judge config, then $MMPO_JUDGE_URL)")
    g.add_argument("--judge-model", help="judge model name (default: judge config, $MMPO_JUDGE_MODEL, gpt-4)")
    g.add_argument("--judge-config", help="YAML/JSON file: url, api_key, model, timeout (seconds per request, in all), "
                                          "max_retries, max_reply_bytes, ... (a URL holding a key is refused)")
    g.add_argument("--judge-max-unparsed", type=float, default=0.2, metavar="FRACTION",
                   help="stop when more than this fraction of the judge's replies hold no single 0-6 rating "
                        "(checked from 20 replies on; each such reply scores 0, as in the reference); 1 never stops")

    g = p.add_argument_group("synthetic world")
    g.add_argument("--synthetic-scenes", type=int, default=200, help="held-out scenes to evaluate")
    g.add_argument("--synthetic-seed", type=int, default=0, help="world seed")

    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", default=[],
                   help="print a side-by-side table of these runs' results")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write OUTPUT_DIR/report.html (with --compare it shows the compared runs too)")
    return p


#: options each benchmark needs when the model generates (the images) and when scoring --predictions
_REQUIRED = {
    "chair": ("coco_images",),
    "object_halbench": ("coco_images",),
    "pope": ("pope_images",),
    "amber": ("amber_queries", "amber_annotations", "amber_images"),
    "mmhal": ("mmhal_template", "mmhal_images"),
    "synthetic": (),
}
_REQUIRED_FOR_PREDICTIONS = {
    "chair": (), "object_halbench": (), "pope": (), "amber": ("amber_annotations",), "mmhal": (), "synthetic": (),
}


def _check(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if not ns.benchmark and not ns.compare:
        parser.error("nothing to do: give --benchmark (with --model and --output-dir) or --compare")
    if ns.predictions:
        benches = list(dict.fromkeys(ns.benchmark))
        if len(benches) != 1:
            parser.error(f"--predictions scores one benchmark's answers; give exactly one --benchmark (got {benches})")
        if benches == ["synthetic"]:
            parser.error("--predictions does not apply to the synthetic benchmark (its scenes are rendered here)")
        if ns.model:
            parser.error("give --model or --predictions, not both: --predictions scores existing answers")
        if not ns.output_dir:
            parser.error("--predictions needs --output-dir")
        splits = [split for split, _ in ns.predictions]
        if benches != ["pope"] and any(splits):
            parser.error(f"SPLIT=FILE predictions are for POPE; --benchmark {benches[0]} takes one FILE")
        if benches == ["pope"]:
            if len(splits) != len(set(splits)):
                parser.error("--predictions: a POPE split is given twice")
            if None in splits and len(splits) > 1:
                parser.error("--predictions: give either one answers file for every split or SPLIT=FILE per split")
        elif len(ns.predictions) != 1:
            parser.error(f"--benchmark {benches[0]} takes one --predictions FILE")
        required = _REQUIRED_FOR_PREDICTIONS
    else:
        if ns.benchmark and not (ns.model and ns.output_dir):
            parser.error("--benchmark needs --model and --output-dir (or --predictions FILE to score existing answers)")
        required = _REQUIRED
    for bench in ns.benchmark:
        if missing := [f"--{k.replace('_', '-')}" for k in required[bench] if not getattr(ns, k)]:
            parser.error(f"--benchmark {bench} needs {' '.join(missing)}")
        if bench in CAPTION_BENCHMARKS and not (ns.coco_annotations or ns.coco_instances):
            parser.error(f"--benchmark {bench} needs --coco-annotations DIR or --coco-instances FILE...")
    if "pope" in ns.benchmark and not (ns.pope_dir or ns.pope_file):
        parser.error("--benchmark pope needs --pope-dir or --pope-file SPLIT=PATH")
    if not 0 <= ns.judge_max_unparsed <= 1:
        parser.error(f"--judge-max-unparsed must be a fraction in [0, 1], got {ns.judge_max_unparsed}")


def _judge(ns: argparse.Namespace):
    from ..evaluation.judge import judge_from_config

    config = None
    if ns.judge_config:
        from ..yamlfile import read_yaml

        config = read_yaml(ns.judge_config, "judge config") or {}
    return judge_from_config(config, url=ns.judge_url, model=ns.judge_model)


def _coco_ground_truth(ns: argparse.Namespace):
    """The COCO files of the run, read once (CHAIR, Object HalBench and their images share them)."""
    from ..evaluation import coco

    if getattr(ns, "_coco_truth", None) is None:
        ns._coco_truth = (coco.load_coco_ground_truth(ns.coco_annotations) if ns.coco_annotations
                          else coco.load_coco_ground_truth(ns.coco_instances, ns.coco_captions))
    return ns._coco_truth


def _pope_labels(ns: argparse.Namespace) -> dict[str, Path]:
    from ..evaluation import pope

    files = dict(pope.find_pope_files(ns.pope_dir)) if ns.pope_dir else {}
    files.update({split: Path(path) for split, path in ns.pope_file})
    return files


def _amber_similarity(ns: argparse.Namespace) -> dict[str, Any]:
    from ..evaluation import amber

    return {"similarity": amber.spacy_similarity(ns.amber_spacy_model)} if ns.amber_spacy_model else {}


def score_predictions(bench: str, ns: argparse.Namespace, judge: Any = None) -> dict[str, Any]:
    """One benchmark's result dict from an answers file written elsewhere (``--predictions``).
    For MMHal that is the judge's reviews, or the answered template, which ``judge`` then rates."""
    from ..evaluation import amber, chair, mmhal, pope

    parsing = ns.parsing
    if bench == "pope":
        labels = _pope_labels(ns)
        given = dict(ns.predictions)
        if list(given) == [None]:
            given = dict.fromkeys(labels, given[None])
        elif missing := [split for split in labels if split not in given]:
            raise ValueError(f"no --predictions for POPE split(s) {missing}: give SPLIT=FILE for each, or drop "
                             f"their label files")
        answers = {split: pope.load_pope_predictions(given[split], path, questions=ns.pope_questions, split=split)
                   for split, path in labels.items()}
        return pope.score_pope(answers, {split: pope.load_pope_questions(path) for split, path in labels.items()},
                               parsing)
    (_, path), = ns.predictions
    if bench in CAPTION_BENCHMARKS:
        score = chair.score_chair if bench == "chair" else chair.score_object_halbench
        return score(chair.load_generations(path), _coco_ground_truth(ns), parsing=parsing)
    if bench == "amber":
        data = amber.load_amber_data(ns.amber_annotations, associations=ns.amber_relation,
                                     safe_words=ns.amber_safe_words, metrics=ns.amber_metrics, parsing=parsing)
        return amber.score_amber(amber.load_amber_predictions(path), amber.load_amber_annotations(ns.amber_annotations),
                                 parsing=parsing, **data, **_amber_similarity(ns))
    if bench == "mmhal":
        if _is_mmhal_answers(path):            # answered template: the judge rates it now
            return mmhal.score_mmhal(mmhal.load_mmhal_template(path), judge, parsing,
                                     max_unparsed=ns.judge_max_unparsed)
        return mmhal.score_mmhal_replies(mmhal.load_mmhal_reviews(path), parsing)
    raise ValueError(f"--predictions does not apply to benchmark {bench!r}")


def _is_mmhal_answers(path: str) -> bool:
    """Whether an MMHal ``--predictions`` file is the response template with ``model_answer``
    filled in (to be judged) rather than the judge's reviews."""
    from ..evaluation.common import read_records

    rows = read_records(path, "MMHal predictions")
    return bool(rows) and all(isinstance(r, dict) and "model_answer" in r and "question" in r for r in rows)


def run_benchmark(bench: str, ns: argparse.Namespace, model: Any, processor: Any, judge: Any = None) -> dict[str, Any]:
    """One benchmark's result dict (scores + bulky entries), from the parsed options. For
    ``chair`` / ``object_halbench`` it is ``{"chair": ..., "object_halbench": ..., "predictions"}``.
    Generation shows progress bars only with ``--progress``."""
    from .. import progress

    with progress.bars(ns.progress):
        return _run_benchmark(bench, ns, model, processor, judge)


def _run_benchmark(bench: str, ns: argparse.Namespace, model: Any, processor: Any, judge: Any) -> dict[str, Any]:
    from ..evaluation import amber, chair, mmhal, pope

    common = {"batch_size": ns.batch_size, "limit": ns.limit, "parsing": ns.parsing}
    if bench in CAPTION_BENCHMARKS:
        return chair.run_chair(model, processor, _coco_ground_truth(ns), ns.coco_images, questions=ns.chair_questions,
                               prompt=ns.chair_prompt, max_new_tokens=ns.max_new_tokens, **common)
    if bench == "pope":
        return pope.run_pope(model, processor, _pope_labels(ns), ns.pope_images, prompt_suffix=ns.pope_prompt_suffix,
                             max_new_tokens=ns.yes_no_max_new_tokens, **common)
    if bench == "amber":
        return amber.run_amber(model, processor, ns.amber_queries, ns.amber_annotations, ns.amber_images,
                               associations=ns.amber_relation, safe_words=ns.amber_safe_words,
                               metrics=ns.amber_metrics, yes_no_suffix=ns.amber_yes_no_suffix,
                               **_amber_similarity(ns),
                               max_new_tokens=ns.max_new_tokens,
                               yes_no_max_new_tokens=ns.yes_no_max_new_tokens, **common)
    if bench == "mmhal":
        return mmhal.run_mmhal(model, processor, ns.mmhal_template, ns.mmhal_images, judge,
                               max_new_tokens=ns.max_new_tokens, max_unparsed=ns.judge_max_unparsed, **common)
    if bench == "synthetic":
        from ..io import ensure_png
        from ..toyworld.evaluate import evaluate_world
        from ..toyworld.scenes import WorldConfig, sample_scenes

        world = WorldConfig(seed=ns.synthetic_seed)
        n = ns.synthetic_scenes if ns.limit is None else min(ns.synthetic_scenes, ns.limit)
        scenes = sample_scenes(world.held_out(), n, prefix="eval")
        result = evaluate_world(model, processor, scenes,
                                pope_split_scenes_for_stats=sample_scenes(world, 1000, prefix="train"),
                                seed=ns.synthetic_seed, max_new_tokens=ns.max_new_tokens,
                                pope_max_new_tokens=ns.yes_no_max_new_tokens, batch_size=ns.batch_size, keep_items=True)
        images = Path(ns.output_dir) / "images" / "synthetic"
        images.mkdir(parents=True, exist_ok=True)
        by_id = {scene.id: scene for scene in scenes}
        for row in result["per_scene"]:     # the report's gallery shows each scene's picture and truth
            scene = by_id[row["scene_id"]]
            path = ensure_png(images / f"{scene.id}.png", scene.render)
            row.update(image=str(path.relative_to(ns.output_dir)), description=scene.description())
        return {**result, "parsing": "exact"}
    raise ValueError(f"unknown benchmark {bench!r}")


def evaluate(ns: argparse.Namespace, judge: Any = None) -> dict[str, Any]:
    """Run every requested benchmark (or score ``--predictions``); write the run directory;
    return the results."""
    from ..evaluation.report import write_run
    from ..io import atomic_write_json
    from ..models import load_policy
    from ..training.config import ModelArguments

    out = Path(ns.output_dir)
    model = processor = None
    if not ns.predictions:
        model, processor = load_policy(ModelArguments(model_name_or_path=ns.model, dtype=ns.dtype),
                                       device=ns.device, what="model")
    settings = {k: getattr(ns, k) for k in ("batch_size", "max_new_tokens", "yes_no_max_new_tokens", "limit",
                                            "parsing")}
    if ns.predictions:
        settings["predictions"] = {split or "all": path for split, path in ns.predictions}
    results: dict[str, Any] = {"run": ns.run_name or out.name, "model": str(ns.model) if ns.model else None,
                               "settings": settings, "benchmarks": {}}
    captions: dict[str, Any] | None = None         # chair + object_halbench share one generation
    for bench in dict.fromkeys(ns.benchmark):
        if ns.predictions:
            result = score_predictions(bench, ns, judge)
        elif bench in CAPTION_BENCHMARKS:
            if captions is None:
                captions = run_benchmark(bench, ns, model, processor, judge)
            result = {**captions[bench], "predictions": captions["predictions"]}
        else:
            result = run_benchmark(bench, ns, model, processor, judge)
        _warn_if_nothing_matched(bench, result)
        attach_images(bench, result, ns)
        bulky = {k: result.pop(k) for k in BULKY_KEYS if k in result}
        if bulky:
            atomic_write_json(out / "predictions" / f"{bench}.json", bulky, indent=1, default=str)
        results["benchmarks"][bench] = result
        write_run(results, out)            # after each benchmark, so a crash keeps what is done
    return results


def attach_images(bench: str, result: dict[str, Any], ns: argparse.Namespace) -> None:
    """Give each ``per_response`` row of CHAIR / Object HalBench / AMBER the path of its image
    (``image``), where the image folder is known and the file is there, for the report's gallery."""
    rows = result.get("per_response")
    if not rows:
        return
    if bench in CAPTION_BENCHMARKS and ns.coco_images:
        truth = _coco_ground_truth(ns)
        for row in rows:
            name = truth.file_names.get(truth.image_id(row["image_id"]))
            if name and (path := Path(ns.coco_images) / name).is_file():
                row["image"] = str(path.resolve())
    elif bench == "amber" and ns.amber_images and ns.amber_queries:
        from ..evaluation.amber import load_amber_queries

        queries = {int(q["id"]): q for q in load_amber_queries(ns.amber_queries)}
        for row in rows:
            key = int(row["id"])
            if key in queries:
                if (path := Path(ns.amber_images) / queries[key]["image"]).is_file():
                    row["image"] = str(path.resolve())
                row.setdefault("question", queries[key]["query"])


def _warn_if_nothing_matched(bench: str, result: dict[str, Any]) -> None:
    """CHAIR's reference reading knows only the 80 COCO categories: say so when no caption
    mentions any of them (e.g. non-COCO annotations), rather than report a silent 0."""
    import sys

    counts = result.get("counts") or {}
    if (bench in CAPTION_BENCHMARKS and result.get("parsing") == "reference" and counts.get("n_captions")
            and not counts.get("n_mentions")):
        print(f"mmpo evaluate: warning: {bench}: none of {int(counts['n_captions'])} captions mentions a COCO "
              f"object under the reference synonym list, so every rate is 0; the reference scorer only knows "
              f"COCO's 80 categories (--parsing lenient reads the annotation file's own categories)",
              file=sys.stderr)


def main(argv: list[str]) -> int:
    from ..evaluation.report import compare_runs, run_table
    from ..hub import allowing_downloads

    parser = build_parser()
    ns = parser.parse_args(argv)
    _check(parser, ns)
    judge = None
    if "mmhal" in ns.benchmark and (not ns.predictions or _is_mmhal_answers(ns.predictions[0][1])):
        try:
            judge = _judge(ns)
        except ValueError as error:
            parser.error(str(error))
    run_dirs = list(ns.compare)
    if ns.benchmark:
        with allowing_downloads(ns.allow_download):
            results = evaluate(ns, judge)
        print(run_table(results))
        print(f"results written to {ns.output_dir}")
        run_dirs = [ns.output_dir, *run_dirs] if run_dirs else []
        if ns.report:
            from ..report import write_report

            # the compared runs first: the gallery judges the new run's answers against the first one's
            shown = [*ns.compare, ns.output_dir]
            try:
                # the benchmark's own image folders are trusted: its answers name images there
                image_dirs = [d for d in (ns.coco_images, ns.amber_images, ns.pope_images, ns.mmhal_images) if d]
                print(write_report(shown, Path(ns.output_dir) / "report.html", image_dirs=image_dirs).summary())
            except (ValueError, OSError) as error:    # the results are written: say so, and how to retry
                print(f"report.html not written: {error} (results.json and predictions/ are complete; "
                      f"`mmpo report {' '.join(map(str, shown))} --output {ns.output_dir}/report.html` retries)")
    if run_dirs:
        out_path = Path(ns.output_dir) / "comparison.md" if ns.output_dir else None
        print(compare_runs(run_dirs, out_path))
    return 0
