"""Response log-probs from the last hidden states, a chunk of positions at a time.

Letting the model compute ``.logits`` for every kept position materialises ``(N, K, V)`` logits, and
their float32 copy for the log-softmax: at a 151,936-token vocabulary that is several GB. Instead:

1. :func:`head_logprobs` makes the model's output head compute, inside the model's own forward,
   the log-probs of the wanted tokens only: it receives the hidden states ``(N, K, H)`` (after the
   final norm and the model's own ``logits_to_keep`` slicing), keeps the positions the caller picks,
   ``(M, H)``, and returns ``(M,)`` float32 in place of the logits;
2. :func:`chunked_logprobs` applies the head and the log-softmax to ``chunk_size`` positions at a
   time. With autograd on, each chunk is checkpointed: its backward recomputes that chunk's logits,
   so head plus log-softmax never hold more than ``O(chunk_size x V)`` at once, forward or backward.

Where the head's weight lives is left to the engine. The model calls the head as a module inside
its own forward (the module's hooks run as for any other call: ZeRO-3 gathers the weight for the
call and, in the backward, again when the gradient reaches the head's output, until it has passed
the head's input; DDP finds the head used in the forward; FSDP's root unit holds it). The chunks,
and their recompute in the backward, call the head's own ``forward`` within those windows, never
the module again: a second module call would let ZeRO-3 release the weight between the recompute
and the gradient that needs it. A peft LoRA adapter on ``lm_head`` is applied (its ``forward`` is
the adapter's; its base layer is a module call of its own, gathered as under gradient
checkpointing), and tied embeddings get both gradient paths. The head's ``forward`` is replaced
only for the duration of :func:`head_logprobs`, by an instance attribute.

What the models do after their head (transformers 5.25, read from each ``forward``):

* LLaVA (also LLaVA-NeXT, LLaVA-OneVision), Qwen2-VL / Qwen2.5-VL / Qwen3-VL, Idefics3, SmolVLM,
  Mllama (``MllamaForConditionalGeneration``) and Gemma 3 (``Gemma3ForConditionalGeneration``):
  ``logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))`` and nothing after.
  Gemma 3's VLM class does **not** softcap, even when its text config sets
  ``final_logit_softcapping``: the chunked head then does not either (:func:`logit_softcap` is None).
* PaliGemma, ``Gemma3ForCausalLM``, ``Gemma2ForCausalLM`` (and other Gemma-like ``*ForCausalLM``):
  ``cap * tanh(logits / cap)`` with the text config's ``final_logit_softcapping`` when it is set
  (PaliGemma 2's Gemma 2 text config sets 30). Supported: under :func:`head_logprobs`
  the config value is None for the duration (else the model would softcap the hidden states), and
  :func:`chunked_logprobs` applies the cap, in the same order and dtype as the model.
* ``MllamaForCausalLM`` (text-only Mllama): ``self.lm_head(hidden_states).float()``. The values are
  the same (the chunks take float32 anyway), but the hidden states then come back in float32.
* Outside mmpo's families, e.g. Aya Vision (``logits * logit_scale``), Granite Vision / Docling
  (``logits / logits_scaling``), Chameleon (image tokens' logits set to the minimum): the hidden
  states would come back transformed, so :func:`head_problem` names the statement and the caller
  keeps the model's own logits.

:func:`head_problem` decides by reading the installed model class's ``forward`` (its syntax tree),
not from a list of families, so a transformers release that changes a forward is noticed; anything
it does not recognise is reported as a problem rather than guessed.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import operator
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

#: Positions per chunk when the caller names none: at a 151,936-token vocabulary, 256 positions
#: of float32 logits are 156 MB, and a chunk's backward holds a few such tensors.
DEFAULT_CHUNK = 256
#: Peak bytes a chunk's backward holds per (position, vocabulary entry): the recomputed float32
#: logits kept for logsumexp, the gradient scattered from the picked logit, logsumexp's softmax term
#: and their sum. Measured on CPU (live tensors tracked op by op) at 16.1-16.3 for float32 and
#: bfloat16 heads alike; a forward without autograd holds 4-6.
BYTES_PER_LOGIT = 16
#: The config attribute of Gemma-like models' final logit softcap.
SOFTCAP = "final_logit_softcapping"


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module that maps last hidden states to logits (``lm_head``), or None when there is none.

    Under peft this is the base model's head as peft left it: a LoRA-wrapped module when the
    adapter targets ``lm_head``, so calling it applies the adapter.
    """
    from .forward import unwrap  # here, not at the top: mmpo.forward may import this module

    getter = getattr(unwrap(model), "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, torch.nn.Module) else None


def head_problem(model: torch.nn.Module) -> str | None:
    """Why :func:`head_logprobs` and :func:`chunked_logprobs` cannot stand in for the
    model's own ``.logits`` (the caller then keeps them), or None when they can."""
    return _head_use(model)[0]


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The softcap the model's forward applies to its logits (pass it to :func:`chunked_logprobs`),
    or None when it applies none."""
    return _head_use(model)[1]


def chunk_for(vocab_size: int, budget_bytes: int = 2**28) -> int:
    """The most positions per chunk whose backward stays within ``budget_bytes`` (at least 1), at
    :data:`BYTES_PER_LOGIT` per logit: 110 positions at a 151,936-token vocabulary and 256 MiB.

    An alternative to :data:`DEFAULT_CHUNK` for callers that think in bytes; the estimate covers
    the head and log-softmax only, not the rest of the model.
    """
    return max(1, budget_bytes // (BYTES_PER_LOGIT * vocab_size))


@contextlib.contextmanager
def head_logprobs(model: torch.nn.Module, pick: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                  chunk_size: int = DEFAULT_CHUNK) -> Iterator[torch.nn.Module]:
    """Within the block, the model's head computes log-probs of chosen targets instead of logits.

    The head's ``forward`` receives the last hidden states the model would have turned into logits,
    ``(N, K, H)`` (after the final norm and the model's own ``logits_to_keep`` slicing);
    ``pick(hidden)`` returns the hidden states at the positions that predict each wanted token,
    ``(M, H)``, and those tokens, ``(M,)``; the head returns :func:`chunked_logprobs` of them, ``(M,)``
    float32, which the model passes on as its ``.logits``. All of it runs inside the model's own
    forward and the head's own call, so engines see the head used as usual: DDP's search for unused
    parameters finds it, ZeRO-3 has gathered its weight, FSDP's root unit holds it unsharded.

    The new ``forward`` is an instance attribute, so the module's ``__call__`` and hooks still run;
    the chunks, and their recompute in the backward, call the head's own forward (whatever instance
    ``forward`` was there before, as accelerate's hooks set one, else the class's), never the
    module again (see the module docstring for why), and that instance attribute is put back on
    exit, even on an exception (none stays none). A
    softcap the model would apply after its head is switched off in its config for the duration
    (:func:`chunked_logprobs` applies it instead). Yields the head.

    Raises:
        ValueError: with :func:`head_problem`'s reason when the model cannot be used so.
    """
    problem, softcap = _head_use(model)
    if problem is not None:
        raise ValueError(problem)
    head = output_head(model)
    assert head is not None  # _head_use said so
    own = vars(head).get("forward") or type(head).forward.__get__(head)

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        picked, targets = pick(hidden_states)
        return chunked_logprobs(head, picked, targets, chunk_size, softcap, call=own)

    with _softcap_switched_off(model) if softcap is not None else contextlib.nullcontext():
        with _instance_forward(head, forward):
            yield head


def chunked_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                     chunk_size: int = DEFAULT_CHUNK, softcap: float | None = None,
                     call: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``log_softmax(head(hidden))[m, targets[m]]``, computed ``chunk_size`` positions at a time.

    Per chunk: ``logits[target].float() - logsumexp(logits.float())`` (the arithmetic of
    :func:`mmpo.forward.gathered_logprobs`, so the two agree to float rounding), after
    ``softcap * tanh(logits / softcap)`` in the head's dtype when ``softcap`` is given. When
    autograd is on (grad mode, and ``hidden`` or a head parameter requires grad) each chunk is a
    non-reentrant checkpoint, so no chunk's logits outlive it: the backward calls the head again on
    that chunk (with the RNG state of the forward, so a dropout in the head replays the same mask).

    Args:
        head: the output head (:func:`output_head`).
        hidden: ``(M, H)`` the hidden state at the position that predicts each target.
        targets: ``(M,)`` long, the token whose log-prob is wanted at each position.
        chunk_size: positions per call of the head (>= 1).
        softcap: the model's final logit softcap (:func:`logit_softcap`), or None.
        call: what maps a chunk's hidden states to its logits, forward and recompute; default
            ``head`` itself (a module call). :func:`head_logprobs` passes the head's own forward.

    Returns:
        ``(M,)`` float32. For ``M == 0`` the head still runs once on no positions, so the empty
        result is part of the graph (``.sum().backward()`` works; DDP sees the head used).
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (M, H) and targets (M,); got {tuple(hidden.shape)} and "
                         f"{tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    recompute = _needs_graph(head, hidden)
    pieces = []
    for start in range(0, max(len(hidden), 1), chunk_size):  # at least one chunk, even an empty one
        rows = slice(start, start + chunk_size)
        if recompute:
            pieces.append(checkpoint(_chunk_logprobs, call or head, hidden[rows], targets[rows], softcap,
                                     use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(call or head, hidden[rows], targets[rows], softcap))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _chunk_logprobs(call: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor,
                    softcap: float | None) -> torch.Tensor:
    """One chunk's log-probs ``(C,)`` float32 from its hidden states ``(C, H)`` and targets ``(C,)``."""
    logits = call(hidden)  # (C, V)
    if softcap is not None:  # as the model does it: divide, tanh, multiply, in the head's dtype
        logits = torch.tanh(logits / softcap) * softcap
    picked = logits.gather(1, targets.to(logits.device).unsqueeze(1)).squeeze(1).float()  # (C,)
    return picked - torch.logsumexp(logits.float(), dim=-1)


def _needs_graph(head: torch.nn.Module, hidden: torch.Tensor) -> bool:
    """Whether autograd will record the head's computation on ``hidden``."""
    return torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))


@contextlib.contextmanager
def _instance_forward(module: torch.nn.Module, forward: Any) -> Iterator[None]:
    """``module.forward = forward`` as an instance attribute for the block; the instance attribute
    that was there before (or its absence) afterwards, exactly."""
    had, saved = "forward" in vars(module), vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:
            module.forward = saved
        else:
            del module.forward


@contextlib.contextmanager
def _softcap_switched_off(model: torch.nn.Module) -> Iterator[None]:
    """The model's configs (its own and its text config) with no final logit softcap for the block;
    each attribute is put back as it was (a value of the instance, or none) afterwards."""
    configs = {id(c): c for c in _configs(model) if getattr(c, SOFTCAP, None) is not None}.values()
    saved = [(c, SOFTCAP in vars(c), getattr(c, SOFTCAP)) for c in configs]
    for config in configs:
        setattr(config, SOFTCAP, None)
    try:
        yield
    finally:
        for config, had, value in saved:
            if had:
                setattr(config, SOFTCAP, value)
            else:
                delattr(config, SOFTCAP)


def _configs(model: torch.nn.Module) -> list[Any]:
    """The model's config and its text config (the same object for a text-only model)."""
    from .forward import unwrap

    config = getattr(unwrap(model), "config", None)
    if config is None:
        return []
    getter = getattr(config, "get_text_config", None)
    text = getter() if callable(getter) else getattr(config, "text_config", None)
    return [config] if text is None else [config, text]


def _text_softcap(model: torch.nn.Module) -> float | None:
    """The text config's ``final_logit_softcapping`` (None when unset or absent)."""
    configs = _configs(model)
    return getattr(configs[-1], SOFTCAP, None) if configs else None


# --- reading the model's forward ------------------------------------------------------------------


def _head_use(model: torch.nn.Module) -> tuple[str | None, float | None]:
    """``(problem, softcap)``: why the chunked head cannot replace the model's ``.logits`` (or None),
    and the softcap the model applies after its head (or None)."""
    from .forward import unwrap

    head = output_head(model)
    if head is None:
        return "the model has no output head (get_output_embeddings() is None)", None
    inner = unwrap(model)
    name = type(inner).__name__
    body = _forward_body(type(inner))
    if body is None:
        return f"cannot read {name}.forward's source to check what it does after its head", None
    found = _head_assignment(body, inner, head)
    if found is None:
        return (f"{name}.forward does not call its head as `logits = self.lm_head(hidden_states)`, the form "
                f"this module checks"), None
    index, logits = found
    cap_source = None
    for stmt in body[index + 1:]:
        cap = _softcap_expression(stmt, logits)
        if cap is not None:
            cap_source = cap
        elif _labels_only(stmt):
            continue
        elif _writes(stmt, logits) or _returns_other_logits(stmt, logits):
            return f"{name}.forward changes the logits after its head: `{_first_line(stmt)}`", None
    if cap_source is None:
        return None, None
    if not _read_from_config(body, cap_source):
        return (f"{name}.forward softcaps its logits with `{cap_source}`, not read from its config when called, "
                f"so it cannot be switched off"), None
    return None, _text_softcap(model)


@functools.cache
def _forward_body(cls: type) -> tuple[ast.stmt, ...] | None:
    """The statements of ``cls.forward``, or None when its source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(cls.forward))
        function = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    if not isinstance(function, ast.FunctionDef):
        return None
    return tuple(function.body)


def _head_assignment(body: tuple[ast.stmt, ...], model: torch.nn.Module,
                     head: torch.nn.Module) -> tuple[int, str] | None:
    """``(index, name)`` of the statement ``name = self.<head>(...)`` (optionally ``.float()``),
    the first one calling the head; None when the first call of the head is in another form."""
    for index, stmt in enumerate(body):
        if not any(_calls(node, model, head) for node in ast.walk(stmt)):
            continue
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            return None
        value = stmt.value
        if (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "float"
                and not value.args and not value.keywords):
            value = value.func.value  # Mllama's `.float()`: same values, as the chunks take float32 anyway
        return (index, stmt.targets[0].id) if _calls(value, model, head) else None
    return None


def _calls(node: ast.AST, model: torch.nn.Module, head: torch.nn.Module) -> bool:
    """Whether ``node`` is a call of ``self.<path>`` and that path leads to ``head`` on ``model``."""
    if not isinstance(node, ast.Call):
        return False
    parts = []
    target = node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if not (isinstance(target, ast.Name) and target.id == "self" and parts):
        return False
    try:
        return operator.attrgetter(".".join(reversed(parts)))(model) is head
    except AttributeError:
        return False


def _softcap_expression(stmt: ast.stmt, logits: str) -> str | None:
    """The cap's source when ``stmt`` is Gemma's softcap block, else None::

        if <...final_logit_softcapping...>:
            logits = logits / CAP
            logits = torch.tanh(logits)
            logits = logits * CAP
    """
    if not (isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 3):
        return None
    divide, tanh, multiply = (ast.unparse(s) for s in stmt.body)
    match = re.fullmatch(rf"{logits} = {logits} / (.+)", divide)
    if match is None or SOFTCAP not in match.group(1):
        return None
    cap = match.group(1)
    if tanh != f"{logits} = torch.tanh({logits})" or multiply != f"{logits} = {logits} * {cap}":
        return None
    return cap


def _read_from_config(body: tuple[ast.stmt, ...], cap: str) -> bool:
    """Whether the softcap ``cap`` is read from ``self.config`` when forward runs: ``cap`` itself is
    ``self.config...``, or a local name every binding of which in forward reads ``self.config``."""
    if cap.startswith("self.config."):
        return True
    values = []
    for node in ast.walk(ast.Module(body=list(body), type_ignores=[])):
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name) and node.target.id == cap:
            values.append(node.value)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == cap for t in node.targets):
            values.append(node.value)
    return bool(values) and all("self.config" in ast.unparse(value) for value in values)


def _labels_only(stmt: ast.stmt) -> bool:
    """Whether ``stmt`` is an ``if`` on ``labels`` with no ``else`` (the loss; mmpo passes no labels)."""
    return isinstance(stmt, ast.If) and not stmt.orelse and "labels" in ast.unparse(stmt.test)


def _writes(stmt: ast.stmt, logits: str) -> bool:
    """Whether ``stmt`` rebinds ``logits``, assigns into it, or calls an in-place method on it."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and node.id == logits and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, ast.Store) \
                and _base_name(node) == logits:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.endswith("_") \
                and not node.func.attr.startswith("_") and _base_name(node.func) == logits:
            return True
    return False


def _returns_other_logits(stmt: ast.stmt, logits: str) -> bool:
    """Whether ``stmt`` returns an output whose ``logits=`` is something other than ``logits``."""
    if not isinstance(stmt, ast.Return):
        return False
    return any(keyword.arg == "logits" and not (isinstance(keyword.value, ast.Name) and keyword.value.id == logits)
               for node in ast.walk(stmt) if isinstance(node, ast.Call) for keyword in node.keywords)


def _base_name(node: ast.AST) -> str | None:
    """``x`` for ``x``, ``x[...]``, ``x.attr``, ``x.attr[...]``..."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _first_line(stmt: ast.stmt) -> str:
    return ast.unparse(stmt).splitlines()[0]
