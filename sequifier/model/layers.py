"""Building blocks of the sequifier transformer.

Every parametrised layer carries a `layer_type` (see `dtypes.py`) and casts its input
to the dtype its weights compute in, so layers of different dtypes can follow each
other. Outputs stay in that compute dtype; the residual stream is kept in float32.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sequifier.errors import SequifierError
from sequifier.model.dtypes import DtypeAwareLayer


def linear_input(x: Tensor, weight: Tensor) -> Tensor:
    """`x` in the dtype `weight` computes in, for F.linear.

    Under autocast, F.linear casts a float32 weight and its input to the autocast dtype
    itself: an input already in that dtype (the bfloat16 output of attention or of the
    feed-forward activation) is passed as it is, since casting it up to float32 first
    would only be undone (two extra memory passes per layer, and the same result)."""
    if (weight.dtype == torch.float32 and x.dtype != torch.float32
            and torch.is_autocast_enabled(x.device.type)
            and x.dtype == torch.get_autocast_dtype(x.device.type)):
        return x
    return x.to(weight.dtype)


class Linear(DtypeAwareLayer, nn.Linear):
    layer_type = "linear"

    def forward(self, x: Tensor) -> Tensor:
        weight = self.compute_weight(self.weight)
        bias = self.compute_weight(self.bias)
        return F.linear(linear_input(x, weight), weight, bias)


class DecoderLinear(Linear):
    """An output head; a separate layer type so it can keep a higher precision."""

    layer_type = "decoder"


class Embedding(DtypeAwareLayer, nn.Embedding):
    layer_type = "embedding"

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.compute_weight(self.weight))


class TiedDecoder(DtypeAwareLayer, nn.Module):
    """An output head whose class vectors are an input embedding table (weight tying).

    logits = project(hidden) @ table.T + bias. The table is passed to `forward`, not
    held, so it stays one parameter owned by the column embedding (one state-dict key,
    one optimizer entry, one gradient). `project` maps dim_model to the table's width
    when they differ; the per-class bias keeps the class frequencies out of the table.
    """

    layer_type = "decoder"

    def __init__(self, dim_model: int, width: int, n_classes: int):
        super().__init__()
        self.project = DecoderLinear(dim_model, width, bias=False) if width != dim_model else None
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, hidden: Tensor, table: "Embedding") -> Tensor:
        if self.project is not None:
            hidden = self.project(hidden)
        weight = table.compute_weight(table.weight)
        return F.linear(linear_input(hidden, weight), weight, self.compute_weight(self.bias).to(weight.dtype))


class RMSNorm(DtypeAwareLayer, nn.RMSNorm):
    layer_type = "norm"

    def forward(self, x: Tensor) -> Tensor:
        weight = self.compute_weight(self.weight)
        return F.rms_norm(x.to(weight.dtype), self.normalized_shape, weight, self.eps)


class LayerNorm(DtypeAwareLayer, nn.LayerNorm):
    layer_type = "norm"

    def forward(self, x: Tensor) -> Tensor:
        weight = self.compute_weight(self.weight)
        bias = self.compute_weight(self.bias)
        return F.layer_norm(x.to(weight.dtype), self.normalized_shape, weight, bias, self.eps)


class Dropout(nn.Dropout):
    """nn.Dropout that can be switched to an explicit random mask for ONNX export.

    Exported ONNX `Dropout` nodes are not reliably random in onnxruntime: with full graph
    optimisation, two runs on the same input gave identical outputs (checked on 1.32).
    An explicit uniform-random mask exports to RandomUniformLike, which is sampled anew
    on every run; `export_mask` turns it on (see sequifier/export.py).
    """

    export_mask: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.export_mask or self.p == 0.0:
            return super().forward(x)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


NORMALIZATIONS = ("rmsnorm", "layer_norm")  # model_spec.normalization (model/rules.py checks it)
ACTIVATIONS = ("swiglu", "gelu", "relu")  # model_spec.activation_fn (model/rules.py checks it)


def make_norm(normalization: str, dim: int) -> nn.Module:
    if normalization == "rmsnorm":
        return RMSNorm(dim, eps=1e-6)
    if normalization == "layer_norm":
        return LayerNorm(dim, eps=1e-5)
    raise SequifierError(
        f"model_spec.normalization: '{normalization}' is not supported; use {' or '.join(NORMALIZATIONS)}"
    )


def concat_chunked(tensors: List[Tensor], dim: int, max_length: int) -> Tensor:
    """torch.cat of `tensors`, never joining more than `max_length` tensors in one call.

    Some CUDA devices fail to launch a cat kernel over many inputs ("too many resources
    requested for launch"); concatenating in groups, then the groups, avoids that.
    """
    if max_length < 2:
        raise SequifierError(
            f"training_spec.device_max_concat_length: must be at least 2, got {max_length}"
        )
    while len(tensors) > max_length:
        tensors = [
            torch.cat(tensors[i : i + max_length], dim=dim)
            for i in range(0, len(tensors), max_length)
        ]
    return torch.cat(tensors, dim=dim) if len(tensors) > 1 else tensors[0]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with real-valued cos/sin tables (exports to ONNX).

    Uses the "rotate half" pairing: dimension i is rotated together with i + head_dim/2.
    The tables are non-persistent buffers: recomputed from rope_theta, not saved.
    """

    def __init__(self, head_dim: int, max_length: int, theta: float):
        super().__init__()
        if head_dim % 2:
            raise SequifierError(
                f"model_spec: positional_encoding rope needs an even head dimension "
                f"(dim_model / n_head), got {head_dim}"
            )
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_length, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [max_length, head_dim]
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, heads, L, head_dim] -> same shape, rotated by position."""
        length = x.shape[-2]
        cos = self.cos[:length].to(x.dtype)
        sin = self.sin[:length].to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


def expand_kv_heads(q: Tensor) -> bool:
    """Whether GQA/MQA should repeat its key/value heads instead of `enable_gqa`.

    On CUDA only the flash kernel takes `enable_gqa`, and flash computes in float16/
    bfloat16 only: a float32 GQA/MQA model (no autocast) would fall back to the math
    kernel, which builds the whole [L, L] score matrix per head. Repeated heads (the same
    arithmetic) let the memory-efficient kernel run instead. Elsewhere (CPU, ONNX export)
    `enable_gqa` stays."""
    return q.is_cuda and q.dtype not in (torch.float16, torch.bfloat16)


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention with n_kv_heads <= n_head key/value heads.

    n_kv_heads == n_head is MHA, 1 is MQA, anything between is GQA. q, k and v come from
    one fused projection; grouped heads use SDPA's enable_gqa (exports to ONNX).
    """

    def __init__(
        self,
        dim_model: int,
        n_head: int,
        n_kv_heads: int,
        rope: Optional[RotaryEmbedding],
    ):
        super().__init__()
        if dim_model % n_head or n_head % n_kv_heads:
            raise SequifierError(
                f"model_spec: dim_model ({dim_model}) must be divisible by n_head ({n_head}) "
                f"and n_head by n_kv_heads ({n_kv_heads})"
            )
        self.n_head = n_head
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim_model // n_head
        self.qkv = Linear(dim_model, (n_head + 2 * n_kv_heads) * self.head_dim)
        self.out = Linear(dim_model, dim_model)
        self.rope = rope

    def forward(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        q_size = self.n_head * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(batch, length, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        grouped = self.n_kv_heads != self.n_head
        if grouped and expand_kv_heads(q):
            groups = self.n_head // self.n_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            grouped = False
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
        y = y.transpose(1, 2).reshape(batch, length, q_size)
        return self.out(y)


class FeedForward(nn.Module):
    """Position-wise feed-forward network: swiglu, gelu or relu."""

    def __init__(self, dim_model: int, dim_feedforward: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise SequifierError(
                f"model_spec.activation_fn: '{activation}' is not supported; use one of {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        # swiglu needs a gate and a value projection; fused into one matrix.
        width = 2 * dim_feedforward if activation == "swiglu" else dim_feedforward
        self.up = Linear(dim_model, width)
        self.down = Linear(dim_feedforward, dim_model)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.activation == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.relu(h)
        return self.down(h)


class TransformerBlock(nn.Module):
    """Attention + feed-forward with residuals; pre-LN (norm_first) or post-LN."""

    def __init__(
        self,
        dim_model: int,
        n_head: int,
        n_kv_heads: int,
        dim_feedforward: int,
        activation: str,
        normalization: str,
        norm_first: bool,
        dropout: float,
        rope: Optional[RotaryEmbedding],
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attention = CausalSelfAttention(dim_model, n_head, n_kv_heads, rope)
        self.feed_forward = FeedForward(dim_model, dim_feedforward, activation)
        self.norm_attention = make_norm(normalization, dim_model)
        self.norm_feed_forward = make_norm(normalization, dim_model)
        self.dropout_attention = Dropout(dropout)
        self.dropout_feed_forward = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # Residual additions promote to float32 (x's dtype), whatever the layers' dtypes.
        if self.norm_first:
            x = x + self.dropout_attention(self.attention(self.norm_attention(x)))
            x = x + self.dropout_feed_forward(self.feed_forward(self.norm_feed_forward(x)))
        else:
            x = self.norm_attention(x + self.dropout_attention(self.attention(x))).float()
            x = self.norm_feed_forward(x + self.dropout_feed_forward(self.feed_forward(x))).float()
        return x


def init_weights(module: nn.Module) -> None:
    """GPT-style init: small normal weights for matrices and tables, zero biases; a tied
    head's projection scale-preserving."""
    if isinstance(module, nn.Linear) and module.in_features > 1:
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif isinstance(module, TiedDecoder) and module.project is not None:
        # Runs after its Linear child (apply visits children first). A 0.02 projection
        # times 0.02 table rows would start the logits and both their gradients near
        # zero; a 1/sqrt(dim_model) projection keeps the hidden state's unit scale, so a
        # tied head starts at the scale of an untied one.
        nn.init.normal_(module.project.weight, std=module.project.in_features ** -0.5)


__all__ = [
    "Linear",
    "DecoderLinear",
    "Embedding",
    "TiedDecoder",
    "RMSNorm",
    "LayerNorm",
    "make_norm",
    "concat_chunked",
    "RotaryEmbedding",
    "CausalSelfAttention",
    "FeedForward",
    "TransformerBlock",
    "init_weights",
]
