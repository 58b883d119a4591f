"""int8 inference on CPU: dynamic quantization of the Linear layers (weights int8, activations quantized
per batch on the fly), where nearly all of the model's arithmetic is."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantizable_linears(model: nn.Module) -> set[str]:
    """Names of the Linear layers worth quantizing: all but the position-bias MLPs, whose output is
    computed once and cached at inference (so int8 would cost accuracy and save nothing)."""
    return {name for name, module in model.named_modules() if isinstance(module, nn.Linear) and ".cpb_mlp." not in f".{name}."}


def is_quantized(model: object) -> bool:
    """Whether `model` holds dynamically quantized Linear layers (`quantize_int8` already ran on it)."""
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    return isinstance(model, nn.Module) and any(isinstance(module, QuantizedLinear) for module in model.modules())


def quantize_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The model with its Linear layers replaced by dynamically quantized int8 ones (CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    if not inplace:
        model = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch.ao marks its eager-mode quantization deprecated; it still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), quantizable_linears(model), dtype=torch.qint8, inplace=True)
