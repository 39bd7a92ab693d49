"""Loading an exported model and running its forward pass, for `.onnx` and `.pt` files.

Both runners expose the same thing: `info` (what the export says about itself: type,
columns, sequence length, whether dropout was exported) and `run(inputs)`, which takes
one `[batch, seq_length]` array per input column and returns the export's outputs as
numpy arrays (`{target: logits [batch, n_classes] | values [batch]}` for generative
models, `{"embedding": [batch, dim]}` for embedding models). Everything above this
module is format-agnostic. What an export says about itself is read in `model_info`;
the `.pt` runner lives in `torch_runner` (imported only when a `.pt` file is opened, so
ONNX inference does not import torch).
"""

import os

import numpy as np

from sequifier.errors import SequifierError
from sequifier.export_format import model_not_found, output_keys
from sequifier.infer.model_info import info_from_props


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxRunner:
    """An ONNX export run with onnxruntime."""

    def __init__(self, path: str, device: str, seed: int):
        import onnxruntime as ort

        providers = _onnx_providers(device, ort.get_available_providers(), path)
        options = ort.SessionOptions()
        # One process per run: use every core we may use for the matrix products and
        # no inter-op pool (the graph is a chain, so inter-op threads only add overhead).
        options.intra_op_num_threads = _usable_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # random ops (dropout masks of an export with dropout) seed from this when the
        # session is created; without it every session replays the same default stream
        ort.set_seed(int(seed))
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises assorted types for bad files
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SequifierError(
                f"model_path: '{path}' could not be loaded as an ONNX model ({first_line[:200]})"
            ) from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = info_from_props(props, path)
        self._check_signature(path)

    def _check_signature(self, path: str) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(self.info.input_columns):
            raise SequifierError(
                f"model_path: '{path}' has inputs {inputs}, which do not match its metadata "
                f"(input_columns {self.info.input_columns}); re-export it with `sequifier train`"
            )
        wanted = output_keys(self.info.model_type, self.info.target_columns)
        self._output_names = _match_outputs(wanted, outputs, self.info.output_names, path)
        self._keys = wanted
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        self.info.n_classes = {
            key: shapes[name][1]
            for key, name in zip(wanted, self._output_names)
            if self.info.target_column_types.get(key) == "categorical"
            and len(shapes[name]) == 2 and isinstance(shapes[name][1], int)
        }

    def reseed(self, seed: int) -> None:
        """Nothing to do: random ops were seeded when the session was created."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, inputs)
        return dict(zip(self._keys, results))


def _match_outputs(wanted: list[str], outputs: list[str], recorded: dict[str, str] | None,
                   path: str) -> list[str]:
    """Graph output for each wanted name: as recorded in the metadata, else by name, else
    by position (an output cannot be named like an input in ONNX, so exports rename them
    and keep target order)."""
    if recorded and all(recorded.get(w) in outputs for w in wanted):
        return [recorded[w] for w in wanted]
    if set(wanted) <= set(outputs):
        return list(wanted)
    if len(outputs) == len(wanted):
        return list(outputs)
    raise SequifierError(
        f"model_path: '{path}' has outputs {outputs}, which do not match its metadata "
        f"({wanted}); re-export it with `sequifier train`"
    )


def _onnx_providers(device: str, available: list[str], path: str) -> list:
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise SequifierError(
                f"device: '{device}' asked for, but this onnxruntime has no "
                f"CUDAExecutionProvider (available: {available}); install onnxruntime-gpu "
                "or use device: cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    raise SequifierError(
        f"device: '{device}' is not supported for ONNX models ('{path}'); use cpu or cuda, "
        "or a .pt export for mps"
    )


def load_runner(path: str, device: str, training_config_path: str, model_type: str,
                metadata, infer_with_dropout: bool, seed: int):
    """Open `path` with the runner its extension calls for."""
    if not os.path.isfile(path):
        raise model_not_found(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        return OnnxRunner(path, device, seed)
    if ext == ".pt":
        from sequifier.infer.torch_runner import TorchRunner

        return TorchRunner(path, device, training_config_path, model_type, metadata,
                           infer_with_dropout)
    raise SequifierError(f"model_path: '{path}' is neither an .onnx nor a .pt export")
