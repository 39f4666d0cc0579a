"""AdaViP vision-rejected images: remove the object whose absence contradicts the chosen response most.

AdaViP ("AdaViP: Aligning Multi-modal LLMs via Adaptive Vision-enhanced Preference Optimization",
arXiv:2504.15619, section 3.2; ``docs/methods.md``, AdaViP section) keeps the preferred pair ``(I_w, y_w)`` and builds a rejected *image* ``I_l`` for the same chosen response:

1. tag the image -> categories ``t_1..t_n`` (Eq. 5);
2. detect each tag -> boxes (Eq. 6);
3. segment each box -> masks ``m_i`` (Eq. 7);
4. inpaint each mask separately -> candidates ``c_i``, one per object (Eq. 8);
5. split ``y_w`` into sentences ``s_1..s_m`` and score every candidate,
   ``Score_i = sum_j CLIP(c_i, s_j)`` (Eq. 9);
6. ``I_l`` is the candidate with the **lowest** score: removing that object damages the
   description most.

Each stage is a protocol with a model backend and a weight-free one
(:mod:`~mmpo.methods.adavip.vision_steps`, :mod:`~mmpo.methods.adavip.vision_hf_models`,
:mod:`~mmpo.methods.adavip.inpainting`); :class:`VisionRejectedPipeline` chains them for one image
and :func:`build_vision_rejected` runs it over records, resumably, writing PNG files and JSONL.

Departures from the paper: sentences come from the rule splitter by default, not a LLaMA-3
rewrite (pass ``splitter=LLMSplitter(...)`` for the paper's); the weight-free tagger reads the nouns
of the chosen response instead of tagging the image with RAM (``docs/methods.md`` allows it);
candidates whose inpainting changed no pixel are dropped before selection (they remove nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mmpo import progress
from mmpo.io import ResumeJournal, image_reference, load_image, write_png_atomic
from mmpo.methods.adavip.inpainting import Inpainter
from mmpo.methods.adavip.vision_steps import Detection, Detector, Segmenter, Tagger
from mmpo.scoring.clip import ImageTextScorer
from mmpo.scoring.sentences import RuleSplitter, SentenceSplitter
from mmpo.types import PreferenceRecord, refuse_several_images

logger = logging.getLogger(__name__)

__all__ = [
    "SKIP_REASONS",
    "Candidate",
    "Construction",
    "VisionRejectedPipeline",
    "VisionRejectedReport",
    "build_vision_rejected",
    "save_contact_sheet",
    "sentence_sum_scores",
]

#: Why a record got no rejected image, in pipeline order.
NO_TAGS, NO_DETECTIONS, EMPTY_MASKS, UNCHANGED, NO_SENTENCES = (
    "no_tags", "no_detections", "empty_masks", "unchanged", "no_sentences")
SKIP_REASONS: tuple[str, ...] = (NO_TAGS, NO_DETECTIONS, EMPTY_MASKS, UNCHANGED, NO_SENTENCES)
#: Outcome of a record in the progress file: ``"built"`` or ``"skipped:<reason>"``.
BUILT = "built"


# ---------------------------------------------------------------------------------------------
# Selection (Eq. 9)


def sentence_sum_scores(scorer: ImageTextScorer, candidates: Sequence[Any], sentences: Sequence[str]) -> torch.Tensor:
    """AdaViP Eq. 9: ``Score_i = sum_j CLIP(c_i, s_j)``, one score per candidate.

    Args:
        scorer: image-text similarity (the paper: CLIP cosine similarity).
        candidates: the ``C`` candidate images.
        sentences: the ``S`` sentences of the chosen response.

    Returns:
        ``(C,)`` float tensor; the rejected image is the candidate at its ``argmin``.
    """
    if not candidates or not sentences:
        raise ValueError(f"need candidates and sentences, got {len(candidates)} and {len(sentences)}")
    return scorer.score_matrix(list(candidates), list(sentences)).float().sum(dim=1)  # (C, S) -> (C,)


# ---------------------------------------------------------------------------------------------
# One image


@dataclasses.dataclass
class Candidate:
    """One object removed: its detection, its ``(H, W)`` mask, the inpainted image, its Eq. 9 score."""

    detection: Detection
    mask: np.ndarray
    image: Image.Image
    score: float = math.nan


@dataclasses.dataclass
class Construction:
    """What the pipeline made of one image: the candidates and the selected one, or a skip reason."""

    tags: list[str] = dataclasses.field(default_factory=list)
    detections: list[Detection] = dataclasses.field(default_factory=list)
    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    sentences: list[str] = dataclasses.field(default_factory=list)
    selected: int | None = None
    skipped: str | None = None

    @property
    def rejected(self) -> Image.Image:
        """The selected candidate's image (``I_l``)."""
        if self.selected is None:
            raise ValueError(f"no rejected image: skipped ({self.skipped})")
        return self.candidates[self.selected].image

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``meta["adavip"]``."""
        if self.selected is None:
            return {"skipped": self.skipped, "tags": self.tags}
        chosen = self.candidates[self.selected]
        return {
            "removed": chosen.detection.label,
            "box": [round(v, 2) for v in chosen.detection.box],
            "score": chosen.score,
            "tags": self.tags,
            "n_sentences": len(self.sentences),
            "candidates": [{"label": c.detection.label, "box": [round(v, 2) for v in c.detection.box],
                            "detection_score": round(c.detection.score, 4), "score": c.score,
                            "mask_pixels": int(c.mask.sum())} for c in self.candidates],
        }


@dataclasses.dataclass
class VisionRejectedPipeline:
    """The AdaViP construction stages for one image, in order.

    Attributes:
        tagger: categories to remove (e.g. ``NounTagger(SHAPES)``, ``CLIPTagger``).
        detector: boxes of those categories (``AnnotationDetector``, ``OwlV2Detector``, ``GroundingDinoDetector``).
        segmenter: a mask per box (``AnnotationSegmenter``, ``BoxSegmenter``, ``SamSegmenter``).
        inpainter: removes one mask (``TeleaInpainter``, ``MeanFillInpainter``, ``TorchScriptInpainter``).
        scorer: image-text similarity for Eq. 9 (``CLIPScorer``).
        splitter: sentences of the chosen response (default ``RuleSplitter()``; the paper: an LLM rewrite).
        max_candidates: keep at most this many detections, best score first (``None``: all).
        min_mask_pixels: masks with fewer pixels count as empty.
    """

    tagger: Tagger
    detector: Detector
    segmenter: Segmenter
    inpainter: Inpainter
    scorer: ImageTextScorer
    splitter: SentenceSplitter = dataclasses.field(default_factory=RuleSplitter)
    max_candidates: int | None = 8
    min_mask_pixels: int = 1

    def settings(self) -> dict[str, Any]:
        """What a resumed run must match: the stage classes and the limits."""
        return {name: type(getattr(self, name)).__name__
                for name in ("tagger", "detector", "segmenter", "inpainter", "scorer", "splitter")} | {
            "max_candidates": self.max_candidates, "min_mask_pixels": self.min_mask_pixels}

    def run(self, image: Image.Image, response: str) -> Construction:
        """Steps 1-6 on one image (made RGB by :func:`mmpo.io.load_image`) and its chosen response."""
        image = load_image(image)
        out = Construction(tags=list(self.tagger.tag(image, response)))
        if not out.tags:
            return dataclasses.replace(out, skipped=NO_TAGS)
        detections = sorted(self.detector.detect(image, out.tags), key=lambda d: -d.score)
        out.detections = detections[: self.max_candidates] if self.max_candidates is not None else detections
        if not out.detections:
            return dataclasses.replace(out, skipped=NO_DETECTIONS)
        masks = self.segmenter.segment(image, [d.box for d in out.detections])
        if len(masks) != len(out.detections):
            raise ValueError(f"{type(self.segmenter).__name__} returned {len(masks)} masks for "
                             f"{len(out.detections)} boxes")
        kept = [(d, np.asarray(m, dtype=bool)) for d, m in zip(out.detections, masks, strict=True)
                if int(np.count_nonzero(m)) >= self.min_mask_pixels]
        if not kept:
            return dataclasses.replace(out, skipped=EMPTY_MASKS)
        original = np.asarray(image)
        for detection, mask in kept:
            candidate = load_image(self.inpainter.inpaint(image, mask))
            if candidate.size != image.size:
                raise ValueError(f"{type(self.inpainter).__name__} changed the image size "
                                 f"from {image.size} to {candidate.size}")
            if not np.array_equal(np.asarray(candidate), original):
                out.candidates.append(Candidate(detection, mask, candidate))
        if not out.candidates:
            return dataclasses.replace(out, skipped=UNCHANGED)
        out.sentences = [s.text for s in self.splitter.split(response) if s.text.strip()]
        if not out.sentences:
            return dataclasses.replace(out, skipped=NO_SENTENCES)
        scores = sentence_sum_scores(self.scorer, [c.image for c in out.candidates], out.sentences)  # (C,)
        for candidate, score in zip(out.candidates, scores.tolist(), strict=True):
            candidate.score = float(score)
        out.selected = int(torch.argmin(scores))  # the first of equal lowest scores
        return out


# ---------------------------------------------------------------------------------------------
# Many records, on disk


@dataclasses.dataclass
class VisionRejectedReport:
    """What one :func:`build_vision_rejected` call did.

    Attributes:
        out_path: the JSONL file of records.
        total: records given.
        built: records that got a rejected image in this call.
        skipped: records of this call written without one, by reason (:data:`SKIP_REASONS`).
        done_before: records skipped because an earlier (killed) run had already written them.
        repaired_lines: truncated last lines (from a killed run) removed before appending.
        contact_sheet: the contact sheet written, if any.
    """

    out_path: Path
    total: int = 0
    built: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    done_before: int = 0
    repaired_lines: int = 0
    contact_sheet: Path | None = None

    def summary(self) -> str:
        """``"vision-rejected -> out.jsonl: 7 of 10 records built; skipped 2 (no_tags 1, ...); ..."``"""
        n_skipped = sum(self.skipped.values())
        text = f"vision-rejected -> {self.out_path}: {self.built} of {self.total} records built; skipped {n_skipped}"
        if n_skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in self.skipped.items() if count)
            text += f" ({reasons}), written without a rejected image"
        text += f"; {self.done_before} done by an earlier run"
        if self.repaired_lines:
            text += f"; removed {self.repaired_lines} truncated line(s) left by a killed run"
        if self.contact_sheet is not None:
            text += f"; contact sheet {self.contact_sheet}"
        return text


def build_vision_rejected(
    records: Iterable[PreferenceRecord],
    pipeline: VisionRejectedPipeline,
    out_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    contact_sheet: str | os.PathLike | None = None,
    contact_sheet_records: int = 4,
) -> VisionRejectedReport:
    """Give each record an AdaViP rejected image and append it to ``out_path`` (JSONL).

    Every input record yields exactly one output line, in input order:

    * **built** — ``rejected_image`` = the selected candidate, saved as
      ``image_dir/<id>-<hash>.png``; ``meta["adavip"]`` = the removed label, its box and score, and
      every candidate's label, box and Eq. 9 score (:meth:`Construction.describe`);
    * **skipped** — the record unchanged but *without* ``rejected_image`` (an input value is
      dropped), ``meta["adavip"] = {"skipped": reason}``. Training falls back to plain DPO for such
      a record (AdaViP's loss with one rejected sample is DPO), so keeping it loses no language pair.

    Image paths inside ``out_path``'s directory are stored relative to it (``load_records``
    resolves them), others absolute; an in-memory input image is saved as PNG into ``image_dir``.

    Resuming (:class:`mmpo.io.ResumeJournal`): each PNG is written to a temporary file and renamed into place (never half an image);
    then the record is appended as one whole line and fsynced; then ``id`` and outcome go to
    ``out_path + ".progress.jsonl"``, whose first line holds :meth:`VisionRejectedPipeline.settings`.
    Calling again with the same arguments first cuts a truncated last line off either file, then
    skips every record already in the output: nothing is lost, duplicated or left corrupt. A
    resume with other stage classes raises ``ValueError``; an existing output without a progress
    file raises ``FileExistsError``. An exception in a stage propagates (fix it and resume); an
    input image that cannot be read raises ``ValueError`` naming the record (index, id) and the path.

    Args:
        records: the preference records; ids must be set, unique and stable across runs.
        pipeline: the stages.
        out_path: the JSONL file to append to (created with its directory).
        image_dir: where the rejected images go.
        contact_sheet: write a PNG like the paper's Figure 3 for the first ``contact_sheet_records``
            records built by this call (:func:`save_contact_sheet`).
        contact_sheet_records: rows of the contact sheet.

    Returns:
        the counts of this call; ``report.summary()`` for one line.
    """
    records = list(records)
    _check_ids(records)
    out_path = Path(os.path.abspath(out_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = Path(os.path.abspath(image_dir))
    image_dir.mkdir(parents=True, exist_ok=True)

    refuse_several_images(records, "building vision-rejected images")
    report = VisionRejectedReport(out_path=out_path, total=len(records))
    journal = ResumeJournal.open(out_path, pipeline.settings(), writer="build_vision_rejected",
                                 outcome_of=_outcome_of, what="records")
    report.repaired_lines = journal.repaired_lines
    pending = [(index, record) for index, record in enumerate(records) if record.id not in journal.done]
    report.done_before = len(records) - len(pending)
    if report.done_before or report.repaired_lines:
        logger.info("resuming %s: %d of %d records done before", out_path, report.done_before, len(records))

    sheet: list[tuple[str, Image.Image, Construction]] = []
    with journal, progress.bar(total=len(records), initial=report.done_before, desc="vision-rejected") as bar:
        for index, record in pending:
            image = load_image(record.image, f"record #{index} (id {record.id!r})")
            built = pipeline.run(image, record.chosen)
            meta = {**record.meta, "adavip": built.describe()}
            # a file is referenced as it is; an in-memory image is saved as the RGB the stages saw
            image_ref = image_reference(image if isinstance(record.image, Image.Image) else record.image,
                                        out_path.parent, image_dir)
            if built.selected is not None:
                path = write_png_atomic(built.rejected, image_dir / f"{_file_stem(record.id)}.png")
                rejected = image_reference(path, out_path.parent, image_dir)
                outcome = BUILT
                report.built += 1
                if contact_sheet is not None and len(sheet) < contact_sheet_records:
                    sheet.append((str(record.id), image, built))
            else:
                rejected, outcome = None, f"skipped:{built.skipped}"
                report.skipped[built.skipped] = report.skipped.get(built.skipped, 0) + 1
            new = dataclasses.replace(record, image=image_ref, rejected_image=rejected, meta=meta)
            # the record first: a kill before the progress line is repaired from the output on resume
            journal.append([new.to_dict()], [(record.id, outcome)])
            bar.update(1)
    if contact_sheet is not None and sheet:
        report.contact_sheet = save_contact_sheet(sheet, contact_sheet)
    return report


def _check_ids(records: list[PreferenceRecord]) -> None:
    seen: set[str] = set()
    for index, record in enumerate(records):
        if record.id is None or str(record.id) == "":
            raise ValueError(f"record #{index} has no id; resuming matches records by id "
                             "(load_records gives every record one)")
        if record.id in seen:
            raise ValueError(f"record #{index}: duplicate id {record.id!r}")
        seen.add(record.id)


def _file_stem(record_id: str) -> str:
    """A file-name-safe, collision-free stem for a record id: readable part + hash of the id."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(record_id)).strip("._")[:60] or "record"
    return f"{readable}-{hashlib.sha256(str(record_id).encode()).hexdigest()[:8]}"


def _outcome_of(row: dict[str, Any]) -> str:
    """The outcome recorded in an output line."""
    if row.get("rejected_image"):
        return BUILT
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    adavip = meta.get("adavip") if isinstance(meta.get("adavip"), dict) else {}
    return f"skipped:{adavip.get('skipped')}"


# ---------------------------------------------------------------------------------------------
# Contact sheet (the paper's Figure 3)

_SELECTED = (220, 30, 30)
_CAPTION_LINES = 2


def save_contact_sheet(rows: Sequence[tuple[str, Image.Image, Construction]], path: str | os.PathLike,
                       tile: int = 128) -> Path:
    """One row per record: the original, then every candidate with its label and Eq. 9 score
    underneath; the selected candidate (lowest score) has a red frame. Saved atomically as PNG.

    Args:
        rows: ``(record id, original image, construction)`` per row; constructions must be built.
        path: the PNG file.
        tile: each image is scaled (nearest neighbour, aspect kept) to fit ``tile`` x ``tile`` pixels.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    font = ImageFont.load_default()
    line = 12
    pad, caption = 6, _CAPTION_LINES * line + 4
    n_cols = 1 + max(len(c.candidates) for _, _, c in rows)
    cell_w, cell_h = tile + 2 * pad, tile + caption + 2 * pad
    sheet = Image.new("RGB", (n_cols * cell_w, len(rows) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (record_id, original, built) in enumerate(rows):
        cells = [(original, ["original", record_id[:20]], False)]
        cells += [(c.image, [c.detection.label[:20], f"score {c.score:.3f}"], i == built.selected)
                  for i, c in enumerate(built.candidates)]
        for col, (image, text, selected) in enumerate(cells):
            x, y = col * cell_w + pad, r * cell_h + pad
            scale = tile / max(image.size)
            shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.NEAREST)
            sheet.paste(shown, (x, y))
            if selected:
                draw.rectangle((x - 4, y - 4, x + shown.width + 3, y + shown.height + 3), outline=_SELECTED, width=3)
            for k, words in enumerate(text):
                draw.text((x, y + tile + 2 + k * line), words, fill=_SELECTED if selected else (0, 0, 0), font=font)
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png_atomic(sheet, path)
