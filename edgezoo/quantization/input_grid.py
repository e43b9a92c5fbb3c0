"""A unit's input grid: the activation range that quantized the unit's input, read, not applied.

A conv's bias lies on the joint grid of its input and its weights, so the conv must know the
scale of its input. That scale belongs to the range that produced the input (a PACT2 that
replaced a ReLU, or another unit's output range). The consumer holds that range as a registered
child named `input_grid`, shared with its owner in the usual PyTorch way (like tied weights):
visible in print(model), kept by deepcopy, moved by .to(). The consumer only reads its clip.
Its entries are saved once, under the owner's name: the consumer's state-dict hooks leave them
out of its own keys and take the owner's values when loading.
"""

from torch import Tensor, nn

INPUT_GRID = "input_grid"


class InputGridMixin:
    """A unit that reads its input's grid (nn.Module mixin): it attaches the range itself."""

    def _attach_input_grid(self, grid: nn.Module | None) -> None:
        """Hold the input's range as child `input_grid` (None: the input is not quantized)."""
        setattr(self, INPUT_GRID, grid)
        self.register_state_dict_post_hook(_leave_out_input_grid)
        self.register_load_state_dict_pre_hook(_take_owner_values)


def _grid_prefix(prefix: str) -> str:
    return f"{prefix}{INPUT_GRID}."


def _leave_out_input_grid(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict
) -> None:
    """State-dict post-hook: the grid's entries are its owner's, saved there."""
    start = _grid_prefix(prefix)
    for key in [k for k in state_dict if k.startswith(start)]:
        del state_dict[key]


def _take_owner_values(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object
) -> None:
    """Load pre-hook: fill the grid's entries with its current state; its owner loads them."""
    grid = getattr(module, INPUT_GRID, None)
    if grid is None:
        return
    start = _grid_prefix(prefix)
    for key, value in grid.state_dict(keep_vars=True).items():
        state_dict.setdefault(start + key, value)
