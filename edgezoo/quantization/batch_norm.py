"""BatchNorm for QAT: a freeze switch that train()/eval() never touch, and unchanged keys.

A BatchNorm right after a conv is folded into that conv's unit (weight_layers.py), which holds
it as its child `bn`; a BatchNorm anywhere else stays in its slot as a unit of its own, with the
ranges of its input and output as children.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from edgezoo.quantization.pact2 import PACT2
from edgezoo.quantization.saved_flags import SavedFlagsMixin


class QuantBatchNormMixin(SavedFlagsMixin):
    """BatchNorm behaviour for QAT: freezable, with optional input and output ranges.

    A frozen BN (`bn_frozen`, saved with the model) normalises with its running statistics and
    stops updating them until unfrozen, in training too.
    """

    FLAGS = ("bn_frozen",)
    bn_frozen: bool
    input_quant: PACT2 | None
    output_quant: PACT2 | None

    @classmethod
    def from_float(
        cls,
        bn: nn.modules.batchnorm._BatchNorm,
        input_quant: PACT2 | None = None,
        output_quant: PACT2 | None = None,
    ):
        """A QAT BatchNorm sharing bn's parameter and buffer tensors (same state_dict keys)."""
        quant = cls(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            device="meta",
        )
        for name, param in bn.named_parameters(recurse=False):
            setattr(quant, name, param)
        for name, buffer in bn.named_buffers(recurse=False):
            setattr(quant, name, buffer)
        quant.bn_frozen = False
        return quant._with_ranges(input_quant, output_quant, bn.training)

    def _with_ranges(self, input_quant: PACT2 | None, output_quant: PACT2 | None, training: bool):
        """The last step of from_float: the ranges as children, saved flags, the mode."""
        self.input_quant = input_quant
        self.output_quant = output_quant
        self._init_saved_flags()
        self.train(training)
        return self

    def freeze_bn(self, frozen: bool = True) -> None:
        """Normalise with the running statistics and stop updating them (False: use and update
        batch statistics again in training); saved with the model."""
        self.bn_frozen = frozen

    @property
    def uses_batch_statistics(self) -> bool:
        """True while the forward normalises with batch statistics (training and not frozen)."""
        return self.training and not self.bn_frozen

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.bn_frozen and self.training and self.track_running_stats:
            x = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        elif not self.training and x.dtype != self.running_mean.dtype:
            # Exact (float64) eval of a float32 layer: its statistics read in x's dtype.
            stats = (self.running_mean, self.running_var, self.weight, self.bias)
            x = F.batch_norm(x, *(_as(t, x.dtype) for t in stats), False, 0.0, self.eps)
        else:
            x = super().forward(x)
        if self.output_quant is not None:
            x = self.output_quant(x)
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_frozen={self.bn_frozen}"


def _as(tensor: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if tensor is None else tensor.to(dtype)


class QuantBatchNorm1d(QuantBatchNormMixin, nn.BatchNorm1d):
    """BatchNorm1d with a persistent freeze flag and optional activation ranges."""


class QuantBatchNorm2d(QuantBatchNormMixin, nn.BatchNorm2d):
    """BatchNorm2d with a persistent freeze flag and optional activation ranges."""


class QuantBatchNorm3d(QuantBatchNormMixin, nn.BatchNorm3d):
    """BatchNorm3d with a persistent freeze flag and optional activation ranges."""


class QuantFrozenBatchNorm2d(QuantBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (detection backbones) for QAT: a BatchNorm2d that is
    always frozen, whose affine weight and bias stay buffers (never trained), with its keys
    (no num_batches_tracked)."""

    FLAGS = ()  # nothing to switch or save: frozen for good
    bn_frozen = True

    @classmethod
    def from_float(
        cls,
        bn: FrozenBatchNorm2d,
        input_quant: PACT2 | None = None,
        output_quant: PACT2 | None = None,
    ):
        """A QAT BatchNorm sharing the frozen layer's buffers (same state_dict keys)."""
        quant = cls(bn.weight.shape[0], eps=bn.eps, device="meta")
        del quant.weight, quant.bias  # registered as parameters; the frozen layer has buffers
        for name, buffer in bn.named_buffers(recurse=False):
            quant.register_buffer(name, buffer)
        quant.register_buffer("num_batches_tracked", None)
        return quant._with_ranges(input_quant, output_quant, bn.training)

    def freeze_bn(self, frozen: bool = True) -> None:
        """Nothing to do: a frozen BatchNorm never uses batch statistics."""

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # As torchvision's FrozenBatchNorm2d: no counter, so none is added for old checkpoints
        # (BatchNorm's loader would) and a BatchNorm2d checkpoint's is not used.
        state_dict.pop(prefix + "num_batches_tracked", None)
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args)

    def to_float(self) -> FrozenBatchNorm2d:
        """The FrozenBatchNorm2d holding this layer's tensors, for deployment."""
        plain = FrozenBatchNorm2d(self.num_features, self.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            plain.register_buffer(name, getattr(self, name).detach().clone())
        return plain


QUANT_BATCH_NORMS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: QuantBatchNorm1d,
    nn.BatchNorm2d: QuantBatchNorm2d,
    nn.BatchNorm3d: QuantBatchNorm3d,
    FrozenBatchNorm2d: QuantFrozenBatchNorm2d,
}
"""Float BatchNorm type -> its QAT replacement."""

FOLDABLE_BATCH_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
"""BatchNorm types a Conv2d before them folds."""
