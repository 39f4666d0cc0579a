"""Offline sentence scores: CLIP similarity of every chosen and rejected sentence to its image.

One pass serves two methods:

* ASPO's similarity term ``S_i`` is the score of chosen sentence ``i`` (``chosen_sentence_scores``);
* DAMA's data-aware factor: ``delta`` from the chosen and rejected scores (softmax over their
  concatenation, or the "CLIP Scores" ratio ablation), ``delta_bar`` = its dataset mean (or a given
  number), and ``alpha_D = sigmoid(delta) / sigmoid(delta_bar)`` (``data_alpha``), so training needs
  no CLIP. DAMA uses CLIP as a classifier: the softmax runs over its logits, the cosines times the
  model's logit scale (``dama_scores="logits"``, the default); ``"cosine"`` is the raw-cosine reading,
  under which ``delta`` mostly counts sentences (docs/methods.md).

The stored sentence scores are the cosines (ASPO min-max normalises them per response, so a scale
would change nothing there); ``meta`` keeps ``dama_logit_scale`` and the other settings, so
``alpha_D`` can be recomputed from a record without CLIP.

Scores come from any :class:`~mmpo.scoring.clip.ImageTextScorer`; with a ``CLIPScorer`` cache, a
re-run (after an interruption, or with another DAMA mode) embeds nothing twice. The output file is
written atomically, so it is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmpo import progress

from ...methods.dama import dama_alpha_from_delta, dama_delta
from ...types import PreferenceRecord, refuse_several_images


@dataclass
class ScoreReport:
    """What happened to each record: scored, or skipped with the reason."""

    scored: int = 0
    skipped: list[tuple[int, str | None, str]] = field(default_factory=list)  # (index, id, reason)
    delta_bar: float | None = None
    logit_scale: float | None = None

    def summary(self) -> str:
        lines = [f"scored {self.scored} of {self.scored + len(self.skipped)} records"
                 + (f"; delta_bar = {self.delta_bar:.6f}" if self.delta_bar is not None else "")
                 + (f" (softmax over cosine x {self.logit_scale:g})" if self.logit_scale not in (None, 1.0) else "")]
        lines += [f"  skipped #{i}" + (f" (id {rid!r})" if rid is not None else "") + f": {why}"
                  for i, rid, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def score_sentences(records: Sequence[PreferenceRecord], scorer, splitter, *, dama_mode: str = "softmax",
                    dama_scores: str = "logits", logit_scale: float | None = None, delta_bar: float | None = None,
                    chunk: int = 64) -> tuple[list[PreferenceRecord], ScoreReport]:
    """Score every sentence of every record; returns the scored records and a report.

    A record is skipped (and reported by index and reason) when a response has no sentence or
    its image cannot be read/scored; the others get ``chosen_sentence_scores``,
    ``rejected_sentence_scores`` (cosines), ``data_alpha`` and, in ``meta``, ``dama_delta``,
    ``dama_delta_bar``, ``dama_mode``, ``dama_scores`` and ``dama_logit_scale``.

    Args:
        dama_mode: ``"softmax"`` (paper) or ``"ratio"`` (ablation), see :func:`~mmpo.methods.dama.dama_delta`.
        dama_scores: ``"logits"``: ``delta``'s softmax runs over cosine x ``logit_scale`` (CLIP as a
            classifier, the paper's reading); ``"cosine"``: over the raw cosines.
        logit_scale: the multiplier for ``"logits"``; default the scorer's ``logit_scale`` (a
            :class:`~mmpo.scoring.clip.CLIPScorer`'s ``logit_scale.exp()``).
        delta_bar: the dataset mean of ``delta``; default computed from these records (the authors'
            code hard-codes their dataset's 0.0482190464911681).
    """
    if dama_scores not in ("logits", "cosine"):
        raise ValueError(f"dama_scores must be 'logits' or 'cosine', not {dama_scores!r}")
    scale = 1.0
    if dama_scores == "logits":
        scale = logit_scale if logit_scale is not None else getattr(scorer, "logit_scale", None)
        if scale is None:
            raise ValueError(f"dama_scores='logits' needs CLIP's logit scale: {type(scorer).__name__} has no "
                             "logit_scale; pass logit_scale=... or dama_scores='cosine'")
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"logit_scale must be a finite number > 0, got {scale}")
    if delta_bar is not None and not math.isfinite(delta_bar):
        raise ValueError(f"delta_bar must be a finite number, got {delta_bar}")
    refuse_several_images(records, "scoring sentences against the image")
    report = ScoreReport()
    scored: list[tuple[PreferenceRecord, list[float], list[float]]] = []
    bar = progress.bar(total=len(records), desc="sentence scores", unit="record")
    for start in range(0, len(records), chunk):
        part = list(enumerate(records[start : start + chunk], start))
        pairs: list[tuple[int, object, str]] = []  # (position in part, image, sentence)
        splits = []
        for pos, (index, record) in enumerate(part):
            chosen = [s.text for s in splitter.split(record.chosen)]
            rejected = [s.text for s in splitter.split(record.rejected)]
            if not chosen or not rejected:
                which = "chosen" if not chosen else "rejected"
                report.skipped.append((index, record.id, f"field {which!r}: no sentence to score"))
                splits.append(None)
                continue
            splits.append((chosen, rejected))
            pairs += [(pos, record.image, text) for text in chosen + rejected]
        values = _score_pairs(scorer, pairs, part, report)
        for pos, (_index, record) in enumerate(part):
            if splits[pos] is None or pos not in values:
                continue
            chosen, rejected = splits[pos]
            scores = values[pos]
            scored.append((record, scores[: len(chosen)], scores[len(chosen) :]))
        bar.update(len(part))
    bar.close()

    deltas = [dama_delta(c, r, mode=dama_mode, scale=scale) for _, c, r in scored]
    report.delta_bar = delta_bar if delta_bar is not None else statistics.fmean(deltas) if deltas else None
    report.logit_scale = scale
    out = []
    for (record, c, r), delta in zip(scored, deltas, strict=True):
        meta = {**record.meta, "dama_delta": delta, "dama_delta_bar": report.delta_bar, "dama_mode": dama_mode,
                "dama_scores": dama_scores, "dama_logit_scale": scale}
        out.append(dataclasses.replace(record, chosen_sentence_scores=c, rejected_sentence_scores=r,
                                       data_alpha=dama_alpha_from_delta(delta, report.delta_bar), meta=meta))
    report.scored = len(out)
    return out, report


def _score_pairs(scorer, pairs, part, report: ScoreReport) -> dict[int, list[float]]:
    """Scores per record position; a failing batch is retried record by record to name the culprit."""
    if not pairs:
        return {}
    try:
        flat = scorer.score([p[1] for p in pairs], [p[2] for p in pairs]).tolist()
        grouped: dict[int, list[float]] = {}
        for (pos, _, _), value in zip(pairs, flat, strict=True):
            grouped.setdefault(pos, []).append(float(value))
        return grouped
    except Exception as exc:  # noqa: BLE001 - reported per record below, never swallowed silently
        if len({p[0] for p in pairs}) == 1:
            index, record = part[pairs[0][0]]
            report.skipped.append((index, record.id, f"field 'image': cannot be scored ({type(exc).__name__}: {exc})"))
            return {}
        grouped = {}
        for pos in sorted({p[0] for p in pairs}):
            grouped.update(_score_pairs(scorer, [p for p in pairs if p[0] == pos], part, report))
        return grouped
