"""Preflight: every record through the training encoder once, before the first step.

``load_records`` checks what can be checked without a model. What depends on the processor is
checked here, with the *same* code the collator runs during training, so a record that would
crash step 500 is found before step 1, named by index, id and field:

* the prompt with its image tokens does not fit the token budget (``max_length``, bounded by the
  model's maximum positions; responses longer than the room left are truncated, as in training);
* a field a switched-on method needs is missing or does not fit (``data_alpha`` for DAMA's
  data-aware beta, ``chosen_sentence_scores`` with one score per sentence for ASPO);
* a prompt or response holds one of the processor's own placeholder tokens (``<|image_pad|>``,
  ``<start_of_image>``, ``<fake_token_around_image>``, ...), which the processor would expand.

A bad record raises ``RecordValidationError`` with ``on_error="raise"``; with ``"skip"`` it is
left out and reported, as ``load_records`` does, and when no record is left the preflight raises
``NoValidRecordsError`` naming the file, the count and the first errors (not an empty data set that
fails later as ``num_samples=0``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .. import progress
from ..io import ImageTooLargeError, load_image
from ..prompting import tokenizer_of
from ..types import PreferenceRecord, image_list
from .collator import PreferenceCollator, PreferenceDataset, SequenceTooLongError
from .records import LoadResult, RecordError, RecordValidationError, no_valid_records

logger = logging.getLogger(__name__)

_FIELD_IN_MESSAGE = re.compile(r"field '(\w+)' (is )?")
_MEDIA_WORDS = ("image", "video", "vision")


def placeholder_tokens(processor: Any) -> list[str]:
    """The processor's image/video placeholder strings: every ``*_token`` string attribute of the
    processor that the tokenizer knows as a token, and every added token naming image/video/vision."""
    tokenizer = tokenizer_of(processor)
    added = set(getattr(tokenizer, "get_added_vocab", dict)()) | set(getattr(tokenizer, "all_special_tokens", []))
    ordinary = {getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    found = set()
    for name in dir(processor):
        if name.endswith("_token") and not name.startswith("_"):
            value = getattr(processor, name, None)
            if isinstance(value, str) and value and value in added:
                found.add(value)
    found |= {token for token in added if any(word in token.lower() for word in _MEDIA_WORDS)}
    return sorted(found - ordinary)


def model_max_positions(model: Any) -> int | None:
    """The text model's ``max_position_embeddings`` (None when the config does not say)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def bound_max_length(collator: PreferenceCollator, max_positions: int | None) -> None:
    """Cap the encoder's token budget at the model's maximum positions (a response of 100k characters
    with no ``max_length`` would otherwise be encoded whole and need gigabytes)."""
    encoder = collator.encoder
    if max_positions is None or (encoder.max_length is not None and encoder.max_length <= max_positions):
        return
    if encoder.max_length is not None:
        logger.warning("max_length=%d exceeds the model's %d positions; using %d",
                       encoder.max_length, max_positions, max_positions)
    encoder.max_length = max_positions


def preflight(records: list[PreferenceRecord], collator: PreferenceCollator, *, max_positions: int | None = None,
              on_error: str = "raise", what: str = "training records",
              origins: list[dict[str, Any]] | None = None) -> LoadResult:
    """Encode every record as training will, and report the ones that cannot be trained.

    Args:
        records: the loaded records (``PreferenceDataset.records``).
        collator: the collator training uses (its encoder, switches and splitter decide the checks).
        max_positions: the model's maximum positions; the encoder's budget is capped at it.
        on_error: ``"raise"`` (``RecordValidationError`` at the first bad record) or ``"skip"``.
        what: how the progress bar names the records.
        origins: where each record was read from (:attr:`mmpo.data.records.LoadResult.origins`), so an
            error names its index in the source, its file and row; None: its position in ``records``.

    Returns:
        a ``LoadResult`` of the records that encode (source order; with their ``origins`` when given)
        and one error per record that does not.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    bound_max_length(collator, max_positions)
    placeholders = placeholder_tokens(collator.encoder.processor)
    dataset = PreferenceDataset(records)
    kept, kept_origins, errors = [], [], []
    truncated = 0  # records with a response cut to the token budget
    for index in progress.bar(range(len(records)), desc=f"preflight: {what}", leave=False):
        record = records[index]
        problem = _placeholder_problem(record, placeholders)
        if problem is None:
            rows_cut = collator.encoder.truncated
            try:
                collator([dataset[index]])
                truncated += collator.encoder.truncated > rows_cut
            except OSError as error:  # a truncated JPEG passes load_records' verify(); a file deleted since
                problem = (_unreadable_image(record), f"cannot decode image: {error}")
            except ImageTooLargeError as error:  # a file replaced since load_records checked it
                problem = (_unreadable_image(record), str(error))
            except SequenceTooLongError as error:
                problem = ("prompt", _without_name(str(error)))
            except ValueError as error:
                message = _without_name(str(error))
                field = _FIELD_IN_MESSAGE.match(message)
                problem = (field.group(1), message[field.end():]) if field else (None, message)
        origin = origins[index] if origins is not None else {"index": index}
        if problem is None:
            kept.append(record)
            kept_origins.append(origin)
            continue
        error = RecordError(origin["index"], record.id, *problem, **{k: v for k, v in origin.items() if k != "index"})
        if on_error == "raise":
            raise RecordValidationError(error)
        errors.append(error)
    result = LoadResult(kept, errors, origins=kept_origins if origins is not None else [])
    if errors:
        logger.warning("preflight of %s: %s", what, result.summary())
    if records and not kept:
        files = sorted({origin["file"] for origin in origins or [] if origin.get("file")})
        source = f" ({files[0] if len(files) == 1 else f'{len(files)} files: {files[0]}, ...'})" if files else ""
        raise no_valid_records(f"preflight: none of the {len(records)} {what}{source} can be trained", errors)
    if truncated:
        logger.warning("preflight of %s: %d of %d records have a response longer than the token budget of %d "
                       "(max_length, capped at the model's positions); training sees it truncated",
                       what, truncated, len(kept), collator.encoder.max_length)
    return result


def _unreadable_image(record: PreferenceRecord) -> str:
    """Which of the record's image fields does not decode (``"image"`` when both do, or neither)."""
    try:
        for image in image_list(record.image):
            load_image(image)
    except Exception:
        return "image"
    return "rejected_image" if record.rejected_image is not None else "image"


def _placeholder_problem(record: PreferenceRecord, placeholders: list[str]) -> tuple[str, str] | None:
    texts = {"chosen": record.chosen, "rejected": record.rejected}
    if isinstance(record.prompt, str):
        texts["prompt"] = record.prompt
    else:
        texts["prompt"] = " ".join(
            message["content"] if isinstance(message["content"], str)
            else " ".join(part.get("text", "") for part in message["content"] if isinstance(part, dict))
            for message in record.prompt)
    for field, text in texts.items():
        for token in placeholders:
            if token in text:
                return field, (f"contains the processor's placeholder token {token!r}; mmpo places the image "
                               "itself and the processor would expand the token into image features")
    return None


def _without_name(message: str) -> str:
    """The collator's message without its leading ``record #i (id ...):`` (RecordError adds it)."""
    return re.sub(r"^record #\d+( \(id .*?\))?: ", "", message)
