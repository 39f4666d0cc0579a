"""SeVa noisy-image preference pairs: the model's answer on the clean image is chosen, its answer
on a diffusion-noised copy of the image is rejected (the data ASPO trains on).

SeVa (Zhu et al., "Self-Supervised Visual Preference Alignment", 2024), as used by ASPO (see
``docs/methods.md``, ASPO section, last paragraph):

1. corrupt the image with forward diffusion, ``k = 500`` of ``T = 1000`` DDPM steps (``DiffusionNoise``);
2. let the model being trained answer the same instruction on the clean image (chosen, ``y_w``)
   and on the noisy image (rejected, ``y_l``), greedily;
3. drop pairs whose two answers are identical; keep the rest as ``PreferenceRecord``s.

``build_noisy_pairs`` does steps 2-3 in batches and writes JSONL that ``load_records`` reads. It is
resumable: a run killed at any point (even mid-line) is continued by calling it again with the same
arguments; items already written or dropped are skipped, and no record is ever written twice or in part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from mmpo import progress
from mmpo.data.items import check_items
from mmpo.generation import generate_responses
from mmpo.io import ResumeJournal, image_key, image_reference, load_image
from mmpo.types import PreferenceRecord

logger = logging.getLogger(__name__)

#: ``meta["source"]`` of every record this module writes.
SOURCE = "seva-noisy-image"
#: Outcomes of an item, as listed in the progress file.
WRITTEN, DROPPED_IDENTICAL, DROPPED_EMPTY = "written", "dropped:identical", "dropped:empty"

Schedule = Literal["linear", "cosine", "sigmoid"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "sigmoid")


# ---------------------------------------------------------------------------------------------
# Forward diffusion noise.


def alphas_cumprod(schedule: Schedule = "linear", num_steps: int = 1000, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> np.ndarray:
    """``abar_k = prod_{s=1..k} (1 - beta_s)`` for ``k = 0..T``, shape ``(T + 1,)``, ``abar_0 = 1``.

    Schedules of the betas ``beta_1..beta_T``:

    * ``"linear"`` — DDPM (Ho et al. 2020, section 4): ``beta`` evenly spaced from ``beta_start``
      to ``beta_end`` (1e-4 .. 0.02 over T = 1000);
    * ``"cosine"`` — improved DDPM (Nichol & Dhariwal 2021, Eq. 17):
      ``abar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2)``, ``s = 0.008``,
      with each ``beta_t = 1 - abar(t) / abar(t - 1)`` clipped to 0.999 as in the paper;
    * ``"sigmoid"`` — the schedule of the VCD/SeVa reference code: ``beta = sigmoid(linspace(-6, 6, T))
      * (5e-3 - 1e-5) + 1e-5`` (``beta_start``/``beta_end`` unused). It is far milder: at k = 500,
      abar is about 0.74 against 0.079 for ``"linear"``. That code indexes steps from 0, so its
      ``noise_step = t`` is ``k = t + 1`` here.

    ``abar`` is strictly decreasing in ``k`` for every schedule (every ``beta > 0``).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if schedule == "linear":
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)  # (T,)
    elif schedule == "cosine":
        s = 0.008
        t = np.arange(num_steps + 1, dtype=np.float64) / num_steps  # (T + 1,)
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)  # (T,)
    else:
        betas = 1 / (1 + np.exp(-np.linspace(-6, 6, num_steps, dtype=np.float64))) * (5e-3 - 1e-5) + 1e-5
    return np.concatenate([[1.0], np.cumprod(1 - betas)])  # (T + 1,)


def diffuse(x0: np.ndarray, abar: float, eps: np.ndarray) -> np.ndarray:
    """The DDPM forward marginal ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` (Ho et al. 2020,
    Eq. 4), elementwise on arrays of one shape; ``x0`` is scaled to ``[-1, 1]``, ``eps ~ N(0, I)``."""
    return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps


@dataclasses.dataclass(frozen=True)
class DiffusionNoise:
    """Forward-diffusion (DDPM) noise: ``q(x_k | x_0) = N(sqrt(abar_k) x_0, (1 - abar_k) I)``.

    An image is scaled to ``x_0 = pixel / 127.5 - 1`` in ``[-1, 1]``, sampled as
    ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` with ``eps ~ N(0, I)`` (one draw per pixel and
    channel), mapped back with ``round((x_k + 1) * 127.5)`` and clipped to ``[0, 255]``. At ``k = 0``
    the image comes back unchanged.

    The noise ``eps`` is seeded per image from ``(seed, key)``, where the key is a hash of the image's
    pixels (:func:`mmpo.io.image_key`) unless one is given: the same image always gets the same noise, in any order, batch or
    run, which makes a construction run reproducible and resumable.

    Attributes:
        step: ``k``, the number of forward steps (0 = no noise, ``num_steps`` = almost pure noise).
            SeVa/ASPO: 500.
        num_steps: ``T``, the length of the schedule. SeVa/ASPO: 1000.
        schedule: ``"linear"`` (DDPM), ``"cosine"`` (improved DDPM) or ``"sigmoid"`` (the VCD/SeVa
            code); see ``alphas_cumprod``.
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        seed: global seed, combined with each image's key.
    """

    step: int = 500
    num_steps: int = 1000
    schedule: Schedule = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.step <= self.num_steps:
            raise ValueError(f"need 0 <= step <= num_steps, got step={self.step}, num_steps={self.num_steps}")
        alphas_cumprod(self.schedule, self.num_steps, self.beta_start, self.beta_end)  # validates the rest

    def alphas_cumprod(self) -> np.ndarray:
        """``abar_k`` for ``k = 0..T``, shape ``(T + 1,)``."""
        return alphas_cumprod(self.schedule, self.num_steps, self.beta_start, self.beta_end)

    @property
    def abar(self) -> float:
        """``abar_k`` at this ``step``."""
        return float(self.alphas_cumprod()[self.step])

    def rng(self, key: str) -> np.random.Generator:
        """The generator for the image with this key: seeded by a hash of ``(seed, key)``."""
        digest = hashlib.sha256(f"mmpo-diffusion-noise:{self.seed}:{key}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "little"))

    def __call__(self, image: Image.Image, key: str | None = None) -> Image.Image:
        """The noisy copy of ``image`` (made RGB by :func:`mmpo.io.load_image`); ``key`` defaults to
        ``image_key(image)``."""
        rgb = load_image(image)
        x0 = np.asarray(rgb, dtype=np.float64) / 127.5 - 1.0  # (H, W, 3) in [-1, 1]
        eps = self.rng(image_key(rgb) if key is None else key).standard_normal(x0.shape)
        xk = diffuse(x0, self.abar, eps)
        return Image.fromarray(np.clip(np.rint((xk + 1.0) * 127.5), 0, 255).astype(np.uint8))

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-ready values (stored in each record's ``meta``)."""
        out = {"noise_step": self.step, "noise_steps_total": self.num_steps, "noise_schedule": self.schedule,
               "noise_seed": self.seed}
        if self.schedule == "linear":
            out.update(noise_beta_start=self.beta_start, noise_beta_end=self.beta_end)
        return out


# ---------------------------------------------------------------------------------------------
# The pipeline.


@dataclasses.dataclass
class NoisyPairsReport:
    """What one ``build_noisy_pairs`` call did.

    Attributes:
        out_path: the JSONL file of records.
        total: items given.
        written: records written by this call.
        dropped: items dropped by this call, by reason (``"identical"``, ``"empty"``).
        skipped_done: items skipped because an earlier run had already written or dropped them.
        repaired_lines: truncated last lines (from a killed run) removed before appending.
    """

    out_path: Path
    total: int = 0
    written: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: {"identical": 0, "empty": 0})
    skipped_done: int = 0
    repaired_lines: int = 0

    def summary(self) -> str:
        """``"noisy pairs -> out.jsonl: 5 of 8 items written; dropped 2 (identical 2, empty 0); ..."``"""
        n_dropped = sum(self.dropped.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.dropped.items())
        text = (f"noisy pairs -> {self.out_path}: {self.written} of {self.total} items written; "
                f"dropped {n_dropped} ({reasons}); skipped {self.skipped_done} done by an earlier run")
        if self.repaired_lines:
            text += f"; removed {self.repaired_lines} truncated line(s) left by a killed run"
        return text


def build_noisy_pairs(
    model: Any,
    processor: Any,
    items: Iterable[Sequence[Any]],
    out_path: str | os.PathLike,
    *,
    noise: DiffusionNoise | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    image_dir: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
) -> NoisyPairsReport:
    """Build SeVa preference pairs with ``model`` and append them to ``out_path`` (JSONL).

    For each item the model answers the instruction greedily on the clean image (``chosen``) and on
    ``noise(image)`` (``rejected``); both answers of a batch come from one ``generate_responses`` call
    of ``2 * batch_size`` requests. A pair is dropped when an answer is empty (reason ``"empty"``) or
    both are equal after whitespace normalisation (``"identical"``); the rest become
    ``PreferenceRecord``s with ``image`` = the clean image's path and ``meta`` = ``{"source":
    "seva-noisy-image", "noise_step", "noise_steps_total", "noise_schedule", "noise_seed", ...}``.

    Resuming (:class:`mmpo.io.ResumeJournal`): records are appended one whole line per ``write`` call
    and fsynced per batch; then each processed item id and its outcome (``written``,
    ``dropped:identical``, ``dropped:empty``) is appended to ``out_path + ".progress.jsonl"``, whose
    first line holds the settings. Calling
    again with the same arguments skips every item already written (found in the output itself) or
    dropped (found in the progress file), first cutting off a truncated last line of either file.
    A resume with other noise settings or ``max_new_tokens`` raises ``ValueError``; an existing
    output without a progress file raises ``FileExistsError`` (it was not written by this function).

    Images: an item whose image file does not exist raises ``FileNotFoundError`` before anything
    is generated; one that exists but does not decode raises ``ValueError`` when its batch comes.
    Both messages name the item (index and id) and the path; fix or drop the item and resume.

    Args:
        model: a ``generate``-capable VLM, ideally the policy about to be trained (SeVa's premise).
        processor: its processor, with a chat template.
        items: ``(id, image, instruction)`` triples, or ``(id, image, instruction, meta)`` with a dict
            merged into that record's ``meta``. ``image`` is a path or a ``PIL.Image``; ids must be
            unique and stable across runs (they are what a resume matches on).
        out_path: the JSONL file to append to (created with its directory if missing).
        noise: the corruption; default ``DiffusionNoise()`` (linear schedule, k = 500 of T = 1000).
        batch_size: items per batch (one generate call of ``2 * batch_size`` requests, one fsync).
        max_new_tokens: answer length limit.
        image_dir: where in-memory (PIL) images are saved as PNG, named by content hash; default
            ``images/`` next to ``out_path``. Paths inside ``out_path``'s directory are stored relative
            to it (``load_records`` resolves them), others absolute.
        meta: extra ``meta`` for every record (e.g. ``{"model": "ckpt/"}``).

    Returns:
        the counts of this call (``NoisyPairsReport.summary()`` for one line).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    noise = DiffusionNoise() if noise is None else noise
    out_path = Path(os.path.abspath(out_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = out_path.parent / "images" if image_dir is None else Path(os.path.abspath(image_dir))
    checked = check_items(items)
    record_meta = {"source": SOURCE, **noise.describe(), **(meta or {})}
    settings = {**noise.describe(), "max_new_tokens": max_new_tokens}

    report = NoisyPairsReport(out_path=out_path, total=len(checked))
    journal = ResumeJournal.open(out_path, settings, writer="build_noisy_pairs", outcome_of=lambda row: WRITTEN,
                                 line_outcomes={WRITTEN}, what="items")
    report.repaired_lines = journal.repaired_lines
    pending = [item for item in checked if item.id not in journal.done]
    report.skipped_done = len(checked) - len(pending)
    if report.skipped_done or report.repaired_lines:
        logger.info("resuming %s: %d of %d items done before", out_path, report.skipped_done, len(checked))

    with journal, progress.bar(total=len(checked), initial=report.skipped_done, desc="noisy pairs") as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            clean = [item.load_image() for item in batch]
            noisy = [noise(image) for image in clean]
            prompts = [item.prompt for item in batch]
            with progress.bars(False):  # the items' bar above counts them
                answers = generate_responses(model, processor, clean + noisy, prompts + prompts,
                                             batch_size=2 * len(batch),
                                             max_new_tokens=max_new_tokens)  # (2B,): B clean answers, then B noisy
            chosen, rejected = answers[:len(batch)], answers[len(batch):]
            rows, outcomes = [], []
            for item, clean_image, y_w, y_l in zip(batch, clean, chosen, rejected, strict=True):
                outcome = _outcome(y_w, y_l)
                if outcome == WRITTEN:
                    # a file is referenced as it is; an in-memory image is saved as the RGB the model saw
                    image = clean_image if isinstance(item.image, Image.Image) else item.image
                    record = PreferenceRecord(
                        image=image_reference(image, out_path.parent, image_dir),
                        prompt=item.prompt, chosen=y_w, rejected=y_l, id=item.id,
                        meta={**record_meta, **item.meta},
                    )
                    rows.append(record.to_dict())
                    report.written += 1
                else:
                    report.dropped[outcome.split(":", 1)[1]] += 1
                outcomes.append((item.id, outcome))
            # records first: a kill between the two leaves records the progress file lacks, which
            # the next run reads back from the output itself (never a duplicate, never a loss)
            journal.append(rows, outcomes)
            bar.update(len(batch))
    return report


def _outcome(chosen: str, rejected: str) -> str:
    chosen, rejected = " ".join(chosen.split()), " ".join(rejected.split())
    if not chosen or not rejected:
        return DROPPED_EMPTY
    return DROPPED_IDENTICAL if chosen == rejected else WRITTEN
