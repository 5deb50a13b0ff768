"""Training: the explicit loop (AdamW from steps.py, the schedule from schedule.py), validation per epoch or every N steps,
gradient accumulation, and a clean stop on SIGTERM.

The loop is written out (no Trainer) so that resume can be exact and, on one GPU, each step can be
replayed whole as a CUDA graph (steps.py). On one process it syncs with the host only when it logs,
evaluates or checkpoints; under DDP every step also all-reduces the stop flag (`any_rank`, one `.item()`),
so that all ranks stop at the same step after a SIGTERM. The loop's steps return why it stops (`Stop`: early
stopping, or SIGTERM after a checkpoint) rather than raising it, and patience is checked in one place.
Every count here (schedule, log_every_steps, checkpoints, evaluations, max_steps) is of optimizer steps;
an optimizer step is gradient_accumulation_steps batches of batch_size rows.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import logs
from .checkpoint import STOP, Checkpointer, Progress
from .schedule import Plan, make_scheduler
from ..data import Encoded, batch_widths, collate, epoch_order, pad_multiple
from ..devices import Compute
from ..distributed import all_reduce_sum, any_rank, shard
from ..evaluate import EpochStats, epoch_validation, headline, predict, validation_metrics
from ..problem_types import better, objective
from ..settings import Settings
from .steps import (Batch, EagerStep, GraphSteps, ReplayMismatch, Step, TrainingState, current_lr, graphs_unavailable,
                    make_optimizer)


@dataclass(frozen=True)
class TrainData:
    """What the loop reads: the encoded splits and the id that pads them."""

    train: Encoded
    validation: Encoded
    pad_token_id: int


@dataclass(frozen=True)
class Stop:
    """Why the loop ended before its last step: early stopping, or the platform's SIGTERM (with its message)."""

    early: bool
    message: str = ""


@dataclass
class Outcome:
    stats: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0  # 1-based epoch whose weights the model holds at the end
    best_step: int = 0  # with eval_every_steps: the optimizer step of those weights
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
        if self.best_step:
            weights = (f"best evaluation so far (step {self.best_step})" if kept_best
                       else f"step {self.best_step}, evaluated")
        elif self.best_epoch:
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
    what = "self-check" if isinstance(error, ReplayMismatch) else "capture"
    reason = f"CUDA graph {what} failed: {_one_line(error)}"
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
    """One training run: the state, the step, the progress, and what is logged, evaluated and checkpointed."""

    def __init__(self, model: torch.nn.Module, data: TrainData, settings: Settings, compute: Compute,
                 checkpointer: Checkpointer) -> None:
        world, device = compute.world, compute.device
        torch.manual_seed(settings.seed + world.rank)  # dropout differs per rank; rank 0 alone matches 1 process
        model.to(device)
        model.train()
        self.data, self.settings, self.compute, self.checkpointer = data, settings, compute, checkpointer
        self.forward = DistributedDataParallel(model) if world.active else model
        self.plan = Plan.of(len(data.train), settings)
        eager_reason = graphs_unavailable(settings, compute)
        optimizer = make_optimizer(model, settings.optimizer, device, graphs=eager_reason is None)
        self.state = TrainingState(model, optimizer, make_scheduler(optimizer, settings.lr_scheduler_type, self.plan),
                                   torch.amp.GradScaler(device.type, enabled=compute.precision == "fp16"))
        self.progress, self.best_weights = checkpointer.restore(self.state, world) or (Progress(), None)
        self.outcome = Outcome(stats=[EpochStats(**s) for s in self.progress.stats])
        self.pad = pad_multiple(device.type)
        self.step = self._make_step(eager_reason)
        self.first_step, self.trained_samples = self.progress.global_step, 0
        # The step losses since the last evaluation; a checkpoint stores the all-rank sum, rank 0 carries it on.
        self.loss_sum = torch.tensor(self.progress.loss_sum if world.is_main else 0.0, dtype=torch.float32, device=device)

    def _batches(self, epoch: int) -> list[np.ndarray]:
        """The rows of each optimizer step of this epoch (batch_size x gradient_accumulation_steps, the last maybe fewer)."""
        s = self.settings
        return epoch_order(self.data.train.lengths, s.batch_size * s.gradient_accumulation_steps, s.seed, epoch,
                           s.group_by_length)

    def _micro_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        return np.split(rows, range(self.settings.batch_size, len(rows), self.settings.batch_size))

    def _micro_batches(self, rows: np.ndarray) -> list[Batch]:
        """This rank's share of each batch of one optimizer step, collated, each row weighted by its share of the
        step's loss: the mean over all the step's rows (its class weight included), not a mean of batch means."""
        batches = []
        for micro in self._micro_rows(rows):
            mine, share = shard(micro, self.compute.world, len(rows))
            batch = collate(self.data.train, mine, self.data.pad_token_id, self.pad)
            batch["weights"] = batch["weights"] * np.float32(share)
            batches.append(batch)
        return batches

    def _make_step(self, eager_reason: str | None) -> Step:
        """CUDA graphs for every batch width still to come when they can be used, else eager; logged either way."""
        level = logging.INFO
        if eager_reason is None:
            batches = [micro for epoch in range(self.progress.epoch, self.plan.epochs + 1)
                       for rows in self._batches(epoch) for micro in self._micro_rows(rows)]
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
                           capture_s=round(self.outcome.capture_seconds, 3), self_check=graphs.checked,
                           graphs_per_step="one" if graphs.whole else "one per batch, then clip + AdamW")
                return graphs
        logs.event("training_path", f"eager steps: {eager_reason}", level=level, path="eager", reason=eager_reason)
        return EagerStep(self.forward, self.state, self.settings, self.compute)

    def run(self) -> Outcome:
        """Every remaining epoch; a SIGTERM ends the run early with a checkpoint (see `train`)."""
        self.bar = _progress_bar(self.plan.total_steps, self.progress.global_step)
        self.start = self.interval_start = time.perf_counter()
        # A run resumed after early stopping had decided stops at once, where it stopped before.
        stop = Stop(early=True) if self._early_stop_due() else None
        with STOP.deferred():
            for epoch in range(self.progress.epoch, self.plan.epochs + 1):
                if stop is not None or (stop := self._epoch(epoch)) is not None:
                    break
        if stop is not None and stop.early:
            self.outcome.early_stopped_after = self.progress.epoch - (self.progress.step_in_epoch == 0)
        elif stop is not None:
            self.outcome.stopped, self.outcome.stopped_at_step = stop.message, self.progress.global_step
        if self.bar is not None:
            self.bar.close()
        return self._finish()

    def _epoch(self, epoch: int) -> Stop | None:
        world, progress, every = self.compute.world, self.progress, self.settings.eval_every_steps
        window = _Window(self.compute.device)
        batches = self._batches(epoch)
        for rows in batches[progress.step_in_epoch:]:
            loss = self.step(self._micro_batches(rows))
            progress.global_step += 1
            progress.step_in_epoch += 1
            self.loss_sum += loss.detach() / world.size  # summed over ranks later: the global step mean
            window.add(loss.detach() / world.size, len(rows))
            self.trained_samples += len(rows)
            if self.bar is not None:
                self.bar.update(1)
            last = progress.global_step == self.plan.total_steps
            if progress.global_step % self.settings.log_every_steps == 0 or last:
                self._log_progress(epoch, window)
                window = _Window(self.compute.device)
            if every and (progress.global_step % every == 0 or last):
                stop = self._evaluate(epoch)
            else:
                stop = self._maybe_checkpoint(boundary=progress.step_in_epoch == len(batches) or last)
            if stop is not None:
                return stop
            if last:
                break
        return self._end_epoch(epoch)

    def _log_progress(self, epoch: int, window: _Window) -> None:
        all_reduce_sum(window.loss, self.compute.world)
        now, total = time.perf_counter(), self.plan.total_steps
        elapsed, done = now - self.start, self.progress.global_step - self.first_step
        logs.event("train_progress", f"epoch {epoch} step {self.progress.global_step}/{total}",
                   epoch=epoch, step=self.progress.global_step, total_steps=total,
                   loss=round(window.loss.item() / window.steps, 6), lr=current_lr(self.state.optimizer),
                   samples_per_s=round(window.samples / max(now - window.start, 1e-9), 1),
                   world_size=self.compute.world.size, elapsed_s=round(elapsed, 2),
                   eta_s=round(elapsed / done * (total - self.progress.global_step), 1))

    def _maybe_checkpoint(self, boundary: bool) -> Stop | None:
        """Mid-epoch: every checkpoint_every_steps, and at once when the platform asked the job to stop (an epoch's
        end checkpoints anyway)."""
        progress, s = self.progress, self.settings
        periodic = s.checkpoint_every_steps and progress.global_step % s.checkpoint_every_steps == 0
        stopping = any_rank(STOP.requested, self.compute.world, self.compute.device)
        if (periodic or stopping) and not boundary:
            self._save_checkpoint()
            if stopping:
                return self._signalled(f"at step {progress.global_step}/{self.plan.total_steps}")
        return None

    def _signalled(self, where: str) -> Stop:
        """After a checkpoint: the platform asked the job to stop (SIGTERM), on any rank."""
        return Stop(early=False, message=f"interrupted by SIGTERM {where}; checkpoint saved in "
                                         f"{self.checkpointer.directory}: rerun to resume")

    def _end_epoch(self, epoch: int) -> Stop | None:
        """Per-epoch evaluation (unless eval_every_steps evaluates), the next epoch's start, a checkpoint."""
        progress = self.progress
        early = self._evaluate(epoch, checkpoint=False) if not self.settings.eval_every_steps else None
        # An evaluation at this very step has just checkpointed: a resume from there comes back here at once.
        evaluated_here = self.settings.eval_every_steps and progress.eval_step == progress.global_step
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        if not evaluated_here:
            self._save_checkpoint()
        if any_rank(STOP.requested, self.compute.world, self.compute.device):
            return self._signalled(f"after epoch {epoch}")
        return early

    def _evaluate(self, epoch: int, checkpoint: bool = True) -> Stop | None:
        """Validate, log the tutorial's row (epoch_end per epoch, `evaluation` every eval_every_steps), keep the
        best weights; a step-level evaluation checkpoints too, so a resume never repeats or loses one. Returns why the
        run stops here, if it does: SIGTERM (after a step-level evaluation's checkpoint) or early stopping."""
        world, progress, model = self.compute.world, self.progress, self.state.model
        all_reduce_sum(self.loss_sum, world)
        train_seconds, val_start = time.perf_counter() - self.interval_start, time.perf_counter()
        predictions = predict(model, self.data.validation, self.data.pad_token_id, self.settings.eval_batch_size,
                              self.compute)
        validation = epoch_validation(self.data.validation.labels, predictions, model.config.num_labels)
        stepwise = bool(self.settings.eval_every_steps)
        stats = EpochStats(epoch=epoch, train_loss=self.loss_sum.item() / (progress.global_step - progress.eval_step),
                           train_seconds=train_seconds, val_seconds=time.perf_counter() - val_start,
                           step=progress.global_step if stepwise else None, **validation)
        self.outcome.stats.append(stats)
        where = f"step {progress.global_step}/{self.plan.total_steps}" if stepwise else f"epoch {epoch}/{self.plan.epochs}"
        logs.event("evaluation" if stepwise else "epoch_end",
                   f"{where}: train loss {stats.train_loss:.4f}, val loss {stats.val_loss:.4f}, "
                   f"{headline(stats.row(), self.settings.problem_type)}",
                   **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.row().items()})
        self._keep_if_best(stats)
        self.loss_sum.zero_()
        progress.loss_sum, progress.eval_step = 0.0, progress.global_step
        progress.stats = [s.row() for s in self.outcome.stats]
        self.interval_start = time.perf_counter()
        if checkpoint:
            self._save_checkpoint()
            if any_rank(STOP.requested, world, self.compute.device):
                return self._signalled(f"after the evaluation at step {progress.global_step}/{self.plan.total_steps}")
        return Stop(early=True) if self._early_stop_due() else None

    def _early_stop_due(self) -> bool:
        """The one patience check: early_stopping_patience evaluations without improvement, and steps still to go."""
        patience = self.settings.early_stopping_patience
        return (bool(patience) and self.progress.stale_evaluations >= patience
                and self.progress.global_step < self.plan.total_steps)

    def _keep_if_best(self, stats: EpochStats) -> None:
        """select_best's weights, and early stopping's count of evaluations that did not beat the best by min_delta."""
        s, progress = self.settings, self.progress
        if s.select_best == "none":
            return
        key = objective(s.select_best, s.problem_type)[0]
        value = stats.row()[key]
        if progress.best is None or better(s.select_best, value, progress.best[key], s.early_stopping_min_delta):
            progress.stale_evaluations = 0
        else:
            progress.stale_evaluations += 1
        if _improved(s, stats, progress.best):
            progress.best = stats.row()
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.state.model.state_dict().items()}
        if self._early_stop_due():
            at = f"step {progress.global_step}" if stats.step else f"epoch {stats.epoch}"
            best_at = f"step {progress.best['step']}" if stats.step else f"epoch {progress.best['epoch']}"
            logs.event("early_stopping", f"stopping after {at}: {key} has not improved by more than "
                                         f"{s.early_stopping_min_delta:g} for {progress.stale_evaluations} evaluation(s) "
                                         f"(best {progress.best[key]:.4f}, {best_at})",
                       epoch=stats.epoch, step=progress.global_step, metric=key, best=round(progress.best[key], 6),
                       best_epoch=progress.best["epoch"], best_step=progress.best.get("step"),
                       patience=s.early_stopping_patience, min_delta=s.early_stopping_min_delta)

    def _save_checkpoint(self) -> None:
        summed = self.loss_sum.clone()
        all_reduce_sum(summed, self.compute.world)
        self.progress.loss_sum = summed.item()
        self.checkpointer.save(self.state, self.progress, self.best_weights, self.compute.world)

    def _finish(self) -> Outcome:
        """Timing, and the weights the model ends on: the best evaluation's with select_best."""
        outcome, progress = self.outcome, self.progress
        outcome.train_seconds = time.perf_counter() - self.start
        outcome.samples_per_s = self.trained_samples / max(outcome.train_seconds, 1e-9)
        # A stopped run holds the last evaluation's weights only when it stopped right there.
        if outcome.stats and (not outcome.stopped or progress.eval_step == progress.global_step):
            outcome.best_epoch, outcome.best_step = outcome.stats[-1].epoch, outcome.stats[-1].step or 0
        if progress.best is not None and self.best_weights is not None:
            self.state.model.load_state_dict(self.best_weights)
            outcome.best_epoch, outcome.best_step = progress.best["epoch"], progress.best.get("step", 0)
            # Repeats the kept evaluation's metrics last: a tuning job ranks a trial by the last value logged.
            logs.event("best_epoch_selected", f"keeping {self._named(progress.best)} (best val {self.settings.select_best})",
                       epoch=outcome.best_epoch, **({"step": outcome.best_step} if outcome.best_step else {}),
                       metric=self.settings.select_best,
                       **{k: round(v, 6) for k, v in validation_metrics(progress.best).items()})
        return outcome

    @staticmethod
    def _named(row: dict) -> str:
        return f"step {row['step']} (epoch {row['epoch']})" if row.get("step") else f"epoch {row['epoch']}"


def train(model: torch.nn.Module, data: TrainData, settings: Settings, compute: Compute,
          checkpointer: Checkpointer) -> Outcome:
    """Fine-tune `model` in place, resuming from the newest matching checkpoint; returns every evaluation's stats.

    With select_best, the model ends on the best evaluation's weights. On SIGTERM the current step
    finishes, a checkpoint is written, and the outcome says `stopped`: the model then holds the best
    epoch so far (select_best) or the current weights, for the caller to save before it exits.
    Under torch.distributed each rank trains on its share of every global batch (see distributed.py).
    """
    return _Loop(model, data, settings, compute, checkpointer).run()
