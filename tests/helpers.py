"""Helpers shared by test files: short training settings, the tiny checkpoint loaded, a fake chat server.

Importable as ``helpers`` from any test: pytest puts ``tests/`` (the directory of the root
``conftest.py``) on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

#: The settings every short test run shares: CPU, a couple of steps, no saving, no reporting.
TRAINING_DEFAULTS: dict[str, Any] = dict(
    max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, logging_steps=1,
    save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, report_to="none")


def training_args(output_dir: str | Path, **overrides: Any):
    """A ``PreferenceConfig`` writing to ``output_dir``: :data:`TRAINING_DEFAULTS` with ``overrides``."""
    from mmpo.training.config import PreferenceConfig

    return PreferenceConfig(**{**TRAINING_DEFAULTS, "output_dir": str(output_dir), **overrides})


def load_tiny(checkpoint: str | Path, perturb: bool = False) -> tuple[Any, Any]:
    """``(model, processor)`` of a saved tiny checkpoint; ``perturb`` adds seeded ``0.02 * N(0, 1)``
    noise to every weight (so that a policy differs from its reference)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    if perturb:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in model.parameters():
                weight.add_(0.02 * torch.randn(weight.shape, generator=generator))
    return model, AutoProcessor.from_pretrained(checkpoint)


# ---------------------------------------------------------------------------------------------
# A local stand-in for a chat-completions endpoint (the MMHal-Bench judge's)

#: What a fake server's ``respond`` returns: the status, the body (a JSON-ready value, or bytes sent
#: as they are) and extra headers.
Reply = tuple[int, Any, dict[str, str]]


class FakeChatServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 (a free port) that answers every GET and POST with
    ``respond(server, request)`` and records each request in :attr:`requests` as ``{"method",
    "path", "auth" (the Authorization header), "body" (parsed JSON, or the raw bytes)}``."""

    def __init__(self, respond: Callable[[FakeChatServer, dict[str, Any]], Reply]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond = respond
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeChatServer

    def _serve(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        request = {"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        self.server.requests.append(request)
        status, payload, headers = self.server.respond(self.server, request)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve  # noqa: N815 (http.server's naming)

    def log_message(self, *args):
        pass


def chat_reply(content: str) -> dict[str, Any]:
    """A chat completion whose one message is ``content``."""
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@contextlib.contextmanager
def fake_chat_server(respond: Callable[[FakeChatServer, dict[str, Any]], Reply],
                     timeout: float = 60) -> Iterator[FakeChatServer]:
    """A :class:`FakeChatServer` served from a daemon thread while inside; shut down on leaving, and
    by a ``timeout``-second timer at the latest (so a hung test cannot keep it running)."""
    server = FakeChatServer(respond)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(timeout, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield server
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
