"""Command-line entry points: `sequifier <command>` and `sequifier-<command>`.

Every command composes its config with Hydra (see `config/compose.py`), validates it
once, and hands the typed dataclass to the command's runner. A `SequifierError` is
printed as `sequifier: error: ...` lines and exits with status 1; any other exception
is a bug and keeps its traceback.
"""

import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional

from sequifier.errors import SequifierError
from sequifier.signals import DEFAULT_STOP_SIGNALS, STOPPED_STATUS, Stopped, StopSignals

logger = logging.getLogger(__name__)

COMMANDS = ("preprocess", "train", "infer", "evaluate")

USAGE = """usage: sequifier <command> [--config-path FILE.yaml] [key=value ...]

commands:
  preprocess   turn a long table into training windows, splits and metadata
  train        train a causal transformer and export it (ONNX / .pt)
  infer        run an exported model and write predictions, probabilities or embeddings
               (positions=scored: every item; forecast=true: after each sequence's end)
  evaluate     score models on every item of a split against baselines: accuracy,
               top-k, cross-entropy / MAE, RMSE, written to outputs/evaluation/
               (forecast_horizon=48: a rolling-origin backtest with a skill score)
  make NAME    create a project folder NAME with commented config templates
  plot [RUN]   PNG of a run's loss and metric curves (logs/RUN-curves.png; RUN: a model
               name, default the latest run) or of a sweep's jobs side by side (RUN: the
               sweep folder, outputs/multirun/train/DATE/TIME; writes its curves.png);
               --project-root DIR when not run from the project folder

Each command reads configs/<command>.yaml from the current folder unless --config-path
names another YAML file. Hydra options work too: presets (+model_spec=gqa), overrides
(training_spec.lr=3e-4), multirun sweeps (-m), --cfg job to print the composed config.
The same commands exist as sequifier-preprocess, sequifier-train, sequifier-infer and
sequifier-evaluate.
"""


def report_and_exit(error: SequifierError) -> None:
    for line in str(error).splitlines() or ["(no message)"]:
        print(f"sequifier: error: {line}", file=sys.stderr)
    sys.exit(1)


def _run_preprocess(cfg):
    from sequifier.data.preprocess import run_preprocess

    run_preprocess(cfg)
    return None


def _run_train(cfg):
    from sequifier.multirun import job_tracking_context
    from sequifier.train.run import run_train

    # a tracked sweep's job is a child of the sweep's MLflow run
    result = run_train(cfg, tracking_context=job_tracking_context() if cfg.tracking else None)
    if result.stopped:  # a step checkpoint and the summary are written
        logger.info(f"sequifier train: stopped by {result.stopped}, checkpoint {result.checkpoint_path}; "
                    f"run the same command again to continue (exit status {STOPPED_STATUS})")
        sys.exit(STOPPED_STATUS)
    # a sweep (Optuna minimises it) optimises what picks the best epoch: select_on
    return result.objective


def _run_infer(cfg):
    from sequifier.infer import run_infer

    run_infer(cfg)
    return None


def _run_evaluate(cfg):
    from sequifier.infer.evaluate import run_evaluate

    run_evaluate(cfg)
    return None


RUNNERS: Dict[str, Callable] = {
    "preprocess": _run_preprocess,
    "train": _run_train,
    "infer": _run_infer,
    "evaluate": _run_evaluate,
}


def as_user_error(error: BaseException) -> Optional[SequifierError]:
    """The one-line error for a failure the user can fix, or None for a bug."""
    if isinstance(error, SequifierError):
        return error
    from sequifier.errors import user_os_error

    if isinstance(error, (OSError, RuntimeError)):
        return user_os_error(error, getattr(error, "filename", None) or "")
    return None


def hydra_error_line(error: BaseException) -> str:
    """Hydra's several-line composition and override-grammar messages as one line."""
    parts = []
    for e in (error, error.__cause__):
        if e is None:
            continue
        text = str(e).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.strip().startswith(("full_key:", "reference_type=",
                                                                   "object_type=", "See https://"))]
        parts.append(" ".join(lines))
    return "; ".join(p for p in parts if p) + "; check the override or preset name (see `sequifier --help`)"


def _log_to_run_folder(error: SequifierError) -> None:
    """The error in the run folder's COMMAND.log too, in its format; only through the file
    handlers, as the console gets it once, on stderr."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for line in str(error).splitlines():
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, f"sequifier: error: {line}", None, None)
        for handler in files:
            handler.handle(record)


def _stopped_error(stop: "Stopped", command: str) -> SequifierError:
    kept = ("the last complete checkpoint is kept; run the same command again to continue from it"
            if command == "train" else "no partial output was left; run the same command again")
    return SequifierError(f"{stop} before {command} finished: {kept}")


def report_stopped(stop: "Stopped", command: str) -> None:
    """A command stopped at once by a signal: one line, exit status 75."""
    print(f"sequifier: error: {_stopped_error(stop, command)}", file=sys.stderr)
    sys.exit(STOPPED_STATUS)


def make_task(command: str) -> Callable:
    def task(cfg):
        from sequifier.config.compose import to_dataclass
        from sequifier.multirun import in_multirun, job_model_name

        started = time.monotonic()
        try:
            config = to_dataclass(command, cfg)
            if command == "train":  # sweep jobs must not share model files (multirun.py)
                config.model_name = job_model_name(config.model_name)
            logger.info(f"sequifier {command}: started in {os.getcwd()}")
            result = RUNNERS[command](config)  # each runner validates its config first
            logger.info(f"sequifier {command}: finished in {time.monotonic() - started:.1f} s")
            return result
        except Stopped as e:
            _log_to_run_folder(_stopped_error(e, command))
            report_stopped(e, command)
        except (SequifierError, OSError, RuntimeError) as e:
            error = as_user_error(e)
            if error is None:
                raise  # a bug: keep the traceback
            _log_to_run_folder(error)
            if in_multirun():
                raise error from None  # the sweeper records the failed job and goes on
            report_and_exit(error)

    task.__name__ = command
    return task


def run_command(command: str, args: List[str], prog: str) -> None:
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sequifier.config import compose

    try:
        path, name, rest = compose.split_config_flags(args)
        user_path = compose.find_user_config(command, path, name)
        user_config = compose.load_user_config(command, user_path)
        rest = compose.rewrite_overrides(command, rest)
        if command == "train":  # under torchrun only rank 0 writes Hydra files
            from sequifier.train.distributed import hydra_overrides_for_rank

            rest += hydra_overrides_for_rank()
        compose.register_configs(command, user_config, rest)
    except SequifierError as e:
        report_and_exit(e)
    hydra_main = hydra.main(version_base="1.3", config_path="pkg://sequifier.conf",
                            config_name=command)(make_task(command))
    sys.argv = [prog] + rest
    # Hydra prints its errors over several lines; with HYDRA_FULL_ERROR it raises them
    # instead, so they can be reported as one line here (unless the user asked for it).
    user_wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        if user_wants_trace:
            raise
        report_and_exit(SequifierError(hydra_error_line(e)))
    except SequifierError as e:  # a failed sweep job
        report_and_exit(e)
    except Exception as e:  # noqa: BLE001  e.g. Hydra failing to open its log in a read-only folder
        error = next((as_user_error(x) for x in _chain(e) if as_user_error(x) is not None), None)
        if error is None:
            raise
        report_and_exit(error)


def _chain(error: BaseException):
    """The error and the errors it was raised from."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "make":
        from sequifier.make import make_project

        try:
            if len(rest) != 1 or rest[0].startswith("-"):
                raise SequifierError("usage: sequifier make NAME (the new project folder)")
            make_project(rest[0])
        except SequifierError as e:
            report_and_exit(e)
        return
    if command == "plot":
        plot_main(rest)
        return
    if command not in COMMANDS:
        report_and_exit(SequifierError(
            f"unknown command '{command}'; choose one of {', '.join(COMMANDS)}, make, plot"))
    _run_stoppable(command, rest, prog=f"sequifier {command}")


def _run_stoppable(command: str, args: List[str], prog: str) -> None:
    """`run_command` with the stop signals raising `Stopped` from the start (training
    replaces them with training_spec.stop_signals for its loop): whatever was being
    written is rolled back, and the command exits with status 75."""
    try:
        with StopSignals(DEFAULT_STOP_SIGNALS, graceful=False):
            run_command(command, args, prog)
    except Stopped as e:
        report_stopped(e, command)


def plot_main(args: List[str]) -> None:
    import argparse

    from sequifier.plot import plot

    parser = argparse.ArgumentParser(prog="sequifier plot", description="PNG of a run's or a sweep's curves")
    parser.add_argument("run", nargs="?", help="model name (default: the latest run) or sweep folder")
    parser.add_argument("--project-root", default=".", help="the project folder (default: the current one)")
    options = parser.parse_args(args)
    try:
        for line in plot(options.run, options.project_root):
            print(line)
    except SequifierError as e:
        report_and_exit(e)


def preprocess_main() -> None:
    _run_stoppable("preprocess", sys.argv[1:], prog="sequifier-preprocess")


def train_main() -> None:
    _run_stoppable("train", sys.argv[1:], prog="sequifier-train")


def infer_main() -> None:
    _run_stoppable("infer", sys.argv[1:], prog="sequifier-infer")


def evaluate_main() -> None:
    _run_stoppable("evaluate", sys.argv[1:], prog="sequifier-evaluate")


if __name__ == "__main__":
    main()
