"""Offline sentence scores: CLIP similarity of every chosen and rejected sentence to its image.

One pass serves two methods:

* ASPO's similarity term ``S_i`` is the score of chosen sentence ``i`` (``chosen_sentence_scores``);
* DAMA's data-aware factor: ``delta`` from the chosen and rejected scores (softmax over their
  concatenation, or the "CLIP Scores" ratio ablation), ``delta_bar`` = its dataset mean, and
  ``alpha_D = sigmoid(delta) / sigmoid(delta_bar)`` (``data_alpha``), so training needs no CLIP.

Scores come from any :class:`~mmpo.scoring.clip.ImageTextScorer`; with a ``CLIPScorer`` cache, a
re-run (after an interruption, or with another DAMA mode) embeds nothing twice. The output file is
written atomically, so it is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ...losses.dama import dama_alpha_from_delta, dama_delta
from ...types import PreferenceRecord


@dataclass
class ScoreReport:
    """What happened to each record: scored, or skipped with the reason."""

    scored: int = 0
    skipped: list[tuple[int, str | None, str]] = field(default_factory=list)  # (index, id, reason)
    delta_bar: float | None = None

    def summary(self) -> str:
        lines = [f"scored {self.scored} of {self.scored + len(self.skipped)} records"
                 + (f"; delta_bar = {self.delta_bar:.6f}" if self.delta_bar is not None else "")]
        lines += [f"  skipped #{i}" + (f" (id {rid!r})" if rid is not None else "") + f": {why}"
                  for i, rid, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def score_sentences(records: Sequence[PreferenceRecord], scorer, splitter, *, dama_mode: str = "softmax",
                    chunk: int = 64, progress: bool = True) -> tuple[list[PreferenceRecord], ScoreReport]:
    """Score every sentence of every record; returns the scored records and a report.

    A record is skipped (and reported by index and reason) when a response has no sentence or
    its image cannot be read/scored; the others get ``chosen_sentence_scores``,
    ``rejected_sentence_scores``, ``data_alpha`` and, in ``meta``, ``dama_delta`` and
    ``dama_delta_bar``.
    """
    report = ScoreReport()
    scored: list[tuple[PreferenceRecord, list[float], list[float]]] = []
    bar = tqdm(total=len(records), desc="sentence scores", unit="record", disable=not progress)
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

    deltas = [dama_delta(c, r, mode=dama_mode) for _, c, r in scored]
    report.delta_bar = statistics.fmean(deltas) if deltas else None
    out = []
    for (record, c, r), delta in zip(scored, deltas, strict=True):
        meta = {**record.meta, "dama_delta": delta, "dama_delta_bar": report.delta_bar, "dama_mode": dama_mode}
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
