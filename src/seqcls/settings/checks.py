"""The settings checked together: ranges and choices, then the rules that tie settings to each other (select_best
and the problem type, the promotion gate, the trackers and the extras they need), each failing with the setting
and what it expects."""

from __future__ import annotations

from .. import extras
from ..errors import SettingsError
from ..problem_types import REGRESSION, SELECT_BEST, SINGLE_LABEL, promotion_metrics
from ..uris import parse_uri
from .fields import FIELDS, ONNX_MODULES, POLYNOMIAL_LR_END, Settings
from .values import RUN_ID_RULE, check_setting, class_weight_map, is_safe_run_id, label_name_map, report_targets


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
            check_setting(value in f.metadata["choices"], name, value, f"must be one of {', '.join(f.metadata['choices'])}")
        elif f.metadata["bounds"] is not None and value != "auto":
            check_setting(f.metadata["bounds"].holds(value), name, value, f"must be {f.metadata['bounds'].text}")
    for name in ("model_name_or_path", "text_column", "label_column"):
        check_setting(bool(getattr(s, name)), name, getattr(s, name), "must not be empty")
    check_setting(s.text_pair_column not in (s.text_column, s.label_column), "text_pair_column", s.text_pair_column,
                  "must differ from text_column and label_column")
    check_setting(s.text_column != s.label_column, "label_column", s.label_column, "must differ from text_column")
    check_setting(bool(s.label_delimiter), "label_delimiter", s.label_delimiter, "must not be empty")
    check_setting(not s.base_model or _is_repo_id(s.base_model), "base_model", s.base_model, "must be a Hub id such as org/name")
    if s.output_uri:
        parse_uri(s.output_uri, "hyperparameter output_uri")  # a bad scheme or bucket fails here, before any training
    owner = s.s3_expected_bucket_owner
    check_setting(not owner or (owner.isdigit() and len(owner) == 12), "s3_expected_bucket_owner", owner,
                  "must be a 12-digit AWS account id")
    _validate_training_rules(s)
    check_setting(not s.run_id or is_safe_run_id(s.run_id), "run_id", s.run_id, RUN_ID_RULE)


def _validate_training_rules(s: Settings) -> None:
    """Settings that only make sense together."""
    check_setting(not s.early_stopping_patience or s.select_best != "none", "early_stopping_patience",
                  s.early_stopping_patience, "needs select_best (mcc or loss, or the problem type's metric): it "
                                             "picks the metric that stops the run and keeps that best epoch's weights")
    class_weight_map(s.class_weights)
    check_setting(s.export_onnx or not s.export_onnx_int8, "export_onnx_int8", s.export_onnx_int8,
                  "needs export_onnx=true: the int8 model is quantized from model.onnx")
    missing = [name for name in ONNX_MODULES if s.export_onnx and not extras.installed(name)]
    check_setting(not missing, "export_onnx", s.export_onnx,
                  f"needs {', '.join(missing)}: pip install 'seqcls[onnx]' (the image has them)")
    trackers = report_targets(s.report_to)
    check_setting("mlflow" not in trackers or extras.installed("mlflow"), "report_to", s.report_to,
                  f"needs the MLflow client: {extras.install_hint('mlflow')}")
    check_setting("wandb" not in trackers or extras.installed("wandb"), "report_to", s.report_to,
                  "needs wandb: pip install wandb (not in the image: build FROM it and add it)")
    check_setting("vertex" not in trackers or extras.installed("google.cloud.aiplatform"), "report_to", s.report_to,
                  f"needs the Vertex AI SDK: {extras.install_hint('google.cloud.aiplatform')}")
    for name, tracker in (("mlflow_experiment", "mlflow"), ("mlflow_registered_model", "mlflow"),
                          ("mlflow_log_model", "mlflow"), ("vertex_experiment", "vertex"),
                          ("vertex_api_endpoint", "vertex")):
        check_setting(not getattr(s, name) or tracker in trackers, name, getattr(s, name),
                      f"needs report_to to include {tracker}")
    label_name_map(s.label_names)
    check_setting(not s.label_names or s.problem_type != REGRESSION, "label_names", s.label_names,
                  "names classes or tags; a regression model has one output, a score")
    _check_select_best(s)
    _check_promotion(s)
    check_setting(s.lr_scheduler_type != "constant" or not (s.warmup_steps or s.warmup_ratio), "lr_scheduler_type",
                  s.lr_scheduler_type, "constant has no warm-up: use constant_with_warmup, or set warmup_steps "
                                       "and warmup_ratio to 0")
    check_setting(s.lr_scheduler_type != "polynomial" or s.learning_rate > POLYNOMIAL_LR_END, "learning_rate",
                  s.learning_rate, f"lr_scheduler_type=polynomial decays to {POLYNOMIAL_LR_END:g} (transformers' "
                                   "lr_end): the peak must be above it")
    for name, unset in (("class_weights", "none"), ("decision_threshold", 0.5), ("label_smoothing", 0.0)):
        check_setting(getattr(s, name) == unset or s.problem_type == SINGLE_LABEL, name, getattr(s, name),
                      f"needs problem_type=single_label (it weighs, decides or smooths classes), not {s.problem_type}")


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
        check_setting(not s.promotion_file, "promotion_file", s.promotion_file,
                      "needs promote_if: without a gate every run moves latest.json")
        return
    usable = promotion_metrics(s.problem_type)
    check_setting(s.promote_if in usable, "promote_if", s.promote_if,
                  f"must be none or a metric of problem_type={s.problem_type}: {', '.join(usable)}")
    check_setting(bool(s.output_uri), "promote_if", s.promote_if,
                  "needs output_uri: the gate decides where <output_uri>/latest.json points (on Vertex, AIP_MODEL_DIR "
                  "always receives the run just trained; docs/publishing.md)")
    check_setting(s.publish_latest, "promote_if", s.promote_if,
                  "needs publish_latest=true: the gate decides whether latest.json moves")
