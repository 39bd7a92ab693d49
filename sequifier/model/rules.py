"""The rules of `model_spec`: the architecture the model code can build.

Each rule appends one line per problem to the collector; the gate calls them (train
only: these import torch). The lists of choices are the model code's own (layers,
transformer); `kv_heads` is the one home of the attention-type rules.
"""

from typing import List

from sequifier.config.metadata import Metadata
from sequifier.config.problems import Problems
from sequifier.config.schema import ModelSpec
from sequifier.data import masked_future
from sequifier.model import embedding_sizes
from sequifier.model.layers import ACTIVATIONS, NORMALIZATIONS
from sequifier.model.transformer import ATTENTION_TYPES, POSITIONAL_ENCODINGS, kv_heads, tie_embeddings_problems


def model_spec_rules(m: ModelSpec, p: Problems) -> None:
    for name in ("dim_model", "n_head", "num_layers", "dim_feedforward"):
        p.positive(getattr(m, name), f"model_spec.{name}")
    p.positive(m.initial_embedding_dim, "model_spec.initial_embedding_dim", allow_none=True)
    if m.n_head >= 1 and m.dim_model % m.n_head:
        p.add("model_spec.n_head", f"dim_model ({m.dim_model}) must be divisible by n_head ({m.n_head}); "
              f"choose n_head from {[h for h in range(1, min(m.dim_model, 64) + 1) if m.dim_model % h == 0]}")
    p.one_of(m.activation_fn, ACTIVATIONS, "model_spec.activation_fn")
    p.one_of(m.positional_encoding, POSITIONAL_ENCODINGS, "model_spec.positional_encoding")
    p.one_of(m.normalization, NORMALIZATIONS, "model_spec.normalization")
    p.check(m.rope_theta > 0, "model_spec.rope_theta", f"must be > 0, got {m.rope_theta}")
    if m.positional_encoding == "rope" and m.n_head >= 1 and m.dim_model % m.n_head == 0:
        p.check((m.dim_model // m.n_head) % 2 == 0, "model_spec.positional_encoding",
                f"rope needs an even head size, but dim_model/n_head = {m.dim_model // m.n_head}")
    if m.joint_embedding_dim is not None and m.joint_embedding_dim != m.dim_model:
        p.add("model_spec.joint_embedding_dim",
              f"must equal dim_model ({m.dim_model}) when set, got {m.joint_embedding_dim}; or set it to null")
    p.one_of(m.attention_type, ATTENTION_TYPES, "model_spec.attention_type")
    if m.attention_type in ATTENTION_TYPES and m.n_head >= 1:
        p.call(kv_heads, m)


def model_column_rules(m: ModelSpec, inputs: List[str], targets: List[str], metadata: Metadata,
                       p: Problems) -> None:
    """The rules that need the data's columns: embedding widths, tied embeddings and the
    direct horizon."""
    known = [c for c in inputs if c in metadata.column_types]
    p.call(embedding_sizes.feature_embedding_dims, embedding_sizes.initial_embedding_dim(m), known,
           metadata.column_types, metadata.n_classes, m.feature_embedding_dims)
    p.extend(tie_embeddings_problems(m.tie_embeddings, inputs, targets, metadata.column_types))
    if m.direct_horizon is not None:
        problems = masked_future.horizon_problems(m.direct_horizon, metadata.seq_length)
        p.extend(problems)
        known_ahead = metadata.known_ahead_columns or []
        categorical = [t for t in targets if metadata.column_types.get(t) == "categorical"]
        if categorical:
            p.add("model_spec.direct_horizon", f"direct forecasts are for real targets, and {categorical} "
                  "are categorical (forecast a step at a time); remove direct_horizon")
        elif not problems and not masked_future.masked_columns(inputs, targets, known_ahead):
            p.add("model_spec.direct_horizon", f"no target ({', '.join(targets)}) is also an input, so "
                  "a forecast feeds nothing back and every step is already direct; remove direct_horizon")
