"""Hydra multirun support for `sequifier train -m ...` sweeps.

Two concerns, both only active in multirun mode:

* Jobs of a sweep share `project_root`, hence `models/`, `checkpoints/` and `logs/`. Each
  job therefore trains under its own model name, `MODEL_NAME-SWEEP-N`: SWEEP names the
  sweep (its output folder, by default the start time) and N is Hydra's job number, so
  no job overwrites or resumes another's files, in this sweep or an earlier one.
* `SweepSummary`, a Hydra callback registered in `conf/train.yaml`, records each job's
  result in its output folder (`job_result.json`) and, when the sweep ends, writes
  `summary.csv` and `summary.md` to the sweep folder: one row per job with its
  overrides, model name, best validation loss and the best epoch's validation metrics
  per target (columns `TARGET/METRIC`, read from the job's `logs/NAME-summary.json`),
  best first. Results go through files
  because launchers (joblib, SLURM) run jobs in other processes or machines.
"""

import csv
import io
import json
import logging
import math
import os
import re
from typing import Any, Dict, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from sequifier.io_utils import atomic_write_text
from sequifier.project import (
    LOGS,
    RESULT_FILE,
    SWEEP_FILE,
    SWEEP_PICTURE,
    SWEEP_SUMMARY,
    SWEEP_TRACKING,
    folder,
    read_results,
    sweep_number,
)

logger = logging.getLogger(__name__)

# "sweep" (the number of the sweep in its folder, see sweep_number) is recorded, not shown
SUMMARY_COLUMNS = ("job", "status", "best_val_loss", "model_name", "overrides", "error")
METRICS_AFTER = "best_val_loss"  # metric columns follow this one


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def sweep_tag(sweep_dir: str) -> str:
    """A file-name-safe name of the sweep: the last two parts of its folder.

    The default folder outputs/multirun/train/DATE/TIME gives DATE_TIME; all jobs of a sweep
    resolve the same folder (Hydra caches `${now:...}` for the whole sweep).
    """
    parts = os.path.normpath(sweep_dir).split(os.sep)
    tag = _safe("_".join(parts[-2:]))
    number = sweep_number(sweep_dir)
    return tag if number <= 1 else f"{tag}-r{number}"


def start_sweep(sweep_dir: str) -> int:
    """Record one more sweep in `sweep_dir` (called once, before its jobs start)."""
    number = sweep_number(sweep_dir) + 1
    atomic_write_text(os.path.join(sweep_dir, SWEEP_FILE), json.dumps({"sweeps": number}))
    return number


def tagged_model_name(model_name: str, sweep_dir: str, job_num: int) -> str:
    return f"{model_name}-{sweep_tag(sweep_dir)}-{job_num}"


def job_model_name(model_name: str) -> str:
    """The model name this job trains under (unchanged outside multirun)."""
    if not in_multirun():
        return model_name
    hydra_cfg = HydraConfig.get()
    return tagged_model_name(model_name, str(hydra_cfg.sweep.dir), hydra_cfg.job.num)


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_cells(row: Dict[str, Any]) -> Dict[str, float]:
    """A job's best-epoch metrics as {"TARGET/METRIC": value} (counts left out)."""
    return {f"{target}/{name}": value
            for target, values in (row.get("metrics") or {}).items()
            for name, value in values.items() if name != "count"}


def summary_columns(rows: List[Dict[str, Any]]) -> List[str]:
    metric_columns: Dict[str, None] = {}  # ordered set, in order of first appearance
    for row in rows:
        metric_columns.update(dict.fromkeys(metric_cells(row)))
    at = SUMMARY_COLUMNS.index(METRICS_AFTER) + 1
    return list(SUMMARY_COLUMNS[:at]) + list(metric_columns) + list(SUMMARY_COLUMNS[at:])


def _flat(row: Dict[str, Any]) -> Dict[str, Any]:
    return {**{k: v for k, v in row.items() if k != "metrics"}, **metric_cells(row)}


def format_markdown(rows: List[Dict[str, Any]]) -> str:
    columns = summary_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in map(_flat, rows):
        cells = []
        for column in columns:
            value = row.get(column)
            if isinstance(value, float):
                value = f"{value:.6g}"
            cells.append("" if value is None else str(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=summary_columns(rows), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(map(_flat, rows))
    return out.getvalue()


class SweepSummary(Callback):
    """Per-job result files and the sweep's summary table (see module docstring)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        start_sweep(sweep_dir)
        if config.get("tracking") is not None:  # the sweep's MLflow parent run
            from sequifier.errors import SequifierError
            from sequifier.train.tracking import start_sweep_run

            try:
                record = start_sweep_run(config, f"{config.model_name}-{sweep_tag(sweep_dir)}", sweep_dir)
            except SequifierError:
                # Hydra turns a callback's error into a warning and starts the jobs; each
                # job's gate refuses the same settings with its one line, before any file
                return
            atomic_write_text(os.path.join(sweep_dir, SWEEP_TRACKING), json.dumps(record))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        failed = job_return.status != JobStatus.COMPLETED
        sweep_dir = str(config.hydra.sweep.dir)
        model_name = config.get("model_name")
        if isinstance(model_name, str):
            model_name = tagged_model_name(model_name, sweep_dir, config.hydra.job.num)
        job_summary = {} if failed else _job_summary(config.get("project_root"), model_name)
        result = {
            "sweep": sweep_number(sweep_dir),
            "job": int(config.hydra.job.num),
            "status": "failed" if failed else "completed",
            # the objective the job returned is the loss unless select_on names a metric:
            # the column reads the loss from the job's summary
            "best_val_loss": None if failed else _number(job_summary.get("best_val_loss",
                                                                         job_return._return_value)),
            "model_name": model_name,
            "overrides": " ".join(config.hydra.overrides.task),
            "error": str(job_return._return_value).splitlines()[0] if failed else None,
            "metrics": None if failed else job_summary.get("metrics"),
            # where the job's logs/ are, for `sequifier plot SWEEP_FOLDER`
            "project_root": os.path.abspath(config.project_root) if isinstance(config.get("project_root"), str)
            else None,
        }
        atomic_write_text(os.path.join(config.hydra.runtime.output_dir, RESULT_FILE),
                          json.dumps(result, indent=2))
        # Kept up to date after every job: Hydra's basic sweeper raises a failed job's
        # error before on_multirun_end, and a SLURM sweep can be interrupted.
        write_summary(sweep_dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        table = write_summary(str(config.hydra.sweep.dir))
        if table:
            logger.info("sweep summary (%s):\n%s",
                     os.path.join(str(config.hydra.sweep.dir), f"{SWEEP_SUMMARY}.md"), table)
            _plot_sweep(str(config.hydra.sweep.dir), str(config.get("project_root", ".")))
        _end_sweep_tracking(str(config.hydra.sweep.dir))


def sweep_tracking_record(sweep_dir: str) -> Optional[Dict[str, str]]:
    """The sweep's MLflow parent run, if it is tracked."""
    try:
        with open(os.path.join(sweep_dir, SWEEP_TRACKING)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def job_tracking_context() -> Dict[str, Any]:
    """A sweep job's MLflow parent run and tags ({} outside a tracked sweep)."""
    if not in_multirun():
        return {}
    from sequifier.train.tracking import sweep_context

    hydra_cfg = HydraConfig.get()
    return sweep_context(sweep_tracking_record(str(hydra_cfg.sweep.dir)), hydra_cfg.job.num,
                         " ".join(hydra_cfg.overrides.task))


def _end_sweep_tracking(sweep_dir: str) -> None:
    record = sweep_tracking_record(sweep_dir)
    if record is None:
        return
    from sequifier.train.tracking import end_sweep_run

    losses = [r["best_val_loss"] for r in read_results(sweep_dir) if _number(r.get("best_val_loss")) is not None]
    files = [os.path.join(sweep_dir, name) for name in (f"{SWEEP_SUMMARY}.md", f"{SWEEP_SUMMARY}.csv", SWEEP_PICTURE)]
    end_sweep_run(record, files, min(losses) if losses else None)


def _plot_sweep(sweep_dir: str, project_root: str) -> None:
    """The jobs' curves side by side in SWEEP/curves.png; a missing matplotlib or a sweep
    without curves is logged, as the sweep itself has finished."""
    from sequifier.errors import SequifierError
    from sequifier.plot import plot_sweep

    try:
        path, _ = plot_sweep(sweep_dir, project_root)
        logger.info("sweep curves: %s", path)
    except SequifierError as e:
        logger.warning("no sweep curves: %s", e)


def _job_summary(project_root: Any, model_name: Any) -> Dict[str, Any]:
    """The summary the job's training wrote (best epoch's loss and metrics), or {}."""
    from sequifier.train.summary import read_summary, summary_path

    if not isinstance(project_root, str) or not isinstance(model_name, str):
        return {}
    return read_summary(summary_path(folder(project_root, LOGS), model_name)) or {}


def write_summary(sweep_dir: str) -> Optional[str]:
    """(Re)write summary.md and summary.csv from the job results; the markdown table."""
    rows = read_results(sweep_dir)
    if not rows:
        return None
    table = format_markdown(rows)
    atomic_write_text(os.path.join(sweep_dir, f"{SWEEP_SUMMARY}.md"), table)
    atomic_write_text(os.path.join(sweep_dir, f"{SWEEP_SUMMARY}.csv"), format_csv(rows))
    return table
