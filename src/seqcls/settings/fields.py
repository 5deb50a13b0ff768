"""The hyperparameters themselves: each field of `Settings` with its default, help, range or choices, whether it
changes the trained weights and whether it is a secret; the tutorial recipe as the defaults; the help and the
docs table generated from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..problem_types import SELECT_BEST, SINGLE_LABEL, TYPES

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
             math: bool = True, auto: bool = False) -> Any:
    """A hyperparameter: what it does, what values it takes, whether it changes the trained weights
    (checkpoints from runs that differ only in non-math settings still resume), and whether the word `auto`
    may stand for a number the job works out from the data. Whether to mask it follows from its name (`is_secret`)."""
    return field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices, "math": math,
                                            "auto": auto})


# transformers' get_scheduler names (SchedulerType) that need nothing beyond warm-up and length.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
POLYNOMIAL_LR_END = 1e-7  # get_polynomial_decay_schedule_with_warmup's default, which get_scheduler keeps
POSITIVE_INT = Bounds(low=1)
NON_NEGATIVE = Bounds(low=0)
FRACTION_OPEN = Bounds(low=0, high=1, low_open=True, high_open=True)
FRACTION_FROM_ZERO = Bounds(low=0, high=1, high_open=True)


@dataclass(frozen=True)
class Optimizer:
    """AdamW's settings, as a group: what the optimizer is built from (training/steps.py), and nothing else."""

    learning_rate: float
    adam_epsilon: float
    weight_decay: float


@dataclass(frozen=True)
class Reading:
    """How rows are read from a file (data/): the columns the user named and how the problem type reads labels.
    Empty columns are not "unset": data/columns.py decides from `explicit` which ones the user gave."""

    problem_type: str
    label_delimiter: str
    text_column: str
    text_pair_column: str
    label_column: str


@dataclass(frozen=True)
class Promotion:
    """The promotion gate's settings, as a group (promotion/): what it compares, by which rule, where the champion
    lives, and where the outcome marker goes. `seed` seeds the bootstrap."""

    metric: str
    tolerance: float
    rule: str
    confidence: float
    incomparable: str
    output_uri: str
    marker_file: str
    seed: int


@dataclass(frozen=True)
class Settings:
    """Resolved hyperparameters; one snapshot logged first and stored in the run manifest. Flat, as the command line,
    SageMaker and Vertex name them; a group that travels together is a typed view (`optimizer`, `reading`, `promotion`)."""

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
    eval_batch_size: int = _setting(256, "Samples per validation/test forward pass (no effect on results beyond "
                                    "float rounding: a batch's shape sets the kernels' summation order)",
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
    def optimizer(self) -> Optimizer:
        return Optimizer(self.learning_rate, self.adam_epsilon, self.weight_decay)

    @property
    def reading(self) -> Reading:
        return Reading(self.problem_type, self.label_delimiter, self.text_column, self.text_pair_column,
                       self.label_column)

    @property
    def promotion(self) -> Promotion:
        return Promotion(self.promote_if, self.promote_tolerance, self.promote_rule, self.promote_confidence,
                         self.promote_if_incomparable, self.output_uri, self.promotion_file, self.seed)

    @property
    def onnx_exports(self) -> tuple[str, ...]:
        """The ONNX files a run saves, by the inference_backend that runs each."""
        return ("onnx",) * self.export_onnx + ("onnx_int8",) * self.export_onnx_int8


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}
STRUCTURED = {"class_weights": (dict,), "label_names": (dict, list)}  # settings given as JSON, an object or a list
OPERATIONAL = frozenset(name for name, f in FIELDS.items() if not f.metadata["math"])


def is_secret(name: str) -> bool:
    """Any name that looks like a credential (a setting, or an unknown key in hyperparameters.json): masked
    wherever settings are logged or stored. No setting of ours holds a secret: credentials come from the
    platforms' default chains."""
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


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
