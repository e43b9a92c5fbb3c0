"""Optional input and output activation ranges carried by a layer that quantization replaced."""

from torch import nn


class RangeIOMixin:
    """Gives a module two optional PACT2 children: `input_quant` before it, `output_quant` after.

    Ranges live as children of the layer they belong to, so their buffers appear in the
    state_dict under that layer's name (e.g. `layer1.0.bn2.output_quant.clips_act`) while the
    layer's own keys stay exactly as they were.
    """

    input_quant: nn.Module | None
    output_quant: nn.Module | None

    def _init_range_io(self) -> None:
        # Plain None until a range is assigned (nn.Module then registers it as a child).
        self.input_quant = None
        self.output_quant = None
