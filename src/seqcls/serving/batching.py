"""Dynamic batching for `seqcls serve`: concurrent requests share forward passes.

Requests queue; whenever the model is free, one pass through predict's batch function takes the queued
requests in arrival order, whole, up to `max_batch_rows` rows (a larger request runs alone). Nothing waits
for a batch to fill: the worker takes what is queued the moment the model is free, so a lone request costs
what it cost before (text-embeddings-inference's rule). The queue is bounded: past `max_queue_rows` a request
is refused at once (`Busy`: the server answers 503 with Retry-After), never left hanging. The worker holds
`hold` (predict.casting_once: autocast's weight casts kept across passes) open for its whole life.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, ContextManager

import pandas as pd

from ..evaluate import Predictions

MAX_BATCH_ROWS = 256
MAX_QUEUE_ROWS = 8192


class Busy(Exception):
    """The queue is full; the message says how full."""


@dataclass
class _Pending:
    frame: pd.DataFrame
    future: Future


class Batcher:
    """One worker thread runs `score` (predict.predict_frame bound to the loaded model) on merged requests."""

    def __init__(self, score: Callable[[pd.DataFrame], Predictions], max_batch_rows: int = MAX_BATCH_ROWS,
                 max_queue_rows: int = MAX_QUEUE_ROWS,
                 hold: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        self.score, self.max_batch_rows, self.max_queue_rows, self.hold = score, max_batch_rows, max_queue_rows, hold
        self.pending: deque[_Pending] = deque()
        self.queued_rows = 0
        self.requests = self.passes = 0  # served so far: passes < requests means requests shared passes
        self.changed = threading.Condition()
        threading.Thread(target=self._work, name="seqcls-batcher", daemon=True).start()

    def submit(self, frame: pd.DataFrame) -> Future:
        """Queue a request's rows; the future gets their Predictions (or the error scoring raised)."""
        future: Future = Future()
        with self.changed:
            if self.pending and self.queued_rows + len(frame) > self.max_queue_rows:
                raise Busy(f"{self.queued_rows} rows are already queued (limit {self.max_queue_rows}): retry shortly")
            self.pending.append(_Pending(frame, future))
            self.queued_rows += len(frame)
            self.changed.notify()
        return future

    def _take(self) -> list[_Pending]:
        """The queued requests the next pass scores: in order, whole, same columns, within max_batch_rows."""
        with self.changed:
            while not self.pending:
                self.changed.wait()
            taken = [self.pending.popleft()]
            rows = len(taken[0].frame)
            while (self.pending and rows + len(self.pending[0].frame) <= self.max_batch_rows
                   and list(self.pending[0].frame.columns) == list(taken[0].frame.columns)):
                taken.append(self.pending.popleft())
                rows += len(taken[-1].frame)
            self.queued_rows -= rows
            return taken

    def _work(self) -> None:
        with self.hold():  # entered in this thread: autocast's state is per thread
            while True:
                self._pass(self._take())

    def _pass(self, taken: list[_Pending]) -> None:
        """One pass over the taken requests; each future gets its rows' predictions, or the error."""
        try:
            predictions = self.score(pd.concat([item.frame for item in taken], ignore_index=True))
        except BaseException as err:  # noqa: BLE001 - each waiting request gets the error, the worker goes on
            for item in taken:
                item.future.set_exception(err)
            return
        start = 0
        for item in taken:
            end = start + len(item.frame)
            item.future.set_result(dataclasses.replace(predictions, logits=predictions.logits[start:end]))
            start = end
        self.requests += len(taken)
        self.passes += 1
