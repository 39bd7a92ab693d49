"""The training loop: epochs of optimizer steps, validation, checkpoints, early stopping.

Read top to bottom: `fit` runs epochs from `state.epoch + 1`; each epoch is
`train_epoch` (forward, masked loss, backward, step) then `validate` (loss and the
per-target metrics of train/scoring.py, on the same scored slots), then the
bookkeeping (best model, early stopping, scheduler, checkpoint). Per-batch losses stay
on the device and are read (`.item()`) only every `log_interval` batches, so the loop
does not stall an accelerator once per step.
"""

import itertools
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from sequifier.catalog import row_chunks
from sequifier.config.schema import TrainingSpec
from sequifier.errors import SequifierError
from sequifier.model.transformer import query_key
from sequifier.train import distributed
from sequifier.train.batch import Batch, mask_future
from sequifier.train.checkpoint import checkpoint_file, prune_checkpoints, save_checkpoint
from sequifier.train.device import autocast_context
from sequifier.train.logs import TrainLogger, class_share_lines, format_losses, metric_lines, metric_scalars
from sequifier.train.losses import TargetLoss
from sequifier.train.schedulers import is_plateau
from sequifier.train.scoring import ScoredTarget, reduce_sums

# metrics where lower is better; every other metric (accuracy, hr@k, ndcg@k, mrr) is higher-better
LOWER_IS_BETTER = ("loss", "cross_entropy", "mae", "rmse", "mse")


def split_select_on(select_on: str) -> tuple[str | None, str]:
    """(target column or None, metric) of `training_spec.select_on` ("ndcg@10", "item.ndcg@10")."""
    column, dot, metric = select_on.rpartition(".")
    return (column if dot else None), metric


def select_on_problems(select_on: str, available: dict[str, list[str]]) -> list[str]:
    """`select_on` names the loss or a metric computed for some target (`available`:
    {target: its metric names}); a bare metric must belong to exactly one target."""
    if select_on == "loss":
        return []
    column, metric = split_select_on(select_on)
    field = "training_spec.select_on"
    if column is not None:
        if column not in available:
            return [f"{field}: '{column}' is not a target column ({', '.join(available)})"]
        owners = [column] if metric in available[column] else []
    else:
        owners = [c for c, names in available.items() if metric in names]
    if not owners:
        choices = sorted({f"{m}" for names in available.values() for m in names})
        return [f"{field}: '{select_on}' is not a computed validation metric; use loss or one of "
                f"{', '.join(choices)} (ranking metrics follow training_spec.ranking_k)"]
    if len(owners) > 1:
        return [f"{field}: '{metric}' is computed for several targets ({', '.join(owners)}); "
                f"name one, e.g. {owners[0]}.{metric}"]
    return []


def selection_score(select_on: str, loss: float, scores: dict[str, dict[str, float]]) -> float:
    """The number to minimise for `select_on` (higher-better metrics negated)."""
    if select_on == "loss":
        return loss
    column, metric = split_select_on(select_on)
    if column is None:
        column = next(c for c, values in scores.items() if metric in values)
    value = scores[column][metric]
    return value if metric in LOWER_IS_BETTER else -value


def steps_per_epoch(n_batches: int, accumulation_steps: int) -> int:
    """Optimizer steps of an epoch of `n_batches` micro-batches (the last step may take fewer)."""
    return -(-n_batches // accumulation_steps)


def _groups(batches, k: int):
    """The micro-batches of each optimizer step: lists of `k` (the last may be shorter)."""
    iterator = iter(batches)
    while group := list(itertools.islice(iterator, k)):
        yield group


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_losses: dict[str, float]
    learning_rate: float
    samples_per_second: float
    # target -> metric name -> value (sequifier.metrics); empty in checkpoints of older runs
    val_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    val_samples_per_second: float = 0.0


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides module states."""

    epoch: int = 0  # last completed epoch
    # mid-epoch checkpoints (save_interval_steps): batches done of epoch + 1, and the sum
    # of their losses (for that epoch's mean training loss)
    batch: int = 0
    epoch_loss_sum: float = 0.0
    best_val_loss: float = math.inf  # the best epoch's validation loss
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    epochs_since_improvement: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    # the best epoch's `selection_score` (select_on); equals best_val_loss for "loss"
    best_score: float = math.inf

    def to_dict(self) -> dict:
        # not asdict(self): that would deep-copy the best model's tensors on every save
        return {
            "epoch": self.epoch, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch,
            "best_model": self.best_model, "epochs_since_improvement": self.epochs_since_improvement,
            "batch": self.batch, "epoch_loss_sum": self.epoch_loss_sum,
            "history": [asdict(r) for r in self.history], "best_score": self.best_score,
        }

    @staticmethod
    def from_dict(raw: dict) -> "TrainState":
        history = [EpochRecord(**r) for r in raw["history"]]
        return TrainState(raw["epoch"], raw.get("batch", 0), raw.get("epoch_loss_sum", 0.0), raw["best_val_loss"],
                          raw["best_epoch"], raw["best_model"], raw["epochs_since_improvement"], history,
                          raw.get("best_score", raw["best_val_loss"]))


@dataclass
class ValidationResult:
    loss: float
    losses: dict[str, float]
    class_counts: dict[str, torch.Tensor]
    metrics: dict[str, dict[str, float]]
    samples_per_second: float


class Trainer:
    def __init__(self, *, model, forward_model, optimizer, scheduler, scaler, losses: list[TargetLoss],
                 train_batches, val_batches, spec: TrainingSpec, logger: TrainLogger,
                 checkpoint_dir: str, model_name: str, device: torch.device,
                 autocast_dtype: torch.dtype | None, class_share_columns: dict[str, dict],
                 scored_targets: list[ScoredTarget], baselines: dict[str, dict[str, dict[str, float]]],
                 config_record: dict | None = None):
        self.model = model  # the bare module: states, export
        # the run's config as plain values: checkpoints record it, a resume compares it
        self.config_record = config_record
        self.trained_parameters = [p for p in model.parameters() if p.requires_grad]
        self.forward_model = forward_model  # what runs batches: maybe compiled / DDP-wrapped
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.losses = losses
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.spec = spec
        self.logger = logger
        self.checkpoint_dir = checkpoint_dir
        self.model_name = model_name
        self.device = device
        self.autocast_dtype = autocast_dtype
        # column -> inverse id map, for the columns whose predicted class shares are logged
        self.class_share_columns = class_share_columns
        self.scored_targets = scored_targets
        self.baselines = baselines  # target -> baseline -> metrics, on the validation split
        self.last_checkpoint: str | None = None
        self.saved_at: tuple[int, int] | None = None  # (epoch, batch) of the last checkpoint written
        # the run's stop signals (sequifier/signals.py); `stopped`: the signal it stopped on
        self.stop = None
        self.stopped: int | None = None
        # targets trained with SampledSoftmax; validation scores every categorical target
        # from its query vectors, a bounded chunk of rows at a time (sequifier/catalog.py)
        self.sampled_columns = [t.column for t in losses if t.sampled is not None]
        self.categorical_columns = [t.column for t in losses if t.column_type == "categorical"]

    # ---- one batch -------------------------------------------------------------------

    def batch_loss(self, batch: Batch, model, training: bool = True) -> tuple:
        """(total loss, {target: (loss sum, weight sum)}, outputs) of one batch.

        `training=False` uses each target's validation criterion (no label smoothing).
        A SampledSoftmax target is scored from its query vectors against sampled classes
        (its logits over the whole catalogue are never built)."""
        with autocast_context(self.device, self.autocast_dtype):
            outputs = model(batch.inputs, query_columns=self.sampled_columns) if self.sampled_columns \
                else model(batch.inputs)
        sums = {}
        for t in self.losses:
            if t.sampled is not None:
                mask = batch.target_mask
                weight, bias = self.model.class_vectors(t.column)
                loss_sum = t.sampled.sums(outputs[query_key(t.column)][mask], batch.targets[t.column][mask],
                                          weight, bias)
                sums[t.column] = (loss_sum, mask.sum().float())
            else:
                sums[t.column] = t.sums(outputs[t.column], batch.targets[t.column], batch.target_mask, training)
        total = sum(t.loss_weight * sums[t.column][0] / sums[t.column][1].clamp_min(1e-12)
                    for t in self.losses)
        return total, sums, outputs

    # ---- epochs ----------------------------------------------------------------------

    def fit(self, state: TrainState) -> TrainState:
        spec = self.spec
        for epoch in range(state.epoch + 1, spec.epochs + 1):
            start = time.perf_counter()
            train_loss = self.train_epoch(epoch, state)
            if train_loss is None:  # stopped by a signal mid-epoch, its step checkpoint written
                return state
            seconds = time.perf_counter() - start
            validation = self.validate()
            self._check_finite(validation.loss, f"validation loss at epoch {epoch}")
            learning_rate = self.optimizer.param_groups[0]["lr"]
            record = EpochRecord(epoch, train_loss, validation.loss, validation.losses,
                                 learning_rate, self.train_batches.n_samples / max(seconds, 1e-9),
                                 validation.metrics, validation.samples_per_second)
            state.history.append(record)
            state.epoch = epoch
            score = selection_score(spec.select_on, validation.loss, validation.metrics)
            improved = score < state.best_score
            if improved:
                state.best_score = score
                state.best_val_loss, state.best_epoch = validation.loss, epoch
                state.best_model = distributed.full_state_dict(self.model)
                state.epochs_since_improvement = 0
            else:
                state.epochs_since_improvement += 1
            self._log_epoch(record, validation, improved)
            if self.scheduler is not None and spec.scheduler_step_on == "epoch":
                if is_plateau(self.scheduler):
                    self.scheduler.step(validation.loss)
                else:
                    self.scheduler.step()
            stop = (spec.early_stopping_epochs is not None
                    and state.epochs_since_improvement >= spec.early_stopping_epochs)
            if epoch % spec.save_interval_epochs == 0 or epoch == spec.epochs or stop:
                self.save(state)
            if not stop and epoch < spec.epochs and self._stop_agreed(state):
                return state
            if stop:
                self.logger.info(
                    f"early stopping: no improvement for {state.epochs_since_improvement} epochs "
                    f"(best epoch {state.best_epoch}, validation loss {state.best_val_loss:.5f}"
                    + (f", {spec.select_on} {abs(state.best_score):.5g}" if spec.select_on != "loss" else "")
                    + f"; select_on: {spec.select_on})"
                )
                break
        return state

    def train_epoch(self, epoch: int, state: TrainState) -> float:
        """One epoch from batch `state.batch` on (0 unless resumed from a mid-epoch checkpoint).

        Batches are micro-batches: `gradient_accumulation_steps` of them make one optimizer
        step. Logging, `save_interval_steps` and per-batch schedulers count optimizer steps;
        a mid-epoch checkpoint is written after a whole step, so a resume starts one.
        """
        spec = self.spec
        k = spec.gradient_accumulation_steps
        self.forward_model.train()
        self.train_batches.set_epoch(epoch)
        n_batches = len(self.train_batches)
        n_steps = steps_per_epoch(n_batches, k)
        done, state.batch = state.batch, 0
        # the order of an epoch's batches depends only on (seed, epoch), and iterating
        # draws no random numbers: skipping the done batches replays the rest exactly
        epoch_sum = torch.tensor(state.epoch_loss_sum, device=self.device)
        window_sum = torch.zeros((), device=self.device)
        # [sum of pre-clip gradient norms, steps clipped] over the log window
        window_norms = torch.zeros(2, device=self.device)
        window_count = 0
        batches = self.logger.progress(itertools.islice(self.train_batches, done, None), n_batches - done,
                                       f"epoch {epoch}")
        index = done  # micro-batches of this epoch done
        for group in _groups(batches, k):
            loss, grad_norm = self.optimizer_step(self.masked(group, epoch, index))
            index += len(group)
            step = -(-index // k)  # optimizer steps of this epoch done
            if self.scheduler is not None and spec.scheduler_step_on == "batch":
                self.scheduler.step()
            epoch_sum += loss
            window_sum += loss
            window_norms += grad_norm
            window_count += 1
            if step % spec.log_interval == 0 or index == n_batches:
                mean = distributed.mean_across_ranks(window_sum).item() / window_count
                self._check_finite(mean, f"training loss at epoch {epoch}, batch {index}")
                if step % spec.log_interval == 0:
                    self._log_window(epoch, step, n_steps, mean, window_norms, window_count)
                window_sum.zero_()
                window_norms.zero_()
                window_count = 0
            global_step = (epoch - 1) * n_steps + step
            if spec.save_interval_steps and global_step % spec.save_interval_steps == 0 and index < n_batches:
                state.batch, state.epoch_loss_sum = index, epoch_sum.item()
                self.save(state)
                state.batch = 0
            if self.stop is not None:
                state.batch, state.epoch_loss_sum = index, epoch_sum.item()
                if self._stop_agreed(state):
                    return None  # state.batch stays: where the run stopped
                state.batch = 0
        state.epoch_loss_sum = 0.0
        return distributed.mean_across_ranks(epoch_sum).item() / max(n_steps, 1)

    def masked(self, group: list[Batch], epoch: int, done: int) -> list[Batch]:
        """A direct model's micro-batches with their fed-back inputs masked
        (data/masked_future.py); the cuts follow (seed, epoch, micro-batch number), so a
        resumed run draws the same ones. Targets and their weights are unchanged."""
        layout = self.model.layout
        if layout.direct_horizon is None:
            return group
        return [mask_future(batch, layout.masked_columns, layout.direct_horizon, (self.spec.seed, epoch, done + i + 1))
                for i, batch in enumerate(group)]

    def optimizer_step(self, group: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the micro-batches of `group`: (its loss, detached; [pre-clip
        gradient norm, clipped]).

        Each target's loss is divided by its weight over the whole group (the real target
        slots, by class weight), not per micro-batch: k micro-batches of b windows give the
        gradient of one batch of their k x b windows, however the padding falls. Under DDP
        only the last micro-batch's backward all-reduces the summed gradients.
        """
        weights = {t.column: sum(t.weight_sum(b.targets[t.column], b.target_mask) for b in group).clamp_min(1e-12)
                   for t in self.losses}
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(group):
            with distributed.gradient_sync(self.forward_model, sync=i == len(group) - 1):
                _, sums, _ = self.batch_loss(batch, self.forward_model)
                loss = sum(t.loss_weight * sums[t.column][0] / weights[t.column] for t in self.losses)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            grad_norm = self.clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            grad_norm = self.clip_gradients()
            self.optimizer.step()
        return total, grad_norm

    def clip_gradients(self) -> torch.Tensor:
        """[total gradient norm before clipping, 1 if clipped else 0]; clips to max_grad_norm.

        After DDP's backward every rank holds the same averaged gradients, so the norm,
        and with it the clipping, is the same on all ranks: the global norm, no extra
        communication. Stays a tensor: read only when the window is logged.
        """
        grads = [p.grad for p in self.trained_parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).float() if grads else torch.zeros((), device=self.device)
        if hasattr(norm, "full_tensor"):  # FSDP: a norm over sharded gradients is a DTensor
            norm = norm.full_tensor()
        limit = self.spec.max_grad_norm
        if limit is None:
            return torch.stack([norm, torch.zeros_like(norm)])
        torch.nn.utils.clip_grads_with_norm_(self.trained_parameters, limit, norm)
        return torch.stack([norm, (norm > limit).float()])

    def _log_window(self, epoch: int, step: int, n_steps: int, mean: float,
                    window_norms: torch.Tensor, window_count: int) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        norm_sum, clipped = window_norms.tolist()
        grad_norm = norm_sum / window_count
        clipping = f" (clipped {int(clipped)}/{window_count})" if self.spec.max_grad_norm is not None else ""
        # without accumulation an optimizer step is a batch, as the log has always said
        unit = "batch" if self.spec.gradient_accumulation_steps == 1 else "step"
        self.logger.info(f"epoch {epoch} {unit} {step}/{n_steps}: train loss {mean:.5f}, lr {lr:.3g}, "
                         f"grad norm {grad_norm:.3g}{clipping}")
        global_step = (epoch - 1) * n_steps + step
        self.logger.scalars({"train/loss": mean, "train/learning_rate": lr, "train/grad_norm": grad_norm},
                            global_step)

    @torch.no_grad()
    def validate(self) -> ValidationResult:
        self.forward_model.eval()
        start = time.perf_counter()
        totals = {t.column: torch.zeros(2, device=self.device) for t in self.losses}
        metric_sums = {t.column: t.empty_sums(self.device) for t in self.scored_targets}
        counts = {c: torch.zeros(self.model.layout.n_classes[c], dtype=torch.int64, device=self.device)
                  for c in self.class_share_columns}
        losses = {t.column: t for t in self.losses}
        scored = {t.column: t for t in self.scored_targets}
        for batch in self.val_batches:
            with autocast_context(self.device, self.autocast_dtype):
                outputs = self.forward_model(batch.inputs, query_columns=self.categorical_columns)
            mask = batch.target_mask
            for column, target in losses.items():
                if target.column_type == "categorical":
                    continue
                loss_sum, weight_sum = target.sums(outputs[column], batch.targets[column], mask, False)
                totals[column] += torch.stack([loss_sum.float(), weight_sum.float()])
                metric_sums[column] += scored[column].sums(outputs[column], batch)
            for column in self.categorical_columns:
                # the scored slots' query vectors against the whole catalogue, chunk by chunk
                query, truth = outputs[query_key(column)][mask], batch.targets[column][mask]
                ones = torch.ones_like(truth, dtype=torch.bool)
                seen = scored[column].seen_rows(batch)
                for start, end in row_chunks(len(truth), self.model.layout.n_classes[column]):
                    logits = self.model.scores(query[start:end], column)
                    rows = truth[start:end]
                    loss_sum, weight_sum = losses[column].sums(logits, rows, ones[start:end], False)
                    totals[column] += torch.stack([loss_sum.float(), weight_sum.float()])
                    metric_sums[column] += scored[column].row_sums(
                        logits, rows, None if seen is None else seen[start:end])
                    if column in counts:
                        counts[column] += torch.bincount(logits.argmax(dim=-1), minlength=len(counts[column]))
        losses = {}
        for t in self.losses:
            loss_sum, weight_sum = distributed.sum_across_ranks(totals[t.column]).tolist()
            losses[t.column] = loss_sum / weight_sum if weight_sum > 0 else 0.0
        total = sum(t.loss_weight * losses[t.column] for t in self.losses)
        counts = {c: distributed.sum_across_ranks(v).cpu() for c, v in counts.items()}
        metric_sums = reduce_sums(metric_sums)
        scores = {t.column: t.metrics(metric_sums[t.column]) for t in self.scored_targets}
        per_second = self.val_batches.n_samples / max(time.perf_counter() - start, 1e-9)
        return ValidationResult(total, losses, counts, scores, per_second)

    # ---- bookkeeping -----------------------------------------------------------------

    def _check_finite(self, value: float, what: str) -> None:
        if not math.isfinite(value):
            kept = f"; last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else ""
            raise SequifierError(
                f"{what} is {value}: training stopped without saving this state{kept}; lower "
                "training_spec.learning_rate or check the data for extreme values"
            )

    def _log_epoch(self, record: EpochRecord, validation: ValidationResult, improved: bool) -> None:
        marker = " (best)" if improved else ""
        per_target = f" [{format_losses(validation.losses)}]" if len(validation.losses) > 1 else ""
        self.logger.info(
            f"epoch {record.epoch}/{self.spec.epochs}: train loss {record.train_loss:.5f}, "
            f"validation loss {record.val_loss:.5f}{marker}{per_target}, lr {record.learning_rate:.3g}, "
            f"{record.samples_per_second:.0f} samples/s"
        )
        scalars = {"epoch/train_loss": record.train_loss, "epoch/validation_loss": record.val_loss,
                   "epoch/learning_rate": record.learning_rate,
                   "epoch/samples_per_second": record.samples_per_second}
        scalars.update({f"epoch/validation_loss/{c}": v for c, v in validation.losses.items()})
        scalars.update(metric_scalars(validation.metrics, self.baselines))
        self.logger.scalars(scalars, record.epoch)
        for line in metric_lines(self.scored_targets, validation.metrics, self.baselines):
            self.logger.info(line)
        for column, counts in validation.class_counts.items():
            self.logger.info(class_share_lines(column, counts, self.class_share_columns[column]))

    def _stop_agreed(self, state: TrainState) -> bool:
        """Whether a stop signal arrived (on any rank: they agree with one all-reduce, so
        all stop after the same step); if so, the state is saved, once, where it stands."""
        if self.stop is None:
            return False
        signum = torch.tensor(float(self.stop.signum or 0), device=self.device)
        signum = int(distributed.max_across_ranks(signum).item())
        if not signum:
            return False
        self.stopped = signum
        if self.saved_at != (state.epoch, state.batch):
            self.save(state)
        return True

    def save(self, state: TrainState) -> None:
        # gathered on every rank (collective under FSDP), written by rank 0
        self.saved_at = (state.epoch, state.batch)
        model_state = distributed.full_state_dict(self.model)
        optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        if not distributed.is_main_process():
            return
        path = checkpoint_file(self.checkpoint_dir, self.model_name, state.epoch, state.batch)
        save_checkpoint(path, {
            "model_name": self.model_name,
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "state": state.to_dict(),
            "config": self.config_record,
            "logs": self.logger.paths,
        })
        self.last_checkpoint = path
        self.logger.info(f"checkpoint saved: {path}")
        if self.spec.keep_last_checkpoints:
            for removed in prune_checkpoints(self.checkpoint_dir, self.model_name,
                                             self.spec.keep_last_checkpoints, state.best_epoch):
                self.logger.info(f"checkpoint removed (keep_last_checkpoints: {self.spec.keep_last_checkpoints}): "
                                 f"{removed}")
