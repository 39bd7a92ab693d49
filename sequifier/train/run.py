"""`run_train(cfg)`: the `sequifier train` command.

Sets up everything the loop needs from the config (device, data, model, losses,
metrics and their baselines, optimizer, scheduler, logging), resumes from the latest
checkpoint when asked, trains, exports the best and the last model, and ends with the
run's summary (log block + logs/NAME-summary.json).
"""

import contextlib
import dataclasses
import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import torch

from sequifier.config.metadata import Metadata, read_metadata
from sequifier.config.schema import DEFAULT_TOP_K, TrainConfig, TrainingSpec
from sequifier.errors import SequifierError
from sequifier.export_format import is_export_of, list_exports, parse_export_name
from sequifier.gate import validate
from sequifier.io_utils import clean_leftovers
from sequifier.project import CHECKPOINTS, LOGS, MODELS, folder, resolve_path
from sequifier.run_lock import model_lock
from sequifier.signals import StopSignals, signal_name
from sequifier.train import distributed
from sequifier.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    set_rng_states,
)
from sequifier.train.data import check_rank_division, host_batches, make_batch_sources, split_path
from sequifier.train.device import (
    autocast_dtype,
    configure_matmul,
    determinism,
    resolve_device,
    seed_everything,
    uses_grad_scaler,
)
from sequifier.train.logs import TrainLogger, baseline_lines
from sequifier.train.loop import EpochRecord, Trainer, TrainState, steps_per_epoch
from sequifier.train.losses import build_target_losses
from sequifier.train.optimizers import build_optimizer, describe_decay, parameter_groups
from sequifier.train.resume import (
    Change,
    applied_changes,
    apply_changes,
    check_resumable,
    compare,
    config_record,
)
from sequifier.train.schedulers import CUSTOM_SCHEDULERS, build_scheduler, total_scheduler_steps
from sequifier.train.scoring import measure_baselines, scored_targets, training_statistics
from sequifier.train.summary import build_summary, summary_lines, summary_path, write_summary
from sequifier.train.tracking import finish_train_run, start_train_run


@dataclass
class TrainResult:
    model_name: str
    best_val_loss: float
    best_epoch: int
    last_epoch: int
    best_model_paths: list[str] = field(default_factory=list)
    last_model_paths: list[str] = field(default_factory=list)
    checkpoint_path: str | None = None  # latest checkpoint written or resumed from
    resumed_from: str | None = None
    log_path: str | None = None
    history: list[EpochRecord] = field(default_factory=list)
    # the best epoch's `select_on` score, lower is better (the validation loss, or a
    # higher-is-better metric negated): a sweep's objective
    objective: float = math.inf
    # target -> baseline -> metrics on the validation split (sequifier.metrics)
    baselines: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    summary_path: str | None = None  # logs/NAME-summary.json (rank 0 of a run writes it)
    # the signal the run stopped on (SIGTERM, ...), its step checkpoint written; None: it ran to the end
    stopped: str | None = None
    tracking: dict[str, str] | None = None  # tracking: mlflow: the MLflow run (train/tracking.py)

    @property
    def best_metrics(self) -> dict[str, dict[str, float]]:
        """The validation metrics of the best epoch, per target."""
        return next((r.val_metrics for r in self.history if r.epoch == self.best_epoch), {})


def run_train(cfg: TrainConfig, export: bool = True, tracking_context: dict | None = None) -> TrainResult:
    """Train `cfg`'s model; `export=False` skips the final model export (tests, sweeps).

    On a `training_spec.stop_signals` signal the loop saves a step checkpoint and the
    summary and returns a result with `stopped` set (the CLI exits with status 75); outside
    the loop a signal raises `signals.Stopped` (nothing partial is left either way).
    `tracking_context`: a sweep job's MLflow parent run and tags (sequifier/multirun.py).
    """
    validate("train", cfg)  # on every rank, before any file is touched
    with StopSignals(cfg.training_spec.stop_signals, graceful=False) as stop:
        if distributed.context().enabled or os.environ.get("RANK", "0") != "0":
            result = _run_train(cfg, export, tracking_context)  # a rank of a run whose launcher holds the lock
        else:
            with model_lock(folder(cfg.project_root, CHECKPOINTS), cfg.model_name):
                result = _run_train(cfg, export, tracking_context)
        if result.stopped is not None:  # a launcher's own handler (submitit: requeue) comes next
            stop.hand_over(getattr(signal, result.stopped))
        return result


def _run_train(cfg: TrainConfig, export: bool, tracking_context: dict | None = None) -> TrainResult:
    spec = cfg.training_spec
    metadata = read_metadata(resolve_path(cfg.project_root, cfg.metadata_config_path))
    if distributed.needs_launch(spec):  # start (or join, under torchrun) the DDP ranks
        if not distributed.launched_by_torchrun():  # torchrun's ranks check for themselves
            check_rank_division(cfg, metadata, spec.world_size)
        return distributed.launch(run_train, (cfg, export, tracking_context), spec)
    device = resolve_device(distributed.rank_device(spec.device))
    if device.type == "cuda":  # the current device is what FSDP's mesh, compile and kernels use
        torch.cuda.set_device(device)
    folders = {name: folder(cfg.project_root, name) for name in (CHECKPOINTS, MODELS, LOGS)}
    resume, stale = _resume_or_stale(cfg, folders)
    with determinism(spec.enforce_determinism):
        return _train(cfg, metadata, device, folders, resume, stale, export, tracking_context)


@dataclass
class Resume:
    """The checkpoint a run continues, and what changed since it was written."""

    path: str
    checkpoint: dict
    changes: list[Change] | None  # None: the checkpoint records no config to compare with


def _train(cfg: TrainConfig, metadata: Metadata, device: torch.device, folders: dict[str, str],
           resume: Resume | None, stale: list[str], export: bool,
           tracking_context: dict | None = None) -> TrainResult:
    from sequifier.model.transformer import ColumnLayout, build_model, tied_parameter_saving

    spec = cfg.training_spec
    layout = ColumnLayout.from_config(cfg, metadata)
    class_share = _class_share_columns(cfg, metadata)
    losses = build_target_losses(spec, layout.target_columns, layout.target_column_types, metadata, device)
    train_batches, val_batches = make_batch_sources(cfg, metadata, layout.input_columns, device)
    targets = scored_targets(layout.target_columns, layout.target_column_types, metadata, spec.accuracy_top_k,
                             spec.ranking_k, spec.exclude_seen)
    # before the first file of the run: a split without scored slots is refused here
    if device.type == "cuda":  # counted on the host: one pass of the split, no model
        with host_batches(train_batches):
            statistics = training_statistics(targets, train_batches, torch.device("cpu"))
    else:
        statistics = training_statistics(targets, train_batches, device)
    baselines = measure_baselines(targets, train_batches, val_batches, device, statistics)
    for loss in losses:
        if loss.sampled is not None:  # negatives are drawn by the training targets' popularity
            loss.sampled.set_proposal(statistics[0][loss.column])

    seed_everything(spec.seed)  # weights, dropout; shuffling is seeded per epoch
    model = build_model(cfg, metadata).to(device)
    if resume is not None:  # the full weights, before FSDP shards them
        _restore_weights(resume, model)
    forward_model = distributed.wrap_model(model, spec, device)
    # after wrapping: under FSDP the optimizer must hold the sharded parameters
    optimizer = build_optimizer(parameter_groups(model, spec.optimizer, spec.weight_decay_on),
                                spec.optimizer, spec.learning_rate)
    # a warm-up longer than the run is refused here, before any file is touched
    total_steps = total_scheduler_steps(spec.epochs, steps_per_epoch(len(train_batches),
                                                                     spec.gradient_accumulation_steps),
                                        spec.scheduler_step_on)
    scheduler = build_scheduler(optimizer, spec.scheduler, spec.scheduler_step_on, total_steps)
    amp_dtype = autocast_dtype(device, spec.layer_autocast, spec.layer_type_dtypes)
    scaler = torch.amp.GradScaler(device.type) if uses_grad_scaler(device, amp_dtype) else None
    matmul_precision = configure_matmul(device, spec.enforce_determinism)

    state = TrainState()
    resume_path = resume.path if resume is not None else None
    if resume is not None:
        state = _restore(resume, model, optimizer, scheduler, scaler)
    start_epoch = state.epoch
    # the MLflow run starts before anything is removed: a store failing now loses nothing
    tracker = _start_tracking(cfg, metadata, resume, tracking_context)
    # only now, with data, model and losses built, are the replaced run's files removed
    if stale and distributed.is_main_process():
        for path in stale:
            os.remove(path)

    if spec.compile:
        forward_model = torch.compile(forward_model)

    logger = TrainLogger(folders[LOGS], cfg.model_name, enabled=distributed.is_main_process(),
                         continues=resume.checkpoint.get("logs") if resume is not None else None,
                         tracker=tracker)
    try:
        n_params = sum(p.numel() for p in model.parameters())
        tied = (f" ({tied_parameter_saving(model):,} fewer than untied: tie_embeddings "
                f"{', '.join(model.tied_columns)})" if model.tied_columns else "")
        logger.info(
            f"training {cfg.model_name}: {n_params:,} parameters{tied}, {train_batches.n_samples} training "
            f"and {val_batches.n_samples} validation windows, device {device}"
            + (f", autocast {amp_dtype}" if amp_dtype else "")
            + (", loss scaling" if scaler is not None else "")
            + (f", float32 matmul precision {matmul_precision}" if device.type == "cuda" else "")
            + (f", {spec.gradient_accumulation_steps} accumulated batches of {spec.batch_size} per optimizer step"
               if spec.gradient_accumulation_steps > 1 else "")
        )
        logger.info(describe_decay(model, optimizer, spec.weight_decay_on))
        for note in _unused_setting_notes(spec, device, amp_dtype, layout.target_column_types):
            logger.info(note)
        # a run killed after its last checkpoint but before its export left no models
        exports_missing = resume is not None and _exports_missing(cfg, folders[MODELS])
        if resume is not None:
            _log_resume(cfg, resume, state, logger, exports_missing)
        for line in baseline_lines(targets, baselines):
            logger.info(line)
        trainer = Trainer(
            model=model, forward_model=forward_model, optimizer=optimizer, scheduler=scheduler,
            scaler=scaler, losses=losses, train_batches=train_batches, val_batches=val_batches,
            spec=spec, logger=logger, checkpoint_dir=folders[CHECKPOINTS],
            model_name=cfg.model_name, device=device, autocast_dtype=amp_dtype,
            class_share_columns=class_share, scored_targets=targets, baselines=baselines,
            config_record=config_record(cfg),
        )
        trainer.last_checkpoint = resume_path
        if spec.stop_signals:
            trainer.stop = StopSignals(spec.stop_signals, graceful=True)
            with trainer.stop:
                state = trainer.fit(state)
        else:
            state = trainer.fit(state)
        result = TrainResult(
            model_name=cfg.model_name, best_val_loss=state.best_val_loss, best_epoch=state.best_epoch,
            last_epoch=state.epoch,
            checkpoint_path=trainer.last_checkpoint, resumed_from=resume_path, log_path=logger.path,
            history=list(state.history), baselines=baselines, objective=state.best_score,
            stopped=signal_name(trainer.stopped) if trainer.stopped else None,
            tracking=tracker.record if tracker is not None else None,
        )
        if result.stopped:
            where = f"batch {state.batch} of epoch {state.epoch + 1}" if state.batch else f"after epoch {state.epoch}"
            logger.info(f"stopped by {result.stopped} at {where}: checkpoint {trainer.last_checkpoint}; run the "
                        f"same command again to continue (models are exported when training ends)")
        # a resumed run that trained nothing leaves its models as they are, unless asked
        nothing_new = (resume is not None and state.epoch == start_epoch and not cfg.overwrite
                       and not exports_missing)
        if result.stopped:
            pass  # the models of an unfinished run are exported when it is continued and ends
        elif export and not nothing_new:
            export_model = model
            if distributed.is_sharded(model):  # export an unsharded copy of the weights
                weights = distributed.full_state_dict(model)  # collective: every rank
                export_model = build_model(cfg, metadata)
                if weights:
                    export_model.load_state_dict(weights)
            if distributed.is_main_process():
                _export(cfg, export_model, layout, state, folders[MODELS], result, logger)
        elif nothing_new:
            _keep_exports(cfg, folders[MODELS], result)
        if not result.stopped:
            logger.hparams(config_record(cfg), {"best_val_loss": state.best_val_loss,
                                                "best_epoch": state.best_epoch, "last_epoch": state.epoch})
        if distributed.is_main_process():
            result.summary_path = summary_path(folders[LOGS], cfg.model_name)
            summary = build_summary(result, baselines, logger.tensorboard_dir)
            write_summary(result.summary_path, summary)
            for line in summary_lines(summary, targets, result.summary_path):
                logger.info(line)
            if tracker is not None:  # a stopped run's MLflow run is KILLED until a rerun continues it
                finish_train_run(tracker, summary, result.summary_path, config_record(cfg),
                                 result.best_model_paths, stopped=result.stopped is not None)
    except BaseException as e:
        if tracker is not None:  # the MLflow run ends FAILED (KILLED on Ctrl-C), its metrics kept
            finish_train_run(tracker, {}, None, {}, [], failed=e)
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            logger.close()
        raise
    logger.close()
    return result


def _start_tracking(cfg: TrainConfig, metadata: Metadata, resume: Resume | None,
                    context: dict | None):
    """The run's MLflow run (rank 0 only), or None without `tracking`."""
    if cfg.tracking is None or not distributed.is_main_process():
        return None
    data = [resolve_path(cfg.project_root, cfg.metadata_config_path)]
    data += [split_path(cfg, metadata, k) for k in (0, 1)]
    return start_train_run(cfg, config_record(cfg), data, resume.checkpoint.get("logs") if resume else None,
                           resume.path if resume else None, context)


def _unused_setting_notes(spec, device: torch.device, amp_dtype: torch.dtype | None,
                          target_column_types: dict[str, str]) -> list[str]:
    """Log lines for settings this run accepts but does not apply, so none is ignored silently."""
    notes = []
    if spec.accuracy_top_k != DEFAULT_TOP_K and "categorical" not in target_column_types.values():
        notes.append(
            f"training_spec.accuracy_top_k ({spec.accuracy_top_k}) is not used: top-k accuracy "
            "is reported for categorical targets, and this run has only real ones"
        )
    if spec.num_workers > 0 and spec.load_full_data_to_ram and not spec.distributed:
        # In-RAM batches are one index_select per column; worker processes would only add
        # inter-process copies. Workers pay off where there is I/O: lazy or DDP shard loading.
        notes.append(
            f"training_spec.num_workers ({spec.num_workers}) is not used with load_full_data_to_ram: "
            "true: batches are gathered in this process from tensors already in RAM; loader "
            "workers apply to lazy loading (load_full_data_to_ram: false) and distributed runs"
        )
    if spec.max_ram_gb != TrainingSpec.max_ram_gb and spec.load_full_data_to_ram:
        # the cache bound belongs to lazy loading; in RAM (or streamed with every piece kept,
        # as a distributed run does with load_full_data_to_ram: true) nothing is evicted
        where = ("each rank keeps every piece of its shard it reads" if spec.distributed
                 else "the splits are loaded into RAM whole")
        notes.append(
            f"training_spec.max_ram_gb ({spec.max_ram_gb:g}) is not used with load_full_data_to_ram: true: "
            f"{where}; set load_full_data_to_ram: false to bound the cache by max_ram_gb"
        )
    if spec.scheduler.get("name") in CUSTOM_SCHEDULERS and spec.scheduler_step_on == "epoch":
        notes.append(
            f"training_spec.scheduler_step_on: epoch: {spec.scheduler['name']} moves once per epoch, so its "
            "warm-up and decay come in whole epochs; set scheduler_step_on: batch for a per-batch schedule"
        )
    if spec.data_parallelism != "ddp" and not spec.distributed:
        notes.append(
            f"training_spec.data_parallelism ({spec.data_parallelism}) is not used: distributed is "
            "false, so the model is not sharded; set distributed: true"
        )
    if spec.world_size > 1 and not spec.distributed:
        notes.append(
            f"training_spec.world_size ({spec.world_size}) is not used: distributed is false, so "
            "this run trains in one process; set distributed: true for DDP"
        )
    if spec.backend != TrainingSpec.backend and not spec.distributed:
        notes.append(
            f"training_spec.backend ({spec.backend}) is not used: distributed is false, so "
            "no process group is started; set distributed: true for DDP"
        )
    if spec.layer_autocast and amp_dtype is None:
        notes.append(
            f"training_spec.layer_autocast: no autocast on {device.type} for a float32 model "
            "(bfloat16 without native CPU support is many times slower); put layers in "
            "bfloat16/float16 with layer_type_dtypes to train in reduced precision"
        )
    return notes


def _log_resume(cfg: TrainConfig, resume: Resume, state: TrainState, logger: TrainLogger,
                exports_missing: bool) -> None:
    where = f"batch {state.batch} of epoch {state.epoch + 1}" if state.batch else f"after epoch {state.epoch}"
    logger.info(f"resuming from {resume.path} ({where})")
    if resume.changes is None:
        logger.info(f"{resume.path} records no config (written by an older sequifier): changes since "
                    "it cannot be listed; architecture changes fail when its weights are loaded")
    for change in applied_changes(resume.changes or []):
        logger.info(f"changed since the checkpoint, applied: {change}")
    if state.epoch >= cfg.training_spec.epochs:
        if cfg.overwrite:
            action = "exporting its best and last states again (overwrite: true)"
        elif exports_missing:
            action = "exporting its best and last states (the run that trained them ended before its export)"
        else:
            action = "models left as they are (set overwrite: true to export them again)"
        logger.info(f"{cfg.model_name} has already trained {state.epoch} of training_spec.epochs="
                    f"{cfg.training_spec.epochs} epochs; nothing left to train (raise training_spec.epochs "
                    f"to continue); {action}")


def _exports_missing(cfg: TrainConfig, models_dir: str) -> bool:
    """Whether a best or last export this config asks for is not in `models_dir`."""
    from sequifier.export import planned_exports

    return any(not os.path.exists(p) for tag in ("best", "last") for p, _, _ in planned_exports(cfg, models_dir, tag))


def _keep_exports(cfg: TrainConfig, models_dir: str, result: TrainResult) -> None:
    """The result names the exports already there (nothing new was trained)."""
    from sequifier.export import planned_exports

    for tag in ("best", "last"):
        paths = [p for p, _, _ in planned_exports(cfg, models_dir, tag) if os.path.exists(p)]
        setattr(result, f"{tag}_model_paths", paths)


def _restore_weights(resume: Resume, model) -> None:
    path, checkpoint = resume.path, resume.checkpoint
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise SequifierError(
            f"checkpoint '{path}' does not fit this model_spec ({str(e).splitlines()[0]}); "
            "set training_spec.continue_training: false and overwrite: true to start afresh"
        ) from None


def _restore(resume: Resume, model, optimizer, scheduler, scaler) -> TrainState:
    """Optimizer, scheduler, scaler, progress and RNG states (the weights are loaded already)."""
    path, checkpoint = resume.path, resume.checkpoint
    try:
        distributed.load_optimizer_state(model, optimizer, checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise SequifierError(
            f"checkpoint '{path}' does not fit this optimizer or training_spec.data_parallelism "
            f"({str(e).splitlines()[0]}); "
            "set training_spec.continue_training: false and overwrite: true to start afresh"
        ) from None
    if scheduler is not None and checkpoint["scheduler"] is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    apply_changes(applied_changes(resume.changes or []), optimizer, scheduler)
    # Last, so the RNG continues exactly where the checkpointed run left it.
    set_rng_states(checkpoint["rng"])
    return TrainState.from_dict(checkpoint["state"])


def _model_files(models_dir: str, model_name: str) -> list[str]:
    return [os.path.join(models_dir, n) for n in list_exports(models_dir) if is_export_of(model_name, n)]


def _resume_or_stale(cfg: TrainConfig, folders: dict[str, str]) -> tuple[Resume | None, list[str]]:
    """(checkpoint to resume from, earlier outputs this run replaces); refuses unless asked.

    With continue_training and a checkpoint of this model_name, training resumes, unless
    the config changed in a way the checkpoint cannot follow (`resume.check_resumable`). Else
    earlier checkpoints/models of this model_name are only replaced with `overwrite: true`
    (they are deleted once training is set up, so a later resume cannot pick up a stale
    checkpoint, and a run that fails while setting up loses nothing).
    """
    spec = cfg.training_spec
    clean_leftovers([folders[CHECKPOINTS], folders[MODELS], folders[LOGS]])  # logs: the summary
    if spec.continue_training:
        latest = latest_checkpoint(folders[CHECKPOINTS], cfg.model_name)
        if latest is not None:
            checkpoint = load_checkpoint(latest)
            recorded = checkpoint.get("config")
            changes = None if recorded is None else compare(recorded, config_record(cfg))
            check_resumable(changes or [], latest, cfg.model_name)
            return Resume(latest, checkpoint, changes), []
    old = [p for _, p in list_checkpoints(folders[CHECKPOINTS], cfg.model_name)]
    old += _model_files(folders[MODELS], cfg.model_name)
    summary = summary_path(folders[LOGS], cfg.model_name)
    if os.path.exists(summary):
        old.append(summary)
    if old and not cfg.overwrite:
        hint = "" if spec.continue_training else "set training_spec.continue_training: true to resume, "
        raise SequifierError(
            f"model_name '{cfg.model_name}': outputs of an earlier run exist ({old[0]}"
            f"{' and more' if len(old) > 1 else ''}); {hint}set overwrite: true to replace them, "
            "or choose another model_name"
        )
    return None, old


def _class_share_columns(cfg: TrainConfig, metadata: Metadata) -> dict[str, dict[int, Any]]:
    """column -> id -> value of the targets whose class shares are logged (the gate's
    `class_share_rule` has checked that they are categorical targets)."""
    return {c: metadata.inverse_id_map(c) for c in cfg.training_spec.class_share_log_columns or []}


def _export(cfg, model, layout, state: TrainState, models_dir: str, result: TrainResult,
            logger: TrainLogger) -> None:
    """Export the best and the last state via sequifier.export (tags "best" / "last").

    The stable names always hold the current best/last model; a resumed run replaces
    its earlier exports, and epoch-named twins of earlier epochs are removed.
    """
    from sequifier.export import export_models

    resumed = result.resumed_from is not None
    export_cfg = dataclasses.replace(cfg, overwrite=True) if resumed else cfg
    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()
    try:
        for tag, epoch, weights in (("best", state.best_epoch, state.best_model),
                                    ("last", state.epoch, last_state)):
            if weights is None:
                continue
            model.load_state_dict(weights)
            extra = {"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch}
            paths = [str(p) for p in export_models(model, layout, export_cfg, models_dir, tag, epoch, extra)]
            if tag == "best":
                result.best_model_paths = paths
            else:
                result.last_model_paths = paths
            logger.info(f"exported {tag} model (epoch {epoch}): {', '.join(paths)}")
    finally:
        model.load_state_dict(last_state)
        model.train(was_training)
    _remove_stale_epoch_twins(cfg, models_dir, state)


def _remove_stale_epoch_twins(cfg, models_dir: str, state: TrainState) -> None:
    """Epoch-named exports of this model other than the current best and last epoch."""
    current = {("best", state.best_epoch), ("last", state.epoch)}
    for name in list_exports(models_dir):
        parsed = parse_export_name(cfg.model_name, name)
        if parsed is not None and parsed[1] is not None and parsed not in current:
            os.remove(os.path.join(models_dir, name))
