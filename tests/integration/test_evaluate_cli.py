"""``mmpo evaluate`` end to end: an untrained tiny LLaVA saved to disk, every benchmark read from
the files the synthetic world writes, MMHal-Bench judged by a local fake server; then --compare."""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import chat_reply, fake_chat_server
from mmpo.cli.evaluate import BENCHMARKS, build_parser, main
from mmpo.evaluation.report import scalar_metrics
from mmpo.toyworld.benchmark_files import write_toy_benchmarks
from mmpo.toyworld.scenes import WorldConfig, sample_scenes


@pytest.fixture
def judge_url(monkeypatch):
    """A fake judge on 127.0.0.1 (:func:`helpers.fake_chat_server`) that answers every chat completion
    with "Rating: 4", announced through MMPO_JUDGE_URL / MMPO_JUDGE_API_KEY; its ``requests``
    record each request's Authorization header."""
    with fake_chat_server(lambda server, request: (200, chat_reply("Fine.\nRating: 4"), {})) as server:
        monkeypatch.setenv("MMPO_JUDGE_URL", f"{server.url}/v1")
        monkeypatch.setenv("MMPO_JUDGE_API_KEY", "sk-local")
        yield server


def test_usage_errors():
    build_parser()                                          # importing and building has no side effects
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--model", "m", "--benchmark", "pope", "--output-dir", "o", "--pope-images", "i"])   # no questions
    with pytest.raises(SystemExit):
        main(["--model", "m", "--benchmark", "chair", "--output-dir", "o"])                          # no COCO files
    with pytest.raises(SystemExit):
        main(["--pope-file", "train=x.json", "--compare", "a"])                                     # unknown split


def test_evaluate_every_benchmark_then_compare(tiny_checkpoint, tmp_path, judge_url, capsys):
    scenes = sample_scenes(WorldConfig(seed=21).held_out(), 3, prefix="e")
    files = write_toy_benchmarks(tmp_path / "bench", scenes)
    run = tmp_path / "runs" / "untrained"
    argv = [
        "--model", str(tiny_checkpoint), "--output-dir", str(run), "--batch-size", "16",
        "--max-new-tokens", "4", "--yes-no-max-new-tokens", "2", "--synthetic-scenes", "3", "--limit", "8",
        *[arg for bench in BENCHMARKS for arg in ("--benchmark", bench)],
        "--coco-instances", str(files.instances), "--coco-captions", str(files.captions),
        "--coco-images", str(files.images), "--chair-questions", str(files.chair_questions),
        "--pope-dir", str(files.pope_dir), "--pope-images", str(files.images),
        "--amber-queries", str(files.amber_queries), "--amber-annotations", str(files.amber_annotations),
        "--amber-images", str(files.images),
        "--mmhal-template", str(files.mmhal_template), "--mmhal-images", str(files.images),
    ]
    assert main(argv) == 0

    results = json.loads((run / "results.json").read_text())
    assert results["run"] == "untrained" and list(results["benchmarks"]) == list(BENCHMARKS)
    b = results["benchmarks"]
    expected = {"chair": ("CHAIRs", "CHAIRi", "Recall"),
                "object_halbench": ("response_hallucination_rate", "mention_hallucination_rate", "object_recall"),
                "pope": ("random", "popular", "adversarial", "mean"),
                "amber": ("CHAIR", "Cover", "Hal", "Cog", "Accuracy", "Precision", "Recall", "F1", "Existence",
                          "Attribute", "Relation", "AMBER_score"),
                "mmhal": ("average_score", "hallucination_rate", "score_per_type"),
                "synthetic": ("chair_i", "pope_f1")}
    for bench, keys in expected.items():
        assert set(keys) <= set(b[bench]), bench
        assert b[bench]["parsing"] == ("exact" if bench == "synthetic" else "reference"), bench
        values = [v for (name, _), v in scalar_metrics(results).items() if name == bench]
        assert values and all(math.isfinite(v) for v in values), bench
        assert (run / "predictions" / f"{bench}.json").exists()
    assert set(b["pope"]["random"]) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert b["pope"]["random"]["n"] > 0
    assert b["mmhal"] == {**b["mmhal"], "average_score": 4.0, "hallucination_rate": 0.0, "n_replies": 3}
    assert [r["auth"] for r in judge_url.requests] == ["Bearer sk-local"] * 3
    assert "predictions" not in b["amber"] and "reviews" not in b["mmhal"]
    assert "| amber | reference | AMBER_score |" in (run / "results.md").read_text()
    assert "| pope | reference | mean/f1 |" in capsys.readouterr().out
    check_report(run / "report.html", {"synthetic": 3, "chair": 3, "object_halbench": 3, "amber": 3})

    other = tmp_path / "runs" / "copy"
    shutil.copytree(run, other)
    copied = json.loads((other / "results.json").read_text())
    copied["run"], copied["benchmarks"]["pope"]["mean"]["f1"] = "copy", 0.25
    (other / "results.json").write_text(json.dumps(copied))
    assert main(["--compare", str(run), str(other), "--output-dir", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.splitlines()[0] == "| benchmark | metric | untrained | copy |"
    assert "| pope | mean/f1 | " in table and table.count("0.2500") >= 1


GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "reference"


class _Gallery(HTMLParser):
    """Per benchmark gallery: how many items, and each item's inlined images."""

    def __init__(self, text: str):
        super().__init__()
        self.items: dict[str, list[list[str]]] = {}
        self._bench: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "bench":
            self._bench = attrs["id"].removeprefix("gallery-")
            self.items[self._bench] = []
        elif tag == "article" and self._bench:
            self.items[self._bench].append([])
        elif tag == "img" and self._bench and self.items[self._bench]:
            self.items[self._bench][-1].append(attrs.get("src", ""))


def check_report(path: Path, items: dict[str, int], images: bool = True) -> None:
    """``mmpo evaluate``'s page: one gallery per benchmark with answers, each item's image inlined."""
    gallery = _Gallery(path.read_text())
    assert {bench: len(found) for bench, found in gallery.items.items()} == items
    for bench, found in gallery.items.items():
        for srcs in found:
            assert (srcs and all(s.startswith("data:image/") for s in srcs)) if images else not srcs, bench


def _plain_copy(tmp_path, name: str) -> Path:
    """A gzipped golden file decompressed beside its data files (AMBER's are stored as .gz)."""
    source = GOLDEN / "amber"
    out = tmp_path / "amber"
    if not out.exists():
        shutil.copytree(source, out)
    target = out / name
    target.write_bytes(gzip.decompress((source / f"{name}.gz").read_bytes()))
    return target


def _score(argv, tmp_path, bench):
    out = tmp_path / f"run-{bench}"
    assert main([*argv, "--benchmark", bench, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"] is None and results["settings"]["parsing"] == "reference"
    return results["benchmarks"][bench], out


def close(a, b):
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)


@pytest.mark.parametrize("truth", ["with_captions", "instances_only"])
def test_predictions_reproduce_the_reference_chair_and_object_halbench(tmp_path, truth):
    """`--predictions` scores answers written elsewhere, with no model: CHAIR from the imgToEval
    JSON and Object HalBench from the JSONL give the reference scorers' aggregates."""
    reference = json.loads((GOLDEN / "chair" / "aggregates.json").read_text())[truth]
    folder = GOLDEN / "chair" / ("annotations" if truth == "with_captions" else "annotations_instances_only")
    got, out = _score(["--coco-annotations", str(folder),
                       "--predictions", str(GOLDEN / "chair" / "generations_imgToEval.json")], tmp_path, "chair")
    assert all(close(got[k], reference["chair"][k]) for k in ("CHAIRs", "CHAIRi", "Recall"))
    assert len(json.loads((out / "predictions" / "chair.json").read_text())["per_response"]) == 167
    check_report(out / "report.html", {"chair": 167}, images=False)    # no image folder given: none shown
    got, _ = _score(["--coco-annotations", str(folder),
                     "--predictions", str(GOLDEN / "chair" / "generations.jsonl")], tmp_path, "object_halbench")
    expected = reference["object_halbench"]
    for ours, theirs in (("response_hallucination_rate", "CHAIRs_refine"), ("mention_hallucination_rate", "CHAIRi"),
                         ("object_recall", "obj_rec"), ("CHAIRs", "CHAIRs"), ("avg_word_len", "avg_word_len")):
        assert close(got[ours], expected[theirs]), ours


def test_predictions_reproduce_the_reference_pope(tmp_path):
    reference = json.loads((GOLDEN / "pope" / "aggregates.json").read_text())
    labels = ["--pope-dir", str(GOLDEN / "pope" / "annotations")]
    per_split = [a for s in ("random", "popular", "adversarial")
                 for a in ("--predictions", f"{s}={GOLDEN / 'pope' / f'aoi_answers_{s}.json'}")]
    one_file = ["--predictions", str(GOLDEN / "pope" / "llava_answers.jsonl")]
    for argv, source in ((per_split, "aoidragon"), (one_file, "llava")):
        got, _ = _score([*labels, *argv], tmp_path, "pope")
        for split, metrics in reference[source].items():
            assert all(close(got[split][k], v) for k, v in metrics.items()), (source, split)
            assert got[split]["summary_line"] == reference["llava_summary_line"][split]
    with pytest.raises(SystemExit):          # a split given twice
        main([*labels, "--benchmark", "pope", "--output-dir", str(tmp_path / "x"),
              "--predictions", f"random={GOLDEN}", "--predictions", f"random={GOLDEN}"])


@pytest.mark.parametrize("variant", ["plain", "clean"])
def test_predictions_reproduce_the_reference_amber(tmp_path, variant):
    """The data files are found beside annotations.json (AMBER's data/ layout). The plain and
    clean responses are tagged identically by the fallback tagger, so every number is exact."""
    annotations = _plain_copy(tmp_path, "annotations.json")
    responses = _plain_copy(tmp_path, f"responses_{variant}.json")
    reference = json.loads((GOLDEN / "amber" / "aggregates.json").read_text())[variant]["published"]
    got, _ = _score(["--amber-annotations", str(annotations), "--predictions", str(responses)], tmp_path, "amber")
    sections = {"generative": None, "discriminative": None, "existence": "Existence", "attribute": "Attribute",
                "attribute_state": "State", "attribute_number": "Number", "attribute_action": "Action",
                "relation": "Relation"}
    for key, value in reference.items():
        section, metric = key.split("/")
        name = {"chair": "CHAIR", "f1": "F1"}.get(metric, metric.capitalize())
        ours = got[name] if sections[section] is None else got[sections[section]][name]
        assert close(ours, value), key


def test_predictions_reproduce_the_reference_mmhal(tmp_path):
    reference = json.loads((GOLDEN / "mmhal" / "aggregates.json").read_text())
    got, _ = _score(["--predictions", str(GOLDEN / "mmhal" / "evaluation.json")], tmp_path, "mmhal")
    assert close(got["average_score"], reference["average_score"])
    assert close(got["hallucination_rate"], reference["hallucination_rate"])
    assert got["n_warnings"] == reference["n_warnings"] and got["n_replies"] == reference["n_replies"]
    out = tmp_path / "lenient"
    assert main(["--benchmark", "mmhal", "--output-dir", str(out), "--parsing", "lenient",
                 "--predictions", str(GOLDEN / "mmhal" / "evaluation.json")]) == 0
    lenient = json.loads((out / "results.json").read_text())["benchmarks"]["mmhal"]
    assert lenient["parsing"] == "lenient" and not close(lenient["average_score"], reference["average_score"])


def test_predictions_usage_errors(tmp_path):
    base = ["--output-dir", str(tmp_path / "o"), "--predictions", str(GOLDEN / "mmhal" / "evaluation.json")]
    for argv in (["--benchmark", "mmhal", "--benchmark", "pope"],            # one benchmark only
                 ["--benchmark", "mmhal", "--model", "ckpt"],                 # a model and predictions
                 ["--benchmark", "synthetic"],                                # rendered here, nothing to score
                 ["--benchmark", "amber"]):                                   # no annotations
        with pytest.raises(SystemExit):
            main([*base, *argv])


def test_predictions_mmhal_answered_template_is_judged(tmp_path, judge_url):
    """An MMHal response template with model_answer filled in (answers made elsewhere) is sent to
    the judge, with no model loaded; the fake judge rates every answer 4."""
    records = json.loads((GOLDEN / "mmhal" / "responses.json").read_text())[:3]
    template = tmp_path / "answered.json"
    template.write_text(json.dumps(records))
    got, out = _score(["--predictions", str(template)], tmp_path, "mmhal")
    assert got["average_score"] == 4.0 and got["n_replies"] == 3 and got["hallucination_rate"] == 0.0
    assert [r["auth"] for r in judge_url.requests] == ["Bearer sk-local"] * 3
    assert len(json.loads((out / "predictions" / "mmhal.json").read_text())["reviews"]) == 3


def test_chair_without_any_coco_mention_warns(capsys):
    from mmpo.cli.evaluate import _warn_if_nothing_matched

    _warn_if_nothing_matched("chair", {"parsing": "reference", "counts": {"n_captions": 3.0, "n_mentions": 0.0}})
    assert "none of 3 captions mentions a COCO object" in capsys.readouterr().err
    _warn_if_nothing_matched("chair", {"parsing": "reference", "counts": {"n_captions": 3.0, "n_mentions": 2.0}})
    _warn_if_nothing_matched("chair", {"parsing": "lenient", "counts": {"n_captions": 3.0, "n_mentions": 0.0}})
    _warn_if_nothing_matched("pope", {"parsing": "reference", "counts": {"n_captions": 3.0, "n_mentions": 0.0}})
    assert capsys.readouterr().err == ""


def test_predictions_pope_llava_pairing_and_id_mismatch(tmp_path):
    """With LLaVA's question file, answers pair with each label file by category and order, as
    eval_pope.py does. Without it, answers are matched by question_id; if the label files number
    their questions on their own (as POPE's do) while LLaVA's answers carry other ids, the prompts
    disagree and the run stops instead of pairing the wrong questions."""
    reference = json.loads((GOLDEN / "pope" / "aggregates.json").read_text())["llava"]
    answers = str(GOLDEN / "pope" / "llava_answers.jsonl")
    got, _ = _score(["--pope-dir", str(GOLDEN / "pope" / "annotations"), "--predictions", answers,
                     "--pope-questions", str(GOLDEN / "pope" / "llava_questions.jsonl")], tmp_path, "pope")
    assert all(close(got[s][k], v) for s, metrics in reference.items() for k, v in metrics.items())

    renumbered = tmp_path / "labels"
    renumbered.mkdir()
    for split in ("random", "popular", "adversarial"):
        rows = [json.loads(line) for line in (GOLDEN / "pope" / "annotations" / f"coco_pope_{split}.json").open()]
        (renumbered / f"coco_pope_{split}.json").write_text(
            "".join(json.dumps({**row, "question_id": i}) + "\n" for i, row in enumerate(rows, 1)))
    with pytest.raises(ValueError, match="the ids do not correspond"):
        main(["--pope-dir", str(renumbered), "--predictions", answers, "--benchmark", "pope",
              "--output-dir", str(tmp_path / "wrong")])


def test_the_report_compares_a_new_run_with_a_base_run(tmp_path):
    """`--compare BASE` with --benchmark: the page shows both runs' answers per image, the new one
    judged against the base by the scorer's spans (one caption changed: one item is not "same")."""
    folder = GOLDEN / "chair" / "annotations"
    source = GOLDEN / "chair" / "generations_imgToEval.json"
    _, base = _score(["--coco-annotations", str(folder), "--predictions", str(source)], tmp_path, "chair")
    data = json.loads(source.read_text())
    first = next(iter(data["imgToEval"].values()))
    first["caption"] += " A giraffe and a zebra stand next to a toaster."
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(data))
    out = tmp_path / "new"
    assert main(["--coco-annotations", str(folder), "--predictions", str(changed), "--benchmark", "chair",
                 "--output-dir", str(out), "--compare", str(base)]) == 0
    html = (out / "report.html").read_text()
    statuses = re.findall(r"<article class='item' data-status='(\w+)'", html)
    assert len(statuses) == 167 and statuses.count("same") == 166 and statuses[0] == "worse"
    assert "run-chair vs new" not in html and "new vs run-chair" in html


def test_a_report_that_cannot_be_written_does_not_fail_the_evaluation(tmp_path, monkeypatch, capsys):
    import mmpo.report

    def broken(*args, **kwargs):
        raise ValueError("predictions/chair.json: row 3: span does not match")

    monkeypatch.setattr(mmpo.report, "write_report", broken)
    out = tmp_path / "run"
    assert main(["--coco-annotations", str(GOLDEN / "chair" / "annotations"), "--predictions",
                 str(GOLDEN / "chair" / "generations_imgToEval.json"), "--benchmark", "chair",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report.html not written: predictions/chair.json: row 3" in printed and "retries" in printed
    assert (out / "results.json").exists() and not (out / "report.html").exists()
