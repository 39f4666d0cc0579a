"""POPE, AMBER and MMHal-Bench (plus CHAIR / Object HalBench, re-exported from ``coco_chair``).

Every benchmark is read from local files in its published format and has two entry points:
``run_<bench>(model, processor, files..., batch_size, max_new_tokens) -> dict`` generates with
:func:`mmpo.evaluation.generation.generate_responses` and then calls ``score_<bench>(predictions,
annotations) -> dict``, which needs no model. Results are flat dicts: scalar metrics (fractions in
``[0, 1]`` unless a name says otherwise) plus a few non-scalar entries (``definitions``,
``predictions``, ...). Every ratio with a zero denominator is ``0.0``.

POPE (Li et al., EMNLP 2023). Files: ``<dataset>_pope_{random,popular,adversarial}.json``, one JSON
object per line: ``{"question_id", "image", "text", "label"}``; answers ``{"question_id",
"text" | "answer"}``. Answers are read with the published rule by default (see
:func:`parse_pope_answer`); ``yes_ratio`` is the share of *predicted* "yes", not of labels.

AMBER (Wang et al., 2023, arXiv:2311.07397). Files: ``data/query/query_*.json`` (a JSON list of
``{"id", "image", "query"}``) and ``data/annotations.json`` (a JSON list; generative entries
``{"id", "type": "generative", "truth": [objects], "hallu": [objects]}``, discriminative entries
``{"id", "type": "discriminative-...", "truth": "yes" | "no"}``); responses ``{"id", "response"}``.
Discriminative types: ``discriminative-hallucination`` (existence; in the published data every
such question is about an absent object, so its truth is always "no"),
``discriminative-attribute-{state,number,action}`` (attribute) and ``discriminative-relation``.
AMBER's precision/recall/F1 take **"no" as the positive class** (:func:`amber_discriminative_metrics`).
AMBER score = ``(100 - CHAIR + F1) / 2`` with CHAIR and F1 in percent (paper, Sec. 3.3).

MMHal-Bench (Sun et al., "Aligning Large Multimodal Models with Factually Augmented RLHF", 2023).
File: ``response_template.json``, a JSON list of ``{"question_type", "question_topic", "image_id",
"image_src", "image_content", "question", "gt_answer", "model_answer"}``. A judge LLM behind an
OpenAI-compatible ``/chat/completions`` endpoint rates each answer 0-6; score = mean rating,
hallucination rate = share of ratings below 3.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from mmpo.evaluation.chair import extract_mentions
from mmpo.evaluation.coco_chair import run_chair, score_chair
from mmpo.evaluation.pope import SPLITS, parse_yes_no, pope_metrics

__all__ = [
    "run_chair", "score_chair",
    "load_pope_questions", "find_pope_files", "parse_pope_answer", "score_pope_split", "score_pope", "run_pope",
    "AMBER_DIMENSIONS", "load_amber_queries", "load_amber_annotations", "load_amber_associations",
    "load_amber_safe_words", "amber_discriminative_metrics", "amber_generative_metrics", "score_amber",
    "run_amber",
    "MMHAL_QUESTION_TYPES", "Judge", "OpenAIChatJudge", "judge_from_config", "load_mmhal_template",
    "mmhal_judge_prompt", "parse_mmhal_rating", "mmhal_metrics", "score_mmhal", "run_mmhal",
]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _read_records(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list, or one JSON object per line (POPE's ``.json`` files are JSON lines)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return data if isinstance(data, list) else [data]


def _require(rows: Sequence[Mapping[str, Any]], keys: Iterable[str], what: str) -> None:
    keys = tuple(keys)
    for row in rows:
        if missing := [k for k in keys if k not in row]:
            raise ValueError(f"{what}: a record lacks {missing}; it has {sorted(row)}")


# --------------------------------------------------------------------------------------------- POPE

def load_pope_questions(path: str | Path) -> list[dict[str, Any]]:
    """One POPE question file: ``{"question_id", "image", "text", "label"}`` per line."""
    rows = _read_records(path)
    _require(rows, ("question_id", "image", "text", "label"), str(path))
    return rows


def find_pope_files(directory: str | Path, dataset: str | None = None) -> dict[str, Path]:
    """``{split: path}`` for the ``<dataset>_pope_<split>.json`` files in ``directory``.

    With ``dataset=None`` any prefix is accepted, but each split must match exactly one file.
    """
    found: dict[str, Path] = {}
    for split in SPLITS:
        matches = sorted(Path(directory).glob(f"{dataset or '*'}_pope_{split}.json"))
        if len(matches) > 1:
            raise ValueError(f"several POPE {split} files in {directory}: {[m.name for m in matches]}; pass dataset=")
        if matches:
            found[split] = matches[0]
    if not found:
        raise FileNotFoundError(f"no *_pope_{{{','.join(SPLITS)}}}.json files in {directory}")
    return found


PopeRule = Literal["pope", "strict"]


def parse_pope_answer(answer: str, rule: PopeRule = "pope") -> Literal["yes", "no"] | None:
    """Read a yes/no answer.

    ``"pope"`` (the published evaluation): keep the text before the first ``"."``, drop commas,
    split on whitespace; the answer is "no" if one of the words is ``no`` or ``not``, otherwise
    "yes" — so an answer that says neither counts as "yes". (The original compares the words
    case-sensitively with ``No``/``no``/``not``; here they are lower-cased first, so ``NOT`` and
    ``Not`` also read as "no".)

    ``"strict"``: :func:`mmpo.evaluation.pope.parse_yes_no` — the first word must be yes or no,
    otherwise ``None`` (counted wrong by :func:`mmpo.evaluation.pope.pope_metrics`).
    """
    if rule == "strict":
        return parse_yes_no(answer)
    if rule != "pope":
        raise ValueError(f"unknown POPE answer rule {rule!r}; use 'pope' or 'strict'")
    words = answer.split(".")[0].replace(",", "").lower().split()
    return "no" if "no" in words or "not" in words else "yes"


def _answer_text(row: Mapping[str, Any]) -> str:
    for key in ("text", "answer", "response"):
        if key in row:
            return str(row[key])
    raise ValueError(f"an answer needs 'text', 'answer' or 'response'; got keys {sorted(row)}")


def score_pope_split(answers: Sequence[Mapping[str, Any]], questions: Sequence[Mapping[str, Any]],
                     rule: PopeRule = "pope") -> dict[str, float]:
    """POPE metrics of one split; answers are matched to questions by ``question_id``.

    Returns :func:`mmpo.evaluation.pope.pope_metrics` (``accuracy``, ``precision``, ``recall``,
    ``f1``, ``yes_ratio``, ``n``, ``unparsed``; "yes" is the positive class; ``yes_ratio`` =
    predicted yes / all questions) plus ``unclear``: answers whose first word is not yes/no (a
    diagnostic under either rule; under ``"pope"`` they were still read as yes or no).
    """
    by_id = {row["question_id"]: _answer_text(row) for row in answers}
    if missing := [q["question_id"] for q in questions if q["question_id"] not in by_id]:
        raise ValueError(f"{len(missing)} POPE questions have no answer, e.g. {missing[:5]}")
    texts = [by_id[q["question_id"]] for q in questions]
    metrics = pope_metrics([q["label"] for q in questions], [parse_pope_answer(t, rule) for t in texts])
    metrics["unclear"] = sum(parse_yes_no(t) is None for t in texts)
    return metrics


_POPE_MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def score_pope(predictions: Mapping[str, Sequence[Mapping[str, Any]]],
               questions: Mapping[str, Sequence[Mapping[str, Any]]], rule: PopeRule = "pope") -> dict[str, Any]:
    """POPE over several splits: ``"<split>/<metric>"`` per split and ``"mean/<metric>"``.

    Args:
        predictions: ``{split: answers}``, each answer ``{"question_id", "text" | "answer"}``.
        questions: ``{split: questions}`` as read by :func:`load_pope_questions`.
        rule: how answers are read (:func:`parse_pope_answer`).

    Returns:
        ``<split>/accuracy|precision|recall|f1|yes_ratio|n|unparsed|unclear`` for every split,
        ``mean/accuracy|precision|recall|f1|yes_ratio`` (unweighted mean over the splits),
        ``definitions``.
    """
    out: dict[str, Any] = {}
    for split, split_questions in questions.items():
        metrics = score_pope_split(predictions[split], split_questions, rule)
        out.update({f"{split}/{k}": v for k, v in metrics.items()})
    for key in _POPE_MEAN_KEYS:
        out[f"mean/{key}"] = _ratio(sum(out[f"{s}/{key}"] for s in questions), len(questions))
    out["definitions"] = {
        "precision": "TP / (TP + FP), 'yes' is the positive class",
        "recall": "TP / (TP + FN)",
        "yes_ratio": "answers read as 'yes' / all questions (from predictions, not labels)",
        "unclear": "answers whose first word is not yes/no",
        "answer_rule": rule,
    }
    return out


def run_pope(model: Any, processor: Any, question_files: Mapping[str, str | Path] | str | Path,
             image_dir: str | Path, *, rule: PopeRule = "pope", prompt_suffix: str = "", limit: int | None = None,
             batch_size: int = 16, max_new_tokens: int = 8, progress: bool = False) -> dict[str, Any]:
    """Answer every POPE question and score the splits with :func:`score_pope`.

    Args:
        question_files: ``{split: path}``, or a directory searched with :func:`find_pope_files`.
        image_dir: folder holding each question's ``image``.
        rule: answer-reading rule (:func:`parse_pope_answer`).
        prompt_suffix: appended to each question (LLaVA-1.5 uses " Answer the question using a
            single word or phrase.").
        limit: only the first ``limit`` questions of each split.

    Returns:
        :func:`score_pope`'s dict plus ``predictions``: ``{split: [{"question_id", "prompt", "text"}]}``.
    """
    from mmpo.evaluation.generation import generate_responses

    if not isinstance(question_files, Mapping):
        question_files = find_pope_files(question_files)
    questions = {split: load_pope_questions(path)[:limit] for split, path in question_files.items()}
    flat = [(split, q) for split, split_questions in questions.items() for q in split_questions]
    prompts = [q["text"] + prompt_suffix for _, q in flat]
    answers = generate_responses(model, processor, [Path(image_dir) / q["image"] for _, q in flat], prompts,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    predictions: dict[str, list[dict[str, Any]]] = {split: [] for split in questions}
    for (split, q), prompt, answer in zip(flat, prompts, answers, strict=True):
        predictions[split].append({"question_id": q["question_id"], "prompt": prompt, "text": answer})
    return {**score_pope(predictions, questions, rule), "predictions": predictions}


# -------------------------------------------------------------------------------------------- AMBER

#: AMBER annotation ``type`` -> dimension.
AMBER_DIMENSIONS: dict[str, str] = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "attribute",
    "discriminative-attribute-number": "attribute",
    "discriminative-attribute-action": "attribute",
    "discriminative-relation": "relation",
}


def load_amber_queries(path: str | Path) -> list[dict[str, Any]]:
    """An AMBER query file: a JSON list of ``{"id", "image", "query"}``."""
    rows = _read_records(path)
    _require(rows, ("id", "image", "query"), str(path))
    return rows


def load_amber_annotations(path: str | Path) -> dict[int, dict[str, Any]]:
    """AMBER's ``annotations.json`` as ``{id: entry}`` (each entry has ``type`` and ``truth``)."""
    rows = _read_records(path)
    _require(rows, ("id", "type", "truth"), str(path))
    return {int(row["id"]): row for row in rows}


def load_amber_associations(path: str | Path) -> dict[str, list[str]]:
    """AMBER's ``relation.json``: ``{object: [associated words]}`` (e.g. ``person -> [man, ...]``)."""
    return {k: list(v) for k, v in json.loads(Path(path).read_text()).items()}


def load_amber_safe_words(path: str | Path) -> set[str]:
    """AMBER's ``safe_words.txt``: one word per line, never counted as a hallucination."""
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def amber_discriminative_metrics(truths: Sequence[str], predictions: Sequence[str | None]) -> dict[str, float]:
    """AMBER's yes/no metrics, with **"no" as the positive class**.

    With ``n`` questions, ``no_hit`` = (truth no, answer no), ``answered_no`` = answers "no",
    ``true_no`` = truths "no"::

        accuracy  = (answer == truth) / n          # an unparsed answer (None) is never correct
        precision = no_hit / answered_no
        recall    = no_hit / true_no
        f1        = 2 * precision * recall / (precision + recall)

    The original computes F1 from precision and recall rounded to 0.1 % with ``+ 1e-4`` in the
    denominator; here it is exact. ``yes_ratio`` (answers "yes" / n) and ``unparsed`` are extra
    diagnostics.
    """
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    if bad := {t for t in truths if t not in ("yes", "no")}:
        raise ValueError(f"AMBER truths must be 'yes' or 'no'; got {sorted(bad)}")
    pairs = Counter(zip(truths, predictions, strict=True))
    n = len(truths)
    no_hit = pairs["no", "no"]
    answered_no = no_hit + pairs["yes", "no"]
    true_no = sum(v for (t, _), v in pairs.items() if t == "no")
    precision, recall = _ratio(no_hit, answered_no), _ratio(no_hit, true_no)
    return {
        "accuracy": _ratio(pairs["yes", "yes"] + no_hit, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(pairs["yes", "yes"] + pairs["no", "yes"], n),
        "n": n,
        "unparsed": pairs["yes", None] + pairs["no", None],
    }


def amber_generative_metrics(responses: Sequence[str], truths: Sequence[Sequence[str]],
                             hallus: Sequence[Sequence[str]], *,
                             associations: Mapping[str, Sequence[str]] | None = None,
                             safe_words: Iterable[str] = ()) -> dict[str, float]:
    """AMBER's CHAIR, Cover, Hal and Cog from the annotated object lists, by word matching.

    Each response's object words are found with :func:`mmpo.evaluation.chair.extract_mentions`
    over the vocabulary ``V`` = every ``truth``/``hallu`` object, plus every key and associated
    word of ``associations`` (AMBER's ``relation.json``). Words in ``safe_words`` are skipped. A
    word is *safe* when it is a ``truth`` object of the image or associated with one; otherwise it
    is a hallucination. Per image, ``truth`` and ``hallu`` are de-duplicated::

        CHAIR = hallucinated word occurrences / object word occurrences
        Cover = truth objects named (or named by an associated word) / truth objects
        Hal   = responses with >= 1 hallucinated word / responses
        Cog   = hallu objects named by a non-safe word / hallu objects

    What differs from AMBER's ``inference.py``: no NLTK POS tagging or WordNet lemmatiser (any
    occurrence of a vocabulary word counts, nouns or not; plurals by simple rules), no spaCy
    similarity fallback (the original also accepts a word whose ``en_core_web_lg`` similarity to a
    truth/hallu word exceeds 0.8), duplicated truth objects count once (the original can never
    cover a duplicate), and one word covers every truth object it names or is associated with
    (the original marks only the first in its list).
    """
    associations = associations or {}
    safe_words = set(safe_words)
    vocabulary = {w for objects in (*truths, *hallus) for w in objects}
    vocabulary |= set(associations) | {w for words in associations.values() for w in words}
    vocabulary_list = sorted(vocabulary)

    def names_of(obj: str) -> set[str]:
        return {obj, *associations.get(obj, ())}

    n_words = n_bad = n_bad_responses = n_truth = n_covered = n_hallu = n_cog = 0
    for response, truth, hallu in zip(responses, truths, hallus, strict=True):
        words = [w for w in extract_mentions(response, vocabulary_list) if w not in safe_words]
        truth, hallu = set(truth), set(hallu)
        safe = set().union(*(names_of(t) for t in truth))
        bad = [w for w in words if w not in safe]
        n_words += len(words)
        n_bad += len(bad)
        n_bad_responses += bool(bad)
        n_truth += len(truth)
        n_covered += sum(bool(names_of(t) & set(words)) for t in truth)
        n_hallu += len(hallu)
        n_cog += sum(bool(names_of(h) & set(bad)) for h in hallu)
    return {
        "chair": _ratio(n_bad, n_words),
        "cover": _ratio(n_covered, n_truth),
        "hal": _ratio(n_bad_responses, len(responses)),
        "cog": _ratio(n_cog, n_hallu),
        "n": len(responses),
        "n_object_words": n_words,
    }


def score_amber(predictions: Sequence[Mapping[str, Any]], annotations: Mapping[int, Mapping[str, Any]], *,
                associations: Mapping[str, Sequence[str]] | None = None,
                safe_words: Iterable[str] = ()) -> dict[str, Any]:
    """Score AMBER responses ``[{"id", "response"}]`` against ``annotations`` (``{id: entry}``).

    Returns (only the parts whose questions are present):
        ``generative/chair|cover|hal|cog|n|n_object_words`` (:func:`amber_generative_metrics`);
        ``discriminative/accuracy|precision|recall|f1|yes_ratio|n|unparsed`` over all yes/no
        questions, the same under ``existence/``, ``attribute/``, ``relation/`` and per attribute
        type (``attribute_state/``, ``attribute_number/``, ``attribute_action/``)
        (:func:`amber_discriminative_metrics`, "no" positive);
        ``amber_score`` = ``(100 - 100 * generative/chair + 100 * discriminative/f1) / 2`` — **in
        percent**, when both tasks are present; ``definitions``.
    """
    generative: list[tuple[str, Mapping[str, Any]]] = []
    discriminative: dict[str, list[tuple[str, str | None]]] = {}
    for row in predictions:
        entry = annotations.get(int(row["id"]))
        if entry is None:
            raise ValueError(f"AMBER response id {row['id']!r} is not in the annotations")
        if entry["type"] == "generative":
            generative.append((str(row["response"]), entry))
            continue
        pair = (entry["truth"], parse_yes_no(str(row["response"])))
        # like AMBER's inference.py, any other discriminative type counts as relation
        groups = ["discriminative", AMBER_DIMENSIONS.get(entry["type"], "relation")]
        if entry["type"].startswith("discriminative-attribute-"):
            groups.append("attribute_" + entry["type"].rsplit("-", 1)[1])
        for group in groups:
            discriminative.setdefault(group, []).append(pair)

    out: dict[str, Any] = {}
    if generative:
        metrics = amber_generative_metrics([r for r, _ in generative], [e["truth"] for _, e in generative],
                                           [e.get("hallu", []) for _, e in generative],
                                           associations=associations, safe_words=safe_words)
        out.update({f"generative/{k}": v for k, v in metrics.items()})
    for group in ("discriminative", "existence", "attribute", "relation", "attribute_state", "attribute_number",
                  "attribute_action"):
        if group in discriminative:
            truths, answers = zip(*discriminative[group], strict=True)
            out.update({f"{group}/{k}": v for k, v in amber_discriminative_metrics(truths, answers).items()})
    if generative and "discriminative" in discriminative:
        out["amber_score"] = (100 - 100 * out["generative/chair"] + 100 * out["discriminative/f1"]) / 2
    out["definitions"] = {
        "generative/chair": "hallucinated object-word occurrences / object-word occurrences",
        "generative/cover": "truth objects mentioned / truth objects",
        "generative/hal": "responses with >= 1 hallucinated object word / responses",
        "generative/cog": "annotated 'hallu' objects mentioned / 'hallu' objects",
        "discriminative/precision": "answered no and truly no / answered no ('no' is the positive class)",
        "discriminative/recall": "answered no and truly no / truly no",
        "amber_score": "(100 - CHAIR% + F1%) / 2, in percent",
    }
    return out


def run_amber(model: Any, processor: Any, queries: str | Path, annotations: str | Path, image_dir: str | Path, *,
              associations: str | Path | None = None, safe_words: str | Path | None = None,
              limit: int | None = None, yes_no_suffix: str = "", batch_size: int = 8, max_new_tokens: int = 256,
              yes_no_max_new_tokens: int = 8, progress: bool = False) -> dict[str, Any]:
    """Answer AMBER queries and score them with :func:`score_amber`.

    Args:
        queries: a query file (``query_all.json`` or any ``query_*.json``).
        annotations: ``annotations.json``.
        image_dir: folder holding each query's ``image``.
        associations, safe_words: optional ``relation.json`` / ``safe_words.txt``.
        limit: only the first ``limit`` generative and the first ``limit`` discriminative queries.
        yes_no_suffix: appended to discriminative queries.
        max_new_tokens: description length; ``yes_no_max_new_tokens``: yes/no answer length.

    Returns:
        :func:`score_amber`'s dict plus ``predictions``: ``[{"id", "response"}]`` (AMBER's format).
    """
    from mmpo.evaluation.generation import generate_responses

    entries = load_amber_annotations(annotations)
    rows = load_amber_queries(queries)
    generative = [q for q in rows if entries[int(q["id"])]["type"] == "generative"][:limit]
    yes_no = [q for q in rows if entries[int(q["id"])]["type"] != "generative"][:limit]
    predictions = []
    for group, suffix, length in ((generative, "", max_new_tokens), (yes_no, yes_no_suffix, yes_no_max_new_tokens)):
        if group:
            answers = generate_responses(model, processor, [Path(image_dir) / q["image"] for q in group],
                                         [q["query"] + suffix for q in group], batch_size=batch_size,
                                         max_new_tokens=length, progress=progress)
            predictions += [{"id": q["id"], "response": a} for q, a in zip(group, answers, strict=True)]
    predictions.sort(key=lambda p: int(p["id"]))
    scores = score_amber(predictions, entries,
                         associations=load_amber_associations(associations) if associations else None,
                         safe_words=load_amber_safe_words(safe_words) if safe_words else ())
    return {**scores, "predictions": predictions}


# ---------------------------------------------------------------------------------------- MMHal-Bench

#: MMHal-Bench's eight question types (the published file cycles through them in this order).
MMHAL_QUESTION_TYPES: tuple[str, ...] = ("attribute", "adversarial", "comparison", "counting", "relation",
                                         "environment", "holistic", "other")


class Judge(Protocol):
    """Anything that answers a prompt with text (a chat LLM behind an API, or a test double)."""

    def __call__(self, prompt: str) -> str: ...


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Makes every HTTP redirect (301, 302, 303, 307, 308) an error instead of following it:
    ``urllib`` would resend the ``Authorization`` header to wherever ``Location`` points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        raise RuntimeError(f"judge endpoint {req.full_url} redirected (HTTP {code}) to {newurl}; refusing to "
                           "follow (the API key is sent only to the configured endpoint)")


@dataclass
class OpenAIChatJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint, called with ``urllib`` only.

    Redirects are never followed (a redirect raises ``RuntimeError`` naming its target), so the
    API key goes to the configured endpoint and nowhere else, and no other host's rating is read.

    Attributes:
        url: the endpoint, or its base (``.../v1``); ``/chat/completions`` is appended when missing.
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        model: the ``model`` field of the request.
        temperature, max_tokens: sampling settings of the request.
        timeout: seconds per HTTP request.
        max_retries: extra attempts after a network error, a 429 or a 5xx (waits ``retry_wait *
            2**attempt`` seconds in between); other HTTP errors are raised at once.
    """

    url: str
    api_key: str | None = None
    model: str = "gpt-4"
    temperature: float = 0.0
    max_tokens: int = 512
    timeout: float = 60.0
    max_retries: int = 3
    retry_wait: float = 1.0

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def __call__(self, prompt: str) -> str:
        body = json.dumps({
            "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": "You are a careful, impartial evaluator."},
                         {"role": "user", "content": prompt}],
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        opener = urllib.request.build_opener(_RefuseRedirects)
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
                return _chat_content(raw, self.endpoint)
            except urllib.error.HTTPError as error:
                error.close()
                if (error.code != 429 and error.code < 500) or attempt == self.max_retries:
                    raise RuntimeError(f"judge request failed: HTTP {error.code} from {self.endpoint}") from error
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.max_retries:
                    raise RuntimeError(f"judge request failed after {attempt + 1} attempts: {error}") from error
            time.sleep(self.retry_wait * 2**attempt)
        raise AssertionError("unreachable")


def _chat_content(raw: bytes, endpoint: str) -> str:
    """The first choice's message content of a chat completions reply; RuntimeError otherwise."""
    try:
        return str(json.loads(raw.decode())["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise RuntimeError(f"judge endpoint {endpoint} sent no chat completion ({type(error).__name__}: "
                           f"{error}); reply starts {raw[:200]!r}") from error


def judge_from_config(config: Mapping[str, Any] | None = None, *, url: str | None = None,
                      api_key: str | None = None, model: str | None = None) -> OpenAIChatJudge:
    """An :class:`OpenAIChatJudge`; each setting from the argument, else ``config`` (keys ``url``,
    ``api_key``, ``model``, and any other field), else the environment (``MMPO_JUDGE_URL``,
    ``MMPO_JUDGE_API_KEY``, ``MMPO_JUDGE_MODEL``)."""
    rest = dict(config or {})
    from_config = {key: rest.pop(key, None) for key in ("url", "api_key", "model")}
    url = url or from_config["url"] or os.environ.get("MMPO_JUDGE_URL")
    api_key = api_key or from_config["api_key"] or os.environ.get("MMPO_JUDGE_API_KEY")
    model = model or from_config["model"] or os.environ.get("MMPO_JUDGE_MODEL") or "gpt-4"
    if not url:
        raise ValueError("no judge URL: pass url=, set 'url' in the judge config, or set MMPO_JUDGE_URL")
    return OpenAIChatJudge(url=url, api_key=api_key, model=model, **rest)


def load_mmhal_template(path: str | Path) -> list[dict[str, Any]]:
    """MMHal-Bench's ``response_template.json`` (or a response file in the same format)."""
    rows = _read_records(path)
    _require(rows, ("question_type", "image_src", "question", "gt_answer"), str(path))
    return rows


def mmhal_judge_prompt(record: Mapping[str, Any]) -> str:
    """The judge prompt for one answered MMHal-Bench record (the project's own wording of the
    benchmark's 0-6 rubric; the original prompt adds worked examples, so scores from the two
    prompts are close but not identical)."""
    contents = ", ".join(record.get("image_content") or []) or "(not listed)"
    return (
        "You will grade the answer of an image-understanding assistant. You cannot see the image; "
        "rely on the listed image contents and the reference answer written by a person who saw it.\n"
        "A hallucination is any claim about the image that the contents or the reference answer "
        "contradict or do not support. Judge informativeness by how fully the answer addresses the "
        "question.\n\n"
        f"Image contents: {contents}\n"
        f"Question: {record['question']}\n"
        f"Reference answer: {record['gt_answer']}\n"
        f"Assistant's answer: {record.get('model_answer', '')}\n\n"
        "Rate the assistant's answer on this scale:\n"
        "6 - no hallucination; very informative, with sound analysis or reasoning\n"
        "5 - no hallucination; very informative\n"
        "4 - no hallucination; somewhat informative\n"
        "3 - no hallucination; not informative\n"
        "2 - hallucination; very informative\n"
        "1 - hallucination; somewhat informative\n"
        "0 - hallucination; not informative\n\n"
        "Explain briefly, then end with a last line of the form 'Rating: N' where N is 0 to 6."
    )


_RATING = re.compile(r"rating\s*:\s*\**\s*([0-6])(?![0-9])", re.IGNORECASE)


def parse_mmhal_rating(reply: str) -> int | None:
    """The 0-6 rating in a judge reply (``"... Rating: 5"``); ``None`` when no rating or several
    different ratings are found (the published evaluation then scores 0; so does :func:`mmhal_metrics`)."""
    found = {int(m) for m in _RATING.findall(reply)}
    return found.pop() if len(found) == 1 else None


def mmhal_metrics(ratings: Sequence[int | None], question_types: Sequence[str]) -> dict[str, float]:
    """MMHal-Bench's summary of judge ratings (``None`` = unparsed, scored 0 as in the original).

    ``average_score`` = mean rating; ``hallucination_rate`` = ratings < 3 / all ratings (a rating
    of 0-2 means the judge found a hallucination); ``score/<type>`` = mean rating per question
    type (from each record's ``question_type``, not from its position as the original assumes);
    ``n``; ``unparsed``.
    """
    if len(ratings) != len(question_types):
        raise ValueError(f"{len(ratings)} ratings but {len(question_types)} question types")
    scores = [0 if r is None else r for r in ratings]
    out: dict[str, float] = {
        "average_score": _ratio(sum(scores), len(scores)),
        "hallucination_rate": _ratio(sum(s < 3 for s in scores), len(scores)),
        "n": len(scores),
        "unparsed": sum(r is None for r in ratings),
    }
    types = [t for t in MMHAL_QUESTION_TYPES if t in question_types]
    types += sorted(set(question_types) - set(types))
    for t in types:
        of_type = [s for s, q in zip(scores, question_types, strict=True) if q == t]
        out[f"score/{t}"] = _ratio(sum(of_type), len(of_type))
    return out


def score_mmhal(responses: Sequence[Mapping[str, Any]], judge: Judge) -> dict[str, Any]:
    """Judge each answered record (the template with ``model_answer`` filled in) and summarise.

    Returns:
        :func:`mmhal_metrics` plus ``reviews``: ``[{"question_type", "rating", "review"}]``.
    """
    reviews = []
    for record in responses:
        reply = judge(mmhal_judge_prompt(record))
        reviews.append({"question_type": record["question_type"], "rating": parse_mmhal_rating(reply),
                        "review": reply})
    metrics = mmhal_metrics([r["rating"] for r in reviews], [r["question_type"] for r in reviews])
    return {**metrics, "reviews": reviews, "definitions": {
        "average_score": "mean judge rating (0-6; unparsed ratings count 0)",
        "hallucination_rate": "ratings < 3 / all ratings",
    }}


def _mmhal_image(record: Mapping[str, Any], image_dir: str | Path) -> Path:
    """The local image: ``image_path`` if given, else the file name of ``image_src`` in ``image_dir``."""
    name = record.get("image_path") or str(record["image_src"]).rstrip("/").rsplit("/", 1)[-1]
    return Path(image_dir) / name


def run_mmhal(model: Any, processor: Any, template: str | Path, image_dir: str | Path, judge: Judge, *,
              limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 256,
              progress: bool = False) -> dict[str, Any]:
    """Answer MMHal-Bench's questions, have ``judge`` rate them, and summarise (:func:`score_mmhal`).

    Images are looked up in ``image_dir`` by the file name at the end of each ``image_src`` URL
    (or by an ``image_path`` field). Returns the scores plus ``predictions``: the template records
    with ``model_answer`` filled in (MMHal-Bench's response format).
    """
    from mmpo.evaluation.generation import generate_responses

    records = load_mmhal_template(template)[:limit]
    answers = generate_responses(model, processor, [_mmhal_image(r, image_dir) for r in records],
                                 [r["question"] for r in records], batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, progress=progress)
    answered = [{**r, "model_answer": a} for r, a in zip(records, answers, strict=True)]
    return {**score_mmhal(answered, judge), "predictions": answered}
