"""POPE, AMBER and MMHal-Bench: hand-computed scores (with each benchmark's trap), a judge behind a
local fake HTTP server, and oracle runs over the files the synthetic world writes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import mmpo.evaluation.generation as generation
from mmpo.evaluation.benchmarks import (
    OpenAIChatJudge,
    amber_discriminative_metrics,
    amber_generative_metrics,
    find_pope_files,
    judge_from_config,
    load_amber_annotations,
    load_amber_queries,
    load_mmhal_template,
    load_pope_questions,
    mmhal_judge_prompt,
    mmhal_metrics,
    parse_mmhal_rating,
    parse_pope_answer,
    run_amber,
    run_mmhal,
    run_pope,
    score_amber,
    score_mmhal,
    score_pope,
    score_pope_split,
)
from mmpo.evaluation.pope import pope_metrics
from mmpo.toyworld.benchmarks import write_toy_benchmarks
from mmpo.toyworld.scenes import DESCRIBE_PROMPT, QUADRANTS, WorldConfig, sample_scenes

# ---------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(("answer", "pope", "strict"), [
    ("Yes, there is a dog.", "yes", "yes"),
    ("No.", "no", "no"),
    ("There is a dog in the image.", "yes", None),          # says neither: the published rule reads yes
    ("I do not see one.", "no", None),                      # "not" in the first sentence
    ("Yes. There is no cat though.", "yes", "yes"),         # only the first sentence is read
    ("NOT at all", "no", None),                             # lower-cased (the original is case-sensitive)
    ("", "yes", None),
])
def test_parse_pope_answer(answer, pope, strict):
    assert parse_pope_answer(answer, "pope") == pope
    assert parse_pope_answer(answer, "strict") == strict


POPE_QUESTIONS = [{"question_id": i, "image": "a.jpg", "text": "?", "label": label}
                  for i, label in enumerate(["yes", "yes", "no", "no", "no", "no"], start=1)]
POPE_ANSWERS = [  # out of order: matched by question_id
    {"question_id": 6, "text": "no"},
    {"question_id": 1, "text": "Yes, there is."},
    {"question_id": 2, "text": "There is a dog."},
    {"question_id": 3, "answer": "No."},
    {"question_id": 4, "text": "I do not think so"},
    {"question_id": 5, "text": "Yes"},
]


def test_pope_split_hand_computed():
    """Labels: q1, q2 yes; q3..q6 no (the *labels'* yes share is 2/6).

    Published rule: answers read yes, yes, no, no, yes, no ->
        TP = 2 (q1, q2), FN = 0, FP = 1 (q5), TN = 3 (q3, q4, q6)
        accuracy 5/6, precision 2/3, recall 1, F1 = 2 * (2/3) / (2/3 + 1) = 0.8
        yes_ratio = predicted yes / all = 3/6 = 0.5 (from predictions, not the labels' 1/3)
        unclear (first word not yes/no) = 2 (q2, q4)
    Strict rule: yes, None, no, None, yes, no ->
        TP = 1, FN = 1 (q2 unparsed), FP = 1 (q5), TN = 2 (q3, q6); q4 is neither
        accuracy 3/6, precision 1/2, recall 1/2, F1 1/2, yes_ratio 2/6, unparsed 2
    """
    pope = score_pope_split(POPE_ANSWERS, POPE_QUESTIONS, "pope")
    assert pope == pytest.approx({"accuracy": 5 / 6, "precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                  "yes_ratio": 0.5, "n": 6, "unparsed": 0, "unclear": 2})
    strict = score_pope_split(POPE_ANSWERS, POPE_QUESTIONS, "strict")
    assert strict == pytest.approx({"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                    "yes_ratio": 2 / 6, "n": 6, "unparsed": 2, "unclear": 2})


def test_pope_splits_and_means():
    """random = the split above (F1 0.8); popular = all answered "yes": TP 2, FP 4 ->
    precision 1/3, recall 1, F1 0.5, accuracy 1/3, yes_ratio 1. mean/f1 = (0.8 + 0.5) / 2."""
    all_yes = [{"question_id": q["question_id"], "text": "yes"} for q in POPE_QUESTIONS]
    out = score_pope({"random": POPE_ANSWERS, "popular": all_yes},
                     {"random": POPE_QUESTIONS, "popular": POPE_QUESTIONS})
    assert out["popular/f1"] == pytest.approx(0.5) and out["popular/yes_ratio"] == 1.0
    assert out["mean/f1"] == pytest.approx(0.65)
    assert out["mean/accuracy"] == pytest.approx((5 / 6 + 1 / 3) / 2)
    assert out["definitions"]["answer_rule"] == "pope"
    with pytest.raises(ValueError, match="no answer"):
        score_pope_split(POPE_ANSWERS[:3], POPE_QUESTIONS)


def test_pope_files(tmp_path):
    for split in ("random", "adversarial"):
        (tmp_path / f"coco_pope_{split}.json").write_text("".join(json.dumps(q) + "\n" for q in POPE_QUESTIONS))
    files = find_pope_files(tmp_path)
    assert sorted(files) == ["adversarial", "random"]
    assert load_pope_questions(files["random"]) == POPE_QUESTIONS
    (tmp_path / "gqa_pope_random.json").write_text("")
    with pytest.raises(ValueError, match="several"):
        find_pope_files(tmp_path)
    assert find_pope_files(tmp_path, dataset="coco")["random"].name == "coco_pope_random.json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        find_pope_files(tmp_path / "empty")

# --------------------------------------------------------------------------------------------- AMBER


def test_amber_discriminative_no_is_the_positive_class():
    """truths  no   no   no    yes  yes
       answers no   yes  None  yes  no

    "no" positive: no_hit = 1 (first), answered_no = 2 (first, last), true_no = 3
        precision 1/2, recall 1/3, F1 = 2 * (1/2)(1/3) / (1/2 + 1/3) = 0.4
        accuracy = (1 no-hit + 1 yes-hit) / 5 = 0.4; yes_ratio 2/5; unparsed 1
    With "yes" positive (POPE's convention) the same answers would give TP 1, FP 1, FN 1 -> F1 0.5.
    """
    truths, answers = ["no", "no", "no", "yes", "yes"], ["no", "yes", None, "yes", "no"]
    m = amber_discriminative_metrics(truths, answers)
    assert m == pytest.approx({"accuracy": 0.4, "precision": 0.5, "recall": 1 / 3, "f1": 0.4,
                               "yes_ratio": 0.4, "n": 5, "unparsed": 1})
    assert pope_metrics(truths, answers)["f1"] == pytest.approx(0.5)


def test_amber_existence_questions_all_no():
    """AMBER's existence questions are all about absent objects (truth "no"). A model that answers
    every one "no" is perfect under AMBER's "no"-positive F1; under "yes"-positive F1 it would get
    0 (no positives at all)."""
    m = amber_discriminative_metrics(["no"] * 4, ["no"] * 4)
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert pope_metrics(["no"] * 4, ["no"] * 4)["f1"] == 0.0


ASSOCIATIONS = {"ship": ["boat"], "person": ["man", "woman"], "man": ["gentleman"]}
RESPONSE_A = "A boat and a bird near a man under the sun. Another boat."
RESPONSE_B = "A dog and a woman on the grass."
TRUTH_A, HALLU_A = ["sky", "man", "ship", "ship"], ["plane", "bird", "sun"]
TRUTH_B, HALLU_B = ["dog", "grass"], ["cat", "person"]


def test_amber_generative_hand_computed():
    """associations: ship -> boat; person -> man, woman; man -> gentleman.

    A: truth {sky, man, ship} (the duplicate ship counts once), hallu {plane, bird, sun}
       words: boat, bird, man, sun, boat (5 occurrences); safe = {sky, man, gentleman, ship, boat}
       hallucinated occurrences: bird, sun (2); truth covered: man, ship (via boat) -> 2 of 3;
       hallu named by a hallucinated word: bird, sun -> 2 of 3
    B: truth {dog, grass}, hallu {cat, person}
       words: dog, woman, grass (3); hallucinated: woman (1); truth covered 2 of 2;
       hallu: person (via woman) -> 1 of 2

    CHAIR = (2 + 1) / (5 + 3) = 3/8     Cover = (2 + 2) / (3 + 2) = 4/5
    Hal   = 2 / 2 responses = 1         Cog   = (2 + 1) / (3 + 2) = 3/5
    With safe word "bird": A has 4 words, 1 hallucinated (sun) -> CHAIR (1 + 1) / (4 + 3) = 2/7.
    """
    m = amber_generative_metrics([RESPONSE_A, RESPONSE_B], [TRUTH_A, TRUTH_B], [HALLU_A, HALLU_B],
                                 associations=ASSOCIATIONS)
    assert m == pytest.approx({"chair": 3 / 8, "cover": 4 / 5, "hal": 1.0, "cog": 3 / 5, "n": 2,
                               "n_object_words": 8})
    safe = amber_generative_metrics([RESPONSE_A, RESPONSE_B], [TRUTH_A, TRUTH_B], [HALLU_A, HALLU_B],
                                    associations=ASSOCIATIONS, safe_words={"bird"})
    assert safe["chair"] == pytest.approx(2 / 7)
    plain = amber_generative_metrics(["a boat"], [["ship"]], [[]])    # without associations boat is unknown
    assert plain["n_object_words"] == 0 and plain["cover"] == 0.0


def test_score_amber_and_amber_score():
    """Generative part as above (CHAIR 3/8 = 37.5 %). Discriminative: existence (no, answered No),
    attribute-state (yes, answered "Yes, it is."), relation (no, answered yes):
        "no" positive: no_hit 1, answered_no 1, true_no 2 -> precision 1, recall 1/2, F1 2/3
    AMBER score = (100 - 37.5 + 100 * 2/3) / 2 = 64.583...
    """
    annotations = {1: {"id": 1, "type": "generative", "truth": TRUTH_A, "hallu": HALLU_A},
                   2: {"id": 2, "type": "generative", "truth": TRUTH_B, "hallu": HALLU_B},
                   3: {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
                   4: {"id": 4, "type": "discriminative-attribute-state", "truth": "yes"},
                   5: {"id": 5, "type": "discriminative-relation", "truth": "no"}}
    predictions = [{"id": 1, "response": RESPONSE_A}, {"id": 2, "response": RESPONSE_B},
                   {"id": 3, "response": "No"}, {"id": "4", "response": "Yes, it is."},
                   {"id": 5, "response": "yes"}]
    s = score_amber(predictions, annotations, associations=ASSOCIATIONS)
    assert s["generative/chair"] == pytest.approx(3 / 8)
    assert s["discriminative/f1"] == pytest.approx(2 / 3) and s["discriminative/accuracy"] == pytest.approx(2 / 3)
    assert s["existence/f1"] == 1.0 and s["attribute/accuracy"] == 1.0 and s["attribute_state/n"] == 1
    assert s["relation/accuracy"] == 0.0
    assert s["amber_score"] == pytest.approx((100 - 37.5 + 200 / 3) / 2)
    assert "amber_score" not in score_amber(predictions[:2], annotations, associations=ASSOCIATIONS)
    with pytest.raises(ValueError, match="not in the annotations"):
        score_amber([{"id": 9, "response": "x"}], annotations)

# ---------------------------------------------------------------------------------------- MMHal-Bench


@pytest.mark.parametrize(("reply", "rating"), [
    ("The answer is correct.\nRating: 5", 5),
    ("rating:3", 3),
    ("Rating: **6**", 6),
    ("Rating: 4. To repeat, Rating: 4", 4),
    ("Rating: 2 ... on reflection Rating: 5", None),   # two different ratings: unparsed, as in the original
    ("Rating: 7", None),
    ("no score here", None),
])
def test_parse_mmhal_rating(reply, rating):
    assert parse_mmhal_rating(reply) == rating


def test_mmhal_metrics_hand_computed():
    """ratings 6, 2, None, 3 -> scores 6, 2, 0, 3 (unparsed counts 0, as in the original)
    average = 11/4 = 2.75; hallucination rate = #(< 3) / 4 = 2/4 (the 2 and the unparsed 0);
    per type: attribute (6 + 0) / 2 = 3, adversarial 2, counting 3."""
    m = mmhal_metrics([6, 2, None, 3], ["attribute", "adversarial", "attribute", "counting"])
    assert m == {"average_score": 2.75, "hallucination_rate": 0.5, "n": 4, "unparsed": 1,
                 "score/attribute": 3.0, "score/adversarial": 2.0, "score/counting": 3.0}


class FakeJudgeHandler(BaseHTTPRequestHandler):
    """A chat-completions endpoint: rates 6 when the assistant's answer equals the reference,
    else 1; answers 503 to the first ``fail_first`` requests and 401 to a wrong key."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != "Bearer sk-test":
            return self._reply(401, {"error": "bad key"})
        if server.fail_first > 0:
            server.fail_first -= 1
            return self._reply(503, {"error": "busy"})
        prompt = body["messages"][-1]["content"]
        lines = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
        rating = 6 if lines["Reference answer"] == lines["Assistant's answer"] else 1
        self._reply(200, {"choices": [{"message": {"role": "assistant",
                                                   "content": f"Compared with the reference.\nRating: {rating}"}}]})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    """The fake judge on 127.0.0.1 (a free port), served from a daemon thread; shut down after the
    test, and by a 60 s timer at the latest."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudgeHandler)
    server.requests, server.fail_first = [], 0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield server
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def mmhal_record(kind, answer):
    return {"question_type": kind, "question_topic": "t", "image_id": "x", "image_src": "https://h/x.jpg",
            "image_content": ["red star"], "question": "what colour is the star ?",
            "gt_answer": "the star is red .", "model_answer": answer}


def test_openai_judge_against_fake_server(judge_server):
    """Three records: two right (rating 6), one wrong (rating 1). The first request gets a 503 and
    is retried. average = (6 + 6 + 1) / 3 = 13/3; hallucination rate = 1/3."""
    judge_server.fail_first = 1
    url = f"http://127.0.0.1:{judge_server.server_address[1]}/v1"
    judge = OpenAIChatJudge(url=url, api_key="sk-test", model="judge-model", timeout=5, retry_wait=0.01)
    records = [mmhal_record("attribute", "the star is red ."), mmhal_record("counting", "the star is red ."),
               mmhal_record("attribute", "the star is blue .")]
    s = score_mmhal(records, judge)
    assert s["average_score"] == pytest.approx(13 / 3) and s["hallucination_rate"] == pytest.approx(1 / 3)
    assert s["score/attribute"] == 3.5 and s["unparsed"] == 0
    assert [r["rating"] for r in s["reviews"]] == [6, 6, 1]
    request = judge_server.requests[-1]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0.0
    assert len(judge_server.requests) == 4                      # one retried
    with pytest.raises(RuntimeError, match="HTTP 401"):         # client errors are not retried
        OpenAIChatJudge(url=url + "/chat/completions", api_key="wrong", timeout=5, retry_wait=0.01)("hi")
    assert len(judge_server.requests) == 5


def test_judge_settings_from_arguments_config_or_environment(monkeypatch):
    monkeypatch.setenv("MMPO_JUDGE_URL", "http://env/v1")
    monkeypatch.setenv("MMPO_JUDGE_API_KEY", "env-key")
    monkeypatch.delenv("MMPO_JUDGE_MODEL", raising=False)
    env = judge_from_config()
    assert (env.endpoint, env.api_key, env.model) == ("http://env/v1/chat/completions", "env-key", "gpt-4")
    config = judge_from_config({"url": "http://cfg", "model": "m", "timeout": 3})
    assert (config.url, config.api_key, config.model, config.timeout) == ("http://cfg", "env-key", "m", 3)
    assert judge_from_config({"url": "http://cfg"}, url="http://arg").url == "http://arg"
    monkeypatch.delenv("MMPO_JUDGE_URL")
    with pytest.raises(ValueError, match="MMPO_JUDGE_URL"):
        judge_from_config()


def test_judge_prompt_carries_the_record():
    prompt = mmhal_judge_prompt(mmhal_record("attribute", "blue"))
    assert "Image contents: red star" in prompt and "Reference answer: the star is red ." in prompt
    assert "Assistant's answer: blue" in prompt and "Rating: N" in prompt

# ------------------------------------------------- oracle runs over the synthetic world's benchmark files


def oracle_for(scenes):
    """A stand-in for ``generate_responses`` that answers every synthetic-world question correctly."""
    by_name = {f"{s.id}.png": s for s in scenes}

    def answer(scene, prompt):
        words = prompt.split()
        colours = {}
        for obj in scene.objects:
            colours.setdefault(obj.shape, set()).add(obj.colour)
        if prompt == DESCRIBE_PROMPT:
            return scene.description()
        if prompt.startswith("is there a"):
            return "yes" if words[3] in scene.shapes else "no , there is not ."
        if "left of" in prompt:            # "is the A left of the B ?"
            column = {o.shape: QUADRANTS.index(o.quadrant) % 2 for o in scene.objects}
            return "yes" if column[words[2]] < column[words[6]] else "no"
        if prompt.startswith("is the"):    # "is the A C ?"
            return "yes" if words[3] in colours[words[2]] else "no"
        return "the star is red ."

    def generate(model, processor, images, prompts, **kwargs):
        return [answer(by_name[path.name], p) for path, p in zip(images, prompts, strict=True)]

    return generate


@pytest.fixture
def toy(tmp_path, monkeypatch):
    scenes = sample_scenes(WorldConfig(seed=11).held_out(), 6, prefix="o")
    monkeypatch.setattr(generation, "generate_responses", oracle_for(scenes))
    return write_toy_benchmarks(tmp_path, scenes, stats_scenes=sample_scenes(WorldConfig(seed=12), 100))


def test_oracle_pope_on_synthetic_files(toy):
    out = run_pope(None, None, toy.pope_dir, toy.images)
    for split in ("random", "popular", "adversarial"):
        labels = [q["label"] for q in load_pope_questions(toy.pope[split])]
        assert out[f"{split}/accuracy"] == 1.0 and out[f"{split}/n"] == len(labels)
        assert out[f"{split}/yes_ratio"] == pytest.approx(labels.count("yes") / len(labels))
    assert out["random/unclear"] == 0 and len(out["predictions"]["adversarial"]) == out["adversarial/n"]
    assert run_pope(None, None, {"random": toy.pope["random"]}, toy.images, limit=3)["random/n"] == 3


def test_oracle_amber_on_synthetic_files(toy):
    """The oracle mentions only true shapes and answers every yes/no question right:
    CHAIR 0, Cover 1, Hal 0, Cog 0, F1 1 -> AMBER score (100 - 0 + 100) / 2 = 100."""
    out = run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images)
    assert (out["generative/chair"], out["generative/cover"], out["generative/hal"], out["generative/cog"]) == \
        (0.0, 1.0, 0.0, 0.0)
    for group in ("discriminative", "existence", "attribute", "relation"):
        assert out[f"{group}/accuracy"] == 1.0, group
    assert out["discriminative/f1"] == 1.0 and out["amber_score"] == 100.0
    entries = load_amber_annotations(toy.amber_annotations)
    assert sorted(entries) == list(range(1, len(entries) + 1))
    assert {e["truth"] for e in entries.values() if e["type"] == "discriminative-hallucination"} == {"no"}
    assert [p["id"] for p in out["predictions"]] == [q["id"] for q in load_amber_queries(toy.amber_queries)]
    limited = run_amber(None, None, toy.amber_queries, toy.amber_annotations, toy.images, limit=2)
    assert limited["generative/n"] == 2 and limited["discriminative/n"] == 2


def test_run_mmhal_with_a_judge_callable(toy):
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return "Rating: 4"

    out = run_mmhal(None, None, toy.mmhal_template, toy.images, judge)
    template = load_mmhal_template(toy.mmhal_template)
    assert out["n"] == len(template) == len(prompts) == 6 and out["average_score"] == 4.0
    assert out["hallucination_rate"] == 0.0
    assert [r["question_type"] for r in template] == ["attribute", "adversarial", "comparison", "counting",
                                                      "relation", "environment"]
    assert all(p["model_answer"] == "the star is red ." for p in out["predictions"])
