"""A minimal client for OpenAI-compatible ``/chat/completions`` endpoints, on ``urllib`` alone.

Shared by every judge that talks to a chat server: the MMHal-Bench rater
(:class:`mmpo.evaluation.judge.OpenAIChatJudge`) and the claim labeler of self-generated preference
data (:class:`mmpo.data.construct.claim_judges.EndpointClaimJudge`). Both OpenAI and the local
servers users run (vLLM, SGLang, llama.cpp, ...) speak this protocol.

Three pieces: :func:`chat_endpoint` (a base URL such as ``http://host:8000/v1`` becomes
``.../v1/chat/completions``), :func:`post_chat` (one POST of a JSON body with retries on network
errors, 429 and 5xx) and :func:`chat_content` / :func:`first_choice` (the reply's text, or its
first choice whole, log-probabilities included).

Redirects are never followed: ``urllib`` would resend the ``Authorization`` header (the API key) to
whatever host a ``Location`` header names and read that host's reply as the answer. Only the standard
library is imported, so every layer may use this module.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["RefuseRedirects", "chat_content", "chat_endpoint", "first_choice", "post_chat"]


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Makes every HTTP redirect (301, 302, 303, 307, 308) an error instead of following it:
    ``urllib`` would resend the ``Authorization`` header to wherever ``Location`` points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        raise RuntimeError(f"judge endpoint {req.full_url} redirected (HTTP {code}) to {newurl}; refusing to "
                           "follow (the API key is sent only to the configured endpoint)")


def chat_endpoint(url: str) -> str:
    """The chat completions URL of ``url``: ``/chat/completions`` is appended unless it ends so
    (a trailing ``/`` is dropped first)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def post_chat(endpoint: str, payload: dict[str, Any], *, api_key: str | None = None, timeout: float = 60.0,
              max_retries: int = 3, retry_wait: float = 1.0) -> bytes:
    """POST ``payload`` as JSON to ``endpoint`` and return the raw reply body.

    Network errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times, waiting
    ``retry_wait * 2**attempt`` seconds in between; other HTTP errors and redirects are raised at
    once. Safe to call from several threads (each call builds its own opener).

    Args:
        endpoint: the full chat completions URL (see :func:`chat_endpoint`).
        payload: the request body (``model``, ``messages``, ...).
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        timeout: seconds per HTTP request.
        max_retries: extra attempts after a retryable failure.
        retry_wait: the base of the exponential wait, in seconds.

    Raises:
        RuntimeError: an HTTP error (``"judge request failed: HTTP <code> from <endpoint>"``), a
            redirect, or network failures on every attempt.
    """
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    opener = urllib.request.build_opener(RefuseRedirects)
    for attempt in range(max_retries + 1):
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            error.close()
            if (error.code != 429 and error.code < 500) or attempt == max_retries:
                raise RuntimeError(f"judge request failed: HTTP {error.code} from {endpoint}") from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt == max_retries:
                raise RuntimeError(f"judge request failed after {attempt + 1} attempts: {error} "
                                   f"(endpoint {endpoint})") from error
        time.sleep(retry_wait * 2**attempt)
    raise AssertionError("unreachable")


def first_choice(raw: bytes, endpoint: str) -> dict[str, Any]:
    """The first element of a chat completions reply's ``choices`` (a dict, with ``message`` and,
    when asked for, ``logprobs``); RuntimeError otherwise, naming ``endpoint`` and the reply's start."""
    try:
        choice = json.loads(raw.decode())["choices"][0]
        if not isinstance(choice, dict):
            raise TypeError(f"the first choice is a {type(choice).__name__}, not an object")
        return choice
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise RuntimeError(f"judge endpoint {endpoint} sent no chat completion ({type(error).__name__}: "
                           f"{error}); reply starts {raw[:200]!r}") from error


def chat_content(raw: bytes, endpoint: str) -> str:
    """The first choice's message content of a chat completions reply; RuntimeError otherwise."""
    try:
        return str(json.loads(raw.decode())["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise RuntimeError(f"judge endpoint {endpoint} sent no chat completion ({type(error).__name__}: "
                           f"{error}); reply starts {raw[:200]!r}") from error
