"""SSD's prior boxes, two ways that must agree: torchvision's DefaultBoxGenerator (what
training and host decoding use) and Caffe's PriorBox parameters (what the prototxt tells TIDL).

Both centre box j of an f x f map at (j + 0.5) / f, and per location give a box of side s_k,
one of side sqrt(s_k s_k+1), then for each aspect ratio r one of s_k sqrt(r) x s_k / sqrt(r)
and its transpose (Caffe's `flip`). Boxes are not clipped to the image (`clip: false`) in
either: torchvision's clip limits width and height, Caffe's the corners, which differ.
"""

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from edgezoo.errors import UsageError

SSD_VARIANCES = (0.1, 0.1, 0.2, 0.2)
"""CENTER_SIZE coding's variances (torchvision's SSD BoxCoder weights 10, 10, 5, 5)."""

GridSize = tuple[int, int]


@dataclass(frozen=True)
class SSDBoxes:
    """The prior-box design of an SSD: aspect ratios per level and the scale range."""

    aspect_ratios: tuple[tuple[float, ...], ...]
    min_ratio: float = 0.15
    max_ratio: float = 0.9

    def __post_init__(self) -> None:
        if len(self.aspect_ratios) < 2 or not 0.0 < self.min_ratio < self.max_ratio <= 1.0:
            raise UsageError(
                "an SSD needs at least two levels and 0 < min_ratio < max_ratio <= 1, got "
                f"{len(self.aspect_ratios)} levels, {self.min_ratio} .. {self.max_ratio}"
            )

    @property
    def levels(self) -> int:
        return len(self.aspect_ratios)

    @property
    def priors_per_level(self) -> list[int]:
        """Boxes per map location: two squares plus two per aspect ratio."""
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    def scales(self) -> list[float]:
        """s_0 .. s_levels, as DefaultBoxGenerator computes them (the last is 1)."""
        return self.generator().scales

    def generator(self) -> DefaultBoxGenerator:
        ratios = [list(r) for r in self.aspect_ratios]
        return DefaultBoxGenerator(ratios, self.min_ratio, self.max_ratio, clip=False)

    def anchors(self, grid_sizes: Sequence[GridSize]) -> Tensor:
        """(A, 4) relative xyxy boxes of maps of these sizes, in the heads' order (level,
        row, column, prior); computed once per design and map sizes (every training step and
        decoding asks again), so callers must not change the tensor in place."""
        self._check_levels(grid_sizes)
        return _default_boxes(self, tuple((int(h), int(w)) for h, w in grid_sizes))

    def prior_box_params(
        self, in_size: GridSize, grid_sizes: Sequence[GridSize]
    ) -> list[dict[str, Any]]:
        """Caffe PriorBox parameters (pixels) per level for an (H, W) input, each field a list
        of values as a prototxt repeats it."""
        self._check_levels(grid_sizes)
        height, width = in_size
        if height != width:
            raise UsageError(
                f"the prototxt's prior boxes are squares in pixels, edgezoo's relative to each "
                f"side: export the SSD at a square input size, not {height}x{width}"
            )
        scales = self.scales()
        return [
            {
                "min_size": [scales[k] * width],
                "max_size": [scales[k + 1] * width],
                "aspect_ratio": list(self.aspect_ratios[k]),
                "flip": [True],
                "clip": [False],
                "variance": list(SSD_VARIANCES),
                "step": [width / grid_sizes[k][1]],
            }
            for k in range(self.levels)
        ]

    def _check_levels(self, grid_sizes: Sequence[GridSize]) -> None:
        if len(grid_sizes) != self.levels:
            raise UsageError(
                f"{len(grid_sizes)} feature maps for {self.levels} levels of prior boxes"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "aspect_ratios": [list(r) for r in self.aspect_ratios],
            "min_ratio": self.min_ratio,
            "max_ratio": self.max_ratio,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SSDBoxes":
        ratios = tuple(tuple(float(r) for r in level) for level in data["aspect_ratios"])
        return cls(ratios, float(data["min_ratio"]), float(data["max_ratio"]))


@functools.lru_cache(maxsize=16)
def _default_boxes(boxes: SSDBoxes, grid_sizes: tuple[GridSize, ...]) -> Tensor:
    """torchvision's default boxes on a 1x1 image: relative to the image."""
    unit_image = ImageList(torch.zeros(1, 1, 1, 1), [(1, 1)])
    maps = [torch.zeros(1, 1, h, w) for h, w in grid_sizes]
    return boxes.generator()(unit_image, maps)[0]


def caffe_prior_boxes(
    params: Sequence[Mapping[str, Any]], in_size: GridSize, grid_sizes: Sequence[GridSize]
) -> Tensor:
    """(A, 4) relative xyxy prior boxes as Caffe's PriorBox layer computes them from a
    prototxt's prior_box_param entries (each field a list of values; clip false, offset 0.5)."""
    height, width = in_size
    boxes = []
    for param, (rows, cols) in zip(params, grid_sizes, strict=True):
        sides = caffe_prior_sides(param)
        step = float(param.get("step", [width / cols])[0])
        for i in range(rows):
            for j in range(cols):
                cx, cy = (j + 0.5) * step, (i + 0.5) * step
                for w, h in sides:
                    boxes.append(
                        [(cx - w / 2) / width, (cy - h / 2) / height,
                         (cx + w / 2) / width, (cy + h / 2) / height]
                    )  # fmt: skip
    return torch.tensor(boxes, dtype=torch.float64)


def caffe_prior_sides(param: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(width, height) in pixels of one location's priors, in Caffe PriorBox's order, from
    one prior_box_param (each field a list of values)."""
    flip = param.get("flip", [True])[0]
    ratios = [1.0]
    for ratio in param.get("aspect_ratio", []):
        for r in (ratio, 1.0 / ratio) if flip else (ratio,):
            if all(abs(r - seen) > 1e-6 for seen in ratios):
                ratios.append(r)
    max_sizes = param.get("max_size", [])
    sides = []
    for k, min_size in enumerate(param["min_size"]):
        sides.append((min_size, min_size))
        if max_sizes:
            side = math.sqrt(min_size * max_sizes[k])
            sides.append((side, side))
        sides.extend((min_size * math.sqrt(r), min_size / math.sqrt(r)) for r in ratios[1:])
    return sides
