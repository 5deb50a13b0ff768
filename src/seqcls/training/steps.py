"""Training steps, two ways: eager (any device, DDP, fp16) and whole-step CUDA graphs (one GPU).

On a GPU the tutorial's loop is bound by the host launching kernels (~50 ms per step on an H100 for
bert-base), not by the GPU. The graph path records the entire step -- forward, weighted loss,
backward, clipping and a fused capturable AdamW that reads its learning rate from a device tensor --
once per padded width (a multiple of 8), then replays it: a step is a few copies from pinned memory
and one launch, with no host sync, so the host prepares the next batch while the GPU runs this one.

The math stays the eager loop's: every step trains the same rows; a short last batch is filled up to
batch_size with copies of its first row at loss weight 0, so the loss is still the mean over its real
rows; the schedule steps on the host exactly as before (writing into the lr tensor); and the
warm-up runs that capture needs are undone (weights, optimizer state, RNG) before training starts.

With gradient_accumulation_steps > 1 an optimizer step is several batches ("micro-batches"): each adds its
gradient to the same .grad tensors (DDP syncs only on the last), then clipping and AdamW run once. The
graph path then captures one forward-backward graph per width and one graph for clip + AdamW.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..devices import Compute, autocast
from ..losses import row_losses
from ..problem_types import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from ..settings import Optimizer, Settings

WARM_UP_RUNS = 2  # per width: lazy initialisation (optimizer state, cuBLAS workspaces) must precede capture
# The self-check's tolerance, relative, on the loss and the gradient norm: a replay runs the captured kernels on
# the same inputs and RNG state as the eager step, so only atomics' summation order (backward of embeddings) differs.
SELF_CHECK_RTOL = 1e-3


class ReplayMismatch(RuntimeError):
    """A captured step replayed to other numbers than the same step run eagerly: the run trains eagerly."""


@dataclass
class TrainingState:
    """What a step changes and a checkpoint saves: the weights and everything that moves them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a transformers LambdaLR schedule
    scaler: torch.amp.GradScaler


Batch = dict[str, np.ndarray]  # one collated micro-batch; its `weights` are each row's share of the step's loss


class Step(Protocol):
    def __call__(self, micro_batches: list[Batch]) -> torch.Tensor:
        """One optimizer step over these collated batches; returns the step's loss on this rank (the sum of
        each row's loss times its weight) as a device scalar."""


def graphs_unavailable(settings: Settings, compute: Compute) -> str | None:
    """Why this run trains eagerly, or None when whole-step CUDA graphs can be used."""
    if compute.device.type != "cuda":
        return f"device is {compute.device.type}"
    if not settings.cuda_graphs:
        return "hyperparameter cuda_graphs=false"
    if compute.world.active:
        return f"torch.distributed with {compute.world.size} processes (DDP steps run eagerly)"
    if compute.precision == "fp16":
        return "precision fp16 needs dynamic loss scaling, which syncs with the host every step"
    if settings.gradient_checkpointing:
        return ("gradient_checkpointing=true: its backward re-runs forward after restoring the RNG state from the "
                "host, which a replayed graph would not repeat")
    return None


def make_optimizer(model: torch.nn.Module, adamw: Optimizer, device: torch.device, graphs: bool) -> torch.optim.AdamW:
    """The recipe's AdamW, fused into one kernel (CPU and CUDA: ~5x faster than the per-tensor loop on
    this project's CPU) and, for CUDA graphs, capturable (step counts live on the device)."""
    return torch.optim.AdamW(model.parameters(), lr=adamw.learning_rate, eps=adamw.adam_epsilon,
                             weight_decay=adamw.weight_decay, fused=device.type in ("cpu", "cuda"),
                             capturable=graphs)


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  problem_type: str = SINGLE_LABEL, label_smoothing: float = 0.0) -> torch.Tensor:
    """Each row's loss for the problem type (losses.row_losses, fp32) times its weight, summed: the batch mean
    when every weight is 1/rows, and Keras-style class weighting (each row's loss scaled by its label's weight)
    when class_weights are set."""
    return (row_losses(logits, labels, problem_type, label_smoothing) * weights).sum()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a float (a device tensor on the graph path: syncs, so log only)."""
    return float(optimizer.param_groups[0]["lr"])


class EagerStep:
    """The tutorial's step on per-batch-padded batches: CPU, DDP, fp16 with loss scaling, any model."""

    def __init__(self, forward: torch.nn.Module, state: TrainingState, settings: Settings, compute: Compute) -> None:
        self.forward, self.model, self.optimizer = forward, state.model, state.optimizer
        self.scheduler, self.scaler = state.scheduler, state.scaler
        self.device, self.precision, self.max_grad_norm = compute.device, compute.precision, settings.max_grad_norm
        self.problem_type, self.label_smoothing = settings.problem_type, settings.label_smoothing
        # The schedule's own value: after a failed capture or a graph-path checkpoint, the group holds
        # a float32 tensor, which would round the learning rate.
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = float(lr)

    def __call__(self, micro_batches: list[Batch]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            # DDP all-reduces gradients during backward: skip that until the step's last batch has added its own.
            last = i == len(micro_batches) - 1
            with self.forward.no_sync() if not last and hasattr(self.forward, "no_sync") else nullcontext():
                total += self._backward(batch)
        self._apply()
        return total

    def _backward(self, batch: Batch) -> torch.Tensor:
        inputs = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.items()}
        labels, weights = inputs.pop("labels"), inputs.pop("weights")
        with autocast(self.device, self.precision):
            logits = self.forward(**inputs).logits
        loss = weighted_loss(logits, labels, weights, self.problem_type, self.label_smoothing)
        self.scaler.scale(loss).backward()
        return loss.detach()

    def _apply(self) -> None:
        """Clip, step and schedule once per optimizer step, on the gradients every batch added up."""
        if self.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


class GraphSteps:
    """Whole training steps on static buffers, one per padded width, replayed as CUDA graphs.

    With capture=False the very same step body runs eagerly on static buffers: that is how the tests
    check its math against EagerStep on a CPU. Build it after any checkpoint has been restored: the
    graphs hold the addresses of the weights, gradients, optimizer state and learning rate. With
    gradient accumulation, `graphs` hold forward-backward only and `apply_graph` clip + AdamW.
    """

    def __init__(self, state: TrainingState, settings: Settings, compute: Compute, widths: list[int],
                 capture: bool = True) -> None:
        self.model, self.optimizer, self.scheduler = state.model, state.optimizer, state.scheduler
        device = compute.device
        self.device, self.precision = device, compute.precision
        self.batch_size, self.max_grad_norm = settings.batch_size, settings.max_grad_norm
        self.problem_type, self.label_smoothing = settings.problem_type, settings.label_smoothing
        self.whole = settings.gradient_accumulation_steps == 1  # one graph per step, else per batch plus apply_graph
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        for group in self.optimizer.param_groups:  # the schedule fills this tensor; the graphs read it
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        for p in self.params:  # one set of gradients, zeroed inside every graph
            p.grad = torch.zeros_like(p)
        self.inputs = {width: self._static_inputs(width) for width in widths}
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)  # before clipping, of the step's summed gradients
        self.checked: dict[str, float] = {}  # the self-check's largest relative differences
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.apply_graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self.warm_up()
            pool = torch.cuda.graph_pool_handle()  # the graphs never run at once, so they share memory
            for width in sorted(self.inputs, reverse=True):
                self.graphs[width] = _captured(partial(self._step if self.whole else self._forward_backward, width), pool)
            if not self.whole:
                self.apply_graph = _captured(self._apply, pool)
            self.check_replay()

    def _static_inputs(self, width: int) -> dict[str, torch.Tensor]:
        matrix = torch.zeros((self.batch_size, width), dtype=torch.int64, device=self.device)
        return {"input_ids": matrix, "token_type_ids": torch.zeros_like(matrix),
                "attention_mask": torch.ones_like(matrix),
                "labels": self._static_labels(),
                "weights": torch.full((self.batch_size,), 1 / self.batch_size, device=self.device)}

    def _static_labels(self) -> torch.Tensor:
        """The label buffer data.Encoded fills: class ids, multi-hot rows or targets."""
        if self.problem_type == MULTI_LABEL:
            return torch.zeros((self.batch_size, self.model.config.num_labels), dtype=torch.float32, device=self.device)
        dtype = torch.float32 if self.problem_type == REGRESSION else torch.int64
        return torch.zeros(self.batch_size, dtype=dtype, device=self.device)

    def _step(self, width: int) -> None:
        """A whole step on one batch: what is captured per width without accumulation, and what warm-up runs."""
        self._forward_backward(width)
        self._apply()

    def _forward_backward(self, width: int) -> None:
        """The captured body: no host syncs, no allocations that outlive it, shapes fixed by `width`. Backward
        adds into the preallocated .grad tensors in place, so batches of one step accumulate there."""
        static = self.inputs[width]
        with autocast(self.device, self.precision, cache_enabled=False):  # autocast's cache breaks capture
            logits = self.model(input_ids=static["input_ids"], token_type_ids=static["token_type_ids"],
                                attention_mask=static["attention_mask"]).logits
        loss = weighted_loss(logits, static["labels"], static["weights"], self.problem_type, self.label_smoothing)
        loss.backward()
        self.loss.copy_(loss.detach())

    def _apply(self) -> None:
        """Clip and AdamW on the summed gradients, then zero them in place for the next step's batches."""
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        self.grad_norm.copy_(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def check_replay(self) -> None:
        """Replay each width's captured step once and run the same step eagerly, from the same weights, optimizer
        state and RNG seed, on the static buffers: a capture that runs but records other work (a branch fixed at
        capture time, memory reused under it) shows as a different loss or gradient norm. Everything is put back
        afterwards; a difference beyond SELF_CHECK_RTOL raises ReplayMismatch naming it."""
        worst = {"loss": 0.0, "grad_norm": 0.0}
        for width in sorted(self.graphs, reverse=True):
            replayed, eager = self._trial(partial(self._replay, width)), self._trial(partial(self._step, width))
            for name in worst:
                difference = abs(replayed[name] - eager[name]) / max(abs(eager[name]), 1e-12)
                if not difference <= SELF_CHECK_RTOL:  # NaN counts as a difference
                    raise ReplayMismatch(f"width {width}: {name} {replayed[name]:.6g} replayed vs {eager[name]:.6g} "
                                         f"eager (relative difference {difference:.2g} > {SELF_CHECK_RTOL:g})")
                worst[name] = max(worst[name], difference)
        self.checked = worst

    def _replay(self, width: int) -> None:
        self.graphs[width].replay()
        if self.apply_graph is not None:
            self.apply_graph.replay()

    def _trial(self, step: Callable[[], None]) -> dict[str, float]:
        """One step's loss and gradient norm from a fixed RNG seed; the weights and optimizer state restored."""
        weights, state = self._snapshot()
        cuda = self.device.type == "cuda"
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                torch.manual_seed(0)
                step()
                return {"loss": self.loss.item(), "grad_norm": self.grad_norm.item()}
        finally:
            self._restore(weights, state)

    def warm_up(self) -> None:
        """Run every width's step eagerly (on a side stream, as capture requires), then put the weights,
        the optimizer state and the RNG back as they were: warm-up must not train."""
        weights, state = self._snapshot()
        cuda = self.device.type == "cuda"
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                side = torch.cuda.Stream(self.device) if cuda else None
                if side is not None:
                    side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side) if side is not None else nullcontext():
                    for width in self.inputs:
                        for _ in range(WARM_UP_RUNS):
                            self._step(width)
                if side is not None:
                    torch.cuda.current_stream(self.device).wait_stream(side)
        finally:
            self._restore(weights, state)

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[torch.Tensor, dict[str, torch.Tensor]]]:
        """Copies of the weights and of the optimizer state's tensors, for `_restore`."""
        weights = [p.detach().clone() for p in self.params]
        state = {p: {k: v.clone() for k, v in self.optimizer.state[p].items() if torch.is_tensor(v)}
                 for p in self.params if self.optimizer.state.get(p)}
        return weights, state

    @torch.no_grad()
    def _restore(self, weights: list[torch.Tensor], state: dict[torch.Tensor, dict[str, torch.Tensor]]) -> None:
        """In place, so that the graphs captured afterwards see the very same tensors."""
        for p, saved in zip(self.params, weights):
            p.copy_(saved)
            p.grad.zero_()  # an eager fallback accumulates into these
        for p in self.params:  # a fresh AdamW state is all zeros (step 0, both moments)
            for key, value in self.optimizer.state[p].items():
                if not torch.is_tensor(value):
                    continue
                if p in state:
                    value.copy_(state[p][key])
                else:
                    value.zero_()
        self.loss.zero_()

    def __call__(self, micro_batches: list[Batch]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            width = self._fill(batch)
            if self.graphs:
                self.graphs[width].replay()
            else:
                (self._step if self.whole else self._forward_backward)(width)
            total += self.loss  # queued after this batch's graph, before the next overwrites the buffer
        if self.apply_graph is not None:
            self.apply_graph.replay()
        elif not self.whole:
            self._apply()
        self.scheduler.step()
        return total

    def _fill(self, batch: Batch) -> int:
        """Copy one batch into its width's static buffers (asynchronously, from pinned memory); returns the width."""
        width = batch["input_ids"].shape[1]
        static = self.inputs[width]
        for name, array in batch.items():
            if len(array) < self.batch_size:  # zero-weight copies of the first row: valid inputs, no gradient
                filler = np.zeros_like(array[:1]) if name == "weights" else array[:1]
                array = np.concatenate([array, np.repeat(filler, self.batch_size - len(array), axis=0)])
            source = torch.from_numpy(array)
            static[name].copy_(source.pin_memory() if self.device.type == "cuda" else source, non_blocking=True)
        return width


def _captured(body: Callable[[], None], pool: Any) -> torch.cuda.CUDAGraph:
    """`body` recorded once as a CUDA graph in the shared memory pool."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        body()
    return graph
