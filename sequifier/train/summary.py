"""The end-of-run summary: one block in the log and `logs/NAME-summary.json`.

It answers "how good is the model, and where is everything": the best epoch with its
validation loss and metrics next to the baselines, the exported model files (as
export returned them), the checkpoint, the log file and the TensorBoard folder. Sweeps
read the JSON to put each job's metrics in their summary table (sequifier/multirun.py).
"""

import json
import math
import os
from dataclasses import asdict
from typing import Any

from sequifier.io_utils import atomic_write_text
from sequifier.project import SUMMARY_SUFFIX  # the layout's: infer's model_path: null reads it too
from sequifier.train.logs import format_losses, format_number, metric_lines


def summary_path(logs_dir: str, model_name: str) -> str:
    return os.path.join(logs_dir, f"{model_name}{SUMMARY_SUFFIX}")


def build_summary(result, baselines: dict, tensorboard_dir: str | None) -> dict[str, Any]:
    """The summary of a `TrainResult` (history, model paths, log path) and its baselines."""
    best = next((r for r in result.history if r.epoch == result.best_epoch), None)
    return {
        "model_name": result.model_name,
        "best_epoch": result.best_epoch,
        "last_epoch": result.last_epoch,
        "best_val_loss": _finite(result.best_val_loss),
        "best_val_losses": dict(best.val_losses) if best else {},
        "metrics": dict(best.val_metrics) if best else {},
        "baselines": baselines,
        "models": {"best": list(result.best_model_paths), "last": list(result.last_model_paths)},
        "checkpoint": result.checkpoint_path,
        # the signal an unfinished run stopped on (continue it by running it again), or null
        "stopped": getattr(result, "stopped", None),
        "log": result.log_path,
        "tensorboard": tensorboard_dir,
        # tracking: mlflow: {mlflow_run_id, mlflow_tracking_uri}; null without tracking
        "tracking": result.tracking,
        # per epoch: losses, learning rate, validation metrics (`sequifier plot` draws them)
        "history": [asdict(r) for r in result.history],
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summary_lines(summary: dict[str, Any], targets, path: str) -> list[str]:
    """The block logged at the end of `train`."""
    lines = [f"summary of {summary['model_name']}:"]
    if summary["best_val_loss"] is None:
        lines.append("  no epoch was trained")
    else:
        per_target = summary["best_val_losses"]
        losses = f" [{format_losses(per_target)}]" if len(per_target) > 1 else ""
        lines.append(f"  best epoch {summary['best_epoch']} of {summary['last_epoch']}: validation loss "
                     f"{format_number(summary['best_val_loss'])}{losses}")
        if summary["metrics"]:
            lines += metric_lines(targets, summary["metrics"], summary["baselines"])
    models = summary["models"]["best"] + summary["models"]["last"]
    lines.append(f"  models: {', '.join(models) if models else 'none exported'}")
    if summary.get("stopped"):
        lines.append(f"  stopped by {summary['stopped']} before training ended: run the same command "
                     "again to continue from the checkpoint")
    if summary["checkpoint"]:
        lines.append(f"  checkpoint: {summary['checkpoint']}")
    lines.append(f"  log: {summary['log']}")
    if summary["tensorboard"]:
        lines.append(f"  TensorBoard: {summary['tensorboard']} "
                     f"(tensorboard --logdir {os.path.dirname(os.path.dirname(summary['tensorboard']))})")
    tracked = summary.get("tracking")
    if tracked:
        lines.append(f"  MLflow run: {tracked['mlflow_run_id']} ({tracked['mlflow_tracking_uri']})")
    lines.append(f"  this summary: {path}")
    return lines


def write_summary(path: str, summary: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def read_summary(path: str) -> dict[str, Any] | None:
    """A run's summary, or None when it is missing or unreadable (a failed run)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
