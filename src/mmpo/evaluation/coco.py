"""COCO ground truth as the CHAIR and Object HalBench references read it: each image's instance
category names, reference captions and file name, from ``instances_*.json`` / ``captions_*.json``
(:func:`load_coco_ground_truth`); :mod:`mmpo.evaluation.chair` scores against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpo.evaluation.common import read_records


@dataclass(frozen=True)
class CocoGroundTruth:
    """What the COCO files say about each image, before any caption is read.

    ``instances``: the category *names* of each image's instance annotations; ``captions``: its
    reference captions, in file order; ``file_names``: from the instances files' ``images``;
    ``categories``: the category names in id order. The scorers turn this into per-image category
    sets with their own tables (:func:`mmpo.evaluation.chair.image_ground_truth`).
    """

    instances: dict[int, frozenset[str]]
    captions: dict[int, tuple[str, ...]]
    file_names: dict[int, str]
    categories: tuple[str, ...]

    def image_id(self, key: Any) -> Any:
        """The image id ``key`` stands for: itself when it is known, a known id written as digits,
        or the id of a listed file name; otherwise ``key`` unchanged (an image without ground truth)."""
        if isinstance(key, int) or key in self.instances or key in self.captions or key in self.file_names:
            return key
        text = str(key)
        if text.strip().isdigit():
            return int(text)
        return self._ids_by_name().get(text, key)

    def _ids_by_name(self) -> dict[str, int]:
        cached = self.__dict__.get("_by_name")
        if cached is None:
            cached = {name: i for i, name in self.file_names.items()}
            object.__setattr__(self, "_by_name", cached)
        return cached

    def known(self, image_id: Any) -> bool:
        """Whether any annotation file lists ``image_id``."""
        return image_id in self.instances or image_id in self.captions or image_id in self.file_names


def _as_paths(paths: str | Path | Iterable[str | Path] | None) -> list[Path]:
    if paths is None:
        return []
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def _annotation_files(annotations: str | Path | Iterable[str | Path],
                      captions: str | Path | Iterable[str | Path] | None) -> tuple[list[Path], list[Path]]:
    """Instances and captions files: a folder gives its ``instances_{val,train}2014.json`` and
    ``captions_{val,train}2014.json`` (or those of its ``annotations/`` sub-folder)."""
    given = _as_paths(annotations)
    if len(given) == 1 and given[0].is_dir():
        folder = given[0]
        if not any(folder.glob("instances_*.json")) and (folder / "annotations").is_dir():
            folder = folder / "annotations"
        instances = [folder / f"instances_{s}2014.json" for s in ("val", "train")]
        instances = [p for p in instances if p.exists()] or sorted(folder.glob("instances_*.json"))
        if not instances:
            raise FileNotFoundError(f"{folder}: no instances_*.json file")
        if captions is None:
            found = [folder / f"captions_{s}2014.json" for s in ("val", "train")]
            captions = [p for p in found if p.exists()] or sorted(folder.glob("captions_*.json"))
        return instances, _as_paths(captions)
    return given, _as_paths(captions)


def _coco_file(path: Path, keys: Iterable[str], what: str) -> dict[str, Any]:
    data = read_records(path, what)
    if len(data) != 1 or not isinstance(data[0], Mapping):
        raise ValueError(f"{what} file {path}: expected one JSON object")
    data = data[0]
    for key in keys:
        if key not in data:
            raise ValueError(f"{what} file {path}: no {key!r} field; it has {sorted(data)}")
    return data


def load_coco_ground_truth(annotations: str | Path | Iterable[str | Path],
                           captions: str | Path | Iterable[str | Path] | None = None, *,
                           image_ids: Iterable[Any] | None = None) -> CocoGroundTruth:
    """Read COCO ``instances_*.json`` and ``captions_*.json`` files as the references do.

    Args:
        annotations: a folder holding ``instances_{val,train}2014.json`` and (optionally)
            ``captions_{val,train}2014.json`` — LisaAnne's ``--coco_path`` layout — or one or more
            instances files.
        captions: captions files; with a folder, ``None`` means the folder's captions files
            (pass ``()`` for ground truth from instances only).
        image_ids: keep only these images (saves memory on the full COCO files; the scorers use
            only the images that have a response anyway).

    Category names come from the instances files' ``categories`` (a later file wins on a shared
    id, so ``instances_train2014.json``'s names win, as in the references); annotations of every
    file count. Errors name the file and the missing field.
    """
    instance_files, caption_files = _annotation_files(annotations, captions)
    keep = None if image_ids is None else set(image_ids) | {int(i) for i in image_ids if str(i).isdigit()}
    names: dict[int, str] = {}
    files = [(path, _coco_file(path, ("annotations", "categories"), "COCO instances")) for path in instance_files]
    for path, data in files:
        for index, category in enumerate(data["categories"]):
            if not isinstance(category, Mapping) or "id" not in category or "name" not in category:
                raise ValueError(f"COCO instances file {path}: categories[{index}] needs 'id' and 'name'")
            names[category["id"]] = category["name"]
    objects: dict[Any, set[str]] = {}
    file_names: dict[Any, str] = {}
    for path, data in files:
        for image in data.get("images", []):
            if keep is None or image["id"] in keep:
                file_names[image["id"]] = image.get("file_name", str(image["id"]))
                objects.setdefault(image["id"], set())
        for index, ann in enumerate(data["annotations"]):
            image_id, category_id = _annotation_fields(ann, ("image_id", "category_id"), f"COCO instances file {path}",
                                                       index)
            if keep is not None and image_id not in keep:
                continue
            if category_id not in names:
                raise ValueError(f"COCO instances file {path}: annotations[{index}] has category_id "
                                 f"{category_id!r}, which no file's 'categories' lists")
            objects.setdefault(image_id, set()).add(names[category_id])
    texts: dict[Any, list[str]] = {}
    for path in caption_files:
        data = _coco_file(path, ("annotations",), "COCO captions")
        for index, ann in enumerate(data["annotations"]):
            image_id, caption = _annotation_fields(ann, ("image_id", "caption"), f"COCO captions file {path}", index)
            if keep is None or image_id in keep:
                texts.setdefault(image_id, []).append(caption)
    return CocoGroundTruth({k: frozenset(v) for k, v in objects.items()}, {k: tuple(v) for k, v in texts.items()},
                           file_names, tuple(names[k] for k in sorted(names)))


def _annotation_fields(ann: Any, keys: tuple[str, ...], where: str, index: int) -> tuple[Any, ...]:
    """The ``keys`` of one COCO annotation; ``ValueError`` naming the file and the annotation when one is missing."""
    try:
        return tuple(ann[key] for key in keys)
    except (KeyError, TypeError):
        raise ValueError(f"{where}: annotations[{index}] needs {' and '.join(map(repr, keys))}") from None
