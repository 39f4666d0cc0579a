"""AMBER, scored the way its reference scorer scores it.

Wang et al., "AMBER: An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination Evaluation",
2023 (arXiv:2311.07397). Reference scorer: ``junyangwang0410/AMBER@534babf inference.py`` with
``data/annotations.json``, ``data/relation.json``, ``data/safe_words.txt``, ``data/metrics.txt``.
Responses are AMBER's ``[{"id", "response"}]``.

Generative task (``type == "generative"``, entries ``{"id", "truth": [objects], "hallu": [objects]}``):

1. nouns: NLTK ``word_tokenize`` of the raw response (case kept), ``pos_tag``, the tokens tagged
   ``NN*``, each through WordNet's noun lemmatiser (:func:`amber_nouns`);
2. only nouns that are exactly (case-sensitive) a key or a value of ``relation.json`` are kept;
3. per kept noun, in order: a global safe word (``safe_words.txt``) is never hallucinated but counts
   in CHAIR's denominator; else a noun equal to an entry of the *safe list* (association words of
   ``truth[0]``, ``truth[1]``, ..., then the truth objects) is not hallucinated and the **first**
   equal entry says which truth object it covers; else it is hallucinated, and the first equal entry
   of the *hallu list* (built the same way from ``hallu``) marks a hallu object as covered (Cog).
   Repeated nouns are each counted.

   ``CHAIR = hallucinated / kept nouns``, ``Cover = covered truth objects / truth objects``,
   ``Hal = 1 - responses without hallucination / responses``, ``Cog = covered hallu / hallu``.

Discriminative task: a response is "Yes" only if it is exactly ``"Yes"``, "No" only if exactly
``"No"``. "No" is the positive class: ``Precision = "No" answers to truth "no" / "No" answers``,
``Recall = "No" answers to truth "no" / truths not "yes"``, ``F1 = 2PR / (P + R + 1e-4)`` (``1e-3``
for Existence), on P and R in [0, 1]. Dimensions: Existence (``discriminative-hallucination``),
State / Number / Action (``discriminative-attribute-*``), Attribute (those three pooled), Relation
(every other non-generative type).

Counters start at ``metrics.txt``'s values (denominators ``0.001``), so unrounded values carry that
offset. Published values are ``round(x, 1)`` in percent and the published F1 is computed from the
rounded P and R. AMBER score = ``(100 - CHAIR + F1) / 2`` (paper, Sec. 3.3).

**Similarity.** The reference also accepts, for a noun that is neither a global safe word nor an
exact safe-list entry, spaCy ``en_core_web_lg`` word-vector similarity ``> 0.8`` against the hallu
list (Cog) and then the safe list (rescuing the noun and covering a truth object). That model is
not available here, so by default similarity is exact string equality — what the golden files in
``tests/fixtures/reference/amber`` were produced with. A ``similarity(a, b) -> float`` callable can be
passed to apply the reference's fallback in its order of checks.

Deviations: annotations are keyed by ``id`` (the reference indexes ``annotations[id - 1]``, which is
the same entry on AMBER's own file); an unknown id, a truth/hallu object missing from
``relation.json`` or a non-string response raises ``ValueError`` instead of a crash;
``parsing="lenient"`` is mmpo's earlier reading (see :func:`score_amber`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mmpo.evaluation.common import check_parsing, ratio, read_records, require_fields
from mmpo.evaluation.spans import locate_tokens, make_span

__all__ = [
    "AMBER_DIMENSIONS", "AMBER_COUNTER_PREFIXES", "AMBER_INITIAL_COUNTERS", "EXACT_SIMILARITY",
    "load_amber_queries", "load_amber_annotations", "load_amber_associations", "load_amber_safe_words",
    "load_amber_metrics", "load_amber_predictions", "find_amber_data_file", "load_amber_data",
    "spacy_similarity", "amber_vocabulary", "amber_nouns", "amber_yes_no",
    "score_amber_generative", "score_amber_discriminative", "amber_aggregates", "score_amber",
    "format_amber_stdout", "run_amber",
]

#: Annotation ``type`` -> dimension; any other non-generative type is ``"relation"``.
AMBER_DIMENSIONS: dict[str, str] = {
    "discriminative-hallucination": "existence",
    "discriminative-attribute-state": "attribute_state",
    "discriminative-attribute-number": "attribute_number",
    "discriminative-attribute-action": "attribute_action",
    "discriminative-relation": "relation",
}

#: Dimension -> prefix of its counters in ``metrics.txt`` (the overall counters have none).
AMBER_COUNTER_PREFIXES: dict[str, str] = {
    "existence": "ha_", "attribute_state": "as_", "attribute_number": "an_", "attribute_action": "aa_",
    "relation": "asso_",
}

_GENERATIVE_COUNTERS = ("chair_num", "chair_score", "safe_cover_num", "safe_cover_score", "hallu_cover_num",
                        "hallu_cover_score", "non_hallu_score", "non_hallu_num")
_QA_COUNTERS = ("qa_correct_score", "qa_correct_num", "qa_no_score", "qa_no_num", "qa_ans_no_score",
                "qa_ans_no_num")

#: AMBER's ``data/metrics.txt``: every ``*_num`` starts at 0.001, every ``*_score`` at 0.
AMBER_INITIAL_COUNTERS: dict[str, float] = {
    name: 0.001 if name.endswith("_num") else 0
    for name in (*_GENERATIVE_COUNTERS, *_QA_COUNTERS,
                 *(prefix + name for prefix in ("as_", "an_", "aa_", "asso_", "ha_") for name in _QA_COUNTERS))
}

#: Published section name -> the dimensions whose counters it pools.
_SECTIONS: dict[str, tuple[str, ...]] = {
    "Existence": ("existence",), "Attribute": ("attribute_state", "attribute_number", "attribute_action"),
    "State": ("attribute_state",), "Number": ("attribute_number",), "Action": ("attribute_action",),
    "Relation": ("relation",),
}

EXACT_SIMILARITY = "exact string match (AMBER's spaCy en_core_web_lg fallback not applied)"

Similarity = Callable[[str, str], float]


def spacy_similarity(model: str | Path) -> Similarity:
    """AMBER's word-similarity fallback from a spaCy pipeline on disk (the reference uses
    ``en_core_web_lg``): ``similarity(a, b) = nlp(a).similarity(nlp(b))``, each word parsed once.

    ``model`` is a local pipeline directory (``spacy.load`` of a path: nothing is downloaded), or
    the name of an installed pipeline package. Pass the result as ``score_amber(similarity=...)``
    or use ``mmpo evaluate --amber-spacy-model PATH``.
    """
    try:
        import spacy
    except ImportError:
        raise ImportError("AMBER's similarity fallback needs spaCy and a vectors pipeline such as "
                          "en_core_web_lg: pip install spacy, then pass the pipeline's directory") from None
    try:
        nlp = spacy.load(model)
    except OSError as error:
        raise FileNotFoundError(f"spaCy pipeline {model}: cannot be loaded ({error})") from None
    docs: dict[str, Any] = {}

    def similarity(a: str, b: str) -> float:
        for word in (a, b):
            if word not in docs:
                docs[word] = nlp(word)
        return float(docs[a].similarity(docs[b]))

    similarity.__name__ = f"spacy_similarity({Path(str(model)).name})"
    return similarity
AmberParsing = Literal["reference", "lenient"]


# -------------------------------------------------------------------------------------------- files

def load_amber_queries(path: str | Path) -> list[dict[str, Any]]:
    """An AMBER query file (``query_all.json`` or any ``query_*.json``): ``[{"id", "image", "query"}]``."""
    rows = read_records(path, "AMBER query")
    require_fields(rows, ("id", "image", "query"), f"AMBER query file {path}")
    return rows


def _annotations_by_id(rows: Sequence[Any], what: str) -> dict[int, dict[str, Any]]:
    require_fields(rows, ("id", "type", "truth"), what)
    out: dict[int, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        key = int(row["id"])
        if key in out:
            raise ValueError(f"{what}: record {index} repeats id {key}")
        if row["type"] == "generative":
            if "hallu" not in row:
                raise ValueError(f"{what}: generative record {index} (id {key}) lacks 'hallu'")
            if not all(isinstance(v, list) for v in (row["truth"], row["hallu"])):
                raise ValueError(f"{what}: generative record {index} (id {key}): truth and hallu must be lists")
        elif not isinstance(row["truth"], str):
            raise ValueError(f"{what}: record {index} (id {key}): a {row['type']} truth must be a string")
        out[key] = dict(row)
    return out


def load_amber_annotations(path: str | Path) -> dict[int, dict[str, Any]]:
    """AMBER's ``annotations.json`` as ``{id: entry}``; ids must be unique.

    Generative entries need ``truth`` and ``hallu`` lists, the others a string ``truth``. The
    reference reads ``annotations[id - 1]``; on AMBER's file (ids ``1..N`` in order) that is the
    entry with that id, and on a filtered file only keying by id is right.
    """
    return _annotations_by_id(read_records(path, "AMBER annotations"), f"AMBER annotations file {path}")


def load_amber_associations(path: str | Path) -> dict[str, list[str]]:
    """AMBER's ``relation.json``: ``{object: [association words]}`` (``person -> [man, ...]``)."""
    rows = read_records(path, "AMBER relation")
    if len(rows) != 1 or not isinstance(rows[0], Mapping):
        raise ValueError(f"AMBER relation file {path}: expected one JSON object {{object: [words]}}")
    out = {}
    for key, words in rows[0].items():
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"AMBER relation file {path}: {key!r} must map to a list of strings")
        out[key] = list(words)
    return out


def load_amber_safe_words(path: str | Path) -> list[str]:
    """AMBER's ``safe_words.txt``: one global safe word per line (stripped; blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"AMBER safe words file {path}: no such file") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_amber_metrics(path: str | Path) -> dict[str, float]:
    """AMBER's ``metrics.txt``: the counters' initial values, ``name=value`` per line.

    Every counter the scorer uses must be present (:data:`AMBER_INITIAL_COUNTERS` lists them).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"AMBER metrics file {path}: no such file") from None
    out: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split("=")
        if len(parts) != 2:
            raise ValueError(f"AMBER metrics file {path}, line {number}: expected name=value, got {line!r}")
        name, value = parts[0].strip(), parts[1].strip()
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                raise ValueError(f"AMBER metrics file {path}, line {number}: {value!r} is not a number") from None
    if missing := [name for name in AMBER_INITIAL_COUNTERS if name not in out]:
        raise ValueError(f"AMBER metrics file {path} lacks counters {missing}")
    return out


def load_amber_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Responses produced elsewhere: AMBER's ``[{"id", "response"}]`` (a JSON list or JSON lines)."""
    rows = read_records(path, "AMBER predictions")
    what = f"AMBER predictions file {path}"
    require_fields(rows, ("id", "response"), what)
    for index, row in enumerate(rows):
        if not isinstance(row["response"], str):
            raise ValueError(f"{what}: record {index} (id {row['id']!r}): 'response' is a "
                             f"{type(row['response']).__name__}, not a string")
        try:
            int(row["id"])
        except (TypeError, ValueError):
            raise ValueError(f"{what}: record {index}: 'id' {row['id']!r} is not an integer") from None
    return rows


def find_amber_data_file(name: str, given: str | Path | None, annotations: str | Path) -> Path | None:
    """``given``, else ``name`` beside ``annotations`` (AMBER's ``data/`` layout) if it exists."""
    if given is not None:
        return Path(given)
    beside = Path(annotations).parent / name
    return beside if beside.is_file() else None


def load_amber_data(annotations: str | Path, *, associations: str | Path | None = None,
                    safe_words: str | Path | None = None, metrics: str | Path | None = None,
                    parsing: AmberParsing = "reference") -> dict[str, Any]:
    """:func:`score_amber`'s ``associations``, ``safe_words`` and ``metrics`` read from
    ``relation.json``, ``safe_words.txt`` and ``metrics.txt``: the given paths, else the files of
    those names beside ``annotations`` (AMBER's ``data/`` layout). ``"reference"`` needs all
    three (``FileNotFoundError`` naming the missing ones); ``"lenient"`` uses any it finds."""
    check_parsing(parsing)
    sources = (("relation.json", associations, "associations", load_amber_associations),
               ("safe_words.txt", safe_words, "safe_words", load_amber_safe_words),
               ("metrics.txt", metrics, "metrics", load_amber_metrics))
    found = {name: (find_amber_data_file(name, given, annotations), key, load) for name, given, key, load in sources}
    if parsing == "reference" and (missing := [name for name, (path, _, _) in found.items() if path is None]):
        raise FileNotFoundError(f"AMBER reference scoring needs {', '.join(missing)}: pass it or put it beside "
                                f"{annotations} (AMBER's data/ layout)")
    return {key: load(path) for path, key, load in found.values() if path is not None}


# ---------------------------------------------------------------------------------------- reading

def amber_vocabulary(associations: Mapping[str, Sequence[str]]) -> frozenset[str]:
    """Every key and every association word of ``relation.json`` (case-sensitive)."""
    return frozenset(associations) | frozenset(w for words in associations.values() for w in words)


def amber_nouns(response: str) -> list[str]:
    """The reference's nouns: NLTK ``word_tokenize`` (case kept), ``pos_tag``, tokens tagged ``NN*``,
    each lemmatised as a noun (WordNet 3.0). ``"Two Dogs and the cats."`` -> ``["Dogs", "cat"]``.
    Tags are exact only with NLTK's tagger data (:func:`mmpo.evaluation.text.nlp_backends`)."""
    return [lemma for lemma, _, _ in amber_noun_spans(response)]


def amber_noun_spans(response: str) -> list[tuple[str, int | None, int | None]]:
    """:func:`amber_nouns` with each noun's ``(start, end)`` in ``response`` (``None`` where its
    token cannot be placed, see :func:`mmpo.evaluation.spans.locate_tokens`)."""
    from mmpo.evaluation.text import lemmatize_noun, pos_tag, word_tokenize

    tokens = word_tokenize(response)
    located = locate_tokens(response, tokens)
    return [(lemmatize_noun(word), *(located[i] or (None, None)))
            for i, (word, tag) in enumerate(pos_tag(tokens)) if tag.startswith("NN")]


def amber_yes_no(response: str, parsing: AmberParsing = "reference") -> Literal["Yes", "No"] | None:
    """``"reference"``: ``"Yes"`` / ``"No"`` only for exactly those strings (``"Yes."``, ``"yes"``,
    ``" No"`` are neither). ``"lenient"``: the first word, case-insensitive
    (:func:`mmpo.evaluation.pope.parse_yes_no`), so ``"no, it is not"`` is "No"."""
    if check_parsing(parsing) == "reference":
        return response if response in ("Yes", "No") else None  # type: ignore[return-value]
    from mmpo.evaluation.pope import parse_yes_no

    word = parse_yes_no(response)
    return None if word is None else word.capitalize()  # type: ignore[return-value]


def _exact(a: str, b: str) -> float:
    return 1.0 if a == b else 0.0


def _with_objects(objects: Sequence[str], associations: Mapping[str, Sequence[str]],
                  entry_id: Any, field: str) -> tuple[list[str], list[int]]:
    """The reference's word list for ``objects``: association words of objects[0], objects[1], ...,
    then the objects themselves; and, per word, the index of the object it stands for."""
    words: list[str] = []
    owners: list[int] = []
    for k, obj in enumerate(objects):
        if obj not in associations:
            raise ValueError(f"AMBER annotation {entry_id}: {field} object {obj!r} is not a key of relation.json")
        words += associations[obj]
        owners += [k] * len(associations[obj])
    return words + list(objects), owners + list(range(len(objects)))


def _first_similar(noun: str, words: Sequence[str], similarity: Similarity, threshold: float) -> int | None:
    return next((j for j, word in enumerate(words) if similarity(noun, word) > threshold), None)


def score_amber_generative(nouns: Sequence[str], truth: Sequence[str], hallu: Sequence[str], *,
                           associations: Mapping[str, Sequence[str]], safe_words: Iterable[str],
                           vocabulary: frozenset[str] | None = None, similarity: Similarity | None = None,
                           similarity_threshold: float = 0.8, entry_id: Any = None) -> dict[str, Any]:
    """One generative response, from its already-extracted ``nouns`` (e.g. :func:`amber_nouns`).

    Checks per vocabulary noun, in the reference's order: (1) global safe word -> not hallucinated,
    covers nothing; (2) exact safe-list entry -> the first equal entry covers its truth object, not
    hallucinated; (3) exact hallu-list entry -> the first marks its hallu object; (4) the first
    hallu-list entry with ``similarity > threshold`` marks its hallu object; (5) the first safe-list
    entry with ``similarity > threshold`` covers its truth object and rescues the noun; (6) else
    hallucinated. With ``similarity=None`` (exact equality) steps 4-5 add nothing.

    Returns ``nouns``, ``nouns_in_vocabulary``, ``noun_status`` (``global_safe_word`` |
    ``truth_or_association`` | ``hallucinated``), ``hallucinated_flags`` / ``_nouns``,
    ``truth_covered_flags`` (one per truth object) / ``covered_truth``, ``hallu_covered_flags`` /
    ``covered_hallu``, ``counter_deltas`` (reference counter names, zero entries omitted).
    """
    similarity = similarity or _exact
    vocabulary = amber_vocabulary(associations) if vocabulary is None else vocabulary
    safe_words = set(safe_words)
    safe_list, safe_owner = _with_objects(truth, associations, entry_id, "truth")
    hallu_list, hallu_owner = _with_objects(hallu, associations, entry_id, "hallu")
    kept = [noun for noun in nouns if noun in vocabulary]
    truth_flags, hallu_flags = [0] * len(truth), [0] * len(hallu)
    status = []
    for noun in kept:
        if noun in safe_words:
            status.append("global_safe_word")
            continue
        if noun in safe_list:
            truth_flags[safe_owner[safe_list.index(noun)]] = 1
            status.append("truth_or_association")
            continue
        if noun in hallu_list:
            hallu_flags[hallu_owner[hallu_list.index(noun)]] = 1
        if (j := _first_similar(noun, hallu_list, similarity, similarity_threshold)) is not None:
            hallu_flags[hallu_owner[j]] = 1
        if (j := _first_similar(noun, safe_list, similarity, similarity_threshold)) is not None:
            truth_flags[safe_owner[j]] = 1
            status.append("truth_or_association")
            continue
        status.append("hallucinated")
    flags = [int(s == "hallucinated") for s in status]
    deltas = {"chair_num": len(kept), "chair_score": sum(flags), "safe_cover_num": len(truth),
              "safe_cover_score": sum(truth_flags), "hallu_cover_num": len(hallu),
              "hallu_cover_score": sum(hallu_flags), "non_hallu_score": int(not any(flags)), "non_hallu_num": 1}
    return {
        "nouns": list(nouns), "nouns_in_vocabulary": kept, "noun_status": status, "hallucinated_flags": flags,
        "hallucinated_nouns": [n for n, f in zip(kept, flags, strict=True) if f],
        "truth_covered_flags": truth_flags, "covered_truth": [t for t, f in zip(truth, truth_flags, strict=True) if f],
        "hallu_covered_flags": hallu_flags, "covered_hallu": [h for h, f in zip(hallu, hallu_flags, strict=True) if f],
        "counter_deltas": {k: v for k, v in deltas.items() if v},
    }


def _lenient_generative(response: str, truth: Sequence[str], hallu: Sequence[str], *,
                        associations: Mapping[str, Sequence[str]], safe_words: Iterable[str]) -> dict[str, Any]:
    """mmpo's earlier reading (a deviation): word matching, see :func:`score_amber`."""
    from mmpo.evaluation.mentions import find_mentions

    safe_words = set(safe_words)
    vocabulary = set(amber_vocabulary(associations)) | set(truth) | set(hallu)
    found = find_mentions(response, sorted(vocabulary))
    mentions = [w for w, _, _ in found]
    located = [m for m in found if m[0] not in safe_words]
    words = [w for w, _, _ in located]
    truth, hallu = list(dict.fromkeys(truth)), list(dict.fromkeys(hallu))

    def names(obj: str) -> set[str]:
        return {obj, *associations.get(obj, ())}

    safe = set().union(*(names(t) for t in truth))
    flags = [int(w not in safe) for w in words]
    bad = {w for w, f in zip(words, flags, strict=True) if f}
    truth_flags = [int(bool(names(t) & set(words))) for t in truth]
    hallu_flags = [int(bool(names(h) & bad)) for h in hallu]
    deltas = {"chair_num": len(words), "chair_score": sum(flags), "safe_cover_num": len(truth),
              "safe_cover_score": sum(truth_flags), "hallu_cover_num": len(hallu),
              "hallu_cover_score": sum(hallu_flags), "non_hallu_score": int(not any(flags)), "non_hallu_num": 1}
    return {
        "located": located, "nouns": mentions, "nouns_in_vocabulary": words,
        "noun_status": ["hallucinated" if f else "truth_or_association" for f in flags], "hallucinated_flags": flags,
        "hallucinated_nouns": [w for w, f in zip(words, flags, strict=True) if f],
        "truth_covered_flags": truth_flags, "covered_truth": [t for t, f in zip(truth, truth_flags, strict=True) if f],
        "hallu_covered_flags": hallu_flags, "covered_hallu": [h for h, f in zip(hallu, hallu_flags, strict=True) if f],
        "counter_deltas": {k: v for k, v in deltas.items() if v},
    }


def score_amber_discriminative(response: str, truth: str, kind: str,
                               parsing: AmberParsing = "reference") -> dict[str, Any]:
    """One yes/no response to a question of annotation type ``kind`` whose answer is ``truth``.

    Correct when the truth is ``"yes"`` and the response reads "Yes", or the truth is anything else
    and it reads "No". A response that reads neither is wrong and is not a "No" answer. Returns
    ``dimension``, ``reference_label`` (``"Yes"`` / ``"No"`` / ``None``), ``correct``,
    ``counted_as_no_answer`` and ``counter_deltas`` (overall and the dimension's, zero entries omitted).
    """
    dimension = AMBER_DIMENSIONS.get(kind, "relation")
    label = amber_yes_no(response, parsing)
    is_no_truth = truth != "yes"
    correct = label == ("No" if is_no_truth else "Yes")
    answered_no = label == "No"
    deltas = {"qa_correct_score": int(correct), "qa_correct_num": 1, "qa_no_score": int(is_no_truth and correct),
              "qa_no_num": int(is_no_truth), "qa_ans_no_score": int(answered_no and truth == "no"),
              "qa_ans_no_num": int(answered_no)}
    prefix = AMBER_COUNTER_PREFIXES[dimension]
    deltas |= {prefix + k: v for k, v in deltas.items()}
    return {"dimension": dimension, "reference_label": label, "correct": correct,
            "counted_as_no_answer": answered_no, "counter_deltas": {k: v for k, v in deltas.items() if v}}


# ------------------------------------------------------------------------------------- aggregates

def _qa(counters: Mapping[str, float], dimensions: Sequence[str] | None, epsilon: float,
        rounded: bool) -> dict[str, float]:
    prefixes = [""] if dimensions is None else [AMBER_COUNTER_PREFIXES[d] for d in dimensions]

    def total(name: str) -> float:
        return sum(counters[p + name] for p in prefixes)

    accuracy = ratio(total("qa_correct_score"), total("qa_correct_num")) * 100
    precision = ratio(total("qa_ans_no_score"), total("qa_ans_no_num")) * 100
    recall = ratio(total("qa_no_score"), total("qa_no_num")) * 100
    if rounded:
        accuracy, precision, recall = round(accuracy, 1), round(precision, 1), round(recall, 1)
    f1 = ratio(2 * (precision / 100) * (recall / 100), (precision / 100) + (recall / 100) + epsilon) * 100
    return {"Accuracy": accuracy, "Precision": precision, "Recall": recall, "F1": round(f1, 1) if rounded else f1}


def amber_aggregates(counters: Mapping[str, float], *, rounded: bool = True,
                     parsing: AmberParsing = "reference") -> dict[str, Any]:
    """CHAIR, Cover, Hal, Cog, Accuracy, Precision, Recall, F1 and the six dimension sections, in
    percent, from the final counters. ``rounded``: the published values (``round(x, 1)``, F1 from
    the rounded P and R); otherwise the same expressions unrounded. ``"lenient"`` drops F1's
    ``+1e-4`` / ``+1e-3`` and, when rounded, rounds the F1 of unrounded P and R.
    """
    lenient = check_parsing(parsing) == "lenient"

    def r(x: float) -> float:
        return round(x, 1) if rounded else x

    out: dict[str, Any] = {
        "CHAIR": r(ratio(counters["chair_score"], counters["chair_num"]) * 100),
        "Cover": r(ratio(counters["safe_cover_score"], counters["safe_cover_num"]) * 100),
        "Hal": r(100 - ratio(counters["non_hallu_score"], counters["non_hallu_num"]) * 100),
        "Cog": r(ratio(counters["hallu_cover_score"], counters["hallu_cover_num"]) * 100),
    }
    for section, dimensions in (("", None), *_SECTIONS.items()):
        epsilon = 0.0 if lenient else 0.001 if section == "Existence" else 0.0001
        values = _qa(counters, dimensions, epsilon, rounded and not lenient)
        if lenient and rounded:
            values = {k: round(v, 1) for k, v in values.items()}
        if section:
            out[section] = values
        else:
            out |= values
    return out


def _amber_score(values: Mapping[str, Any], digits: int | None = None) -> float:
    """AMBER score = (100 - CHAIR + F1) / 2 (paper, Sec. 3.3); of published values (one decimal)
    it has two decimals, so it is rounded there to drop float noise (81.44999... -> 81.45)."""
    score = (100 - values["CHAIR"] + values["F1"]) / 2
    return score if digits is None else round(score, digits)


def _generative_spans(response: str, located: Sequence[tuple[str, int | None, int | None]],
                      item: Mapping[str, Any], truth: Sequence[str]) -> dict[str, Any]:
    """``spans`` (one per counted noun, hallucinated exactly where AMBER counts one, with AMBER's
    ``status``) and ``missed`` (truth objects no noun covered), see :mod:`mmpo.evaluation.spans`."""
    spans = [make_span(response, start, end, noun, "hallucinated" if status == "hallucinated" else "correct",
                       word=noun, status=status)
             for (noun, start, end), status in zip(located, item["noun_status"], strict=True)]
    return {"spans": spans, "missed": sorted(set(truth) - set(item["covered_truth"]))}


def score_amber(predictions: Sequence[Mapping[str, Any]], annotations: Mapping[int, Mapping[str, Any]], *,
                associations: Mapping[str, Sequence[str]] | None = None, safe_words: Iterable[str] | None = None,
                metrics: Mapping[str, float] | None = None, parsing: AmberParsing = "reference",
                nouns: Mapping[int, Sequence[str]] | None = None, similarity: Similarity | None = None,
                similarity_threshold: float = 0.8) -> dict[str, Any]:
    """Score AMBER responses ``[{"id", "response"}]`` against ``annotations`` (``{id: entry}``).

    Args:
        associations: ``relation.json`` (:func:`load_amber_associations`); required for
            ``"reference"``.
        safe_words: ``safe_words.txt`` (:func:`load_amber_safe_words`); required for ``"reference"``.
        metrics: initial counters (:func:`load_amber_metrics`); ``None`` uses AMBER's
            (:data:`AMBER_INITIAL_COUNTERS`) for ``"reference"`` and zeros for ``"lenient"``.
        parsing: ``"reference"`` (the module docstring's rules, exactly) or ``"lenient"``, mmpo's
            earlier reading kept as a documented deviation: object words by word matching
            (:func:`mmpo.evaluation.mentions.extract_mentions`, lower-cased, simple plurals, no POS
            tags) over relation.json plus the annotation's objects; safe words dropped (not in
            CHAIR's denominator); duplicated truth/hallu objects counted once; a word covers every
            truth object it names or is associated with; Cog counts hallu objects named by a
            hallucinated word; yes/no by the first word (:func:`amber_yes_no`); F1 without epsilon.
        nouns: ``{id: nouns}`` already extracted (e.g. the reference's own); other ids go through
            :func:`amber_nouns`. Ignored by ``"lenient"``.
        similarity, similarity_threshold: the reference's word-similarity fallback
            (:func:`score_amber_generative`); ``None`` = exact string equality.

    Returns:
        The published values (``CHAIR``, ``Cover``, ``Hal``, ``Cog``, ``Accuracy``, ``Precision``,
        ``Recall``, ``F1`` and ``Existence`` / ``Attribute`` / ``State`` / ``Number`` / ``Action`` /
        ``Relation`` sections of ``Accuracy``, ``Precision``, ``Recall``, ``F1``), in percent;
        ``AMBER_score`` (``None`` unless both tasks are present); ``unrounded`` (the same structure);
        ``counters`` (final); ``n_generative``, ``n_discriminative``, ``parsing``, ``similarity``,
        ``nlp``; and ``per_response`` (one dict per prediction, in order; a generative one also holds
        its ``response``, ``spans`` and ``missed``, see :mod:`mmpo.evaluation.spans`).
    """
    check_parsing(parsing)
    reference = parsing == "reference"
    if reference and (associations is None or safe_words is None):
        raise ValueError("AMBER reference scoring needs relation.json (associations=) and safe_words.txt "
                         "(safe_words=)")
    associations = associations or {}
    safe_words = list(safe_words or ())
    vocabulary = amber_vocabulary(associations)
    initial = dict(metrics) if metrics is not None else (
        dict(AMBER_INITIAL_COUNTERS) if reference else dict.fromkeys(AMBER_INITIAL_COUNTERS, 0))
    if missing := [name for name in AMBER_INITIAL_COUNTERS if name not in initial]:
        raise ValueError(f"AMBER metrics lack counters {missing}")
    counters = dict(initial)
    per_response = []
    n_generative = n_discriminative = 0
    used_nlp = False
    for index, row in enumerate(predictions):
        key = int(row["id"])
        response = row["response"]
        if not isinstance(response, str):
            raise ValueError(f"AMBER prediction {index} (id {key}): response is a {type(response).__name__}, "
                             "not a string")
        entry = annotations.get(key)
        if entry is None:
            raise ValueError(f"AMBER prediction {index}: id {key} is not in the annotations")
        if entry["type"] == "generative":
            n_generative += 1
            if not reference:
                item = _lenient_generative(response, entry["truth"], entry["hallu"], associations=associations,
                                           safe_words=safe_words)
                located = item.pop("located")
            else:
                if nouns is not None and key in nouns:
                    located = [(noun, None, None) for noun in nouns[key]]
                else:
                    located, used_nlp = amber_noun_spans(response), True
                item = score_amber_generative([noun for noun, _, _ in located], entry["truth"], entry["hallu"],
                                              associations=associations, safe_words=safe_words,
                                              vocabulary=vocabulary, similarity=similarity,
                                              similarity_threshold=similarity_threshold, entry_id=key)
                located = [m for m in located if m[0] in vocabulary]
            item = {"response": response, **item, **_generative_spans(response, located, item, entry["truth"])}
        else:
            n_discriminative += 1
            item = {"truth": entry["truth"],
                    **score_amber_discriminative(response, entry["truth"], entry["type"], parsing)}
        for name, delta in item["counter_deltas"].items():
            counters[name] += delta
        per_response.append({"id": key, "type": entry["type"], **item})

    published = amber_aggregates(counters, parsing=parsing)
    unrounded = amber_aggregates(counters, rounded=False, parsing=parsing)
    both = bool(n_generative and n_discriminative)
    published["AMBER_score"] = _amber_score(published, 2) if both else None
    unrounded["AMBER_score"] = _amber_score(unrounded) if both else None
    if not reference:
        nlp: dict[str, str] = {"nouns": "word matching (parsing='lenient'), no NLP"}
    elif used_nlp:
        from mmpo.evaluation.text import nlp_backends

        nlp = nlp_backends(tagging=True)
    else:
        nlp = {"nouns": "supplied by the caller (nouns=)"}
    if similarity is None:
        similarity_text = EXACT_SIMILARITY
    else:
        name = getattr(similarity, "__name__", type(similarity).__name__)
        similarity_text = f"caller-supplied {name}(a, b) > {similarity_threshold}, after exact matches"
    return {**published, "unrounded": unrounded, "counters": counters, "n_generative": n_generative,
            "n_discriminative": n_discriminative, "parsing": parsing,
            "similarity": similarity_text if reference else "not used (parsing='lenient')", "nlp": nlp,
            "per_response": per_response}


def format_amber_stdout(result: Mapping[str, Any]) -> str:
    """What the reference prints (``--evaluation_type a``), from a :func:`score_amber` result;
    its spelling (``Descriminative``, ``Exsitence``) and spacing kept."""
    lines = ["Generative Task:", f"CHAIR:\t\t {result['CHAIR']}", f"Cover:\t\t {result['Cover']}",
             f"Hal:\t\t {result['Hal']}", f"Cog:\t\t {result['Cog']} \n"]

    def block(title: str, values: Mapping[str, Any], last: bool = False) -> None:
        lines.extend([f"{title}:", f"Accuracy:\t {values['Accuracy']}", f"Precision:\t {values['Precision']}",
                      f"Recall:\t\t {values['Recall']}", f"F1:\t\t {values['F1']}" + ("" if last else " \n")])

    block("Descriminative Task", result)
    for section, title in (("Existence", "Exsitence"), ("Attribute", "Attribute"), ("State", "State"),
                           ("Number", "Number"), ("Action", "Action")):
        block(title, result[section])
    block("Relation", result["Relation"], last=True)
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- run

def run_amber(model: Any, processor: Any, queries: str | Path, annotations: str | Path, image_dir: str | Path, *,
              parsing: AmberParsing = "reference", associations: str | Path | None = None,
              safe_words: str | Path | None = None, metrics: str | Path | None = None, limit: int | None = None,
              yes_no_suffix: str = "", batch_size: int = 8, max_new_tokens: int = 256,
              yes_no_max_new_tokens: int = 8, similarity: Similarity | None = None) -> dict[str, Any]:
    """Answer AMBER queries with ``model`` and score them with :func:`score_amber` (``similarity``:
    its word-similarity fallback, e.g. :func:`spacy_similarity`; ``None`` = exact matches only).

    Args:
        queries: a query file (``query_all.json`` or any ``query_*.json``).
        annotations: ``annotations.json``.
        image_dir: the folder holding each query's ``image``.
        parsing: see :func:`score_amber`.
        associations, safe_words, metrics: ``relation.json``, ``safe_words.txt``, ``metrics.txt``;
            when not given, the file of that name beside ``annotations`` (AMBER's ``data/``
            layout). ``"reference"`` needs all three; ``"lenient"`` uses any it finds.
        limit: only the first ``limit`` generative and the first ``limit`` discriminative queries.
        yes_no_suffix: appended to discriminative queries.
        max_new_tokens: description length; ``yes_no_max_new_tokens``: yes/no answer length.

    Returns:
        :func:`score_amber`'s dict plus ``predictions``: ``[{"id", "response"}]`` (AMBER's format).
    """
    from mmpo.generation import generate_responses

    data = load_amber_data(annotations, associations=associations, safe_words=safe_words, metrics=metrics,
                           parsing=parsing)
    entries = load_amber_annotations(annotations)
    rows = load_amber_queries(queries)
    for index, q in enumerate(rows):
        if int(q["id"]) not in entries:
            raise ValueError(f"AMBER query file {queries}: record {index} has id {q['id']!r}, which is not in "
                             f"{annotations}")
    generative = [q for q in rows if entries[int(q["id"])]["type"] == "generative"][:limit]
    yes_no = [q for q in rows if entries[int(q["id"])]["type"] != "generative"][:limit]
    predictions = []
    for group, suffix, length in ((generative, "", max_new_tokens), (yes_no, yes_no_suffix, yes_no_max_new_tokens)):
        if group:
            answers = generate_responses(model, processor, [Path(image_dir) / q["image"] for q in group],
                                         [q["query"] + suffix for q in group], batch_size=batch_size,
                                         max_new_tokens=length)
            predictions += [{"id": q["id"], "response": a} for q, a in zip(group, answers, strict=True)]
    predictions.sort(key=lambda p: int(p["id"]))
    scores = score_amber(predictions, entries, parsing=parsing, similarity=similarity, **data)
    return {**scores, "predictions": predictions}
