"""POPE: polling-based object probing with yes/no questions, scored like the reference scorers.

Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP 2023, Sec. 4.
Each image is asked "Is there a <object> in the image?" about objects present (label ``yes``) and
as many absent ones (label ``no``), the absent ones drawn three ways (``random``, ``popular``,
``adversarial``); one label file per split. The reference scorers are AoiDragon/POPE
``evaluate.py`` and LLaVA ``llava/eval/eval_pope.py`` (commits in
``tests/fixtures/reference/pope/README.md``); they read answers with the same rule
(:func:`parse_pope_answer`) and compute the same metrics (:func:`pope_metrics`).

Files:

* label file ``<dataset>_pope_<split>.json``: JSON lines ``{"question_id", "image", "text", "label"}``;
* answers, either AoiDragon's ``{"question", "answer"}`` lines (line *k* answers line *k* of the
  label file) or LLaVA's ``{"question_id", "text", ...}`` lines (:func:`load_pope_predictions`).

Deviations from the reference, each visible in the result:

* ``parsing="lenient"`` and ``parsing="strict"`` are mmpo's older readings of an answer (see
  :func:`parse_pope_answer`); the default ``"reference"`` is the published rule.
* A zero denominator gives ``0.0`` (:func:`mmpo.evaluation.common.ratio`); the references raise
  ``ZeroDivisionError`` (e.g. a split where the model never says "yes").
* A label other than ``yes``/``no`` raises ``ValueError``; the references read any label other
  than ``no`` as positive.

The synthetic world's question builder lives in :mod:`mmpo.toyworld.pope`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mmpo.evaluation.common import ratio, read_records, require_fields

__all__ = [
    "SPLITS", "Split", "PopeParsing", "POPE_RATES",
    "load_pope_questions", "find_pope_files", "load_pope_predictions",
    "parse_pope_answer", "parse_yes_no", "pope_metrics", "pope_summary_line", "score_pope", "run_pope",
]

Split = Literal["random", "popular", "adversarial"]
SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")

#: ``"reference"``: the published rule; ``"lenient"``: mmpo's old case-insensitive reading;
#: ``"strict"``: the first word must be yes or no, else unparsed.
PopeParsing = Literal["reference", "lenient", "strict"]
_PARSINGS: tuple[str, ...] = ("reference", "lenient", "strict")

#: The five rates of a split, averaged over splits under ``"mean"``.
POPE_RATES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "yes_ratio")

_LABEL_FIELDS = ("question_id", "image", "text", "label")


# -------------------------------------------------------------------------------------------- files

def load_pope_questions(path: str | Path) -> list[dict[str, Any]]:
    """One POPE label file: ``{"question_id", "image", "text", "label"}`` per line."""
    rows = read_records(path, "POPE label")
    require_fields(rows, _LABEL_FIELDS, f"POPE label file {path}")
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


def _answer_format(row: Any) -> tuple[str, str] | None:
    """``("by_id", key)`` for a LLaVA-style answer (``question_id`` plus ``text``, or mmpo's older
    ``answer``/``response``), ``("by_position", "answer")`` for AoiDragon's ``{"question", "answer"}``,
    ``None`` for anything else."""
    if not isinstance(row, Mapping):
        return None
    if "question_id" in row:
        key = next((k for k in ("text", "answer", "response") if k in row), None)
        return ("by_id", key) if key else None
    return ("by_position", "answer") if "answer" in row else None


def _split_of(path: Path) -> str | None:
    match = re.search(r"_pope_([A-Za-z]+)\.json$", path.name)
    return match.group(1) if match else None


def load_pope_predictions(path: str | Path, labels: str | Path | Sequence[Mapping[str, Any]], *,
                          questions: str | Path | Sequence[Mapping[str, Any]] | None = None,
                          split: str | None = None) -> list[str]:
    """The answer text of every label line, read from an answers file of either reference.

    The format is detected from the file (every line must be of the same one):

    * AoiDragon ``{"question", "answer"}``: line *k* answers label line *k*, as AoiDragon pairs
      them; the two files must have the same number of lines.
    * LLaVA ``{"question_id", "text", ...}`` (also ``"answer"``/``"response"`` instead of
      ``"text"``): each label line gets the answer with its ``question_id``; answers to other
      questions are ignored, so one answers file may cover every split. LLaVA's ``eval_pope.py``
      instead pairs by position the answers whose question (in its question file) has
      ``category == split``; for answers written in question order the two agree. Passing that
      question file as ``questions`` reproduces LLaVA's pairing exactly.

    Args:
        path: the answers file (JSON lines, or a JSON list).
        labels: the split's label file, or its rows (:func:`load_pope_questions`).
        questions: LLaVA's question file (``{"question_id", ..., "category"}`` lines) or its rows;
            only for LLaVA-style answers.
        split: the split of ``labels`` for ``questions``; by default read from the label file's
            name (``*_pope_<split>.json``).

    Returns:
        One answer string per label line, in label order.
    """
    path = Path(path)
    if isinstance(labels, (str, Path)):
        label_name, label_path = f"label file {labels}", Path(labels)
        labels = load_pope_questions(labels)
    else:
        label_name, label_path = "the given labels", None
    rows = read_records(path, "POPE answers")
    formats = []
    for index, row in enumerate(rows):
        found = _answer_format(row)
        if found is None:
            keys = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(f"POPE answers file {path}, record {index + 1}: neither AoiDragon's "
                             f"{{'question', 'answer'}} nor LLaVA's {{'question_id', 'text'}}; it has {keys}")
        if formats and found[0] != formats[0][0]:
            raise ValueError(f"POPE answers file {path} mixes formats: record 1 is {formats[0][0]!r}, "
                             f"record {index + 1} is {found[0]!r}")
        formats.append(found)
        if not isinstance(row[found[1]], str):
            raise ValueError(f"POPE answers file {path}, record {index + 1}: {found[1]!r} is not a string")
    texts = [row[key] for row, (_, key) in zip(rows, formats, strict=True)]

    if not formats or formats[0][0] == "by_position":
        if questions is not None:
            raise ValueError(f"POPE answers file {path} is AoiDragon's format; questions= is for LLaVA's")
        if len(texts) != len(labels):
            raise ValueError(f"POPE answers file {path} has {len(texts)} answers but {label_name} has "
                             f"{len(labels)} questions; AoiDragon's format pairs them line by line")
        return texts

    if questions is not None:
        if isinstance(questions, (str, Path)):
            question_name, questions = str(questions), read_records(questions, "LLaVA POPE question")
        else:
            question_name = "the given questions"
        require_fields(questions, ("question_id", "category"), f"LLaVA POPE question file {question_name}")
        split = split or (_split_of(label_path) if label_path else None)
        if split is None:
            raise ValueError(f"pass split= to pair {path} with {label_name} through {question_name}")
        category = {q["question_id"]: q["category"] for q in questions}
        if missing := [r["question_id"] for r in rows if r["question_id"] not in category]:
            raise ValueError(f"POPE answers file {path}: {len(missing)} answers' question_id are not in "
                             f"{question_name}, e.g. {missing[:5]}")
        picked = [t for row, t in zip(rows, texts, strict=True) if category[row["question_id"]] == split]
        if len(picked) != len(labels):
            raise ValueError(f"POPE answers file {path} has {len(picked)} answers of category {split!r} but "
                             f"{label_name} has {len(labels)} questions")
        return picked

    by_id: dict[Any, str] = {}
    prompts: dict[Any, str] = {}
    for index, (row, text) in enumerate(zip(rows, texts, strict=True)):
        if row["question_id"] in by_id:
            raise ValueError(f"POPE answers file {path}, record {index + 1}: question_id "
                             f"{row['question_id']!r} answered twice")
        by_id[row["question_id"]] = text
        if isinstance(row.get("prompt"), str):
            prompts[row["question_id"]] = row["prompt"]
    require_fields(labels, ("question_id",), label_name)
    # LLaVA numbers its question file afresh (ids unique over all splits) while each POPE label
    # file numbers its own questions, so equal ids can name different questions: where an answer
    # carries its prompt, it must be the label's question.
    for q in labels:
        prompt = prompts.get(q["question_id"])
        if prompt is not None and isinstance(q.get("text"), str) and q["text"].strip() not in prompt:
            raise ValueError(f"POPE answers file {path}: the answer with question_id {q['question_id']!r} was "
                             f"asked {prompt[:80]!r}, but in {label_name} that id is {q['text'][:80]!r}; "
                             "the ids do not correspond. Pair through LLaVA's question file instead "
                             "(questions=, mmpo evaluate --pope-questions FILE)")
    if missing := [q["question_id"] for q in labels if q["question_id"] not in by_id]:
        raise ValueError(f"{len(missing)} questions of {label_name} have no answer in {path}, "
                         f"e.g. question_id {missing[:5]}")
    return [by_id[q["question_id"]] for q in labels]


# ------------------------------------------------------------------------------------------ parsing

_FIRST_WORD = re.compile(r"^[^a-z]*([a-z]+)")


def parse_yes_no(answer: str) -> Literal["yes", "no"] | None:
    """``"yes"`` or ``"no"`` when the answer's first word is exactly that word, else ``None``.

    Case and leading punctuation/whitespace are ignored: ``"Yes."``, ``" yes , there is"`` -> yes;
    ``"no, there is not"``, ``"No"`` -> no; ``"there is a circle"``, ``"yesterday"``, ``""`` -> None.
    Only the first word is read, so ``"no . yes ."`` is no. This is ``parsing="strict"`` of
    :func:`parse_pope_answer`, a deviation from the reference rule.
    """
    match = _FIRST_WORD.match(answer.lower())
    if match is None:
        return None
    word = match.group(1)
    return word if word in ("yes", "no") else None  # type: ignore[return-value]


def parse_pope_answer(answer: str, parsing: PopeParsing = "reference") -> Literal["yes", "no"] | None:
    """Read a yes/no answer.

    ``"reference"`` (AoiDragon and LLaVA, identical): (1) keep the text before the first ``"."``,
    (2) delete every ``","``, (3) split on the single space ``" "`` (tabs and newlines are not
    separators; repeated spaces give empty pieces). The answer is "no" when a piece is exactly
    ``No``, ``not`` or ``no`` (case-sensitive), otherwise "yes" — including empty and hedged
    answers. So ``"There is no cat."``, ``"yes, but not clearly"`` -> no; ``"NO"``, ``"Not at all."``,
    ``"No!"``, ``"No\\n"``, ``"no,there is none"`` (comma deletion gives ``nothere``), ``""`` -> yes.

    ``"lenient"`` (mmpo's earlier reading, a deviation): the same steps, but lower-cased and split
    on any whitespace, so ``"NOT"``, ``"Not at all."`` and ``"No\\n"`` read as no.

    ``"strict"`` (a deviation): :func:`parse_yes_no` — the first word must be yes or no, otherwise
    ``None`` (counted wrong by :func:`pope_metrics`).
    """
    if parsing == "reference":
        pieces = answer.split(".")[0].replace(",", "").split(" ")
        return "no" if any(p in ("No", "not", "no") for p in pieces) else "yes"
    if parsing == "lenient":
        words = answer.split(".")[0].replace(",", "").lower().split()
        return "no" if "no" in words or "not" in words else "yes"
    if parsing == "strict":
        return parse_yes_no(answer)
    raise ValueError(f"unknown POPE parsing {parsing!r}; use one of {_PARSINGS}")


# ------------------------------------------------------------------------------------------ metrics

def pope_metrics(labels: Sequence[str], predictions: Sequence[str | None]) -> dict[str, Any]:
    """The references' POPE metrics of one split, "yes" being the positive class.

    With ``TP`` = (label yes, read yes), ``FP`` = (no, yes), ``TN`` = (no, no), ``FN`` = (yes, no)
    and ``n`` = all questions::

        precision = TP / (TP + FP)
        recall    = TP / (TP + FN)
        f1        = 2 * precision * recall / (precision + recall)
        accuracy  = (TP + TN) / n
        yes_ratio = (TP + FP) / n                 # share of *predictions* read "yes", not of labels

    A zero denominator gives ``0.0`` (the references raise). An unparsed prediction (``None``, only
    from ``parsing="strict"``) is never right: on a ``yes`` label it is a false negative, on a
    ``no`` label it counts in none of TP/FP/TN/FN; their number is ``unparsed``.

    Args:
        labels: ``"yes"``/``"no"`` per question.
        predictions: ``"yes"``/``"no"``/``None`` per question (:func:`parse_pope_answer` outputs).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (floats), ``TP``, ``FP``,
        ``TN``, ``FN``, ``n``, ``unparsed`` (ints).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if bad := {x for x in labels if x not in ("yes", "no")}:
        raise ValueError(f"labels must be 'yes' or 'no'; got {sorted(map(repr, bad))}")
    if bad := {x for x in predictions if x not in ("yes", "no", None)}:
        raise ValueError("predictions must be 'yes', 'no' or None (read answers with parse_pope_answer); "
                         f"got {sorted(map(repr, bad))}")
    pairs = Counter(zip(labels, predictions, strict=True))
    tp, fp, tn = pairs["yes", "yes"], pairs["no", "yes"], pairs["no", "no"]
    fn = pairs["yes", "no"] + pairs["yes", None]
    n = len(labels)
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ratio(tp + fp, n),
        "TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": n,
        "unparsed": pairs["yes", None] + pairs["no", None],
    }


def pope_summary_line(metrics: Mapping[str, float]) -> str:
    """LLaVA ``eval_pope.py``'s printed line: ``"f1, accuracy, precision, recall, yes_ratio"`` (%.3f)."""
    return "%.3f, %.3f, %.3f, %.3f, %.3f" % tuple(  # noqa: UP031 (the reference's own format)
        metrics[k] for k in ("f1", "accuracy", "precision", "recall", "yes_ratio"))


def _texts_for(answers: Sequence[str | Mapping[str, Any]], questions: Sequence[Mapping[str, Any]],
               split: str) -> list[str]:
    """Answer strings aligned with ``questions``: strings and id-less rows by position, rows with
    ``question_id`` by that id."""
    if all(isinstance(a, str) for a in answers):
        if len(answers) != len(questions):
            raise ValueError(f"POPE {split}: {len(answers)} answers but {len(questions)} questions")
        return list(answers)  # type: ignore[arg-type]
    by_id: dict[Any, str] = {}
    positional: list[str] = []
    for index, row in enumerate(answers):
        found = _answer_format(row)
        if found is None:
            raise ValueError(f"POPE {split}, answer {index}: needs 'question_id' and 'text' (or 'answer'), "
                             f"or AoiDragon's 'answer'; got {row!r:.200}")
        if found[0] == "by_id":
            by_id[row["question_id"]] = str(row[found[1]])  # type: ignore[index]
        else:
            positional.append(str(row[found[1]]))  # type: ignore[index]
    if by_id and positional:
        raise ValueError(f"POPE {split}: answers mix rows with and without question_id")
    if positional:
        if len(positional) != len(questions):
            raise ValueError(f"POPE {split}: {len(positional)} answers but {len(questions)} questions")
        return positional
    require_fields(questions, ("question_id",), f"POPE {split} labels")
    if missing := [q["question_id"] for q in questions if q["question_id"] not in by_id]:
        raise ValueError(f"POPE {split}: {len(missing)} questions have no answer, e.g. {missing[:5]}")
    return [by_id[q["question_id"]] for q in questions]


def score_pope(predictions_by_split: Mapping[str, Sequence[str | Mapping[str, Any]]],
               labels_by_split: Mapping[str, Sequence[Mapping[str, Any]]],
               parsing: PopeParsing = "reference") -> dict[str, Any]:
    """POPE metrics of every split in ``labels_by_split`` and their unweighted mean.

    Args:
        predictions_by_split: ``{split: answers}``; answers are strings in label order
            (:func:`load_pope_predictions`), or rows ``{"question_id", "text" | "answer"}`` matched
            by ``question_id``, or AoiDragon rows ``{"question", "answer"}`` in label order.
        labels_by_split: ``{split: label rows}`` (:func:`load_pope_questions`; ``label`` needed,
            ``question_id`` when answers are matched by it).
        parsing: how answers are read (:func:`parse_pope_answer`).

    Returns:
        ``{split: {accuracy, precision, recall, f1, yes_ratio, TP, FP, TN, FN, n, unparsed,
        unclear, summary_line}}`` per split (:func:`pope_metrics`; ``unclear`` = answers whose first
        word is not yes/no, a diagnostic under every parsing; ``summary_line`` =
        :func:`pope_summary_line`), ``"mean"``: the five rates averaged over the splits, and
        ``"parsing"``.
    """
    if parsing not in _PARSINGS:
        raise ValueError(f"unknown POPE parsing {parsing!r}; use one of {_PARSINGS}")
    out: dict[str, Any] = {}
    for split, questions in labels_by_split.items():
        if split not in predictions_by_split:
            raise ValueError(f"no POPE predictions for split {split!r}; have {sorted(predictions_by_split)}")
        require_fields(questions, ("label",), f"POPE {split} labels")
        texts = _texts_for(predictions_by_split[split], questions, split)
        metrics = pope_metrics([q["label"] for q in questions], [parse_pope_answer(t, parsing) for t in texts])
        metrics["unclear"] = sum(parse_yes_no(t) is None for t in texts)
        metrics["summary_line"] = pope_summary_line(metrics)
        out[split] = metrics
    out["mean"] = {k: ratio(sum(out[s][k] for s in labels_by_split), len(labels_by_split)) for k in POPE_RATES}
    out["parsing"] = parsing
    return out


def run_pope(model: Any, processor: Any, question_files: Mapping[str, str | Path] | str | Path,
             image_dir: str | Path, *, parsing: PopeParsing = "reference", prompt_suffix: str = "",
             limit: int | None = None, batch_size: int = 16, max_new_tokens: int = 8) -> dict[str, Any]:
    """Answer every POPE question with the model and score the splits with :func:`score_pope`.

    Args:
        question_files: ``{split: label file}``, or a directory searched with :func:`find_pope_files`.
        image_dir: folder holding each question's ``image``.
        parsing: answer reading (:func:`parse_pope_answer`).
        prompt_suffix: appended to each question (LLaVA-1.5 uses " Answer the question using a
            single word or phrase.").
        limit: only the first ``limit`` questions of each split.

    Returns:
        :func:`score_pope`'s dict plus ``predictions``: ``{split: [{"question_id", "prompt", "text"}]}``
        (LLaVA's answer format).
    """
    from mmpo.generation import generate_responses

    if not isinstance(question_files, Mapping):
        question_files = find_pope_files(question_files)
    questions = {split: load_pope_questions(path)[:limit] for split, path in question_files.items()}
    flat = [(split, q) for split, split_questions in questions.items() for q in split_questions]
    prompts = [q["text"] + prompt_suffix for _, q in flat]
    answers = generate_responses(model, processor, [Path(image_dir) / q["image"] for _, q in flat], prompts,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens)
    predictions: dict[str, list[dict[str, Any]]] = {split: [] for split in questions}
    for (split, q), prompt, answer in zip(flat, prompts, answers, strict=True):
        predictions[split].append({"question_id": q["question_id"], "prompt": prompt, "text": answer})
    return {**score_pope(predictions, questions, parsing), "predictions": predictions}
