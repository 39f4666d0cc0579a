"""The claim judges of real data: a local VLM's yes/no probability (on the tiny LLaVA), and a chat
endpoint (against a real HTTP server on 127.0.0.1 in a thread)."""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import chat_reply, fake_chat_server
from mmpo.data.construct.claim_judges import (
    DEFAULT_QUESTION,
    UNPARSED,
    EndpointClaimJudge,
    VLMClaimJudge,
    endpoint_judge_from_env,
    single_token_ids,
)
from mmpo.data.construct.self_pairs import ClaimJudge, ClaimQuery, Verdict
from mmpo.toyworld.judge import claim_question

CLAIMS = ["a small red circle is at the top left .", "a star .", "is there a square in the image ?",
          "a big blue triangle is at the bottom right . a circle .", "there are 2 objects ."]


def noise_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def queries(claims=CLAIMS, prompt="describe the image .") -> list[ClaimQuery]:
    return [ClaimQuery(noise_image(i % 3), prompt, "a response .", claim, {}, f"item{i}/0/0")
            for i, claim in enumerate(claims)]


@pytest.fixture
def tiny(varied_tiny_vlm):
    """The varied tiny LLaVA (its outputs depend on the input), in eval mode afterwards."""
    model, processor = varied_tiny_vlm
    yield model, processor
    model.eval()


# ---------------------------------------------------------------------------------------------
# VLMClaimJudge


def naive_p_yes(model, processor, image, question: str) -> float:
    """One unpadded forward pass of the rendered question, softmax at the last position,
    P(yes) / (P(yes) + P(no))."""
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[[image]], text=[text], return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].double(), dim=-1)
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    return float(probs[yes] / (probs[yes] + probs[no]))


def test_vlm_judge_matches_a_naive_forward_pass(tiny):
    model, processor = tiny
    judge = VLMClaimJudge(model, processor, question="{claim}")
    assert isinstance(judge, ClaimJudge)
    qs = queries()
    verdicts = judge.judge(qs)
    assert len(verdicts) == len(qs) and all(isinstance(v, Verdict) for v in verdicts)
    ps = [v.p_correct for v in verdicts]
    assert all(p is not None and math.isfinite(p) and 0 <= p <= 1 for p in ps)
    assert len({round(p, 6) for p in ps}) > 1                         # the judge looks at its input
    assert ps[1] == pytest.approx(naive_p_yes(model, processor, qs[1].image, CLAIMS[1]), abs=1e-5)
    assert [v.correct for v in verdicts] == [p >= 0.5 for p in ps]
    assert judge.judge([]) == []


def test_vlm_judge_batches_like_one_at_a_time(tiny):
    """Five questions of different lengths: left-padded batches of 2 give what batches of 1 give."""
    model, processor = tiny
    lengths = {len(processor.tokenizer.encode(c)) for c in CLAIMS}
    assert len(lengths) > 2
    one = VLMClaimJudge(model, processor, question="is this right ? {claim}", batch_size=1).judge(queries())
    two = VLMClaimJudge(model, processor, question="is this right ? {claim}", batch_size=2).judge(queries())
    assert [v.p_correct for v in two] == pytest.approx([v.p_correct for v in one], abs=1e-5)


def test_vlm_threshold_decides_correct(tiny):
    model, processor = tiny
    query = queries()[:1]
    p = VLMClaimJudge(model, processor).judge(query)[0].p_correct
    assert 0.001 < p < 0.999
    assert VLMClaimJudge(model, processor, threshold=p - 1e-3).judge(query)[0].correct
    assert not VLMClaimJudge(model, processor, threshold=p + 1e-3).judge(query)[0].correct
    assert VLMClaimJudge(model, processor, threshold=0.0).judge(query)[0].correct
    with pytest.raises(ValueError, match="threshold"):
        VLMClaimJudge(model, processor, threshold=1.5)


def test_vlm_question_as_a_callable_or_a_template(tiny):
    """``claim_question`` (the synthetic world's POPE question) asks the same as a template filled
    with that question; ``{prompt}`` is the item's instruction."""
    model, processor = tiny
    qs = queries(CLAIMS[:2])
    by_callable = VLMClaimJudge(model, processor, question=claim_question)
    asked = [ClaimQuery(q.image, q.prompt, q.response, claim_question(q.claim), q.meta, q.key) for q in qs]
    by_template = VLMClaimJudge(model, processor, question="{claim}")
    assert [v.p_correct for v in by_callable.judge(qs)] == pytest.approx(
        [v.p_correct for v in by_template.judge(asked)], abs=1e-6)
    assert by_callable.describe()["question"] == "mmpo.toyworld.judge.claim_question"

    with_prompt = VLMClaimJudge(model, processor, question="{prompt} {claim}").judge(qs[:1])
    literal = VLMClaimJudge(model, processor, question="describe the image . {claim}").judge(qs[:1])
    assert with_prompt[0].p_correct == pytest.approx(literal[0].p_correct, abs=1e-6)
    for bad in ("is it true ?", "{claim} {other}", 3):
        with pytest.raises(ValueError, match="question"):
            VLMClaimJudge(model, processor, question=bad)


def test_vlm_words_must_be_single_known_tokens(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    assert single_token_ids(tokenizer, ["yes", "Yes"]) == [tokenizer.convert_tokens_to_ids("yes")]  # Yes: unknown
    with pytest.raises(ValueError, match=rf"yes_words \['Oui', 'yes no'\].*tokenizer {type(tokenizer).__name__}"):
        VLMClaimJudge(model, processor, yes_words=("Oui", "yes no"))
    with pytest.raises(ValueError, match="no_words"):
        VLMClaimJudge(model, processor, no_words=("Non",))
    with pytest.raises(ValueError, match="share token ids"):
        VLMClaimJudge(model, processor, yes_words=("yes",), no_words=("yes", "no"))


def test_vlm_judge_restores_training_mode_and_describes_itself(tiny):
    model, processor = tiny
    judge = VLMClaimJudge(model, processor, name="tiny-llava")
    model.train()
    judge.judge(queries()[:2])
    assert model.training
    model.eval()
    judge.judge(queries()[:1])
    assert not model.training
    described = judge.describe()
    assert json.loads(json.dumps(described)) == described             # a resume compares it with its JSON
    assert described == {"judge": "VLMClaimJudge", "model": "tiny-llava", "question": DEFAULT_QUESTION,
                         "yes_words": ["yes", "Yes"], "no_words": ["no", "No"], "threshold": 0.5,
                         "prompt_format": "auto"}


def test_vlm_judge_from_a_local_checkpoint(tiny_checkpoint, tmp_path):
    judge = VLMClaimJudge.from_pretrained(tiny_checkpoint, device="cpu", question="{claim}", batch_size=4)
    verdicts = judge.judge(queries())
    assert all(0 <= v.p_correct <= 1 for v in verdicts)
    assert judge.describe()["model"] == str(tiny_checkpoint)
    with pytest.raises(FileNotFoundError):
        VLMClaimJudge.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# EndpointClaimJudge


def logprob_reply(tokens: dict[str, float], text: str = "Yes") -> dict:
    """A chat completion whose first token is ``text`` with top log-probabilities ``tokens`` (probabilities)."""
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in tokens.items()]
    reply = chat_reply(text)
    reply["choices"][0]["logprobs"] = {"content": [{"token": text, "logprob": top[0]["logprob"], "top_logprobs": top}]}
    return reply


@pytest.fixture
def server():
    """A chat server on 127.0.0.1; each test sets ``server.answer(server, request) -> (status, body, headers)``."""
    with fake_chat_server(lambda server, request: server.answer(server, request), timeout=30) as server:
        server.answer = lambda server, request: (200, chat_reply("yes"), {})
        yield server


def endpoint_judge(server, **kwargs) -> EndpointClaimJudge:
    settings = dict(url=server.url + "/v1", api_key="sk-test", model="judge-vlm", timeout=5, retry_wait=0)
    return EndpointClaimJudge(**{**settings, **kwargs})


def test_endpoint_request_and_logprob_reply(server):
    server.answer = lambda s, r: (200, logprob_reply({"Yes": 0.6, " yes": 0.1, "No": 0.2, "Maybe": 0.05}), {})
    judge = endpoint_judge(server, top_logprobs=5)
    assert isinstance(judge, ClaimJudge)
    qs = queries(CLAIMS[:1])
    [verdict] = judge.judge(qs)
    assert verdict.p_correct == pytest.approx(0.7 / 0.9) and verdict.correct and verdict.reason is None

    [request] = server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-vlm", 0, 1)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    [message] = body["messages"]
    image_part, text_part = message["content"]
    assert message["role"] == "user" and text_part == {"type": "text", "text": DEFAULT_QUESTION.format(claim=CLAIMS[0])}
    assert image_part["type"] == "image_url"
    prefix, data = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.format == "PNG" and np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(qs[0].image))

    server.answer = lambda s, r: (200, logprob_reply({"no": 0.75, "yes": 0.25}, text="no"), {})
    [verdict] = judge.judge(qs)
    assert verdict.p_correct == pytest.approx(0.25) and not verdict.correct
    assert endpoint_judge(server, threshold=0.2).judge(qs)[0].correct


def test_endpoint_text_replies_and_unparsed_ones(server):
    replies = {"yes": chat_reply("Yes, there is."), "no": chat_reply("**No**"), "maybe": chat_reply("Maybe."),
               "html": b"<html>oops</html>", "empty": {"choices": []},
               "other": logprob_reply({"Maybe": 0.9}, text="No")}          # logprobs without yes/no: the text
    server.answer = lambda s, r: (200, replies[r["body"]["messages"][0]["content"][1]["text"]], {})
    judge = endpoint_judge(server, question="{claim}", logprobs=False)
    verdicts = judge.judge(queries(list(replies)))
    assert [(v.correct, v.p_correct, v.reason) for v in verdicts] == [
        (True, 1.0, None), (False, 0.0, None), (None, None, UNPARSED), (None, None, UNPARSED),
        (None, None, UNPARSED), (False, 0.0, None)]
    assert all("logprobs" not in r["body"] for r in server.requests)
    assert endpoint_judge(server, question="{claim}").judge(queries(["other"]))[0].p_correct == 0.0


def test_endpoint_retries_a_server_error_and_raises_a_client_error(server):
    server.fails = 1

    def flaky(s, r):
        if s.fails:
            s.fails -= 1
            return 500, {"error": "busy"}, {}
        return 200, chat_reply("yes"), {}

    server.answer = flaky
    assert endpoint_judge(server).judge(queries(CLAIMS[:1]))[0].correct
    assert len(server.requests) == 2
    server.answer = lambda s, r: (400, {"error": "bad request"}, {})
    with pytest.raises(RuntimeError, match=rf"HTTP 400 from {server.url}/v1/chat/completions"):
        endpoint_judge(server).judge(queries(CLAIMS[:2]))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(RuntimeError, match=rf"failed after 1 attempts.*http://127\.0\.0\.1:{port}/chat/completions"):
        EndpointClaimJudge(url=f"http://127.0.0.1:{port}", max_retries=0, timeout=5).judge(queries(CLAIMS[:1]))


def test_endpoint_refuses_a_redirect(server):
    with fake_chat_server(lambda s, r: (200, chat_reply("yes"), {}), timeout=30) as elsewhere:
        server.answer = lambda s, r: (307, b"", {"Location": elsewhere.url + "/v1/chat/completions"})
        with pytest.raises(RuntimeError, match="redirected \\(HTTP 307\\).*refusing to follow"):
            endpoint_judge(server).judge(queries(CLAIMS[:1]))
        assert elsewhere.requests == []


def test_endpoint_keeps_input_order_with_concurrent_requests(server):
    """Earlier requests answer later, so replies arrive out of order; the verdicts do not."""
    claims = [f"claim {i} {'yes' if i % 3 else 'no'}" for i in range(8)]

    def slow_first(s, r):
        text = r["body"]["messages"][0]["content"][1]["text"]
        time.sleep(0.02 * (8 - int(text.split()[1])))
        return 200, chat_reply(text.split()[-1]), {}

    server.answer = slow_first
    qs = queries(claims)
    verdicts = endpoint_judge(server, question="{claim}", max_workers=4).judge(qs)
    assert [v.correct for v in verdicts] == [bool(i % 3) for i in range(8)]
    sent = {r["body"]["messages"][0]["content"][0]["image_url"]["url"] for r in server.requests}
    assert len(sent) == 3                                              # three distinct images


def test_endpoint_describe_and_settings_from_the_environment(monkeypatch):
    judge = EndpointClaimJudge(url="http://judge:8000/v1/", api_key="sk-secret", question=claim_question)
    described = judge.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["endpoint"] == "http://judge:8000/v1/chat/completions"
    assert described["question"] == "mmpo.toyworld.judge.claim_question"
    assert "sk-secret" not in json.dumps(described) and "sk-secret" not in repr(judge)
    with pytest.raises(ValueError, match="max_workers"):
        EndpointClaimJudge(url="http://judge", max_workers=0)

    monkeypatch.setenv("MMPO_JUDGE_URL", "http://env/v1")
    monkeypatch.setenv("MMPO_JUDGE_API_KEY", "env-key")
    monkeypatch.delenv("MMPO_JUDGE_MODEL", raising=False)
    env = endpoint_judge_from_env(threshold=0.7)
    assert (env.endpoint, env.api_key, env.model, env.threshold) == ("http://env/v1/chat/completions", "env-key",
                                                                     "gpt-4o", 0.7)
    assert endpoint_judge_from_env(url="http://arg", model="m").url == "http://arg"
    monkeypatch.delenv("MMPO_JUDGE_URL")
    with pytest.raises(ValueError, match="MMPO_JUDGE_URL"):
        endpoint_judge_from_env()
