"""Image-text similarity with CLIP, for ASPO's sentence scores and DAMA/AdaViP's CLIP scores.

ASPO ("ASPO: Adaptive Sentence-Level Preference Optimization for Fine-Grained Multimodal Reasoning",
arXiv:2505.19100, Eq. 6) scores each sentence ``S_i = cos(CLIP_img(I), CLIP_txt(s_i))``; DAMA ("DAMA:
Data- and Model-aware Alignment of Multi-modal LLMs", arXiv:2502.01943, section 3.1) and AdaViP
("AdaViP: Aligning Multi-modal LLMs via Adaptive Vision-enhanced Preference Optimization",
arXiv:2504.15619, section 3.2) score sub-sentences the same way. :class:`CLIPScorer` is the real backend: a ``transformers.CLIPModel``
loaded from a local checkpoint directory (an OpenAI CLIP on disk, or the synthetic world's tiny
CLIP from :mod:`mmpo.toyworld.clip`), with a disk cache so a dataset is embedded once.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from mmpo.io import load_image

__all__ = ["CLIPScorer", "EmbeddingCache", "ImageTextScorer"]


@runtime_checkable
class ImageTextScorer(Protocol):
    """Cosine similarity between images and texts."""

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """``(N,)`` similarity of ``images[i]`` and ``texts[i]``; both lists have length ``N``."""
        ...

    def score_matrix(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        """``(N_images, N_texts)`` similarity of every image with every text."""
        ...


class EmbeddingCache:
    """Embedding vectors on disk, in one SQLite file, keyed by a hex digest.

    Safe across processes and threads: every write is one SQLite transaction (atomic; readers
    never see half a vector), concurrent writers wait on SQLite's lock (``timeout``), and a
    key written twice keeps its first vector (``INSERT OR IGNORE``; equal keys mean equal inputs).
    Keep the file on a local disk: SQLite's locking is unreliable on network file systems.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._local = threading.local()
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        # one connection per process and thread: SQLite connections must not cross a fork
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():
            con = sqlite3.connect(self.path, timeout=self.timeout)
            con.execute("PRAGMA journal_mode=WAL")
            self._local.con, self._local.pid = con, os.getpid()
        return con

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors (float32) of those ``keys`` that are present."""
        found: dict[str, np.ndarray] = {}
        keys = list(dict.fromkeys(keys))
        con = self._connect()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in con.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors (as float32) in one transaction."""
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        with self._connect() as con:  # commits on success, rolls back on error
            con.executemany("INSERT OR IGNORE INTO embeddings (key, vector) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]


class CLIPScorer:
    """:class:`ImageTextScorer` backed by ``transformers.CLIPModel`` from a local checkpoint.

    Embeddings are the projected CLIP features (``get_*_features(...).pooler_output``),
    L2-normalised; a score is their dot product, i.e. the cosine similarity (no logit scale).
    Inference is batched and runs under ``torch.no_grad()``.

    Long texts: a text with more tokens than the text model's ``max_position_embeddings`` (77 for
    OpenAI CLIP; special tokens included) is cut at whitespace into consecutive, non-overlapping
    word windows that fit, each window is embedded, and the text's embedding is the mean of the
    normalised window embeddings, normalised again. Word lengths are counted by tokenizing words
    one by one; a window that still overflows (one huge word) is truncated.

    Cache: with ``cache_dir``, image and text embeddings are stored in
    ``cache_dir/clip-embeddings.sqlite`` (:class:`EmbeddingCache`), keyed by the sha256 of the
    model fingerprint plus the image's decoded RGB pixels (so a path and the same image in
    memory share an entry) or plus the text. Scores are computed from cached embeddings, so any
    (image, text) pairing is scored without running the model again. Within one call repeated
    images and texts are embedded once even without a cache.

    Args:
        path: local checkpoint directory (``CLIPModel`` weights + processor and tokenizer files).
        device: ``"cpu"``, ``"cuda"``, ...; defaults to CUDA when available.
        batch_size: images or text windows per forward pass.
        cache_dir: directory of the embedding cache; ``None`` disables it.
        fingerprint: identifies the model in cache keys; by default a sha256 of the model config,
            the image processor and tokenizer settings, and every parameter's bytes (computed
            once, on first use of the cache).
        dtype: optional weights dtype (e.g. ``torch.float16`` on GPU); scores are float32.
    """

    def __init__(self, path: str | Path, *, device: str | None = None, batch_size: int = 64,
                 cache_dir: str | Path | None = None, fingerprint: str | None = None,
                 dtype: torch.dtype | None = None):
        from transformers import AutoProcessor, CLIPModel

        from mmpo.hub import load_model, loading, pretrained_kwargs

        self.path = Path(path)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        kwargs = {"dtype": dtype} if dtype is not None else {}
        local = pretrained_kwargs(self.path, what="CLIP model")  # local directory only, unless MMPO_ALLOW_DOWNLOAD=1
        self.model = load_model(CLIPModel, self.path, "CLIP model", **kwargs, **local).to(self.device).eval()
        with loading(self.path, "CLIP processor"):
            processor = AutoProcessor.from_pretrained(self.path, **local)
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.batch_size = batch_size
        self.cache = EmbeddingCache(Path(cache_dir) / "clip-embeddings.sqlite") if cache_dir is not None else None
        self._fingerprint = fingerprint
        self._n_special = len(self.tokenizer("")["input_ids"])

    @property
    def logit_scale(self) -> float:
        """CLIP's logit scale ``logit_scale.exp()`` (100 for OpenAI CLIP): the model's logits, the
        scores of CLIP used as a classifier, are the cosines times this."""
        return float(self.model.logit_scale.detach().exp().item())

    # ---- scores --------------------------------------------------------------------------

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(texts):
            raise ValueError(f"score() pairs images with texts: got {len(images)} images and {len(texts)} texts")
        if not texts:
            return torch.zeros(0)
        return (self.image_embeddings(images) * self.text_embeddings(texts)).sum(dim=-1)  # (N,)

    def score_matrix(self, images: Sequence[Any], texts: Sequence[str]) -> torch.Tensor:
        return self.image_embeddings(images) @ self.text_embeddings(texts).T  # (N_i, N_t)

    # ---- embeddings ----------------------------------------------------------------------

    def image_embeddings(self, images: Sequence[Any]) -> torch.Tensor:
        """``(N, D)`` unit-norm image embeddings; images are PIL images or paths."""
        vectors: dict[str, np.ndarray] = {}
        keys: list[str] = []
        for chunk in _chunks(list(images), self.batch_size):
            loaded = [load_image(im) for im in chunk]  # the one loader of every model input
            chunk_keys = [self._image_key(im) for im in loaded]
            keys += chunk_keys
            todo = self._lookup(chunk_keys, vectors)
            if todo:
                firsts = {k: im for k, im in zip(chunk_keys, loaded, strict=True) if k in todo}
                pixels = self.image_processor(images=list(firsts.values()), return_tensors="pt")["pixel_values"]
                with torch.no_grad():
                    feats = self.model.get_image_features(
                        pixel_values=pixels.to(self.device, self.model.dtype)).pooler_output  # (n, D)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
                self._store(dict(zip(firsts, feats, strict=True)), vectors)
        return self._stack(keys, vectors)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(M, D)`` unit-norm text embeddings (long texts: mean over word windows)."""
        vectors: dict[str, np.ndarray] = {}
        keys = [self._text_key(t) for t in texts]
        todo = self._lookup(keys, vectors)
        if todo:
            firsts = {k: t for k, t in zip(keys, texts, strict=True) if k in todo}
            windows: list[str] = []
            owner: list[int] = []  # (W,) index of each window's text in `firsts`
            for i, text in enumerate(firsts.values()):
                for window in self.text_windows(text):
                    windows.append(window)
                    owner.append(i)
            feats = torch.cat([self._embed_windows(chunk) for chunk in _chunks(windows, self.batch_size)])  # (W, D)
            sums = torch.zeros(len(firsts), feats.shape[1]).index_add_(0, torch.tensor(owner), feats)  # (M', D)
            means = torch.nn.functional.normalize(sums, dim=-1).numpy()  # mean direction of the windows
            self._store(dict(zip(firsts, means, strict=True)), vectors)
        return self._stack(keys, vectors)

    def text_windows(self, text: str) -> list[str]:
        """``[text]`` when it fits the text model, else consecutive word windows that fit."""
        if len(self.tokenizer(text)["input_ids"]) <= self.max_text_tokens:
            return [text]
        words = text.split()
        lengths = [len(ids) for ids in self.tokenizer(words, add_special_tokens=False)["input_ids"]]
        budget = self.max_text_tokens - self._n_special
        windows: list[str] = []
        current: list[str] = []
        used = 0
        for word, n in zip(words, lengths, strict=True):
            if current and used + n > budget:
                windows.append(" ".join(current))
                current, used = [], 0
            current.append(word)
            used += n
        if current:
            windows.append(" ".join(current))
        return windows

    def _embed_windows(self, windows: list[str]) -> torch.Tensor:
        enc = self.tokenizer(windows, padding=True, truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt")
        with torch.no_grad():
            feats = self.model.get_text_features(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device)).pooler_output  # (W, D)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    # ---- cache plumbing --------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """Identifies the model and its preprocessing in cache keys (see the class docstring)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(self.model.config.to_json_string().encode())
            h.update(self.image_processor.to_json_string().encode())
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            h.update(backend.to_str().encode() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items())).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _image_key(self, image: Image.Image) -> str:
        h = hashlib.sha256(f"{self._key_prefix()}\0image\0{image.size}\0".encode())
        h.update(image.tobytes())
        return h.hexdigest()

    def _text_key(self, text: str) -> str:
        return hashlib.sha256(f"{self._key_prefix()}\0text\0{text}".encode()).hexdigest()

    def _key_prefix(self) -> str:
        # without a cache, keys only deduplicate within one call: skip the fingerprint's cost
        return self.fingerprint if self.cache is not None else ""

    def _lookup(self, keys: list[str], vectors: dict[str, np.ndarray]) -> set[str]:
        """Fill ``vectors`` from the cache; return the keys still to compute."""
        todo = {k for k in keys if k not in vectors}
        if self.cache is not None and todo:
            vectors.update(self.cache.get_many(sorted(todo)))
            todo = {k for k in todo if k not in vectors}
        return todo

    def _store(self, new: dict[str, np.ndarray], vectors: dict[str, np.ndarray]) -> None:
        vectors.update(new)
        if self.cache is not None:
            self.cache.put_many(new)

    def _stack(self, keys: list[str], vectors: dict[str, np.ndarray]) -> torch.Tensor:
        if not keys:
            return torch.zeros(0, self.model.config.projection_dim)
        return torch.from_numpy(np.stack([vectors[k] for k in keys]))  # (N, D)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
