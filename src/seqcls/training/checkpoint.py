"""Training state that survives preemption: atomic checkpoints, exact resume, and SIGTERM handling.

A checkpoint holds everything the loop needs to continue as if it had never stopped: weights,
optimizer, scheduler and scaler state, RNG states, the epoch and optimizer step within it (the data order
is a pure function of seed and epoch), the running loss since the last evaluation, every evaluation's
stats and the best one so far.
Files are written to a temporary name and renamed; they load with `torch.load(weights_only=True)`
and safetensors, never arbitrary pickle. The newest checkpoint and one fallback are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .. import logs
from ..atomic import replacing
from ..distributed import World, gather_objects
from ..errors import Interrupted, UserError
from ..settings import OPERATIONAL
from .steps import TrainingState

FORMAT_VERSION = 1
KEEP = 2
NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def fingerprint(settings: dict[str, Any], model_source: str, data_files: list[dict[str, object]], world_size: int) -> str:
    """What a checkpoint must match to be resumed: the math-relevant settings, the model, the data bytes,
    and the number of processes (each rank has its own dropout RNG stream)."""
    relevant = {k: v for k, v in sorted(settings.items()) if k not in OPERATIONAL}  # those that change the math
    digests = sorted(f"{f['channel']}:{f['sha256']}" for f in data_files)
    payload = json.dumps({"settings": relevant, "model": model_source, "data": digests, "world_size": world_size},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Progress:
    """Where the loop is: `epoch` is 1-based; `step_in_epoch` optimizer steps of it are done."""

    epoch: int = 1
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0  # the sum of the step losses since the last evaluation (float32, summed over ranks)
    eval_step: int = 0  # global_step of the last evaluation
    stats: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # EpochStats of the best evaluation, when select_best is on
    best_file: str = ""
    stale_evaluations: int = 0  # evaluations in a row without an early_stopping_min_delta improvement on the best


class StopSignal:
    """SIGTERM handler: inside `deferred()` it only raises a flag the loop checks after each step
    (so the step finishes and a checkpoint is written); elsewhere it stops the job at once."""

    def __init__(self) -> None:
        self.requested = False
        self._deferred = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self._deferred:
            raise Interrupted("interrupted by SIGTERM (platform stop or spot reclaim) before training; rerun to retry")
        logs.warning("stop_requested", "SIGTERM received: finishing the current step, then checkpointing")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """One run's training: a request from an earlier run in this process is forgotten (an earlier SIGTERM
        outside a run already ended its job)."""
        self.requested, self._deferred = False, True
        try:
            yield
        finally:
            self._deferred = False


STOP = StopSignal()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Owns the checkpoint folder of one run."""

    def __init__(self, directory: Path, run_fingerprint: str, ignore_mismatch: bool) -> None:
        self.directory = directory
        self.fingerprint = run_fingerprint
        self.ignore_mismatch = ignore_mismatch

    def _checkpoints(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if NAME.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, state: TrainingState, progress: Progress, best_weights: dict[str, torch.Tensor] | None,
             world: World) -> None:
        """Write best weights (if new) then the checkpoint, atomically; prune all but the newest KEEP.

        Every rank calls this (the RNG states are gathered); rank 0 alone writes.
        """
        rng_states = gather_objects(_rng_state(), world)
        if not world.is_main:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if best_weights is not None and progress.best is not None:
            step = progress.best.get("step")  # with eval_every_steps
            progress.best_file = f"best-step{step:09d}.safetensors" if step else f"best-epoch{progress.best['epoch']:04d}.safetensors"
            if not (self.directory / progress.best_file).exists():
                with replacing(self.directory / progress.best_file) as tmp:
                    save_file({k: v.contiguous() for k, v in best_weights.items()}, tmp)
        path = self.directory / f"ckpt-{progress.global_step:09d}.pt"
        with replacing(path) as tmp:
            torch.save({
                "format": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "scaler": state.scaler.state_dict(),
                "rng": rng_states,
                "progress": progress.__dict__,
            }, tmp)
        for old in self._checkpoints()[KEEP:]:
            old.unlink(missing_ok=True)
        # Checkpoints come at every evaluation, so the best changes at most once between two kept
        # checkpoints: the two newest best files are all that any kept checkpoint can reference.
        for old in sorted(self.directory.glob("best-*.safetensors"), reverse=True)[KEEP:]:
            old.unlink(missing_ok=True)
        logs.event("checkpoint_saved", f"checkpoint at step {progress.global_step} -> {path}",
                   step=progress.global_step, epoch=progress.epoch, step_in_epoch=progress.step_in_epoch, path=str(path))

    def clear(self) -> None:
        for old in [*self._checkpoints(), *self.directory.glob("best-*.safetensors")]:
            old.unlink(missing_ok=True)

    def remove(self) -> None:
        """After a run succeeded: a later run in the same folder must start fresh, not take this run's state."""
        self.clear()
        try:
            self.directory.rmdir()  # the per-job folder on Vertex; a folder holding anything else stays
        except OSError:
            pass
        logs.event("checkpoints_removed", f"run finished: removed its checkpoints from {self.directory}",
                   path=str(self.directory))

    def restore(self, state: TrainingState, world: World) -> tuple[Progress, dict[str, torch.Tensor] | None] | None:
        """Load the newest readable checkpoint into the objects; None when there is none to resume.

        Every rank reads the same folder (on several nodes it must be shared or synced, as SageMaker
        does for checkpoint_s3_uri) and takes its own RNG state.
        """
        for path in self._checkpoints():
            try:
                saved = torch.load(path, weights_only=True, map_location="cpu")
                if saved.get("format") != FORMAT_VERSION:
                    raise ValueError(f"format {saved.get('format')!r}")
            except Exception as err:  # noqa: BLE001 - any unreadable file: warn and fall back
                logs.warning("checkpoint_unreadable", f"ignoring unreadable checkpoint {path}: {type(err).__name__}: "
                                                      f"{str(err)[:200]}", path=str(path))
                continue
            if saved["fingerprint"] != self.fingerprint:
                if self.ignore_mismatch:
                    logs.warning("checkpoint_ignored", f"checkpoint {path} was made with other settings, model or "
                                                       "data; removing it and starting fresh (ignore_checkpoint=true)",
                                 path=str(path))
                    if world.is_main:
                        self.clear()
                    return None
                raise UserError(f"checkpoint {path} was made with other settings, model or data than this run; "
                                "refusing to resume. Use the original inputs, empty the checkpoint folder, or set "
                                "ignore_checkpoint=true to start fresh")
            progress = Progress(**saved["progress"])
            best_weights = None
            if progress.best_file:
                best_path = self.directory / progress.best_file
                try:
                    best_weights = load_file(best_path)
                except Exception as err:  # noqa: BLE001
                    logs.warning("checkpoint_unreadable", f"ignoring checkpoint {path}: its best weights "
                                                          f"{best_path} are unreadable ({type(err).__name__})", path=str(path))
                    continue
            state.model.load_state_dict(saved["model"])
            state.optimizer.load_state_dict(saved["optimizer"])
            state.scheduler.load_state_dict(saved["scheduler"])
            state.scaler.load_state_dict(saved["scaler"])
            _set_rng_state(saved["rng"][world.rank])
            logs.event("resumed", f"resumed from {path} at step {progress.global_step} (epoch {progress.epoch}, "
                                  f"step {progress.step_in_epoch} within it)", step=progress.global_step,
                       epoch=progress.epoch, step_in_epoch=progress.step_in_epoch, path=str(path))
            return progress, best_weights
        return None
