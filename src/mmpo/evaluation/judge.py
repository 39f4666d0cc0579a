"""The judge LLM of MMHal-Bench: anything that answers a prompt with text, and an HTTP client for an
OpenAI-compatible ``/chat/completions`` endpoint built on ``urllib`` alone (:mod:`mmpo.chat_http`).

The client never follows a redirect: ``urllib`` would resend the ``Authorization`` header (the API
key) to whatever host a ``Location`` header names and read that host's reply as the rating.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mmpo.chat_http import chat_content, chat_endpoint, post_chat

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
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        model: the ``model`` field of the request.
        temperature, max_tokens: sampling settings of the request.
        timeout: seconds per HTTP request.
        max_retries: extra attempts after a network error, a 429 or a 5xx (waits ``retry_wait *
            2**attempt`` seconds in between); other HTTP errors are raised at once.
    """

    url: str
    api_key: str | None = None
    model: str = "gpt-4"
    temperature: float = 0.0
    max_tokens: int = 512
    timeout: float = 60.0
    max_retries: int = 3
    retry_wait: float = 1.0

    @property
    def endpoint(self) -> str:
        return chat_endpoint(self.url)

    def __call__(self, prompt: str) -> str:
        payload = {
            "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": "You are a careful, impartial evaluator."},
                         {"role": "user", "content": prompt}],
        }
        raw = post_chat(self.endpoint, payload, api_key=self.api_key, timeout=self.timeout,
                        max_retries=self.max_retries, retry_wait=self.retry_wait)
        return chat_content(raw, self.endpoint)


def judge_from_config(config: Mapping[str, Any] | None = None, *, url: str | None = None,
                      api_key: str | None = None, model: str | None = None) -> OpenAIChatJudge:
    """An :class:`OpenAIChatJudge`; each setting from the argument, else ``config`` (keys ``url``,
    ``api_key``, ``model``, and any other field), else the environment (``MMPO_JUDGE_URL``,
    ``MMPO_JUDGE_API_KEY``, ``MMPO_JUDGE_MODEL``)."""
    rest = dict(config or {})
    from_config = {key: rest.pop(key, None) for key in ("url", "api_key", "model")}
    url = url or from_config["url"] or os.environ.get("MMPO_JUDGE_URL")
    api_key = api_key or from_config["api_key"] or os.environ.get("MMPO_JUDGE_API_KEY")
    model = model or from_config["model"] or os.environ.get("MMPO_JUDGE_MODEL") or "gpt-4"
    if not url:
        raise ValueError("no judge URL: pass url=, set 'url' in the judge config, or set MMPO_JUDGE_URL")
    return OpenAIChatJudge(url=url, api_key=api_key, model=model, **rest)
