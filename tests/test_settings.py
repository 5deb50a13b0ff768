"""Hyperparameters: defaults, layered sources and their precedence, typed parsing, clear errors."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from seqcls import runtime, settings
from seqcls.errors import SettingsError
from seqcls.settings import FIELDS, Optimizer, parse_value, resolve


def test_defaults_are_the_tutorial_recipe():
    s = resolve([]).settings
    assert (s.model_name_or_path, s.max_length, s.batch_size, s.learning_rate, s.adam_epsilon) == \
        ("bert-base-uncased", 64, 32, 2e-5, 1e-8)
    assert (s.weight_decay, s.epochs, s.warmup_ratio, s.max_grad_norm, s.seed, s.validation_split, s.log_every_steps) == \
        (0.0, 4, 0.0, 1.0, 42, 0.1, 40)


@pytest.mark.parametrize("name, raw, expected", [
    ("group_by_length", "False", False),
    ("group_by_length", "true", True),
    ("group_by_length", "0", False),
    ("learning_rate", "2e-5", 2e-5),
    ("epochs", "4", 4),
    ("epochs", "4.0", 4),
    ("epochs", 3, 3),
    ("max_grad_norm", "1", 1.0),
    ("precision", " bf16 ", "bf16"),
])
def test_typed_parsing_of_sagemaker_strings(name, raw, expected):
    value = parse_value(name, raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("name, raw, fragment", [
    ("epochs", "four", "expected an integer"),
    ("epochs", "2.5", "expected an integer"),
    ("learning_rate", "fast", "expected a number"),
    ("learning_rate", "nan", "expected a number"),
    ("group_by_length", "maybe", "expected true or false"),
])
def test_mistyped_values_name_the_hyperparameter(name, raw, fragment):
    with pytest.raises(SettingsError, match=name) as err:
        parse_value(name, raw)
    assert fragment in str(err.value)


@pytest.mark.parametrize("layer, fragment", [
    ({"batch_size": "0"}, "batch_size=0 is out of range"),
    ({"validation_split": "1"}, "validation_split=1.0 is out of range"),
    ({"validation_split": "1.5"}, "validation_split=1.5 is out of range"),
    ({"precision": "fp8"}, "precision='fp8' is out of range"),
    ({"select_best": "f1"}, "select_best='f1' is out of range"),
    ({"learning_rate": "0"}, "learning_rate=0.0 is out of range"),
    ({"run_id": "../escape"}, "run_id='../escape' is out of range"),
])
def test_out_of_range_values_are_clear_errors(layer, fragment):
    with pytest.raises(SettingsError, match="hyperparameter") as err:
        resolve([("cli", layer)])
    assert fragment in str(err.value)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(SettingsError, match=r"unknown hyperparameter 'learning_rat'; did you mean learning_rate\?"):
        resolve([("cli", {"learning_rat": "1e-5"})])


def test_sources_precedence_defaults_json_env_cli(tmp_path):
    root = tmp_path / "ml"
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {"epochs": "2", "batch_size": "16", "learning_rate": "3e-5", "seed": "7", "sagemaker_program": "ignored"}))
    env = {"SEQCLS_OPT_ML": str(root), "SEQCLS_BATCH_SIZE": "8", "SEQCLS_LEARNING_RATE": "4e-5"}
    where = runtime.detect(["--learning_rate", "5e-5", "--max_length=128"], env)
    resolved = resolve(where.hyperparameter_layers)
    s = resolved.settings
    assert (s.epochs, s.batch_size, s.learning_rate, s.max_length, s.seed, s.weight_decay) == (2, 8, 5e-5, 128, 7, 0.0)
    assert resolved.sources["epochs"] == "hyperparameters.json"
    assert resolved.sources["batch_size"] == "env"
    assert resolved.sources["learning_rate"] == "cli"
    assert resolved.sources["max_length"] == "cli"
    assert resolved.sources["weight_decay"] == "default"
    snapshot = resolved.snapshot()
    assert snapshot["batch_size"] == {"value": 8, "source": "env"}


def test_unknown_env_hyperparameter_is_an_error():
    with pytest.raises(SettingsError, match="did you mean batch_size"):
        runtime.detect([], {"SEQCLS_OPT_ML": "/nonexistent", "SEQCLS_BATCH_SIZ": "8"})


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "is not valid JSON"),
    ('["epochs", "2"]', "must hold a JSON object"),
    ('{"epochs": ["2"]}', "hyperparameter epochs must be a string or number"),
])
def test_malformed_hyperparameters_json(tmp_path, content, fragment):
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(content)
    with pytest.raises(SettingsError, match="hyperparameters.json") as err:
        runtime.detect([], {"SEQCLS_OPT_ML": str(tmp_path)})
    assert fragment in str(err.value)


@pytest.mark.parametrize("written", [
    {"class_weights": '{"0": 2.5}'},  # SDK v3 / boto3: the plain string, which JSON-decodes to an object
    {"class_weights": json.dumps('{"0": 2.5}')},  # SDK v2 estimators JSON-encode every value once more
])
def test_class_weights_map_from_hyperparameters_json(tmp_path, written):
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps(written))
    where = runtime.detect([], {"SEQCLS_OPT_ML": str(tmp_path)})
    resolved = resolve(where.hyperparameter_layers)
    assert settings.class_weight_map(resolved.settings.class_weights) == {"0": 2.5}


def test_auto_stands_for_a_number_only_where_allowed() -> None:
    assert resolve([("cli", {"max_length": "AUTO", "decision_threshold": "auto"})]).settings.max_length == "auto"
    with pytest.raises(SettingsError, match="epochs='auto': expected an integer$"):
        resolve([("cli", {"epochs": "auto"})])


def test_the_docs_table_is_generated_from_the_settings() -> None:
    """docs/hyperparameters.md is `make docs` output: stale when a field, default, range or help changed."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "hyperparameters.md").read_text()
    assert docs.endswith(settings.markdown_table()), "docs/hyperparameters.md is stale: run `make docs`"
    assert all(f"| `{name}` |" in docs for name in settings.FIELDS)


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "-h"], ["--help"], ["train", "train", "--help"]])
def test_help_lists_every_hyperparameter(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    from seqcls import cli

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for name in settings.FIELDS:
        assert f"--{name} (default: " in out, name
    assert "--max_length (default: 64; auto | >= 2 and <= 8192)" in out
    assert "--precision (default: auto; auto | fp32 | bf16 | fp16)" in out


def test_the_script_exits_with_mains_code_with_the_heap_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """`seqcls`, `python -m seqcls` and the image's `train` end through cli.exit_with: main's exit code, every
    object frozen so that the interpreter's last garbage collection skips them."""
    from seqcls import cli

    monkeypatch.setattr(cli, "main", lambda: 143)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run()
        assert exited.value.code == 143 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("written", [
    {"label_names": ["unacceptable", "acceptable"]},  # a JSON list in hyperparameters.json
    {"label_names": '["unacceptable", "acceptable"]'},  # SDK v3 / boto3: the plain string
    {"label_names": json.dumps('["unacceptable", "acceptable"]')},  # SDK v2: JSON-encoded once more
])
def test_label_names_from_hyperparameters_json(tmp_path, written):
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps(written))
    resolved = resolve(runtime.detect([], {"SEQCLS_OPT_ML": str(tmp_path)}).hyperparameter_layers)
    assert settings.label_name_map(resolved.settings.label_names) == ["unacceptable", "acceptable"]


@pytest.mark.parametrize("raw, message", [
    ("[]", "expected a JSON list of names"), ('{"0": ""}', "non-empty string"), ('["a", 1]', "got 1"),
    ('{"0": "x", "1": " x "}', "repeated: 'x'"), ('"acceptable"', "expected a JSON list"),
])
def test_bad_label_names_fail_before_data(raw, message):
    with pytest.raises(SettingsError, match=message):
        resolve([("cli", {"label_names": raw})])


def test_label_names_as_a_map_keep_the_labels():
    assert settings.label_name_map('{"1": "acceptable", "0": " unacceptable"}') == {"1": "acceptable", "0": "unacceptable"}


def test_export_onnx_needs_its_modules(monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxscript" else found(name))
    with pytest.raises(SettingsError, match=r"export_onnx=True.*needs onnxscript: pip install 'seqcls\[onnx\]'"):
        resolve([("cli", {"export_onnx": "true"})])
    assert resolve([("cli", {"export_onnx": "false"})]).settings.export_onnx is False


def test_only_settings_marked_math_make_a_checkpoint_unresumable() -> None:
    """The fingerprint ignores exactly these: changing this set changes which checkpoints resume. gradient_checkpointing
    is among them (a run that ran out of memory may resume with it on): it trains bit for bit the same weights
    (tests/test_accumulation.py)."""
    assert settings.OPERATIONAL == {
        "eval_batch_size", "device", "cuda_graphs", "output_uri", "run_id", "publish_latest", "s3_sse_kms_id",
        "s3_expected_bucket_owner", "checkpoint_every_steps", "checkpoint_dir", "ignore_checkpoint",
        "distributed_timeout_s", "log_every_steps", "base_model", "label_names", "export_onnx",
        "promote_if", "promote_tolerance", "promote_rule", "promote_confidence", "promote_if_incomparable", "promotion_file",
        "gradient_checkpointing", "report_to", "mlflow_experiment", "mlflow_registered_model", "mlflow_log_model",
        "tracker_timeout_s", "vertex_experiment", "vertex_api_endpoint", "inference_backend", "export_onnx_int8"}


@pytest.mark.parametrize("name, raw, message", [
    ("max_length", "1", "must be >= 2 and <= 8192"), ("learning_rate", "0", "must be > 0 and < 1"),
    ("warmup_ratio", "1", "must be >= 0 and < 1"), ("select_best", "f1", "must be one of none, loss, mcc"),
    ("seed", "-1", "must be >= 0 and <= 4294967295"),
    ("gradient_accumulation_steps", "0", "must be >= 1 and <= 1024"),
    ("lr_scheduler_type", "cosine_with_min_lr", "must be one of linear, cosine, cosine_with_restarts, polynomial"),
    ("warmup_steps", "-5", "must be >= 0"), ("max_steps", "-1", "must be >= 0"),
    ("eval_every_steps", "-1", "must be >= 0"), ("label_smoothing", "1", "must be >= 0 and < 1"),
])
def test_declared_ranges_are_enforced(name: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings.resolve([("cli", {name: raw})])


@pytest.mark.parametrize("layer, message", [
    ({"label_smoothing": "0.1", "problem_type": "regression"}, "label_smoothing=0.1 is out of range: needs "
                                                               "problem_type=single_label"),
    ({"label_smoothing": "0.1", "problem_type": "multi_label"}, "needs problem_type=single_label"),
    ({"lr_scheduler_type": "constant", "warmup_steps": "10"}, "constant has no warm-up: use constant_with_warmup"),
    ({"lr_scheduler_type": "constant", "warmup_ratio": "0.1"}, "constant has no warm-up"),
    ({"lr_scheduler_type": "polynomial", "learning_rate": "1e-8"}, "polynomial decays to 1e-07"),
    ({"gradient_accumulation_steps": "2.5"}, "expected an integer"),
    ({"gradient_checkpointing": "sometimes"}, "expected true or false"),
])
def test_scale_settings_that_do_not_fit_together_are_refused(layer: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings.resolve([("cli", layer)])


def test_scale_settings_parse_from_sagemaker_strings() -> None:
    s = settings.resolve([("hyperparameters.json", {
        "gradient_accumulation_steps": "4", "gradient_checkpointing": "True", "lr_scheduler_type": "cosine",
        "warmup_steps": "100", "max_steps": "5000", "eval_every_steps": "500", "label_smoothing": "0.1"})]).settings
    assert (s.gradient_accumulation_steps, s.gradient_checkpointing, s.lr_scheduler_type, s.warmup_steps, s.max_steps,
            s.eval_every_steps, s.label_smoothing) == (4, True, "cosine", 100, 5000, 500, 0.1)
    defaults = settings.Settings()
    assert (defaults.gradient_accumulation_steps, defaults.gradient_checkpointing, defaults.lr_scheduler_type,
            defaults.warmup_steps, defaults.max_steps, defaults.eval_every_steps, defaults.label_smoothing) == \
        (1, False, "linear", 0, 0, 0, 0.0)


def test_the_optimizer_group_is_a_view_of_the_flat_names_not_a_hyperparameter() -> None:
    """make_optimizer reads only AdamW's three settings; they stay flat on the command line and in SageMaker's
    hyperparameters.json, so the group is not a name a user can set."""
    settings = resolve([("cli", {"learning_rate": "3e-5", "weight_decay": "0.01"})]).settings
    assert settings.optimizer == Optimizer(learning_rate=3e-5, adam_epsilon=1e-8, weight_decay=0.01)
    assert "optimizer" not in FIELDS
    with pytest.raises(SettingsError, match="unknown hyperparameter 'optimizer'"):
        resolve([("cli", {"optimizer": "adam"})])
