"""The sequifier model: column embeddings -> causal transformer -> one head per target.

Input windows are LEFT-padded: a sequence shorter than seq_length has PAD_ID (categorical)
or 0.0 (real) in its first slots. The model uses causal attention only, with no key
padding mask: every position sees the pad slots before it as ordinary inputs (a pad
embedding the model learns to ignore), and the training loop leaves pad positions out of
the loss. Outputs at the last position - the one used for prediction - always see the
whole real sequence.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sequifier.config.metadata import Metadata
from sequifier.config.schema import ModelSpec, TrainConfig
from sequifier.data import masked_future
from sequifier.data.known_ahead import known_ahead_inputs
from sequifier.errors import SequifierError, shown
from sequifier.model import embedding_sizes
from sequifier.model.dtypes import apply_layer_type_dtypes
from sequifier.model.layers import (
    DecoderLinear,
    Dropout,
    Embedding,
    Linear,
    RotaryEmbedding,
    TiedDecoder,
    TransformerBlock,
    concat_chunked,
    init_weights,
    make_norm,
)

POSITIONAL_ENCODINGS = ("learned", "rope")  # model_spec.positional_encoding (model/rules.py checks it)
ATTENTION_TYPES = ("mha", "mqa", "gqa")  # model_spec.attention_type (kv_heads is its rule)


@dataclass
class ColumnLayout:
    """Everything the model needs to know about the data."""

    input_columns: List[str]  # order = ONNX input order
    column_types: Dict[str, str]  # 'categorical' | 'real', every input and target column
    n_classes: Dict[str, int]  # categorical columns, incl. reserved PAD_ID / UNKNOWN_ID
    target_columns: List[str]
    target_column_types: Dict[str, str]
    seq_length: int
    # inputs given at the predicted position (slot j+1 beside the others' slot j;
    # data/known_ahead.py); exports of older versions have none
    known_ahead_columns: List[str] = field(default_factory=list)
    # steps a direct forecast covers in one forward pass (data/masked_future.py); None:
    # the model sees no masked inputs
    direct_horizon: Optional[int] = None

    @property
    def masked_columns(self) -> List[str]:
        """Inputs that a direct forecast masks (none without direct_horizon)."""
        if self.direct_horizon is None:
            return []
        return masked_future.masked_columns(self.input_columns, self.target_columns, self.known_ahead_columns)

    @staticmethod
    def from_config(cfg: TrainConfig, metadata: Metadata) -> "ColumnLayout":
        input_columns = list(cfg.input_columns) if cfg.input_columns else metadata.columns
        target_columns = list(cfg.target_columns)
        known = metadata.column_types
        for field_name, columns in (("input_columns", input_columns), ("target_columns", target_columns)):
            missing = [c for c in columns if c not in known]
            if missing:
                raise SequifierError(
                    f"{field_name}: column(s) {missing} not in the metadata "
                    f"({', '.join(known)}); use preprocessed columns only"
                )
        for column in target_columns:  # types default to the metadata's
            given = (cfg.target_column_types or {}).get(column)
            if given is not None and given != known[column]:
                raise SequifierError(
                    f"target_column_types.{column}: is '{given}' but the data column is "
                    f"'{known[column]}'; set it to '{known[column]}'"
                )
        used = list(dict.fromkeys(input_columns + target_columns))
        return ColumnLayout(
            input_columns=input_columns,
            column_types={c: known[c] for c in used},
            n_classes={c: int(metadata.n_classes[c]) for c in used if known[c] == "categorical"},
            target_columns=target_columns,
            target_column_types={c: known[c] for c in target_columns},
            seq_length=int(metadata.seq_length if cfg.seq_length is None else cfg.seq_length),
            known_ahead_columns=known_ahead_inputs(input_columns, metadata.known_ahead_columns),
            direct_horizon=cfg.model_spec.direct_horizon,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(raw: dict) -> "ColumnLayout":
        return ColumnLayout(**raw)


def feature_embedding_dims(spec: ModelSpec, layout: ColumnLayout) -> Dict[str, int]:
    """Embedding width of each input column (embedding_sizes.py has the automatic rule)."""
    return embedding_sizes.feature_embedding_dims(
        embedding_sizes.initial_embedding_dim(spec), layout.input_columns, layout.column_types,
        layout.n_classes, spec.feature_embedding_dims)


def tie_embeddings_problems(setting, input_columns: List[str], target_columns: List[str],
                            column_types: Dict[str, str]) -> List[str]:
    """One line per problem of `model_spec.tie_embeddings` (for the validation gate)."""
    field = "model_spec.tie_embeddings"
    if setting is None or setting is False:
        return []
    eligible = [c for c in target_columns if c in input_columns and column_types.get(c) == "categorical"]
    if setting is True:
        if eligible:
            return []
        return [f"{field}: true, but no categorical column is both an input and a target "
                f"(targets {list(target_columns)}); set it to false"]
    if isinstance(setting, str) or not isinstance(setting, Sequence) \
            or not all(isinstance(c, str) for c in setting):
        return [f"{field}: must be true, false or a list of column names, got {shown(setting)}"]
    problems = []
    for column in setting:
        if column_types.get(column) == "real":
            problems.append(f"{field}: '{column}' is real-valued; only categorical columns have an "
                            "embedding table to tie, remove it from the list")
        elif column not in target_columns:
            problems.append(f"{field}: '{column}' is not a target column {list(target_columns)}; "
                            "only a predicted column has output logits to tie")
        elif column not in input_columns:
            problems.append(f"{field}: '{column}' is not an input column, so it has no embedding "
                            "table to tie its logits to; add it to input_columns or remove it here")
    return problems


def tied_columns(setting, layout: "ColumnLayout") -> List[str]:
    """The columns whose logits reuse their input embedding table, in target order."""
    problems = tie_embeddings_problems(setting, layout.input_columns, layout.target_columns,
                                       layout.column_types)
    if problems:
        raise SequifierError("\n".join(problems))
    if setting is None or setting is False:
        return []
    chosen = set(layout.target_columns) if setting is True else set(setting)
    return [c for c in layout.target_columns
            if c in chosen and c in layout.input_columns and layout.column_types[c] == "categorical"]


class ColumnEmbedding(nn.Module):
    """Embeds each input column and concatenates them to [B, L, initial_embedding_dim].

    categorical: a lookup table of n_classes rows; real: Linear(1, width), or the
    standardised value itself when the width is 1. The `layout.masked_columns` of a direct
    model also have a learned vector that replaces the embedding of a masked cell
    (MASKED_ID / NaN; data/masked_future.py).
    """

    def __init__(self, layout: ColumnLayout, dims: Dict[str, int], max_concat_length: int):
        super().__init__()
        self.columns = list(layout.input_columns)
        self.max_concat_length = max_concat_length
        self.tables = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        for column in self.columns:
            if layout.column_types[column] == "categorical":
                self.tables[column] = Embedding(layout.n_classes[column], dims[column])
            elif dims[column] > 1:
                self.projections[column] = Linear(1, dims[column])
        self.masks = nn.ParameterDict({c: nn.Parameter(torch.zeros(dims[c])) for c in layout.masked_columns})

    def forward(self, inputs: Dict[str, Tensor]) -> Tensor:
        parts = []
        for column in self.columns:
            value = inputs[column]
            masked = None
            if column in self.masks:
                masked = value < 0 if column in self.tables else torch.isnan(value)
                value = torch.where(masked, torch.zeros_like(value), value)
            if column in self.tables:
                part = self.tables[column](value)
            elif column in self.projections:
                part = self.projections[column](value.unsqueeze(-1))
            else:
                part = value.unsqueeze(-1)
            # The residual stream is float32 whatever the layers' dtypes.
            part = part.float()
            if masked is not None:
                part = torch.where(masked.unsqueeze(-1), self.masks[column].float(), part)
            parts.append(part)
        return concat_chunked(parts, dim=-1, max_length=self.max_concat_length)


class SequifierModel(nn.Module):
    def __init__(
        self,
        spec: ModelSpec,
        layout: ColumnLayout,
        dropout: float = 0.0,
        max_concat_length: int = 12,
    ):
        super().__init__()
        self.spec = spec
        self.layout = layout
        dim = spec.dim_model
        n_kv_heads = kv_heads(spec)

        self.embedding = ColumnEmbedding(layout, feature_embedding_dims(spec, layout), max_concat_length)
        if spec.joint_embedding_dim is not None and spec.joint_embedding_dim != dim:
            raise SequifierError(
                f"model_spec.joint_embedding_dim: must equal dim_model ({dim}), "
                f"got {spec.joint_embedding_dim}"
            )
        width = embedding_sizes.initial_embedding_dim(spec)
        needs_projection = spec.joint_embedding_dim is not None or width != dim
        self.projection = Linear(width, dim) if needs_projection else nn.Identity()
        if spec.positional_encoding == "learned":
            self.position = Embedding(layout.seq_length, dim)
            rope = None
        elif spec.positional_encoding == "rope":
            self.position = None
            rope = RotaryEmbedding(dim // spec.n_head, layout.seq_length, spec.rope_theta)
        else:
            raise SequifierError(
                f"model_spec.positional_encoding: '{spec.positional_encoding}' is not "
                f"supported; use one of {', '.join(POSITIONAL_ENCODINGS)}"
            )
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                spec.n_head,
                n_kv_heads,
                spec.dim_feedforward,
                spec.activation_fn,
                spec.normalization,
                spec.norm_first,
                dropout,
                rope,  # one table shared by all layers
            )
            for _ in range(spec.num_layers)
        )
        # Post-LN blocks already end in a norm; pre-LN needs one after the last block.
        self.final_norm = make_norm(spec.normalization, dim) if spec.norm_first else nn.Identity()
        self.tied_columns = tied_columns(spec.tie_embeddings, layout)
        self.heads = nn.ModuleDict()
        for column, kind in layout.target_column_types.items():
            if column in self.tied_columns:
                width = self.embedding.tables[column].embedding_dim
                self.heads[column] = TiedDecoder(dim, width, layout.n_classes[column])
            else:
                self.heads[column] = DecoderLinear(dim, layout.n_classes[column] if kind == "categorical" else 1)
        self.apply(init_weights)

    def hidden_states(self, inputs: Dict[str, Tensor]) -> Tensor:
        """[B, L, dim_model] float32 hidden states after the final norm."""
        x = self.projection(self.embedding(inputs)).float()
        length = x.shape[1]
        if length > self.layout.seq_length:
            raise SequifierError(
                f"seq_length: input has {length} positions, the model takes at most "
                f"{self.layout.seq_length}"
            )
        if self.position is not None:
            x = x + self.position(torch.arange(length, device=x.device)).float()
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x).float()

    def decode(self, hidden: Tensor, skip: Sequence[str] = ()) -> Dict[str, Tensor]:
        """Per target (but those in `skip`): categorical logits [..., n_classes]; real
        values [...] (float32)."""
        outputs = {}
        for column, head in self.heads.items():
            if column in skip:
                continue
            if column in self.tied_columns:
                out = head(hidden, self.embedding.tables[column]).float()
            else:
                out = head(hidden).float()
            outputs[column] = out if self.layout.target_column_types[column] == "categorical" else out.squeeze(-1)
        return outputs

    def query(self, hidden: Tensor, column: str) -> Tensor:
        """[..., width] what the categorical head of `column` scores against its class
        vectors: the hidden state, or its projection to the tied table's width."""
        head = self.heads[column]
        if column in self.tied_columns and head.project is not None:
            return head.project(hidden).float()
        return hidden

    def class_vectors(self, column: str) -> Tuple[Tensor, Tensor]:
        """(weight [n_classes, width], bias [n_classes]) of the categorical head of `column`:
        its logits are query @ weight.T + bias (`scores`)."""
        head = self.heads[column]
        if column in self.tied_columns:
            table = self.embedding.tables[column]
            return table.compute_weight(table.weight), head.compute_weight(head.bias)
        return head.compute_weight(head.weight), head.compute_weight(head.bias)

    def scores(self, query: Tensor, column: str) -> Tensor:
        """float32 logits [..., n_classes] of `column` for query vectors (see `query`); the
        same values as `decode`, for any subset of rows (whole-catalogue scoring in chunks)."""
        weight, bias = self.class_vectors(column)
        return F.linear(query.to(weight.dtype), weight, bias.to(weight.dtype)).float()

    def forward(self, inputs: Dict[str, Tensor], query_columns: Sequence[str] = ()) -> Dict[str, Tensor]:
        """Per target its outputs (`decode`); for the categorical targets in `query_columns`
        their query vectors [B, L, width] instead of logits [B, L, n_classes], under
        `query_key(column)` (training and validation of large catalogues score them in
        chunks or against sampled classes)."""
        hidden = self.hidden_states(inputs)
        if not query_columns:
            return self.decode(hidden)
        outputs = self.decode(hidden, skip=query_columns)
        for column in query_columns:
            outputs[query_key(column)] = self.query(hidden, column)
        return outputs


def query_key(column: str) -> str:
    """Key of a target's query vectors in the model's outputs (see SequifierModel.forward)."""
    return f"{column}:query"


def tied_parameter_saving(model: SequifierModel) -> int:
    """Parameters an untied model of the same spec would have in addition."""
    saving = 0
    for column in model.tied_columns:
        head = model.heads[column]
        own = head.project.weight.numel() if head.project is not None else 0
        saving += model.spec.dim_model * model.layout.n_classes[column] - own
    return saving


def kv_heads(spec: ModelSpec) -> int:
    """Key/value heads of the attention; the one home of the attention_type rules.

    mha uses n_head heads, mqa 1, gqa n_kv_heads (null: n_head, as the spec says).
    """
    kind, n_head, given = spec.attention_type, spec.n_head, spec.n_kv_heads
    if kind == "mha":
        if given not in (None, n_head):
            raise SequifierError(
                f"model_spec.n_kv_heads: attention_type mha uses n_head ({n_head}) key/value heads, "
                f"got {given}; set n_kv_heads: null or use attention_type: gqa")
        return n_head
    if kind == "mqa":
        if given not in (None, 1):
            raise SequifierError(
                f"model_spec.n_kv_heads: attention_type mqa uses 1 key/value head, got {given}; "
                "set n_kv_heads: 1 or null")
        return 1
    if kind == "gqa":
        n_kv = n_head if given is None else given
        if n_kv < 1 or n_head % n_kv:
            raise SequifierError(f"model_spec.n_kv_heads: must divide n_head ({n_head}), got {n_kv}")
        return n_kv
    raise SequifierError(f"model_spec.attention_type: '{kind}' is not one of {', '.join(ATTENTION_TYPES)}")


def build_model(cfg: TrainConfig, metadata: Metadata) -> SequifierModel:
    """The model for `cfg` on `metadata`'s columns, in float32 unless layer_type_dtypes says otherwise."""
    layout = ColumnLayout.from_config(cfg, metadata)
    model = SequifierModel(
        cfg.model_spec,
        layout,
        dropout=cfg.training_spec.dropout,
        max_concat_length=cfg.training_spec.device_max_concat_length,
    )
    return apply_layer_type_dtypes(model, cfg.training_spec.layer_type_dtypes)
