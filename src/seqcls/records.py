"""The run's records as types: run_manifest.json (`RunManifest`), metrics.json (`Metrics`) and the promotion gate's
decision that both carry (`Decision`), each with one writer (`to_json`, `record`) and one reader (`read`,
`from_json`) that the job, predict, the model card, the promotion gate, the registry and the trackers share.

run_manifest.json is what a consumer needs to rerun the job, or to predict like it, from this file alone: the run's
id, platform and commit, every setting with where its value came from, the inputs with their digests, what the
data stage settled, the package versions. metrics.json is what the run measured and decided. Folders written
before a field existed still read (the field is None).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .data.columns import PAIR
from .errors import ModelError
from .problem_types import SINGLE_LABEL

RUN_MANIFEST = "run_manifest.json"
METRICS = "metrics.json"


@dataclass(frozen=True)
class DataRecord:
    """What the data stage read and settled: each input file (channel, path, rows, sha256, the columns it was read
    by), the rows per split, where validation came from, the max_length used, the split-overlap checks."""

    files: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    validation_source: str | None = None
    max_length: int | None = None
    split_checks: dict[str, Any] | None = None

    def of_channel(self, channel: str) -> list[dict[str, Any]]:
        return [f for f in self.files if f.get("channel") == channel]


@dataclass(frozen=True)
class RunManifest:
    """One run's run_manifest.json. `settings` holds every setting as {"value", "source"} (Resolved.snapshot)."""

    run_id: str
    platform: str
    git_commit: str
    settings: dict[str, dict[str, Any]]
    model_source: str
    model_source_files: Any
    data: DataRecord
    packages: dict[str, str]
    device: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    partial: dict[str, Any] | None = None  # what a stopped run's model holds
    trackers: list[dict[str, Any]] | None = None
    onnx_int8: dict[str, Any] | None = None  # the int8 export's agreement check, when one was made
    promotion: Decision | None = None  # the gate's decision (promotion/rule.py), when promote_if is set

    def value(self, name: str, default: Any = None) -> Any:
        """A setting's value as the run used it; `default` for a setting the run predates."""
        entry = self.settings.get(name)
        return entry.get("value", default) if isinstance(entry, dict) else default

    def given(self, name: str) -> bool:
        """Whether the setting was given (hyperparameters, CLI, environment) rather than left to its default."""
        entry = self.settings.get(name)
        return isinstance(entry, dict) and "value" in entry and entry.get("source") != "default"

    @property
    def problem_type(self) -> str:
        """A manifest from before the setting existed is single_label."""
        return self.value("problem_type", SINGLE_LABEL)

    def trained_on_pairs(self) -> bool | None:
        """Whether the training files had a second text column; None when the manifest does not say."""
        columns = [f["columns"] for f in self.data.of_channel("train") if isinstance(f.get("columns"), dict)]
        return any(c.get(PAIR) for c in columns) if columns else None

    def to_json(self) -> dict[str, Any]:
        """The file's content, in the key order it has always had; onnx_int8 and promotion only when the run made
        that check or that decision."""
        record = {"run_id": self.run_id, "platform": self.platform, "git_commit": self.git_commit,
                  "settings": self.settings, "model_source": self.model_source,
                  "model_source_files": self.model_source_files,
                  "data": {"files": self.data.files, "rows": self.data.rows,
                           "validation_source": self.data.validation_source, "max_length": self.data.max_length,
                           "split_checks": self.data.split_checks},
                  "packages": self.packages, "device": self.device, "timing": self.timing, "partial": self.partial,
                  "trackers": self.trackers}
        optional = {"onnx_int8": self.onnx_int8, "promotion": self.promotion and self.promotion.record()}
        return record | {name: value for name, value in optional.items() if value is not None}

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str = RUN_MANIFEST) -> "RunManifest":
        if not isinstance(record, dict) or not isinstance(record.get("settings", {}), dict):
            raise ModelError(f"{where} is not a seqcls run manifest (expected an object with settings)")
        data = record.get("data") if isinstance(record.get("data"), dict) else {}
        return cls(str(record.get("run_id", "")), str(record.get("platform", "")), str(record.get("git_commit", "")),
                   record.get("settings", {}), str(record.get("model_source", "")), record.get("model_source_files"),
                   DataRecord(list(data.get("files") or []), dict(data.get("rows") or {}), data.get("validation_source"),
                              data.get("max_length"), data.get("split_checks")),
                   dict(record.get("packages") or {}), record.get("device"), record.get("timing"),
                   record.get("partial"), record.get("trackers"), record.get("onnx_int8"),
                   Decision.from_json(record.get("promotion")))

    @classmethod
    def read(cls, folder: Path) -> "RunManifest | None":
        """A model folder's manifest; None for a folder without one (a model not trained by seqcls)."""
        record = _read_object(folder / RUN_MANIFEST)
        return None if record is None else cls.from_json(record, str(folder / RUN_MANIFEST))


def _read_object(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelError(f"{path} is not JSON ({err})") from None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Comparison:
    """Both models' metric on the same rows, and the bootstrap of the difference (positive: this run is better)."""

    challenger: float
    champion: float
    rows: int
    rows_sha256: str
    split: str
    improvement: float  # challenger - champion, sign flipped for metrics where lower is better
    interval: tuple[float, float]  # of the improvement, at `confidence`: percentile bootstrap
    confidence: float
    resamples: int

    def record(self) -> dict[str, Any]:
        """The decision record's `comparison` (the two values are the decision's own value and current_value)."""
        return {"split": self.split, "rows": self.rows, "rows_sha256": self.rows_sha256, "improvement": self.improvement,
                "interval": list(self.interval), "confidence": self.confidence, "resamples": self.resamples}


@dataclass(frozen=True)
class Decision:
    """The promotion gate's decision (promotion/rule.py): metrics.json, run_manifest.json and promotion.json hold its
    record(), the promotion event logs it, the registries read it back (`from_json`)."""

    promoted: bool
    metric: str
    value: float | None  # this run's, on the compared rows
    current_value: float | None  # the current run's, on the same rows
    current_run_id: str | None
    tolerance: float
    reason: str
    rule: str = "not_worse"
    current_published_value: float | None = None  # what the current run published (its own rows): for reference
    comparison: Comparison | None = None
    incomparable: str | None = None  # why the current run could not score the rows

    def record(self) -> dict[str, Any]:
        """The JSON record; `promoted_flag` (1 or 0) is for SageMaker metric definitions, which read numbers only."""
        fields = asdict(self)
        fields["comparison"] = self.comparison.record() if self.comparison else None
        return {"promoted": fields.pop("promoted"), "promoted_flag": int(self.promoted), **fields}

    @property
    def outcome(self) -> str:
        return "promoted" if self.promoted else "kept"

    @classmethod
    def from_json(cls, record: object) -> "Decision | None":
        """A record() read back; None for anything that is not one (a foreign or broken file)."""
        if not isinstance(record, dict) or not isinstance(record.get("promoted"), bool):
            return None
        text = {name: record.get(name) if isinstance(record.get(name), str) else None
                for name in ("metric", "current_run_id", "reason", "rule", "incomparable")}
        compared = record.get("comparison") if isinstance(record.get("comparison"), dict) else None
        value, current = _number(record.get("value")), _number(record.get("current_value"))
        comparison = None if compared is None else Comparison(
            value, current, compared.get("rows"), compared.get("rows_sha256"), compared.get("split"),
            _number(compared.get("improvement")), tuple(compared.get("interval") or ()), _number(compared.get("confidence")),
            compared.get("resamples"))
        return cls(record["promoted"], text["metric"] or "", value, current, text["current_run_id"],
                   _number(record.get("tolerance")) or 0.0, text["reason"] or "", text["rule"] or "not_worse",
                   _number(record.get("current_published_value")), comparison, text["incomparable"])


@dataclass(frozen=True)
class Metrics:
    """One run's metrics.json: the kept evaluation's validation metrics (no timings, so identical runs give
    identical files), the labels, what the run decided, the test split's metrics and the promotion gate's record."""

    best_epoch: int
    validation: dict[str, Any]
    labels: list[str]
    decision_threshold: float | None = None  # single_label with two labels (0.5 when not tuned)
    label_thresholds: dict[str, float] | None = None  # multi_label, tuned on validation
    early_stopped_after_epoch: int | None = None
    best_step: int | None = None  # with eval_every_steps: the evaluation whose weights were kept
    partial: dict[str, Any] | None = None  # what a stopped run's model holds
    test: dict[str, Any] | None = None
    promotion: Decision | None = None

    def value(self, metric: str) -> float | None:
        """`test_mcc` or `validation_loss` (a promote_if name); None when the record lacks it."""
        split, _, name = metric.partition("_")
        found = self.test if split == "test" else self.validation if split == "validation" else None
        return _number(found.get(name if split == "test" else f"val_{name}")) if isinstance(found, dict) else None

    def to_json(self) -> dict[str, Any]:
        """The file's content; a decision the run did not make is left out, as it always was."""
        optional = {"decision_threshold": self.decision_threshold, "label_thresholds": self.label_thresholds,
                    "early_stopped_after_epoch": self.early_stopped_after_epoch, "best_step": self.best_step,
                    "partial": self.partial, "test": self.test,
                    "promotion": self.promotion and self.promotion.record()}
        return ({"best_epoch": self.best_epoch, "validation": self.validation, "labels": self.labels}
                | {name: value for name, value in optional.items() if value is not None})

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "Metrics":
        """Any JSON object reads (a published champion's file may come from an older or a foreign run): a field
        of the wrong type counts as missing."""
        def field_of(name: str, kind: type) -> Any:
            value = record.get(name)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(field_of("best_epoch", int) or 0, field_of("validation", dict) or {}, field_of("labels", list) or [],
                   _number(record.get("decision_threshold")), field_of("label_thresholds", dict),
                   field_of("early_stopped_after_epoch", int), field_of("best_step", int), field_of("partial", dict),
                   field_of("test", dict), Decision.from_json(record.get("promotion")))

    @classmethod
    def read(cls, folder: Path) -> "Metrics | None":
        """A model folder's metrics.json; None for a folder without one."""
        record = _read_object(folder / METRICS)
        if record is not None and not isinstance(record, dict):
            raise ModelError(f"{folder / METRICS} is not a seqcls metrics record (expected an object)")
        return None if record is None else cls.from_json(record)
