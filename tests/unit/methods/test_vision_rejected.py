"""AdaViP vision-rejected images: stages, selection (Eq. 9), the resumable writer, real backends, CLI.

Everything runs offline: synthetic scenes with exact annotations, and tiny random OWLv2, Grounding
DINO, SAM and CLIP models built from configs and saved to temporary directories.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmpo.data.records import load_records, save_records
from mmpo.methods.adavip.inpainting import (
    Inpainter,
    MeanFillInpainter,
    TeleaInpainter,
    TorchScriptInpainter,
    dilate_mask,
)
from mmpo.methods.adavip.vision_rejected import (
    SKIP_REASONS,
    VisionRejectedPipeline,
    build_vision_rejected,
    sentence_sum_scores,
)
from mmpo.methods.adavip.vision_steps import (
    BoxSegmenter,
    CLIPTagger,
    Detection,
    Detector,
    NounTagger,
    Segmenter,
    Tagger,
    non_max_suppression,
    noun_forms,
)
from mmpo.scoring.clip import CLIPScorer
from mmpo.toyworld.annotations import AnnotationDetector, AnnotationSegmenter, SceneIndex
from mmpo.toyworld.clip import TinyCLIPConfig, build_clip_processor, build_clip_tokenizer, build_tiny_clip
from mmpo.toyworld.data import ground_truth_pairs
from mmpo.toyworld.scenes import BACKGROUND, RGB, SHAPES, WorldConfig, sample_scenes

DILATE = 2
SMALL_CLIP = TinyCLIPConfig(vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, max_positions=64,
                            projection_dim=16)


# ---------------------------------------------------------------------------------------------
# Stand-ins and fixtures


class VisibilityScorerStandIn:
    """Stand-in for CLIP that knows the scenes: an (image, sentence) pair scores 1 when a shape the
    sentence names is still visible in the image (at least half of one such object's exact pixels
    keep its colour), else 0. The image's scene is the one that explains its pixels: a candidate
    is its original with objects painted over by (near-)background, so every pixel that is not
    background-like equals the original's. With ``fail_at``, its ``fail_at``-th ``score_matrix``
    call raises instead (a crash mid-run)."""

    def __init__(self, scenes, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at
        self.scenes = list(scenes)
        self.renders = [np.asarray(s.render(), dtype=np.int32) for s in self.scenes]
        self.masks = [[s.mask(i) for i in range(len(s.objects))] for s in self.scenes]

    def visible_shapes(self, image) -> set[str]:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int32)  # (H, W, 3)
        foreground = np.abs(pixels - np.array(BACKGROUND)).max(axis=-1) > 12  # (H, W)
        unexplained = [(foreground & (pixels != r).any(axis=-1)).sum() for r in self.renders]
        k = int(np.argmin(unexplained))
        visible = set()
        for obj, mask in zip(self.scenes[k].objects, self.masks[k], strict=True):
            if (pixels[mask] == RGB[obj.colour]).all(axis=-1).mean() >= 0.5:
                visible.add(obj.shape)
        return visible

    def score_matrix(self, images, texts) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("stand-in crash")
        named = [{s for s in SHAPES if re.search(rf"\b{s}s?\b", t)} for t in texts]
        out = torch.zeros(len(images), len(texts))
        for i, image in enumerate(images):
            seen = self.visible_shapes(image)
            for j, shapes in enumerate(named):
                out[i, j] = float(bool(shapes & seen))
        return out  # (N_images, N_texts)

    def score(self, images, texts) -> torch.Tensor:
        return torch.stack([self.score_matrix([i], [t])[0, 0] for i, t in zip(images, texts, strict=True)])


class EmptySegmenterStandIn:
    """A segmenter that finds nothing: all-False masks."""

    def segment(self, image, boxes):
        return [np.zeros((image.height, image.width), dtype=bool) for _ in boxes]


class IdentityInpainterStandIn:
    """An inpainter that changes nothing."""

    def inpaint(self, image, mask):
        return image.copy()


@pytest.fixture(scope="module")
def scenes():
    """Scenes with at least two objects of distinct shapes (so removals are told apart)."""
    found = [s for s in sample_scenes(WorldConfig(seed=7), 60)
             if len(s.objects) >= 2 and len(s.shapes) == len(s.objects)]
    assert len(found) >= 6
    return found[:6]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """An untrained tiny CLIP saved as a checkpoint directory."""
    path = tmp_path_factory.mktemp("clip")
    tokenizer = build_clip_tokenizer(SMALL_CLIP)
    build_tiny_clip(tokenizer, SMALL_CLIP, seed=0).save_pretrained(path)
    build_clip_processor(tokenizer, SMALL_CLIP).save_pretrained(path)
    return path


def annotation_pipeline(scenes, scorer, inpainter=None, **kwargs) -> VisionRejectedPipeline:
    index = SceneIndex(scenes)
    return VisionRejectedPipeline(
        tagger=NounTagger(SHAPES), detector=AnnotationDetector(index), segmenter=AnnotationSegmenter(index),
        inpainter=inpainter if inpainter is not None else MeanFillInpainter(dilate=DILATE), scorer=scorer, **kwargs)


def records_for(scenes, tmp_path):
    return ground_truth_pairs(scenes, WorldConfig(seed=7), tmp_path / "originals")


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Stage 1: tagging


def test_noun_forms():
    assert noun_forms("circle") == {"circle", "circles"}
    assert noun_forms("box") == {"box", "boxes"}
    assert noun_forms("butterfly") == {"butterfly", "butterflies"}
    assert noun_forms("person") == {"person", "people"}
    assert noun_forms("Traffic Light") == {"traffic light", "traffic lights"}
    assert noun_forms("sheep") == {"sheep"}
    assert "knives" in noun_forms("knife") and "leaves" in noun_forms("leaf")


def test_noun_tagger_plurals_multiword_aliases_and_order():
    tagger = NounTagger(["light", "traffic light", "person", "dog", "t-shirt", "couch"], aliases={"sofa": "couch"})
    assert isinstance(tagger, Tagger)
    text = "Two PEOPLE by the traffic-lights. A dog, another Dog, sofas and a T-shirt under a light."
    assert tagger.tag(None, text) == ["person", "traffic light", "dog", "couch", "t-shirt", "light"]
    assert tagger.tag(None, "hotdogs and underdog lighting") == []  # whole words only
    shapes = NounTagger(SHAPES)
    assert shapes.tag(None, "a large red star is at the top left . two circles .") == ["star", "circle"]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        NounTagger(["dog"], aliases={"sofa": "couch"})


# ---------------------------------------------------------------------------------------------
# Stages 2-4 on the synthetic world


def test_annotation_backends_read_the_ground_truth(scenes):
    scene = scenes[0]
    index = SceneIndex(scenes)
    detector, segmenter = AnnotationDetector(index), AnnotationSegmenter(index)
    assert isinstance(detector, Detector) and isinstance(segmenter, Segmenter)
    image = scene.render()
    detections = detector.detect(image, [scene.objects[1].shape, "nothing"])
    assert detections == [Detection(scene.objects[1].shape, tuple(map(float, scene.objects[1].box)), 1.0)]
    masks = segmenter.segment(image, [d.box for d in detections] + [(0.0, 0.0, 1.0, 1.0)])
    np.testing.assert_array_equal(masks[0], scene.mask(1))
    assert not masks[1].any()  # a box matching no object
    box = BoxSegmenter().segment(image, [(2.0, 3.0, 5.5, 4.0)])[0]
    assert box.sum() == 4 * 1 and box[3, 2:6].all()
    with pytest.raises(KeyError, match="not the rendering"):
        detector.detect(Image.new("RGB", (64, 64)), ["circle"])


def test_dilate_mask_matches_a_naive_reference():
    rng = np.random.default_rng(0)
    for pixels in (0, 1, 2, 3):
        mask = rng.random((13, 17)) < 0.05
        expected = np.zeros_like(mask)
        for r, c in zip(*np.nonzero(mask), strict=True):
            expected[max(r - pixels, 0):r + pixels + 1, max(c - pixels, 0):c + pixels + 1] = True
        np.testing.assert_array_equal(dilate_mask(mask, pixels), expected)


@pytest.mark.parametrize("inpainter", [TeleaInpainter(dilate=DILATE), MeanFillInpainter(dilate=DILATE)],
                         ids=["telea", "mean"])
def test_each_candidate_differs_only_inside_one_dilated_object_mask(scenes, inpainter):
    assert isinstance(inpainter, Inpainter)
    pipeline = annotation_pipeline(scenes, VisibilityScorerStandIn(scenes), inpainter)
    background = np.array(BACKGROUND)
    for scene in scenes:
        original = np.asarray(scene.render(), dtype=np.int32)
        built = pipeline.run(scene.render(), scene.description())
        assert built.selected is not None and len(built.candidates) == len(scene.objects)
        for candidate in built.candidates:
            (i,) = [k for k, o in enumerate(scene.objects) if tuple(map(float, o.box)) == candidate.detection.box]
            changed = (np.asarray(candidate.image, dtype=np.int32) != original).any(axis=-1)  # (H, W)
            assert changed.any()
            assert not (changed & ~dilate_mask(scene.mask(i), DILATE)).any()
            # the object is gone: its pixels now look like the background
            removed = np.asarray(candidate.image, dtype=np.int32)[scene.mask(i)]  # (P, 3)
            assert np.abs(removed - background).mean() < 12


# ---------------------------------------------------------------------------------------------
# Stages 5-6: selection


def test_sentence_sum_scores_by_hand():
    """Eq. 9 with a fixed (C=3, S=2) score matrix [[.2, .3], [.1, .1], [.4, 0]]:
    Score = [.5, .2, .4], so the lowest is candidate 1."""

    class FixedScorer:
        def score_matrix(self, images, texts):
            return torch.tensor([[0.2, 0.3], [0.1, 0.1], [0.4, 0.0]])

    scores = sentence_sum_scores(FixedScorer(), ["c0", "c1", "c2"], ["s0", "s1"])
    torch.testing.assert_close(scores, torch.tensor([0.5, 0.2, 0.4]))
    assert int(scores.argmin()) == 1


def test_selects_the_removal_that_contradicts_the_description(scenes):
    """The chosen response is the description (one sentence per object, n of them) plus
    "there is a <shape_k> ." about object k. With the visibility stand-in, removing object k
    contradicts two sentences (Score = n - 1) and any other object one (Score = n): k is selected."""
    pipeline = annotation_pipeline(scenes, VisibilityScorerStandIn(scenes))
    for scene in scenes:
        n = len(scene.objects)
        for k, target in enumerate(scene.objects):
            response = f"{scene.description()} there is a {target.shape} ."
            built = pipeline.run(scene.render(), response)
            assert len(built.sentences) == n + 1
            assert built.candidates[built.selected].detection.label == target.shape
            assert built.describe()["removed"] == target.shape
            expected = {o.shape: (n - 1 if j == k else n) for j, o in enumerate(scene.objects)}
            assert {c.detection.label: c.score for c in built.candidates} == expected


# ---------------------------------------------------------------------------------------------
# Many records on disk


def test_end_to_end_with_an_untrained_tiny_clip(scenes, clip_dir, tmp_path):
    records = records_for(scenes[:3], tmp_path)
    pipeline = annotation_pipeline(scenes, CLIPScorer(clip_dir, device="cpu"), TeleaInpainter(dilate=DILATE))
    out = tmp_path / "run" / "adavip.jsonl"
    report = build_vision_rejected(records, pipeline, out, tmp_path / "run" / "images",
                                   contact_sheet=tmp_path / "sheet.png")
    assert report.built == 3 and sum(report.skipped.values()) == 0
    assert "3 of 3 records built" in report.summary()
    loaded = load_records(out).records
    assert [r.id for r in loaded] == [r.id for r in records]
    for record, row in zip(loaded, read_lines(out), strict=True):
        assert not os.path.isabs(row["rejected_image"])  # inside the output's directory: relative
        with Image.open(record.rejected_image) as im:
            assert im.size == (64, 64)
        info = record.meta["adavip"]
        assert info["removed"] in SHAPES and len(info["candidates"]) >= 2
        assert min(c["score"] for c in info["candidates"]) == info["score"]
    with Image.open(report.contact_sheet) as sheet:
        assert sheet.width > 3 * 64 and sheet.height > 3 * 64


def test_kill_and_resume_loses_duplicates_and_corrupts_nothing(scenes, tmp_path):
    records = records_for(scenes, tmp_path)
    out, images = tmp_path / "run" / "adavip.jsonl", tmp_path / "run" / "images"
    pipeline = annotation_pipeline(scenes, VisibilityScorerStandIn(scenes, fail_at=4))
    with pytest.raises(RuntimeError, match="stand-in crash"):
        build_vision_rejected(records, pipeline, out, images)
    assert [row["id"] for row in read_lines(out)] == [r.id for r in records[:3]]
    # a kill in the middle of the next line, and between a record line and its progress line
    progress = out.with_name(out.name + ".progress.jsonl")
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:-1]))
    with out.open("a") as file:
        file.write('{"id": "half a li')

    report = build_vision_rejected(records, pipeline, out, images)  # calls 5.. do not fail
    assert report.repaired_lines == 1 and report.done_before == 3 and report.built == len(records) - 3
    rows = read_lines(out)  # every line is whole JSON
    assert [row["id"] for row in rows] == [r.id for r in records]
    assert sorted(json.loads(line)["id"] for line in progress.read_text().splitlines()[1:]) == sorted(
        r.id for r in records)
    files = sorted(images.iterdir())
    assert len(files) == len(records) and not [f for f in files if f.name.startswith(".")]
    for file in files:
        with Image.open(file) as im:
            im.load()

    # the same as a run that was never interrupted
    clean_out = tmp_path / "clean" / "adavip.jsonl"
    build_vision_rejected(records, annotation_pipeline(scenes, VisibilityScorerStandIn(scenes)), clean_out,
                          tmp_path / "clean" / "images")
    assert read_lines(clean_out) == rows
    # a third call has nothing left to do
    again = build_vision_rejected(records, annotation_pipeline(scenes, VisibilityScorerStandIn(scenes)),
                                  out, images)
    assert again.done_before == len(records) and again.built == 0 and len(read_lines(out)) == len(records)


def test_resume_guards(scenes, tmp_path):
    records = records_for(scenes[:1], tmp_path)
    out = tmp_path / "adavip.jsonl"
    build_vision_rejected(records, annotation_pipeline(scenes, VisibilityScorerStandIn(scenes)), out,
                          tmp_path / "images")
    other = annotation_pipeline(scenes, VisibilityScorerStandIn(scenes), TeleaInpainter())
    with pytest.raises(ValueError, match="other settings"):
        build_vision_rejected(records, other, out, tmp_path / "images")
    foreign = tmp_path / "foreign.jsonl"
    save_records(records, foreign)
    with pytest.raises(FileExistsError, match="no progress file"):
        build_vision_rejected(records, other, foreign, tmp_path / "images")


def test_skipped_records_are_written_without_rejected_image_and_counted(scenes, tmp_path):
    records = records_for(scenes[:3], tmp_path)
    absent = next(s for s in SHAPES if s not in scenes[1].shapes)
    records[0].chosen = "there is nothing to see ."  # no shape named
    records[1].chosen = f"a small red {absent} is at the top left ."  # named, but not in the image
    scorer = VisibilityScorerStandIn(scenes)
    report = build_vision_rejected(records, annotation_pipeline(scenes, scorer), tmp_path / "a.jsonl",
                                   tmp_path / "images")
    assert (report.built, report.skipped["no_tags"], report.skipped["no_detections"]) == (1, 1, 1)
    rows = read_lines(tmp_path / "a.jsonl")
    assert [row["meta"]["adavip"].get("skipped") for row in rows] == ["no_tags", "no_detections", None]
    assert ["rejected_image" in row for row in rows] == [False, False, True]
    assert len(load_records(tmp_path / "a.jsonl").records) == 3  # skipped records still load (DPO fallback)
    assert "skipped 2 (no_tags 1, no_detections 1)" in report.summary()

    index = SceneIndex(scenes)
    empty = VisionRejectedPipeline(NounTagger(SHAPES), AnnotationDetector(index), EmptySegmenterStandIn(),
                                   MeanFillInpainter(), scorer)
    same = VisionRejectedPipeline(NounTagger(SHAPES), AnnotationDetector(index), AnnotationSegmenter(index),
                                  IdentityInpainterStandIn(), scorer)
    assert build_vision_rejected(records[2:], empty, tmp_path / "b.jsonl", tmp_path / "images").skipped["empty_masks"] == 1
    assert build_vision_rejected(records[2:], same, tmp_path / "c.jsonl", tmp_path / "images").skipped["unchanged"] == 1
    assert set(SKIP_REASONS) >= {"no_tags", "no_detections", "empty_masks", "unchanged", "no_sentences"}


# ---------------------------------------------------------------------------------------------
# Model backends, tiny and random


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory):
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    path = tmp_path_factory.mktemp("owlv2")
    tokenizer = build_clip_tokenizer(SMALL_CLIP)
    tokenizer.model_max_length = 16  # OWLv2 pads every query to this length
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}
    torch.manual_seed(0)
    Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(path)
    # without scipy the PIL image processor cannot resize: feed it images at the model's size
    image_processor = Owlv2ImageProcessorPil(size={"height": 64, "width": 64}, do_resize=False)
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def grounding_dino_dir(tmp_path_factory):
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    path = tmp_path_factory.mktemp("grounding_dino")
    # Grounding DINO hard-codes BERT's ids of [CLS] 101, [SEP] 102, "." 1012 and "?" 1029
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"filler{i}" for i in range(1012 - len(words))] + ["."] + [f"filler-{i}" for i in range(16)] + ["?"]
    words += ["a", "photo", "of", *SHAPES]
    assert (words.index("[CLS]"), words.index("[SEP]"), words.index("."), words.index("?")) == (101, 102, 1012, 1029)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = GroundingDinoConfig(
        backbone_config={"model_type": "swin", "image_size": 64, "patch_size": 2, "embed_dim": 8,
                         "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 2,
                         "out_features": ["stage2", "stage3", "stage4"]},
        text_config={"model_type": "bert", "vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, max_text_len=32,
        encoder_n_points=1, decoder_n_points=1)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    path = tmp_path_factory.mktemp("sam")
    config = SamConfig(
        vision_config={"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1],
                       "mlp_dim": 64, "num_pos_feats": 16},
        prompt_encoder_config={"hidden_size": 32, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "iou_head_hidden_dim": 32})
    torch.manual_seed(0)
    SamModel(config).save_pretrained(path)
    image_processor = SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                           mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    return path


def assert_well_formed(detections, tags, size=64):
    assert detections and all(isinstance(d, Detection) for d in detections)
    for d in detections:
        x0, y0, x1, y1 = d.box
        assert d.label in tags and 0.0 <= d.score <= 1.0
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


def test_owlv2_detector_runs(owlv2_dir, scenes):
    from mmpo.methods.adavip.vision_hf_models import OwlV2Detector

    detector = OwlV2Detector(owlv2_dir, threshold=0.0, max_per_label=2, device="cpu")
    assert isinstance(detector, Detector)
    detections = detector.detect(scenes[0].render(), ["circle", "star"])
    assert_well_formed(detections, {"circle", "star"})
    assert all(sum(d.label == t for d in detections) <= 2 for t in ("circle", "star"))
    assert detector.detect(scenes[0].render(), []) == []


def test_grounding_dino_detector_runs(grounding_dino_dir, scenes):
    from mmpo.methods.adavip.vision_hf_models import GroundingDinoDetector

    detector = GroundingDinoDetector(grounding_dino_dir, box_threshold=0.0, device="cpu", tags_per_prompt=2)
    tags = ["circle", "star", "square"]  # two prompts: "circle. star." and "square."
    detections = detector.detect(scenes[0].render(), tags)
    assert_well_formed(detections, set(tags))
    assert detector.detect(scenes[0].render(), []) == []


def test_sam_segmenter_runs(sam_dir, scenes):
    from mmpo.methods.adavip.vision_hf_models import SamSegmenter

    scene = scenes[0]
    boxes = [tuple(map(float, o.box)) for o in scene.objects]
    for multimask in (False, True):
        segmenter = SamSegmenter(sam_dir, multimask=multimask, device="cpu")
        assert isinstance(segmenter, Segmenter)
        masks = segmenter.segment(scene.render(), boxes)
        assert len(masks) == len(boxes)
        assert all(m.shape == (64, 64) and m.dtype == bool for m in masks)
    assert segmenter.segment(scene.render(), []) == []


def test_clip_tagger_and_a_chain_of_model_backends(clip_dir, owlv2_dir, sam_dir, scenes):
    from mmpo.methods.adavip.vision_hf_models import OwlV2Detector, SamSegmenter

    scorer = CLIPScorer(clip_dir, device="cpu")
    tagger = CLIPTagger(scorer, SHAPES, template="a {} .", top_k=3)
    tags = tagger.tag(scenes[0].render(), "")
    assert len(tags) == 3 and set(tags) <= set(SHAPES)
    assert CLIPTagger(scorer, SHAPES, template="a {} .", threshold=1.01, top_k=None).tag(scenes[0].render(), "") == []

    pipeline = VisionRejectedPipeline(tagger, OwlV2Detector(owlv2_dir, threshold=0.0, device="cpu"),
                                      SamSegmenter(sam_dir, device="cpu"), TeleaInpainter(), scorer, max_candidates=3)
    built = pipeline.run(scenes[0].render(), scenes[0].description())
    assert built.skipped in (None, *SKIP_REASONS)
    if built.selected is not None:
        assert len(built.candidates) <= 3 and built.rejected.size == (64, 64)


def test_torchscript_inpainter_pads_and_keeps_outside_pixels(tmp_path):
    class GreyStandIn(torch.nn.Module):
        """Stands in for LaMa: fills everything with mid-grey, and checks the padded size."""

        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            assert image.shape[-1] % 8 == 0 and image.shape[-2] % 8 == 0
            return torch.full_like(image, 0.5)

    path = tmp_path / "lama.pt"
    torch.jit.script(GreyStandIn()).save(str(path))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (21, 30, 3), dtype=np.uint8))
    mask = np.zeros((21, 30), dtype=bool)
    mask[5:8, 10:12] = True
    out = np.asarray(TorchScriptInpainter(path, device="cpu", dilate=1).inpaint(image, mask))
    region = dilate_mask(mask, 1)
    assert (out[region] == 128).all()
    np.testing.assert_array_equal(out[~region], np.asarray(image)[~region])


def test_non_max_suppression():
    dets = [Detection("a", (0, 0, 10, 10), 0.9), Detection("a", (1, 1, 10, 10), 0.8),
            Detection("b", (1, 1, 10, 10), 0.7), Detection("a", (20, 20, 30, 30), 0.6),
            Detection("a", (5, 5, 5.5, 9), 0.95)]
    kept = non_max_suppression(dets, iou_threshold=0.5)
    assert [d.score for d in kept] == [0.9, 0.7, 0.6]  # thin box and the same-label overlap dropped
    assert [d.score for d in non_max_suppression(dets, max_per_label=1)] == [0.9, 0.7]


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_runs_on_the_synthetic_world(scenes, clip_dir, tmp_path, capsys):
    from mmpo.cli.vision_rejected import main

    save_records(records_for(scenes[:2], tmp_path), tmp_path / "pairs.jsonl")
    out = tmp_path / "adavip.jsonl"
    argv = ["--input", str(tmp_path / "pairs.jsonl"), "--output", str(out), "--clip", str(clip_dir),
            "--cache-dir", str(tmp_path / "cache"), "--inpainter", "mean", "--contact-sheet",
            str(tmp_path / "sheet.png"), "--no-progress"]
    assert main(argv) == 0
    assert "2 of 2 records built" in capsys.readouterr().out
    assert all(row.get("rejected_image") for row in read_lines(out))
    assert (tmp_path / "sheet.png").exists()


def test_cli_names_a_record_without_its_scene(tmp_path, capsys, scenes):
    from mmpo.cli.vision_rejected import main

    records = records_for(scenes[:2], tmp_path)
    records[1].meta = {}
    save_records(records, tmp_path / "pairs.jsonl")
    argv = ["--input", str(tmp_path / "pairs.jsonl"), "--output", str(tmp_path / "o.jsonl"), "--clip", "unused",
            "--no-progress"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert repr(records[1].id) in error and "meta['scene']" in error
