"""The reference policy ``pi_ref``: a frozen copy, the adapter-off policy, or precomputed log-probs.

All three answer the same question — the response-aligned per-token reference log-probs
``(R, L)`` of a collated batch — so the trainer does not care which one it has.

Precomputed log-probs are one pass over the training records before training, cached on disk
under a fingerprint of the model weights, the records and the encoder settings, and reused by
later runs. TRL refuses this for vision models; it works here because the collator's row
layout is deterministic per record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .. import progress
from ..data.collator import move_batch
from ..forward import DEFAULT_CHUNK, policy_response_logps
from ..io import atomic_writer
from ..logprobs import pad_response_logprobs
from .distributed import frozen_copy, prepare_reference_model, tensor_summary

logger = logging.getLogger(__name__)

ROW_KINDS = ("chosen", "rejected", "vision")


class FrozenCopyReference:
    """A frozen deep copy of the initial policy.

    With an ``accelerator`` the copy is prepared by the run's engine (sharded under FSDP and
    ZeRO-3 like the policy; :func:`mmpo.training.distributed.prepare_reference_model`); without
    one it is a plain copy on the policy's device. ``copy=False`` uses ``model`` itself, for a
    model loaded to be the reference (``reference_model``), which needs no second copy.
    """

    def __init__(self, model: torch.nn.Module, accelerator=None, shard: bool = True, copy: bool = True,
                 head_chunk: int | None = DEFAULT_CHUNK):
        self.head_chunk = head_chunk  # the LM head's chunk (mmpo.forward.policy_response_logps), as the policy's
        if accelerator is None:
            self.model = frozen_copy(model) if copy else model.eval().requires_grad_(False)
        else:
            self.model = prepare_reference_model(model, accelerator, shard=shard, copy=copy)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        return policy_response_logps(self.model, batch, head_chunk=self.head_chunk)[0]


class AdapterReference:
    """The LoRA policy with its adapters switched off (no extra copy of the weights)."""

    def __init__(self, get_model: Callable[[], torch.nn.Module], head_chunk: int | None = DEFAULT_CHUNK):
        self.get_model = get_model
        self.head_chunk = head_chunk

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        model = self.get_model()
        with model.disable_adapter():
            return policy_response_logps(model, batch, head_chunk=self.head_chunk)[0]


class PrecomputedReference:
    """Per-record reference log-probs computed once and looked up by ``record_index``.

    ``table[i]`` maps a row kind (chosen / rejected / vision) to a 1-D tensor of that row's
    response-token log-probs. Under FSDP and DeepSpeed the table is computed by the prepared
    (sharded) policy at its first use: ``pending`` is then the function that computes it from
    that model, and :meth:`ensure` runs it once.
    """

    def __init__(self, table: list[dict[str, torch.Tensor]] | None,
                 pending: Callable[[torch.nn.Module], list[dict[str, torch.Tensor]]] | None = None):
        if table is None and pending is None:
            raise ValueError("a precomputed reference needs its table or the function that computes it")
        self.table, self.pending = table, pending

    def ensure(self, model: torch.nn.Module) -> None:
        """Compute the table with ``model`` (the prepared policy: it is the reference at step 0) if pending."""
        if self.table is None:
            self.table, self.pending = self.pending(model), None

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.table is None:
            raise RuntimeError("the reference table is not computed yet: call ensure(model) first")
        # The collator's host-side copy of the indices: reading the device tensor would be a sync.
        indices = batch.get("record_indices") or batch["record_index"].tolist()
        device = batch["response_length"].device
        n_kinds = batch["response_length"].shape[0] // len(indices)
        rows = []
        for kind in ROW_KINDS[:n_kinds]:
            for i in indices:
                # A record without a vision-rejected image has no vision row of its own; the
                # collator repeated the chosen row there and the loss ignores it.
                rows.append(self.table[i].get(kind, self.table[i]["chosen"]))
        width = batch.get("response_width")
        logps, _ = pad_response_logprobs(rows, width=int(batch["response_length"].max()) if width is None else width)
        return logps.to(device, non_blocking=True)


def record_shares(n_records: int, batch_size: int, rank: int, world: int) -> list[tuple[list[int], int]]:
    """This process's batches of the reference pass: ``(record indices, how many are real)``.

    Process ``rank`` takes records ``rank, rank + world, ...``. Every process runs the same number
    of batches, since under FSDP and ZeRO-3 each forward pass is collective; a process whose
    records ran out repeats its last one (or record 0) in a batch whose results it drops.
    """
    mine = list(range(rank, n_records, world))
    n_batches = math.ceil(math.ceil(n_records / world) / batch_size)
    out = []
    for b in range(n_batches):
        ids = mine[b * batch_size: (b + 1) * batch_size]
        out.append((ids, len(ids)) if ids else ([mine[-1] if mine else 0], 0))
    return out


@torch.no_grad()
def compute_reference_table(model: torch.nn.Module, dataset, collator, batch_size: int,
                            device: torch.device | str = "cpu", *, rank: int = 0, world: int = 1,
                            gather: Callable[[list], list[list]] | None = None,
                            head_chunk: int | None = DEFAULT_CHUNK) -> list[dict[str, torch.Tensor]]:
    """Run the reference model once over every record (no gradient), in dataset order.

    With ``world`` processes each computes its share (:func:`record_shares`) and ``gather``
    (an all-gather of Python objects) gives every process the whole table.
    """
    was_training = model.training
    model.eval()
    table: list[dict[str, torch.Tensor]] = [{} for _ in range(len(dataset))]
    computed: list[tuple[int, str, torch.Tensor]] = []
    try:
        for ids, real in progress.bar(record_shares(len(dataset), batch_size, rank, world), desc="reference log-probs",
                                      unit="batch", disable=rank != 0):
            items = [dataset[i] for i in ids]
            batch = move_batch(collator(items), device)
            logps, mask = policy_response_logps(model, batch, head_chunk=head_chunk)
            lengths = batch["response_length"].tolist()
            B = len(items)
            vision = batch.get("vision_mask")
            for row in range(logps.shape[0]):
                kind, r = ROW_KINDS[row // B], row % B
                if r >= real or (kind == "vision" and not bool(vision[r])):
                    continue
                computed.append((items[r]["index"], kind, logps[row, : lengths[row]].float().cpu()))
    finally:
        model.train(was_training)
    shares = [computed] if world == 1 else gather(computed)
    for share in shares:
        for index, kind, values in share:
            table[index][kind] = values
    return table


def reference_fingerprint(model: torch.nn.Module, records: list, encoder_settings: dict,
                          tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> str:
    """A hash of everything the reference log-probs depend on: weights, records, encoding.

    ``tensors`` replaces ``model.state_dict().items()`` where the weights are not whole on this
    process (ZeRO-3: :func:`mmpo.training.distributed.whole_tensors`).
    """
    h = hashlib.sha256()
    h.update(json.dumps(encoder_settings, sort_keys=True, default=str).encode())
    for name, p in (model.state_dict().items() if tensors is None else tensors):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(tensor_summary(p).encode())
    for r in records:
        h.update(json.dumps([r.prompt, r.chosen, r.rejected], default=str).encode())
        h.update(image_digest(r.image).encode())
        h.update(image_digest(r.rejected_image).encode())
    return h.hexdigest()[:20]


def image_digest(image: Any) -> str:
    """A hash of an image's *content*: the file's bytes for a path, mode, size and pixels for a PIL
    image (so replacing the files behind the same paths invalidates the cache)."""
    if image is None:
        return "none"
    if isinstance(image, (list, tuple)):  # several images: each one's digest, in order
        return hashlib.sha256(" ".join(image_digest(i) for i in image).encode()).hexdigest()
    h = hashlib.sha256()
    if isinstance(image, (str, Path)):
        with open(image, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
    return h.hexdigest()


def processor_settings(processor: Any) -> dict[str, Any] | None:
    """What of the processor changes the rows beyond the encoder's settings: its class, its image
    and video processors' configuration (resolution, Qwen2-VL's ``min_pixels``/``max_pixels``,
    normalisation: a change re-encodes every image) and the tokenizer's vocabulary size."""
    if processor is None:
        return None
    out: dict[str, Any] = {"class": type(processor).__name__}
    for name in ("image_processor", "video_processor"):
        part = getattr(processor, name, None)
        if part is not None and hasattr(part, "to_dict"):
            out[name] = part.to_dict()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        out["vocabulary"] = len(tokenizer)
    return out


def _check_table(table: Any, n_records: int) -> None:
    """Raise unless ``table`` is what ``compute_reference_table`` writes for ``n_records`` records."""
    if not isinstance(table, list) or len(table) != n_records:
        raise ValueError(f"expected a list of {n_records} records' log-probs, got a {type(table).__name__}"
                         + (f" of {len(table)}" if isinstance(table, list) else ""))
    for i, row in enumerate(table):
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row or not all(
                torch.is_tensor(v) and v.dim() == 1 for v in row.values()):
            raise ValueError(f"record {i}: expected a dict of 1-D 'chosen'/'rejected' log-prob tensors")


def encoder_fingerprint_settings(collator) -> dict[str, Any]:
    """What of the collator the reference table depends on (part of the cache key)."""
    return {**collator.encoder.settings(), "vision_rows": getattr(collator, "vision_rows", None),
            # The two row layouts agree to 1e-5, not bit for bit: a table serves its own layout.
            "prefix_sharing": getattr(collator, "prefix_sharing", False),
            **({"max_tokens_per_row": collator.max_tokens_per_row} if getattr(collator, "max_tokens_per_row", None)
               else {}),
            "processor": processor_settings(getattr(collator.encoder, "processor", None))}


def cache_path(cache_dir: str | Path, fingerprint: str) -> Path:
    return Path(cache_dir) / f"reference-{fingerprint}.pt"


def read_table(path: Path, n_records: int) -> list[dict[str, torch.Tensor]] | None:
    """The cached table at ``path``, or None if there is none or it is unreadable (logged)."""
    if not path.exists():
        return None
    try:
        table = torch.load(path, weights_only=True)  # tensors in lists and dicts: no pickled code
        _check_table(table, n_records)
        return table
    except Exception as error:  # truncated or foreign file: recompute rather than trust it
        logger.warning("reference cache %s is unreadable (%s: %s); computing it again",
                       path, type(error).__name__, error)
        return None


def write_table(path: Path, table: list[dict[str, torch.Tensor]]) -> None:
    with atomic_writer(path) as file:  # a kill leaves the old cache or none, never half a table
        torch.save(table, file)


def load_or_compute_reference(model, dataset, collator, batch_size: int, cache_dir: str | Path,
                              device="cpu", main_process_first=None) -> tuple[PrecomputedReference, Path]:
    """The cached table if its fingerprint matches, else computed now and saved atomically (one process)."""
    path = cache_path(cache_dir, reference_fingerprint(model, dataset.records, encoder_fingerprint_settings(collator)))
    ctx = main_process_first() if main_process_first is not None else contextlib.nullcontext()
    with ctx:
        table = read_table(path, len(dataset.records))
        if table is None:
            table = compute_reference_table(model, dataset, collator, batch_size, device)
            write_table(path, table)
    return PrecomputedReference(table), path
