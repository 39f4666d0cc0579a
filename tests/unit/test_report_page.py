"""The report's reading of run directories and its page, on hand-made run files: the seed interval
worked by hand, the better/worse rule, the answer markup, the column logic and the errors."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mmpo.report import write_report
from mmpo.report.html import answer_html, metric_columns
from mmpo.report.runs import Answer, change, error_count, load_run, mean_interval


def test_mean_interval_by_hand():
    """[1, 2, 3]: mean 2, sample sd 1, half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.484."""
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and lo == pytest.approx(2 - 2.4843, abs=1e-3) and hi == pytest.approx(2 + 2.4843, abs=1e-3)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    mean, lo, hi = mean_interval([1.0] * 40)            # beyond the table: the normal quantile, sd 0
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        mean_interval([])


def _span(text: str, word: str, verdict: str, category: str | None = None, **extra) -> dict:
    start = text.index(word)
    return {"start": start, "end": start + len(word), "text": word, "category": category or word,
            "verdict": verdict, **extra}


def test_better_or_worse_counts_judged_wrong_spans_then_missed_objects():
    text = "a red circle and a star"
    base = Answer(text, [_span(text, "circle", "correct"), _span(text, "star", "hallucinated")], ["square"])
    fixed = Answer(text, [_span(text, "circle", "correct")], ["square"])
    fuller = Answer(text, [_span(text, "star", "hallucinated")], [])
    assert error_count(base) == 1 and error_count(fixed) == 0
    assert change(base, fixed) == "better" and change(fixed, base) == "worse" and change(base, base) == "same"
    assert change(base, fuller) == "better"           # equal errors, one fewer missed object


def test_answer_markup_marks_each_verdict_and_escapes_the_text():
    text = "a blue circle <b> & a star. a cross"
    spans = [_span(text, "circle", "wrong_attribute", attribute={"start": 2, "end": 6, "text": "blue",
                                                                  "said": "blue", "true": ["red"]}),
             _span(text, "star", "hallucinated"), _span(text, "cross", "correct"),
             {"start": None, "end": None, "text": "``", "category": "quote", "verdict": "hallucinated"}]
    markup = answer_html(Answer(text, spans, ["square"]))
    assert "<mark class='v-wrong_attribute' title='circle: wrong attribute (said blue; it is red)'>circle</mark>" in markup
    assert "<span class='attr'" in markup and ">blue</span>" in markup
    assert "<mark class='v-hallucinated'" in markup and ">star</mark>" in markup
    assert ">cross</mark>" in markup and "&lt;b&gt; &amp;" in markup
    assert "not located in the text" in markup and "missed: square" in markup
    assert "1 correct · 1 hallucinated · 1 wrong attribute" not in markup   # 2 hallucinated: one unlocated
    assert "1 correct · 2 hallucinated · 1 wrong attribute" in markup


def _demo_run(root: Path, name: str, seed: int, chair_after: float, answers: dict | None = None,
              method: str = "dpo") -> Path:
    run = root / name
    run.mkdir(parents=True)
    metrics = {"method": method, "data": "self", "before": {"chair_i": 0.5, "n_scenes": 2.0},
               "after": {"chair_i": chair_after, "n_scenes": 2.0}, "control": {"chair_i": 0.45, "n_scenes": 2.0},
               "options": {"method": method, "seed": seed, "steps": 10, "output_dir": str(run)}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "train_log.json").write_text(json.dumps([{"step": s, "loss": 1 / s, "rewards/margins": s / 10}
                                                    for s in range(1, 6)]))
    if answers is not None:
        (run / "eval" / "images").mkdir(parents=True)
        for key in answers["truth"]:
            Image.new("RGB", (64, 64), (200, 30, 30)).save(run / "eval" / "images" / f"{key}.png")
        (run / "eval" / "answers.json").write_text(json.dumps(answers))
    return run


def test_seed_groups_average_with_an_interval_and_the_base_is_shown_once(tmp_path):
    runs = [load_run(_demo_run(tmp_path, f"dpo-s{s}", s, after)) for s, after in ((0, 0.30), (1, 0.40), (2, 0.35))]
    runs.append(load_run(_demo_run(tmp_path, "aspo-s0", 0, 0.2, method="aspo")))
    columns = metric_columns(runs)
    assert [(c.group, c.label) for c in columns] == [
        ("dpo (3 seeds)", "base"), ("dpo (3 seeds)", "SFT control"), ("dpo (3 seeds)", "dpo"),
        ("aspo-s0", "base"), ("aspo-s0", "SFT control"), ("aspo-s0", "aspo")]
    mean, lo, hi, n = columns[2].cells[("synthetic", "chair_i")]
    assert n == 3 and mean == pytest.approx(0.35) and (lo, hi) == pytest.approx((0.35 - 0.1242, 0.35 + 0.1242), abs=1e-3)
    assert columns[2].base is columns[0] and columns[5].base is columns[3]
    # one seed each, the same base model: its column is shown once and both runs compare with it
    single = [load_run(_demo_run(tmp_path, "one", 0, 0.3)), load_run(_demo_run(tmp_path, "two", 0, 0.2, method="aspo"))]
    columns = metric_columns(single)
    assert [(c.group, c.label) for c in columns] == [("one", "base"), ("one", "SFT control"), ("one", "dpo"),
                                                      ("two", "SFT control"), ("two", "aspo")]
    assert columns[4].base is columns[0] and math.isclose(columns[4].cells[("synthetic", "chair_i")][0], 0.2)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_the_page_inlines_everything_and_marks_the_answers(tmp_path):
    text_base, text_trained = "a red circle. a blue star.", "a red circle."
    answers = {"prompt": "Describe the image.", "truth": {"s1": "a red circle.", "s2": "a red circle."},
               "models": {
                   "before": [{"scene_id": "s1", "response": text_base, "missed": [],
                               "spans": [_span(text_base, "circle", "correct"), _span(text_base, "star", "hallucinated")]},
                              {"scene_id": "s2", "response": text_trained, "missed": [],
                               "spans": [_span(text_trained, "circle", "correct")]}],
                   "after": [{"scene_id": "s1", "response": text_trained, "missed": [],
                              "spans": [_span(text_trained, "circle", "correct")]},
                             {"scene_id": "s2", "response": text_base, "missed": [],
                              "spans": [_span(text_base, "circle", "correct"), _span(text_base, "star", "hallucinated")]}]}}
    run = _demo_run(tmp_path, "demo", 0, 0.3, answers)
    written = write_report([run], tmp_path / "out" / "report.html")
    assert written.n_items == 2 and written.bytes == written.path.stat().st_size > 0
    page = written.path.read_text()
    parser = _Page()
    parser.feed(page)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 2 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert not [a for _, a in parser.tags for k, v in a.items() if k in ("src", "href") and not v.startswith("data:")]
    assert [a["data-status"] for t, a in parser.tags if t == "article"] == ["better", "worse"]
    assert page.count("<svg") == 1                                    # the training curves
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', "")


def test_bad_run_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither metrics.json"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"method": "dpo"}))
    with pytest.raises(ValueError, match="lacks 'before'"):
        load_run(tmp_path)
    run = _demo_run(tmp_path, "bad", 0, 0.3, {"truth": {"s1": ""}, "models": {"after": [
        {"scene_id": "s1", "response": "a star", "spans": [{"start": 0, "end": 3, "text": "star",
                                                              "category": "star", "verdict": "correct"}]}]}})
    with pytest.raises(ValueError, match="after row 0: span .* does not match"):
        load_run(run)


def test_every_verdict_the_scorer_gives_is_drawn(tmp_path):
    """Answers scored by the synthetic world's real scorer (no hand-made spans): the base model says
    a wrong colour and an absent shape, the trained one neither; each verdict gets its mark class."""
    from mmpo.evaluation.spans import VERDICTS
    from mmpo.evaluation.synthetic import score_descriptions
    from mmpo.toyworld.scenes import COLOURS, SHAPES, Scene, SceneObject

    scenes = [Scene("s1", (SceneObject("circle", "red", "small", "top left", (0, 0, 1, 1)),
                           SceneObject("square", "blue", "large", "bottom right", (0, 0, 1, 1))))]
    before = score_descriptions(["a green circle is at the top left. a star is here."], scenes,
                                shapes=SHAPES, colours=COLOURS)["per_scene"]
    after = score_descriptions([scenes[0].description()], scenes, shapes=SHAPES, colours=COLOURS)["per_scene"]
    answers = {"prompt": "Describe.", "truth": {"s1": scenes[0].description()},
               "models": {"before": before, "after": after}}
    written = write_report([_demo_run(tmp_path, "demo", 0, 0.0, answers)], tmp_path / "report.html")
    parser = _Page()
    parser.feed(written.path.read_text())
    marks = {c for tag, a in parser.tags if tag == "mark" for c in a.get("class", "").split()}
    assert {f"v-{v}" for v in VERDICTS} <= marks
    assert any(tag == "span" and a.get("class") == "attr" for tag, a in parser.tags)
    assert [a["data-status"] for t, a in parser.tags if t == "article"] == ["better"]
    assert "missed: square" in written.path.read_text()


def test_a_training_run_gives_its_curves(tmp_path):
    """``mmpo train``'s output: log_history.json, or the newest checkpoint's trainer_state.json."""
    log = [{"step": s, "loss": 1 / s, "rewards/margins": s / 10, "dama/alpha_model": 1 + s / 100} for s in range(1, 4)]
    done = tmp_path / "done"
    done.mkdir()
    (done / "log_history.json").write_text(json.dumps(log))
    going = tmp_path / "going"
    for step, entries in ((2, log[:2]), (10, log), (3, log[:1])):
        (going / f"checkpoint-{step}").mkdir(parents=True)
        (going / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": entries}))
    run = load_run(going)
    assert run.kind == "train" and run.log == log and run.info["log"] == "checkpoint-10/trainer_state.json"
    page = write_report([done, going], tmp_path / "r.html").path.read_text()
    assert "id='curves-rewards'" in page and "id='curves-dama'" in page and "No metrics recorded." in page
    (done / "log_history.json").write_text(json.dumps({"log_history": "x"}))
    with pytest.raises(ValueError, match="log_history.json: not a list of log entries"):
        load_run(done)


def test_answers_written_without_spans_are_not_compared():
    """A run from before span records: its answers are shown unmarked and never called better or worse."""
    old, new = Answer("a star", [], [], judged=False), Answer("a star", [], [])
    assert change(old, new) == "n/a" and change(new, old) == "n/a" and change(new, new) == "same"
    assert "not marked: this run's file holds no spans" in answer_html(old)
    assert "missed:" not in answer_html(old)


def test_a_damaged_image_costs_its_thumbnail_not_the_page(tmp_path):
    text = "a red circle."
    answers = {"prompt": "Describe.", "truth": {"s1": text},
               "models": {"after": [{"scene_id": "s1", "response": text, "missed": [],
                                     "spans": [_span(text, "circle", "correct")]}]}}
    run = _demo_run(tmp_path, "demo", 0, 0.3, answers)
    (run / "eval" / "images" / "s1.png").write_bytes(b"not a png")
    page = write_report([run], tmp_path / "r.html").path.read_text()
    assert "unreadable image s1.png" in page and ">circle</mark>" in page


def _round(k: int, chair: float, chosen_with_wrong: float | None = 0.5) -> dict:
    return {"round": k, "model": f"round-{k}/model", "items": 0 if k == 0 else 10,
            "pairs": {} if k == 0 else {"written": 9, "chosen_with_wrong": chosen_with_wrong,
                                        "chosen_wrong_rate": 0.2, "rejected_wrong_rate": 0.8},
            "train": {} if k == 0 else {"steps": 5, "reward_margin": 0.25 * k, "reward_accuracy": 0.75},
            "metrics": {"chair_i": chair, "pope_f1": 0.6},
            "seconds": {} if k == 0 else {"sample": 3.0, "judge": 1.0, "train": 8.0, "evaluate": 2.0}}


def test_a_demo_with_rounds_shows_each_round_beside_the_offline_pass(tmp_path):
    run = _demo_run(tmp_path, "rounds", 0, 0.3)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["self_pairs"] = {"chosen_with_wrong": 0.66}
    metrics["rounds"] = {"n": 2, "offline": {"pairs": 18, "steps": 10},
                         "rounds": [_round(0, 0.5), _round(1, 0.45, 0.7), _round(2, 0.4, 0.6)]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    loaded = load_run(run)
    assert list(loaded.columns) == ["base", "SFT control", "dpo", "dpo round 1", "dpo round 2"]
    assert loaded.columns["dpo round 2"][("synthetic", "chair_i")] == 0.4
    page = (write_report([run], tmp_path / "report.html").path).read_text()
    section = page[page.index("<section id='rounds'>"):]
    section = section[:section.index("</section>")]
    rows = re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", section)
    assert [label for label, _ in rows] == ["offline pass", "start", "1", "2"]
    cells = dict((label, re.findall(r"<td[^>]*>([^<]*)</td>", rest)) for label, rest in rows)
    # prompts, pairs, chosen with a wrong claim, wrong claims (chosen, rejected), steps, margin, accuracy, chair_i ...
    assert cells["offline pass"][:3] == ["–", "18", "0.660"] and cells["offline pass"][5] == "10"
    assert cells["1"][:8] == ["10", "9", "0.700", "0.200", "0.800", "5", "0.250", "0.750"]
    assert cells["2"][8] == "0.400" and cells["start"][8] == "0.500"
    assert section.count("<svg") == 1 and ">round<" in section  # one figure, its x axis the round


def test_an_iterate_run_directory_is_a_run(tmp_path):
    run = tmp_path / "iterate"
    for k, chair in ((0, 0.5), (1, 0.45), (2, 0.4)):
        (run / f"round-{k}").mkdir(parents=True)
        (run / f"round-{k}" / "round.json").write_text(json.dumps(_round(k, chair)))
        if k:
            (run / f"round-{k}" / "log_history.json").write_text(json.dumps(
                [{"step": s, "loss": 1.0 / (s + k), "rewards/margins": 0.1 * s} for s in (1, 2)]))
    loaded = load_run(run)
    assert loaded.kind == "rounds" and list(loaded.columns) == ["start", "round 1", "round 2"]
    assert loaded.base_label == "start" and loaded.primary_label == "round 2"
    assert [row["step"] for row in loaded.log] == [1, 2, 3, 4]  # the rounds' steps end to end
    page = write_report([run], tmp_path / "report.html").path.read_text()
    assert "<section id='rounds'>" in page and "offline pass" not in page
    (run / "round-2" / "round.json").write_text(json.dumps({"round": 3}))
    with pytest.raises(ValueError, match="round-2/round.json: not round 2's result"):
        load_run(run)
