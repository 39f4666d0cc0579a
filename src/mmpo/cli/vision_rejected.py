"""``mmpo vision-rejected``: build AdaViP's vision-rejected images (the chosen response on a doctored image).

For each record: tag the objects, detect and segment them, remove each one by inpainting, and keep
the candidate whose CLIP score against the chosen response's sentences is lowest (AdaViP, section
3.2). Records where a stage finds nothing are written without a rejected image (training uses plain
DPO for them) and counted by reason. Run the same command again to resume a killed run.

Backends: ``annotations`` reads the synthetic world's exact boxes/masks from each record's
``meta["scene"]`` (as ``mmpo demo`` data has it); ``owlv2``, ``grounding-dino`` and ``sam`` load a
local checkpoint given by ``--detector-path`` / ``--segmenter-path``.

examples:
  mmpo vision-rejected --input pairs.jsonl --output adavip.jsonl --clip toyworld \\
      --detector annotations --segmenter annotations --contact-sheet adavip.png
  mmpo vision-rejected --input rlaif.jsonl --output adavip.jsonl --clip /models/clip-vit-large-patch14 \\
      --vocabulary coco.txt --detector grounding-dino --detector-path /models/grounding-dino-tiny \\
      --segmenter sam --segmenter-path /models/sam-vit-base
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..hub import ALLOW_DOWNLOAD_HELP
    from ..io import default_cache_dir

    p = argparse.ArgumentParser(prog="mmpo vision-rejected", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="preference records: a .jsonl, .json, .parquet or .arrow "
                   "file, a directory of them or a saved dataset, or a glob pattern")
    p.add_argument("--output", required=True, help="JSONL of records with rejected_image (appended to on resume)")
    p.add_argument("--image-dir", help="where the rejected PNGs go (default: vision_rejected/ next to --output)")
    p.add_argument("--clip", required=True,
                   help="local CLIP checkpoint directory for the selection score (and --tagger clip), or 'toyworld'")
    p.add_argument("--cache-dir", default=str(default_cache_dir()),
                   help="CLIP embedding cache (and where the toyworld CLIP is kept; default $MMPO_CACHE or ~/.cache/mmpo)")
    p.add_argument("--vocabulary", default="toyworld",
                   help="category names: 'toyworld' (the synthetic shapes) or a text file, one name per line")
    p.add_argument("--tagger", choices=("nouns", "clip"), default="nouns",
                   help="nouns: vocabulary names the chosen response mentions; clip: CLIP zero-shot over the vocabulary")
    p.add_argument("--tag-top-k", type=int, default=5, help="--tagger clip: most tags per image")
    p.add_argument("--tag-threshold", type=float, help="--tagger clip: minimum cosine similarity")
    p.add_argument("--detector", choices=("annotations", "owlv2", "grounding-dino"), default="annotations")
    p.add_argument("--detector-path", help="local checkpoint of the owlv2 / grounding-dino detector")
    p.add_argument("--box-threshold", type=float,
                   help="minimum detection score (default: 0.2 for owlv2, 0.35 for grounding-dino)")
    p.add_argument("--segmenter", choices=("annotations", "box", "sam"), default="annotations")
    p.add_argument("--segmenter-path", help="local checkpoint of the SAM segmenter")
    p.add_argument("--inpainter", choices=("telea", "mean"), default="telea",
                   help="telea: OpenCV Telea inpainting; mean: fill with the median colour around the mask")
    p.add_argument("--dilate", type=int, default=2, help="grow each mask by this many pixels before inpainting")
    p.add_argument("--max-candidates", type=int, default=8, help="at most this many objects tried per image")
    p.add_argument("--contact-sheet", help="PNG of originals, candidates and scores for the first records")
    p.add_argument("--contact-sheet-records", type=int, default=4, help="rows of the contact sheet")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--on-bad-record", choices=("raise", "skip"), default="raise")
    p.add_argument("--split", help="the split of --input to read when it holds several (a saved DatasetDict, "
                   "split folders, shards named by split)")
    p.add_argument("--image-root", help="directory relative image paths start from (default: the records file's); "
                   "record images must lie under it")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.add_argument("--allow-download", action="store_true", help=ALLOW_DOWNLOAD_HELP)
    return p


def _vocabulary(value: str) -> list[str]:
    if value == "toyworld":
        from ..toyworld.scenes import SHAPES

        return list(SHAPES)
    from ..methods.adavip.vision_steps import read_vocabulary

    return read_vocabulary(value)


def main(argv: list[str]) -> int:
    from .. import progress
    from ..data.records import load_records
    from ..hub import allowing_downloads
    from ..methods.adavip.inpainting import MeanFillInpainter, TeleaInpainter
    from ..methods.adavip.vision_rejected import VisionRejectedPipeline, build_vision_rejected
    from ..methods.adavip.vision_steps import BoxSegmenter, CLIPTagger, NounTagger
    from ..scoring.clip import CLIPScorer
    from ..toyworld.annotations import AnnotationDetector, AnnotationSegmenter, SceneIndex

    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.detector != "annotations" and not ns.detector_path:
        parser.error(f"--detector {ns.detector} needs --detector-path")
    if ns.segmenter == "sam" and not ns.segmenter_path:
        parser.error("--segmenter sam needs --segmenter-path")
    if ns.max_candidates < 1 or ns.tag_top_k < 1 or ns.dilate < 0:
        parser.error("--max-candidates and --tag-top-k must be >= 1, --dilate >= 0")
    try:
        vocabulary = _vocabulary(ns.vocabulary)
    except (OSError, ValueError) as error:
        parser.error(str(error))

    loaded = load_records(ns.input, on_error=ns.on_bad_record, split=ns.split, image_root=ns.image_root)
    if loaded.errors:
        print(loaded.summary())
    records = loaded.records
    scenes = None
    if "annotations" in (ns.detector, ns.segmenter):
        try:
            scenes = SceneIndex.from_records(records)
        except ValueError as error:
            print(f"mmpo vision-rejected: error: {error}", file=sys.stderr)
            return 2

    with allowing_downloads(ns.allow_download):  # every checkpoint below is loaded here
        clip = ns.clip
        if clip == "toyworld":
            from ..toyworld.clip import ensure_tiny_clip

            with progress.bars(ns.progress):
                clip, _ = ensure_tiny_clip(ns.cache_dir)
        scorer = CLIPScorer(clip, device=ns.device, cache_dir=ns.cache_dir)

        if ns.tagger == "clip":
            tagger = CLIPTagger(scorer, vocabulary, threshold=ns.tag_threshold, top_k=ns.tag_top_k)
        else:
            tagger = NounTagger(vocabulary)

        if ns.detector == "annotations":
            detector = AnnotationDetector(scenes)
        else:
            from ..methods.adavip.vision_hf_models import load_detector

            detector = load_detector(ns.detector, ns.detector_path, device=ns.device, threshold=ns.box_threshold)

        if ns.segmenter == "annotations":
            segmenter = AnnotationSegmenter(scenes)
        elif ns.segmenter == "box":
            segmenter = BoxSegmenter()
        else:
            from ..methods.adavip.vision_hf_models import SamSegmenter

            segmenter = SamSegmenter(ns.segmenter_path, device=ns.device)

        if ns.inpainter == "telea":
            try:
                inpainter = TeleaInpainter(dilate=ns.dilate)
            except ImportError as error:
                print(f"mmpo vision-rejected: error: {error}", file=sys.stderr)
                return 2
        else:
            inpainter = MeanFillInpainter(dilate=ns.dilate)

    pipeline = VisionRejectedPipeline(tagger=tagger, detector=detector, segmenter=segmenter, inpainter=inpainter,
                                      scorer=scorer, max_candidates=ns.max_candidates)
    output = Path(ns.output)
    image_dir = Path(ns.image_dir) if ns.image_dir else output.parent / "vision_rejected"
    with progress.bars(ns.progress):
        report = build_vision_rejected(records, pipeline, output, image_dir, contact_sheet=ns.contact_sheet,
                                       contact_sheet_records=ns.contact_sheet_records)
    print(report.summary())
    return 0
