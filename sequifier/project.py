"""The project layout: the folders and files of a project, and the names users choose
for them (torch-free).

    configs/            the commands' YAML files (`sequifier make` writes them)
    configs/metadata_configs/NAME.json    preprocess's metadata
    data/               the user's tables and preprocess's splits (NAME-splitK.*) and
                        future rows (NAME-future.parquet)
    checkpoints/ models/ logs/            train's checkpoints, exports, logs and summary
    outputs/predictions|probabilities|embeddings|evaluation/   infer and evaluate
    outputs/multirun/train/DATE/TIME/     a sweep (hydra.sweep.dir in conf/train.yaml)

Every module asks this one for a folder; file names inside a folder belong to the format
that writes them (checkpoints, exports, output tables). The sweep files (the sweep count
and each job's result) are here too, so that `multirun` and `plot` share them without
importing each other.
"""

import glob
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from sequifier.errors import shown

CONFIGS = "configs"
METADATA_CONFIGS = os.path.join(CONFIGS, "metadata_configs")
DATA = "data"
CHECKPOINTS = "checkpoints"
MODELS = "models"
LOGS = "logs"
OUTPUTS = "outputs"
PREDICTIONS = os.path.join(OUTPUTS, "predictions")
PROBABILITIES = os.path.join(OUTPUTS, "probabilities")
EMBEDDINGS = os.path.join(OUTPUTS, "embeddings")
EVALUATION = os.path.join(OUTPUTS, "evaluation")
SWEEPS = os.path.join(OUTPUTS, "multirun", "train")  # as conf/train.yaml's hydra.sweep.dir
# tracking: mlflow without tracking_uri / MLFLOW_TRACKING_URI: a SQLite store and its artifacts
# (`mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db` from the project folder)
TRACKING_STORE = os.path.join(OUTPUTS, "mlflow")
TRACKING_DB = "mlflow.db"
TRACKING_ARTIFACTS = "artifacts"
# Bytes a name may take so that every file named after it (with prefixes such as
# "sequifier-", suffixes such as "-best-0012.onnx") fits the file system's name limit.
NAME_DECORATION = 64


SUMMARY_SUFFIX = "-summary.json"  # logs/NAME-summary.json: a training run's summary


def latest_best_model(project_root: str, model_type: str = "generative") -> Optional[Tuple[str, str]]:
    """(best model file, model_name) of the project's newest training run: the newest
    logs/*-summary.json whose best export of `model_type` still exists (.onnx before .pt),
    or None."""
    logs = os.path.join(project_root, LOGS)
    names = os.listdir(logs) if os.path.isdir(logs) else []
    summaries = [os.path.join(logs, f) for f in names if f.endswith(SUMMARY_SUFFIX)]
    for path in sorted(summaries, key=os.path.getmtime, reverse=True):
        try:
            with open(path) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            continue
        best = (summary.get("models") or {}).get("best") if isinstance(summary, dict) else None
        files = [f for f in best or [] if isinstance(f, str)
                 and f.rsplit(".", 1)[0].endswith("-embedding") == (model_type == "embedding")
                 and os.path.isfile(resolve_path(project_root, f))]
        if files:
            files.sort(key=lambda f: not f.endswith(".onnx"))
            return files[0], str(summary.get("model_name"))
    return None


def resolve_path(project_root: str, path: str) -> str:
    """A config path: absolute as given, relative to `project_root` otherwise."""
    return path if os.path.isabs(path) else os.path.join(project_root, path)


def folder(project_root: str, name: str) -> str:
    """One of the project's folders (CHECKPOINTS, MODELS, LOGS ...) under `project_root`."""
    return os.path.join(project_root, name)


def user_config_path(command: str) -> str:
    """The YAML a command reads from the current folder when none is named."""
    return os.path.join(CONFIGS, f"{command}.yaml")


# ---------------------------------------------------------------- preprocess


def dataset_name(cfg) -> str:
    """The name of preprocess's outputs (`cfg`: a PreprocessConfig): `dataset_name`, or else
    data_path's file or folder name."""
    data_path = resolve_path(cfg.project_root, cfg.data_path)
    if cfg.dataset_name:
        return cfg.dataset_name
    base = os.path.basename(os.path.normpath(data_path))
    return base if os.path.isdir(data_path) else os.path.splitext(base)[0]


def metadata_path(project_root: str, name: str) -> str:
    return os.path.join(project_root, METADATA_CONFIGS, f"{name}.json")


def split_path(name: str, k: int, write_format: Optional[str]) -> str:
    """Split k of dataset `name`, relative to project_root: a file, or (write_format None)
    a folder of shards."""
    return f"{DATA}/{name}-split{k}" + (f".{write_format}" if write_format else "")


def future_rows_path(name: str) -> str:
    """Relative to project_root: the future rows preprocess sets aside (data/future_rows.py)."""
    return f"{DATA}/{name}-future.parquet"


def preprocess_work_dir(project_root: str, name: str) -> str:
    return os.path.join(project_root, DATA, f".{name}-preprocess-work")


# ---------------------------------------------------------------- infer and evaluate


def prediction_path(project_root: str, model: str, write_format: str) -> str:
    return os.path.join(project_root, PREDICTIONS, f"{model}-predictions.{write_format}")


def probability_path(project_root: str, model: str, target: str, write_format: str) -> str:
    return os.path.join(project_root, PROBABILITIES, f"{model}-{target}-probabilities.{write_format}")


def embedding_path(project_root: str, model: str, write_format: str) -> str:
    return os.path.join(project_root, EMBEDDINGS, f"{model}-embeddings.{write_format}")


def recommendation_path(project_root: str, model: str, target: str, k: int, write_format: str) -> str:
    """outputs/recommendations/MODEL-TARGET-topK.EXT: the top-k lists of infer's output_top_k."""
    return os.path.join(project_root, "outputs", "recommendations", f"{model}-{target}-top{k}.{write_format}")


def evaluation_path(project_root: str, model: str, split: str, kind: str, extension: str) -> str:
    """outputs/evaluation/MODEL-SPLIT-KIND.EXT (kind: metrics or predictions)."""
    return os.path.join(project_root, EVALUATION, f"{model}-{split}-{kind}.{extension}")


def comparison_path(project_root: str, split: str) -> str:
    """The table comparing several models evaluated on one split."""
    return os.path.join(project_root, EVALUATION, f"{split}-comparison.md")


# ---------------------------------------------------------------- sweeps

RESULT_FILE = "job_result.json"  # in each job's folder: its status, loss, metrics, overrides
SWEEP_FILE = ".sequifier-sweeps.json"  # in the sweep folder: how many sweeps started there
SWEEP_SUMMARY = "summary"  # summary.md and summary.csv in the sweep folder
SWEEP_PICTURE = "curves.png"
SWEEP_TRACKING = ".sequifier-tracking.json"  # in the sweep folder: its MLflow parent run


def sweep_folders(project_root: str) -> List[str]:
    """Sweep folders of `sequifier train -m` under project_root, relative to it."""
    pattern = os.path.join(glob.escape(project_root), SWEEPS, "*", "*")
    return sorted(os.path.relpath(p, project_root) for p in glob.glob(pattern) if os.path.isdir(p))


def is_sweep(path: str) -> bool:
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, SWEEP_FILE)) or bool(
        glob.glob(os.path.join(glob.escape(path), "*", RESULT_FILE))))


def sweep_number(sweep_dir: str) -> int:
    """How many sweeps have started in `sweep_dir` (1 for the first; 0: none recorded).

    A fixed `hydra.sweep.dir` reused by a later sweep would give its jobs the earlier
    jobs' model names, so they would resume the earlier checkpoints; the number recorded
    when a sweep starts (`multirun.start_sweep`) keeps the names of every sweep apart.
    """
    try:
        with open(os.path.join(sweep_dir, SWEEP_FILE)) as f:
            return int(json.load(f)["sweeps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_results(sweep_dir: str) -> List[Dict[str, Any]]:
    """The job results of the latest sweep in `sweep_dir`, best validation loss first, failures last.

    A sweep repeated into the same folder overwrites only the job folders it runs; the
    results an earlier sweep left in the others carry its number and are left out. A
    result without a number (written before numbers were recorded) belongs to the first.
    """
    number = sweep_number(sweep_dir)
    rows = []
    for path in glob.glob(os.path.join(glob.escape(sweep_dir), "**", RESULT_FILE), recursive=True):
        with open(path) as f:
            row = json.load(f)
        if row.get("sweep", min(number, 1)) == number:
            rows.append(row)
    return sorted(rows, key=lambda r: (r.get("best_val_loss") is None,
                                       r.get("best_val_loss") or 0.0, r.get("job", 0)))


# ---------------------------------------------------------------- user-chosen names

def name_limit(folder: str) -> int:
    """The longest name (bytes) a user-chosen name may have in `folder`'s file system."""
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    try:
        limit = os.pathconf(folder or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    return max(1, limit - NAME_DECORATION)


def name_problem(value, folder: str) -> Optional[str]:
    """Why `value` cannot be used as a literal file name in `folder` (None: it can)."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty name"
    if "\0" in value or any(ord(ch) < 32 for ch in value):
        return f"{shown(value)} contains a control character (e.g. NUL); use a plain name"
    if "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
        return (f"'{value}' must be a plain name, not a path (no '/', '\\', leading '.' or '..'), "
                "so that outputs stay inside project_root")
    limit = name_limit(folder)
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > limit:
        return (f"is {size} bytes long; names may have at most {limit} bytes on this file system "
                "(file names add prefixes and suffixes); choose a shorter name")
    return None
