"""The judge LLM of MMHal-Bench: anything that answers a prompt with text, and an HTTP client for an
OpenAI-compatible ``/chat/completions`` endpoint built on ``urllib`` alone (:mod:`mmpo.chat_http`).

The client never follows a redirect: ``urllib`` would resend the ``Authorization`` header (the API
key) to whatever host a ``Location`` header names and read that host's reply as the rating. Each
request has a total time limit and a reply size cap, and a URL holding a key (``https://user:KEY@host``,
``?api-key=KEY``) is refused when the judge is made, before any request: the key goes in ``api_key``
(``$MMPO_JUDGE_API_KEY`` or the judge config), never in a URL that messages and files would show.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmpo.chat_http import (
    MAX_REPLY_BYTES,
    chat_content,
    chat_endpoint,
    check_endpoint_url,
    post_chat,
    redact_url,
)

__all__ = ["Judge", "OpenAIChatJudge", "judge_from_config"]


class Judge(Protocol):
    """Anything that answers a prompt with text (a chat LLM behind an API, or a test double)."""

    def __call__(self, prompt: str) -> str: ...


@dataclass
class OpenAIChatJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint, called with ``urllib`` only.

    Redirects are never followed (a redirect raises ``RuntimeError`` naming its target), so the
    API key goes to the configured endpoint and nowhere else, and no other host's rating is read.

    Attributes:
        url: the endpoint, or its base (``.../v1``); ``/chat/completions`` is appended when missing.
            Without credentials (ValueError otherwise, showing it redacted).
        api_key: sent as ``Authorization: Bearer <key>`` when set (never in repr).
        model: the ``model`` field of the request.
        temperature, max_tokens: sampling settings of the request.
        timeout: seconds per HTTP request, in all (connecting and reading the whole reply).
        max_retries: extra attempts after a network error, a timeout, a 429 or a 5xx (waits
            ``retry_wait * 2**attempt`` seconds in between); other HTTP errors are raised at once.
        max_reply_bytes: the largest reply read (16 MiB); a larger one is a RuntimeError.
    """

    url: str
    api_key: str | None = field(default=None, repr=False)
    model: str = "gpt-4"
    temperature: float = 0.0
    max_tokens: int = 512
    timeout: float = 60.0
    max_retries: int = 3
    retry_wait: float = 1.0
    max_reply_bytes: int = MAX_REPLY_BYTES

    def __post_init__(self):
        if not isinstance(self.url, str) or not self.url.strip():
            raise ValueError(f"judge url must be a non-empty string, got {redact_url(str(self.url))!r}")
        check_endpoint_url(self.url)
        if not (isinstance(self.timeout, (int, float)) and not isinstance(self.timeout, bool) and self.timeout > 0):
            raise ValueError(f"judge timeout must be a number of seconds > 0, got {self.timeout!r}")
        for name, low in (("max_retries", 0), ("max_reply_bytes", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"judge {name} must be an integer >= {low}, got {value!r}")

    @property
    def endpoint(self) -> str:
        return chat_endpoint(self.url)

    @property
    def source(self) -> str:
        """``"judge endpoint URL"``, the URL redacted: how messages name this judge."""
        return f"judge endpoint {redact_url(self.endpoint)}"

    def __call__(self, prompt: str) -> str:
        payload = {
            "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": "You are a careful, impartial evaluator."},
                         {"role": "user", "content": prompt}],
        }
        raw = post_chat(self.endpoint, payload, api_key=self.api_key, timeout=self.timeout,
                        max_retries=self.max_retries, retry_wait=self.retry_wait,
                        max_reply_bytes=self.max_reply_bytes)
        return chat_content(raw, self.endpoint)


def judge_from_config(config: Mapping[str, Any] | None = None, *, url: str | None = None,
                      api_key: str | None = None, model: str | None = None) -> OpenAIChatJudge:
    """An :class:`OpenAIChatJudge`; each setting from the argument, else ``config`` (keys ``url``,
    ``api_key``, ``model``, and any other field), else the environment (``MMPO_JUDGE_URL``,
    ``MMPO_JUDGE_API_KEY``, ``MMPO_JUDGE_MODEL``).

    Raises:
        ValueError: no URL anywhere, a URL holding a key, or a bad setting.
    """
    rest = dict(config or {})
    from_config = {key: rest.pop(key, None) for key in ("url", "api_key", "model")}
    url = url or from_config["url"] or os.environ.get("MMPO_JUDGE_URL")
    api_key = api_key or from_config["api_key"] or os.environ.get("MMPO_JUDGE_API_KEY")
    model = model or from_config["model"] or os.environ.get("MMPO_JUDGE_MODEL") or "gpt-4"
    if not url:
        raise ValueError("no judge URL: pass url=, set 'url' in the judge config, or set MMPO_JUDGE_URL")
    return OpenAIChatJudge(url=url, api_key=api_key, model=model, **rest)
