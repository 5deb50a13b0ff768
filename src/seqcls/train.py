"""Training: device and precision choice, AdamW + linear schedule, the explicit loop, per-epoch validation.

The loop is written out (no Trainer) so that resume can be exact and, on one GPU, each step can be
replayed whole as a CUDA graph (steps.py). It syncs with the host only when it logs or checkpoints.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_linear_schedule_with_warmup

from . import gpu, logs
from .checkpoint import STOP, Checkpointer, Progress
from .data import Encoded, batch_widths, collate, epoch_order, pad_multiple
from .distributed import World, all_reduce_sum, any_rank, shard
from .errors import DeviceError, Interrupted, SettingsError
from .evaluate import epoch_validation, predict
from .settings import Settings
from .steps import EagerStep, GraphSteps, Step, current_lr, graphs_unavailable, make_optimizer


def pick_device(settings: Settings, world: World = World(), seen: gpu.Seen | None = None) -> torch.device:
    """The GPU of this process's local rank, or the CPU: never the CPU by surprise when a GPU was given."""
    if settings.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    seen = gpu.look() if seen is None else seen
    if seen.given:
        raise DeviceError(gpu.unusable_reason(seen, torch.__version__, torch.version.cuda, gpu.init_error()))
    if settings.device == "cuda":
        raise SettingsError("hyperparameter device=cuda but no CUDA GPU is visible "
                            "(run the container with --gpus all, or set device=auto to fall back to CPU)")
    return torch.device("cpu")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run in hardware. Elsewhere bf16 is emulated and slower than fp32."""
    try:
        return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo.read_text()) is not None
    except OSError:
        return False


def pick_precision(settings: Settings, device: torch.device) -> str:
    """auto: bf16 where the hardware computes it natively (GPUs that support it; CPUs with AVX512-BF16
    or AMX, where it trained CoLA 1.6x faster than fp32 to the same MCC), fp32 elsewhere."""
    if settings.precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if settings.precision == "fp16" and device.type != "cuda":
        raise SettingsError("hyperparameter precision=fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    if settings.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingsError("hyperparameter precision=bf16 is not supported by this GPU; use fp16 or fp32")
    return settings.precision


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_mcc: float
    val_f1: float
    train_seconds: float
    val_seconds: float


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


def _improved(metric: str, stats: EpochStats, best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    if metric == "mcc":
        return stats.val_mcc > best["val_mcc"]
    return stats.val_loss < best["val_loss"]


def _progress_bar(total: int):
    """A tqdm bar on stderr for a person at a terminal; stdout stays pure JSON."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)


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


def _make_step(forward: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
               scaler: torch.amp.GradScaler, settings: Settings, device: torch.device, precision: str,
               eager_reason: str | None, train_set: Encoded, progress: Progress, pad: int, outcome: Outcome) -> Step:
    """CUDA graphs for every batch width still to come when they can be used, else eager; logged either way."""
    level = logging.INFO
    if eager_reason is None:
        batches = [rows for epoch in range(progress.epoch, settings.epochs + 1)
                   for rows in epoch_order(train_set.lengths, settings.batch_size, settings.seed, epoch,
                                           settings.group_by_length)]
        widths = batch_widths(train_set.lengths, batches, pad)
        start = time.perf_counter()
        try:
            graphs = GraphSteps(model, optimizer, scheduler, settings, device, precision, widths)
        # Any failure (a model whose forward syncs or branches on data, out of memory, an assertion in a
        # library): the warm-up put weights and optimizer state back, so the eager path starts clean.
        except Exception as error:  # noqa: BLE001 - a fast path that cannot be built must never end the job
            eager_reason, level = _capture_failure(error, device), logging.WARNING
        else:
            outcome.path, outcome.capture_seconds = "cuda_graphs", time.perf_counter() - start
            logs.event("training_path", f"CUDA graphs: {len(widths)} widths captured in "
                                        f"{outcome.capture_seconds:.2f}s", path="cuda_graphs", widths=widths,
                       capture_s=round(outcome.capture_seconds, 3))
            return graphs
    logs.event("training_path", f"eager steps: {eager_reason}", level=level, path="eager", reason=eager_reason)
    return EagerStep(forward, model, optimizer, scheduler, scaler, settings, device, precision)


def train(model: torch.nn.Module, train_set: Encoded, val_set: Encoded, settings: Settings, pad_token_id: int,
          device: torch.device, precision: str, checkpointer: Checkpointer, world: World) -> Outcome:
    """Fine-tune `model` in place, resuming from the newest matching checkpoint; returns per-epoch stats.

    With select_best, the model ends on the best epoch's weights. On SIGTERM the current step
    finishes, a checkpoint is written, and the outcome says `stopped`: the model then holds the best
    epoch so far (select_best) or the current weights, for the caller to save before it exits.
    Under torch.distributed each rank trains on its share of every global batch (see distributed.py).
    """
    torch.manual_seed(settings.seed + world.rank)  # dropout differs per rank; rank 0 alone matches 1 process
    model.to(device)
    model.train()
    forward = DistributedDataParallel(model) if world.active else model
    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    eager_reason = graphs_unavailable(settings, device, precision, world)
    optimizer = make_optimizer(model, settings, device, graphs=eager_reason is None)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    progress, best_weights = checkpointer.restore(model, optimizer, scheduler, scaler, world) or (Progress(), None)
    outcome = Outcome(stats=[EpochStats(**s) for s in progress.stats])
    pad = pad_multiple(device.type)
    step = _make_step(forward, model, optimizer, scheduler, scaler, settings, device, precision, eager_reason,
                      train_set, progress, pad, outcome)

    def save_checkpoint() -> None:
        checkpointer.save(model, optimizer, scheduler, scaler, progress, best_weights, world)

    bar = _progress_bar(total_steps)
    if bar is not None:
        bar.update(progress.global_step)
    start = time.perf_counter()
    first_step = progress.global_step
    trained_samples = 0
    try:
        with STOP.deferred():
            for epoch in range(progress.epoch, settings.epochs + 1):
                epoch_start = time.perf_counter()
                # A checkpoint stores the all-rank sum; rank 0 carries it on.
                epoch_loss = torch.tensor(progress.epoch_loss_sum if world.is_main else 0.0, dtype=torch.float32, device=device)
                window_loss = torch.zeros((), device=device)
                window_steps = window_samples = 0
                window_start = time.perf_counter()
                batches = epoch_order(train_set.lengths, settings.batch_size, settings.seed, epoch, settings.group_by_length)
                for rows in batches[progress.step_in_epoch:]:
                    mine, share = shard(rows, world)
                    loss = step(collate(train_set, mine, pad_token_id, pad), share)
                    progress.global_step += 1
                    progress.step_in_epoch += 1
                    epoch_loss += loss.detach() / world.size  # summed over ranks below: the global batch mean
                    window_loss += loss.detach() / world.size
                    window_steps += 1
                    window_samples += len(rows)
                    trained_samples += len(rows)
                    if bar is not None:
                        bar.update(1)
                    if progress.global_step % settings.log_every_steps == 0 or progress.global_step == total_steps:
                        all_reduce_sum(window_loss, world)
                        now = time.perf_counter()
                        elapsed = now - start
                        done = progress.global_step - first_step
                        logs.event("train_progress", f"epoch {epoch} step {progress.global_step}/{total_steps}",
                                   epoch=epoch, step=progress.global_step, total_steps=total_steps,
                                   loss=round(window_loss.item() / window_steps, 6), lr=current_lr(optimizer),
                                   samples_per_s=round(window_samples / max(now - window_start, 1e-9), 1),
                                   world_size=world.size,
                                   elapsed_s=round(elapsed, 2),
                                   eta_s=round(elapsed / done * (total_steps - progress.global_step), 1))
                        window_loss.zero_()
                        window_steps = window_samples = 0
                        window_start = time.perf_counter()
                    periodic = settings.checkpoint_every_steps and progress.global_step % settings.checkpoint_every_steps == 0
                    last_of_epoch = progress.step_in_epoch == len(batches)
                    stopping = any_rank(STOP.requested, world, device)
                    if (periodic or stopping) and not last_of_epoch:
                        summed = epoch_loss.clone()
                        all_reduce_sum(summed, world)
                        progress.epoch_loss_sum = summed.item()
                        save_checkpoint()
                        if stopping:
                            raise Interrupted(f"interrupted by SIGTERM at step {progress.global_step}/{total_steps}; "
                                              f"checkpoint saved in {checkpointer.directory}: rerun to resume")
                train_seconds = time.perf_counter() - epoch_start
                all_reduce_sum(epoch_loss, world)
                val_start = time.perf_counter()
                predictions = predict(model, val_set, pad_token_id, device, precision, settings.eval_batch_size, world)
                validation = epoch_validation(val_set.labels, predictions, len(model.config.id2label))
                stats = EpochStats(epoch=epoch, train_loss=epoch_loss.item() / len(batches), train_seconds=train_seconds,
                                   val_seconds=time.perf_counter() - val_start, **validation)
                outcome.stats.append(stats)
                logs.event("epoch_end", f"epoch {epoch}/{settings.epochs}: train loss {stats.train_loss:.4f}, "
                                        f"val loss {stats.val_loss:.4f}, val MCC {stats.val_mcc:.4f}",
                           **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(stats).items()})
                if settings.select_best != "none" and _improved(settings.select_best, stats, progress.best):
                    progress.best = asdict(stats)
                    best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                progress.epoch, progress.step_in_epoch, progress.epoch_loss_sum = epoch + 1, 0, 0.0
                progress.stats = [asdict(s) for s in outcome.stats]
                save_checkpoint()
                if any_rank(STOP.requested, world, device):
                    raise Interrupted(f"interrupted by SIGTERM after epoch {epoch}; checkpoint saved in "
                                      f"{checkpointer.directory}: rerun to resume")
    except Interrupted as stop:
        outcome.stopped, outcome.stopped_at_step = str(stop), progress.global_step
    if bar is not None:
        bar.close()
    outcome.train_seconds = time.perf_counter() - start
    outcome.samples_per_s = trained_samples / max(outcome.train_seconds, 1e-9)
    # Without a best epoch, a stopped run holds weights from the middle of an epoch: no whole epoch's.
    outcome.best_epoch = len(outcome.stats) if not outcome.stopped or progress.step_in_epoch == 0 else 0
    if progress.best is not None and best_weights is not None:
        model.load_state_dict(best_weights)
        outcome.best_epoch = progress.best["epoch"]
        # Repeats the kept epoch's validation metrics last: a tuning job ranks a trial by the last value logged.
        logs.event("best_epoch_selected", f"keeping epoch {outcome.best_epoch} (best val {settings.select_best})",
                   epoch=outcome.best_epoch, metric=settings.select_best,
                   **{k: round(v, 6) for k, v in progress.best.items() if k.startswith("val_") and k != "val_seconds"})
    return outcome
