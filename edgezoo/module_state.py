"""Remember and restore every submodule's training flag around work that switches modes."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["kept_modes"]


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the caller may call .eval()/.train(); afterwards every submodule has
    the training flag it had before (a mixed-mode model stays mixed), also on an error."""
    flags = {module: module.training for module in model.modules()}
    try:
        yield model
    finally:
        # train() first, so a subclass's own train() undoes whatever its eval() did; then each
        # flag as it was, without calling the submodules' train() again.
        model.train(flags[model])
        for module, training in flags.items():
            module.training = training
