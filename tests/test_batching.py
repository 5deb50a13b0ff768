"""Dynamic batching (issue 26): concurrent requests share passes, each gets exactly its own rows back, a lone
request waits for nothing, a full queue refuses at once, and an error reaches every request of its pass."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pandas as pd
import pytest

from seqcls.serving.batching import Batcher, Busy
from seqcls.evaluate import Predictions


class Scorer:
    """Stands in for predict.predict_frame: logits are the row's number, and the first pass can be held."""

    def __init__(self, hold_first: bool = False) -> None:
        self.passes: list[int] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, frame: pd.DataFrame) -> Predictions:
        self.started.set()
        self.release.wait(10)
        self.passes.append(len(frame))
        numbers = frame["text"].str.removeprefix("row ").astype(float).to_numpy()
        return Predictions(np.stack([numbers, -numbers], axis=1).astype(np.float32), 0.0)


def request(first: int, rows: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {n}" for n in range(first, first + rows)]})


def test_requests_queued_behind_a_busy_model_share_one_pass_and_get_their_own_rows() -> None:
    scorer = Scorer(hold_first=True)
    batcher = Batcher(scorer, max_batch_rows=100)
    first = batcher.submit(request(0, 2))
    assert scorer.started.wait(5)
    waiting = [batcher.submit(request(10 * n, 3)) for n in range(1, 6)]  # queued while the first pass runs
    scorer.release.set()
    assert first.result(5).logits[:, 0].tolist() == [0, 1]
    for n, future in enumerate(waiting, 1):
        assert future.result(5).logits[:, 0].tolist() == [10 * n, 10 * n + 1, 10 * n + 2]
    assert scorer.passes == [2, 15] and (batcher.requests, batcher.passes) == (6, 2)


def test_a_pass_takes_whole_requests_up_to_max_batch_rows_and_a_larger_one_alone() -> None:
    scorer = Scorer(hold_first=True)
    batcher = Batcher(scorer, max_batch_rows=5)
    batcher.submit(request(0, 1))
    assert scorer.started.wait(5)
    futures = [batcher.submit(request(100, 3)), batcher.submit(request(200, 2)), batcher.submit(request(300, 9)),
               batcher.submit(request(400, 1))]
    scorer.release.set()
    assert [f.result(5).logits.shape[0] for f in futures] == [3, 2, 9, 1]
    assert scorer.passes == [1, 5, 9, 1]


def test_a_lone_request_is_scored_at_once() -> None:
    scorer = Scorer()
    batcher = Batcher(scorer)
    assert batcher.submit(request(7, 1)).result(5).logits[:, 0].tolist() == [7]
    assert scorer.passes == [1]


def test_a_full_queue_refuses_at_once_and_serves_again_once_drained() -> None:
    scorer = Scorer(hold_first=True)
    batcher = Batcher(scorer, max_batch_rows=4, max_queue_rows=4)
    running = batcher.submit(request(0, 1))
    assert scorer.started.wait(5)
    queued = batcher.submit(request(1, 4))
    with pytest.raises(Busy, match="4 rows are already queued \\(limit 4\\)"):
        batcher.submit(request(5, 1))
    scorer.release.set()
    running.result(5), queued.result(5)
    assert batcher.submit(request(9, 1)).result(5).logits[:, 0].tolist() == [9]


def test_an_error_in_a_pass_reaches_each_of_its_requests_and_the_worker_goes_on() -> None:
    calls = []

    def flaky(frame: pd.DataFrame) -> Predictions:
        calls.append(len(frame))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return Scorer()(frame)

    batcher = Batcher(flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit(request(0, 2)).result(5)
    assert batcher.submit(request(3, 1)).result(5).logits[:, 0].tolist() == [3]


def test_requests_with_other_columns_never_share_a_pass() -> None:
    scorer = Scorer(hold_first=True)
    batcher = Batcher(scorer)
    batcher.submit(request(0, 1))
    assert scorer.started.wait(5)
    single = batcher.submit(request(1, 1))
    paired = batcher.submit(request(2, 1).assign(text_pair="b"))
    scorer.release.set()
    single.result(5), paired.result(5)
    assert scorer.passes == [1, 1, 1]


def test_the_worker_holds_its_context_open_across_passes_in_its_own_thread() -> None:
    """The server passes predict.casting_once: autocast's state is per thread, and its weight casts last only
    while the context is open, so the worker thread must enter it once and keep it."""
    held: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def hold():
        held.append(("enter", threading.current_thread().name))
        yield
        held.append(("exit", threading.current_thread().name))

    batcher = Batcher(Scorer(), hold=hold)
    for first in (0, 10):
        assert batcher.submit(request(first, 2)).result(10).logits[:, 0].tolist() == [first, first + 1]
    assert held == [("enter", "seqcls-batcher")] and batcher.passes == 2
