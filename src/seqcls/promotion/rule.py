"""The promotion gate: whether this run replaces the one <output_uri>/latest.json points at, and the record of why.

Both runs are compared on the same rows: this run's rows of the gate's split, scored by the current run as
`seqcls predict` would (champion.py, injected as `compare` so that this module stays free of torch).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

from .. import logs
from ..atomic import write_atomic, write_json
from ..errors import SettingsError
from ..problem_types import METRIC_RANGES, MINIMIZED_METRICS
from ..records import METRICS, RUN_MANIFEST, Comparison, Decision, Metrics, RunManifest
from ..settings import Promotion
from ..storage import Current
from ..uris import parse_uri

RECORD = "promotion.json"  # in the output-data folder: SageMaker uploads it in output.tar.gz
READ_LIMIT = 1024 * 1024  # a champion's metrics.json is a few KiB; a larger one counts as unreadable


class Incomparable(Exception):
    """The current run cannot score this run's rows (another problem type or label set, unloadable); says why."""


@dataclass(frozen=True)
class Rule:
    """How the gate decides: promote_if, promote_tolerance, promote_rule, promote_if_incomparable."""

    metric: str
    tolerance: float = 0.0
    rule: str = "not_worse"  # or "better": the interval's lower bound must clear the tolerance
    incomparable: str = "keep"  # or "promote"


def metric_value(metrics: Metrics | None, metric: str) -> float | None:
    """`test_mcc` or `validation_loss` from a metrics.json record; None without a record or when it lacks it."""
    return metrics.value(metric) if metrics is not None else None


def decide(rule: Rule, value: float | None, current_run_id: str | None, current_value: float | None,
           comparison: Comparison | None = None, incomparable: str | None = None,
           published_value: float | None = None) -> Decision:
    """Promote when there is no current run, when it cannot score the rows and promote_if_incomparable=promote, when
    it has no usable value on them (NaN: any number beats it, as in select_best), or when this run passes the rule:
    not_worse, at most `tolerance` worse; better, the bootstrap interval's lower bound above `tolerance`. Never
    promote a NaN or missing value."""
    metric, tolerance = rule.metric, rule.tolerance
    lower = metric.rsplit("_", 1)[-1] in MINIMIZED_METRICS
    rows = f" on the same {comparison.rows} {comparison.split} rows" if comparison else ""

    def decision(promoted: bool, reason: str) -> Decision:
        return Decision(promoted, metric, value, current_value, current_run_id, tolerance, reason, rule.rule,
                        published_value, comparison, incomparable)

    if value is None or math.isnan(value):
        return decision(False, f"this run's {metric} is {'missing' if value is None else 'NaN'}: never promoted")
    if current_run_id is None:
        return decision(True, f"no latest.json yet: the first gated run is promoted ({metric} {value:.4f})")
    if incomparable is not None:
        return decision(rule.incomparable == "promote", f"current run {current_run_id} cannot score this run's rows: "
                        f"{incomparable}; promote_if_incomparable={rule.incomparable}")
    if current_value is None or math.isnan(current_value):
        shown = "has no" if current_value is None else "has a NaN"
        return decision(True, f"current run {current_run_id} {shown} {metric}{rows}: {value:.4f} replaces it")
    if rule.rule == "better" and comparison is not None:
        low, high = comparison.interval
        promoted = low > tolerance
        return decision(promoted, f"{metric} {value:.4f} vs run {current_run_id}'s {current_value:.4f}{rows}: "
                        f"improvement {comparison.improvement:+.4f}, {comparison.confidence:.0%} interval "
                        f"[{low:+.4f}, {high:+.4f}], lower bound {'above' if promoted else 'not above'} tolerance "
                        f"{tolerance:g} (promote_rule=better)")
    bound = current_value + tolerance if lower else current_value - tolerance
    promoted = value <= bound if lower else value >= bound
    relation = ("at most" if promoted else "above") if lower else ("at least" if promoted else "below")
    return decision(promoted, f"{metric} {value:.4f} is {relation} run {current_run_id}'s {current_value:.4f}{rows} "
                              f"{'+' if lower else '-'} tolerance {tolerance:g}")


def check_channels(promote_if: str, channels: Mapping[str, object]) -> None:
    """A test metric needs a test channel; checked with the settings, before any data work."""
    if promote_if.startswith("test_") and "test" not in channels:
        raise SettingsError(f"hyperparameter promote_if={promote_if} needs a test channel (test data); "
                            f"give one or gate on validation_{promote_if.removeprefix('test_')}")


class Gate:
    """What storage asks, per attempt at moving latest.json: decide, and record the decision in the files it
    then uploads; `commit` once the decision stood (manifest written, pointer moved or left)."""

    def __init__(self, promotion: Promotion, model_dir: Path, output_data_dir: Path,
                 compare: Callable[[str], Comparison]) -> None:
        self.rule = Rule(promotion.metric, promotion.tolerance, promotion.rule, promotion.incomparable)
        self.champions = parse_uri(promotion.output_uri)
        self.promotion_file = Path(promotion.marker_file) if promotion.marker_file else None
        self.model_dir, self.output_data_dir = model_dir, output_data_dir
        self.value = metric_value(Metrics.read(model_dir), self.rule.metric)
        self.compare = compare
        self.compared: dict[str, tuple[Comparison | None, str | None]] = {}  # a lost race re-decides: score once
        self.decision: Decision | None = None

    def _compared(self, run_id: str) -> tuple[Comparison | None, str | None]:
        """The current run scored on this run's rows, or why it could not be: never an exception after training."""
        if run_id not in self.compared:
            try:
                self.compared[run_id] = self.compare(self.champions.join(run_id)), None
            except Incomparable as err:
                self.compared[run_id] = None, str(err)
            except Exception as err:  # noqa: BLE001 - the run is published either way; the record says why
                self.compared[run_id] = None, f"scoring it failed ({type(err).__name__}: {' '.join(str(err).split())[:300]})"
        return self.compared[run_id]

    def decide(self, current: Current) -> bool:
        raw = current.read(METRICS, READ_LIMIT) if current.run_id else None
        metric = self.rule.metric
        published = usable(metric, metric_value(_parse(raw), metric)) if raw is not None else None
        comparison, incomparable = self._compared(current.run_id) if current.run_id else (None, None)
        value = comparison.challenger if comparison else self.value
        self.decision = decide(self.rule, value, current.run_id, comparison.champion if comparison else None,
                               comparison, incomparable, published)
        for path, read in ((self.model_dir / METRICS, Metrics.read), (self.model_dir / RUN_MANIFEST, RunManifest.read)):
            record = read(self.model_dir)
            if record is None:  # the job writes both before it publishes: a missing one is our bug
                raise RuntimeError(f"{path} is missing or unreadable, so the gate cannot record its decision in it")
            write_json(path, replace(record, promotion=self.decision).to_json())
        write_json(self.output_data_dir / RECORD, self.decision.record())
        return self.decision.promoted

    def commit(self) -> None:
        decision = self.decision
        assert decision is not None, "commit before decide"
        logs.event("promotion", f"{decision.outcome}: {decision.reason}", **decision.record())
        if self.promotion_file is not None:
            write_atomic(self.promotion_file, decision.outcome.encode())


def gate(promotion: Promotion, model_dir: Path, output_data_dir: Path,
         compare: Callable[[str], Comparison]) -> Gate | None:
    """The gate for this run's publish; None when promote_if=none (latest.json moves to every run). `compare` scores
    the current run (by its URI) on this run's rows."""
    return None if promotion.metric == "none" else Gate(promotion, model_dir, output_data_dir, compare)


def _parse(raw: bytes) -> Metrics | None:
    """A published metrics.json; None when it is over READ_LIMIT, not JSON (however it fails: a deep nesting
    raises RecursionError) or not an object, all treated like a missing metric."""
    if len(raw) > READ_LIMIT:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return Metrics.from_json(value) if isinstance(value, dict) else None


def usable(metric: str, value: float | None) -> float | None:
    """The champion's value, or None when no run could have measured it: non-finite, or outside the metric's
    range (MCC in [-1, 1]; accuracy, F1 and the like in [0, 1]; losses and errors at least 0). A value of
    Infinity would otherwise keep every later run out for good."""
    if value is None or not math.isfinite(value):
        return None
    low, high = METRIC_RANGES.get(metric.partition("_")[2], (-math.inf, math.inf))
    return value if low <= value <= high else None
