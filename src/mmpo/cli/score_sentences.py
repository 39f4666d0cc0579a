"""``mmpo score-sentences``: CLIP scores per sentence (ASPO's S_i) and DAMA's data hardness alpha_D.

    mmpo score-sentences --input train.jsonl --output scored.jsonl --clip /models/clip-vit-large-patch14-336

The synthetic world's tiny CLIP is built (and cached) with ``--clip toyworld``.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from ..hub import ALLOW_DOWNLOAD_HELP
    from ..io import default_cache_dir

    p = argparse.ArgumentParser(prog="mmpo score-sentences", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="preference records: a .jsonl, .json, .parquet or .arrow "
                   "file, a directory of them or a saved dataset, or a glob pattern")
    p.add_argument("--output", required=True, help="JSONL to write, with scores and data_alpha")
    p.add_argument("--clip", required=True, help="local CLIP checkpoint directory, or 'toyworld'")
    p.add_argument("--cache-dir", default=str(default_cache_dir()),
                   help="embedding cache (and where the toyworld CLIP is kept; default $MMPO_CACHE or ~/.cache/mmpo)")
    p.add_argument("--dama-mode", choices=("softmax", "ratio"), default="softmax",
                   help="delta from a softmax over all sentence scores (paper) or the ratio of sums (ablation)")
    p.add_argument("--dama-scores", choices=("logits", "cosine"), default="logits",
                   help="DAMA's softmax over CLIP's logits, cosine x the model's logit scale (CLIP as a classifier, "
                        "default), or over raw cosines (then delta mostly counts sentences)")
    p.add_argument("--logit-scale", type=float, default=None,
                   help="the logit scale to use instead of the CLIP checkpoint's logit_scale.exp()")
    p.add_argument("--delta-bar", type=float, default=None,
                   help="DAMA's dataset mean delta_bar as a number (default: the mean over these records; the "
                        "authors' code uses 0.0482190464911681, their RLAIF-V data's)")
    p.add_argument("--on-bad-record", choices=("raise", "skip"), default="raise")
    p.add_argument("--split", help="the split of --input to read when it holds several (a saved DatasetDict, "
                   "split folders, shards named by split)")
    p.add_argument("--image-root", help="directory relative image paths start from (default: the records file's); "
                   "record images must lie under it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--allow-download", action="store_true", help=ALLOW_DOWNLOAD_HELP)
    return p


def main(argv: list[str]) -> int:
    from .. import progress
    from ..data.construct.sentence_scores import score_sentences
    from ..data.records import load_records, save_records
    from ..hub import allowing_downloads
    from ..scoring.clip import CLIPScorer
    from ..scoring.sentences import RuleSplitter

    ns = build_parser().parse_args(argv)
    clip = ns.clip
    if clip == "toyworld":
        from ..toyworld.clip import ensure_tiny_clip

        clip, _ = ensure_tiny_clip(ns.cache_dir)
    loaded = load_records(ns.input, on_error=ns.on_bad_record, split=ns.split, image_root=ns.image_root)
    if loaded.errors:
        print(loaded.summary())
    with allowing_downloads(ns.allow_download):
        scorer = CLIPScorer(clip, batch_size=ns.batch_size, cache_dir=ns.cache_dir)
    with progress.bars(ns.progress):
        records, report = score_sentences(loaded.records, scorer, RuleSplitter(), dama_mode=ns.dama_mode,
                                          dama_scores=ns.dama_scores, logit_scale=ns.logit_scale,
                                          delta_bar=ns.delta_bar)
    save_records(records, ns.output)
    print(report.summary())
    print(f"wrote {len(records)} records to {ns.output}")
    return 0 if records else 1
