"""The MMHal-Bench judge client sends its API key to the configured endpoint and nowhere else.

``urllib`` follows 301/302/303 redirects of a POST (as a GET, with every header the request was
made with, ``Authorization`` included) to any host ``Location`` names, and would read that host's
reply as the rating. :class:`OpenAIChatJudge` must refuse every redirect instead. Two local servers
in threads: the configured one redirects, the other one counts what reaches it.
"""

from __future__ import annotations

import pytest

from helpers import chat_reply, fake_chat_server
from mmpo.evaluation.judge import OpenAIChatJudge
from mmpo.evaluation.mmhal import score_mmhal

KEY = "sk-secret-test-key"


def redirect_or_rate(server, request):
    """``server.redirect``: reply with that status and ``Location: server.location``; otherwise
    answer a chat completion rating 6 (or ``server.reply`` verbatim)."""
    if server.redirect:
        return server.redirect, b"", {"Location": server.location}
    return 200, server.reply if server.reply is not None else chat_reply("Rating: 6"), {}


@pytest.fixture
def servers():
    """``(configured, elsewhere)``: two servers on 127.0.0.1, on two free ports; every request is
    recorded."""
    with fake_chat_server(redirect_or_rate) as configured, fake_chat_server(redirect_or_rate) as elsewhere:
        for server in (configured, elsewhere):
            server.redirect, server.location, server.reply = None, None, None
        yield configured, elsewhere


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(servers, code):
    configured, elsewhere = servers
    configured.redirect, configured.location = code, elsewhere.url + "/steal/chat/completions"
    judge = OpenAIChatJudge(url=configured.url + "/v1", api_key=KEY, timeout=5, max_retries=2, retry_wait=0.01)
    with pytest.raises(RuntimeError, match=r"redirected \(HTTP \d+\) to http://127\.0\.0\.1:\d+/steal/"
                                           r"chat/completions; refusing to follow") as caught:
        judge("rate this")
    assert f"HTTP {code}" in str(caught.value) and KEY not in str(caught.value)
    assert elsewhere.requests == []                                 # no request, so no Authorization header
    assert len(configured.requests) == 1                            # not retried
    assert configured.requests[0]["auth"] == f"Bearer {KEY}"


def test_no_rating_is_taken_from_a_redirect_target(servers):
    configured, elsewhere = servers
    configured.redirect, configured.location = 302, elsewhere.url + "/v1/chat/completions"
    judge = OpenAIChatJudge(url=configured.url + "/v1", api_key=KEY, timeout=5, retry_wait=0.01)
    record = {"question_type": "attribute", "question_topic": "t", "image_id": "x", "image_src": "x.png",
              "image_content": ["red star"], "question": "what colour is the star ?",
              "gt_answer": "the star is red .", "model_answer": "the star is blue ."}
    with pytest.raises(RuntimeError, match="refusing to follow"):
        score_mmhal([record], judge)
    assert elsewhere.requests == []


def test_the_configured_endpoint_still_answers(servers):
    configured, _ = servers
    judge = OpenAIChatJudge(url=configured.url + "/v1", api_key=KEY, timeout=5, retry_wait=0.01)
    assert judge("rate this") == "Rating: 6"
    assert configured.requests[0]["path"] == "/v1/chat/completions"


@pytest.mark.parametrize("reply", [b"<html>login</html>", b'{"error": "quota"}', b'{"choices": []}'])
def test_a_reply_without_a_completion_is_a_clear_error(servers, reply):
    configured, _ = servers
    configured.reply = reply
    judge = OpenAIChatJudge(url=configured.url, api_key=KEY, timeout=5, retry_wait=0.01)
    with pytest.raises(RuntimeError, match=r"judge endpoint http://127\.0\.0\.1:\d+/chat/completions sent no "
                                           r"chat completion .*reply starts"):
        judge("rate this")
