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
    FLAG_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Flags that index a vocabulary, shown by name in messages."""

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
        loaded = {
            name: type(getattr(self, name))(value)
            for name, value in zip(self.FLAGS, values, strict=False)
        }
        mismatched = [n for n in self.SCHEME_FLAGS if n in loaded and loaded[n] != getattr(self, n)]
        if mismatched:
            raise CheckpointMismatchError(
                f"{type(self).__name__}: the checkpoint was trained with "
                + ", ".join(f"{n}={self._shown(n, loaded[n])}" for n in mismatched)
                + ", this model is wrapped with "
                + ", ".join(f"{n}={self._shown(n, getattr(self, n))}" for n in mismatched)
                + "; wrap it as it was trained: "
                + "; ".join(self.SCHEME_FLAGS[n] for n in mismatched)
            )
        for name, value in loaded.items():
            setattr(self, name, value)

    def _shown(self, name: str, value: int) -> object:
        """A flag's value as messages show it (a vocabulary index by its name)."""
        names = self.FLAG_NAMES.get(name)
        return names[value] if names is not None else value


def _keep_flags_when_missing(module: SavedFlagsMixin, state_dict: dict, prefix: str, *_) -> None:
    """Load pre-hook: a state_dict without this module's values keeps its current ones."""
    state_dict.setdefault(prefix + EXTRA_STATE_KEY, module.get_extra_state())
