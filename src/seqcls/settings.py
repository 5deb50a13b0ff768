"""Hyperparameters: the tutorial recipe as defaults, layered sources, typed parsing, validation.

Sources, lowest to highest precedence: built-in defaults < hyperparameters.json (SageMaker writes
every value as a JSON string) < env SEQCLS_<NAME> < command-line `--name value`. runtime/
collects the raw sources; this module only parses and validates, so it never reads os.environ.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from . import extras
from .errors import SettingsError
from .problem_types import REGRESSION, SELECT_BEST, SINGLE_LABEL, TYPES, promotion_metrics
from .uris import parse_uri

DEFAULT_MODEL = "bert-base-uncased"
REPORTERS = ("tensorboard", "mlflow", "wandb", "vertex")  # report_to's trackers (tracking/)
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # export_onnx: torch's exporter and the check's runtime
SECRET_MARKERS = ("key", "secret", "token", "password", "credential")


@dataclass(frozen=True)
class Bounds:
    """A numeric range; `text` is what --help, the docs table and the error message say."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    @property
    def text(self) -> str:
        def shown(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {shown(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {shown(self.high)}")
        return " and ".join(parts)


def _setting(default: Any, help: str, *, bounds: Bounds | None = None, choices: tuple[str, ...] = (),
             math: bool = True, secret: bool = False, auto: bool = False) -> Any:
    """A hyperparameter: what it does, what values it takes, whether it changes the trained weights
    (checkpoints from runs that differ only in non-math settings still resume), whether to mask it, and
    whether the word `auto` may stand for a number the job works out from the data."""
    return field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices, "math": math,
                                            "secret": secret, "auto": auto})


# transformers' get_scheduler names (SchedulerType) that need nothing beyond warm-up and length.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
POLYNOMIAL_LR_END = 1e-7  # get_polynomial_decay_schedule_with_warmup's default, which get_scheduler keeps
POSITIVE_INT = Bounds(low=1)
NON_NEGATIVE = Bounds(low=0)
FRACTION_OPEN = Bounds(low=0, high=1, low_open=True, high_open=True)
FRACTION_FROM_ZERO = Bounds(low=0, high=1, high_open=True)


@dataclass(frozen=True)
class Settings:
    """Resolved hyperparameters; one snapshot logged first and stored in the run manifest."""

    model_name_or_path: str = _setting(DEFAULT_MODEL, "Hub id or local folder; the `model` channel wins when present")
    base_model: str = _setting("", "Hub id of the pretrained model, for the model card's base_model when training from a "
                                   "folder (the model channel); empty: model_name_or_path when that is a Hub id", math=False)
    max_length: int | str = _setting(64, "Truncate tokenized inputs to this many tokens (at most the model's limit); "
                                         "auto: the training rows' max_length_percentile, rounded up to a multiple of 8",
                                     bounds=Bounds(2, 8192), auto=True)
    max_length_percentile: float = _setting(99.5, "With max_length=auto: the share (in %) of training rows that fit "
                                                  "untruncated", bounds=Bounds(50, 100))
    batch_size: int = _setting(32, "Training rows per forward/backward pass, over all processes; an optimizer step "
                                   "takes batch_size x gradient_accumulation_steps rows (docs/scale.md)",
                               bounds=Bounds(1, 65536))
    gradient_accumulation_steps: int = _setting(1, "Batches whose gradients add up to one optimizer step: the recipe of "
                                                   "a bigger batch in the memory of batch_size rows", bounds=Bounds(1, 1024))
    eval_batch_size: int = _setting(256, "Samples per validation/test forward pass (no effect on results)",
                                    bounds=Bounds(1, 65536), math=False)
    learning_rate: float = _setting(2e-5, "AdamW peak learning rate", bounds=FRACTION_OPEN)
    adam_epsilon: float = _setting(1e-8, "AdamW epsilon", bounds=FRACTION_OPEN)
    weight_decay: float = _setting(0.0, "AdamW decoupled weight decay", bounds=FRACTION_FROM_ZERO)
    epochs: int = _setting(4, "Passes over the training data", bounds=Bounds(1, 1000))
    warmup_ratio: float = _setting(0.0, "Fraction of optimizer steps with linear warm-up (rounded down)",
                                   bounds=FRACTION_FROM_ZERO)
    warmup_steps: int = _setting(0, "Optimizer steps of linear warm-up; wins over warmup_ratio when > 0 (as in "
                                    "transformers' TrainingArguments)", bounds=Bounds(0, 10**9))
    lr_scheduler_type: str = _setting("linear", "Learning-rate schedule after warm-up, transformers' get_scheduler: "
                                                "linear decay to 0, cosine, cosine_with_restarts, polynomial, constant "
                                                "(no warm-up) or constant_with_warmup", choices=SCHEDULERS)
    max_steps: int = _setting(0, "Stop after this many optimizer steps, mid-epoch if need be, running more epochs than "
                                 "`epochs` if need be (0: epochs decide)", bounds=Bounds(0, 10**9))
    max_grad_norm: float = _setting(1.0, "Gradient clipping norm; 0 disables", bounds=NON_NEGATIVE)
    seed: int = _setting(42, "Seeds the split, the data order, dropout and the head init", bounds=Bounds(0, 2**32 - 1))
    validation_split: float = _setting(0.1, "Share of train held out when no validation channel is given",
                                       bounds=FRACTION_OPEN)
    text_column: str = _setting("sentence", "Column with the text; left unset, chosen from each header: text or sentence, "
                                            "else the one column left")
    text_pair_column: str = _setting("", "Optional second text column for sentence pairs; left unset with text_column, "
                                         "sentence1 + sentence2 in a header are a pair")
    label_column: str = _setting("label", "Column with the label (strings or integers); left unset, chosen from each "
                                          "header: label, else labels or target")
    precision: str = _setting("auto", "auto: bf16 where the GPU or CPU computes it natively, else fp32; fp16 needs a GPU",
                              choices=("auto", "fp32", "bf16", "fp16"))
    device: str = _setting("auto", "auto: the GPU when one is usable; cuda fails clearly when none is",
                           choices=("auto", "cpu", "cuda"), math=False)
    cuda_graphs: bool = _setting(True, "On one GPU, replay whole training steps as CUDA graphs (same math; "
                                       "falls back to eager, logged)", math=False)
    gradient_checkpointing: bool = _setting(False, "Recompute activations in backward instead of keeping them "
                                                   "(transformers' gradient_checkpointing_enable): activation memory "
                                                   "per layer instead of per step, for one more forward pass", math=False)
    group_by_length: bool = _setting(False, "Sort rows by length within windows of 50 batches: half the padding on "
                                            "CoLA (1.6x faster on CPU); its test MCC varied more over seeds "
                                            "(docs/measured.md)")
    output_uri: str = _setting("", "s3://, gs:// or a path to publish <run_id>/ to; empty: no publish "
                                   "(Vertex: AIP_MODEL_DIR)", math=False)
    run_id: str = _setting("", "Name of the published run folder; empty: the platform's job name or a timestamp",
                           math=False)
    publish_latest: bool = _setting(True, "After the manifest, point <output_uri>/latest.json at this run", math=False)
    promote_if: str = _setting("none", "Gate <output_uri>/latest.json: move it to this run only when this run's "
                                       "<split>_<metric> (test_mcc, validation_loss, ...: the problem type's, "
                                       "docs/publishing.md) is at least the current latest run's; none: every run "
                                       "moves it", math=False)
    promote_tolerance: float = _setting(0.0, "With promote_if: promote a run at most this much worse than the current "
                                             "latest run (0: at least as good)", bounds=NON_NEGATIVE, math=False)
    promote_rule: str = _setting("not_worse", "With promote_if, both runs scored on this run's rows: not_worse (this "
                                              "run at most promote_tolerance worse) or better (the bootstrap interval "
                                              "of the improvement lies above promote_tolerance)",
                                 choices=("not_worse", "better"), math=False)
    promote_confidence: float = _setting(0.95, "With promote_rule=better: the confidence of the paired bootstrap "
                                               "interval (1,000 resamples of the rows, seeded)",
                                         bounds=FRACTION_OPEN, math=False)
    promote_if_incomparable: str = _setting("keep", "With promote_if: when the current latest run cannot score this "
                                                    "run's rows (other labels or problem type, missing or failing "
                                                    "files): keep it or promote this run", choices=("keep", "promote"),
                                            math=False)
    promotion_file: str = _setting("", "With promote_if: also write the outcome, promoted or kept (no newline), to this "
                                       "file (a KFP OutputPath); empty: none", math=False)
    s3_sse_kms_id: str = _setting("", "KMS key id or ARN for SSE-KMS on S3 uploads (an identifier, logged); empty: "
                                      "the bucket's default encryption", math=False)
    s3_expected_bucket_owner: str = _setting("", "12-digit AWS account that must own the bucket; empty: not checked",
                                             math=False)
    eval_every_steps: int = _setting(0, "Validate every N optimizer steps and at the last one, for select_best, "
                                        "early stopping, the logs and tuning (0: at each epoch end)",
                                     bounds=Bounds(0, 10**9))
    checkpoint_every_steps: int = _setting(0, "Checkpoint every N optimizer steps (0: only at epoch ends and "
                                              "evaluations, which always checkpoint)",
                                           bounds=NON_NEGATIVE, math=False)
    checkpoint_dir: str = _setting("", "Checkpoint folder; empty: the platform's (<root>/checkpoints, "
                                       "AIP_CHECKPOINT_DIR)", math=False)
    ignore_checkpoint: bool = _setting(False, "Start fresh when the checkpoint does not match this run "
                                              "(default: refuse)", math=False)
    distributed_timeout_s: int = _setting(600, "Seconds a collective may wait for a peer before the job fails",
                                          bounds=Bounds(10, 86400), math=False)
    log_every_steps: int = _setting(40, "Emit a train_progress event every N steps", bounds=POSITIVE_INT, math=False)
    problem_type: str = _setting(SINGLE_LABEL, "single_label: one class per row (softmax); multi_label: a set of "
                                                 "labels per row (sigmoid, per-label thresholds); regression: one number "
                                                 "per row (docs/problem-types.md)", choices=tuple(TYPES))
    label_delimiter: str = _setting(",", "multi_label: what separates a row's labels in a CSV/TSV cell (JSONL/Parquet "
                                         "give a list)")
    select_best: str = _setting("none", "Keep the best epoch's weights instead of the last, by a validation metric of "
                                        "the problem type (mcc: single_label, f1_micro: multi_label, pearson or mse: "
                                        "regression) or by loss", choices=tuple(SELECT_BEST))
    early_stopping_patience: int = _setting(0, "Stop after this many evaluations (epochs, or eval_every_steps) without "
                                               "a better select_best metric (0: run every epoch); needs select_best",
                                            bounds=Bounds(0, 1000))
    early_stopping_min_delta: float = _setting(0.0, "How much the select_best metric must improve to count as better",
                                               bounds=NON_NEGATIVE)
    split_overlap: str = _setting("warn", "Train rows whose text (whitespace and case normalised) is also in validation "
                                          "or test: warn, fail (exit 2 before training) or drop them from train",
                                  choices=("warn", "fail", "drop"))
    class_weights: str = _setting("none", "single_label: loss weight per label: none, balanced (n_rows / (n_labels * "
                                          "label_rows), from train), or a JSON object {\"label\": weight}; unlisted "
                                          "labels weigh 1")
    decision_threshold: float | str = _setting(0.5, "Two labels only: predict the second label when its probability "
                                                    "is at least this; auto: the one with the best validation MCC",
                                               bounds=FRACTION_OPEN, auto=True)
    label_smoothing: float = _setting(0.0, "single_label: the training loss's cross-entropy against labels smoothed by "
                                           "this share (torch's CrossEntropyLoss(label_smoothing=)); validation loss "
                                           "stays plain", bounds=FRACTION_FROM_ZERO)
    max_train_samples: int = _setting(0, "Use a seeded sample of at most N training rows (0: all)", bounds=NON_NEGATIVE)
    label_names: str = _setting("", "Readable class or tag names for config.json's id2label: a JSON list in label id order "
                                    "(the labels sorted) or a JSON object {\"label\": \"name\"} naming every label; "
                                    "empty: the labels as found. Not for regression", math=False)
    report_to: str = _setting("tensorboard", "Where the run is tracked, comma-separated: tensorboard (event files in "
                                             "the platform's folder), mlflow (MLFLOW_TRACKING_URI: a server, a SageMaker "
                                             "MLflow ARN or a folder), wandb (WANDB_PROJECT, WANDB_MODE=offline...), "
                                             "vertex (Vertex AI Experiments: AIP_EXPERIMENT_NAME or vertex_experiment; "
                                             "docs/tracking.md); none: nowhere", math=False)
    mlflow_experiment: str = _setting("", "report_to=mlflow: the experiment; empty: MLFLOW_EXPERIMENT_NAME, else "
                                          "seqcls", math=False)
    mlflow_registered_model: str = _setting("", "report_to=mlflow: register every published run as a version of this "
                                                "model and move its alias champion to runs the promotion gate promotes "
                                                "(every run without promote_if); empty: no registry", math=False)
    mlflow_log_model: bool = _setting(False, "report_to=mlflow: also upload the model folder to the run's artifacts "
                                             "(always with mlflow_registered_model)", math=False)
    vertex_experiment: str = _setting("", "report_to=vertex: the Vertex AI experiment (created if missing); empty: "
                                          "AIP_EXPERIMENT_NAME, which CustomJob.run(experiment=...) sets", math=False)
    vertex_api_endpoint: str = _setting("", "report_to=vertex: the Vertex AI API endpoint, e.g. a Private Service "
                                            "Connect address; empty: the region's", math=False)
    tracker_timeout_s: int = _setting(120, "How long the end of the job waits for trackers to take the last of the run "
                                           "(the model upload included) before it warns and exits as it would have",
                                      bounds=Bounds(1, 86400), math=False)
    inference_backend: str = _setting("torch", "seqcls predict and serve: torch (the safetensors weights), onnx (the "
                                               "run's model.onnx in onnxruntime on the CPU, fp32) or onnx_int8 "
                                               "(model.int8.onnx); a run saved without the file warns and uses torch",
                                      choices=("torch", "onnx", "onnx_int8"), math=False)
    export_onnx: bool = _setting(False, "Also save model.onnx (dynamic batch and sequence axes), checked against the "
                                        "PyTorch logits on held-out rows before anything is published", math=False)
    export_onnx_int8: bool = _setting(False, "With export_onnx: also save model.int8.onnx (onnxruntime's dynamic int8 "
                                             "quantization), kept only when its labels equal PyTorch's on at least "
                                             "99.5% of up to 2,000 held-out rows (run_manifest.json: onnx_int8)",
                                      math=False)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def onnx_exports(self) -> tuple[str, ...]:
        """The ONNX files a run saves, by the inference_backend that runs each."""
        return ("onnx",) * self.export_onnx + ("onnx_int8",) * self.export_onnx_int8


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}
STRUCTURED = {"class_weights": (dict,), "label_names": (dict, list)}  # settings given as JSON, an object or a list
OPERATIONAL = frozenset(name for name, f in FIELDS.items() if not f.metadata["math"])


def is_secret(name: str) -> bool:
    """A setting marked secret, or any name that looks like a credential (an unknown one in
    hyperparameters.json, say): masked wherever settings are logged or stored."""
    lowered = name.lower()
    marked = name in FIELDS and FIELDS[name].metadata["secret"]
    return marked or any(marker in lowered for marker in SECRET_MARKERS)


def allowed_values(name: str) -> str:
    """The value rule of one setting in words, as --help and the docs table show it."""
    meta = FIELDS[name].metadata
    if meta["choices"]:
        return " | ".join(meta["choices"])
    if meta["bounds"] is not None:
        return ("auto | " if meta["auto"] else "") + meta["bounds"].text
    return {"bool": "true | false"}.get(FIELDS[name].type, "text")


def _shown_default(name: str) -> str:
    default = FIELDS[name].default
    if isinstance(default, bool):
        return "true" if default else "false"
    return f"{default:g}" if isinstance(default, float) else str(default) if default != "" else "(empty)"


def help_lines() -> list[str]:
    """Every hyperparameter with its default, allowed values and help: `seqcls train --help`."""
    lines = []
    for name, f in FIELDS.items():
        lines.append(f"  --{name} (default: {_shown_default(name)}; {allowed_values(name)})")
        lines.append(f"      {f.metadata['help']}")
    return lines


def markdown_table() -> str:
    """The hyperparameter table of docs/hyperparameters.md (a test keeps that file equal to this)."""
    rows = ["| name | default | values | changes the weights | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, f in FIELDS.items():
        values = allowed_values(name).replace("|", "\\|")  # a bare | would end the table cell
        rows.append(f"| `{name}` | `{_shown_default(name)}` | {values} | "
                    f"{'yes' if f.metadata['math'] else 'no'} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


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
    kind = FIELDS[name].type.removesuffix(" | str")  # "int | str": a number, or `auto` where the setting allows it
    if isinstance(raw, (dict, list)) and name in STRUCTURED:  # hyperparameters.json may hold the map as an object
        raw = json.dumps(raw, sort_keys=name == "class_weights")
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, (str, int, float)):
        text = str(raw).strip()
    else:
        raise SettingsError(f"hyperparameter {name}: expected a string or number, got {type(raw).__name__}")
    if FIELDS[name].metadata["auto"] and text.lower() == "auto":
        return "auto"
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
        expected = ("an integer" if kind == "int" else "a number") + (" or auto" if FIELDS[name].metadata["auto"] else "")
        raise SettingsError(f"hyperparameter {name}={raw!r}: expected {expected}") from None
    return text


def unknown_name(name: str) -> SettingsError:
    close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; valid names: {', '.join(FIELDS)}"
    return SettingsError(f"unknown hyperparameter {name!r}{hint}")


def _check(condition: bool, name: str, value: Any, expectation: str) -> None:
    if not condition:
        raise SettingsError(f"hyperparameter {name}={value!r} is out of range: {expectation}")


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def validate(s: Settings) -> None:
    """Every field's declared range or choices, then the checks that span fields; the model's own
    max length is checked in model, once its config is read."""
    for name, f in FIELDS.items():
        value = getattr(s, name)
        if f.metadata["choices"]:
            _check(value in f.metadata["choices"], name, value, f"must be one of {', '.join(f.metadata['choices'])}")
        elif f.metadata["bounds"] is not None and value != "auto":
            _check(f.metadata["bounds"].holds(value), name, value, f"must be {f.metadata['bounds'].text}")
    for name in ("model_name_or_path", "text_column", "label_column"):
        _check(bool(getattr(s, name)), name, getattr(s, name), "must not be empty")
    _check(s.text_pair_column not in (s.text_column, s.label_column), "text_pair_column", s.text_pair_column,
           "must differ from text_column and label_column")
    _check(s.text_column != s.label_column, "label_column", s.label_column, "must differ from text_column")
    _check(bool(s.label_delimiter), "label_delimiter", s.label_delimiter, "must not be empty")
    _check(not s.base_model or _is_repo_id(s.base_model), "base_model", s.base_model, "must be a Hub id such as org/name")
    if s.output_uri:
        parse_uri(s.output_uri, "hyperparameter output_uri")  # a bad scheme or bucket fails here, before any training
    _check(not s.s3_expected_bucket_owner or (s.s3_expected_bucket_owner.isdigit() and len(s.s3_expected_bucket_owner) == 12),
           "s3_expected_bucket_owner", s.s3_expected_bucket_owner, "must be a 12-digit AWS account id")
    _validate_training_rules(s)
    _check(not s.run_id or is_safe_run_id(s.run_id), "run_id", s.run_id, RUN_ID_RULE)


RUN_ID_RULE = "may hold only ASCII letters, digits, '-', '_' and '.', and must not start with '.'"


def is_safe_run_id(run_id: str) -> bool:
    """A folder name on every store, printable as is: the run_id setting and a platform's job name alike."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", run_id)) and not run_id.startswith(".")


def class_weight_map(value: str) -> dict[str, float] | None:
    """class_weights as given: None for none/balanced, else the {label: weight} map, checked (positive, finite)."""
    if value in ("none", "balanced"):
        return None
    try:
        weights = json.loads(value)
    except ValueError:
        weights = None
    if not isinstance(weights, dict) or not weights:
        raise SettingsError(f"hyperparameter class_weights={value!r}: expected none, balanced or a JSON object of "
                            "label weights such as {\"0\": 1.0, \"1\": 2.5}")
    for label, weight in weights.items():
        number = weight if isinstance(weight, (int, float)) and not isinstance(weight, bool) else float("nan")
        _check(math.isfinite(number) and number > 0, "class_weights", value,
               f"the weight of label {label!r} must be a positive number, got {json.dumps(weight)}")
    return {str(label): float(weight) for label, weight in weights.items()}


def label_name_map(value: str) -> list[str] | dict[str, str] | None:
    """label_names as given: None when empty, else the list (id order) or the {label: name} map, checked here
    (names non-empty and distinct); whether they fit the labels found is data's check, once train is read."""
    if not value:
        return None
    try:
        names = json.loads(value)
    except ValueError:
        names = None
    given = list(names.values()) if isinstance(names, dict) else names
    if not isinstance(given, list) or not given:
        raise SettingsError(f"hyperparameter label_names={value!r}: expected a JSON list of names in label id order, "
                            "such as [\"unacceptable\", \"acceptable\"], or a JSON object such as "
                            "{\"0\": \"unacceptable\", \"1\": \"acceptable\"}")
    for name in given:
        _check(isinstance(name, str) and bool(name.strip()), "label_names", value,
               f"every name must be a non-empty string, got {json.dumps(name)}")
    stripped = [name.strip() for name in given]
    repeated = sorted({name for name in stripped if stripped.count(name) > 1})
    _check(not repeated, "label_names", value, f"names must be distinct; repeated: {', '.join(map(repr, repeated))}")
    return dict(zip(map(str, names), stripped)) if isinstance(names, dict) else stripped


def _validate_training_rules(s: Settings) -> None:
    """Settings that only make sense together."""
    _check(not s.early_stopping_patience or s.select_best != "none", "early_stopping_patience",
           s.early_stopping_patience, "needs select_best (mcc or loss, or the problem type's metric): it picks the "
                                      "metric that stops the run and keeps that best epoch's weights")
    class_weight_map(s.class_weights)
    _check(s.export_onnx or not s.export_onnx_int8, "export_onnx_int8", s.export_onnx_int8,
           "needs export_onnx=true: the int8 model is quantized from model.onnx")
    missing = [name for name in ONNX_MODULES if s.export_onnx and importlib.util.find_spec(name) is None]
    _check(not missing, "export_onnx", s.export_onnx, f"needs {', '.join(missing)}: pip install 'seqcls[onnx]' "
                                                      "(the image has them)")
    trackers = report_targets(s.report_to)
    _check("mlflow" not in trackers or extras.installed("mlflow"), "report_to", s.report_to,
           f"needs the MLflow client: {extras.install_hint('mlflow')}")
    _check("wandb" not in trackers or importlib.util.find_spec("wandb") is not None, "report_to", s.report_to,
           "needs wandb: pip install wandb (not in the image: build FROM it and add it)")
    _check("vertex" not in trackers or extras.installed("google.cloud.aiplatform"), "report_to", s.report_to,
           f"needs the Vertex AI SDK: {extras.install_hint('google.cloud.aiplatform')}")
    for name, tracker in (("mlflow_experiment", "mlflow"), ("mlflow_registered_model", "mlflow"),
                          ("mlflow_log_model", "mlflow"), ("vertex_experiment", "vertex"),
                          ("vertex_api_endpoint", "vertex")):
        _check(not getattr(s, name) or tracker in trackers, name, getattr(s, name),
               f"needs report_to to include {tracker}")
    label_name_map(s.label_names)
    _check(not s.label_names or s.problem_type != REGRESSION, "label_names", s.label_names,
           "names classes or tags; a regression model has one output, a score")
    _check_select_best(s)
    _check_promotion(s)
    _check(s.lr_scheduler_type != "constant" or not (s.warmup_steps or s.warmup_ratio), "lr_scheduler_type",
           s.lr_scheduler_type, "constant has no warm-up: use constant_with_warmup, or set warmup_steps and "
                                "warmup_ratio to 0")
    _check(s.lr_scheduler_type != "polynomial" or s.learning_rate > POLYNOMIAL_LR_END, "learning_rate", s.learning_rate,
           f"lr_scheduler_type=polynomial decays to {POLYNOMIAL_LR_END:g} (transformers' lr_end): the peak must be above it")
    for name, unset in (("class_weights", "none"), ("decision_threshold", 0.5), ("label_smoothing", 0.0)):
        _check(getattr(s, name) == unset or s.problem_type == SINGLE_LABEL, name, getattr(s, name),
               f"needs problem_type=single_label (it weighs, decides or smooths classes), not {s.problem_type}")


def report_targets(value: str) -> tuple[str, ...]:
    """report_to as a tuple of trackers, in the order given; `none` (alone) is the empty tuple."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in value.split(",") if name.strip()))
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in REPORTERS]
    _check(bool(names) and not unknown, "report_to", value,
           f"must be none or a comma-separated list of {', '.join(REPORTERS)}"
           + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names


def _check_select_best(s: Settings) -> None:
    """A metric of another problem type is never computed: name the ones this type has."""
    needs = SELECT_BEST.get(s.select_best)
    if needs is not None and needs != s.problem_type:
        usable = [name for name, kind in SELECT_BEST.items() if kind in (None, s.problem_type)]
        raise SettingsError(f"hyperparameter select_best={s.select_best} needs problem_type={needs}; with "
                            f"problem_type={s.problem_type} use one of {', '.join(usable)}")


def _check_promotion(s: Settings) -> None:
    """The gate moves <output_uri>/latest.json by a metric this problem type's runs record."""
    if s.promote_if == "none":
        _check(not s.promotion_file, "promotion_file", s.promotion_file,
               "needs promote_if: without a gate every run moves latest.json")
        return
    usable = promotion_metrics(s.problem_type)
    _check(s.promote_if in usable, "promote_if", s.promote_if,
           f"must be none or a metric of problem_type={s.problem_type}: {', '.join(usable)}")
    _check(bool(s.output_uri), "promote_if", s.promote_if,
           "needs output_uri: the gate decides where <output_uri>/latest.json points (on Vertex, AIP_MODEL_DIR "
           "always receives the run just trained; docs/publishing.md)")
    _check(s.publish_latest, "promote_if", s.promote_if,
           "needs publish_latest=true: the gate decides whether latest.json moves")


@dataclass(frozen=True)
class Resolved:
    settings: Settings
    sources: dict[str, str]  # hyperparameter name -> the source its value came from

    @property
    def explicit(self) -> frozenset[str]:
        """The settings a user gave (any source but the defaults): data leaves the others to the files' headers."""
        return frozenset(name for name, source in self.sources.items() if source != "default")

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
        if isinstance(value, STRUCTURED.get(name, ())):
            continue  # a setting given as JSON (an object or list in hyperparameters.json)
        if isinstance(value, (dict, list)) or value is None:
            kind = {dict: "an object", list: "a list"}.get(type(value), "null")
            shown = f"{kind} (value masked)" if is_secret(name) else json.dumps(value)[:80]
            raise SettingsError(f"{path}: hyperparameter {name} must be a string or number, got {shown}")
