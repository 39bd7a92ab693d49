"""Export of trained models: ONNX (onnxruntime) and .pt (PyTorch), generative and embedding.

I/O contract of every export (also in docs/model.md):
- inputs, in `input_columns` order, one per input column, named exactly as the column:
  [batch, seq_length], int64 ids for categorical columns, float32 standardised values for
  real ones; sequences LEFT-padded with PAD_ID / 0.0. Any batch size works.
- generative outputs, one per target, named `output_name(target)` ("<target>_output";
  names, version and file names live in `export_format`, which infer reads too):
  categorical -> [batch, n_classes] logits of the last position; real -> [batch] value
  of the last position on the standardised scale. Then one more per target,
  `positions_output_name(target)` ("<target>_positions"): the same for every position,
  [batch, seq_length, n_classes] / [batch, seq_length] (every-position inference: the
  model is causal, so one pass gives the prediction after each input slot). Then, per
  categorical target, what scores a large catalogue in chunks instead (sequifier/
  catalog.py): `query_output_name(target)` [batch, width] and
  `query_positions_output_name(target)` [batch, seq_length, width], the query vectors
  of the last / every position, and `class_vector_names(target)`, the head's class
  vectors [n_classes, width] and biases [n_classes] (graph weights: read from the file,
  not computed); logits = query @ class_vectors.T + class_bias. A runner keeps only the
  set it needs (see infer/model_runner.py), so none costs the others.
- embedding output "embedding": [batch, dim_model] hidden state of the last position.
- metadata (ONNX metadata_props, JSON-encoded strings; .pt: the saved dict's "info"):
  sequifier_format, model_type, input_columns, target_columns, target_column_types,
  column_types, seq_length, known_ahead_columns (inputs that hold the value at the
  predicted position, i.e. one slot later: data/known_ahead.py), direct_horizon (steps
  forecast in one forward pass, or null: data/masked_future.py), with_dropout,
  output_names, position_output_names, query_output_names, query_position_output_names,
  class_vector_names, plus the
  caller's extra entries (train adds model_name, tag, epoch, best_epoch, best_val_loss).

Exports always compute in float32: weights trained in float16/bfloat16 are upcast
(values unchanged) and float8-quantised weights are stored rounded to their float8 grid.
"""

import copy
import json
import logging
import os
import warnings
from dataclasses import asdict, is_dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from sequifier.config.schema import ModelSpec, TrainConfig
from sequifier.errors import SequifierError
from sequifier.export_format import (
    EMBEDDING_OUTPUT,
    FORMAT_VERSION,
    TAGS,
    check_model_type,
    class_vector_names,
    model_file_name,
    model_not_found,
    output_keys,
    output_name,
    positions_output_name,
    query_output_name,
    query_positions_output_name,
)
from sequifier.io_utils import atomic_path, output_set
from sequifier.model.dtypes import bake_weight_quantization, layer_type_dtype_names
from sequifier.model.layers import Dropout
from sequifier.model.transformer import ColumnLayout, SequifierModel
from sequifier.tensor_files import load_tensor_file


def output_names(layout: ColumnLayout, model_type: str) -> List[str]:
    """Every output of an export, in graph order."""
    if model_type == "embedding":
        return [EMBEDDING_OUTPUT]
    categorical = _categorical_targets(layout)
    return ([output_name(t) for t in layout.target_columns]
            + [positions_output_name(t) for t in layout.target_columns]
            + [query_output_name(t) for t in categorical]
            + [query_positions_output_name(t) for t in categorical]
            + [name for t in categorical for name in class_vector_names(t)])


def _categorical_targets(layout: ColumnLayout) -> List[str]:
    return [t for t in layout.target_columns if layout.target_column_types[t] == "categorical"]


class _LastPositionHead(nn.Module):
    """Positional inputs in input_columns order -> outputs of the last position."""

    model_type: str

    def __init__(self, model: SequifierModel):
        super().__init__()
        self.model = model
        self.input_columns = list(model.layout.input_columns)
        self.output_names = output_names(model.layout, self.model_type)

    def last_hidden(self, inputs: Tuple[Tensor, ...]) -> Tensor:
        return self.model.hidden_states(dict(zip(self.input_columns, inputs)))[:, -1, :]


HEAD_POSITIONS = ("both", "last", "every")


class GenerativeHead(_LastPositionHead):
    """Positional inputs in input_columns order -> per target, the last position's output,
    then every position's output (`positions="both"`, the export's outputs), or one of the
    two sets (`"last"`, `"every"`: what a .pt runner computes)."""

    model_type = "generative"

    def __init__(self, model: SequifierModel, positions: str = "both"):
        super().__init__(model)
        if positions not in HEAD_POSITIONS:
            raise ValueError(f"positions: '{positions}' is not one of {HEAD_POSITIONS}")
        self.positions = positions
        self.target_columns = list(model.layout.target_columns)

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        hidden = self.model.hidden_states(dict(zip(self.input_columns, inputs)))
        out: Tuple[Tensor, ...] = ()
        if self.positions in ("both", "last"):
            last = self.model.decode(hidden[:, -1, :])
            out += tuple(last[t] for t in self.target_columns)
        if self.positions in ("both", "every"):
            every = self.model.decode(hidden)
            out += tuple(every[t] for t in self.target_columns)
        if self.positions == "both":  # the export: what scores the catalogue in chunks
            categorical = _categorical_targets(self.model.layout)
            out += tuple(self.model.query(hidden[:, -1, :], t) for t in categorical)
            out += tuple(self.model.query(hidden, t) for t in categorical)
            for t in categorical:
                out += self.model.class_vectors(t)
        return out


class QueryHead(_LastPositionHead):
    """Positional inputs -> per target: a categorical target's query vectors (see
    `SequifierModel.query`), a real target's values; at the last position or every
    position. What a .pt runner computes to score a catalogue in chunks."""

    model_type = "generative"

    def __init__(self, model: SequifierModel, every_position: bool):
        super().__init__(model)
        self.every_position = every_position
        self.target_columns = list(model.layout.target_columns)
        self.categorical = _categorical_targets(model.layout)

    def forward(self, *inputs: Tensor) -> Tuple[Tensor, ...]:
        hidden = self.model.hidden_states(dict(zip(self.input_columns, inputs)))
        if not self.every_position:
            hidden = hidden[:, -1, :]
        values = self.model.decode(hidden, skip=self.categorical)
        return tuple(self.model.query(hidden, t) if t in self.categorical else values[t]
                     for t in self.target_columns)


class EmbeddingHead(_LastPositionHead):
    """Positional inputs in input_columns order -> (last-position hidden state,)."""

    model_type = "embedding"

    def forward(self, *inputs: Tensor) -> Tuple[Tensor]:
        return (self.last_hidden(inputs),)


def make_head(model: SequifierModel, model_type: str, positions: str = "both") -> nn.Module:
    """The export's head; `positions` picks a generative head's outputs (see GenerativeHead)."""
    check_model_type(model_type)
    return GenerativeHead(model, positions) if model_type == "generative" else EmbeddingHead(model)


def set_dropout_active(model: nn.Module, active: bool) -> nn.Module:
    """Eval mode everywhere, except dropout layers, which sample when `active` (MC dropout)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train(active)
    return model


def unwrap(model: nn.Module) -> SequifierModel:
    """The SequifierModel inside a DistributedDataParallel and/or torch.compile wrapper."""
    for attribute in ("module", "_orig_mod", "module"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            model = inner
    if not isinstance(model, SequifierModel):
        raise TypeError(f"expected a SequifierModel, got {type(model).__name__}")
    return model


def export_ready_copy(model: nn.Module) -> SequifierModel:
    """A float32, CPU, eval-mode copy of the model (unwrapped from DDP / torch.compile)."""
    clone = copy.deepcopy(unwrap(model)).cpu()
    bake_weight_quantization(clone)
    return clone.float().eval()


def example_inputs(layout: ColumnLayout, batch: int) -> Tuple[Tensor, ...]:
    """Valid dummy inputs; values do not matter for tracing, only dtypes and shapes."""
    shape = (batch, layout.seq_length)
    return tuple(
        torch.zeros(shape, dtype=torch.int64)
        if layout.column_types[c] == "categorical"
        else torch.zeros(shape, dtype=torch.float32)
        for c in layout.input_columns
    )


def export_info(
    layout: ColumnLayout, model_type: str, with_dropout: bool, extra_metadata: Optional[dict]
) -> Dict[str, object]:
    """The self-description every export carries (plain JSON-able values)."""
    info = dict(_plain(extra_metadata or {}))
    info.update(
        sequifier_format=FORMAT_VERSION,
        model_type=model_type,
        input_columns=list(layout.input_columns),
        target_columns=list(layout.target_columns),
        target_column_types=dict(layout.target_column_types),
        column_types=dict(layout.column_types),
        seq_length=int(layout.seq_length),
        known_ahead_columns=list(layout.known_ahead_columns),
        direct_horizon=layout.direct_horizon,
        with_dropout=bool(with_dropout),
        output_names=dict(zip(output_keys(model_type, layout.target_columns), output_names(layout, model_type))),
    )
    if model_type == "generative":
        info["position_output_names"] = {t: positions_output_name(t) for t in layout.target_columns}
        categorical = _categorical_targets(layout)
        info["query_output_names"] = {t: query_output_name(t) for t in categorical}
        info["query_position_output_names"] = {t: query_positions_output_name(t) for t in categorical}
        info["class_vector_names"] = {t: class_vector_names(t) for t in categorical}
    return info


def _spec_dict(spec) -> dict:
    if is_dataclass(spec):
        return _plain(asdict(spec))
    from omegaconf import OmegaConf  # a DictConfig view of ModelSpec

    return _plain(OmegaConf.to_container(spec, resolve=True))


def _plain(value):
    """JSON round trip: plain containers only (safe for torch.load(weights_only=True))."""
    return json.loads(json.dumps(value, default=str))


def _check_names(layout: ColumnLayout, model_type: str) -> None:
    clash = set(layout.input_columns) & set(output_names(layout, model_type))
    if clash:
        raise SequifierError(
            f"input_columns: column(s) {sorted(clash)} clash with the export's output names; "
            "rename those columns in the data"
        )


def export_onnx(
    model: SequifierModel,
    path: str,
    model_type: str,
    example_batch: int,
    with_dropout: bool,
    extra_metadata: Optional[dict] = None,
) -> None:
    """Write `model` as one self-contained .onnx file (atomically) with a dynamic batch axis."""
    import onnx

    clone = export_ready_copy(model)
    layout = clone.layout
    _check_names(layout, model_type)
    if with_dropout:
        for module in clone.modules():
            if isinstance(module, Dropout):
                module.export_mask = True
    head = make_head(clone, model_type).eval()
    # A batch-1 example silently fixes the batch axis at 1; trace with >= 2 and mark it dynamic.
    inputs = example_inputs(layout, max(2, int(example_batch)))
    batch = torch.export.Dim("batch")
    # forward(*inputs): the varargs are one argument to torch.export
    dynamic_shapes = (tuple({0: batch} for _ in inputs),)
    info = export_info(layout, model_type, with_dropout, extra_metadata)
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")
        # Placeholder I/O names: the exporter names internal values after their ops
        # ("embedding", "linear", ...) and produces duplicate names when a requested
        # I/O name equals one of them. The real names are set afterwards.
        program = torch.onnx.export(
            head,
            inputs,
            dynamo=True,
            input_names=[f"sequifier_input_{i}" for i in range(len(inputs))],
            output_names=[f"sequifier_output_{i}" for i in range(len(head.output_names))],
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            report=False,
            verbose=False,
        )
        proto = program.model_proto
    _set_io_names(proto.graph, list(layout.input_columns), head.output_names)
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)


def _set_io_names(graph, input_names: List[str], output_names: List[str]) -> None:
    """Rename the graph's placeholder inputs/outputs, moving clashing internal names aside."""
    io_mapping = {
        **{v.name: n for v, n in zip(graph.input, input_names)},
        **{v.name: n for v, n in zip(graph.output, output_names)},
    }
    wanted = set(io_mapping.values())
    internal = set()
    for node in graph.node:
        internal.update(node.output)
    internal.update(i.name for i in graph.initializer)
    taken = internal | set(io_mapping) | wanted
    mapping = {}
    for name in internal:
        if name in wanted and name not in io_mapping:
            new = f"{name}__internal"
            while new in taken:
                new += "_"
            taken.add(new)
            mapping[name] = new
    mapping.update(io_mapping)
    _rename_values(graph, mapping)


def _rename_values(graph, mapping: Dict[str, str]) -> None:
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = mapping.get(value.name, value.name)
    for initializer in graph.initializer:
        initializer.name = mapping.get(initializer.name, initializer.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attribute in node.attribute:  # control-flow subgraphs see outer names
            for subgraph in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                _rename_values(subgraph, mapping)


class _quiet_exporter_logs:
    """Hide the exporter's chatter: warnings about optional packages (torchvision) and the
    INFO lines of its graph passes, which flood a console that Hydra set to INFO."""

    LOGGERS = ("torch.onnx", "onnx_ir", "onnxscript")

    def __enter__(self):
        self.levels = {}
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self.levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        return False


def export_pt(
    model: SequifierModel,
    path: str,
    model_type: str,
    with_dropout: bool,
    extra_metadata: Optional[dict] = None,
) -> None:
    """Write `model` as a .pt file of plain containers (loadable with weights_only=True)."""
    check_model_type(model_type)
    clone = export_ready_copy(model)
    _check_names(clone.layout, model_type)
    payload = {
        "sequifier_format": FORMAT_VERSION,
        "model_type": model_type,
        "state_dict": clone.state_dict(),
        "model_spec": _spec_dict(clone.spec),
        "layout": clone.layout.to_dict(),
        "dropout": float(clone.dropout.p),
        "info": export_info(clone.layout, model_type, with_dropout, extra_metadata),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_pt_model(path: str) -> Tuple[SequifierModel, ColumnLayout, dict]:
    """Load a .pt export: (float32 eval-mode model, its layout, the export's info dict).

    Wrap the model with `make_head(model, info["model_type"])` for the same outputs as
    the ONNX export, and `set_dropout_active` for Monte Carlo dropout.
    """
    if not os.path.isfile(path):
        raise model_not_found(path)
    payload = load_tensor_file(path, "model_path:", "point it at a file written by `sequifier train`")
    required = ("sequifier_format", "model_type", "state_dict", "model_spec", "layout", "dropout")
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise SequifierError(
            f"model_path: '{path}' is not a sequifier .pt export (a model export from "
            "`sequifier train` with export_pt: true is needed, not a checkpoint)"
        )
    if payload["sequifier_format"] != FORMAT_VERSION:
        raise SequifierError(
            f"model_path: '{path}' has export format {payload['sequifier_format']}, this "
            f"sequifier reads format {FORMAT_VERSION}; re-export it"
        )
    layout = ColumnLayout.from_dict(payload["layout"])
    model = SequifierModel(ModelSpec(**payload["model_spec"]), layout, dropout=payload["dropout"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise SequifierError(
            f"model_path: '{path}' weights do not fit its recorded architecture "
            f"({str(e).splitlines()[0][:200]}); re-export it"
        ) from None
    info = dict(payload.get("info") or {})
    info.setdefault("model_type", payload["model_type"])
    info["dropout"] = payload["dropout"]
    info["model_spec"] = payload["model_spec"]
    return model.eval(), layout, info


def planned_exports(cfg: TrainConfig, models_dir: str, tag: str) -> List[Tuple[str, str, str]]:
    """(path, model_type, format) of every file `export_models` writes for this config
    under its stable name (`export_format.model_file_name`)."""
    model_types = [t for t, on in (("generative", cfg.export_generative_model),
                                   ("embedding", cfg.export_embedding_model)) if on]
    formats = [f for f, on in (("onnx", cfg.export_onnx), ("pt", cfg.export_pt)) if on]
    return [
        (os.path.join(models_dir, model_file_name(cfg.model_name, tag, t, f)), t, f)
        for t in model_types
        for f in formats
    ]


def epoch_path(path: str, cfg: TrainConfig, tag: str, model_type: str, file_format: str, epoch: int) -> str:
    """The epoch-named twin of a stable export path."""
    return os.path.join(os.path.dirname(path), model_file_name(cfg.model_name, tag, model_type, file_format, epoch))


def export_models(
    model: SequifierModel,
    layout: ColumnLayout,
    cfg: TrainConfig,
    models_dir: str,
    tag: str,
    epoch: int,
    extra_metadata: Optional[dict] = None,
) -> List[str]:
    """Write every export the config asks for as one set; returns the stable paths.

    Files: models_dir/sequifier-NAME-{tag}[-embedding].{onnx,pt}, each with its
    epoch-named twin sequifier-NAME-{tag}-{epoch}[...] (a hard link to the same file).
    Nothing is written if any target exists and cfg.overwrite is false.
    """
    if tag not in TAGS:
        raise ValueError(f"export_models: tag must be one of {TAGS}, got {tag}")
    model = unwrap(model)
    if layout.to_dict() != model.layout.to_dict():
        raise ValueError("export_models: layout differs from the model's own layout")
    plan = planned_exports(cfg, models_dir, tag)
    twins = {p: epoch_path(p, cfg, tag, t, f, epoch) for p, t, f in plan}
    existing = [p for p, _, _ in plan if os.path.exists(p)]
    if existing and not cfg.overwrite:
        raise SequifierError(
            f"overwrite: model file '{existing[0]}' already exists; set overwrite: true to "
            "replace it, or choose another model_name"
        )
    with_dropout = bool(cfg.export_with_dropout and cfg.training_spec.dropout > 0)
    extra = dict(extra_metadata or {})
    extra.setdefault("model_name", cfg.model_name)
    extra.setdefault("epoch", int(epoch))
    extra.setdefault("tag", tag)
    extra.setdefault("layer_type_dtypes", layer_type_dtype_names(model))
    with output_set([p for p, _, _ in plan] + list(twins.values())) as tmps:
        for path, model_type, file_format in plan:
            if file_format == "onnx":
                export_onnx(model, tmps[path], model_type, cfg.inference_batch_size, with_dropout, extra)
            else:
                export_pt(model, tmps[path], model_type, with_dropout, extra)
            _link(tmps[path], tmps[twins[path]])
    return [p for p, _, _ in plan]


def _link(source: str, twin: str) -> None:
    """Make `twin` the same file as `source` (a copy where hard links are not supported)."""
    os.remove(twin)
    try:
        os.link(source, twin)
    except OSError:
        import shutil

        shutil.copyfile(source, twin)
