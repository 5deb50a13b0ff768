"""The promotion gate: whether this run replaces the one <output_uri>/latest.json points at, and the record of why.

With `promote_if` set, storage publishes the run (always) and asks the gate, against the run latest.json points
at as the store reads it, whether to move latest.json here; the gate writes its decision into this run's
metrics.json, run_manifest.json and promotion.json before storage uploads them, seals the run with its manifest
and moves the pointer with a conditional write (docs/publishing.md). A lost race asks the gate again, so the
record the manifest seals is always the decision that stood. Once final, the gate logs `promotion` and writes
`promotion_file`, the marker orchestrators branch on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from . import artifacts, logs
from .errors import SettingsError
from .settings import METRIC_RANGES, MINIMIZED_METRICS, Settings
from .storage import Current

METRICS = "metrics.json"
RUN_MANIFEST = "run_manifest.json"
RECORD = "promotion.json"  # in the output-data folder: SageMaker uploads it in output.tar.gz
READ_LIMIT = 1024 * 1024  # a champion's metrics.json is a few KiB; a larger one counts as unreadable


@dataclass(frozen=True)
class Decision:
    promoted: bool
    metric: str
    value: float | None
    current_value: float | None
    current_run_id: str | None
    tolerance: float
    reason: str

    def record(self) -> dict[str, Any]:
        """The promotion event's fields and what metrics.json, run_manifest.json and promotion.json hold;
        `promoted_flag` (1 or 0) is for SageMaker metric definitions, which read numbers only."""
        fields = asdict(self)
        return {"promoted": fields.pop("promoted"), "promoted_flag": int(self.promoted), **fields}

    @property
    def outcome(self) -> str:
        return "promoted" if self.promoted else "kept"


def metric_value(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    """`test_mcc` or `validation_loss` from a metrics.json record; None when the record lacks it."""
    split, _, name = metric.partition("_")
    found = (metrics or {}).get(split)
    value = found.get(name if split == "test" else f"val_{name}") if isinstance(found, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def decide(metric: str, value: float | None, current_run_id: str | None, current_value: float | None,
           tolerance: float) -> Decision:
    """Promote when there is no current run, when the current run has no usable value (missing or NaN: any number
    beats it, as in select_best), or when this run is at most `tolerance` worse; never promote a NaN or missing value."""
    lower = metric.rsplit("_", 1)[-1] in MINIMIZED_METRICS

    def decision(promoted: bool, reason: str) -> Decision:
        return Decision(promoted, metric, value, current_value, current_run_id, tolerance, reason)

    if value is None or math.isnan(value):
        return decision(False, f"this run's {metric} is {'missing' if value is None else 'NaN'}: never promoted")
    if current_run_id is None:
        return decision(True, f"no latest.json yet: the first gated run is promoted ({metric} {value:.4f})")
    if current_value is None or math.isnan(current_value):
        shown = "has no" if current_value is None else "has a NaN"
        return decision(True, f"current run {current_run_id} {shown} {metric}: {value:.4f} replaces it")
    bound = current_value + tolerance if lower else current_value - tolerance
    promoted = value <= bound if lower else value >= bound
    relation = ("at most" if promoted else "above") if lower else ("at least" if promoted else "below")
    return decision(promoted, f"{metric} {value:.4f} is {relation} run {current_run_id}'s {current_value:.4f} "
                              f"{'+' if lower else '-'} tolerance {tolerance:g}")


def check_channels(settings: Settings, channels: Mapping[str, Path]) -> None:
    """A test metric needs a test channel; checked with the settings, before any data work."""
    if settings.promote_if.startswith("test_") and "test" not in channels:
        raise SettingsError(f"hyperparameter promote_if={settings.promote_if} needs a test channel (test data); "
                            f"give one or gate on validation_{settings.promote_if.removeprefix('test_')}")


class Gate:
    """What storage asks, per attempt at moving latest.json: decide, and record the decision in the files it
    then uploads; `commit` once the decision stood (manifest written, pointer moved or left)."""

    def __init__(self, settings: Settings, model_dir: Path, output_data_dir: Path) -> None:
        self.metric, self.tolerance = settings.promote_if, settings.promote_tolerance
        self.promotion_file = Path(settings.promotion_file) if settings.promotion_file else None
        self.model_dir, self.output_data_dir = model_dir, output_data_dir
        self.value = metric_value(_read_json(model_dir / METRICS), self.metric)
        self.decision: Decision | None = None

    def decide(self, current: Current) -> bool:
        raw = current.read(METRICS, READ_LIMIT) if current.run_id else None
        current_value = usable(self.metric, metric_value(_parse(raw), self.metric)) if raw is not None else None
        self.decision = decide(self.metric, self.value, current.run_id, current_value, self.tolerance)
        record = self.decision.record()
        for path in (self.model_dir / METRICS, self.model_dir / RUN_MANIFEST):
            artifacts.write_json(path, {**_read_json(path), "promotion": record})
        artifacts.write_json(self.output_data_dir / RECORD, record)
        return self.decision.promoted

    def commit(self) -> None:
        decision = self.decision
        assert decision is not None, "commit before decide"
        logs.event("promotion", f"{decision.outcome}: {decision.reason}", **decision.record())
        if self.promotion_file is not None:
            artifacts.write_atomic(self.promotion_file, decision.outcome.encode())


def gate(settings: Settings, model_dir: Path, output_data_dir: Path) -> Gate | None:
    """The gate for this run's publish; None when promote_if=none (latest.json moves to every run)."""
    return None if settings.promote_if == "none" else Gate(settings, model_dir, output_data_dir)


def _parse(raw: bytes) -> dict[str, Any] | None:
    """A published metrics.json; None when it is over READ_LIMIT, not JSON (however it fails: a deep nesting
    raises RecursionError) or not an object, all treated like a missing metric."""
    if len(raw) > READ_LIMIT:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def usable(metric: str, value: float | None) -> float | None:
    """The champion's value, or None when no run could have measured it: non-finite, or outside the metric's
    range (MCC in [-1, 1]; accuracy, F1 and the like in [0, 1]; losses and errors at least 0). A value of
    Infinity would otherwise keep every later run out for good."""
    if value is None or not math.isfinite(value):
        return None
    low, high = METRIC_RANGES.get(metric.partition("_")[2], (-math.inf, math.inf))
    return value if low <= value <= high else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
