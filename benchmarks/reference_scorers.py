"""mmpo's benchmark numbers next to the reference scorers' own, on the golden files.

    python benchmarks/reference_scorers.py [--fixtures DIR] [--out FILE]

``--fixtures`` is a copy of the reference-metrics fixture set (inputs plus the reference scorers'
outputs for CHAIR, Object HalBench, POPE, AMBER and MMHal; default: the copy the tests use,
``tests/fixtures/reference``). For every aggregate the reference printed, the table shows the
reference's value, mmpo's with the default ``--parsing reference`` (read from the raw inputs
through mmpo's loaders and its own text pipeline, nothing taken from the reference's per-item
outputs), whether the two are equal (to 1e-9), and mmpo's ``--parsing lenient`` value, the old
tolerant reading, for comparison. The NLP backends in use are printed first: without NLTK's
tagger data, AMBER's part-of-speech step runs a different tagger model and its residual shows
here. Not a test: nothing asserts. Results: ``benchmarks/results/reference_scorers.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import tempfile
from pathlib import Path

from mmpo.evaluation import amber, chair, coco, mmhal, pope
from mmpo.evaluation.text import nlp_backends

ROOT = Path(__file__).resolve().parent.parent


def _text(path: Path) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8")
    return gzip.decompress(path.with_name(path.name + ".gz").read_bytes()).decode("utf-8")


def _json(path: Path):
    return json.loads(_text(path))


def _plain(path: Path, scratch: Path) -> Path:
    """``path``, or its ``.gz`` copy decompressed into ``scratch`` (the loaders read plain files)."""
    if path.exists():
        return path
    out = scratch / path.parent.name / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_text(path), encoding="utf-8")
    return out


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.equal = self.total = 0

    def add(self, bench: str, metric: str, reference, ours, lenient) -> None:
        same = (isinstance(reference, str) and reference == ours) or (
            not isinstance(reference, str) and ours is not None and math.isclose(reference, ours, rel_tol=0, abs_tol=1e-9))
        self.total += 1
        self.equal += bool(same)
        self.rows.append((bench, metric, _fmt(reference), _fmt(ours), "yes" if same else "**no**", _fmt(lenient)))

    def markdown(self) -> str:
        head = ("benchmark", "metric", "reference", "mmpo (reference)", "equal", "mmpo (lenient)")
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + f"\n\n{self.equal} of {self.total} reference numbers reproduced exactly.\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def chair_rows(root: Path, table: Table) -> None:
    aggregates = _json(root / "chair" / "aggregates.json")
    for gt in ("with_captions", "instances_only"):
        truth = coco.load_coco_ground_truth(root / "chair" / ("annotations" if gt == "with_captions"
                                                            else "annotations_instances_only"))
        captions = chair.load_generations(root / "chair" / "generations_imgToEval.json")
        ours = chair.score_chair(captions, truth)
        lenient = chair.score_chair(captions, truth, parsing="lenient")
        for key in ("CHAIRs", "CHAIRi", "Recall"):
            table.add(f"CHAIR ({gt})", key, aggregates[gt]["chair"][key], ours[key], lenient.get(key))
        responses = chair.load_generations(root / "chair" / "generations.jsonl")
        ours = chair.score_object_halbench(responses, truth)
        lenient = chair.score_object_halbench(responses, truth, parsing="lenient")
        reference = aggregates[gt]["object_halbench"]
        for ref_key, key in (("CHAIRs_refine", "response_hallucination_rate"), ("CHAIRi", "mention_hallucination_rate"),
                             ("obj_rec", "object_recall"), ("CHAIRs", "CHAIRs"), ("avg_word_len", "avg_word_len"),
                             ("coco_sentence_num", "coco_sentence_num"), ("coco_word_count", "coco_word_count")):
            table.add(f"Object HalBench ({gt})", f"{key}", reference[ref_key], ours[key], lenient.get(key))


def pope_rows(root: Path, table: Table) -> None:
    aggregates = _json(root / "pope" / "aggregates.json")
    labels = {s: root / "pope" / "annotations" / f"coco_pope_{s}.json" for s in pope.SPLITS}
    answers = {s: pope.load_pope_predictions(root / "pope" / f"aoi_answers_{s}.json", labels[s]) for s in pope.SPLITS}
    rows = {s: pope.load_pope_questions(labels[s]) for s in pope.SPLITS}
    ours, lenient = pope.score_pope(answers, rows), pope.score_pope(answers, rows, "lenient")
    for split in pope.SPLITS:
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            table.add(f"POPE {split}", key, aggregates["aoidragon"][split][key], ours[split][key], lenient[split][key])
        table.add(f"POPE {split}", "LLaVA summary line", aggregates["llava_summary_line"][split],
                  ours[split]["summary_line"], lenient[split]["summary_line"])


def amber_rows(root: Path, table: Table, scratch: Path) -> None:
    aggregates = _json(root / "amber" / "aggregates.json")
    data = root / "amber"
    annotations = amber.load_amber_annotations(_plain(data / "annotations.json", scratch))
    files = {"associations": amber.load_amber_associations(data / "relation.json"),
             "safe_words": amber.load_amber_safe_words(data / "safe_words.txt"),
             "metrics": amber.load_amber_metrics(data / "metrics.txt")}
    for variant in ("plain", "clean", "messy"):
        responses = amber.load_amber_predictions(_plain(data / f"responses_{variant}.json", scratch))
        ours = amber.score_amber(responses, annotations, **files)
        lenient = amber.score_amber(responses, annotations, parsing="lenient", **files)
        published = aggregates[variant]["published"]
        for key, value in published.items():
            section, metric = key.split("/")
            name = {"chair": "CHAIR", "f1": "F1"}.get(metric, metric.capitalize())
            where = _AMBER_SECTIONS.get(section)
            ours_value = ours[name] if where is None else ours[where][name]
            lenient_value = lenient[name] if where is None else lenient[where][name]
            table.add(f"AMBER {variant}", key, value, ours_value, lenient_value)


#: the reference's aggregate sections -> mmpo's result sections (None: the top level)
_AMBER_SECTIONS = {"generative": None, "discriminative": None, "existence": "Existence", "attribute": "Attribute",
                   "attribute_state": "State", "attribute_number": "Number", "attribute_action": "Action",
                   "relation": "Relation"}


def mmhal_rows(root: Path, table: Table) -> None:
    aggregates = _json(root / "mmhal" / "aggregates.json")
    replies = mmhal.load_mmhal_reviews(root / "mmhal" / "evaluation.json")
    ours, lenient = mmhal.score_mmhal_replies(replies), mmhal.score_mmhal_replies(replies, "lenient")
    for key in ("average_score", "hallucination_rate"):
        table.add("MMHal", key, aggregates[key], ours[key], lenient[key])
    table.add("MMHal", "informativeness (%)", aggregates["rlaifv_informativeness_percent"], ours["informativeness"],
              lenient["informativeness"])
    for kind, value in aggregates["score_per_type"].items():
        table.add("MMHal", f"score {kind}", value, ours["score_per_type"][kind], lenient["score_per_type"][kind])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures" / "reference")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    ns = parser.parse_args(argv)
    backends = nlp_backends(tagging=True)
    table = Table()
    with tempfile.TemporaryDirectory() as scratch:
        chair_rows(ns.fixtures, table)
        pope_rows(ns.fixtures, table)
        amber_rows(ns.fixtures, table, Path(scratch))
        mmhal_rows(ns.fixtures, table)
    text = ("NLP backends: " + "; ".join(f"{k}: {v}" for k, v in backends.items()) + "\n\n" + table.markdown())
    print(text)
    if ns.out:
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
