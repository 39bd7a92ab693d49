"""Experiment tracking: `tracking: mlflow` makes every train run an MLflow run.

Off by default (`tracking: null`). When on, a `train` run is one MLflow run with the
composed config as flattened params, the same scalars TensorBoard gets (per-epoch losses,
validation metrics and baselines with the epoch as step; the windowed training loss,
learning rate and gradient norm with the optimizer step as step), tags (model name,
dataset fingerprint, git commit, resume status) and, at the end, the summary JSON, the
curves PNG, the composed config and the best exported model with its signature as
artifacts. A resumed run continues the same MLflow run (its id is recorded in every
checkpoint beside the log paths); a sweep is a parent run with one child per job
(sequifier/multirun.py); `evaluate` logs its scores to the model's run.

Where: `tracking_uri`, else `MLFLOW_TRACKING_URI`, else the project's own SQLite store
`outputs/mlflow/mlflow.db` with artifacts in `outputs/mlflow/artifacts/` (MLflow 3
refuses a plain-folder store without an opt-in, and a SQLite file needs no server).

MLflow is imported only here, inside functions, and only when tracking is on: the
default path and the checks of other commands never import it. The runs are written
through `MlflowClient` with explicit run ids, never through MLflow's global active run.

Cost: metrics are buffered and written in one batch at most every `FLUSH_SECONDS` and at
the end of the run, never per step. Failure: a store that cannot be reached or written
is refused by the gate (`tracking_rules`) before any file is written; a failure after
the start is logged once, tracking stops for the rest of the run, and training and its
own files (checkpoints, logs, summary, models) go on unaffected.
"""

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any

from sequifier.config.problems import Problems
from sequifier.errors import SequifierError
from sequifier.project import TRACKING_ARTIFACTS, TRACKING_DB, TRACKING_STORE, resolve_path

logger = logging.getLogger(__name__)

TRACKERS = ("mlflow",)
URI_ENV = "MLFLOW_TRACKING_URI"
URI_SCHEMES = ("sqlite", "http", "https")
DEFAULT_EXPERIMENT = "sequifier"  # when the project folder has no name (the file system root)
# metrics are written in one batch at most this often (and at the end), never per step
FLUSH_SECONDS = 30.0
REACH_SECONDS = 5.0  # how long the gate waits for an MLflow server to answer
# MLflow's limits per log_batch call and per value
BATCH_METRICS = 1000
BATCH_PARAMS = 100
PARAM_VALUE_LIMIT = 6000
# where a checkpoint's log record keeps the run (train/logs.py `paths`)
RECORD_RUN = "mlflow_run_id"
RECORD_URI = "mlflow_tracking_uri"
TAG_MODEL = "sequifier.model_name"
TAG_RESUMED = "sequifier.resumed"
TAG_DATASET = "sequifier.dataset_fingerprint"
TAG_GIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
INSTALL_HINT = "pip install 'sequifier[mlflow]' (make install includes it)"
SQLITE_HEADER = b"SQLite format 3\x00"


# ---------------------------------------------------------------- where runs go


@dataclass
class Destination:
    """The store and experiment a command tracks to."""

    uri: str
    source: str  # what set the URI, for messages: tracking_uri, MLFLOW_TRACKING_URI or the default
    experiment: str
    default_store: bool  # the project's own SQLite store (its artifacts go beside it)


def destination(project_root: str, tracking_uri: str | None, tracking_experiment: str | None) -> Destination:
    if tracking_uri:
        uri, source = _absolute_sqlite(tracking_uri, project_root), "tracking_uri"
    elif os.environ.get(URI_ENV):
        uri, source = _absolute_sqlite(os.environ[URI_ENV], os.getcwd()), URI_ENV
    else:
        path = os.path.abspath(os.path.join(resolve_path(project_root, TRACKING_STORE), TRACKING_DB))
        uri, source = f"sqlite:///{path}", "tracking_uri"
    experiment = tracking_experiment
    if experiment is None:
        experiment = os.path.basename(os.path.abspath(project_root)) or DEFAULT_EXPERIMENT
    default_store = not tracking_uri and not os.environ.get(URI_ENV)
    return Destination(uri, source, experiment, default_store)


def _absolute_sqlite(uri: str, base: str) -> str:
    """A relative SQLite path resolved against `base` (the project for tracking_uri)."""
    path = _sqlite_path(uri)
    if path and path != ":memory:" and not os.path.isabs(path):
        return "sqlite:///" + os.path.abspath(os.path.join(base, path))
    return uri


def _sqlite_path(uri: str) -> str | None:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def store_folder(dest: Destination) -> str | None:
    """The folder of a local SQLite store (artifacts of new experiments go beside it)."""
    path = _sqlite_path(dest.uri)
    return os.path.dirname(path) if path else None


# ---------------------------------------------------------------- the rules


def tracking_rules(cfg, p: Problems) -> None:
    """`tracking`, `tracking_uri`, `tracking_experiment` of train and evaluate (read only:
    nothing is created, so a refused run leaves no store behind)."""
    if cfg.tracking is None:
        for name in ("tracking_uri", "tracking_experiment"):
            p.check(getattr(cfg, name) is None, name, "is set but tracking is off; set tracking: mlflow or remove it")
        return
    if cfg.tracking not in TRACKERS:
        p.add("tracking", f"'{cfg.tracking}' is not a supported tracker; use tracking: mlflow, or null for none")
        return
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        p.add("tracking", f"tracking: mlflow needs the mlflow package, which is not installed: {INSTALL_HINT}")
        return
    dest = destination(cfg.project_root, cfg.tracking_uri, cfg.tracking_experiment)
    p.problem(dest.source, uri_problem(dest.uri))
    p.problem("tracking_experiment", experiment_problem(dest.experiment))


def uri_problem(uri: str) -> str | None:
    """Why runs cannot be written to `uri` (None: they can), without writing anything."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        return (f"'{uri}' is a folder store, which MLflow 3 no longer writes by default; use a SQLite "
                "file, e.g. sqlite:///outputs/mlflow/mlflow.db, or an MLflow server http://HOST:PORT")
    if scheme not in URI_SCHEMES:
        return (f"'{uri}': the scheme '{scheme}' is not supported; use sqlite:///PATH.db (a local store) "
                "or http(s)://HOST:PORT (an MLflow server)")
    if scheme == "sqlite":
        return _sqlite_problem(uri)
    return _server_problem(uri)


def _sqlite_problem(uri: str) -> str | None:
    path = _sqlite_path(uri)
    if not path or path == ":memory:":
        return f"'{uri}' names no file (an in-memory store keeps nothing); use sqlite:///PATH/mlflow.db"
    if os.path.isdir(path):
        return f"'{uri}': {path} is a folder; name the store's file, e.g. sqlite:///{path}/mlflow.db"
    if os.path.exists(path):
        if not (os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK)):
            return f"the store {path} is read-only; make it writable or choose another tracking_uri"
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            return f"{path} is not a SQLite database; choose another file for the store"
        return None
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    parent = parent or "."
    if not os.path.isdir(parent):
        return f"cannot create the store {path}: {parent} is a file, not a folder; choose another tracking_uri"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the store {path}: the folder {parent} is read-only; choose another tracking_uri"
    return None


def _server_problem(uri: str) -> str | None:
    """An MLflow server answers on /health (any HTTP answer means it is there)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=REACH_SECONDS):
            return None
    except urllib.error.HTTPError:
        return None  # it answered (behind a proxy or an auth layer /health may say 401 or 404)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return (f"cannot reach the MLflow server {uri} ({reason}); start it (mlflow server --port PORT) "
                "or leave tracking_uri and MLFLOW_TRACKING_URI unset for the project's own store")


def experiment_problem(name: str) -> str | None:
    """MLflow's own check of an experiment name, and no control characters (a name with a
    line break or tab cannot be typed in `mlflow` commands nor shown in the UI's lists)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{name!r} holds a control character (line break, tab); use printable characters"
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_experiment_name

    try:
        _validate_experiment_name(name)
    except MlflowException as e:
        return f"{name!r} is refused by MLflow ({e.message}); choose a non-empty, shorter name"
    return None


# ---------------------------------------------------------------- names MLflow accepts


_NAME_REFUSED = re.compile(r"[^\w/.\- :]")


def metric_key(name: str) -> str:
    """A metric, param or tag key MLflow accepts: `hr@10` -> `hr_at_10`, other characters
    MLflow refuses -> `_` (unicode letters and digits stay)."""
    return _NAME_REFUSED.sub("_", name.replace("@", "_at_"))


def param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."


def flat_params(record: dict) -> dict[str, str]:
    """The composed config as MLflow params: dotted keys, JSON values."""
    from sequifier.train.resume import flatten

    return {metric_key(k): param_value(v) for k, v in flatten(record).items()}


# ---------------------------------------------------------------- run facts


def git_commit(folder: str) -> str | None:
    """HEAD of the git repository holding `folder`, if there is one (and git)."""
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def dataset_fingerprint(paths: list[str]) -> str:
    """BLAKE2b of the files' contents (a folder: its files, sorted) with their names:
    equal data gives equal fingerprints on every machine."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        files = [path] if not os.path.isdir(path) else sorted(
            os.path.join(d, n) for d, _, names in os.walk(path) for n in names)
        for file in files:
            digest.update(os.path.relpath(file, os.path.dirname(path)).encode() + b"\0")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def onnx_signature(path: str) -> dict:
    """Inputs and outputs of an ONNX model: name, element type, shape (names for dynamic axes)."""
    import onnx

    model = onnx.load(path, load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            tensor = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append({"name": v.name, "type": onnx.TensorProto.DataType.Name(tensor.elem_type).lower(),
                        "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


# ---------------------------------------------------------------- the run


def _mlflow():
    """MlflowClient and Metric, imported on first use (SQLAlchemy's deprecation notes about
    MLflow's own queries are MLflow's to fix, not the user's: kept off their console)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag
    return MlflowClient, Metric, Param, RunTag


def _client(uri: str):
    MlflowClient = _mlflow()[0]
    for name in ("alembic", "mlflow.store.db.utils"):  # "creating initial tables", once per store
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return MlflowClient(tracking_uri=uri)


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def experiment_id(client, dest: Destination) -> str:
    """The experiment's id, created when missing (artifacts of the project's own store go
    to outputs/mlflow/artifacts/, not to a folder of the current directory)."""
    experiment = client.get_experiment_by_name(dest.experiment)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise SequifierError(
                f"tracking_experiment: '{dest.experiment}' is deleted in {dest.uri}; restore it "
                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name")
        return experiment.experiment_id
    location = None
    folder = store_folder(dest)
    if folder is not None:
        location = os.path.join(folder, TRACKING_ARTIFACTS)
    return client.create_experiment(dest.experiment, artifact_location=location)


class TrackedRun:
    """One MLflow run, written through MlflowClient with its run id.

    `metrics` buffers; `flush` writes the buffer in batches. Any failure after the start
    is logged once and ends tracking for the run (`failed`), never the run itself."""

    def __init__(self, client, run_id: str, dest: Destination):
        self.client = client
        self.run_id = run_id
        self.dest = dest
        self.failed = False
        self._buffer: list = []
        self._flushed = time.monotonic()
        self._Metric, self._Param, self._RunTag = _mlflow()[1:]

    @property
    def record(self) -> dict[str, str]:
        """What a checkpoint keeps so that a resume continues this run."""
        return {RECORD_RUN: self.run_id, RECORD_URI: self.dest.uri}

    # ---- writing, each guarded -----------------------------------------------------

    def _guard(self, what: str, fn, *args, **kwargs) -> bool:
        if self.failed:
            return False
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                fn(*args, **kwargs)
            return True
        except Exception as e:  # noqa: BLE001  the tracker must never end the training run
            self.failed = True
            logger.warning(f"tracking: MLflow failed to {what} ({_first_line(e)}) in {self.dest.uri}; tracking "
                           f"stops for this run (run {self.run_id}), training and its files go on")
            return False

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.failed:
            return
        stamp = int(time.time() * 1000)
        self._buffer.extend(self._Metric(metric_key(k), float(v), stamp, int(step)) for k, v in values.items())
        if len(self._buffer) >= BATCH_METRICS or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        self._flushed = time.monotonic()
        for start in range(0, len(buffer), BATCH_METRICS):
            if not self._guard("log metrics", self.client.log_batch, self.run_id,
                               metrics=buffer[start:start + BATCH_METRICS], synchronous=True):
                return

    def params(self, values: dict[str, str]) -> None:
        """New params; a param the run already has with another value (a resume that changed
        a setting) becomes a tag `sequifier.changed.KEY: OLD -> NEW`, as MLflow params are fixed."""
        existing: dict[str, str] = {}
        if not self._guard("read the run's params",
                           lambda: existing.update(self.client.get_run(self.run_id).data.params)):
            return
        new = [self._Param(k, v) for k, v in values.items() if k not in existing]
        changed = {f"sequifier.changed.{k}": param_value(f"{existing[k]} -> {v}")
                   for k, v in values.items() if k in existing and existing[k] != v}
        for start in range(0, len(new), BATCH_PARAMS):
            self._guard("log params", self.client.log_batch, self.run_id, params=new[start:start + BATCH_PARAMS])
        self.tags(changed)

    def tags(self, values: dict[str, str]) -> None:
        tags = [self._RunTag(k, str(v)) for k, v in values.items()]
        for start in range(0, len(tags), BATCH_PARAMS):
            self._guard("set tags", self.client.log_batch, self.run_id, tags=tags[start:start + BATCH_PARAMS])

    def artifact(self, path: str, folder: str | None = None) -> None:
        self._guard(f"log the artifact {path}", self.client.log_artifact, self.run_id, path, folder)

    def text_artifact(self, text: str, name: str, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            self.artifact(path, folder)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED, after the buffered metrics."""
        self.flush()
        self._guard(f"mark the run {status}", self.client.set_terminated, self.run_id, status)


def start_run(dest: Destination, run_name: str, tags: dict[str, str], continue_run: dict | None = None,
              parent_run: str | None = None) -> tuple[TrackedRun, bool]:
    """(the run, whether it continues an earlier one): the run recorded in `continue_run`
    (a checkpoint's log record) when it is in this store, else a new one. A store that
    fails here is one SequifierError line, before training begins."""
    try:
        client = _client(dest.uri)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            experiment = experiment_id(client, dest)
            earlier = _earlier_run(client, continue_run, dest)
            if earlier is not None:
                client.update_run(earlier, status="RUNNING")
                return TrackedRun(client, earlier, dest), True
            run_tags = dict(tags)
            if parent_run is not None:
                run_tags[TAG_PARENT] = parent_run
            run = client.create_run(experiment, run_name=run_name, tags=run_tags)
    except SequifierError:
        raise
    except Exception as e:  # noqa: BLE001  one line at start, nothing trained or written yet
        raise SequifierError(f"{dest.source}: cannot start an MLflow run in {dest.uri} ({_first_line(e)}); "
                             "fix the store or set tracking: null") from None
    return TrackedRun(client, run.info.run_id, dest), False


def _earlier_run(client, record: dict | None, dest: Destination) -> str | None:
    """The run a checkpoint recorded, if it was tracked in this store and still exists."""
    if not record or record.get(RECORD_URI) != dest.uri or not record.get(RECORD_RUN):
        return None
    try:
        run = client.get_run(record[RECORD_RUN])
    except Exception:  # noqa: BLE001  deleted from the store since: a new run
        return None
    return run.info.run_id if run.info.lifecycle_stage == "active" else None


def find_model_run(client, dest: Destination, model_name: str) -> str | None:
    """The newest run of `model_name` in the experiment (evaluate logs to it)."""
    experiment = client.get_experiment_by_name(dest.experiment)
    if experiment is None:
        return None
    name = model_name.replace("'", "\\'")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_MODEL}` = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


# ---------------------------------------------------------------- a train run


def start_train_run(cfg, config_record: dict, data_paths: list[str], continue_run: dict | None,
                    resumed_from: str | None, context: dict | None = None) -> TrackedRun:
    """The MLflow run of a `train` run: new, or the one its checkpoint recorded (a resume).
    `context`: a sweep job's parent run and tags (sequifier/multirun.py)."""
    context = context or {}
    dest = destination(cfg.project_root, cfg.tracking_uri, cfg.tracking_experiment)
    tags = {TAG_MODEL: cfg.model_name, TAG_DATASET: dataset_fingerprint(data_paths),
            "sequifier.project_root": os.path.abspath(cfg.project_root), **context.get("tags", {})}
    commit = git_commit(cfg.project_root)
    if commit is not None:
        tags[TAG_GIT] = commit
    # a job's parent is the sweep's run when both are in this store
    parent = context.get("parent_run") if context.get("parent_uri") == dest.uri else None
    run, continued = start_run(dest, cfg.model_name, tags, continue_run, parent)
    run.tags({**tags, TAG_RESUMED: str(resumed_from is not None).lower(),
              **({"sequifier.resumed_from": resumed_from} if resumed_from else {})})
    if resumed_from is not None and not continued:
        logger.info(f"tracking: {resumed_from} records no MLflow run in {dest.uri}; this resumed run is a new "
                    f"MLflow run {run.run_id}")
    run.params(flat_params(config_record))
    verb = "continues" if continued else "is"
    logger.info(f"tracking: this run {verb} MLflow run {run.run_id} (experiment '{dest.experiment}', "
                f"{dest.uri})")
    return run


def finish_train_run(run: TrackedRun, summary: dict, summary_file: str | None, config_record: dict,
                     best_model_paths: list[str], failed: BaseException | None = None,
                     stopped: bool = False) -> None:
    """The run's artifacts (summary JSON, curves PNG, composed config, best model with its
    signature) and its end status; a run stopped by a signal (to be continued) is KILLED
    with its metrics, the rerun continues it. Nothing here can fail the training run."""
    if failed is not None or stopped:
        run.end("KILLED" if stopped or isinstance(failed, KeyboardInterrupt) else "FAILED")
        return
    import yaml

    if summary_file is not None and os.path.exists(summary_file):
        run.artifact(summary_file)
    run.text_artifact(yaml.safe_dump(config_record, sort_keys=False, allow_unicode=True), "config.yaml")
    _curves_artifact(run, summary)
    for path in best_model_paths:
        run.artifact(path, "model")
        if path.endswith(".onnx"):
            try:
                signature = onnx_signature(path)
            except Exception as e:  # noqa: BLE001
                logger.warning(f"tracking: no signature of {path} ({_first_line(e)})")
                continue
            name = os.path.splitext(os.path.basename(path))[0] + "-signature.json"
            run.text_artifact(json.dumps(signature, indent=2) + "\n", name, "model")
    run.end("FINISHED")


def _curves_artifact(run: TrackedRun, summary: dict) -> None:
    """curves.png, as `sequifier plot` draws the run (needs matplotlib: the plot extra)."""
    if not summary.get("history"):
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.info("tracking: no curves.png artifact: matplotlib is not installed (pip install 'sequifier[plot]')")
        return
    from sequifier.plot import draw, run_picture

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "curves.png")
        try:
            draw(run_picture(summary), path)
        except Exception as e:  # noqa: BLE001  a picture must not fail the run
            logger.warning(f"tracking: no curves.png artifact ({_first_line(e)})")
            return
        run.artifact(path)


# ---------------------------------------------------------------- evaluate


def evaluation_metrics(report: dict, split: str) -> dict[str, float]:
    """An evaluate report's scores as `evaluate/SPLIT/METRIC/TARGET` and the baselines as
    `evaluate/SPLIT/baseline/BASELINE/METRIC/TARGET` (counts and empty scores left out)."""
    values = {}
    for target, scores in report["targets"].items():
        rows = [("", scores["model"])] + [(f"baseline/{b}/", v) for b, v in scores["baselines"].items()]
        for prefix, metrics in rows:
            values.update({f"evaluate/{split}/{prefix}{name}/{target}": value for name, value in metrics.items()
                           if name != "count" and isinstance(value, (int, float))})
    return values


def log_evaluation(cfg, split: str, evaluated: list[tuple[str | None, str, dict, list[str]]]) -> None:
    """Per evaluated model (model name or None, model file, report, files written): its
    scores and report files go to the model's training run in the store, or, for a model
    trained without tracking, to a new run tagged with the model. The evaluation's own files
    are written already: a failing store is a warning, never an error."""
    dest = destination(cfg.project_root, cfg.tracking_uri, cfg.tracking_experiment)
    try:
        client = _client(dest.uri)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            experiment = experiment_id(client, dest)
    except Exception as e:  # noqa: BLE001
        logger.warning(f"tracking: MLflow failed to open {dest.uri} ({_first_line(e)}); the evaluation's files "
                       "are written, its scores are not tracked")
        return
    for model_name, model_path, report, files in evaluated:
        run_id = None
        try:
            run_id = find_model_run(client, dest, model_name) if model_name else None
            created = run_id is None
            if created:
                run_id = client.create_run(experiment, run_name=f"evaluate-{os.path.basename(model_path)}",
                                           tags={"sequifier.evaluates_model": model_name or model_path}).info.run_id
        except Exception as e:  # noqa: BLE001
            logger.warning(f"tracking: MLflow failed to find or make the run of {model_path} ({_first_line(e)})")
            continue
        run = TrackedRun(client, run_id, dest)
        run.tags({f"sequifier.evaluated.{metric_key(split)}": model_path})
        run.metrics(evaluation_metrics(report, split), 0)
        run.flush()
        for file in files:
            run.artifact(file, f"evaluation/{metric_key(split)}")
        if created:
            run.end("FINISHED")
        if not run.failed:
            where = "the new run" if created else "the model's training run"
            logger.info(f"tracking: evaluation of {os.path.basename(model_path)} logged to {where} {run_id} "
                        f"({dest.uri})")


# ---------------------------------------------------------------- sweeps


def start_sweep_run(cfg, name: str, sweep_dir: str) -> dict[str, str]:
    """The parent run of a sweep (its jobs' runs are its children); its record, kept in the
    sweep folder for the jobs (launched in other processes or machines). `cfg`: the
    sweep's composed config (project_root and the tracking fields)."""
    p = Problems()
    tracking_rules(cfg, p)
    p.raise_if_any()
    dest = destination(cfg.project_root, cfg.tracking_uri, cfg.tracking_experiment)
    run, _ = start_run(dest, name, {"sequifier.sweep_of": str(cfg.model_name), "sequifier.sweep": sweep_dir})
    logger.info(f"tracking: the sweep is MLflow run {run.run_id} (experiment '{dest.experiment}', {dest.uri}); "
                "each job is a child run")
    return run.record


def sweep_context(record: dict | None, job: int, overrides: str) -> dict:
    """What a sweep job's train run needs: the parent run and the job's tags."""
    if not record:
        return {}
    return {"parent_run": record[RECORD_RUN], "parent_uri": record[RECORD_URI],
            "tags": {"sequifier.sweep_job": str(job), "sequifier.overrides": overrides}}


def end_sweep_run(record: dict, files: list[str], best: float | None) -> None:
    """The sweep's summary table and curves as the parent run's artifacts; FINISHED."""
    dest = Destination(record[RECORD_URI], "tracking_uri", "", False)
    try:
        run = TrackedRun(_client(dest.uri), record[RECORD_RUN], dest)
    except Exception as e:  # noqa: BLE001  the jobs' runs are complete; only the parent's end is lost
        logger.warning(f"tracking: MLflow failed to open {dest.uri} at the sweep's end ({_first_line(e)})")
        return
    if best is not None:
        run.metrics({"best_val_loss": best}, 0)
    for path in files:
        if os.path.exists(path):
            run.artifact(path)
    run.end("FINISHED")
