"""What an exported model says about itself: its type, columns, sequence length, dropout.

Read from ONNX metadata_props here and from a `.pt` export in `torch_runner`; the
format itself (version, model types, output names) is defined in `export_format`.
"""

import json
from dataclasses import dataclass, field

from sequifier.errors import SequifierError
from sequifier.export_format import FORMAT_VERSION, MODEL_TYPES


@dataclass
class ModelInfo:
    """What an export records about itself (ONNX metadata_props / .pt export info)."""

    model_type: str
    input_columns: list[str]
    target_columns: list[str]
    target_column_types: dict[str, str]
    column_types: dict[str, str]
    seq_length: int
    # dropout runs on every call (an ONNX export with dropout baked in)
    with_dropout: bool
    # dropout can be switched on for Monte Carlo dropout (infer_with_dropout)
    can_sample_dropout: bool
    # output name of each target (or "embedding"), when the export records it
    output_names: dict[str, str] | None = None
    # categorical column -> number of classes, where the export shows it
    n_classes: dict[str, int] | None = None
    # every-position output name of each target (exports that have them)
    position_output_names: dict[str, str] | None = None
    # inputs given at the predicted position (data/known_ahead.py; older exports: none)
    known_ahead_columns: list[str] = field(default_factory=list)
    # steps the model forecasts in one forward pass (data/masked_future.py); None: only
    # autoregressively (older exports too)
    direct_horizon: int | None = None
    # per categorical target: its query outputs (last / every position) and the names of
    # its class vectors and biases (exports that score catalogues in chunks have them)
    query_output_names: dict[str, str] | None = None
    query_position_output_names: dict[str, str] | None = None
    class_vector_names: dict[str, list[str]] | None = None


def _decode(value: str):
    """metadata_props values are JSON strings; tolerate a bare string (e.g. model_type)."""
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def info_from_props(props: dict[str, object], path: str) -> ModelInfo:
    """Build ModelInfo from the export's key/value metadata, or say why it is not one."""
    if _decode(props.get("sequifier_format", "null")) != FORMAT_VERSION:
        raise SequifierError(
            f"model_path: '{path}' is not a sequifier export (no sequifier_format "
            f"'{FORMAT_VERSION}' metadata); export it with `sequifier train`"
        )
    fields = ("model_type", "input_columns", "target_columns", "target_column_types",
              "column_types", "seq_length")
    missing = [k for k in fields if k not in props]
    if missing:
        raise SequifierError(
            f"model_path: '{path}' lacks export metadata {missing}; re-export it with "
            "`sequifier train`"
        )
    values = {k: _decode(props[k]) if isinstance(props[k], str) else props[k] for k in fields}
    dropout = props.get("with_dropout", False)
    dropout = bool(_decode(dropout) if isinstance(dropout, str) else dropout)
    names = props.get("output_names")
    position_names = props.get("position_output_names")

    def optional(key: str):
        value = props.get(key)
        return dict(_decode(value)) if isinstance(value, str) else value
    info = ModelInfo(
        model_type=str(values["model_type"]),
        input_columns=list(values["input_columns"]),
        target_columns=list(values["target_columns"]),
        target_column_types=dict(values["target_column_types"]),
        column_types=dict(values["column_types"]),
        seq_length=int(values["seq_length"]),
        with_dropout=dropout,
        can_sample_dropout=dropout,
        output_names=dict(_decode(names)) if isinstance(names, str) else names,
        position_output_names=(
            dict(_decode(position_names)) if isinstance(position_names, str) else position_names
        ),
        known_ahead_columns=list(_decode(props.get("known_ahead_columns", "[]")) or []),
        direct_horizon=_decode(props.get("direct_horizon", "null")),
        query_output_names=optional("query_output_names"),
        query_position_output_names=optional("query_position_output_names"),
        class_vector_names=optional("class_vector_names"),
    )
    if info.model_type not in MODEL_TYPES:
        raise SequifierError(
            f"model_path: '{path}' has unknown model_type '{info.model_type}' in its metadata"
        )
    return info
