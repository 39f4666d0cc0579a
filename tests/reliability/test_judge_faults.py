"""Judges that misbehave fail loudly: unreadable replies, a server that drips, a huge reply, a key in the URL.

Every server is local (127.0.0.1, in a thread). The self-pairs runs replace the policy with canned
responses (``load_policy`` and ``generate_responses`` patched), so only the judge path is real.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest

from helpers import chat_reply, fake_chat_server
from mmpo import chat_http
from mmpo.chat_http import ReplyTooLarge, post_chat, redact_url, url_credentials
from mmpo.cli.main import main
from mmpo.data.construct.claim_judges import UNPARSED, EndpointClaimJudge, endpoint_judge_from_env
from mmpo.data.construct.self_pairs import PairingRule, Verdict, pair_samples, rank_responses
from mmpo.evaluation.judge import OpenAIChatJudge, judge_from_config
from mmpo.evaluation.mmhal import score_mmhal
from mmpo.io import read_jsonl
from mmpo.training.rounds import IterateArguments

KEY = "s3cr3t-KEY-value"
RESPONSES = ["a red circle is at the top left . a blue star is at the bottom right .",
             "a green square is at the top right .",
             "a small star . a big circle . a red square ."]


# ---------------------------------------------------------------------------------------------
# Local servers.


@contextlib.contextmanager
def raw_server(send):
    """A TCP server on 127.0.0.1 answering each request (read whole) with ``send(connection,
    stop)``; yields its URL. ``stop`` is set on leaving, so a dripping sender ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def answer(connection):
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += connection.recv(65536)
            with contextlib.suppress(OSError):
                send(connection, stop)

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def drip_body(connection, stop):
    """Headers at once, then one byte of the body every 0.25 s for 10 s."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    for _ in range(40):
        if stop.wait(0.25):
            return
        connection.sendall(b" ")


def drip_headers(connection, stop):
    """The status line, then a header one byte every 0.25 s for 10 s."""
    connection.sendall(b"HTTP/1.1 200 OK\r\n")
    for byte in b"X-Slow: " + b"a" * 38:
        if stop.wait(0.25):
            return
        connection.sendall(bytes([byte]))


def huge_unannounced(connection, stop):
    """A body without Content-Length, 64 KiB at a time, 8 MiB in all (or until the client leaves)."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    for _ in range(128):
        if stop.is_set():
            return
        connection.sendall(b" " * 65536)


def payload():
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# ---------------------------------------------------------------------------------------------
# 1. Unreadable replies are unknown verdicts: dropped, counted, and too many stop the run.


def canned_policy(monkeypatch):
    """``mmpo self-pairs`` with a policy that answers ``RESPONSES`` in turn (no model is loaded)."""
    monkeypatch.setattr("mmpo.models.load_policy", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr("mmpo.generation.generate_responses",
                        lambda model, processor, images, prompts, **kw: [RESPONSES[i % 3] for i in range(len(images))])


def self_pairs(tmp_path, url, *extra):
    return main(["self-pairs", "--model", str(tmp_path / "policy"), "--synthetic", "4", "--samples", "3",
                 "--judge", "endpoint", "--judge-url", url, "--output", str(tmp_path / "pairs.jsonl"),
                 "--no-progress", *extra])


def test_self_pairs_stops_when_the_judge_replies_are_unreadable(tmp_path, monkeypatch, capsys):
    """Every reply says "Maybe": 4 items x 3 samples x 2 claims on average = 24 unknown verdicts of
    24. Before: each was counted wrong, exit 0, pairs written. Now: one line naming the endpoint,
    the counts and the reply; nothing journaled, no records."""
    canned_policy(monkeypatch)
    with fake_chat_server(lambda s, r: (200, chat_reply("Maybe, hard to say from this picture."), {})) as server:
        assert self_pairs(tmp_path, server.url + "/v1") == 2
    err = capsys.readouterr().err.splitlines()[0]                      # then only the --debug hint
    assert err.startswith("mmpo self-pairs: error: ")
    assert f"judge endpoint {server.url}/v1/chat/completions: 24 of 24 claims got an unknown verdict" in err
    assert "100%, more than the 20% allowed by --judge-max-unknown" in err and "'Maybe, hard to say" in err
    assert not (tmp_path / "pairs.jsonl").exists()
    assert not (tmp_path / "pairs.samples.jsonl").exists() or read_jsonl(tmp_path / "pairs.samples.jsonl") == []


def test_unknown_verdicts_are_dropped_not_counted_wrong(tmp_path, monkeypatch, capsys):
    """The judge cannot read claims about stars (8 of 24 claims), says yes to circles and no to
    the rest. Under the limit (--judge-max-unknown 0.5) the run goes on; the star claims are
    journaled as unknown (``correct: null``) and reported, and count in no score."""
    canned_policy(monkeypatch)

    def answer(server, request):
        question = request["body"]["messages"][0]["content"][1]["text"]
        reply = "I cannot tell." if "star" in question else "Yes." if "circle" in question else "No."
        return 200, chat_reply(reply), {}

    with fake_chat_server(answer) as server:
        assert self_pairs(tmp_path, server.url + "/v1", "--judge-max-unknown", "0.5") == 0
    out = capsys.readouterr().out
    assert "8 unknown (the judge could not tell; dropped)" in out
    assert "8 claims with an unknown verdict left out of the scores" in out
    claims = [c for row in read_jsonl(tmp_path / "pairs.samples.jsonl") for r in row["responses"] for c in r["claims"]]
    stars = [c for c in claims if "star" in c["text"]]
    assert len(claims) == 24 and len(stars) == 8
    assert all(c["correct"] is None and c["reason"] == UNPARSED for c in stars)
    assert all(c["correct"] is not None for c in claims if "star" not in c["text"])
    # RESPONSES[0]: circle yes, star unknown -> score 0 (one known claim, right); [1]: square no -> -1;
    # [2]: star unknown, circle yes, square no -> -1. Best: sample 0, worst: sample 1 (fewer correct)
    records = read_jsonl(tmp_path / "pairs.jsonl")
    assert len(records) == 4
    info = records[0]["meta"]["self_pairs"]
    assert (info["chosen_score"], info["rejected_score"]) == (0.0, -1.0)
    assert {"text": "a blue star is at the bottom right .", "correct": None, "reason": UNPARSED} in info["chosen_claims"]


def test_a_response_with_only_unknown_claims_is_not_paired():
    """Unknown claims change no score: a response whose claims are all unknown is not ranked
    (no evidence), and unknown claims beside known ones count neither wrong nor right."""
    def response(text, verdicts):
        return {"text": text, "claims": [{"text": f"c{i}", "correct": v} for i, v in enumerate(verdicts)]}

    responses = [response("all unknown", [None, None, None]), response("one wrong", [False, None]),
                 response("one right", [True, None, None])]
    assert rank_responses(responses, PairingRule()) == [(2, 0.0), (1, -1.0)]
    assert rank_responses(responses, PairingRule(score="wrong_rate")) == [(2, 0.0), (1, -1.0)]
    assert rank_responses(responses[:1] * 2, PairingRule()) == []
    assert Verdict(correct=None, reason=UNPARSED).to_dict() == {"correct": None, "reason": UNPARSED}


def test_pair_report_counts_unknown_claims(tmp_path):
    journal = tmp_path / "s.jsonl"
    row = {"id": "a", "image": "x.png", "prompt": "p", "responses": [
        {"text": "u", "claims": [{"text": "c", "correct": None}]},
        {"text": "r", "claims": [{"text": "c", "correct": True}, {"text": "d", "correct": None}]},
        {"text": "w", "claims": [{"text": "c", "correct": False}]}]}
    journal.write_text(json.dumps(row) + "\n")
    records, report = pair_samples(journal)
    assert (report.written, report.unknown_claims, report.unknown_responses) == (1, 2, 1)
    assert report.all_wrong_rate == pytest.approx(1 / 2)                 # 1 wrong of 2 known claims
    assert [records[0].chosen, records[0].rejected] == ["r", "w"]


def test_mmhal_stops_when_the_judge_gives_no_rating():
    """A judge that never ends with 'Rating: N' would score every answer 0; now the run stops."""
    record = {"question_type": "attribute", "question_topic": "t", "image_id": "x", "image_src": "x.png",
              "image_content": ["red star"], "question": "q", "gt_answer": "a", "model_answer": "b"}
    with fake_chat_server(lambda s, r: (200, chat_reply("The answer seems fine to me."), {})) as server:
        judge = OpenAIChatJudge(url=server.url + "/v1", timeout=5, retry_wait=0)
        with pytest.raises(RuntimeError, match=rf"judge endpoint {server.url}/v1/chat/completions: 3 of 3 MMHal-Bench "
                                               r"judge replies held no single 0-6 rating .*'The answer seems fine"):
            score_mmhal([record] * 3, judge)
        assert score_mmhal([record] * 3, judge, max_unparsed=1.0)["n_warnings"] == 3   # the limit lifted


# ---------------------------------------------------------------------------------------------
# 2. The timeout bounds the whole request.


@pytest.mark.parametrize("send", [drip_body, drip_headers], ids=["body", "headers"])
def test_a_dripping_server_times_out_in_total(send):
    """One byte every 0.25 s for 10 s: each socket read returns in time, so urllib's timeout never
    fires. With timeout=1 the request now fails after about 1 s."""
    with raw_server(send) as url:
        began = time.monotonic()
        with pytest.raises(RuntimeError, match=r"failed after 1 attempts: no complete reply within the 1 s timeout"):
            post_chat(url + "/v1/chat/completions", payload(), timeout=1, max_retries=0)
        assert time.monotonic() - began < 3


def test_a_dripping_judge_times_out_in_total():
    with raw_server(drip_body) as url:
        judge = OpenAIChatJudge(url=url, timeout=1, max_retries=1, retry_wait=0)
        began = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"after 2 attempts: no complete reply within the 1 s timeout "
                                               rf"\(endpoint {url}/chat/completions"):
            judge("rate this")
        assert time.monotonic() - began < 4.5


# ---------------------------------------------------------------------------------------------
# 3. A reply is read up to a cap.


def test_a_reply_over_the_cap_is_refused_from_its_content_length():
    big = chat_reply("x" * 300_000)
    with fake_chat_server(lambda s, r: (200, big, {})) as server:
        judge = OpenAIChatJudge(url=server.url, timeout=5, retry_wait=0, max_reply_bytes=2**18)
        with pytest.raises(ReplyTooLarge, match=rf"judge endpoint {server.url}/chat/completions sent a reply of \d+ "
                                                r"bytes \(Content-Length\), over the 256 KiB cap \(max_reply_bytes\)"):
            judge("rate this")
        assert len(server.requests) == 1                                 # not retried
        assert OpenAIChatJudge(url=server.url, timeout=5, max_reply_bytes=2**20)("rate this") == "x" * 300_000


def test_a_reply_without_length_stops_at_the_cap():
    """8 MiB without Content-Length; the claim judge stops reading past its 256 KiB cap."""
    with raw_server(huge_unannounced) as url:
        judge = EndpointClaimJudge(url=url, timeout=5, retry_wait=0, max_reply_bytes=2**18)
        began = time.monotonic()
        with pytest.raises(ReplyTooLarge, match=rf"{url}/chat/completions sent more than the 256 KiB cap"):
            judge._ask(judge.payload("data:,", "is it?"))
        assert time.monotonic() - began < 3


# ---------------------------------------------------------------------------------------------
# 4. Keys in URLs: refused before any request, redacted wherever shown.


@pytest.mark.parametrize("url, shown", [
    (f"https://user:{KEY}@judge.example/v1", "https://***@judge.example/v1"),
    (f"https://{KEY}@judge.example/v1", "https://***@judge.example/v1"),
    (f"https://judge.example/v1?api-key={KEY}&api-version=2024-06-01",
     "https://judge.example/v1?api-key=***&api-version=2024-06-01"),
    (f"https://judge.example/v1?key={KEY}", "https://judge.example/v1?key=***"),
    (f"https://judge.example/v1?x=1&token={KEY}", "https://judge.example/v1?x=1&token=***"),
    (f"https://judge.example/v1?access_token={KEY}", "https://judge.example/v1?access_token=***"),
    (f"https://judge.example/v1?apiKey={KEY}", "https://judge.example/v1?apiKey=***"),
    (f"https://judge.example/v1?client_secret={KEY}", "https://judge.example/v1?client_secret=***"),
    (f"https://judge.example/v1?X-Amz-Signature={KEY}", "https://judge.example/v1?X-Amz-Signature=***"),
    (f"https://judge.example/v1?sig={KEY}", "https://judge.example/v1?sig=***"),
    (f"https://judge.example/v1?password={KEY}", "https://judge.example/v1?password=***"),
    (f"https://judge.example/v1#access_token={KEY}", "https://judge.example/v1#access_token=***"),
    ("https://judge.example/v1?q=sk-proj-abcdef123456", "https://judge.example/v1?q=***"),
])
def test_keys_in_urls_are_found_and_redacted(url, shown):
    assert url_credentials(url) and redact_url(url) == shown
    assert KEY not in redact_url(url) and "abcdef123456" not in redact_url(url)


def test_plain_urls_are_left_alone():
    for url in ("http://127.0.0.1:8000/v1", "https://api.openai.com/v1/chat/completions",
                "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-06-01"):
        assert url_credentials(url) == [] and redact_url(url) == url


@pytest.fixture
def no_network(monkeypatch):
    """Records every DNS lookup and connection attempt, and refuses them."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("no network expected")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


@pytest.mark.parametrize("make", [
    lambda url: EndpointClaimJudge(url=url),
    lambda url: OpenAIChatJudge(url=url),
    lambda url: judge_from_config({"url": url, "model": "m"}),
    lambda url: IterateArguments(judge="endpoint", items_file="items.jsonl", judge_url=url),
], ids=["claim judge", "mmhal judge", "judge config", "iterate"])
@pytest.mark.parametrize("url", [f"http://judge:{KEY}@judge.example:8000/v1",
                                 f"http://judge.example:8000/v1?api_key={KEY}"], ids=["userinfo", "query"])
def test_a_url_with_a_key_is_refused_before_any_request(no_network, make, url):
    with pytest.raises(ValueError, match=r"holds credentials .*MMPO_JUDGE_API_KEY") as caught:
        make(url)
    assert KEY not in str(caught.value) and "***" in str(caught.value)
    assert no_network == []


def test_a_key_in_the_environment_url_is_refused(no_network, monkeypatch):
    monkeypatch.setenv("MMPO_JUDGE_URL", f"https://judge.example/v1?token={KEY}")
    with pytest.raises(ValueError, match=r"https://judge\.example/v1\?token=\*\*\* holds credentials"):
        endpoint_judge_from_env()
    with pytest.raises(ValueError, match="holds credentials"):
        judge_from_config()
    assert no_network == []


def test_the_cli_refuses_a_key_in_the_judge_url_and_never_prints_it(tmp_path, monkeypatch, capsys):
    canned_policy(monkeypatch)
    with fake_chat_server(lambda s, r: (200, chat_reply("yes"), {})) as server:
        keyed = server.url.replace("http://", f"http://u:{KEY}@") + "/v1"
        assert self_pairs(tmp_path, keyed) == 2
        err = capsys.readouterr().err
        assert "holds credentials" in err and KEY not in err and "http://***@127.0.0.1" in err
        answers = tmp_path / "answers.json"
        answers.write_text(json.dumps([{"question_type": "attribute", "image_src": "x.png", "question": "q",
                                        "gt_answer": "a", "model_answer": "b"}]))
        with pytest.raises(SystemExit):
            main(["evaluate", "--benchmark", "mmhal", "--predictions", str(answers), "--output-dir",
                  str(tmp_path / "eval"), "--judge-url", f"{server.url}/v1?api-key={KEY}"])
        err = capsys.readouterr().err
        assert "holds credentials" in err and KEY not in err and "api-key=***" in err
        assert server.requests == []


def test_a_redirect_target_with_a_key_is_shown_redacted():
    with fake_chat_server(lambda s, r: (302, b"", {"Location": f"http://elsewhere.example/v1?token={KEY}"})) as server:
        with pytest.raises(RuntimeError, match=r"redirected \(HTTP 302\) to http://elsewhere\.example/v1\?token=\*\*\*;"
                                               r" refusing") as caught:
            OpenAIChatJudge(url=server.url, timeout=5)("rate this")
    assert KEY not in str(caught.value)


def test_post_chat_itself_refuses_a_key_in_the_endpoint(no_network):
    with pytest.raises(ValueError, match=r"judge endpoint http://h/v1/chat/completions\?key=\*\*\* holds credentials"):
        post_chat(f"http://h/v1/chat/completions?key={KEY}", payload())
    with pytest.raises(ValueError, match="is not an http:// or https:// URL"):
        post_chat("file:///etc/passwd", payload())
    assert no_network == [] and chat_http.MAX_REPLY_BYTES == 16 * 2**20
