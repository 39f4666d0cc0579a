"""A minimal client for OpenAI-compatible ``/chat/completions`` endpoints, on ``urllib`` alone.

Shared by every judge that talks to a chat server: the MMHal-Bench rater
(:class:`mmpo.evaluation.judge.OpenAIChatJudge`) and the claim labeler of self-generated preference
data (:class:`mmpo.data.construct.claim_judges.EndpointClaimJudge`). Both OpenAI and the local
servers users run (vLLM, SGLang, llama.cpp, ...) speak this protocol.

The pieces: :func:`chat_endpoint` (a base URL such as ``http://host:8000/v1`` becomes
``.../v1/chat/completions``), :func:`post_chat` (one POST of a JSON body with retries on network
errors, 429 and 5xx), :func:`chat_content` / :func:`first_choice` (the reply's text, or its first
choice whole, log-probabilities included), :func:`redact_url` / :func:`check_endpoint_url` (keys
in a URL are never shown, and refused before any request) and :func:`check_unreadable` (a run
stops once too many of a judge's replies could not be read).

Guards, each against a real failure:

* redirects are never followed: ``urllib`` would resend the ``Authorization`` header (the API key)
  to whatever host a ``Location`` header names and read that host's reply as the answer;
* ``timeout`` bounds the whole request (connecting, sending, the headers and every byte of the
  body): ``urllib``'s own timeout bounds each socket read, so a server sending one byte a second
  would never time out. A timer shuts the socket down at the deadline;
* the reply is read in chunks up to ``max_reply_bytes`` (16 MiB by default), never whole;
* a URL holding credentials (``https://user:KEY@host``, ``?api-key=KEY``, ``&token=...``) is refused
  before any request (and so before any DNS lookup): the key goes in the ``api_key`` setting
  (``$MMPO_JUDGE_API_KEY``), and every URL in a message is shown redacted.

Only the standard library is imported, so every layer may use this module.
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["MAX_REPLY_BYTES", "MAX_UNREADABLE", "MIN_REPLIES_CHECKED", "RefuseRedirects", "ReplyTooLarge", "TooManyUnreadable",
           "chat_content", "chat_endpoint", "check_endpoint_url", "check_unreadable", "excerpt", "first_choice",
           "post_chat", "redact_url", "url_credentials"]

#: The largest reply body :func:`post_chat` reads by default (a chat completion is a few KiB).
MAX_REPLY_BYTES = 16 * 2**20
#: Bytes read from the socket at a time.
_CHUNK = 64 * 1024
#: What a redacted secret is shown as.
REDACTED = "***"
#: Where the judges' API key goes instead of the URL.
KEY_HINT = "set $MMPO_JUDGE_API_KEY (or api_key in a judge config)"


# ---------------------------------------------------------------------------------------------
# Secrets in URLs.

#: Parts of a (lower-cased, alphanumeric-only) parameter name that mark its value as a secret:
#: api-key, apiKey, x-api-key, access_token, client_secret, password, X-Amz-Signature, auth, ...
_SECRET_PARTS = ("key", "token", "secret", "passw", "pwd", "auth", "credential", "signature", "session", "jwt",
                 "bearer", "cookie")
#: Whole parameter names that hold a secret (SAS ``sig``, OAuth ``code``, ...).
_SECRET_NAMES = frozenset({"sig", "pass", "pw", "code", "hmac"})
#: Values that are keys whatever they are called: OpenAI-style ``sk-...``, Hugging Face ``hf_...``,
#: GitHub ``ghp_...``, Slack ``xoxb-...``, GitLab ``glpat-...``.
_KEY_VALUE = re.compile(r"(?:sk|rk|pk|hf|gh[pousr]|xox[abpr]|glpat)[-_][A-Za-z0-9_-]{8,}")
_AUTHORITY = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?([^/?#]*)(.*)", re.DOTALL)
_PARAM = re.compile(r"(^|[&;])([^=&;]*)=([^&;]*)")
_PATH_PARAM = re.compile(r"(^|[/;])([^=/;]*)=([^/;]*)")


def _secret_name(name: str) -> bool:
    plain = re.sub(r"[^a-z0-9]", "", urllib.parse.unquote(name).lower())
    return plain in _SECRET_NAMES or any(part in plain for part in _SECRET_PARTS)


def _secret(name: str, value: str) -> bool:
    return _secret_name(name) or bool(_KEY_VALUE.fullmatch(urllib.parse.unquote(value)))


def _split(url: str) -> tuple[str, str, str, str, str]:
    """``(scheme://, authority, path, ?query, #fragment)`` of ``url``, by pattern (never raises)."""
    prefix, authority, rest = _AUTHORITY.match(url).groups()  # no scheme ("key@host/v1"): authority first
    prefix = prefix or ""
    rest, hash_, fragment = rest.partition("#")
    path, question, query = rest.partition("?")
    return prefix, authority, path, question + query, hash_ + fragment


def url_credentials(url: str) -> list[str]:
    """What in ``url`` looks like a credential: ``"user info (user:password@)"`` and
    ``"parameter 'NAME'"`` for each query, fragment or path parameter whose name marks a secret
    (``api-key``, ``key``, ``token``, ``access_token``, ``secret``, ``password``, ``sig``,
    ``X-Amz-Signature``, ...) or whose value looks like a key (``sk-...``, ``hf_...``), and
    ``"a key-like path segment"``; empty when nothing does."""
    _, authority, path, query, fragment = _split(str(url))
    found = ["user info (user:password@)"] if "@" in authority else []
    for text, pattern in ((path, _PATH_PARAM), (query[1:], _PARAM), (fragment[1:], _PARAM)):
        found += [f"parameter {m.group(2)!r}" for m in pattern.finditer(text) if _secret(m.group(2), m.group(3))]
    if any(_KEY_VALUE.fullmatch(urllib.parse.unquote(segment)) for segment in path.split("/")):
        found.append("a key-like path segment")
    return found


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***``: the user info (``https://***@host/...``)
    and the value of every parameter :func:`url_credentials` names. Never raises; a URL without
    credentials comes back unchanged."""
    def hide(match: re.Match) -> str:
        name, value = match.group(2), match.group(3)
        return f"{match.group(1)}{name}={REDACTED if _secret(name, value) else value}"

    prefix, authority, path, query, fragment = _split(str(url))
    if "@" in authority:
        authority = REDACTED + "@" + authority.rpartition("@")[2]
    path = "/".join(REDACTED if _KEY_VALUE.fullmatch(urllib.parse.unquote(segment)) else segment
                    for segment in _PATH_PARAM.sub(hide, path).split("/"))
    query = query[:1] + _PARAM.sub(hide, query[1:])
    fragment = fragment[:1] + _PARAM.sub(hide, fragment[1:])
    return prefix + authority + path + query + fragment


def check_endpoint_url(url: str, what: str = "judge URL", key_hint: str = KEY_HINT) -> None:
    """ValueError unless ``url`` is an ``http``/``https`` URL without credentials in it: a key in
    the URL would be printed, logged and written to progress files, and the host part sent to DNS.
    The message shows the URL redacted and says where the key goes (``key_hint``)."""
    shown = redact_url(url)
    if found := url_credentials(url):
        raise ValueError(f"{what} {shown} holds credentials ({', '.join(found)}); refusing to send a key in a URL: "
                         f"remove it from the URL and {key_hint}")
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in ("http", "https"):
        raise ValueError(f"{what} {shown} is not an http:// or https:// URL")


# ---------------------------------------------------------------------------------------------
# Requests.


def chat_endpoint(url: str) -> str:
    """The chat completions URL of ``url``: ``/chat/completions`` is appended unless it ends so
    (a trailing ``/`` is dropped first)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Makes every HTTP redirect (301, 302, 303, 307, 308) an error instead of following it:
    ``urllib`` would resend the ``Authorization`` header to wherever ``Location`` points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        raise RuntimeError(f"judge endpoint {redact_url(req.full_url)} redirected (HTTP {code}) to "
                           f"{redact_url(newurl)}; refusing to follow (the API key is sent only to the configured "
                           "endpoint)")


class ReplyTooLarge(RuntimeError):
    """A reply body larger than the cap :func:`post_chat` reads."""


class _Deadline:
    """Shuts down the sockets of one request when ``seconds`` have passed (a timer thread), so that
    any read still waiting then fails; :attr:`expired` says it happened."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # the plain socket's shutdown, also for an SSLSocket (whose own shutdown unwraps the TLS layer
    # under a reading thread): a read waiting on it returns at once
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watched:
    """Mixed into an ``http.client`` connection: hands its socket to ``deadline`` once connected."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_WatchedHTTPConnection, deadline=self.deadline), req)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The system's default TLS settings and certificates, loaded once (a context is thread-safe)."""
    return ssl.create_default_context()


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        self.context = _tls_context()
        super().__init__(context=self.context)
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_WatchedHTTPSConnection, deadline=self.deadline), req,
                            context=self.context)


def _size(n: int) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _read_capped(response: Any, shown: str, max_bytes: int) -> bytes:
    """The body of ``response``, read in chunks; :class:`ReplyTooLarge` past ``max_bytes`` (or
    when ``Content-Length`` says so before reading); ``http.client.IncompleteRead`` when the body
    ends before its ``Content-Length``."""
    declared = response.headers.get("Content-Length")
    length = int(declared) if declared and declared.strip().isdigit() else None
    if length is not None and length > max_bytes:
        raise ReplyTooLarge(f"judge endpoint {shown} sent a reply of {_size(length)} (Content-Length), over the "
                            f"{_size(max_bytes)} cap (max_reply_bytes): not a chat completion, or raise the cap")
    parts, total = [], 0
    while chunk := response.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ReplyTooLarge(f"judge endpoint {shown} sent more than the {_size(max_bytes)} cap on a reply "
                                "(max_reply_bytes); stopped reading: not a chat completion, or raise the cap")
        parts.append(chunk)
    body = b"".join(parts)
    if length is not None and len(body) < length:
        raise http.client.IncompleteRead(body, length - len(body))
    return body


def post_chat(endpoint: str, payload: dict[str, Any], *, api_key: str | None = None, timeout: float = 60.0,
              max_retries: int = 3, retry_wait: float = 1.0, max_reply_bytes: int = MAX_REPLY_BYTES) -> bytes:
    """POST ``payload`` as JSON to ``endpoint`` and return the raw reply body.

    Network errors, timeouts, HTTP 429 and 5xx are retried ``max_retries`` times, waiting
    ``retry_wait * 2**attempt`` seconds in between; other HTTP errors, redirects and replies over
    the size cap are raised at once. Safe to call from several threads (each call builds its own
    opener).

    Args:
        endpoint: the full chat completions URL (see :func:`chat_endpoint`), without credentials.
        payload: the request body (``model``, ``messages``, ...).
        api_key: sent as ``Authorization: Bearer <key>`` when set.
        timeout: seconds per attempt, in all: connecting, sending and reading the whole reply.
        max_retries: extra attempts after a retryable failure.
        retry_wait: the base of the exponential wait, in seconds.
        max_reply_bytes: the largest reply body read.

    Raises:
        ValueError: ``endpoint`` holds credentials or is not http(s) (:func:`check_endpoint_url`),
            before any request.
        RuntimeError: an HTTP error (``"judge request failed: HTTP <code> from <endpoint>"``), a
            redirect, a reply over ``max_reply_bytes`` (:class:`ReplyTooLarge`), or network
            failures or timeouts on every attempt. ``endpoint`` is shown redacted.
    """
    check_endpoint_url(endpoint, "judge endpoint")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    shown = redact_url(endpoint)
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    for attempt in range(max_retries + 1):
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        deadline = _Deadline(timeout)
        opener = urllib.request.build_opener(RefuseRedirects, _WatchedHTTPHandler(deadline),
                                             _WatchedHTTPSHandler(deadline))
        error: BaseException | None = None
        try:
            with deadline, opener.open(request, timeout=timeout) as response:
                raw = _read_capped(response, shown, max_reply_bytes)
            if not deadline.expired:
                return raw
        except urllib.error.HTTPError as caught:
            caught.close()
            if (caught.code != 429 and caught.code < 500) or attempt == max_retries:
                raise RuntimeError(f"judge request failed: HTTP {caught.code} from {shown}") from caught
            error = caught
        except (OSError, http.client.HTTPException) as caught:  # URLError, timeouts, resets, cut-off replies
            error = caught
        if attempt == max_retries:
            failure = (f"no complete reply within the {timeout:g} s timeout" if deadline.expired or error is None
                       else f"{type(error).__name__}: {error}")
            raise RuntimeError(f"judge request failed after {attempt + 1} attempts: {failure} (endpoint {shown}; "
                               "is the server up, and does it answer within the timeout?)") from error
        time.sleep(retry_wait * 2**attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Replies.


def first_choice(raw: bytes, endpoint: str) -> dict[str, Any]:
    """The first element of a chat completions reply's ``choices`` (a dict, with ``message`` and,
    when asked for, ``logprobs``); RuntimeError otherwise, naming ``endpoint`` and the reply's start."""
    try:
        choice = json.loads(raw.decode())["choices"][0]
        if not isinstance(choice, dict):
            raise TypeError(f"the first choice is a {type(choice).__name__}, not an object")
        return choice
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise RuntimeError(f"judge endpoint {redact_url(endpoint)} sent no chat completion ({type(error).__name__}: "
                           f"{error}); reply starts {raw[:200]!r}") from error


def chat_content(raw: bytes, endpoint: str) -> str:
    """The first choice's message content of a chat completions reply; RuntimeError otherwise."""
    try:
        return str(json.loads(raw.decode())["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise RuntimeError(f"judge endpoint {redact_url(endpoint)} sent no chat completion ({type(error).__name__}: "
                           f"{error}); reply starts {raw[:200]!r}") from error


# ---------------------------------------------------------------------------------------------
# Unreadable replies.

#: The default largest fraction of a run's judge replies that may be unreadable.
MAX_UNREADABLE = 0.2
#: Replies a run needs before the fraction is checked (every reply unreadable fails at the end anyway).
MIN_REPLIES_CHECKED = 20


class TooManyUnreadable(RuntimeError):
    """More of a judge's replies could not be read than a run allows (:func:`check_unreadable`)."""


def excerpt(text: Any, limit: int = 120) -> str:
    """``text`` (bytes decoded leniently) cut to ``limit`` characters, for an error message."""
    if isinstance(text, bytes):
        text = text[:limit * 4].decode("utf-8", "replace")
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def check_unreadable(source: str, unreadable: int, replies: int, max_fraction: float, example: Any = None, *,
                     final: bool = False, what: str = "replies could not be read",
                     setting: str = "the max-unreadable setting", min_replies: int = MIN_REPLIES_CHECKED) -> None:
    """:class:`TooManyUnreadable` when more than ``max_fraction`` of a run's ``replies`` could not
    be read, once there are ``min_replies`` of them, or at the end (``final``) when not one could.

    An unreadable reply is neither a yes nor a no, and no rating: whoever reads it drops it, so a
    judge that answers in another format would otherwise leave a run with little or no evidence
    and no error. ``max_fraction = 1`` never raises.

    Args:
        source: who replied (``"judge endpoint URL"``, the URL redacted; or the judge's name).
        unreadable, replies: the run's counts so far.
        max_fraction: the largest fraction allowed, in [0, 1].
        example: one unreadable reply (shown cut to 120 characters).
        final: the run is over (every reply unreadable then fails however few there were).
        what: the message's words after ``"U of N"``.
        setting: the option that sets ``max_fraction``, as the message names it.
        min_replies: replies needed before the fraction is checked.
    """
    if not (isinstance(max_fraction, (int, float)) and 0 <= max_fraction <= 1):
        raise ValueError(f"{setting}: the largest fraction of unreadable judge replies must be in [0, 1], got "
                         f"{max_fraction!r}")
    if replies <= 0 or unreadable <= max_fraction * replies:
        return
    if replies < min_replies and not (final and unreadable == replies):
        return
    shown = "" if example is None else f"; e.g. {excerpt(example)!r}"
    raise TooManyUnreadable(
        f"{source}: {unreadable} of {replies} {what} ({unreadable / replies:.0%}, more than the {max_fraction:.0%} "
        f"allowed by {setting}){shown}. Is the judge answering in the expected format (check its model, "
        "question and max_tokens)?")
