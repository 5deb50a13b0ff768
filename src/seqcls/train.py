"""Training: AdamW + linear schedule, the explicit loop, per-epoch validation, and a clean stop on SIGTERM.

The loop is written out (no Trainer) so that resume can be exact and, on one GPU, each step can be
replayed whole as a CUDA graph (steps.py). It syncs with the host only when it logs or checkpoints.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_linear_schedule_with_warmup

from . import logs
from .checkpoint import STOP, Checkpointer, Progress
from .data import Encoded, batch_widths, collate, epoch_order, pad_multiple
from .devices import Compute
from .distributed import all_reduce_sum, any_rank, shard
from .errors import Interrupted
from .evaluate import EpochStats, better, epoch_validation, headline, objective, predict, validation_metrics
from .settings import Settings
from .steps import EagerStep, GraphSteps, Step, TrainingState, current_lr, graphs_unavailable, make_optimizer


@dataclass(frozen=True)
class TrainData:
    """What the loop reads: the encoded splits and the id that pads them."""

    train: Encoded
    validation: Encoded
    pad_token_id: int


@dataclass
class Outcome:
    stats: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # 1-based epoch whose weights the model holds at the end
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    path: str = "eager"  # or "cuda_graphs"
    capture_seconds: float = 0.0
    stopped: str = ""  # why training stopped early (SIGTERM); empty when every epoch ran
    stopped_at_step: int = 0
    early_stopped_after: int = 0  # the last epoch trained when early stopping ended the run

    def partial(self, kept_best: bool) -> dict[str, object] | None:
        """What a stopped run's model holds, for metrics.json and the manifest; None when every epoch ran."""
        if not self.stopped:
            return None
        if self.best_epoch:
            weights = f"best epoch so far ({self.best_epoch})" if kept_best else f"end of epoch {self.best_epoch}"
        else:
            weights = f"step {self.stopped_at_step}, mid-epoch"
        return {"reason": self.stopped, "stopped_at_step": self.stopped_at_step, "epochs_completed": len(self.stats),
                "weights": weights}


def _improved(settings: Settings, stats: EpochStats, best: dict[str, float] | None) -> bool:
    key = objective(settings.select_best, settings.problem_type)[0]
    return best is None or better(settings.select_best, stats.row()[key], best[key])


def _progress_bar(total: int, done: int):
    """A tqdm bar on stderr for a person at a terminal; stdout stays pure JSON."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)
    bar.update(done)
    return bar


def _one_line(error: BaseException) -> str:
    return (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__).splitlines()[0]


def _capture_failure(error: Exception, device: torch.device) -> str:
    """The one-line reason logged for the eager fallback, after waiting for whatever the capture left running."""
    reason = f"CUDA graph capture failed: {_one_line(error)}"
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except Exception as sync_error:  # noqa: BLE001 - reported; a broken context then fails the eager step loudly
            reason += f"; then the GPU reported {_one_line(sync_error)}"
    return reason


class _Window:
    """The steps since the last train_progress event: their summed loss (on the device), count and samples."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps = self.samples = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples


class _Loop:
    """One training run: the state, the step, the progress, and what is logged and checkpointed on the way."""

    def __init__(self, model: torch.nn.Module, data: TrainData, settings: Settings, compute: Compute,
                 checkpointer: Checkpointer) -> None:
        world, device = compute.world, compute.device
        torch.manual_seed(settings.seed + world.rank)  # dropout differs per rank; rank 0 alone matches 1 process
        model.to(device)
        model.train()
        self.data, self.settings, self.compute, self.checkpointer = data, settings, compute, checkpointer
        self.forward = DistributedDataParallel(model) if world.active else model
        self.total_steps = -(-len(data.train) // settings.batch_size) * settings.epochs
        eager_reason = graphs_unavailable(settings, compute)
        optimizer = make_optimizer(model, settings, device, graphs=eager_reason is None)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * self.total_steps),
                                                    self.total_steps)
        self.state = TrainingState(model, optimizer, scheduler,
                                   torch.amp.GradScaler(device.type, enabled=compute.precision == "fp16"))
        self.progress, self.best_weights = checkpointer.restore(self.state, world) or (Progress(), None)
        self.outcome = Outcome(stats=[EpochStats(**s) for s in self.progress.stats])
        self.pad = pad_multiple(device.type)
        self.step = self._make_step(eager_reason)
        self.first_step, self.trained_samples = self.progress.global_step, 0

    def _batches(self, epoch: int) -> list:
        s = self.settings
        return epoch_order(self.data.train.lengths, s.batch_size, s.seed, epoch, s.group_by_length)

    def _make_step(self, eager_reason: str | None) -> Step:
        """CUDA graphs for every batch width still to come when they can be used, else eager; logged either way."""
        level = logging.INFO
        if eager_reason is None:
            batches = [rows for epoch in range(self.progress.epoch, self.settings.epochs + 1) for rows in self._batches(epoch)]
            widths = batch_widths(self.data.train.lengths, batches, self.pad)
            start = time.perf_counter()
            try:
                graphs = GraphSteps(self.state, self.settings, self.compute, widths)
            # Any failure (a model whose forward syncs or branches on data, out of memory, an assertion in a
            # library): the warm-up put weights and optimizer state back, so the eager path starts clean.
            except Exception as error:  # noqa: BLE001 - a fast path that cannot be built must never end the job
                eager_reason, level = _capture_failure(error, self.compute.device), logging.WARNING
            else:
                self.outcome.path, self.outcome.capture_seconds = "cuda_graphs", time.perf_counter() - start
                logs.event("training_path", f"CUDA graphs: {len(widths)} widths captured in "
                                            f"{self.outcome.capture_seconds:.2f}s", path="cuda_graphs", widths=widths,
                           capture_s=round(self.outcome.capture_seconds, 3))
                return graphs
        logs.event("training_path", f"eager steps: {eager_reason}", level=level, path="eager", reason=eager_reason)
        return EagerStep(self.forward, self.state, self.settings, self.compute)

    def run(self) -> Outcome:
        """Every remaining epoch; a SIGTERM ends the run early with a checkpoint (see `train`)."""
        self.bar = _progress_bar(self.total_steps, self.progress.global_step)
        self.start = time.perf_counter()
        try:
            with STOP.deferred():
                for epoch in range(self.progress.epoch, self.settings.epochs + 1):
                    if self._patience_spent():  # checked first: a run resumed after the decision stops too
                        self.outcome.early_stopped_after = epoch - 1
                        break
                    self._epoch(epoch)
        except Interrupted as stop:
            self.outcome.stopped, self.outcome.stopped_at_step = str(stop), self.progress.global_step
        if self.bar is not None:
            self.bar.close()
        return self._finish()

    def _epoch(self, epoch: int) -> None:
        world, device, progress = self.compute.world, self.compute.device, self.progress
        epoch_start = time.perf_counter()
        # A checkpoint stores the all-rank sum; rank 0 carries it on.
        epoch_loss = torch.tensor(progress.epoch_loss_sum if world.is_main else 0.0, dtype=torch.float32, device=device)
        window = _Window(device)
        batches = self._batches(epoch)
        for rows in batches[progress.step_in_epoch:]:
            mine, share = shard(rows, world)
            loss = self.step(collate(self.data.train, mine, self.data.pad_token_id, self.pad), share)
            progress.global_step += 1
            progress.step_in_epoch += 1
            epoch_loss += loss.detach() / world.size  # summed over ranks below: the global batch mean
            window.add(loss.detach() / world.size, len(rows))
            self.trained_samples += len(rows)
            if self.bar is not None:
                self.bar.update(1)
            if progress.global_step % self.settings.log_every_steps == 0 or progress.global_step == self.total_steps:
                self._log_progress(epoch, window)
                window = _Window(device)
            self._maybe_checkpoint(epoch_loss, last_of_epoch=progress.step_in_epoch == len(batches))
        self._end_epoch(epoch, epoch_loss, len(batches), time.perf_counter() - epoch_start)

    def _log_progress(self, epoch: int, window: _Window) -> None:
        all_reduce_sum(window.loss, self.compute.world)
        now = time.perf_counter()
        elapsed, done = now - self.start, self.progress.global_step - self.first_step
        logs.event("train_progress", f"epoch {epoch} step {self.progress.global_step}/{self.total_steps}",
                   epoch=epoch, step=self.progress.global_step, total_steps=self.total_steps,
                   loss=round(window.loss.item() / window.steps, 6), lr=current_lr(self.state.optimizer),
                   samples_per_s=round(window.samples / max(now - window.start, 1e-9), 1),
                   world_size=self.compute.world.size, elapsed_s=round(elapsed, 2),
                   eta_s=round(elapsed / done * (self.total_steps - self.progress.global_step), 1))

    def _maybe_checkpoint(self, epoch_loss: torch.Tensor, last_of_epoch: bool) -> None:
        """Mid-epoch: every checkpoint_every_steps, and at once when the platform asked the job to stop."""
        progress, s = self.progress, self.settings
        periodic = s.checkpoint_every_steps and progress.global_step % s.checkpoint_every_steps == 0
        stopping = any_rank(STOP.requested, self.compute.world, self.compute.device)
        if (periodic or stopping) and not last_of_epoch:
            summed = epoch_loss.clone()
            all_reduce_sum(summed, self.compute.world)
            progress.epoch_loss_sum = summed.item()
            self._save_checkpoint()
            if stopping:
                raise Interrupted(f"interrupted by SIGTERM at step {progress.global_step}/{self.total_steps}; "
                                  f"checkpoint saved in {self.checkpointer.directory}: rerun to resume")

    def _end_epoch(self, epoch: int, epoch_loss: torch.Tensor, batches: int, train_seconds: float) -> None:
        """Validate, log the tutorial's row, keep the best weights, checkpoint."""
        world, progress, model = self.compute.world, self.progress, self.state.model
        all_reduce_sum(epoch_loss, world)
        val_start = time.perf_counter()
        predictions = predict(model, self.data.validation, self.data.pad_token_id, self.settings.eval_batch_size,
                              self.compute)
        validation = epoch_validation(self.data.validation.labels, predictions, model.config.num_labels)
        stats = EpochStats(epoch=epoch, train_loss=epoch_loss.item() / batches, train_seconds=train_seconds,
                           val_seconds=time.perf_counter() - val_start, **validation)
        self.outcome.stats.append(stats)
        logs.event("epoch_end", f"epoch {epoch}/{self.settings.epochs}: train loss {stats.train_loss:.4f}, "
                                f"val loss {stats.val_loss:.4f}, {headline(stats.row(), self.settings.problem_type)}",
                   **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.row().items()})
        self._keep_if_best(stats)
        progress.epoch, progress.step_in_epoch, progress.epoch_loss_sum = epoch + 1, 0, 0.0
        progress.stats = [s.row() for s in self.outcome.stats]
        self._save_checkpoint()
        if any_rank(STOP.requested, world, self.compute.device):
            raise Interrupted(f"interrupted by SIGTERM after epoch {epoch}; checkpoint saved in "
                              f"{self.checkpointer.directory}: rerun to resume")

    def _patience_spent(self) -> bool:
        patience = self.settings.early_stopping_patience
        return bool(patience) and self.progress.stale_epochs >= patience

    def _keep_if_best(self, stats: EpochStats) -> None:
        """select_best's weights, and early stopping's count of epochs that did not beat the best by min_delta."""
        s, progress = self.settings, self.progress
        if s.select_best == "none":
            return
        key = objective(s.select_best, s.problem_type)[0]
        value = stats.row()[key]
        if progress.best is None or better(s.select_best, value, progress.best[key], s.early_stopping_min_delta):
            progress.stale_epochs = 0
        else:
            progress.stale_epochs += 1
        if _improved(s, stats, progress.best):
            progress.best = stats.row()
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.state.model.state_dict().items()}
        if self._patience_spent() and stats.epoch < s.epochs:
            logs.event("early_stopping", f"stopping after epoch {stats.epoch}: {key} has not improved by more than "
                                         f"{s.early_stopping_min_delta:g} for {progress.stale_epochs} epoch(s) "
                                         f"(best {progress.best[key]:.4f}, epoch {progress.best['epoch']})",
                       epoch=stats.epoch, metric=key, best=round(progress.best[key], 6), best_epoch=progress.best["epoch"],
                       patience=s.early_stopping_patience, min_delta=s.early_stopping_min_delta)

    def _save_checkpoint(self) -> None:
        self.checkpointer.save(self.state, self.progress, self.best_weights, self.compute.world)

    def _finish(self) -> Outcome:
        """Timing, and the weights the model ends on: the best epoch's with select_best."""
        outcome, progress = self.outcome, self.progress
        outcome.train_seconds = time.perf_counter() - self.start
        outcome.samples_per_s = self.trained_samples / max(outcome.train_seconds, 1e-9)
        # Without a best epoch, a stopped run holds weights from the middle of an epoch: no whole epoch's.
        outcome.best_epoch = len(outcome.stats) if not outcome.stopped or progress.step_in_epoch == 0 else 0
        if progress.best is not None and self.best_weights is not None:
            self.state.model.load_state_dict(self.best_weights)
            outcome.best_epoch = progress.best["epoch"]
            # Repeats the kept epoch's validation metrics last: a tuning job ranks a trial by the last value logged.
            logs.event("best_epoch_selected", f"keeping epoch {outcome.best_epoch} (best val {self.settings.select_best})",
                       epoch=outcome.best_epoch, metric=self.settings.select_best,
                       **{k: round(v, 6) for k, v in validation_metrics(progress.best).items()})
        return outcome


def train(model: torch.nn.Module, data: TrainData, settings: Settings, compute: Compute,
          checkpointer: Checkpointer) -> Outcome:
    """Fine-tune `model` in place, resuming from the newest matching checkpoint; returns per-epoch stats.

    With select_best, the model ends on the best epoch's weights. On SIGTERM the current step
    finishes, a checkpoint is written, and the outcome says `stopped`: the model then holds the best
    epoch so far (select_best) or the current weights, for the caller to save before it exits.
    Under torch.distributed each rank trains on its share of every global batch (see distributed.py).
    """
    return _Loop(model, data, settings, compute, checkpointer).run()
