"""hyperparameters.json as SageMaker's real clients write it, read the way sagemaker-training-toolkit reads it.

Sources (aws/sagemaker-python-sdk tag v2.257.6, aws/sagemaker-training-toolkit master 3383937):
- SDK v2 `EstimatorBase._json_encode_hyperparameters` (src/sagemaker/estimator.py:925): every value of a
  framework estimator (HuggingFace, PyTorch) becomes `json.dumps(v)`; `Framework` adds `sagemaker_program`,
  `sagemaker_submit_directory`, `sagemaker_container_log_level`, `sagemaker_job_name`, `sagemaker_region`
  (src/sagemaker/model.py:141-146), and `HuggingFace.hyperparameters` (src/sagemaker/huggingface/estimator.py:323)
  adds its distribution keys, JSON-encoded the same way.
- SDK v2 `HyperparameterTuner._prepare_static_hyperparameters` (src/sagemaker/tuner.py:913): the estimator's
  encoded values plus `sagemaker_estimator_class_name` / `sagemaker_estimator_module` as `json.dumps(...)`;
  the tuning service writes each trial's tuned values as plain strings and adds `_tuning_objective_metric`,
  "not JSON serialized" (src/sagemaker/estimator.py:3862, where attach() strips it again).
- The toolkit decodes each value with `json.loads`, keeping the raw string when that fails
  (src/sagemaker_training/environment.py:208 `read_hyperparameters`), and treats `sagemaker_*` keys as its own
  (src/sagemaker_training/params.py:18 `SAGEMAKER_PREFIX`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, good_csv, minilm_folder, run_subprocess, write_tree
from seqcls import runtime, settings
from seqcls.errors import SettingsError


def sdk_v2_encode(hyperparameters: dict[str, object]) -> dict[str, str]:
    """The SDK v2 estimator's encoding, as in estimator.py:925 (no pipeline variables here)."""
    return {str(k): json.dumps(v) for k, v in hyperparameters.items()}


def huggingface_estimator_file(user: dict[str, object]) -> dict[str, str]:
    """What `HuggingFace(entry_point="train.py", hyperparameters=user, ...).fit()` sends as HyperParameters."""
    framework = {"sagemaker_program": "train.py", "sagemaker_submit_directory": "s3://bucket/hf-job/source/sourcedir.tar.gz",
                 "sagemaker_container_log_level": 20, "sagemaker_job_name": "hf-job", "sagemaker_region": "eu-west-1"}
    return {**sdk_v2_encode(user), **sdk_v2_encode(framework),
            **sdk_v2_encode({"sagemaker_distributed_dataparallel_enabled": False})}


def tuning_trial_file(estimator_file: dict[str, str], tuned: dict[str, str]) -> dict[str, str]:
    """A trial of `HyperparameterTuner(estimator, "val_mcc", ranges)`: static values, class metadata, tuned
    values as the service writes them (plain strings) and the service's own `_tuning_objective_metric`."""
    static = {k: v for k, v in estimator_file.items() if k not in tuned}
    static["sagemaker_estimator_class_name"] = json.dumps("HuggingFace")
    static["sagemaker_estimator_module"] = json.dumps("sagemaker.huggingface.estimator")
    return {**static, **tuned, "_tuning_objective_metric": "val_mcc"}


def resolve_file(tmp_path: Path, content: dict[str, str]) -> tuple[runtime.Platform, settings.Resolved]:
    root = write_tree(tmp_path / "opt_ml", {"config/hyperparameters.json": json.dumps(content)})
    where = runtime.detect([], env={"SEQCLS_OPT_ML": str(root)})
    return where, settings.resolve(where.hyperparameter_layers)


def test_sdk_v2_json_encoded_values_are_decoded(tmp_path: Path) -> None:
    content = huggingface_estimator_file({"model_name_or_path": "bert-base-uncased", "epochs": 3, "learning_rate": 3e-5,
                                          "precision": "bf16", "group_by_length": True, "run_id": "1e3"})
    assert content["precision"] == '"bf16"'  # what the SDK really writes
    where, resolved = resolve_file(tmp_path, content)
    s = resolved.settings
    assert (s.model_name_or_path, s.epochs, s.learning_rate, s.precision, s.group_by_length) == \
        ("bert-base-uncased", 3, 3e-5, "bf16", True)
    assert s.run_id == "1e3"  # a text setting keeps its text ("1e3", not 1000.0)
    assert where.ignored_hyperparameters == sorted(k for k in content if k.startswith("sagemaker_"))


def test_plain_strings_from_sdk_v3_and_boto3_stay_as_they_are(tmp_path: Path) -> None:
    """ModelTrainer and boto3 users write plain strings; a quoted-looking value that is not JSON stays raw."""
    _, resolved = resolve_file(tmp_path, {"precision": "bf16", "text_column": "review", "learning_rate": "2e-5",
                                          "group_by_length": "False", "label_column": '"stars'})
    s = resolved.settings
    assert (s.precision, s.text_column, s.learning_rate, s.group_by_length, s.label_column) == \
        ("bf16", "review", 2e-5, False, '"stars')


def test_tuning_trial_reserved_keys_are_ignored(tmp_path: Path) -> None:
    estimator = huggingface_estimator_file({"model_name_or_path": "bert-base-uncased", "epochs": 2})
    trial = tuning_trial_file(estimator, {"learning_rate": "4.2e-05", "batch_size": "16", "warmup_ratio": "0.06"})
    where, resolved = resolve_file(tmp_path, trial)
    assert (resolved.settings.learning_rate, resolved.settings.batch_size, resolved.settings.warmup_ratio) == (4.2e-5, 16, 0.06)
    assert "_tuning_objective_metric" in where.ignored_hyperparameters
    assert "sagemaker_estimator_class_name" in where.ignored_hyperparameters


@pytest.mark.parametrize("value, expected", [('"fp16x"', "fp16x"), ("[1, 2]", "got [1, 2]"), ("null", "got null")])
def test_decoded_values_still_fail_clearly(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match="precision") as raised:
        resolve_file(tmp_path, {"precision": value})
    assert expected in str(raised.value)


def test_a_typo_next_to_reserved_keys_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="did you mean learning_rate"):
        resolve_file(tmp_path, {**tuning_trial_file({}, {}), "learning_rat": "1e-4"})


@pytest.mark.slow
@pytest.mark.parametrize("client", ["huggingface_estimator", "tuning_trial"])
def test_sagemaker_client_files_train(client: str, tmp_path: Path) -> None:
    """Done-when of the SageMaker issue: both files train, and job_start shows the decoded values."""
    estimator = huggingface_estimator_file({"epochs": 1, "batch_size": 8, "precision": "fp32", "select_best": "mcc",
                                            "log_every_steps": 1})
    content = estimator if client == "huggingface_estimator" else tuning_trial_file(
        estimator, {"learning_rate": "5e-05", "warmup_ratio": "0.1"})
    root = write_tree(tmp_path / "opt_ml", {"config/hyperparameters.json": json.dumps(content),
                                            "data/train/train.csv": good_csv(32)})
    model = build_tiny_model(tmp_path / "tiny", minilm_folder())
    outcome = run_subprocess(root, ["--model", str(model)], {"TRAINING_JOB_NAME": f"{client.replace('_', '-')}-1"})
    assert outcome.code == 0, outcome.stderr[-3000:]
    start = next(e for e in outcome.events if e["event"] == "job_start")
    shown = {name: entry["value"] for name, entry in start["settings"].items()}
    assert (shown["epochs"], shown["batch_size"], shown["precision"], shown["select_best"]) == (1, 8, "fp32", "mcc")
    if client == "tuning_trial":
        assert (shown["learning_rate"], shown["warmup_ratio"]) == (5e-5, 0.1)
        assert "_tuning_objective_metric" in start["ignored_hyperparameters"]
    assert "sagemaker_program" in start["ignored_hyperparameters"]
    assert (root / "model" / "model.safetensors").is_file()
