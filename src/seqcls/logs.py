"""JSON structured logging: stdout carries one JSON object per line and nothing else.

Cloud Logging reads `severity`, CloudWatch and SageMaker metric regexes read the event fields, so
`event` names and field names are part of the contract (see docs/contract.md, "Logs").
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from datetime import datetime, timezone
from typing import Any, Protocol

from pythonjsonlogger.json import JsonFormatter

from . import outbound

LOGGER_NAME = "seqcls"
_log = logging.getLogger(LOGGER_NAME)


class _Formatter(JsonFormatter):
    """Adds timestamp, level/severity, rank and host to every record; writes it through outbound (no URL
    credential, no bare NaN)."""

    def __init__(self, rank: int) -> None:
        super().__init__("%(message)s", json_ensure_ascii=False, json_serializer=outbound.dumps)
        self._rank = rank
        self._host = socket.gethostname()

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_record["timestamp"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname
        log_record["severity"] = record.levelname
        super().add_fields(log_record, record, message_dict)
        log_record.setdefault("event", "log")
        log_record["rank"] = self._rank
        log_record["host"] = self._host


def setup(rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Route the seqcls logger to stdout as JSON; silence library chatter that is not JSON."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter(rank))
    _log.handlers[:] = [handler]
    # Under torch.distributed only rank 0 reports progress; other ranks speak up for warnings and errors.
    _log.setLevel(level if rank == 0 else max(level, logging.WARNING))
    _log.propagate = False
    # transformers configures its own stderr handler and level on import: replace both, so its
    # errors arrive as JSON and its warnings (load reports, advisories) stay out of stdout.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_default_handler()
    hf_logging.disable_progress_bar()
    for name in ("transformers", "huggingface_hub"):
        adopt(name)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.propagate = False
    return _log


def adopt(library: str) -> None:
    """A library's logger speaks only for errors, as JSON on our stdout: call after importing a library that
    installs its own handler on import (transformers, mlflow)."""
    lib = logging.getLogger(library)
    lib.handlers[:] = [h for h in _log.handlers if not isinstance(h, _Subscription)]
    lib.setLevel(logging.ERROR)
    lib.propagate = False


def event(name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event: `event` is the stable name tools match on."""
    _log.log(level, message, extra={"event": name, **fields})


def warning(name: str, message: str, **fields: Any) -> None:
    event(name, message, level=logging.WARNING, **fields)


# What a LogRecord holds besides the event's own fields.
_RECORD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "event"}
ENDINGS = ("job_end", "job_failed")


class Listener(Protocol):
    """Sees every event's fields (TensorBoard, the tuning report): the same values stdout carries."""

    def on_event(self, name: str, fields: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class _Subscription(logging.Handler):
    """Hands the subscribing thread's events to one listener. Events from other threads (a tracker's own
    worker reporting on itself) are left out: a listener's close may wait for that worker, under this
    handler's lock, so taking the lock from the worker would deadlock."""

    def __init__(self, listener: Listener) -> None:
        super().__init__()
        self.listener = listener
        self.closed = False
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "event", None)
        if self.closed or name is None:
            return
        try:
            self.listener.on_event(name, {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES})
            if name in ENDINGS:
                self.closed = True
                self.listener.close()
        except Exception as err:  # noqa: BLE001 - a side output must not stop training; say so once
            self.closed = True
            warning("listener_failed", f"{type(self.listener).__name__} stopped: {type(err).__name__}: {err}",
                    listener=type(self.listener).__name__)


def subscribe(listener: Listener) -> None:
    """Hand `listener` every later event until job_end or job_failed (then it is closed)."""
    for old in [h for h in _log.handlers if isinstance(h, _Subscription) and h.closed]:
        _log.removeHandler(old)  # never during an emit: removing from the list being iterated skips a handler
    _log.addHandler(_Subscription(listener))
