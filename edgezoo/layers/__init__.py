"""Parameter-free building blocks that keep every range-changing op a module of its own."""

from edgezoo.layers.add_block import AddBlock
from edgezoo.layers.cat_block import CatBlock
from edgezoo.layers.conv_norm_act import ConvNormAct
from edgezoo.layers.mul_block import MulBlock
from edgezoo.layers.resize import ResizeWith, resize_with, validate_resize
from edgezoo.layers.self_gate import SELF_GATED, SelfGate

__all__ = [
    "SELF_GATED",
    "AddBlock",
    "CatBlock",
    "ConvNormAct",
    "MulBlock",
    "ResizeWith",
    "SelfGate",
    "resize_with",
    "validate_resize",
]
