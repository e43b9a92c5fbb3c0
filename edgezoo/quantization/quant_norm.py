"""BatchNorm that can be folded into the conv before it and frozen, with unchanged keys."""

import torch.nn.functional as F
from torch import Tensor, nn

from edgezoo.quantization.range_io import RangeIOMixin


class QuantBatchNormMixin(RangeIOMixin):
    """BatchNorm behaviour for QAT: freezable, and an identity once folded into its conv.

    `bn_frozen` is a plain attribute that train() and eval() never touch: a frozen BN uses its
    running statistics and stops updating them until unfrozen. When `folded_into_conv` is set,
    the conv before it (a QuantConv2d) owns the BN arithmetic whenever batch statistics are not
    in use (eval or frozen): it then outputs conv(x, fq(W')) + fq(b') and this module passes its
    input through. While batch statistics are in use, the conv outputs conv(x, fq(W*s)/s) + b
    and this module applies the usual training-mode batch norm (updating running statistics).
    """

    bn_frozen: bool
    folded_into_conv: bool

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bn_frozen = False
        self.folded_into_conv = False
        self._init_range_io()

    @classmethod
    def from_float(cls, bn: nn.modules.batchnorm._BatchNorm):
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
        quant.train(bn.training)
        return quant

    @property
    def uses_batch_statistics(self) -> bool:
        """True while the forward normalises with batch statistics (training and not frozen)."""
        return self.training and not self.bn_frozen

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.folded_into_conv:
            if self.uses_batch_statistics:
                x = super().forward(x)
        elif self.bn_frozen and self.training and self.track_running_stats:
            x = F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        else:
            x = super().forward(x)
        if self.output_quant is not None:
            x = self.output_quant(x)
        return x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, folded_into_conv={self.folded_into_conv}"


class QuantBatchNorm1d(QuantBatchNormMixin, nn.BatchNorm1d):
    """BatchNorm1d with a persistent freeze flag and optional activation ranges."""


class QuantBatchNorm2d(QuantBatchNormMixin, nn.BatchNorm2d):
    """BatchNorm2d that folds into the preceding QuantConv2d, with a persistent freeze flag."""


class QuantBatchNorm3d(QuantBatchNormMixin, nn.BatchNorm3d):
    """BatchNorm3d with a persistent freeze flag and optional activation ranges."""


QUANT_BATCH_NORMS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: QuantBatchNorm1d,
    nn.BatchNorm2d: QuantBatchNorm2d,
    nn.BatchNorm3d: QuantBatchNorm3d,
}
"""Float BatchNorm type -> its QAT replacement."""
