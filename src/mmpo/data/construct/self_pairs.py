"""RLAIF-V-style self-generated preference pairs: sample, split into claims, judge, pair.

The data ASPO, AdaViP and DAMA train on (RLAIF-V, Yu et al. 2024): responses *sampled from the
model being aligned*, so chosen responses still hold some wrong sentences, pairs vary in how far
apart they are, and labels are as noisy as the labeler. For each ``(image, prompt)`` item:

1. **sample** ``n`` responses from the policy (temperature / top-p; one ``generate`` call per batch);
2. **split** each response into claims with a :class:`~mmpo.scoring.sentences.SentenceSplitter`
   (the rule splitter by default: claims are exact sentence spans, so they line up with the
   sentences ASPO weights);
3. **judge** every claim with a :class:`ClaimJudge` (``correct`` or not, and the judge's
   probability that it is correct when it has one; or *unknown* when the judge could not tell,
   e.g. an unreadable reply);
4. **score** each response by its judged-wrong claims and **pair** responses whose scores differ
   (:class:`PairingRule`: best vs worst by default, or every distinct-score pair).

An unknown verdict is no evidence either way: the claim is dropped when its response is scored
(neither wrong nor right), a response with no known claim is not paired, and the counts are
reported. A run whose judge leaves more than ``max_unknown`` of the claims unknown (20% by default,
checked from :data:`~mmpo.chat_http.MIN_REPLIES_CHECKED` claims on) stops with an error naming the
judge, the counts and an example reply, before that batch is journaled.

Steps 1-3 are the expensive part; :func:`sample_and_judge` journals them per item in a
``*.samples.jsonl`` file (one line per item: every sample, every claim and its verdict) through
:class:`~mmpo.io.ResumeJournal`, so a killed run continues where it stopped. Step 4 is cheap and
deterministic: :func:`pair_samples` turns that file into preference records, and can be rerun with
another :class:`PairingRule` without sampling again. :func:`build_self_pairs` does both.

Every record keeps what it was made from in ``meta["self_pairs"]``: the sample indices, the scores,
and the claims of the chosen and rejected response with their verdicts, so diagnostics (ASPO's
sentence-weight AUC, DAMA's hardness correlation) can use the judge's labels later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from PIL import Image

from mmpo import progress
from mmpo.chat_http import MAX_UNREADABLE, check_unreadable
from mmpo.data.items import check_items
from mmpo.io import ResumeJournal, image_reference, read_jsonl
from mmpo.types import PreferenceRecord, Prompt

logger = logging.getLogger(__name__)

#: ``meta["source"]`` of every record this module writes.
SOURCE = "self-generated"
#: Outcomes of an item in the samples journal.
SAMPLED = "sampled"


# ---------------------------------------------------------------------------------------------
# Judges.


@dataclasses.dataclass(frozen=True)
class ClaimQuery:
    """One claim to judge.

    Attributes:
        image: the item's image (RGB ``PIL.Image``).
        prompt: the item's instruction.
        response: the whole sampled response the claim comes from (context for the judge).
        claim: the claim itself (one sentence of ``response``).
        meta: the item's ``meta`` (e.g. the synthetic scene, which :class:`~mmpo.toyworld.judge.SceneJudge` reads).
        key: a stable name of the claim, ``"ITEM/SAMPLE/CLAIM"`` (seeds a judge's randomness, so a
            resumed run judges the same claim the same way).
    """

    image: Image.Image
    prompt: Prompt
    response: str
    claim: str
    meta: dict[str, Any]
    key: str


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A judge's verdict on one claim.

    Attributes:
        correct: whether the claim is judged true of the image; ``None``: unknown (the judge could
            not tell, e.g. its reply said neither yes nor no): the claim counts neither way.
        p_correct: the judge's probability that it is (``None`` for a judge without one).
        reason: why it was judged wrong, or how (e.g. ``"absent object"``, ``"flipped"``,
            ``"unparsed reply"``); ``None`` when there is nothing to say.
        detail: for an unknown verdict, what the judge said (the start of its reply), for error
            messages; not journaled.
    """

    correct: bool | None
    p_correct: float | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def known(self) -> bool:
        return self.correct is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"correct": None if self.correct is None else bool(self.correct)}
        if self.p_correct is not None:
            out["p"] = round(float(self.p_correct), 6)
        if self.reason:
            out["reason"] = self.reason
        return out


@runtime_checkable
class ClaimJudge(Protocol):
    """Judges claims about images.

    ``judge(queries)`` returns one :class:`Verdict` per query, in order (a judge batches however it
    likes); a judge that cannot tell returns an unknown verdict (``correct=None``) rather than a
    guess. ``describe()`` returns the judge's settings as JSON-ready values: they are part of the
    samples journal's settings (a resume with another judge is refused) and of every record's meta.
    """

    def judge(self, queries: Sequence[ClaimQuery]) -> list[Verdict]: ...

    def describe(self) -> dict[str, Any]: ...


def stable_uniform(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (a hash): the same claim key always draws
    the same number, in any order, batch or run."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


# ---------------------------------------------------------------------------------------------
# Sampling settings and pairing rules.


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled from the policy.

    Attributes:
        n: responses per item (RLAIF-V samples several per instruction; 2 is the least that can
            make a pair).
        temperature: sampling temperature (> 0).
        top_p: nucleus sampling mass in (0, 1].
        max_new_tokens: length limit of a response.
        seed: seeds each batch's sampling (with the batch's first item id), so a run is reproducible.
    """

    n: int = 6
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"n (samples per item) must be an integer >= 2, got {self.n!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PairMode = Literal["best_worst", "all"]
ScoreMode = Literal["wrong_count", "wrong_rate"]
TieBreak = Literal["more_correct", "fewer_claims", "first"]


@dataclasses.dataclass(frozen=True)
class PairingRule:
    """How judged samples become preference pairs.

    A response's **score** is minus its judged-wrong claims (``score="wrong_count"``, RLAIF-V's
    rule), or minus the *fraction* of its claims judged wrong (``"wrong_rate"``, which does not
    favour short answers). Responses are ranked by score, and responses with the same score by
    ``tie_break``:

    * ``"more_correct"`` (default): more correct claims rank higher. With the count score a short
      answer with no claim wrong would otherwise tie a complete one, and the pairs would teach
      the model to say less;
    * ``"fewer_claims"``: shorter ranks higher (penalises padding);
    * ``"first"``: sampling order.

    The tie-break only orders responses inside a score; a pair always joins two *different* scores
    (all equal: the item gives no pair and is reported as ``"tie"``). Identical responses (after
    whitespace normalisation) and responses without any claim are left out before ranking.

    Attributes:
        pairs: ``"best_worst"`` (one pair per item: the top-ranked vs the bottom-ranked response)
            or ``"all"`` (every pair of responses with different scores, better one chosen).
        score: ``"wrong_count"`` or ``"wrong_rate"``.
        tie_break: see above.
        max_length_ratio: drop a pair whose longer response has more than this many times the
            words of the shorter (``None``: no length rule); reported as ``"length"``.
        max_pairs_per_item: with ``pairs="all"``, keep at most this many pairs per item, the
            widest score gaps first (``None``: all).
    """

    pairs: PairMode = "best_worst"
    score: ScoreMode = "wrong_count"
    tie_break: TieBreak = "more_correct"
    max_length_ratio: float | None = None
    max_pairs_per_item: int | None = None

    def __post_init__(self):
        for name, value, allowed in (("pairs", self.pairs, ("best_worst", "all")),
                                     ("score", self.score, ("wrong_count", "wrong_rate")),
                                     ("tie_break", self.tie_break, ("more_correct", "fewer_claims", "first"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.max_length_ratio is not None and not (
                isinstance(self.max_length_ratio, (int, float)) and self.max_length_ratio >= 1):
            raise ValueError(f"max_length_ratio must be >= 1 or None, got {self.max_length_ratio!r}")
        if self.max_pairs_per_item is not None and not (
                isinstance(self.max_pairs_per_item, int) and self.max_pairs_per_item >= 1):
            raise ValueError(f"max_pairs_per_item must be an integer >= 1 or None, got {self.max_pairs_per_item!r}")

    def response_score(self, n_wrong: int, n_claims: int) -> float:
        """The score of a response with ``n_wrong`` of ``n_claims`` claims judged wrong."""
        if self.score == "wrong_count":
            return -float(n_wrong)
        return -n_wrong / n_claims if n_claims else 0.0

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Steps 1-3: sample and judge, journaled.


@dataclasses.dataclass
class SampleReport:
    """What one :func:`sample_and_judge` call did (this call only, not an earlier run's work).

    Attributes:
        samples_path: the samples journal.
        items: items given; ``skipped_done`` of them were finished by an earlier run.
        sampled_items, responses, claims, wrong_claims: this call's counts.
        unknown_claims: claims the judge could not tell (unknown verdicts: dropped, not wrong).
        sample_seconds, judge_seconds: wall time spent generating and judging.
        verdict_reasons: how many claims each judge reason was given for.
    """

    samples_path: Path
    items: int = 0
    skipped_done: int = 0
    repaired_lines: int = 0
    sampled_items: int = 0
    responses: int = 0
    claims: int = 0
    wrong_claims: int = 0
    unknown_claims: int = 0
    sample_seconds: float = 0.0
    judge_seconds: float = 0.0
    verdict_reasons: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def samples_per_second(self) -> float:
        return self.responses / self.sample_seconds if self.sample_seconds else 0.0

    @property
    def claims_per_second(self) -> float:
        return self.claims / self.judge_seconds if self.judge_seconds else 0.0

    def summary(self) -> str:
        known = self.claims - self.unknown_claims
        wrong = self.wrong_claims / known if known else 0.0
        text = (f"sampled {self.responses} responses for {self.sampled_items} of {self.items} items "
                f"({self.samples_per_second:.1f} responses/s); judged {self.claims} claims "
                f"({self.claims_per_second:.1f}/s), {wrong:.1%} of the {known} known wrong, "
                f"{self.unknown_claims} unknown (the judge could not tell; dropped); "
                f"skipped {self.skipped_done} items done by an earlier run")
        if self.verdict_reasons:
            text += "; reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(self.verdict_reasons.items()))
        if self.repaired_lines:
            text += f"; removed {self.repaired_lines} truncated line(s) left by a killed run"
        return text


def samples_path_for(out_path: str | os.PathLike) -> Path:
    """The samples journal of a records file: ``pairs.jsonl`` -> ``pairs.samples.jsonl``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".samples.jsonl")


def sample_and_judge(
    model: Any,
    processor: Any,
    items: Iterable[Sequence[Any]],
    judge: ClaimJudge,
    samples_path: str | os.PathLike,
    *,
    sampling: SamplingSettings | None = None,
    splitter: Any = None,
    batch_size: int = 16,
    image_dir: str | os.PathLike | None = None,
    max_unknown: float = MAX_UNREADABLE,
    max_unknown_setting: str = "max_unknown",
) -> SampleReport:
    """Sample ``sampling.n`` responses per item from ``model``, split them into claims, judge every
    claim with ``judge``, and append one line per item to ``samples_path``.

    A line is ``{"id", "image", "prompt", "meta", "responses": [{"text", "claims": [{"text",
    "start", "end", "correct", "p"?, "reason"?}]}]}``; claims carry their character span in the
    response (``start``/``end``, -1 for a splitter that rewrites sentences). Resumable through
    :class:`~mmpo.io.ResumeJournal`: a rerun with the same settings (sampling, judge, splitter)
    skips the items already written; other settings raise ``ValueError``. A batch's sampling is
    seeded from ``sampling.seed`` and its first item id, so an uninterrupted rerun gives the same
    samples; a resumed run batches the remaining items differently and samples them afresh.

    Args:
        model, processor: a ``generate``-capable VLM (the policy about to be trained) and its processor.
        items: ``(id, image, prompt[, meta])`` tuples (see :func:`check_items`).
        judge: the :class:`ClaimJudge`.
        samples_path: the journal to append to (created with its folder).
        sampling: the sampling settings (default :class:`SamplingSettings`).
        splitter: a sentence splitter (default :class:`~mmpo.scoring.sentences.RuleSplitter`).
        batch_size: items per batch (one generate call of ``batch_size * n`` rows).
        image_dir: where in-memory images are saved as PNG (default ``images/`` next to the journal).
        max_unknown: the largest fraction of this call's claims the judge may leave unknown; past
            it (from :data:`~mmpo.chat_http.MIN_REPLIES_CHECKED` claims on, or when every claim is
            unknown) the run stops before journaling the batch (1 never stops).
        max_unknown_setting: what error messages call ``max_unknown`` (the CLI's option name).

    Raises:
        RuntimeError: too many unknown verdicts (:class:`~mmpo.chat_http.TooManyUnreadable`,
            naming the judge, the counts and an example), or whatever the judge raises.
    """
    import torch

    from mmpo.generation import generate_responses
    from mmpo.scoring.sentences import RuleSplitter

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_unreadable("judge", 0, 0, max_unknown, setting=max_unknown_setting)  # a bad value fails before any work
    sampling = SamplingSettings() if sampling is None else sampling
    splitter = RuleSplitter() if splitter is None else splitter
    samples_path = Path(os.path.abspath(samples_path))
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = samples_path.parent / "images" if image_dir is None else Path(os.path.abspath(image_dir))
    checked = check_items(items)
    settings = {"sampling": sampling.describe(), "judge": judge.describe(), "splitter": type(splitter).__name__}
    journal = ResumeJournal.open(samples_path, settings, writer="sample_and_judge", outcome_of=lambda row: SAMPLED,
                                 what="items")
    report = SampleReport(samples_path=samples_path, items=len(checked), repaired_lines=journal.repaired_lines)
    pending = [item for item in checked if item.id not in journal.done]
    report.skipped_done = len(checked) - len(pending)
    source = judge_name(judge)
    unknown_example: str | None = None
    if report.skipped_done:
        logger.info("resuming %s: %d of %d items done before", samples_path, report.skipped_done, len(checked))

    with journal, progress.bar(total=len(checked), initial=report.skipped_done, desc="self-pairs: sample + judge",
                       unit="item") as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            images = [item.load_image() for item in batch]
            rows_images = [image for image in images for _ in range(sampling.n)]
            rows_prompts = [item.prompt for item in batch for _ in range(sampling.n)]
            began = time.perf_counter()
            with torch.random.fork_rng(devices=[]), progress.bars(False):  # the items' bar above counts them
                torch.manual_seed(int(stable_uniform("self-pairs", sampling.seed, batch[0].id) * 2**62))
                texts = generate_responses(model, processor, rows_images, rows_prompts, batch_size=len(rows_images),
                                           max_new_tokens=sampling.max_new_tokens, do_sample=True,
                                           temperature=sampling.temperature, top_p=sampling.top_p)
            report.sample_seconds += time.perf_counter() - began

            queries, places = [], []  # places[k] = (item position, sample, claim) of queries[k]
            split = []
            for b, item in enumerate(batch):
                per_item = []
                for s in range(sampling.n):
                    text = texts[b * sampling.n + s]
                    spans = splitter.split(text)
                    per_item.append((text, spans))
                    for c, span in enumerate(spans):
                        queries.append(ClaimQuery(images[b], item.prompt, text, span.text, item.meta,
                                                  f"{item.id}/{s}/{c}"))
                        places.append((b, s, c))
                split.append(per_item)
            began = time.perf_counter()
            verdicts = judge.judge(queries) if queries else []
            report.judge_seconds += time.perf_counter() - began
            if len(verdicts) != len(queries):
                raise RuntimeError(f"{type(judge).__name__}.judge returned {len(verdicts)} verdicts for "
                                   f"{len(queries)} claims")
            by_place = dict(zip(places, verdicts, strict=True))

            rows = []
            for b, item in enumerate(batch):
                image = images[b] if isinstance(item.image, Image.Image) else item.image
                responses = []
                for s, (text, spans) in enumerate(split[b]):
                    claims = []
                    for c, span in enumerate(spans):
                        verdict = by_place[(b, s, c)]
                        if not isinstance(verdict, Verdict):
                            raise RuntimeError(f"{type(judge).__name__}.judge returned {type(verdict).__name__}, "
                                               "not a Verdict")
                        claims.append({"text": span.text, "start": span.char_start, "end": span.char_end,
                                       **verdict.to_dict()})
                        report.claims += 1
                        report.wrong_claims += verdict.correct is not None and not verdict.correct
                        if verdict.correct is None:
                            report.unknown_claims += 1
                            if unknown_example is None:
                                unknown_example = verdict.detail or verdict.reason or "(no reply text)"
                        if verdict.reason:
                            report.verdict_reasons[verdict.reason] = report.verdict_reasons.get(verdict.reason, 0) + 1
                    responses.append({"text": text, "claims": claims})
                report.responses += len(responses)
                rows.append({"id": item.id, "image": image_reference(image, samples_path.parent, image_dir),
                             "prompt": item.prompt, "meta": item.meta, "responses": responses})
            check_unreadable(source, report.unknown_claims, report.claims, max_unknown, unknown_example,
                             final=start + batch_size >= len(pending), setting=max_unknown_setting,
                             what="claims got an unknown verdict (a judge reply that said neither yes nor no, or none)")
            journal.append(rows, [(item.id, SAMPLED) for item in batch])
            report.sampled_items += len(batch)
            bar.update(len(batch))
    if report.unknown_claims:
        logger.warning("%s: %d of %d claims got an unknown verdict (the judge could not tell); they are dropped, "
                       "e.g. %r", source, report.unknown_claims, report.claims, unknown_example)
    return report


def judge_name(judge: ClaimJudge) -> str:
    """How messages name ``judge``: ``"judge endpoint URL"`` (as its ``describe()`` shows it,
    redacted) for a judge behind an endpoint, else its ``describe()["judge"]`` or class name."""
    described = judge.describe()
    if described.get("endpoint"):
        return f"judge endpoint {described['endpoint']}"
    return f"judge {described.get('judge') or type(judge).__name__}"


# ---------------------------------------------------------------------------------------------
# Step 4: pair.


@dataclasses.dataclass
class PairReport:
    """What :func:`pair_samples` made of a samples journal.

    Attributes:
        items: items in the journal; ``written`` pairs came from them.
        dropped: items (or, for the length rule, pairs) that gave no pair, by reason: ``"tie"``
            (every usable response scored the same), ``"too_few"`` (fewer than two distinct
            responses with a claim), ``"length"`` (``max_length_ratio``).
        chosen_wrong_rate, rejected_wrong_rate: judged-wrong fraction of the known claims of the
            chosen and of the rejected responses.
        chosen_with_wrong: fraction of chosen responses with at least one judged-wrong claim.
        all_wrong_rate: judged-wrong fraction over every known claim of every sample.
        unknown_claims: claims of every sample with an unknown verdict (dropped from the scores).
        unknown_responses: responses left out because none of their claims has a known verdict.
    """

    out_path: Path | None = None
    items: int = 0
    written: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: {"tie": 0, "too_few": 0, "length": 0})
    chosen_wrong_rate: float = 0.0
    rejected_wrong_rate: float = 0.0
    chosen_with_wrong: float = 0.0
    all_wrong_rate: float = 0.0
    unknown_claims: int = 0
    unknown_responses: int = 0

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.dropped.items())
        text = (f"self-pairs -> {self.out_path}: {self.written} pairs from {self.items} items; dropped ({reasons}); "
                f"judged-wrong claims: chosen {self.chosen_wrong_rate:.1%}, rejected {self.rejected_wrong_rate:.1%}, "
                f"all samples {self.all_wrong_rate:.1%}; chosen with a wrong claim: {self.chosen_with_wrong:.1%}")
        if self.unknown_claims:
            text += (f"; {self.unknown_claims} claims with an unknown verdict left out of the scores "
                     f"({self.unknown_responses} responses had no known claim and were not paired)")
        return text

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["out_path"] = None if self.out_path is None else str(self.out_path)
        return out


def _normalised(text: str) -> str:
    return " ".join(text.split())


def rank_responses(responses: Sequence[dict[str, Any]], rule: PairingRule) -> list[tuple[int, float]]:
    """``(sample index, score)`` of the usable responses, best first.

    Usable: at least one claim with a known verdict, and not a repeat of an earlier sample
    (whitespace-normalised). Claims with an unknown verdict (``"correct": null``) are left out of
    the score and of the correct-claim count: no evidence either way. Order: score descending,
    then ``rule.tie_break``, then sampling order (stable).
    """
    seen: set[str] = set()
    ranked = []
    for index, response in enumerate(responses):
        text, claims = _normalised(response["text"]), response["claims"]
        known = [c for c in claims if c["correct"] is not None]
        if not known or text in seen:
            continue
        seen.add(text)
        n_wrong = sum(c["correct"] is False for c in known)
        score = rule.response_score(n_wrong, len(known))
        if rule.tie_break == "more_correct":
            tie = -(len(known) - n_wrong)
        elif rule.tie_break == "fewer_claims":
            tie = len(claims)
        else:
            tie = 0
        ranked.append((-score, tie, index, score))
    ranked.sort()
    return [(index, score) for _, _, index, score in ranked]


def _claims_meta(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: c[k] for k in ("text", "correct", "p", "reason") if k in c} for c in response["claims"]]


def pair_samples(samples_path: str | os.PathLike, rule: PairingRule | None = None,
                 meta: dict[str, Any] | None = None) -> tuple[list[PreferenceRecord], PairReport]:
    """Preference records from a samples journal (:func:`sample_and_judge`), by ``rule``.

    Record ids: the item id (``best_worst``) or ``ITEM#k`` (``all``). ``meta`` holds the item's meta,
    ``"source": "self-generated"``, ``meta`` given here, and ``"self_pairs"``: ``{"chosen_sample",
    "rejected_sample", "chosen_score", "rejected_score", "chosen_claims", "rejected_claims",
    "n_samples", "rule"}`` (claims as ``{"text", "correct", "p"?, "reason"?}``; ``correct`` is
    ``None`` for an unknown verdict).

    Raises:
        FileNotFoundError: no journal at ``samples_path``.
        ValueError: a journal line that is not a samples row, naming its id.
    """
    rule = PairingRule() if rule is None else rule
    samples_path = Path(samples_path)
    if not samples_path.exists():
        raise FileNotFoundError(f"no samples journal at {samples_path} (run sample_and_judge first)")
    report = PairReport(out_path=None)
    records: list[PreferenceRecord] = []
    claims_total = wrong_total = 0  # known claims
    chosen_claims = chosen_wrong = rejected_claims = rejected_wrong = chosen_any_wrong = 0
    for row in read_jsonl(samples_path):
        if not isinstance(row, dict) or not isinstance(row.get("responses"), list) or "id" not in row:
            raise ValueError(f"{samples_path}: not a samples row (needs 'id' and 'responses'): {str(row)[:200]}")
        report.items += 1
        responses = row["responses"]
        for response in responses:
            unknown = sum(c["correct"] is None for c in response["claims"])
            report.unknown_claims += unknown
            report.unknown_responses += bool(response["claims"]) and unknown == len(response["claims"])
            claims_total += len(response["claims"]) - unknown
            wrong_total += sum(c["correct"] is False for c in response["claims"])
        ranked = rank_responses(responses, rule)
        if len(ranked) < 2:
            report.dropped["too_few"] += 1
            continue
        if ranked[0][1] == ranked[-1][1]:
            report.dropped["tie"] += 1
            continue
        if rule.pairs == "best_worst":
            candidates = [(ranked[0], ranked[-1])]
        else:
            candidates = [(a, b) for a, b in itertools.combinations(ranked, 2) if a[1] > b[1]]
            candidates.sort(key=lambda pair: pair[1][1] - pair[0][1])  # widest gap first (stable)
            if rule.max_pairs_per_item is not None:
                candidates = candidates[:rule.max_pairs_per_item]
        for k, ((win, win_score), (lose, lose_score)) in enumerate(candidates):
            chosen, rejected = responses[win], responses[lose]
            if rule.max_length_ratio is not None:
                lengths = sorted((len(chosen["text"].split()), len(rejected["text"].split())))
                if lengths[1] > rule.max_length_ratio * max(lengths[0], 1):
                    report.dropped["length"] += 1
                    continue
            info = {"chosen_sample": win, "rejected_sample": lose, "chosen_score": win_score,
                    "rejected_score": lose_score, "chosen_claims": _claims_meta(chosen),
                    "rejected_claims": _claims_meta(rejected), "n_samples": len(responses), "rule": rule.describe()}
            record_id = str(row["id"]) if rule.pairs == "best_worst" else f"{row['id']}#{k}"
            records.append(PreferenceRecord(
                image=_absolute(row["image"], samples_path.parent), prompt=row["prompt"], chosen=chosen["text"], rejected=rejected["text"],
                id=record_id, meta={**(row.get("meta") or {}), "source": SOURCE, **(meta or {}), "self_pairs": info},
            ))
            cw = sum(c["correct"] is False for c in chosen["claims"])
            chosen_claims += sum(c["correct"] is not None for c in chosen["claims"])
            chosen_wrong += cw
            chosen_any_wrong += cw > 0
            rejected_claims += sum(c["correct"] is not None for c in rejected["claims"])
            rejected_wrong += sum(c["correct"] is False for c in rejected["claims"])
    report.written = len(records)
    report.chosen_wrong_rate = chosen_wrong / chosen_claims if chosen_claims else 0.0
    report.rejected_wrong_rate = rejected_wrong / rejected_claims if rejected_claims else 0.0
    report.chosen_with_wrong = chosen_any_wrong / len(records) if records else 0.0
    report.all_wrong_rate = wrong_total / claims_total if claims_total else 0.0
    return records, report


def build_self_pairs(
    model: Any,
    processor: Any,
    items: Iterable[Sequence[Any]],
    judge: ClaimJudge,
    out_path: str | os.PathLike,
    *,
    sampling: SamplingSettings | None = None,
    rule: PairingRule | None = None,
    splitter: Any = None,
    batch_size: int = 16,
    image_dir: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
    max_unknown: float = MAX_UNREADABLE,
    max_unknown_setting: str = "max_unknown",
) -> tuple[SampleReport, PairReport]:
    """:func:`sample_and_judge` into ``out_path``'s samples journal (:func:`samples_path_for`), then
    :func:`pair_samples`, saving the records to ``out_path`` (atomically, replacing an older file:
    the journal is what resumes, the records are rebuilt from it)."""
    from mmpo.data.records import save_records

    out_path = Path(os.path.abspath(out_path))
    samples = samples_path_for(out_path)
    image_dir = out_path.parent / "images" if image_dir is None else image_dir
    sample_report = sample_and_judge(model, processor, items, judge, samples, sampling=sampling, splitter=splitter,
                                     batch_size=batch_size, image_dir=image_dir, max_unknown=max_unknown,
                                     max_unknown_setting=max_unknown_setting)
    records, pair_report = pair_samples(samples, rule, meta={"judge": judge.describe(), **(meta or {})})
    save_records(records, out_path)
    pair_report.out_path = out_path
    return sample_report, pair_report


def _absolute(image: Any, base: Path) -> Any:
    if isinstance(image, str) and not os.path.isabs(image):
        return str(base / image)
    return image
