"""The export format: the one home of what `export` writes and `infer` reads.

Version, model types, output names and file names of exported models. Kept free of
torch, so that inference with onnxruntime does not import it.

File names (in `models/`): `sequifier-NAME-TAG[-embedding].EXT` with TAG `best` or
`last` always holds the current best / last model of NAME, so one infer config keeps
working across runs; the epoch it comes from is in the export's metadata (`epoch`).
`sequifier-NAME-TAG-EPOCH[-embedding].EXT` names the same file (a hard link) with the
epoch in the name, as the original train spec lists it.
"""

import os
import re

from sequifier.errors import SequifierError

FORMAT_VERSION = 1
MODEL_TYPES = ("generative", "embedding")
EMBEDDING_OUTPUT = "embedding"
TAGS = ("best", "last")
EXTENSIONS = ("onnx", "pt")


def output_name(target: str) -> str:
    """Name of a generative export's output for `target` (ONNX forbids an output named
    like an input, and targets are usually inputs too)."""
    return f"{target}_output"


def positions_output_name(target: str) -> str:
    """Name of a generative export's every-position output for `target`: [batch,
    seq_length, n_classes] / [batch, seq_length], the prediction after each input slot."""
    return f"{target}_positions"


def query_output_name(target: str) -> str:
    """A generative export's output of a categorical `target`'s query vector at the last
    position, [batch, width]: its logits are query @ class_vectors.T + class_bias."""
    return f"{target}_query"


def query_positions_output_name(target: str) -> str:
    """The same at every position: [batch, seq_length, width]."""
    return f"{target}_query_positions"


def class_vector_names(target: str) -> list[str]:
    """The outputs holding a categorical `target`'s class vectors [n_classes, width] and
    class biases [n_classes] (weights of the graph, read without running it)."""
    return [f"{target}_class_vectors", f"{target}_class_bias"]


def output_keys(model_type: str, target_columns: list[str]) -> list[str]:
    """What a runner's outputs are keyed by: each target, or "embedding"."""
    return [EMBEDDING_OUTPUT] if model_type == "embedding" else list(target_columns)


def check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise SequifierError(f"model_type: '{model_type}' is not one of {', '.join(MODEL_TYPES)}")


def model_file_name(model_name: str, tag: str, model_type: str, extension: str, epoch: int | None = None) -> str:
    """`sequifier-NAME-TAG[-EPOCH][-embedding].EXT` (no epoch: the stable name)."""
    epoch_part = "" if epoch is None else f"-{epoch}"
    suffix = "-embedding" if model_type == "embedding" else ""
    return f"sequifier-{model_name}-{tag}{epoch_part}{suffix}.{extension}"


def parse_export_name(model_name: str, file_name: str) -> tuple[str, int | None] | None:
    """(tag, epoch or None for the stable name) of one of `model_name`'s exports, else None."""
    pattern = (rf"sequifier-{re.escape(model_name)}-(?P<tag>{'|'.join(TAGS)})(-(?P<epoch>\d+))?(-embedding)?"
               rf"\.({'|'.join(EXTENSIONS)})")
    match = re.fullmatch(pattern, file_name)
    if match is None:
        return None
    return match.group("tag"), None if match.group("epoch") is None else int(match.group("epoch"))


def export_model_name(file_name: str) -> str | None:
    """The model name in an export's file name (`sequifier-NAME-best-3.onnx` -> NAME), or None."""
    match = re.fullmatch(rf"sequifier-(?P<name>.+)-({'|'.join(TAGS)})(-\d+)?(-embedding)?\.({'|'.join(EXTENSIONS)})",
                         os.path.basename(file_name))
    return match.group("name") if match else None


def is_export_of(model_name: str, file_name: str) -> bool:
    """Whether `file_name` is one of `model_name`'s exports (stable or with an epoch)."""
    return parse_export_name(model_name, file_name) is not None


def list_exports(folder: str) -> list[str]:
    """The model files (.onnx, .pt) in `folder`: sorted names, none when there is no folder."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if n.rsplit(".", 1)[-1] in EXTENSIONS and not n.startswith("."))


def model_not_found(path: str, field: str = "model_path") -> SequifierError:
    """The error for a model file that does not exist, listing the exports beside it
    (or in it, for a folder)."""
    is_folder = os.path.isdir(path)
    folder = path.rstrip("/") if is_folder else os.path.dirname(path) or "."
    present = list_exports(folder)
    if present:
        shown = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "")
        hint = f"models in {folder}/: {shown}"
    else:
        hint = f"no models in {folder}/; run `sequifier train` first"
    what = "is a folder, not a model file" if is_folder else "not found"
    return SequifierError(f"{field}: file '{path}' {what}; {hint}")


# protobuf's limit for one message: an ONNX file with its weights inside (external_data
# off) must stay below it; the graph itself needs a little room too
ONNX_FILE_LIMIT_BYTES = 2**31 - 1
ONNX_GRAPH_ROOM_BYTES = 64 * 2**20


def onnx_size_problem(n_weights: int) -> str | None:
    """Why a model of `n_weights` weights cannot be one ONNX file, or None: an export is
    float32, and weights and graph must fit protobuf's 2 GiB."""
    size = 4 * n_weights + ONNX_GRAPH_ROOM_BYTES
    if size <= ONNX_FILE_LIMIT_BYTES:
        return None
    return (f"the model has {n_weights:,} weights ({size / 2**30:.2f} GiB as float32), above the 2 GiB that "
            "one ONNX file can hold; shrink the largest embedding tables (tie_embeddings: true, smaller "
            "dim_model or feature_embedding_dims) or set export_onnx: false and export_pt: true")
