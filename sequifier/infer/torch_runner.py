"""Running a `.pt` model with PyTorch, with the same inputs and outputs as the ONNX runner.

A `.pt` export from `sequifier train` carries its architecture and columns. A training
checkpoint carries the composed config it was trained with (presets and command-line
overrides included): its "model" weights are rebuilt from that. A `.pt` that holds
weights only (a bare state dict) gets its architecture and columns from the training
config (`training_config_path`), read and merged over the schema by the same compose
functions; the metadata fills what the config leaves to it.
"""

import logging
import os
from types import SimpleNamespace

from sequifier.config.metadata import Metadata
from sequifier.errors import SequifierError
from sequifier.export_format import output_keys
from sequifier.infer.model_info import ModelInfo
from sequifier.tensor_files import load_tensor_file

logger = logging.getLogger(__name__)


def torch_device(device: str):
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise SequifierError(f"device: '{device}' asked for, but torch sees no CUDA device; use cpu")
    index = device.partition(":")[2]
    if kind == "cuda" and index.isdigit() and int(index) >= torch.cuda.device_count():
        raise SequifierError(f"device: '{device}' does not exist; {torch.cuda.device_count()} GPU(s) found")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SequifierError(f"device: '{device}' asked for, but MPS is not available here; use cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise SequifierError(f"device: '{device}' is not one of cpu, cuda, mps")
    return torch.device(device)


class TorchRunner:
    def __init__(self, path: str, device: str, training_config_path: str, model_type: str,
                 metadata: Metadata, infer_with_dropout: bool, every_position: bool = False,
                 queries: bool = False):
        from sequifier.export import QueryHead, make_head, set_dropout_active

        self.device = torch_device(device)
        self.every_position = every_position
        model, info = _load(path, training_config_path, model_type, metadata)
        self.info = info
        if every_position and info.model_type != "generative":
            raise SequifierError(
                f"model_path: '{path}' is an embedding model; only generative models predict "
                "every position"
            )
        self.class_vectors = {}
        if queries and info.model_type == "generative":
            head = QueryHead(model, every_position)
            for column in head.categorical:
                self.class_vectors[column] = tuple(v.detach().float().cpu().numpy()
                                                   for v in model.class_vectors(column))
        else:
            head = make_head(model, info.model_type, "every" if every_position else "last")
        # MC dropout: eval mode (no batch-norm-like state here) with dropout layers sampling
        set_dropout_active(head, infer_with_dropout and info.can_sample_dropout)
        self.head = head.to(self.device)
        import torch

        logger.info(f"{os.path.basename(path)}: torch {torch.__version__} on {self.device}")
        self._keys = output_keys(info.model_type, info.target_columns)

    def reseed(self, seed: int) -> None:
        """Dropout masks (infer_with_dropout) follow torch's global generator."""
        import torch

        torch.manual_seed(seed)

    def run(self, inputs: dict) -> dict:
        import torch

        tensors = [torch.from_numpy(inputs[c]).to(self.device) for c in self.info.input_columns]
        with torch.inference_mode():
            outputs = self.head(*tensors)
        return {k: o.float().cpu().numpy() for k, o in zip(self._keys, outputs)}


def _read_payload(path: str):
    return load_tensor_file(path, "model_path:", "point it at a file written by `sequifier train`")


def _load(path: str, training_config_path: str, model_type: str, metadata: Metadata):
    payload = _read_payload(path)
    if isinstance(payload, dict) and "layout" in payload and "model_spec" in payload:
        from sequifier.export import load_pt_model

        model, layout, raw = load_pt_model(path)
        kind = raw["model_type"]
        dropout = float(raw.get("dropout", 0.0))
    else:
        state_dict = _weights(payload, path)
        recorded = payload.get("config") if isinstance(payload, dict) else None
        if isinstance(recorded, dict):  # a checkpoint: the config it was trained with
            node, source = recorded, f"the config recorded in '{path}'"
        else:
            node, source = _training_config(training_config_path, path), f"'{training_config_path}'"
        model, layout, dropout = _model_from_config(node, source, metadata, path, state_dict)
        kind = model_type  # weights have no head of their own: use the config's
    info = ModelInfo(
        model_type=kind,
        input_columns=list(layout.input_columns),
        target_columns=list(layout.target_columns),
        target_column_types=dict(layout.target_column_types),
        column_types=dict(layout.column_types),
        seq_length=int(layout.seq_length),
        # the weights run deterministically unless infer_with_dropout switches it on
        with_dropout=False,
        can_sample_dropout=dropout > 0,
        n_classes=dict(layout.n_classes),
        known_ahead_columns=list(layout.known_ahead_columns),
        direct_horizon=layout.direct_horizon,
    )
    return model, info


def _weights(payload, path: str) -> dict:
    import torch

    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                return payload[key]
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
    raise SequifierError(
        f"model_path: '{path}' is not a sequifier .pt model (no weights found); point it "
        "at a .pt export or checkpoint written by `sequifier train`"
    )


def _training_config(config_path: str, path: str) -> dict:
    from sequifier.config.compose import load_user_config

    if not os.path.isfile(config_path):
        raise SequifierError(
            f"training_config_path: '{config_path}' not found; the .pt file '{path}' holds "
            "weights only, so the training config must give its architecture and columns"
        )
    return load_user_config("train", config_path)


def _model_from_config(node: dict, source: str, metadata: Metadata, path: str, state_dict):
    """The model a train config (a checkpoint's record or a YAML's contents) describes,
    with the weights `state_dict` loaded."""
    from sequifier.config.compose import on_schema
    from sequifier.config.schema import ModelSpec
    from sequifier.model.transformer import ColumnLayout, SequifierModel

    try:
        spec = on_schema(ModelSpec, node.get("model_spec") or {})
        columns = SimpleNamespace(
            input_columns=node.get("input_columns"),
            target_columns=list(node["target_columns"]),
            target_column_types=dict(node.get("target_column_types") or {}),  # default: metadata's
            seq_length=node.get("seq_length"),
            model_spec=spec,  # direct_horizon: the masked inputs' vectors
        )
    except Exception as e:  # noqa: BLE001 - missing keys / wrong types in the config
        raise SequifierError(
            f"training_config_path: {source} does not give the model's architecture "
            f"and columns ({' '.join(str(e).split())[:200]})"
        ) from None
    layout = ColumnLayout.from_config(columns, metadata)
    dropout = float((node.get("training_spec") or {}).get("dropout", 0.0))
    model = SequifierModel(spec, layout, dropout=dropout)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise SequifierError(
            f"training_config_path: the weights in '{path}' do not fit the architecture in "
            f"{source} ({str(e).splitlines()[0][:200]}); use the config they were trained with"
        ) from None
    return model.float().eval(), layout, dropout
