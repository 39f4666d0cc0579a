"""The MMHal-Bench judge client against a local fake chat-completions server (retries, key, errors)
and its settings from arguments, config or the environment."""

from __future__ import annotations

import pytest

from helpers import chat_reply, fake_chat_server
from mmpo.evaluation.judge import OpenAIChatJudge, judge_from_config
from mmpo.evaluation.mmhal import score_mmhal


def rate_against_the_reference(server, request):
    """A chat-completions endpoint: rates 6 when the assistant's answer equals the reference, else 1;
    answers 503 to the first ``server.fail_first`` requests and 401 to a wrong key."""
    if request["auth"] != "Bearer sk-test":
        return 401, {"error": "bad key"}, {}
    if server.fail_first > 0:
        server.fail_first -= 1
        return 503, {"error": "busy"}, {}
    prompt = request["body"]["messages"][-1]["content"]
    lines = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
    rating = 6 if lines["Reference answer"] == lines["Assistant's answer"] else 1
    return 200, chat_reply(f"Compared with the reference.\nRating: {rating}"), {}


@pytest.fixture
def judge_server():
    """The fake judge (:func:`helpers.fake_chat_server`), with ``fail_first = 0``."""
    with fake_chat_server(rate_against_the_reference) as server:
        server.fail_first = 0
        yield server


def mmhal_record(kind, answer):
    return {"question_type": kind, "question_topic": "t", "image_id": "x", "image_src": "https://h/x.jpg",
            "image_content": ["red star"], "question": "what colour is the star ?",
            "gt_answer": "the star is red .", "model_answer": answer}


def test_openai_judge_against_fake_server(judge_server):
    """Three records: two right (rating 6), one wrong (rating 1). The first request gets a 503 and
    is retried. average = (6 + 6 + 1) / 3 = 13/3; hallucination rate = 1/3."""
    judge_server.fail_first = 1
    url = f"{judge_server.url}/v1"
    judge = OpenAIChatJudge(url=url, api_key="sk-test", model="judge-model", timeout=5, retry_wait=0.01)
    records = [mmhal_record("attribute", "the star is red ."), mmhal_record("counting", "the star is red ."),
               mmhal_record("attribute", "the star is blue .")]
    s = score_mmhal(records, judge)
    assert s["average_score"] == pytest.approx(13 / 3) and s["hallucination_rate"] == pytest.approx(1 / 3)
    assert s["n_warnings"] == 0 and s["n_replies"] == 3
    # question type by position, as the reference: attribute, adversarial, comparison
    assert (s["score_per_type"]["attribute"], s["score_per_type"]["comparison"]) == (6.0, 1.0)
    assert [r["rating"] for r in s["reviews"]] == [6, 6, 1]
    assert [r["record_question_type"] for r in s["reviews"]] == ["attribute", "counting", "attribute"]
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
