"""Loading an exported model and running its forward pass, for `.onnx` and `.pt` files.

Both runners expose the same thing: `info` (what the export says about itself: type,
columns, sequence length, whether dropout was exported) and `run(inputs)`, which takes
one `[batch, seq_length]` array per input column and returns the export's outputs as
numpy arrays (`{target: logits [batch, n_classes] | values [batch]}` for generative
models, `{"embedding": [batch, dim]}` for embedding models). A runner opened with
`every_position=True` returns every position instead (`[batch, seq_length, n_classes]`
| `[batch, seq_length]`), from the same single forward pass. A runner opened with
`queries=True` returns, for each categorical target, its query vectors (`[batch, width]`,
or `[batch, seq_length, width]`) instead of logits, and holds the class vectors to score
them with in `class_vectors` ({target: (weights [n_classes, width], biases [n_classes])}):
a large catalogue is then scored a bounded chunk of rows at a time (sequifier/catalog.py),
never as one dense logits table (load_runner opens every export that has query outputs
so). Everything above this module is format-agnostic. What an export says about itself
is read in `model_info`; the `.pt` runner lives in `torch_runner` (imported only when a
`.pt` file is opened, so ONNX inference does not import torch).
"""

import logging
import os

import numpy as np

from sequifier.errors import SequifierError
from sequifier.export_format import model_not_found, output_keys
from sequifier.infer.model_info import info_from_props

logger = logging.getLogger(__name__)


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxRunner:
    """An ONNX export run with onnxruntime, pruned to the outputs this run needs."""

    def __init__(self, path: str, device: str, seed: int, every_position: bool = False,
                 queries: bool | None = False):
        import onnxruntime as ort

        proto = _read_onnx(path)
        self.info = info_from_props({p.key: p.value for p in proto.metadata_props}, path)
        self.every_position = every_position
        self._keys, self._output_names = self._choose_outputs(proto, path)
        self.class_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if queries or (queries is None and supports_queries(self.info)):
            self._use_queries(proto, path)
        proto = _keep_outputs(proto, self._output_names)
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
            self.session = ort.InferenceSession(
                proto.SerializeToString(), sess_options=options, providers=providers
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises assorted types for bad files
            raise _unloadable(path, e) from None
        self.provider = session_provider(device, self.session.get_providers(), path)
        logger.info(f"{os.path.basename(path)}: onnxruntime {ort.__version__} on {self.provider}")

    def _choose_outputs(self, proto, path: str) -> tuple[list[str], list[str]]:
        """(keys of `run`'s result, graph outputs to compute), after checking the graph's
        inputs and outputs against the export's metadata."""
        info = self.info
        initializers = {i.name for i in proto.graph.initializer}
        inputs = [i.name for i in proto.graph.input if i.name not in initializers]
        outputs = [o.name for o in proto.graph.output]
        if sorted(inputs) != sorted(info.input_columns):
            raise SequifierError(
                f"model_path: '{path}' has inputs {inputs}, which do not match its metadata "
                f"(input_columns {info.input_columns}); re-export it with `sequifier train`"
            )
        keys = output_keys(info.model_type, info.target_columns)
        last_names = _match_outputs(keys, outputs, info.output_names, path)
        dims = {o.name: [d.dim_value if d.HasField("dim_value") else None
                         for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
        info.n_classes = {
            key: dims[name][1] for key, name in zip(keys, last_names)
            if info.target_column_types.get(key) == "categorical"
            and len(dims[name]) == 2 and dims[name][1]
        }
        if not self.every_position:
            return keys, last_names
        recorded = info.position_output_names or {}
        if info.model_type != "generative" or any(recorded.get(k) not in outputs for k in keys):
            raise SequifierError(
                f"model_path: '{path}' has no every-position outputs (exported by an older "
                "sequifier, or not a generative model); re-export it with `sequifier train` "
                "to predict every position"
            )
        return keys, [recorded[k] for k in keys]

    def _use_queries(self, proto, path: str) -> None:
        """Categorical targets: query outputs instead of logits, class vectors read from
        the graph's weights (sequifier/catalog.py scores them in chunks)."""
        from onnx import numpy_helper

        info = self.info
        categorical = [t for t in info.target_columns if info.target_column_types.get(t) == "categorical"]
        recorded = (info.query_position_output_names if self.every_position else info.query_output_names) or {}
        vector_names = info.class_vector_names or {}
        outputs = {o.name for o in proto.graph.output}
        if any(recorded.get(t) not in outputs or t not in vector_names for t in categorical):
            raise supports_no_queries(path)
        weights = {i.name: i for i in proto.graph.initializer if i.name in
                   {n for t in categorical for n in vector_names[t]}}
        for t in categorical:
            if any(n not in weights for n in vector_names[t]):
                raise supports_no_queries(path)
            vectors, bias = (numpy_helper.to_array(weights[n]).astype(np.float32, copy=False)
                             for n in vector_names[t])
            self.class_vectors[t] = (vectors, bias)
        self._output_names = [recorded[k] if k in categorical else name
                              for k, name in zip(self._keys, self._output_names)]

    def reseed(self, seed: int) -> None:
        """Nothing to do: random ops were seeded when the session was created."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, inputs)
        return dict(zip(self._keys, results))


def supports_queries(info) -> bool:
    """Whether an export records what scoring its catalogues in chunks needs."""
    categorical = [t for t in info.target_columns if info.target_column_types.get(t) == "categorical"]
    return info.model_type == "generative" and all(
        t in (names or {}) for t in categorical
        for names in (info.query_output_names, info.query_position_output_names, info.class_vector_names))


def supports_no_queries(path: str) -> SequifierError:
    return SequifierError(
        f"model_path: '{path}' has no query outputs to score its catalogue in chunks (exported "
        "by an older sequifier); re-export it with `sequifier train` (overwrite: true)")


def _unloadable(path: str, error: Exception) -> SequifierError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return SequifierError(
        f"model_path: '{path}' could not be loaded as an ONNX model ({first_line[:200]})"
    )


def _read_onnx(path: str):
    import onnx

    try:
        return onnx.load(path)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors and others for bad files
        raise _unloadable(path, e) from None


def _keep_outputs(proto, names: list[str]):
    """The graph cut down to what computes `names`: onnxruntime computes every output of
    a graph whichever ones a run asks for, so unneeded ones are removed before loading."""
    if [o.name for o in proto.graph.output] == names:
        return proto
    from onnx.utils import Extractor

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    return Extractor(proto).extract_model(inputs, names)


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


GPU_INSTALL_HINT = ("install onnxruntime-gpu alone (`make install-gpu`, or pip uninstall -y onnxruntime "
                    "onnxruntime-gpu && pip install onnxruntime-gpu; see docs/gpu.md)")


def _onnx_providers(device: str, available: list[str], path: str) -> list:
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise SequifierError(
                f"device: '{device}' asked for, but this onnxruntime has no "
                f"CUDAExecutionProvider (available: {', '.join(available)}); {GPU_INSTALL_HINT}, "
                "or use device: cpu"
            )
        # CPU second: onnxruntime places the few nodes without a CUDA kernel there
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    raise SequifierError(
        f"device: '{device}' is not supported for ONNX models ('{path}'); use cpu or cuda, "
        "or a .pt export for mps"
    )


def session_provider(device: str, used: list[str], path: str) -> str:
    """The execution provider a session runs on; refuses a CPU session where a GPU was
    asked for. onnxruntime lists CUDA as available whenever onnxruntime-gpu is installed,
    but when the provider cannot load (no CUDA or cuDNN libraries of its version) it only
    logs a warning and runs on the CPU: that is an error here, not a slow surprise."""
    if device.partition(":")[0] == "cuda" and "CUDAExecutionProvider" not in used:
        raise SequifierError(
            f"device: '{device}' asked for, but onnxruntime could not start its CUDA provider for "
            f"'{path}' (session providers: {', '.join(used)}): the CUDA and cuDNN libraries "
            f"onnxruntime-gpu needs are missing or of another version; {GPU_INSTALL_HINT}, or use "
            "device: cpu"
        )
    return used[0]


def load_runner(path: str, device: str, training_config_path: str, model_type: str,
                metadata, infer_with_dropout: bool, seed: int, every_position: bool = False,
                queries: bool | None = False):
    """Open `path` with the runner its extension calls for; `queries`: categorical targets
    as query vectors to score in chunks (True), as dense logits (False, the default), or
    query vectors where the export has them (None: what infer and evaluate open with;
    older ONNX exports have no query outputs)."""
    if not os.path.isfile(path):
        raise model_not_found(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        return OnnxRunner(path, device, seed, every_position, queries)
    if ext == ".pt":
        from sequifier.infer.torch_runner import TorchRunner

        return TorchRunner(path, device, training_config_path, model_type, metadata,
                           infer_with_dropout, every_position, queries is not False)
    raise SequifierError(f"model_path: '{path}' is neither an .onnx nor a .pt export")
