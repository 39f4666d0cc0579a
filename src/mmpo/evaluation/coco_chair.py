"""CHAIR and Object HalBench on COCO-style annotations, read from the published file formats.

CHAIR: Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018, Sec. 2.
Object HalBench: Yu et al., "RLHF-V", CVPR 2024, Sec. 5.1 (300 COCO val2014 images, detailed
description prompts, CHAIR-style scoring); its evaluation code is in the RLAIF-V repository
(``eval/eval_gpt_obj_halbench.py``).

Inputs, in their published layouts:

* ground truth: COCO ``instances_*.json`` (``images``, ``annotations`` with ``image_id`` /
  ``category_id``, ``categories`` with ``id`` / ``name``), optionally COCO ``captions_*.json``
  (``annotations`` with ``image_id`` / ``caption``), whose mentioned objects join the ground truth
  as in the original CHAIR;
* generations: JSONL (or a JSON list) of ``{"image_id": ..., "caption" | "response" | "text" |
  "answer": ...}``; the CHAIR repository's ``{"imgToEval": {...}}`` dict is accepted too.

Words are matched with :func:`mmpo.evaluation.chair.extract_mentions` against a synonym table the
project wrote itself (:data:`COCO_SYNONYMS`; not the original CHAIR list). Phrases in
:data:`COCO_NON_OBJECT_PHRASES` ("train tracks", "bus stop", ...) are consumed without counting,
so their words do not fire a category.

Two families of numbers come out of :func:`score_chair` (``M_r``: distinct categories mentioned by
response ``r``; ``W_r``: distinct *names* mentioned, each mapped to its category; ``T_r``: true
categories of its image; ``N``: responses)::

    chair_i  = sum_r |M_r - T_r| / sum_r |M_r|          # categories, once per response
    chair_s  = #{r : M_r - T_r != {}} / N                # all responses
    coverage = sum_r |M_r & T_r| / sum_r |T_r|           # RLAIF-V's "object recall"

    object_halbench/response_hallucination_rate
             = #{r : M_r - T_r != {}} / #{r : M_r != {}} # RLAIF-V's CHAIRs_refine
    object_halbench/response_non_hallucination_rate      = 1 - the above
    object_halbench/response_non_hallucination_rate_all  = 1 - chair_s (denominator: all responses)
    object_halbench/mention_hallucination_rate
             = sum_r #{w in W_r : cat(w) not in T_r} / sum_r |W_r|
    object_halbench/mention_non_hallucination_rate       = 1 - the above

Denominators (checked against RLAIF-V's code): the response-level rate it reports ("Response
Hall" / ``correct_rate``) divides by the responses that mention *at least one* COCO object, not
by all responses; a response with no object mention is left out. Both versions are reported. The
mention-level rate counts each distinct object *word* once per response (RLAIF-V de-duplicates the
GPT-extracted object words per response), so "a man and a woman" is two mentions of ``person``,
whereas ``chair_i`` counts ``person`` once. Every ratio with a zero denominator is ``0.0``.

What differs from the originals: RLAIF-V first asks GPT to list the objects in a response and
lemmatises with spaCy/NLTK; here words are matched directly (simple plural rules, the synonym
table's irregular plurals), with no language model and no POS tagger. So an adjective use of a
name still counts (the colour "orange" fires the fruit, as in the original CHAIR).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpo.evaluation.chair import chair_scores, extract_mentions

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

_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")


def _synonyms() -> dict[str, str]:
    """The project's own name -> category table (singular forms; regular plurals are automatic)."""
    groups: dict[str, tuple[str, ...]] = {
        "person": ("people", "persons", "man", "men", "woman", "women", "child", "children", "kid",
                   "boy", "girl", "baby", "babies", "toddler", "teenager", "teen", "adult", "guy",
                   "lady", "ladies", "gentleman", "gentlemen", "player", "skier", "surfer",
                   "skateboarder", "snowboarder", "pedestrian", "rider", "biker", "cyclist",
                   "policeman", "policemen", "officer", "chef", "cook", "umpire", "catcher",
                   "spectator", "crowd", "tourist", "worker", "vendor", "athlete", "human",
                   "someone", "somebody", "husband", "wife", "mother", "father",
                   "daughter", "son", "grandmother", "grandfather"),
        "bicycle": ("bike", "push bike", "mountain bike"),
        "car": ("automobile", "sedan", "taxi", "cab", "suv", "jeep", "minivan", "van"),
        "motorcycle": ("motorbike", "motor bike", "moped", "dirt bike", "motor cycle"),
        "airplane": ("plane", "aeroplane", "airliner", "jet", "jetliner", "aircraft", "passenger jet",
                     "jumbo jet"),
        "bus": ("school bus", "double decker", "minibus", "coach bus"),
        "train": ("locomotive", "tram", "streetcar", "passenger train", "freight train", "train car"),
        "truck": ("lorry", "pickup truck", "fire truck", "firetruck", "dump truck", "semi truck"),
        "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry", "rowboat", "speedboat",
                 "motorboat", "vessel", "raft"),
        "traffic light": ("traffic signal", "stoplight", "stop light"),
        "fire hydrant": ("hydrant",),
        "stop sign": ("stopsign",),
        "bench": ("park bench",),
        "bird": ("pigeon", "seagull", "gull", "duck", "parrot", "sparrow", "goose", "geese", "swan",
                 "eagle", "owl", "crow", "hawk", "pelican", "chicken", "hen", "rooster", "flamingo"),
        "cat": ("kitten", "kitty", "tabby"),
        "dog": ("puppy", "pup", "doggy", "hound"),
        "horse": ("pony", "foal", "stallion", "mare"),
        "sheep": ("lamb", "ewe"),
        "cow": ("cattle", "bull", "calf", "calves", "ox", "oxen", "heifer"),
        "bear": ("grizzly", "polar bear", "brown bear", "black bear"),
        "backpack": ("back pack", "rucksack", "knapsack"),
        "umbrella": ("parasol",),
        "handbag": ("hand bag", "purse", "pocketbook"),
        "tie": ("necktie", "bow tie", "bowtie"),
        "suitcase": ("suit case", "luggage", "baggage"),
        "frisbee": ("flying disc",),
        "skis": ("ski",),
        "snowboard": ("snow board",),
        "sports ball": ("ball", "soccer ball", "football", "tennis ball", "basketball", "volleyball",
                        "softball"),
        "baseball bat": ("bat",),
        "baseball glove": ("glove", "mitt", "baseball mitt"),
        "skateboard": ("skate board",),
        "surfboard": ("surf board", "boogie board", "bodyboard"),
        "tennis racket": ("racket", "racquet", "tennis racquet"),
        "bottle": ("water bottle", "wine bottle", "beer bottle"),
        "wine glass": ("wineglass", "champagne glass"),
        "cup": ("mug", "teacup", "coffee cup", "coffee mug"),
        "knife": ("knives",),
        "bowl": ("fruit bowl",),
        "donut": ("doughnut",),
        "cake": ("cupcake", "cheesecake"),
        "chair": ("armchair", "stool", "highchair", "high chair"),
        "couch": ("sofa", "loveseat", "love seat", "settee"),
        "potted plant": ("plant", "houseplant", "house plant", "pot plant", "flower pot", "flowerpot"),
        "dining table": ("table", "dinner table", "kitchen table", "coffee table"),
        "toilet": ("toilet seat", "toilet bowl", "urinal"),
        "tv": ("television", "tvs", "tv set", "flatscreen", "flat screen"),
        "laptop": ("computer", "notebook computer", "macbook"),
        "mouse": ("computer mouse", "mice"),
        "remote": ("remote control", "controller", "game controller"),
        "keyboard": ("computer keyboard",),
        "cell phone": ("phone", "cellphone", "smartphone", "mobile phone", "cellular phone",
                       "telephone", "iphone"),
        "microwave": ("microwave oven",),
        "oven": ("stove", "stovetop"),
        "sink": ("washbasin", "basin"),
        "refrigerator": ("fridge", "freezer"),
        "book": ("novel", "textbook"),
        "clock": ("wall clock", "clocktower", "clock tower"),
        "scissors": ("scissor", "shears"),
        "teddy bear": ("teddy", "teddybear", "stuffed bear", "stuffed animal"),
        "hair drier": ("hair dryer", "hairdryer", "blow dryer", "blowdryer", "blow drier"),
        "toothbrush": ("tooth brush",),
    }
    table = {name: category for category, names in groups.items() for name in names}
    for animal in _ANIMALS:                 # "baby elephant" is an elephant, not a person
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    return table


#: Name -> COCO category: synonyms, multi-word names and irregular plurals (written for this project).
COCO_SYNONYMS: dict[str, str] = _synonyms()

#: Phrases whose words would otherwise fire a category although no such object is meant.
COCO_NON_OBJECT_PHRASES: tuple[str, ...] = (
    "train track", "train station", "train platform", "railroad track", "bus stop", "bus station",
    "bus terminal", "home plate", "tie dye",
)


def coco_name_table(categories: Iterable[str] = COCO_CATEGORIES,
                    synonyms: Mapping[str, str] = COCO_SYNONYMS,
                    non_object_phrases: Iterable[str] = COCO_NON_OBJECT_PHRASES) -> dict[str, str | None]:
    """Every name the matcher knows, mapped to its category (``None`` for non-object phrases).

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
    """``(name, category)`` for every object name in ``text``, in order, repeats kept.

    The scan is :func:`mmpo.evaluation.chair.extract_mentions` with every *name* as its own
    vocabulary entry (longest match first, simple plurals), so the matched name is known too.
    """
    return [(name, table[name]) for name in extract_mentions(text, list(table)) if table[name] is not None]


@dataclass(frozen=True)
class CocoGroundTruth:
    """The true categories of each image, with its file name and the file's category names."""

    objects: dict[int, frozenset[str]]
    file_names: dict[int, str]
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids_by_name", {name: i for i, name in self.file_names.items()})

    def image_id(self, key: Any) -> int:
        """An image id from an int, a digit string, or a file name listed in the instances file."""
        if isinstance(key, int) and key in self.objects:
            return key
        text = str(key)
        if text.isdigit() and int(text) in self.objects:
            return int(text)
        if text in self._ids_by_name:
            return self._ids_by_name[text]
        raise KeyError(f"image {key!r} is not in the COCO annotations")


def _paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def load_coco_ground_truth(instances: str | Path | Iterable[str | Path],
                           captions: str | Path | Iterable[str | Path] = (),
                           synonyms: Mapping[str, str] = COCO_SYNONYMS) -> CocoGroundTruth:
    """Read COCO ``instances_*.json`` (and optionally ``captions_*.json``) files.

    Each image's ground truth is the set of categories of its instance annotations, plus (as in the
    original CHAIR) every category its reference captions mention. Several files (e.g. train2014
    and val2014, as RLAIF-V combines them) are merged. Images without any annotation get an empty
    set.
    """
    objects: dict[int, set[str]] = {}
    file_names: dict[int, str] = {}
    categories: dict[int, str] = {}
    for path in _paths(instances):
        data = json.loads(path.read_text())
        categories.update({c["id"]: c["name"] for c in data["categories"]})
        for image in data.get("images", []):
            objects.setdefault(image["id"], set())
            file_names[image["id"]] = image.get("file_name", str(image["id"]))
        for ann in data["annotations"]:
            objects.setdefault(ann["image_id"], set()).add(categories[ann["category_id"]])
    names = tuple(categories[k] for k in sorted(categories))
    table = coco_name_table(names, synonyms)
    for path in _paths(captions):
        for ann in json.loads(path.read_text())["annotations"]:
            if ann["image_id"] in objects:
                objects[ann["image_id"]].update(c for _, c in extract_object_words(ann["caption"], table))
    return CocoGroundTruth({k: frozenset(v) for k, v in objects.items()}, file_names, names)


_RESPONSE_KEYS = ("caption", "response", "text", "answer")


def _normalise_generation(row: Mapping[str, Any]) -> dict[str, Any]:
    key = next((k for k in _RESPONSE_KEYS if k in row), None)
    if key is None or "image_id" not in row:
        raise ValueError(f"a generation needs 'image_id' and one of {_RESPONSE_KEYS}; got keys {sorted(row)}")
    question = row.get("question", row.get("prompt"))
    return {"image_id": row["image_id"], "question": question, "response": str(row[key])}


def load_generations(path: str | Path) -> list[dict[str, Any]]:
    """Generations from JSONL, a JSON list, or CHAIR's ``{"imgToEval": {...}}`` JSON.

    Each row becomes ``{"image_id", "question", "response"}``; the response is read from
    ``caption``, ``response``, ``text`` or ``answer`` (the first present).
    """
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = list(data["imgToEval"].values()) if "imgToEval" in data else [data]
    return [_normalise_generation(row) for row in data]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


DEFINITIONS: dict[str, str] = {
    "chair_i": "hallucinated categories / mentioned categories (each category once per response)",
    "chair_s": "responses with >= 1 hallucinated category / all responses",
    "coverage": "true categories mentioned / all true categories (object recall)",
    "object_halbench/response_hallucination_rate":
        "responses with >= 1 hallucinated object / responses mentioning >= 1 object (RLAIF-V CHAIRs_refine)",
    "object_halbench/response_non_hallucination_rate":
        "1 - response_hallucination_rate (denominator: responses mentioning >= 1 object)",
    "object_halbench/response_non_hallucination_rate_all":
        "responses without hallucination / all responses = 1 - chair_s",
    "object_halbench/mention_hallucination_rate":
        "hallucinated object words / object words (each distinct word once per response)",
    "object_halbench/mention_non_hallucination_rate": "1 - mention_hallucination_rate",
}


def score_chair(generations: Sequence[Mapping[str, Any]], ground_truth: CocoGroundTruth,
                synonyms: Mapping[str, str] = COCO_SYNONYMS,
                non_object_phrases: Iterable[str] = COCO_NON_OBJECT_PHRASES) -> dict[str, Any]:
    """CHAIR and Object HalBench rates of ``generations`` (formulas in the module docstring).

    Args:
        generations: rows with ``image_id`` and a response (see :func:`load_generations`).
        ground_truth: from :func:`load_coco_ground_truth`.
        synonyms, non_object_phrases: the matcher's table (see :func:`coco_name_table`).

    Returns:
        ``chair_i``, ``chair_s``, ``coverage``, ``mentions_per_response``, ``n_responses``,
        ``n_mentions``, ``n_hallucinated`` (CHAIR); ``object_halbench/...`` rates and counts;
        ``definitions`` (metric -> "numerator / denominator"); ``per_response``: the matched and
        hallucinated categories of each response.
    """
    table = coco_name_table(ground_truth.categories, synonyms, non_object_phrases)
    categories, truths, per_response = [], [], []
    n_words = n_bad_words = n_with_mentions = n_bad_responses = 0
    for row in map(_normalise_generation, generations):
        truth = ground_truth.objects[ground_truth.image_id(row["image_id"])]
        words = list(dict.fromkeys(extract_object_words(row["response"], table)))  # distinct (name, category)
        mentioned = [c for _, c in words]
        hallucinated = sorted({c for c in mentioned if c not in truth})
        n_words += len(words)
        n_bad_words += sum(c not in truth for _, c in words)
        n_with_mentions += bool(words)
        n_bad_responses += bool(hallucinated)
        categories.append(mentioned)
        truths.append(truth)
        per_response.append({"image_id": row["image_id"], "mentioned": sorted(set(mentioned)),
                             "hallucinated": hallucinated})
    chair = chair_scores(categories, truths)
    response_rate = _ratio(n_bad_responses, n_with_mentions)
    return {
        **chair,
        "object_halbench/response_hallucination_rate": response_rate,
        "object_halbench/response_non_hallucination_rate": _ratio(n_with_mentions - n_bad_responses, n_with_mentions),
        "object_halbench/response_non_hallucination_rate_all": _ratio(chair["n_responses"] - n_bad_responses,
                                                                      chair["n_responses"]),
        "object_halbench/mention_hallucination_rate": _ratio(n_bad_words, n_words),
        "object_halbench/mention_non_hallucination_rate": _ratio(n_words - n_bad_words, n_words),
        "object_halbench/n_responses_with_mentions": n_with_mentions,
        "object_halbench/n_object_words": n_words,
        "object_halbench/n_hallucinated_words": n_bad_words,
        "definitions": dict(DEFINITIONS),
        "per_response": per_response,
    }


def open_image_field(value: str, image_dir: str | Path | None):
    """An image path under ``image_dir`` (or as given), or a PIL image decoded from base64 data
    (RLAIF-V's ``*_with_image.jsonl`` files embed the image that way)."""
    path = Path(image_dir) / value if image_dir is not None else Path(value)
    if len(value) < 1024 and path.exists():
        return path
    from PIL import Image

    from mmpo.prompting import to_rgb

    try:
        with Image.open(io.BytesIO(base64.b64decode(value, validate=True))) as image:
            return to_rgb(image)
    except Exception as error:  # not a file and not base64 image data
        raise FileNotFoundError(f"image {value[:80]!r} is neither a file under {image_dir} nor base64 data") from error


def load_chair_questions(path: str | Path) -> list[dict[str, Any]]:
    """Object HalBench-style questions: JSONL of ``{"image_id", "question", "image"?}``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for row in rows:
        if "image_id" not in row or "question" not in row:
            raise ValueError(f"{path}: each line needs 'image_id' and 'question'; got keys {sorted(row)}")
    return rows


DEFAULT_PROMPT = "Describe this image in detail."


def run_chair(model: Any, processor: Any, instances: str | Path | Iterable[str | Path], image_dir: str | Path, *,
              captions: str | Path | Iterable[str | Path] = (), questions: str | Path | None = None,
              prompt: str = DEFAULT_PROMPT, limit: int | None = None, batch_size: int = 8,
              max_new_tokens: int = 256, progress: bool = False) -> dict[str, Any]:
    """Generate a description per image (or per question) and score it with :func:`score_chair`.

    Args:
        model, processor: a transformers VLM and its processor (see
            :func:`mmpo.evaluation.generation.generate_responses`).
        instances, captions: COCO annotation files (see :func:`load_coco_ground_truth`).
        image_dir: folder of the images (``file_name`` of the instances file, or the question's
            ``image`` field).
        questions: optional Object HalBench-style JSONL (:func:`load_chair_questions`); without it
            every image of the instances file is asked ``prompt``.
        limit: evaluate only the first ``limit`` images/questions.
        batch_size, max_new_tokens: generation settings.

    Returns:
        :func:`score_chair`'s dict plus ``predictions``: ``[{"image_id", "question", "caption"}]``.
    """
    from mmpo.evaluation.generation import generate_responses

    truth = load_coco_ground_truth(instances, captions)
    if questions is not None:
        items = load_chair_questions(questions)
    else:
        items = [{"image_id": i, "question": prompt} for i in sorted(truth.file_names)]
    items = items[:limit] if limit is not None else items
    images = [open_image_field(str(q.get("image") or truth.file_names[truth.image_id(q["image_id"])]), image_dir)
              for q in items]
    responses = generate_responses(model, processor, images, [q["question"] for q in items],
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    predictions = [{"image_id": q["image_id"], "question": q["question"], "caption": r}
                   for q, r in zip(items, responses, strict=True)]
    return {**score_chair(predictions, truth), "predictions": predictions}
