"""Claim judges for real data: a local VLM, or a model behind an OpenAI-compatible chat endpoint.

RLAIF-V (Yu et al. 2024) labels its self-generated responses with an open model instead of humans:
each response is split into atomic claims, every claim is turned into a yes/no question about the
image, and the labeler's answer decides whether the claim counts as a hallucination; a response's
score is minus its rejected claims (:class:`~mmpo.data.construct.self_pairs.PairingRule`). The
labeler's confidence is the probability it gives to "yes" against "no" at the first answer token.

The two judges here do that with the :class:`~mmpo.data.construct.self_pairs.ClaimJudge` protocol,
one question per claim (``question``: a template with ``{claim}``, and optionally ``{prompt}``, or a
callable ``claim -> question``):

* :class:`VLMClaimJudge`: a local transformers VLM (any family :mod:`mmpo.prompting` renders). One
  forward pass per batch of questions; ``p_correct`` is the next-token probability of the yes words
  renormalised against the no words, so no text is generated and nothing needs parsing.
* :class:`EndpointClaimJudge`: a chat model behind ``/chat/completions`` (vLLM, SGLang, OpenAI), with
  the image sent inline. With ``logprobs`` the server's top log-probabilities of the first answer
  token give ``p_correct`` the same way; otherwise (or when a server sends none) the reply's first
  word decides. Requests run concurrently; redirects are refused, each request has a total time
  limit and a reply size cap, and a URL holding a key is refused (:mod:`mmpo.chat_http`).

A claim is judged correct when ``p_correct >= threshold``. Where a judge cannot tell (the VLM puts
no probability on yes or no, the endpoint's reply says neither), the verdict is *unknown*
(``correct=None``): the claim is dropped when responses are scored, never counted wrong or right,
and :func:`~mmpo.data.construct.self_pairs.sample_and_judge` stops a run with too many of them. Both judges' :meth:`describe` return
settings only (never an API key), deterministic, so a resumed run can check it uses the same judge.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import io
import logging
import math
import os
import re
import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mmpo.chat_http import (
    MAX_REPLY_BYTES,
    chat_endpoint,
    check_endpoint_url,
    excerpt,
    first_choice,
    post_chat,
    redact_url,
)
from mmpo.data.construct.self_pairs import ClaimQuery, Verdict
from mmpo.prompting import encode_inputs, render_prompt, resolve_prompt_format, tokenizer_of
from mmpo.types import Prompt

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_QUESTION", "EndpointClaimJudge", "NO_PROBABILITY", "UNPARSED", "VLMClaimJudge", "endpoint_judge_from_env",
           "question_for", "single_token_ids"]

#: The question each claim is asked as (RLAIF-V's labeler answers such yes/no questions).
DEFAULT_QUESTION = "Is the following statement about the image correct? {claim} Please answer yes or no."

#: ``Verdict.reason`` of a claim whose reply said neither yes nor no (an unknown verdict).
UNPARSED = "unparsed reply"
#: ``Verdict.reason`` of a claim the local VLM put no finite yes/no probability on (an unknown verdict).
NO_PROBABILITY = "no yes/no probability"

#: A question: a template with ``{claim}`` (and optionally ``{prompt}``), or ``claim -> question``.
Question = str | Callable[[str], str]

_FIRST_WORD = re.compile(r"[^A-Za-z]*([A-Za-z]+)")


# ---------------------------------------------------------------------------------------------
# Questions.


def check_question(question: Question) -> None:
    """ValueError unless ``question`` is a callable or a template whose only fields are
    ``{claim}`` (required) and ``{prompt}``."""
    if callable(question):
        return
    if not isinstance(question, str):
        raise ValueError(f"question must be a template string or a callable, got {type(question).__name__}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(question) if name is not None}
    except ValueError as error:
        raise ValueError(f"question {question!r} is not a valid format string: {error}") from error
    if "claim" not in fields:
        raise ValueError(f"question {question!r} has no {{claim}} field (every claim would get the same question)")
    unknown = fields - {"claim", "prompt"}
    if unknown:
        raise ValueError(f"question {question!r} has unknown fields {sorted(unknown)}; only {{claim}} and "
                         "{prompt} are filled in")


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: itself when a string, else the text parts of its user turns joined."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for turn in prompt:
        if not isinstance(turn, dict) or turn.get("role") != "user":
            continue
        content = turn.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text" and "text" in p]
    return " ".join(parts)


def question_for(question: Question, query: ClaimQuery) -> str:
    """The question ``query``'s claim is asked as: ``question(claim)``, or the template filled in."""
    if callable(question):
        return str(question(query.claim))
    fields = {name for _, name, _, _ in string.Formatter().parse(question) if name}
    values = {"claim": query.claim}
    if "prompt" in fields:
        values["prompt"] = prompt_text(query.prompt)
    return question.format(**values)


def describe_question(question: Question) -> str:
    """The question as a stable string: the template itself, or the callable's ``module.qualname``."""
    if isinstance(question, str):
        return question
    module = getattr(question, "__module__", None) or type(question).__module__
    qualname = getattr(question, "__qualname__", None) or type(question).__qualname__
    return f"{module}.{qualname}"


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")


# ---------------------------------------------------------------------------------------------
# A local VLM.


def single_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The token ids that spell one of ``words`` on their own: the single-token encodings of
    ``word`` and of ``" " + word`` (without special tokens), in order, without repeats.

    A word whose encoding is longer than one token, or is the unknown token, adds nothing.
    """
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids: list[int] = []
    for word in words:
        for form in (word, " " + word):
            encoded = tokenizer.encode(form, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] != unknown and encoded[0] not in ids:
                ids.append(int(encoded[0]))
    return ids


class VLMClaimJudge:
    """Judges claims with a local VLM's next-token probability of "yes" (RLAIF-V's labeler).

    Each claim becomes a question (``question``), rendered and encoded exactly as generation does
    (:func:`mmpo.prompting.render_prompt`, :func:`mmpo.prompting.encode_inputs` with left padding),
    so the last position of every row is where the answer would start. One forward pass per
    ``batch_size`` questions reads that position's distribution; ``p_correct = P(yes) / (P(yes) +
    P(no))``, each summed over the token ids of its words (:func:`single_token_ids`), computed in
    float32 log space. The model's train/eval mode is restored afterwards.

    Args:
        model: a transformers VLM (e.g. ``LlavaForConditionalGeneration``).
        processor: its processor.
        question: a template with ``{claim}`` (and optionally ``{prompt}``, the item's instruction),
            or a callable ``claim -> question text``.
        yes_words, no_words: the answers counted as yes and as no.
        threshold: ``correct = p_correct >= threshold``.
        batch_size: questions per forward pass.
        prompt_format: ``"auto"``, ``"chat"`` or ``"plain"`` (see :mod:`mmpo.prompting`).
        name: the model's name in :meth:`describe` (default its ``config._name_or_path``).

    Raises:
        ValueError: no yes word or no no word encodes to a single token, a yes and a no word share
            a token, or a bad ``question``, ``threshold``, ``batch_size`` or ``prompt_format``.
    """

    def __init__(self, model: Any, processor: Any, *, question: Question = DEFAULT_QUESTION,
                 yes_words: Sequence[str] = ("yes", "Yes"), no_words: Sequence[str] = ("no", "No"),
                 threshold: float = 0.5, batch_size: int = 32, prompt_format: str = "auto",
                 name: str | None = None):
        check_question(question)
        _check_threshold(threshold)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        resolve_prompt_format(processor, prompt_format)
        if isinstance(yes_words, str) or isinstance(no_words, str):
            raise ValueError("yes_words and no_words must be sequences of words, not a single string")
        tokenizer = tokenizer_of(processor)
        source = getattr(tokenizer, "name_or_path", None)
        tokenizer_name = type(tokenizer).__name__ + (f" ({source})" if source else "")
        self.yes_ids = single_token_ids(tokenizer, yes_words)
        self.no_ids = single_token_ids(tokenizer, no_words)
        for ids, words, what in ((self.yes_ids, yes_words, "yes_words"), (self.no_ids, no_words, "no_words")):
            if not ids:
                raise ValueError(f"none of {what} {list(words)} encodes to a single known token with "
                                 f"the tokenizer {tokenizer_name} (tried each word with and without a leading space)")
        shared = set(self.yes_ids) & set(self.no_ids)
        if shared:
            raise ValueError(f"yes_words {list(yes_words)} and no_words {list(no_words)} share token ids "
                             f"{sorted(shared)} with the tokenizer {tokenizer_name}")
        self.model = model
        self.processor = processor
        self.question = question
        self.yes_words = list(yes_words)
        self.no_words = list(no_words)
        self.threshold = float(threshold)
        self.batch_size = batch_size
        self.prompt_format = prompt_format
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | None = "auto", dtype: str = "auto",
                        **kwargs: Any) -> VLMClaimJudge:
        """A judge with the VLM of a local checkpoint (:func:`mmpo.models.load_policy`,
        no download); ``kwargs`` go to the constructor, ``name`` defaulting to ``path``.

        Raises:
            FileNotFoundError: ``path`` is not a directory.
        """
        from mmpo.models import ModelArguments, load_policy

        model_args = ModelArguments(model_name_or_path=os.fspath(path), dtype=dtype)
        model, processor = load_policy(model_args, device=device, what="judge model")
        kwargs.setdefault("name", os.fspath(path))
        return cls(model, processor, **kwargs)

    def judge(self, queries: Sequence[ClaimQuery]) -> list[Verdict]:
        """One verdict per query, in order."""
        if not queries:
            return []
        probabilities = self.p_yes(
            [q.image for q in queries],
            [render_prompt(self.processor, question_for(self.question, q), self.prompt_format) for q in queries])
        verdicts = []
        for p in probabilities:
            if p is None:
                verdicts.append(Verdict(correct=None, p_correct=None, reason=NO_PROBABILITY))
            else:
                verdicts.append(Verdict(correct=p >= self.threshold, p_correct=p))
        return verdicts

    def p_yes(self, images: Sequence[Any], texts: Sequence[str]) -> list[float | None]:
        """``P(yes) / (P(yes) + P(no))`` after each rendered prompt text (its image first); ``None``
        where the model puts no finite probability on any yes or no token."""
        import torch

        model = self.model
        yes, no = torch.tensor(self.yes_ids), torch.tensor(self.no_ids)
        # only the last position's logits are needed; models that can skip the others are told so
        extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        out: list[float | None] = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(texts), self.batch_size):
                    inputs = encode_inputs(self.processor, images[start:start + self.batch_size],
                                           texts[start:start + self.batch_size], padding_side="left")
                    # floating tensors (pixel_values) take the model's dtype; ids and masks keep theirs
                    inputs = inputs.to(model.device, dtype=model.dtype)
                    logits = model(**inputs, **extra).logits[:, -1, :].float()  # (B, V)
                    log_p = torch.log_softmax(logits, dim=-1)
                    log_yes = torch.logsumexp(log_p[:, yes.to(log_p.device)], dim=-1)
                    log_no = torch.logsumexp(log_p[:, no.to(log_p.device)], dim=-1)
                    log_total = torch.logaddexp(log_yes, log_no)
                    p = torch.exp(log_yes - log_total)
                    ok = torch.isfinite(log_total) & torch.isfinite(p)
                    out += [float(v) if good else None for v, good in zip(p.tolist(), ok.tolist(), strict=True)]
        finally:
            model.train(was_training)
        return out

    def describe(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        model = self.name or getattr(config, "_name_or_path", None) or type(self.model).__name__
        return {"judge": "VLMClaimJudge", "model": str(model), "question": describe_question(self.question),
                "yes_words": list(self.yes_words), "no_words": list(self.no_words), "threshold": self.threshold,
                "prompt_format": self.prompt_format}


# ---------------------------------------------------------------------------------------------
# A chat endpoint.


def png_data_url(image: Any) -> str:
    """``data:image/png;base64,...`` of a PIL image (converted to RGB)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _first_word_p(text: Any) -> float | None:
    """1.0 when ``text``'s first word is yes, 0.0 when it is no, else ``None``."""
    if not isinstance(text, str):
        return None
    match = _FIRST_WORD.match(text)
    word = match.group(1).lower() if match else ""
    return 1.0 if word == "yes" else 0.0 if word == "no" else None


def _logprob_p(choice: dict[str, Any]) -> float | None:
    """``P(yes) / (P(yes) + P(no))`` from the first answer token's top log-probabilities (tokens
    stripped and lower-cased; the sampled token counts too when not among them); ``None`` when
    there are none or neither yes nor no is among them."""
    try:
        first = choice["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(first, dict):
        return None
    candidates = list(first.get("top_logprobs") or [])
    if "token" in first and not any(isinstance(c, dict) and c.get("token") == first["token"] for c in candidates):
        candidates.append(first)
    mass = {"yes": [], "no": []}
    for candidate in candidates:
        if not isinstance(candidate, dict):
            continue
        token, logprob = candidate.get("token"), candidate.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
            continue
        key = token.strip().lower()
        if key in mass:
            mass[key].append(float(logprob))
    if not mass["yes"] and not mass["no"]:
        return None
    log_yes, log_no = (_logsumexp(values) for values in (mass["yes"], mass["no"]))
    log_total = _logsumexp([log_yes, log_no])
    if not math.isfinite(log_total):
        return None
    return math.exp(log_yes - log_total)


def _logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    top = max(finite)
    return top + math.log(sum(math.exp(v - top) for v in finite))


@dataclasses.dataclass
class EndpointClaimJudge:
    """Judges claims with a chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Each claim is one request: a user turn holding the image (inline PNG) and the question,
    ``temperature: 0``. With ``logprobs`` the request asks for the first answer token's
    ``top_logprobs``, and ``p_correct`` is yes renormalised against no among them; without (or
    when the reply carries none, or neither word is among them) the reply's first word decides:
    yes 1.0, no 0.0. A reply that says neither (or is no chat completion) is an unknown verdict,
    ``Verdict(correct=None, reason="unparsed reply", detail=<the reply's start>)``. Requests run on
    ``max_workers`` threads; verdicts come back in input order.

    Works with vLLM and SGLang servers (``vllm serve MODEL``: ``url="http://host:8000/v1"``) and
    with OpenAI's API. Redirects are refused, so the key reaches the configured endpoint only; a
    URL holding a key (``https://user:KEY@host``, ``?api-key=KEY``) is refused when the judge is
    made, and every message and :meth:`describe` show the URL redacted.

    Attributes:
        url: the endpoint, or its base (``.../v1``); ``/chat/completions`` is appended when missing.
        api_key: sent as ``Authorization: Bearer <key>`` when set (never in :meth:`describe` or repr).
        model: the ``model`` field of the request.
        question: a template with ``{claim}`` (and optionally ``{prompt}``), or ``claim -> question``.
        threshold: ``correct = p_correct >= threshold``.
        logprobs: ask for log-probabilities (``logprobs: true, top_logprobs: N``).
        top_logprobs: ``N``.
        max_tokens: the answer's length limit (1: the yes/no token).
        timeout: seconds per HTTP request, in all (connecting and reading the whole reply).
        max_retries, retry_wait: retries after a network error, a timeout, a 429 or a 5xx (see
            :func:`mmpo.chat_http.post_chat`).
        max_workers: concurrent requests.
        max_reply_bytes: the largest reply read (16 MiB).

    Raises:
        ValueError: a URL with credentials in it or not http(s), or a bad setting.
        RuntimeError (from :meth:`judge`): an HTTP error, a redirect, a reply over the size cap, or
            network failures or timeouts after the retries, naming the endpoint (redacted).
    """

    url: str
    api_key: str | None = dataclasses.field(default=None, repr=False)
    model: str = "gpt-4o"
    question: Question = DEFAULT_QUESTION
    threshold: float = 0.5
    logprobs: bool = True
    top_logprobs: int = 10
    max_tokens: int = 1
    timeout: float = 60.0
    max_retries: int = 3
    retry_wait: float = 1.0
    max_workers: int = 8
    max_reply_bytes: int = MAX_REPLY_BYTES

    def __post_init__(self):
        if not isinstance(self.url, str) or not self.url.strip():
            raise ValueError(f"url must be a non-empty string, got {redact_url(str(self.url))!r}")
        check_endpoint_url(self.url)
        check_question(self.question)
        _check_threshold(self.threshold)
        if not (isinstance(self.timeout, (int, float)) and not isinstance(self.timeout, bool) and self.timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        for name, low in (("top_logprobs", 0), ("max_tokens", 1), ("max_workers", 1), ("max_retries", 0),
                          ("max_reply_bytes", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @property
    def endpoint(self) -> str:
        return chat_endpoint(self.url)

    def payload(self, image_url: str, question: str) -> dict[str, Any]:
        """The request body asking ``question`` about the image at ``image_url``."""
        body: dict[str, Any] = {
            "model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                      {"type": "text", "text": question}]}],
        }
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def judge(self, queries: Sequence[ClaimQuery]) -> list[Verdict]:
        """One verdict per query, in order; each distinct image is encoded once."""
        if not queries:
            return []
        urls: dict[int, str] = {}
        payloads = []
        for query in queries:
            key = id(query.image)  # the queries hold the images, so ids are not reused during the call
            if key not in urls:
                urls[key] = png_data_url(query.image)
            payloads.append(self.payload(urls[key], question_for(self.question, query)))
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(payloads))) as pool:
            futures = [pool.submit(self._ask, payload) for payload in payloads]
            try:
                verdicts = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        unparsed = [v for v in verdicts if v.correct is None]
        if unparsed:
            logger.warning("%s: %d of %d replies said neither yes nor no (unknown verdicts: those claims are "
                           "dropped), e.g. %r", redact_url(self.endpoint), len(unparsed), len(verdicts),
                           unparsed[0].detail)
        return verdicts

    def _ask(self, payload: dict[str, Any]) -> Verdict:
        raw = post_chat(self.endpoint, payload, api_key=self.api_key, timeout=self.timeout,
                        max_retries=self.max_retries, retry_wait=self.retry_wait,
                        max_reply_bytes=self.max_reply_bytes)
        return self.verdict_of(raw)

    def verdict_of(self, raw: bytes) -> Verdict:
        """The verdict a reply body gives (never raises: an unreadable reply is an unknown verdict,
        reason :data:`UNPARSED`, ``detail`` the reply's start)."""
        try:
            choice = first_choice(raw, self.endpoint)
        except RuntimeError:
            return Verdict(correct=None, p_correct=None, reason=UNPARSED, detail=excerpt(raw))
        p = _logprob_p(choice) if self.logprobs else None
        content = None
        if p is None:
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            p = _first_word_p(content)
        if p is None:
            return Verdict(correct=None, p_correct=None, reason=UNPARSED, detail=excerpt(content))
        return Verdict(correct=p >= self.threshold, p_correct=p)

    def describe(self) -> dict[str, Any]:
        return {"judge": "EndpointClaimJudge", "endpoint": redact_url(self.endpoint), "model": self.model,
                "question": describe_question(self.question), "threshold": float(self.threshold),
                "logprobs": self.logprobs, "top_logprobs": self.top_logprobs, "max_tokens": self.max_tokens}


def endpoint_judge_from_env(url: str | None = None, api_key: str | None = None, model: str | None = None,
                            **kwargs: Any) -> EndpointClaimJudge:
    """An :class:`EndpointClaimJudge`; ``url``, ``api_key`` and ``model`` from the arguments, else
    the environment (``MMPO_JUDGE_URL``, ``MMPO_JUDGE_API_KEY``, ``MMPO_JUDGE_MODEL``; model default
    ``"gpt-4o"``); ``kwargs`` are the other fields.

    Raises:
        ValueError: no URL given or set, or a URL holding a key (pass it as ``api_key`` or
            ``$MMPO_JUDGE_API_KEY``).
    """
    url = url or os.environ.get("MMPO_JUDGE_URL")
    api_key = api_key or os.environ.get("MMPO_JUDGE_API_KEY")
    model = model or os.environ.get("MMPO_JUDGE_MODEL") or "gpt-4o"
    if not url:
        raise ValueError("no judge URL: pass url= or set MMPO_JUDGE_URL")
    return EndpointClaimJudge(url=url, api_key=api_key, model=model, **kwargs)
