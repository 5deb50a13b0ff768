"""What every remote tracker shares: the run's identity and settings as a tracker sees them (`RunContext`), the worker
thread that keeps a slow server off the training loop, and the opened/failed/closed life of a tracker."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import logs, outbound


@dataclass(frozen=True)
class RunContext:
    """What a tracker records about the run besides its events."""

    run_id: str
    platform: str
    git_commit: str
    trial_id: str
    model_source: str
    output_uri: str
    settings: dict[str, dict[str, Any]]  # the resolved snapshot: values (secrets masked) and their sources
    model_dir: Path
    output_data_dir: Path
    tracking_env: dict[str, str]

    def origin(self) -> dict[str, str]:
        """Where the run came from, as W&B config and Vertex params carry it (MLflow has tags of its own names)."""
        return {"seqcls/run_id": self.run_id, "seqcls/platform": self.platform, "seqcls/git_commit": self.git_commit,
                "seqcls/model_source": self.model_source, "seqcls/output_uri": outbound.mask(self.output_uri)}


class Worker:
    """Runs one tracker's calls in order on a daemon thread; the first failure drops the rest, with one warning."""

    def __init__(self, tracker: str) -> None:
        self.tracker = tracker
        self.failure: str | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._current = ""
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"seqcls-{tracker}", daemon=True)
        self._thread.start()

    def submit(self, what: str, call: Callable[[], None]) -> None:
        if self.failure is None:
            self._calls.put((what, call))

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            what, call = item
            if self.failure is not None:
                continue
            self._current = what
            try:
                call()
            except Exception as err:  # noqa: BLE001 - a tracker must not stop the run: say why, once
                self._fail(f"{what}: {type(err).__name__}: {' '.join(str(err).split())[:400]}")

    def _fail(self, reason: str) -> None:
        self.failure = reason
        logs.warning("tracker_failed", f"{self.tracker} stopped receiving this run ({reason}); the run goes on",
                     tracker=self.tracker, reason=reason)

    def finish(self, timeout_s: float) -> None:
        """Let the queued calls run for at most `timeout_s`; then leave the thread behind (it dies with the process).
        Only the first call waits."""
        if self._finished:
            return
        self._finished = True
        self._calls.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive() and self.failure is None:
            self._fail(f"no answer within tracker_timeout_s={timeout_s:g}s, still waiting to {self._current}")


class RemoteTracker:
    """What every tracker that talks to a service shares: a worker thread whose first call opens the run, the event
    record() waits on (the run exists, or opening it failed), its status for run_manifest.json, and close()."""

    def __init__(self, tracker: str, opening: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.opened = threading.Event()
        self.worker = Worker(tracker)
        self.worker.submit(opening, self._open)

    def close(self) -> None:
        self.worker.finish(self.timeout_s)

    def _status(self, connected: bool) -> str:
        return f"failed: {self.worker.failure}" if self.worker.failure else "receiving" if connected else "connecting"

    def _open(self) -> None:
        try:
            self._attach()
        finally:
            self.opened.set()

    def _attach(self) -> None:
        raise NotImplementedError
