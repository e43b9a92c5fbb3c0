"""Host-side switches and counters of a quantization module, saved as its `_extra_state`.

Freezing, rounding and the range-statistics schedule change what a module computes, so they
travel with its weights: a model reloaded from `q.module.state_dict()` computes what the saved
one did. They are stored as one small int64 tensor (loadable with torch.load(weights_only=True));
a checkpoint written before they existed, or a float checkpoint, loads with the module's
current values, and so do flags added at the end of FLAGS after a checkpoint was written.
"""

from typing import Any, ClassVar

import torch
from torch import Tensor

from edgezoo.errors import CheckpointMismatchError

EXTRA_STATE_KEY = "_extra_state"


class SavedFlagsMixin:
    """Save the bool or int attributes named in FLAGS with the module (nn.Module mixin)."""

    FLAGS: ClassVar[tuple[str, ...]] = ()
    SCHEME_FLAGS: ClassVar[dict[str, str]] = {}
    """Flags fixed by how the model was wrapped (the quantization scheme): a checkpoint with
    another value is refused, with the option that wraps it alike, instead of loaded."""

    def _init_saved_flags(self) -> None:
        # Runs after the attributes are set; a load without the key keeps the current values.
        self.register_load_state_dict_pre_hook(_keep_flags_when_missing)

    def get_extra_state(self) -> Tensor:
        return torch.tensor([int(getattr(self, name)) for name in self.FLAGS], dtype=torch.long)

    def set_extra_state(self, state: Any) -> None:
        values = torch.as_tensor(state).tolist()
        if len(values) > len(self.FLAGS):
            raise CheckpointMismatchError(
                f"{type(self).__name__} saves {len(self.FLAGS)} values ({', '.join(self.FLAGS)}), "
                f"the checkpoint holds {len(values)}: it was written by another version of this "
                "layer; load it with the edgezoo version that wrote it"
            )
        for name, value in zip(self.FLAGS, values, strict=False):
            current = getattr(self, name)
            value = type(current)(value)
            if name in self.SCHEME_FLAGS and value != current:
                raise CheckpointMismatchError(
                    f"{type(self).__name__}: the checkpoint was trained with {name}={value}, "
                    f"this model is wrapped with {name}={current}; wrap it as it was trained: "
                    f"{self.SCHEME_FLAGS[name]}"
                )
            setattr(self, name, value)


def _keep_flags_when_missing(module: SavedFlagsMixin, state_dict: dict, prefix: str, *_) -> None:
    """Load pre-hook: a state_dict without this module's values keeps its current ones."""
    state_dict.setdefault(prefix + EXTRA_STATE_KEY, module.get_extra_state())
