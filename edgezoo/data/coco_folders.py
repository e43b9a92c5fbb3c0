"""Users' detection data as COCO folders: root/images/<files> and one COCO instances json
(root/annotations.json) listing images, categories and boxes (x, y, width, height in pixels)."""

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from edgezoo.data.folders import read_rgb_image
from edgezoo.data.transforms import PairTransform
from edgezoo.errors import DataError

ANNOTATIONS_FILE = "annotations.json"


class CocoDetectionFolder(Dataset):
    """Images and (M, 5) relative-box targets from a COCO folder; categories numbered 0..C-1
    in the order of their COCO ids (crowd boxes left out, as COCO's evaluator ignores them)."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: PairTransform | None = None,
        categories: list[dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        data = _read_annotations(self.root / ANNOTATIONS_FILE)
        self.categories = categories or sorted(data["categories"], key=lambda c: c["id"])
        self.classes = tuple(str(c.get("name", c["id"])) for c in self.categories)
        index = {c["id"]: i for i, c in enumerate(self.categories)}
        self.images = sorted(data["images"], key=lambda image: image["id"])
        self.boxes: dict[int, list[list[float]]] = {image["id"]: [] for image in self.images}
        sizes = {image["id"]: (image["width"], image["height"]) for image in self.images}
        for note in data["annotations"]:
            if note.get("iscrowd", 0):
                continue
            self.boxes[note["image_id"]].append(_row(note, index, sizes, self.root))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = self.images[i]
        pixels = read_rgb_image(self.root / "images" / image["file_name"])
        if pixels.size != (image["width"], image["height"]):
            raise DataError(
                f"{image['file_name']} is {pixels.size[0]}x{pixels.size[1]} but "
                f"{self.root / ANNOTATIONS_FILE} says {image['width']}x{image['height']}: fix "
                "the annotations or the image"
            )
        targets = torch.tensor(self.boxes[image["id"]], dtype=torch.float32).view(-1, 5)
        return self.transform(pixels, targets) if self.transform else (pixels, targets)


def _read_annotations(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: a COCO detection folder holds images/ and {ANNOTATIONS_FILE} "
            "(COCO instances format)"
        )
    try:
        data = json.loads(path.read_text())
        for key in ("images", "annotations", "categories"):
            if not isinstance(data[key], list):
                raise TypeError(key)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not a COCO instances file ({err}): it needs lists 'images', "
            "'annotations' and 'categories'"
        ) from err
    return data


def _row(
    note: dict[str, Any],
    index: dict[int, int],
    sizes: dict[int, tuple[int, int]],
    root: Path,
) -> list[float]:
    """[class, x1, y1, x2, y2] relative to the image, or a DataError naming the annotation."""
    where = f"{root / ANNOTATIONS_FILE} annotation {note.get('id')}"
    if note.get("category_id") not in index or note.get("image_id") not in sizes:
        raise DataError(f"{where} names an unknown category or image; fix the annotation")
    width, height = sizes[note["image_id"]]
    x, y, w, h = (float(v) for v in note["bbox"])
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 0.5 or y + h > height + 0.5:
        raise DataError(
            f"{where} has box {note['bbox']} outside its {width}x{height} image or empty; fix it"
        )
    return [index[note["category_id"]], x / width, y / height, (x + w) / width, (y + h) / height]
