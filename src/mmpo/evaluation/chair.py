"""CHAIR and Object HalBench: object hallucination in free-form image descriptions.

CHAIR: Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018, Sec. 2 (CHAIR_i,
CHAIR_s). Object HalBench: Yu et al., "RLHF-V", CVPR 2024, Sec. 5.1. With ``parsing="reference"``
(the default) the numbers are those of the published scorers, reproduced rule by rule:

* :func:`score_chair` — LisaAnne/Hallucination@6e4d33c ``utils/chair.py`` (``CHAIRs``, ``CHAIRi``,
  its ``print_metrics`` line as ``printed``) plus ``Recall`` from Maxlinn/CHAIR-metric-standalone@640c507;
* :func:`score_object_halbench` — RLHF-V/RLAIF-V@83d917b ``eval/eval_gpt_obj_halbench.py``, its
  deterministic text path (no ``--use_gpt``), and ``eval/summarize_gpt_obj_halbench_review.py``
  (``summary_printed``).

How a caption is read (LisaAnne; :func:`caption_objects`):

1. ``word_tokenize(caption.lower())`` (NLTK, :func:`mmpo.evaluation.text.word_tokenize`);
2. every token through Pattern 3.6 ``singularize`` (:func:`mmpo.evaluation.inflect.singularize`,
   quirks kept: ``bus`` -> ``bu``, ``glasses`` -> ``glass``, ``ties`` -> ``ty``);
3. two-word merge *after* singularisation, left to right: when tokens *i*, *i+1* joined by a space
   are a key of the two-word table, its value replaces both (so ``sports ball`` -> ``sport ball``
   never merges, and ``train tracks`` -> ``train track`` is consumed without a train mention);
4. toilet rule: when ``toilet`` and ``seat`` are both in the merged list, every ``seat`` is dropped;
5. every remaining item that is exactly a vocabulary entry is a mention of the entry's category
   (first entry of its synonym line). Duplicates count. LisaAnne splits each line of its synonym
   file on ``", "`` without stripping the pieces, so ``" motor bike"`` and ``" cheesecake"`` keep a
   leading space and never match.

Object HalBench reads the same way with RLAIF-V's tables (:func:`rlaifv_tables`): the response is
``text`` (else ``answer``) with every ``Assistant:`` removed, then stripped; tokens are normalised
with WordNet's noun lemmatiser (:func:`mmpo.evaluation.text.lemmatize_noun`) instead of Pattern; the
vocabulary is ``synonyms_rlaifv_refine.txt`` with stripped entries; the two-word table holds every
multi-word entry of that file plus the special rules. RLAIF-V's path-dependent ``coh`` splitting and
its GPT extraction path are not reproduced.

Ground truth of an image (:func:`image_ground_truth`): the categories of its instance annotations
(each name mapped through the vocabulary to its head), united with the mention categories that the
same reading finds in each of its reference captions. Only the images that have a response are used.

Metrics (``m`` = mentions of a caption, duplicates counted; ``h`` = those whose category is not in
the ground truth ``G``; ``C`` = distinct mention categories in ``G``; ``N`` = captions)::

    CHAIRi = sum h / sum m                    CHAIRs = #{captions with h > 0} / N
    Recall = sum |C| / sum |G|                (Maxlinn; Object HalBench's obj_rec)
    CHAIRs_refine = #{captions with h > 0} / #{captions with m > 0}   ("Response Hall")
    avg_word_len  = sum len(caption.strip().split(" ")) / N

Object HalBench's result also carries them under readable names: ``response_hallucination_rate``
(= ``CHAIRs_refine``), ``response_correct_rate`` (= ``correct_rate`` = 1 - CHAIRs_refine),
``mention_hallucination_rate`` (= ``CHAIRi``), ``object_correct_rate`` (= 1 - CHAIRi),
``object_recall`` (= ``obj_rec``). RLAIF-V's ``coco_word_count`` is ``sum |C|`` (not a mention count).
The references divide without a guard (``ZeroDivisionError`` on no captions / no mentions); here
every zero denominator gives ``0.0`` (:func:`mmpo.evaluation.common.ratio`).

``parsing="lenient"`` is mmpo's own, older reading (a deviation from the published numbers): words
are matched with :func:`extract_object_words` against mmpo's table (:data:`COCO_SYNONYMS`, the
file's category names, simple plural rules, :data:`COCO_NON_OBJECT_PHRASES`), the ground truth uses
the instance category names as they are plus the captions read the same way, and mentions are
de-duplicated per caption: by category for CHAIR, by (word, category) for Object HalBench.

The lenient reading's word scanner and the synthetic world's CHAIR aggregate, both
vocabulary-agnostic, are in :mod:`mmpo.evaluation.mentions`; the COCO files are read by
:mod:`mmpo.evaluation.coco`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mmpo.evaluation.coco import CocoGroundTruth, load_coco_ground_truth
from mmpo.evaluation.common import Parsing, check_parsing, ratio, read_records
from mmpo.evaluation.mentions import find_mentions, tokenize
from mmpo.evaluation.spans import char_range, locate_tokens, make_span, missed

DATA = Path(__file__).parent / "data"
#: LisaAnne/Hallucination@6e4d33c ``data/synonyms.txt`` (unchanged).
LISAANNE_SYNONYMS = DATA / "synonyms_lisaanne.txt"
#: RLHF-V/RLAIF-V@83d917b ``eval/data/synonyms_refine.txt`` (unchanged).
RLAIFV_SYNONYMS = DATA / "synonyms_rlaifv_refine.txt"
#: mmpo's own synonyms of the COCO categories, for ``parsing="lenient"`` only (:data:`COCO_SYNONYMS`).
LENIENT_SYNONYMS = DATA / "synonyms_lenient.txt"

DEFAULT_PROMPT = "Describe this image in detail."

# ============================================================================ reference tables

#: LisaAnne's fixed two-word keys (each maps to itself). ``stove top oven`` has three words and
#: can never match; ``home plate`` and ``train track`` are not objects and swallow their words.
LISAANNE_TWO_WORDS: tuple[str, ...] = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "laptop computer", "stove top oven",
    "home plate", "train track",
)
#: ``baby X`` / ``adult X`` -> ``X`` (so a baby elephant is an elephant, not a person).
ANIMAL_WORDS: tuple[str, ...] = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                                 "giraffe", "animal", "cub")
#: ``passenger X`` -> ``X``.
VEHICLE_WORDS: tuple[str, ...] = ("jet", "train")
#: RLAIF-V's two-word keys besides its synonym file's multi-word entries.
RLAIFV_EXTRA_TWO_WORDS: tuple[str, ...] = ("home plate", "train track")


def _special_two_words() -> dict[str, str]:
    table = {}
    for animal in ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"   # "wine glasses" singularises to "wine glass", "wine glass" to "wine glas"
    return table


def read_synonym_file(path: str | Path, *, strip_entries: bool) -> list[list[str]]:
    """The entries of each line of a CHAIR synonym file (first entry = the category).

    Each line is stripped and split on ``", "``; ``strip_entries=False`` keeps the pieces as they
    are (LisaAnne: an entry written after a double space keeps its leading space).
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    groups = [line.strip().split(", ") for line in lines if line.strip()]
    return [[entry.strip() for entry in group] if strip_entries else group for group in groups]


def _vocabulary(groups: Sequence[Sequence[str]]) -> dict[str, str]:
    return {entry: group[0] for group in groups for entry in group}


@dataclass(frozen=True)
class ReferenceTables:
    """One reference's reading of a caption: how tokens are normalised and what they match.

    ``two_word_table`` maps ``"w1 w2"`` to the item that replaces both words; ``vocabulary`` maps
    each synonym entry to its category. Built by :func:`lisaanne_tables` / :func:`rlaifv_tables`
    exactly as the reference builds them; treat them as read-only.
    """

    name: str
    normalise: Callable[[str], str]
    two_word_table: dict[str, str]
    vocabulary: dict[str, str]
    field_name: str = field(default="singular")   # per-caption key of the normalised tokens


@cache
def lisaanne_tables() -> ReferenceTables:
    """LisaAnne's tables: Pattern singularisation, entries split without stripping."""
    from mmpo.evaluation.inflect import singularize

    two_words = {key: key for key in LISAANNE_TWO_WORDS} | _special_two_words()
    vocabulary = _vocabulary(read_synonym_file(LISAANNE_SYNONYMS, strip_entries=False))
    return ReferenceTables("lisaanne", singularize, two_words, vocabulary, "singular")


@cache
def rlaifv_tables() -> ReferenceTables:
    """RLAIF-V's tables: WordNet noun lemmas, stripped entries (which include its additions
    ``brother``, ``pedestrian``, ``coffee table``, ``remote control``), and every multi-word entry as
    a two-word key."""
    from mmpo.evaluation.text import lemmatize_noun

    groups = read_synonym_file(RLAIFV_SYNONYMS, strip_entries=True)
    two_words = {entry: entry for group in groups for entry in group if " " in entry}
    two_words |= {key: key for key in RLAIFV_EXTRA_TWO_WORDS} | _special_two_words()
    return ReferenceTables("rlaifv", lemmatize_noun, two_words, _vocabulary(groups), "lemmas")


def _merge_two_words_indexed(words: Sequence[str], table: Mapping[str, str]) -> list[tuple[str, int, int]]:
    """:func:`merge_two_words` with, per merged word, the indices of its first and last word."""
    merged: list[tuple[str, int, int]] = []
    i = 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if pair in table:
            merged.append((table[pair], i, i + 1))
            i += 2
        else:
            merged.append((words[i], i, i))
            i += 1
    return merged


def merge_two_words(words: Sequence[str], table: Mapping[str, str]) -> list[str]:
    """Left-to-right two-word merge: ``words[i] + " " + words[i+1]`` found in ``table`` is replaced
    by its value and both words are skipped."""
    return [word for word, _, _ in _merge_two_words_indexed(words, table)]


def caption_objects(caption: str, tables: ReferenceTables) -> dict[str, Any]:
    """One caption read the reference's way (steps 1-5 of the module docstring).

    Returns:
        ``tokens``; the normalised tokens under ``tables.field_name`` (``singular`` / ``lemmas``);
        ``merged`` (before the toilet rule); ``mentions``: ``[{"word", "category"}]`` in order,
        duplicates kept; ``offsets``: per mention, its ``(start, end)`` in ``caption`` (from its
        first token to its last; ``(None, None)`` where a token could not be placed).
    """
    from mmpo.evaluation.text import word_tokenize

    tokens = word_tokenize(caption.lower())
    normal = [tables.normalise(token) for token in tokens]
    merged = _merge_two_words_indexed(normal, tables.two_word_table)
    words = [word for word, _, _ in merged]
    kept = [m for m in merged if m[0] != "seat"] if "toilet" in words and "seat" in words else merged
    vocabulary = tables.vocabulary
    located = locate_tokens(caption, tokens)
    found = [(w, first, last) for w, first, last in kept if w in vocabulary]
    return {"tokens": tokens, tables.field_name: normal, "merged": words,
            "mentions": [{"word": w, "category": vocabulary[w]} for w, _, _ in found],
            "offsets": [char_range(located, first, last) for _, first, last in found]}


# ============================================================================ lenient tables

#: The 80 COCO 2014/2017 detection categories, in category-id order.
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


@cache
def _lenient_synonyms() -> dict[str, str]:
    """mmpo's own name -> category table (singular forms; regular plurals are automatic), read from
    :data:`LENIENT_SYNONYMS`: lines ``category: name, name, ...`` in order, ``#`` lines skipped."""
    table: dict[str, str] = {}
    for line in LENIENT_SYNONYMS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, names = line.split(": ", 1)
            table.update((name, category) for name in names.split(", "))
    return table


#: ``parsing="lenient"`` only: mmpo's name -> COCO category table (synonyms, multi-word names,
#: irregular plurals; written for this project, not a reference's list).
COCO_SYNONYMS: dict[str, str] = _lenient_synonyms()

#: ``parsing="lenient"`` only: phrases consumed without counting, so their words fire no category.
COCO_NON_OBJECT_PHRASES: tuple[str, ...] = (
    "train track", "train station", "train platform", "railroad track", "bus stop", "bus station",
    "bus terminal", "home plate", "tie dye",
)


def coco_name_table(categories: Iterable[str] = COCO_CATEGORIES,
                    synonyms: Mapping[str, str] = COCO_SYNONYMS,
                    non_object_phrases: Iterable[str] = COCO_NON_OBJECT_PHRASES) -> dict[str, str | None]:
    """The lenient matcher's names, mapped to their category (``None`` for non-object phrases).

    Synonyms whose category is not in ``categories`` are dropped, so the same table serves a
    COCO-style file with other categories (e.g. the synthetic world's shapes).
    """
    categories = list(categories)
    table: dict[str, str | None] = {c: c for c in categories}
    for name, category in synonyms.items():
        if category in table:
            table.setdefault(name, category)
    for phrase in non_object_phrases:
        table.setdefault(phrase, None)
    return table


def extract_object_words(text: str, table: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """Lenient reading: ``(name, category)`` for every object name in ``text``, in order, repeats kept.

    The scan is :func:`~mmpo.evaluation.mentions.extract_mentions` with every *name* as its own
    vocabulary entry (longest match first, simple plurals), so the matched name is known too.
    """
    return [(name, category) for name, category, _, _ in find_object_words(text, table)]


def find_object_words(text: str, table: Mapping[str, str | None]) -> list[tuple[str, str, int, int]]:
    """:func:`extract_object_words` with each name's ``(start, end)`` in ``text``."""
    return [(name, table[name], start, end) for name, start, end in find_mentions(text, list(table))
            if table[name] is not None]  # type: ignore[misc]


# ================================================================================ ground truth

def image_ground_truth(ground_truth: CocoGroundTruth, image_id: Any, tables: ReferenceTables) -> dict[str, Any]:
    """One image's ground truth read with a reference's tables.

    Returns:
        ``gt_categories`` (sorted union), ``gt_from_instances`` (sorted instance categories, each
        name mapped to its head through the vocabulary) and ``gt_reference_captions``:
        ``[{"caption", "categories"}]`` with each reference caption's mention categories in order.
    """
    vocabulary = tables.vocabulary
    from_instances = {vocabulary.get(name, name) for name in ground_truth.instances.get(image_id, ())}
    per_caption = [{"caption": c, "categories": [m["category"] for m in caption_objects(c, tables)["mentions"]]}
                   for c in ground_truth.captions.get(image_id, ())]
    union = from_instances.union(*(c["categories"] for c in per_caption))
    return {"gt_categories": sorted(union), "gt_from_instances": sorted(from_instances),
            "gt_reference_captions": per_caption}


def _lenient_ground_truth(ground_truth: CocoGroundTruth, image_id: Any, table: Mapping[str, str | None]) -> list[str]:
    found = set(ground_truth.instances.get(image_id, ()))
    for caption in ground_truth.captions.get(image_id, ()):
        found.update(category for _, category in extract_object_words(caption, table))
    return sorted(found)


# ================================================================================= generations

_TEXT_KEYS = ("caption", "text", "answer", "response")
#: Caption metrics an ``imgToEval`` entry may carry; LisaAnne prints the mean of three of them.
CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "CIDEr", "SPICE", "ROUGE_L")


def _generation(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: a generation must be a JSON object, not {type(row).__name__}")
    key = next((k for k in _TEXT_KEYS if k in row), None)
    if key is None or "image_id" not in row:
        raise ValueError(f"{where}: a generation needs 'image_id' and one of {_TEXT_KEYS}; it has {sorted(row)}")
    if not isinstance(row[key], str):
        raise ValueError(f"{where}: field {key!r} must be a string, not {type(row[key]).__name__}")
    out = {"image_id": row["image_id"], "question": row.get("prompt", row.get("question")), "caption": row[key]}
    out.update({k: row[k] for k in CAPTION_METRICS if k in row})
    return out


def load_generations(path: str | Path) -> list[dict[str, Any]]:
    """Model responses, one per image, from either published format (detected from the content).

    * JSON lines (or a JSON list) of ``{"image_id", "caption" | "text" | "answer" | "response",
      "question" | "prompt"?}`` — RLAIF-V's and Maxlinn's input; the text is the first of those
      fields present (RLAIF-V reads ``text``, else ``answer``) and the question ``prompt``, else
      ``question``;
    * LisaAnne's ``{"overall": ..., "imgToEval": {id: {"image_id", "caption", ...}}}``.

    Returns:
        ``[{"image_id", "question", "caption"}]`` in file order (plus any caption metrics such as
        ``SPICE`` that an ``imgToEval`` entry carries). Errors name the file and the record
        (JSON-lines line number, ``imgToEval`` key or list index) and the missing field.
    """
    records = read_records(path, "generations", located=True)
    if len(records) == 1 and isinstance(records[0][1], Mapping) and "imgToEval" in records[0][1]:
        entries = records[0][1]["imgToEval"]
        if not isinstance(entries, Mapping):
            raise ValueError(f"generations file {path}: 'imgToEval' must be an object of {{image_id: entry}}")
        return [_generation(row, f"generations file {path}, imgToEval[{key!r}]") for key, row in entries.items()]
    return [_generation(row, f"generations file {path}, {where}") for where, row in records]


def _rows(generations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [_generation(row, f"generation {i}") for i, row in enumerate(generations)]


# ===================================================================================== scoring

def _remove_assistant(text: str) -> str:
    """RLAIF-V's text: every ``Assistant:`` removed, then stripped."""
    return text.replace("Assistant:", "").strip()


def _judge(text: str, read: dict[str, Any], gt: Sequence[str]) -> dict[str, Any]:
    """The per-caption counts every scorer shares, from a reading (:meth:`_Reader.caption`, whose
    ``mentions`` and ``offsets`` it takes out of ``read``), and the same verdicts as ``spans`` with
    the ``missed`` categories (:mod:`mmpo.evaluation.spans`)."""
    mentions, offsets = read.pop("mentions"), read.pop("offsets")
    truth = set(gt)
    flags = [m["category"] not in truth for m in mentions]
    hallucinated = [m for m, bad in zip(mentions, flags, strict=True) if bad]
    mentioned = {m["category"] for m in mentions}
    return {
        "mentions": mentions,
        "gt_categories": sorted(truth),
        "hallucinated": hallucinated,
        "hallucinated_categories": [m["category"] for m in hallucinated],
        "chair_s": int(bool(hallucinated)),
        "chair_i": len(hallucinated) / len(mentions) if mentions else 0.0,
        "covered": sorted(mentioned & truth),
        "spans": [make_span(text, start, end, m["category"], "hallucinated" if bad else "correct", word=m["word"])
                  for m, bad, (start, end) in zip(mentions, flags, offsets, strict=True)],
        "missed": missed(truth, mentioned),
    }


class _Reader:
    """Reads captions and ground truth in one parsing mode, caching each image's ground truth."""

    def __init__(self, ground_truth: CocoGroundTruth, parsing: str, tables: ReferenceTables,
                 dedupe: Callable[[dict[str, str]], Any]) -> None:
        self.truth, self.parsing, self.tables, self.dedupe = ground_truth, check_parsing(parsing), tables, dedupe
        self.lenient_table = coco_name_table(ground_truth.categories) if parsing == "lenient" else None
        self._gt: dict[Any, dict[str, Any]] = {}
        self.unannotated: list[Any] = []

    def ground_truth(self, raw_id: Any) -> dict[str, Any]:
        image_id = self.truth.image_id(raw_id)
        if image_id not in self._gt:
            if not self.truth.known(image_id):
                self.unannotated.append(raw_id)
            if self.lenient_table is None:
                self._gt[image_id] = image_ground_truth(self.truth, image_id, self.tables)
            else:
                self._gt[image_id] = {"gt_categories": _lenient_ground_truth(self.truth, image_id,
                                                                             self.lenient_table)}
        return self._gt[image_id]

    def caption(self, text: str) -> dict[str, Any]:
        """The caption's reading; ``offsets`` (one per mention, the first occurrence's where the
        lenient reading de-duplicates) is for :func:`_judge`'s spans and not part of the result rows."""
        if self.lenient_table is None:
            return caption_objects(text, self.tables)
        distinct: dict[Any, tuple[dict[str, str], tuple[int, int]]] = {}
        for word, category, start, end in find_object_words(text, self.lenient_table):
            mention = {"word": word, "category": category}
            distinct.setdefault(self.dedupe(mention), (mention, (start, end)))
        return {"tokens": tokenize(text), "mentions": [m for m, _ in distinct.values()],
                "offsets": [o for _, o in distinct.values()]}


def _chair_printed(rows: Sequence[Mapping[str, Any]], chair_s: float, chair_i: float) -> str:
    """LisaAnne's ``print_metrics`` line: SPICE, METEOR, CIDEr, CHAIRs, CHAIRi in percent."""
    means = [ratio(sum(float(r.get(k, 0.0)) for r in rows), len(rows)) for k in ("SPICE", "METEOR", "CIDEr")]
    return "\t".join(f"{100 * value:0.1f}" for value in (*means, chair_s, chair_i))   # "%0.01f" each


def score_chair(generations: Sequence[Mapping[str, Any]], ground_truth: CocoGroundTruth,
                parsing: Parsing = "reference") -> dict[str, Any]:
    """CHAIR (LisaAnne) with Recall (Maxlinn) of ``generations`` (rules in the module docstring).

    Args:
        generations: rows with ``image_id`` and a text (see :func:`load_generations`); the text is
            scored as it is (no ``Assistant:`` removal).
        ground_truth: from :func:`~mmpo.evaluation.coco.load_coco_ground_truth`.
        parsing: ``"reference"`` (LisaAnne's reading) or ``"lenient"`` (mmpo's, categories once per
            caption).

    Returns:
        ``CHAIRs``, ``CHAIRi``, ``Recall``; ``counts`` (``n_captions``, ``n_hallucinated_captions``,
        ``n_mentions``, ``n_hallucinated_mentions``, ``n_gt_categories``,
        ``n_covered_gt_categories``); ``printed`` (LisaAnne's line, SPICE/METEOR/CIDEr being the
        means of the rows' caption metrics, 0.0 when absent); ``parsing``;
        ``images_without_ground_truth`` (response image ids no annotation file lists: their ground
        truth is empty, as in the reference); ``per_response``: per caption ``image_id``,
        ``caption``, ``tokens``, ``singular``, ``merged``, ``mentions``, ``gt_categories``,
        ``hallucinated``, ``hallucinated_categories``, ``chair_s``, ``chair_i``,
        ``covered_gt_categories``, ``recall``, ``gt_from_instances``, ``gt_reference_captions``
        (the reading fields only with ``"reference"``).
    """
    rows = _rows(generations)
    reader = _Reader(ground_truth, parsing, lisaanne_tables(), lambda m: m["category"])
    per_response = []
    n_bad = n_mentions = n_bad_mentions = n_gt = n_covered = 0
    for row in rows:
        read = reader.caption(row["caption"])
        gt = reader.ground_truth(row["image_id"])
        judged = _judge(row["caption"], read, gt["gt_categories"])
        covered = judged.pop("covered")
        n_bad += judged["chair_s"]
        n_mentions += len(judged["mentions"])
        n_bad_mentions += len(judged["hallucinated"])
        n_gt += len(judged["gt_categories"])
        n_covered += len(covered)
        extra = {k: gt[k] for k in ("gt_from_instances", "gt_reference_captions") if k in gt}
        per_response.append({"image_id": row["image_id"], "caption": row["caption"], **read, **judged,
                             "covered_gt_categories": covered,
                             "recall": ratio(len(covered), len(judged["gt_categories"])), **extra})
    chair_s, chair_i = ratio(n_bad, len(rows)), ratio(n_bad_mentions, n_mentions)
    return {
        "CHAIRs": chair_s,
        "CHAIRi": chair_i,
        "Recall": ratio(n_covered, n_gt),
        "counts": {"n_captions": float(len(rows)), "n_hallucinated_captions": float(n_bad),
                   "n_mentions": float(n_mentions), "n_hallucinated_mentions": float(n_bad_mentions),
                   "n_gt_categories": float(n_gt), "n_covered_gt_categories": float(n_covered)},
        "printed": _chair_printed(rows, chair_s, chair_i),
        "parsing": parsing,
        "images_without_ground_truth": reader.unannotated,
        "per_response": per_response,
    }


def score_object_halbench(generations: Sequence[Mapping[str, Any]], ground_truth: CocoGroundTruth,
                          parsing: Parsing = "reference") -> dict[str, Any]:
    """Object HalBench as RLAIF-V's text path scores it (rules in the module docstring).

    Args:
        generations: rows with ``image_id``, a text and optionally ``question`` (see
            :func:`load_generations`); every ``Assistant:`` is removed from the text, which is then
            stripped.
        ground_truth: from :func:`~mmpo.evaluation.coco.load_coco_ground_truth`.
        parsing: ``"reference"`` (RLAIF-V's reading) or ``"lenient"`` (mmpo's, each distinct
            (word, category) once per caption).

    Returns:
        The readable names ``response_hallucination_rate`` (= ``CHAIRs_refine``),
        ``response_correct_rate`` (= ``correct_rate``), ``mention_hallucination_rate``
        (= ``CHAIRi``), ``object_correct_rate``, ``object_recall`` (= ``obj_rec``); RLAIF-V's
        ``overall_metrics`` keys ``CHAIRs``, ``CHAIRs_refine``, ``CHAIRi``, ``obj_rec``,
        ``correct_rate``, ``sentence_num``, ``coco_sentence_num``, ``coco_word_count``,
        ``gt_word_count``, ``avg_word_len``; ``counts``; ``printed`` (its ``print_metrics`` line);
        ``summary_printed`` (the values ``summarize_gpt_obj_halbench_review.py`` prints, as
        strings); ``parsing``; ``images_without_ground_truth``; ``per_response``: per caption
        ``image_id``, ``question``, ``caption``, ``tokens``, ``lemmas``, ``merged``, ``mentions``,
        ``gt_categories``, ``hallucinated``, ``hallucinated_categories``, ``chair_s``, ``chair_i``,
        ``has_mentions``, ``correct_categories``, ``n_words``, ``gpt_path_short_answer`` (whether
        RLAIF-V's GPT path would skip it as a short answer; informational).
    """
    rows = _rows(generations)
    reader = _Reader(ground_truth, parsing, rlaifv_tables(), lambda m: (m["word"], m["category"]))
    per_response = []
    n_bad = n_with = n_mentions = n_bad_mentions = n_correct = n_gt = n_words = 0
    for row in rows:
        caption = _remove_assistant(row["caption"])
        read = reader.caption(caption)
        judged = _judge(caption, read, reader.ground_truth(row["image_id"])["gt_categories"])
        correct = judged.pop("covered")
        words = len(caption.strip().split(" "))
        n_bad += judged["chair_s"]
        n_with += bool(judged["mentions"])
        n_mentions += len(judged["mentions"])
        n_bad_mentions += len(judged["hallucinated"])
        n_correct += len(correct)
        n_gt += len(judged["gt_categories"])
        n_words += words
        per_response.append({"image_id": row["image_id"], "question": row["question"], "caption": caption, **read,
                             **judged, "has_mentions": bool(judged["mentions"]), "correct_categories": correct,
                             "n_words": words, "gpt_path_short_answer": len(caption.strip().split()) <= 3})
    n = len(rows)
    chair_s, refine, chair_i = ratio(n_bad, n), ratio(n_bad, n_with), ratio(n_bad_mentions, n_mentions)
    obj_rec, avg_len = ratio(n_correct, n_gt), ratio(n_words, n)
    correct_rate, object_correct_rate = 1 - refine, 1 - chair_i
    return {
        "response_hallucination_rate": refine,
        "response_correct_rate": correct_rate,
        "mention_hallucination_rate": chair_i,
        "object_correct_rate": object_correct_rate,
        "object_recall": obj_rec,
        "CHAIRs": chair_s,
        "CHAIRs_refine": refine,
        "CHAIRi": chair_i,
        "obj_rec": obj_rec,
        "correct_rate": correct_rate,
        "sentence_num": float(n),
        "coco_sentence_num": float(n_with),
        "coco_word_count": float(n_correct),
        "gt_word_count": float(n_gt),
        "avg_word_len": avg_len,
        "counts": {"n_captions": float(n), "n_captions_with_mentions": float(n_with),
                   "n_hallucinated_captions": float(n_bad), "n_mentions": float(n_mentions),
                   "n_hallucinated_mentions": float(n_bad_mentions), "n_correct_categories": float(n_correct),
                   "n_gt_categories": float(n_gt), "n_words": n_words},
        "printed": f"{100 * chair_s:0.1f}\t{100 * refine:0.1f}\t{100 * chair_i:0.1f}\t{n}\t{n_with}\t{avg_len:0.1f}",
        "summary_printed": {
            "Response Hall": f"{100 * refine:.2f}",
            "Object Hall": f"{100 * chair_i:.2f}",
            "Response Correct": f"{100 * correct_rate:.2f}",
            "Object Correct": f"{100 * object_correct_rate:.2f}",
            "Object Recall": f"{100 * obj_rec:.2f}",
            "Average Length": f"{avg_len:.2f}",
            "COCO Sent Number": str(float(n_with)),
            "COCO Word Number": str(float(n_correct)),
            "GT Word Number": str(float(n_gt)),
        },
        "parsing": parsing,
        "images_without_ground_truth": reader.unannotated,
        "per_response": per_response,
    }


# ================================================================================== generation

def open_image_field(value: str, image_dir: str | Path | None):
    """An image path under ``image_dir`` (or as given), or a PIL image decoded from base64 data
    (RLAIF-V's ``*_with_image.jsonl`` files embed the image that way)."""
    path = Path(image_dir) / value if image_dir is not None else Path(value)
    if len(value) < 1024 and path.exists():
        return path
    from mmpo.io import load_image

    try:
        return load_image(base64.b64decode(value, validate=True))
    except Exception as error:  # not a file and not base64 image data
        raise FileNotFoundError(f"image {value[:80]!r} is neither a file under {image_dir} nor base64 data") from error


def load_chair_questions(path: str | Path) -> list[dict[str, Any]]:
    """Object HalBench-style questions: JSONL of ``{"image_id", "question", "image"?}``."""
    rows = read_records(path, "questions")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, Mapping) or "image_id" not in row or "question" not in row:
            keys = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(f"{path}: record {number} needs 'image_id' and 'question'; got {keys}")
    return rows


def run_chair(model: Any, processor: Any, annotations: CocoGroundTruth | str | Path | Iterable[str | Path],
              image_dir: str | Path, *, captions: str | Path | Iterable[str | Path] | None = None,
              questions: str | Path | None = None, prompt: str = DEFAULT_PROMPT, parsing: Parsing = "reference",
              limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 256) -> dict[str, Any]:
    """Generate a description per image (or per question) and score it with both scorers.

    Args:
        model, processor: a transformers VLM and its processor (see
            :func:`mmpo.generation.generate_responses`).
        annotations: a :class:`~mmpo.evaluation.coco.CocoGroundTruth`, or what
            :func:`~mmpo.evaluation.coco.load_coco_ground_truth` reads (a folder or instances files;
            ``captions`` as there).
        image_dir: folder of the images (``file_name`` of the instances file, or the question's
            ``image`` field, which may also be base64 image data).
        questions: optional Object HalBench-style JSONL (:func:`load_chair_questions`); without it
            every image listed by the instances files is asked ``prompt``, in id order.
        parsing: see :func:`score_chair`.
        limit: evaluate only the first ``limit`` images/questions.
        batch_size, max_new_tokens: generation settings.

    Returns:
        ``{"chair": score_chair(...), "object_halbench": score_object_halbench(...),
        "predictions": [{"image_id", "question", "caption"}]}``.
    """
    from mmpo import generation

    truth = annotations if isinstance(annotations, CocoGroundTruth) else load_coco_ground_truth(annotations, captions)
    if questions is not None:
        items = load_chair_questions(questions)
    else:
        items = [{"image_id": i, "question": prompt} for i in sorted(truth.file_names)]
    items = items[:limit] if limit is not None else items
    images = []
    for q in items:
        name = q.get("image") or truth.file_names.get(truth.image_id(q["image_id"]))
        if name is None:
            raise KeyError(f"image {q['image_id']!r}: no 'image' field and no file name in the instances files")
        images.append(open_image_field(str(name), image_dir))
    responses = generation.generate_responses(model, processor, images, [q["question"] for q in items],
                                              batch_size=batch_size, max_new_tokens=max_new_tokens)
    predictions = [{"image_id": q["image_id"], "question": q["question"], "caption": r}
                   for q, r in zip(items, responses, strict=True)]
    return {"chair": score_chair(predictions, truth, parsing), "object_halbench":
            score_object_halbench(predictions, truth, parsing), "predictions": predictions}
