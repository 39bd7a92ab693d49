"""Per-layer-type dtypes (`training_spec.layer_type_dtypes`).

Every parametrised layer of the model belongs to one of four layer types: `linear`
(column, projection, attention and feed-forward matrices), `embedding` (categorical
and learned positional tables), `norm` (RMSNorm / LayerNorm scales) and `decoder` (the
per-target output heads). `apply_layer_type_dtypes` casts the parameters of every layer
of a type to the requested dtype; each layer casts its input activations to its own
compute dtype, so any mix of dtypes runs.

float8 dtypes (`float8_e4m3fn`, `float8_e5m2`) have no CPU kernels for norms, attention,
embedding gradients or any optimizer update (checked on torch 2.13: Adam, AdamW and SGD
all fail on float8 parameters). So float8 is applied as weight quantisation: the
parameters stay float32 master weights, and every forward pass uses them rounded to the
float8 grid (straight-through gradient). The model computes exactly as a float8-weight
model would with float32 arithmetic, trains with any optimizer, and exports with the
rounded weights baked in (`bake_weight_quantization`).
"""

from typing import Dict, Optional

import torch
from torch import nn

from sequifier.errors import SequifierError

LAYER_TYPES = ("linear", "embedding", "norm", "decoder")

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}

FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class DtypeAwareLayer:
    """Mixin for layers with a `layer_type`: gives the weights to compute with."""

    layer_type: str
    # Set by apply_layer_type_dtypes for float8 types; None means use weights as stored.
    weight_quantization: Optional[torch.dtype] = None

    def compute_weight(self, weight: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if weight is None or self.weight_quantization is None:
            return weight
        rounded = weight.detach().to(self.weight_quantization).to(weight.dtype)
        # Straight-through: forward uses the rounded value, gradient reaches the master.
        return weight + (rounded - weight.detach())


def parse_layer_type_dtypes(mapping: Optional[Dict[str, str]]) -> Dict[str, torch.dtype]:
    """Validate a `layer_type_dtypes` map and turn its names into torch dtypes."""
    if not mapping:
        return {}
    parsed = {}
    for layer_type, dtype_name in mapping.items():
        if layer_type not in LAYER_TYPES:
            raise SequifierError(
                f"training_spec.layer_type_dtypes: unknown layer type '{layer_type}'; "
                f"use one of {', '.join(LAYER_TYPES)}"
            )
        if dtype_name not in DTYPES:
            raise SequifierError(
                f"training_spec.layer_type_dtypes.{layer_type}: unknown dtype "
                f"'{dtype_name}'; use one of {', '.join(DTYPES)}"
            )
        parsed[layer_type] = DTYPES[dtype_name]
    return parsed


def apply_layer_type_dtypes(model: nn.Module, mapping: Optional[Dict[str, str]]) -> nn.Module:
    """Give each layer whose `layer_type` is in `mapping` the mapped dtype (in place).

    float16/bfloat16/float32 cast the parameters; float8 types keep float32 parameters
    and quantise them on use (see module docstring). Non-weight buffers (RoPE tables)
    are left alone and follow the activations' dtype where they are used.
    """
    dtypes = parse_layer_type_dtypes(mapping)
    if not dtypes:
        return model
    for module in model.modules():
        dtype = dtypes.get(getattr(module, "layer_type", None))
        if dtype is None:
            continue
        quantize = dtype in FLOAT8_DTYPES
        for param in module.parameters(recurse=False):
            # .data keeps the Parameter object, so optimizers built earlier still hold it.
            param.data = param.data.to(torch.float32 if quantize else dtype)
        module.weight_quantization = dtype if quantize else None
    return model


def bake_weight_quantization(model: nn.Module) -> nn.Module:
    """Replace float8-quantised master weights by their rounded values (in place).

    Used on a copy before export, so exported graphs hold plain float32 constants
    instead of float8 casts, and compute the same as the model.
    """
    with torch.no_grad():
        for module in model.modules():
            dtype = getattr(module, "weight_quantization", None)
            if dtype is None:
                continue
            for param in module.parameters(recurse=False):
                param.copy_(param.to(dtype).to(param.dtype))
            module.weight_quantization = None
    return model


def layer_type_dtype_names(model: nn.Module) -> Dict[str, str]:
    """Layer type -> dtype name actually held by the model's parameters (for records)."""
    names = {v: k for k, v in DTYPES.items()}
    found: Dict[str, str] = {}
    for module in model.modules():
        layer_type = getattr(module, "layer_type", None)
        if layer_type is None:
            continue
        quantization = getattr(module, "weight_quantization", None)
        for param in module.parameters(recurse=False):
            dtype = quantization if quantization is not None else param.dtype
            found.setdefault(layer_type, names.get(dtype, str(dtype)))
    return found
