"""The shared nouns of mmpo: preference records and sentence spans.

Nothing here imports torch or transformers, so every layer can depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: A user prompt: plain text (the image is placed before it), or a conversation in the
#: transformers chat format (``[{"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}]``).
Prompt = str | list

#: An image reference: a path on disk (JSONL files) or an in-memory ``PIL.Image.Image``.
ImageRef = Any

#: What a record's ``image`` holds: one image, or a list of several (in the order of the prompt's
#: image parts), for the families whose processors take several images per prompt.
Images = Any


def image_list(images: Images) -> list[ImageRef]:
    """A record's images as a list: ``[image]`` for one image, the list itself for several."""
    return list(images) if isinstance(images, (list, tuple)) else [images]


def refuse_several_images(records: Any, what: str) -> None:
    """Raise ``ValueError`` naming the first record with several images: ``what`` (a pipeline that
    works on one image per record) cannot use it."""
    for index, record in enumerate(records):
        if isinstance(record.image, (list, tuple)):
            raise ValueError(f"record #{index} (id {record.id!r}) field 'image': {len(record.image)} images; {what} "
                             "works on one image per record (training takes several, the data pipelines do not yet)")


@dataclass
class PreferenceRecord:
    """One preference pair ``(I, x, y_w, y_l)`` plus the optional fields later methods add.

    Attributes:
        image: the image ``I`` the prompt is about (path or PIL image), or a list of several images
            in the order of the prompt's image parts (plain-text prompts take them all before the text).
        prompt: the question/instruction ``x``.
        chosen: the preferred response ``y_w``.
        rejected: the dispreferred response ``y_l``.
        id: a stable identifier; defaults to the record's index in its file.
        rejected_image: AdaViP's vision-rejected image ``I_l`` (chosen text on a doctored image); for a
            record with several images, a list of as many (the rejected image set).
        chosen_sentence_scores: DAMA's per-sentence CLIP scores ``C_w`` of the chosen response.
        rejected_sentence_scores: DAMA's per-sentence CLIP scores ``C_l`` of the rejected response.
        data_alpha: DAMA's offline per-record factor ``alpha_D``.
        weight: multiplies the record's loss (its SFT term's share too); 1 when None (docs/methods.md,
            "Per-record weight and beta scale").
        beta_scale: multiplies the record's beta (after DAMA's ``beta_C``); 1 when None.
        meta: anything else carried along untouched (e.g. the synthetic scene id).
    """

    image: ImageRef
    prompt: Prompt
    chosen: str
    rejected: str
    id: str | None = None
    rejected_image: ImageRef | None = None
    chosen_sentence_scores: list[float] | None = None
    rejected_sentence_scores: list[float] | None = None
    data_alpha: float | None = None
    weight: float | None = None
    beta_scale: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; in-memory images must have been saved to paths first."""
        out = asdict(self)
        for key in ("image", "rejected_image"):
            if out[key] is not None and not all(isinstance(i, str) for i in image_list(out[key])):
                raise TypeError(f"record {self.id!r}: field {key!r} is an in-memory image; save it to a path first")
        return {k: v for k, v in out.items() if v is not None and v != {}}


@dataclass(frozen=True)
class SentenceSpan:
    """One sentence of a response: its character span and its token span (end-exclusive)."""

    text: str
    char_start: int
    char_end: int
    token_start: int = -1
    token_end: int = -1


def prompt_messages(prompt: Prompt, n_images: int = 1) -> list[dict[str, Any]]:
    """The conversation for a prompt: plain text becomes one user turn with its ``n_images`` images
    first; a conversation is returned as it is (its image parts already say where the images go)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]}]
    return prompt
