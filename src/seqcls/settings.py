"""Hyperparameters: the tutorial recipe as defaults, layered sources, typed parsing, validation.

Sources, lowest to highest precedence: built-in defaults < hyperparameters.json (SageMaker writes
every value as a JSON string) < env SEQCLS_<NAME> < command-line `--name value`. The platform module
collects the raw sources; this module only parses and validates, so it never reads os.environ.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import storage
from .errors import SettingsError

DEFAULT_MODEL = "bert-base-uncased"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SELECT_BEST = ("none", "mcc", "loss")
SECRET_MARKERS = ("key", "secret", "token", "password", "credential")


def _doc(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class Settings:
    """Resolved hyperparameters; one snapshot logged first and stored in the run manifest."""

    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata=_doc("Hub id or local folder; the `model` channel wins when present"))
    max_length: int = field(default=64, metadata=_doc("Truncate tokenized inputs to this many tokens"))
    batch_size: int = field(default=32, metadata=_doc("Training samples per optimizer step"))
    eval_batch_size: int = field(default=256, metadata=_doc("Samples per validation/test forward pass (no effect on results)"))
    learning_rate: float = field(default=2e-5, metadata=_doc("AdamW peak learning rate"))
    adam_epsilon: float = field(default=1e-8, metadata=_doc("AdamW epsilon"))
    weight_decay: float = field(default=0.0, metadata=_doc("AdamW decoupled weight decay"))
    epochs: int = field(default=4, metadata=_doc("Passes over the training data"))
    warmup_ratio: float = field(default=0.0, metadata=_doc("Fraction of steps with linear warm-up"))
    max_grad_norm: float = field(default=1.0, metadata=_doc("Gradient clipping norm; 0 disables"))
    seed: int = field(default=42, metadata=_doc("Seeds the split, the data order, dropout and the head init"))
    validation_split: float = field(default=0.1, metadata=_doc("Share of train held out when no validation channel is given"))
    text_column: str = field(default="sentence", metadata=_doc("Column with the text"))
    text_pair_column: str = field(default="", metadata=_doc("Optional second text column for sentence pairs"))
    label_column: str = field(default="label", metadata=_doc("Column with the label (strings or integers)"))
    precision: str = field(default="auto", metadata=_doc("auto (bf16 where GPU or CPU computes it natively, else fp32) | fp32 | bf16 | fp16"))
    device: str = field(default="auto", metadata=_doc("auto | cpu | cuda; cuda fails clearly when no GPU is visible"))
    cuda_graphs: bool = field(default=True, metadata=_doc("On one GPU, replay whole training steps as CUDA graphs (same math; falls back to eager, logged)"))
    group_by_length: bool = field(default=False, metadata=_doc("Batch similar lengths together: less padding, but it cost MCC on CoLA (README)"))
    output_uri: str = field(default="", metadata=_doc("s3://, gs:// or a path to publish <run_id>/ to; empty: no publish"))
    run_id: str = field(default="", metadata=_doc("Name of the published run folder; empty: the platform's job name or a timestamp"))
    publish_latest: bool = field(default=True, metadata=_doc("After the manifest, point <output_uri>/latest.json at this run"))
    s3_sse_kms_id: str = field(default="", metadata=_doc("KMS key id or ARN for SSE-KMS on S3 uploads; empty: the bucket's default encryption"))
    s3_expected_bucket_owner: str = field(default="", metadata=_doc("12-digit AWS account that must own the bucket; empty: not checked"))
    checkpoint_every_steps: int = field(default=0, metadata=_doc("Checkpoint every N optimizer steps (0: only at epoch ends)"))
    checkpoint_dir: str = field(default="", metadata=_doc("Checkpoint folder; empty: the platform's (<root>/checkpoints, AIP_CHECKPOINT_DIR)"))
    ignore_checkpoint: bool = field(default=False, metadata=_doc("Start fresh when the checkpoint does not match this run (default: refuse)"))
    distributed_timeout_s: int = field(default=600, metadata=_doc("Seconds a collective may wait for a peer before the job fails (torch.distributed)"))
    log_every_steps: int = field(default=40, metadata=_doc("Emit a train_progress event every N steps"))
    select_best: str = field(default="none", metadata=_doc("none | mcc | loss: keep the best epoch's weights instead of the last"))
    max_train_samples: int = field(default=0, metadata=_doc("Use a seeded sample of at most N training rows (0: all)"))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}


def is_secret(name: str) -> bool:
    """Names that look like credentials are masked wherever settings or env are logged or stored."""
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"hyperparameter {name}={raw!r}: expected true or false")


def parse_value(name: str, raw: Any) -> Any:
    """Parse one raw value (usually a string) into the field's type; error names the hyperparameter."""
    if name not in FIELDS:
        raise unknown_name(name)
    kind = FIELDS[name].type
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, (str, int, float)):
        text = str(raw).strip()
    else:
        raise SettingsError(f"hyperparameter {name}: expected a string or number, got {type(raw).__name__}")
    try:
        if kind == "bool":
            return _parse_bool(name, text)
        if kind == "int":
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
    except ValueError:
        raise SettingsError(f"hyperparameter {name}={raw!r}: expected {'an integer' if kind == 'int' else 'a number'}") from None
    return text


def unknown_name(name: str) -> SettingsError:
    close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; valid names: {', '.join(FIELDS)}"
    return SettingsError(f"unknown hyperparameter {name!r}{hint}")


def _check(condition: bool, name: str, value: Any, expectation: str) -> None:
    if not condition:
        raise SettingsError(f"hyperparameter {name}={value!r} is out of range: {expectation}")


def validate(s: Settings) -> None:
    """Cross-field and range checks that need no model; the model's max length is checked in model."""
    _check(bool(s.model_name_or_path), "model_name_or_path", s.model_name_or_path, "must not be empty")
    _check(2 <= s.max_length <= 8192, "max_length", s.max_length, "must be between 2 and 8192")
    _check(1 <= s.batch_size <= 65536, "batch_size", s.batch_size, "must be between 1 and 65536")
    _check(1 <= s.eval_batch_size <= 65536, "eval_batch_size", s.eval_batch_size, "must be between 1 and 65536")
    _check(0 < s.learning_rate < 1, "learning_rate", s.learning_rate, "must be > 0 and < 1")
    _check(0 < s.adam_epsilon < 1, "adam_epsilon", s.adam_epsilon, "must be > 0 and < 1")
    _check(0 <= s.weight_decay < 1, "weight_decay", s.weight_decay, "must be >= 0 and < 1")
    _check(1 <= s.epochs <= 1000, "epochs", s.epochs, "must be between 1 and 1000")
    _check(0 <= s.warmup_ratio < 1, "warmup_ratio", s.warmup_ratio, "must be >= 0 and < 1")
    _check(s.max_grad_norm >= 0, "max_grad_norm", s.max_grad_norm, "must be >= 0 (0 disables clipping)")
    _check(0 <= s.seed < 2**32, "seed", s.seed, "must be between 0 and 2**32-1")
    _check(0 < s.validation_split < 1, "validation_split", s.validation_split, "must be > 0 and < 1")
    _check(bool(s.text_column), "text_column", s.text_column, "must not be empty")
    _check(bool(s.label_column), "label_column", s.label_column, "must not be empty")
    _check(s.text_pair_column not in (s.text_column, s.label_column), "text_pair_column", s.text_pair_column,
           "must differ from text_column and label_column")
    _check(s.text_column != s.label_column, "label_column", s.label_column, "must differ from text_column")
    _check(s.precision in PRECISIONS, "precision", s.precision, f"must be one of {', '.join(PRECISIONS)}")
    _check(s.device in DEVICES, "device", s.device, f"must be one of {', '.join(DEVICES)}")
    _check(s.select_best in SELECT_BEST, "select_best", s.select_best, f"must be one of {', '.join(SELECT_BEST)}")
    _check(s.checkpoint_every_steps >= 0, "checkpoint_every_steps", s.checkpoint_every_steps, "must be >= 0")
    _check(10 <= s.distributed_timeout_s <= 86400, "distributed_timeout_s", s.distributed_timeout_s, "must be between 10 and 86400")
    _check(s.log_every_steps >= 1, "log_every_steps", s.log_every_steps, "must be >= 1")
    _check(s.max_train_samples >= 0, "max_train_samples", s.max_train_samples, "must be >= 0 (0: all rows)")
    if s.output_uri:
        storage.parse_uri(s.output_uri, "hyperparameter output_uri")  # a bad scheme or bucket fails here, before any training
    _check(not s.s3_expected_bucket_owner or (s.s3_expected_bucket_owner.isdigit() and len(s.s3_expected_bucket_owner) == 12),
           "s3_expected_bucket_owner", s.s3_expected_bucket_owner, "must be a 12-digit AWS account id")
    _check(all(c.isalnum() or c in "-_." for c in s.run_id) and not s.run_id.startswith("."), "run_id", s.run_id,
           "may hold only letters, digits, '-', '_' and '.', and must not start with '.'")


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    sources: dict[str, str]  # hyperparameter name -> the source its value came from

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Values with their sources, secrets masked: what the logs and the manifest record."""
        values = self.settings.as_dict()
        return {name: {"value": "***" if is_secret(name) and values[name] else values[name], "source": self.sources[name]}
                for name in values}


def resolve(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> Resolved:
    """Merge raw sources given lowest precedence first, parse every value, validate the result."""
    values: dict[str, Any] = {}
    sources = {name: "default" for name in FIELDS}
    for source, raw_values in layers:
        for name, raw in raw_values.items():
            values[name] = parse_value(name, raw)
            sources[name] = source
    settings = Settings(**values)
    validate(settings)
    return Resolved(settings, sources)


def _decode(value: Any) -> Any:
    """Decode a value as sagemaker-training-toolkit does (environment.read_hyperparameters: json.loads,
    else the raw string). SDK v2 estimators JSON-encode every value (`"\\"bf16\\""`), SDK v3 and boto3
    send plain strings (`"bf16"`). A decoded number or boolean keeps its text instead, which parses to
    the same value for typed settings and stays verbatim for text ones (run_id "1e3" is not 1000.0)."""
    if not isinstance(value, str):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, (str, list, dict)) or decoded is None else value


def load_hyperparameters_json(text: str, path: str) -> dict[str, Any]:
    """Parse SageMaker's hyperparameters.json: an object of string values, each JSON-decoded when it can be."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SettingsError(f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a JSON object of hyperparameters, got {type(data).__name__}")
    return {name: _decode(value) for name, value in data.items()}


def check_scalar_values(values: Mapping[str, Any], path: str) -> None:
    """Our hyperparameters are strings or numbers; a list, object or null is a mistake worth naming."""
    for name, value in values.items():
        if isinstance(value, (dict, list)) or value is None:
            kind = {dict: "an object", list: "a list"}.get(type(value), "null")
            shown = f"{kind} (value masked)" if is_secret(name) else json.dumps(value)[:80]
            raise SettingsError(f"{path}: hyperparameter {name} must be a string or number, got {shown}")
