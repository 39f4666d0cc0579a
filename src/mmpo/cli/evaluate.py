"""``mmpo evaluate``: evaluate a local checkpoint on hallucination benchmarks read from local files.

Each ``--benchmark`` needs its files in the published format (see ``mmpo.evaluation.benchmarks``):

  chair      --coco-instances instances_val2014.json [--coco-captions captions_val2014.json]
             --coco-images val2014/ [--chair-questions questions.jsonl]
  pope       --pope-dir DIR (holds <dataset>_pope_<split>.json) or --pope-file SPLIT=PATH ...,
             --pope-images val2014/
  amber      --amber-queries query_all.json --amber-annotations annotations.json --amber-images image/
             [--amber-relation relation.json --amber-safe-words safe_words.txt]
  mmhal      --mmhal-template response_template.json --mmhal-images images/, and a judge:
             --judge-url / --judge-config FILE / $MMPO_JUDGE_URL (key: config or $MMPO_JUDGE_API_KEY)
  synthetic  nothing: the built-in synthetic world's held-out scenes

The run directory gets results.json, results.md and predictions/<benchmark>.json.
``--compare RUN_DIR ...`` prints (and, with --output-dir, writes comparison.md) a side-by-side
table of existing runs; given with --benchmark, the new run is the first column.

examples:
  mmpo evaluate --model ckpt/ --benchmark pope --pope-dir pope/coco --pope-images val2014 --output-dir runs/base
  mmpo evaluate --compare runs/base runs/dpo --output-dir runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BENCHMARKS = ("chair", "pope", "amber", "mmhal", "synthetic")
POPE_SPLITS = ("random", "popular", "adversarial")
#: result entries too bulky for results.json; they go to predictions/<benchmark>.json
BULKY_KEYS = ("predictions", "per_response", "reviews", "samples")


def _split_file(text: str) -> tuple[str, str]:
    split, sep, path = text.partition("=")
    if not sep or split not in POPE_SPLITS:
        raise argparse.ArgumentTypeError(f"expected SPLIT=PATH with SPLIT in {POPE_SPLITS}; got {text!r}")
    return split, path


def build_parser() -> argparse.ArgumentParser:
    from ..evaluation.coco_chair import DEFAULT_PROMPT
    from .main import ALLOW_DOWNLOAD_HELP

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

    g = p.add_argument_group("CHAIR / Object HalBench")
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
    g.add_argument("--pope-rule", choices=("pope", "strict"), default="pope",
                   help="answer reading: 'pope' (published: no/not in first sentence -> no, else yes) or "
                        "'strict' (first word must be yes/no)")
    g.add_argument("--pope-prompt-suffix", default="", help="appended to every question")

    g = p.add_argument_group("AMBER")
    g.add_argument("--amber-queries", help="query_all.json (or any query_*.json)")
    g.add_argument("--amber-annotations", help="annotations.json")
    g.add_argument("--amber-images", help="folder of the AMBER images")
    g.add_argument("--amber-relation", help="relation.json word associations (optional)")
    g.add_argument("--amber-safe-words", help="safe_words.txt (optional)")
    g.add_argument("--amber-yes-no-suffix", default="", help="appended to discriminative queries")

    g = p.add_argument_group("MMHal-Bench")
    g.add_argument("--mmhal-template", help="response_template.json")
    g.add_argument("--mmhal-images", help="folder of the images (file names of image_src)")
    g.add_argument("--judge-url", help="OpenAI-compatible endpoint (default: judge config, then $MMPO_JUDGE_URL)")
    g.add_argument("--judge-model", help="judge model name (default: judge config, $MMPO_JUDGE_MODEL, gpt-4)")
    g.add_argument("--judge-config", help="YAML/JSON file: url, api_key, model, timeout, max_retries, ...")

    g = p.add_argument_group("synthetic world")
    g.add_argument("--synthetic-scenes", type=int, default=200, help="held-out scenes to evaluate")
    g.add_argument("--synthetic-seed", type=int, default=0, help="world seed")

    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", default=[],
                   help="print a side-by-side table of these runs' results")
    return p


_REQUIRED = {
    "chair": ("coco_instances", "coco_images"),
    "pope": ("pope_images",),
    "amber": ("amber_queries", "amber_annotations", "amber_images"),
    "mmhal": ("mmhal_template", "mmhal_images"),
    "synthetic": (),
}


def _check(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if not ns.benchmark and not ns.compare:
        parser.error("nothing to do: give --benchmark (with --model and --output-dir) or --compare")
    if ns.benchmark and not (ns.model and ns.output_dir):
        parser.error("--benchmark needs --model and --output-dir")
    for bench in ns.benchmark:
        if missing := [f"--{k.replace('_', '-')}" for k in _REQUIRED[bench] if not getattr(ns, k)]:
            parser.error(f"--benchmark {bench} needs {' '.join(missing)}")
    if "pope" in ns.benchmark and not (ns.pope_dir or ns.pope_file):
        parser.error("--benchmark pope needs --pope-dir or --pope-file SPLIT=PATH")


def load_checkpoint(path: str, device: str = "auto", dtype: str = "auto",
                    allow_download: bool | None = None) -> tuple[Any, Any]:
    """A local VLM checkpoint: ``AutoModelForImageTextToText`` (in eval mode, on ``device``) and
    ``AutoProcessor``. A ``path`` that is not a directory raises ``FileNotFoundError`` naming it,
    with no Hub look-up, unless ``allow_download`` (or ``MMPO_ALLOW_DOWNLOAD=1``; see ``mmpo.hub``)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..hub import pretrained_kwargs

    local = pretrained_kwargs(path, what="model", allow_download=allow_download)
    kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs, **local)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return model, AutoProcessor.from_pretrained(path, **local)


def _judge(ns: argparse.Namespace):
    from ..evaluation.benchmarks import judge_from_config

    config = None
    if ns.judge_config:
        import yaml

        config = yaml.safe_load(Path(ns.judge_config).read_text()) or {}
    return judge_from_config(config, url=ns.judge_url, model=ns.judge_model)


def run_benchmark(bench: str, ns: argparse.Namespace, model: Any, processor: Any, judge: Any = None) -> dict[str, Any]:
    """One benchmark's result dict (scores + bulky entries), from the parsed options."""
    from ..evaluation import benchmarks

    common = {"batch_size": ns.batch_size, "progress": ns.progress}
    if bench == "chair":
        return benchmarks.run_chair(model, processor, ns.coco_instances, ns.coco_images, captions=ns.coco_captions,
                                    questions=ns.chair_questions, prompt=ns.chair_prompt, limit=ns.limit,
                                    max_new_tokens=ns.max_new_tokens, **common)
    if bench == "pope":
        files = dict(benchmarks.find_pope_files(ns.pope_dir)) if ns.pope_dir else {}
        files.update(dict(ns.pope_file))
        return benchmarks.run_pope(model, processor, files, ns.pope_images, rule=ns.pope_rule,
                                   prompt_suffix=ns.pope_prompt_suffix, limit=ns.limit,
                                   max_new_tokens=ns.yes_no_max_new_tokens, **common)
    if bench == "amber":
        return benchmarks.run_amber(model, processor, ns.amber_queries, ns.amber_annotations, ns.amber_images,
                                    associations=ns.amber_relation, safe_words=ns.amber_safe_words,
                                    limit=ns.limit, yes_no_suffix=ns.amber_yes_no_suffix,
                                    max_new_tokens=ns.max_new_tokens,
                                    yes_no_max_new_tokens=ns.yes_no_max_new_tokens, **common)
    if bench == "mmhal":
        return benchmarks.run_mmhal(model, processor, ns.mmhal_template, ns.mmhal_images, judge, limit=ns.limit,
                                    max_new_tokens=ns.max_new_tokens, **common)
    if bench == "synthetic":
        from ..evaluation.synthetic import evaluate_synthetic
        from ..toyworld.scenes import WorldConfig, sample_scenes

        world = WorldConfig(seed=ns.synthetic_seed)
        n = ns.synthetic_scenes if ns.limit is None else min(ns.synthetic_scenes, ns.limit)
        return evaluate_synthetic(model, processor, sample_scenes(world.held_out(), n, prefix="eval"),
                                  pope_split_scenes_for_stats=sample_scenes(world, 1000, prefix="train"),
                                  seed=ns.synthetic_seed, max_new_tokens=ns.max_new_tokens,
                                  pope_max_new_tokens=ns.yes_no_max_new_tokens, **common)
    raise ValueError(f"unknown benchmark {bench!r}")


def evaluate(ns: argparse.Namespace, judge: Any = None) -> dict[str, Any]:
    """Run every requested benchmark; write the run directory; return the results."""
    from ..data.construct.journal import atomic_write_text
    from ..evaluation.report import write_run

    out = Path(ns.output_dir)
    model, processor = load_checkpoint(ns.model, ns.device, ns.dtype)
    settings = {k: getattr(ns, k) for k in ("batch_size", "max_new_tokens", "yes_no_max_new_tokens", "limit",
                                            "pope_rule")}
    results: dict[str, Any] = {"run": ns.run_name or out.name, "model": str(ns.model), "settings": settings,
                               "benchmarks": {}}
    for bench in dict.fromkeys(ns.benchmark):
        result = run_benchmark(bench, ns, model, processor, judge)
        bulky = {k: result.pop(k) for k in BULKY_KEYS if k in result}
        if bulky:
            atomic_write_text(out / "predictions" / f"{bench}.json", json.dumps(bulky, indent=1, default=str) + "\n")
        results["benchmarks"][bench] = result
        write_run(results, out)            # after each benchmark, so a crash keeps what is done
    return results


def main(argv: list[str]) -> int:
    from ..evaluation.report import compare_runs, run_table
    from .main import allowing_downloads

    parser = build_parser()
    ns = parser.parse_args(argv)
    _check(parser, ns)
    judge = None
    if "mmhal" in ns.benchmark:
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
    if run_dirs:
        out_path = Path(ns.output_dir) / "comparison.md" if ns.output_dir else None
        print(compare_runs(run_dirs, out_path))
    return 0
