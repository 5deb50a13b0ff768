"""SageMaker tuning: the CreateHyperParameterTuningJob request, checked offline against botocore's own
service model, its objective regex against lines the job's logging code writes, and a submission under moto."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import boto3
import botocore.session
import pytest
from botocore.validate import ParamValidator
from moto import mock_aws

from infra.common import SubmitError
from infra.sagemaker import submit, tune
from seqcls import logs
from seqcls.evaluate import EpochStats

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/seqcls:0123abc"
ROLE = "arn:aws:iam::123456789012:role/SeqclsTraining"
BASE = ["--image", IMAGE, "--role", ROLE, "--region", "eu-west-1",
        "--train", "s3://seqcls-data/cola/train/", "--test", "s3://seqcls-data/cola/test/",
        "--output-path", "s3://seqcls-out/tuning"]
FULL = [*BASE, "--model", "s3://seqcls-data/models/minilm/", "--hp", "max_length=64", "--hp", "select_best=mcc",
        "--spot", "--max-runtime", "3600", "--checkpoint-s3-uri", "s3://seqcls-out/checkpoints/hpo",
        "--network-isolation", "--instance-type", "ml.g5.2xlarge", "--base-job-name", "cola-minilm-hpo",
        "--learning-rate", "2e-5:2e-4", "--epochs", "2:4", "--batch-size", "16,32,64", "--warmup-ratio", "0:0.1",
        "--max-jobs", "12", "--max-parallel-jobs", "3", "--random-seed", "7"]


def _operation():
    """The service's own description of the API, as the brief for this check names it."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    return model.operation_model("CreateHyperParameterTuningJob")


def _request(argv: list[str]) -> dict:
    return tune.build_request(tune._parser().parse_args(argv))


def _objective_regex(request: dict) -> str:
    name = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
    definitions = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    found = [d["Regex"] for d in definitions if d["Name"] == name]
    assert len(found) == 1, f"objective {name!r} is not one of the trial's metric definitions"
    return found[0]


def test_dry_run_prints_a_request_botocore_accepts(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.main([*FULL, "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    operation = _operation()
    report = ParamValidator().validate(request, operation.input_shape)
    assert not report.has_errors(), report.generate_report()
    # ParamValidator checks types, required keys and lengths, not patterns: check the name's pattern here.
    pattern = operation.input_shape.members["HyperParameterTuningJobName"].metadata["pattern"]
    assert re.fullmatch(pattern, request["HyperParameterTuningJobName"])
    assert request["HyperParameterTuningJobName"].startswith("cola-minilm-hpo-")

    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:mcc"}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    assert config["RandomSeed"] == 7
    assert config["ParameterRanges"] == {
        "ContinuousParameterRanges": [
            {"Name": "learning_rate", "MinValue": "2e-05", "MaxValue": "0.0002", "ScalingType": "Logarithmic"},
            {"Name": "warmup_ratio", "MinValue": "0.0", "MaxValue": "0.1", "ScalingType": "Linear"}],
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "4", "ScalingType": "Linear"}],
        "CategoricalParameterRanges": [{"Name": "batch_size", "Values": ["16", "32", "64"]}]}

    trial = request["TrainingJobDefinition"]
    assert trial["StaticHyperParameters"] == {"max_length": "64", "select_best": "mcc"}
    assert all(isinstance(v, str) for v in trial["StaticHyperParameters"].values())
    assert trial["EnableNetworkIsolation"] is True and trial["EnableManagedSpotTraining"] is True
    assert trial["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert trial["CheckpointConfig"] == {"S3Uri": "s3://seqcls-out/checkpoints/hpo", "LocalPath": "/opt/ml/checkpoints"}
    _objective_regex(request)


def test_each_trial_is_the_training_job_submit_would_send(aws_offline: None) -> None:
    """Same options, same job: the trial definition is submit's CreateTrainingJob request, nothing lost."""
    request = _request(FULL)
    single = submit.dry_run(submit.job_from_args(submit._parser().parse_args(
        [a for a in FULL[:FULL.index("--learning-rate")]])))
    single.pop("TrainingJobName")
    single["StaticHyperParameters"] = single.pop("HyperParameters")
    assert request["TrainingJobDefinition"] == single


def test_objective_regex_reads_the_jobs_own_epoch_end_line(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The line comes from seqcls.logs with evaluate.EpochStats' fields, as training/train.py logs `epoch_end`."""
    regex = re.compile(_objective_regex(_request(BASE)))
    logs.setup()
    capsys.readouterr()
    for val_mcc in (-0.031872, 0.0, 0.512345, 1e-06):
        stats = EpochStats(epoch=2, train_loss=0.41, val_loss=0.55, val_accuracy=0.81, val_mcc=val_mcc, val_f1=0.87,
                           train_seconds=12.5, val_seconds=0.4)
        logs.event("epoch_end", "epoch 2/4", **asdict(stats))
        logs.event("test_metrics", "test", test_mcc=0.7, test_loss=0.3)
        epoch_line, test_line = capsys.readouterr().out.splitlines()
        assert json.loads(epoch_line)["event"] == "epoch_end"
        found = regex.search(epoch_line)
        assert found and float(found.group(1)) == val_mcc, epoch_line
        assert not regex.search(test_line)


@pytest.mark.parametrize("problem_type, select_best, metric, field, stats", [
    ("multi_label", "f1_micro", "validation:f1_micro", "val_f1_micro",
     dict(val_f1_micro=0.623, val_f1_macro=0.41, val_subset_accuracy=0.3)),
    ("regression", "pearson", "validation:pearson", "val_pearson",
     dict(val_pearson=-0.0625, val_spearman=0.1, val_mse=1.5, val_mae=0.9)),
])
def test_the_objective_follows_the_problem_type(aws_offline: None, capsys: pytest.CaptureFixture[str], problem_type: str,
                                                select_best: str, metric: str, field: str, stats: dict) -> None:
    """A multi_label or regression trial is ranked by its own headline, read from its own epoch_end row."""
    request = _request([*BASE, "--hp", f"problem_type={problem_type}", "--hp", f"select_best={select_best}"])
    objective = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    assert objective == {"Type": "Maximize", "MetricName": metric}
    regex = re.compile(_objective_regex(request))
    logs.setup()
    capsys.readouterr()
    row = EpochStats(epoch=1, train_loss=0.4, val_loss=0.5, **stats).row()
    logs.event("epoch_end", "epoch 1/2", **row)
    found = regex.search(capsys.readouterr().out)
    assert found and float(found.group(1)) == stats[field]


@pytest.mark.parametrize("hyperparameters, expected", [
    ([], {"Type": "Maximize", "MetricName": "validation:mcc"}),
    (["select_best=loss"], {"Type": "Minimize", "MetricName": "validation:loss"}),
    (["problem_type=regression", "select_best=mse"], {"Type": "Minimize", "MetricName": "validation:mse"}),
    (["problem_type=regression", "select_best=loss"], {"Type": "Minimize", "MetricName": "validation:loss"}),
    (["problem_type=multi_label"], {"Type": "Maximize", "MetricName": "validation:f1_micro"}),
])
def test_the_objective_is_what_the_job_ranks_epochs_by(aws_offline: None, hyperparameters: list[str],
                                                       expected: dict[str, str]) -> None:
    """A trial is ranked by the metric select_best keeps the weights by (minimised for a loss), as the Vertex
    tuner's objective and the job's early stopping are: seqcls.evaluate.objective decides all three."""
    request = _request([*BASE, *[arg for pair in hyperparameters for arg in ("--hp", pair)]])
    assert request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"] == expected
    _objective_regex(request)  # the objective is one of the trial's own metric definitions


@pytest.mark.slow
def test_objective_regex_reads_a_real_runs_epochs(aws_offline: None, job_log_lines: list[str]) -> None:
    regex = re.compile(_objective_regex(_request(BASE)))
    epochs = [line for line in job_log_lines if json.loads(line)["event"] == "epoch_end"]
    assert epochs, "the run logged no epoch_end event"
    for line in epochs:
        found = regex.search(line)
        assert found and float(found.group(1)) == json.loads(line)["val_mcc"], line


@pytest.mark.slow
def test_the_last_objective_value_is_the_kept_epochs(aws_offline: None, job_log_lines: list[str]) -> None:
    """SageMaker ranks a trial by the last value its regex found (FinalHyperParameterTuningJobObjectiveMetric):
    with select_best that must be the saved model's epoch, not the last epoch's."""
    regex = re.compile(_objective_regex(_request(BASE)))
    events = [json.loads(line) for line in job_log_lines]
    kept = next(e for e in events if e["event"] == "best_epoch_selected")["epoch"]
    kept_mcc = next(e["val_mcc"] for e in events if e["event"] == "epoch_end" and e["epoch"] == kept)
    values = [float(m.group(1)) for line in job_log_lines if (m := regex.search(line))]
    assert len(values) == 3 and values[-1] == kept_mcc, values


def test_a_fixed_hyperparameter_is_left_out_of_the_search(aws_offline: None) -> None:
    request = _request([*BASE, "--tune", "learning_rate,warmup_ratio", "--hp", "epochs=3", "--hp", "batch_size=16"])
    ranges = request["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert ranges == {"ContinuousParameterRanges": [
        {"Name": "learning_rate", "MinValue": "1e-05", "MaxValue": "0.0001", "ScalingType": "Logarithmic"},
        {"Name": "warmup_ratio", "MinValue": "0.0", "MaxValue": "0.2", "ScalingType": "Linear"}]}
    assert request["TrainingJobDefinition"]["StaticHyperParameters"] == {"epochs": "3", "batch_size": "16"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--tune", "dropout"], "can tune learning_rate"),
    (["--tune", ""], "names no hyperparameter"),
    (["--hp", "epochs=3"], "both tuned and fixed"),
    (["--epochs", "5:2"], "MIN must be below MAX"),
    (["--epochs", "3:3"], "MIN must be below MAX"),
    (["--epochs", "0:3"], "out of range"),
    (["--learning-rate", "1e-5"], "expected MIN:MAX"),
    (["--learning-rate", "0:1e-4"], "must be > 0"),
    (["--batch-size", "16,16"], "given twice"),
    (["--batch-size", "16,big"], "expected an integer"),
    (["--tune", "learning_rate", "--epochs", "2:4"], "not in --tune"),
    (["--max-parallel-jobs", "30"], "between 1 and --max-jobs"),
    (["--base-job-name", "cola_hpo"], "letters, digits and hyphens"),
    (["--spot"], "needs --checkpoint-s3-uri"),
    (["--hp", "epoch=3"], "did you mean epochs"),
])
def test_bad_options_fail_before_any_call(aws_offline: None, extra: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=re.escape(message)):
        _request([*BASE, *extra])


def test_a_setting_trials_cannot_carry_is_refused_not_dropped() -> None:
    training = {"RoleArn": ROLE, "DebugHookConfig": {"S3OutputPath": "s3://x/y"},
                "AlgorithmSpecification": {"TrainingImage": IMAGE, "ContainerEntrypoint": ["train"]}}
    with pytest.raises(SubmitError, match=r"DebugHookConfig, AlgorithmSpecification\.ContainerEntrypoint"):
        tune.trial_definition(training, "eu-west-1")


def test_usage_errors_exit_2_with_one_line(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert tune.run_cli(tune.main, [*BASE, "--epochs", "4:2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --epochs '4:2'") and len(err.strip().splitlines()) == 1


@mock_aws
def test_submit_creates_the_tuning_job(aws_offline: None, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Through botocore against moto: the service receives the dry run's request and describes it back."""
    sent: list[dict] = []
    session = boto3.Session(region_name="eu-west-1")
    session.events.register("provide-client-params.sagemaker.CreateHyperParameterTuningJob",
                            lambda params, **_: sent.append(json.loads(json.dumps(params))))
    monkeypatch.setattr(tune.boto3, "Session", lambda **_: session)
    expected = _request(FULL)

    assert tune.main([*FULL, "--wait"]) == 0  # moto completes a tuning job at once
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "Completed"
    assert result["tuning_job_arn"].startswith("arn:aws:sagemaker:eu-west-1:123456789012:hyper-parameter-tuning-job/")
    assert len(sent) == 1
    described = session.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=result["tuning_job_name"])
    assert described["HyperParameterTuningJobConfig"] == sent[0]["HyperParameterTuningJobConfig"]
    assert described["TrainingJobDefinition"]["EnableNetworkIsolation"] is True
    for request in (sent[0], expected):
        request.pop("HyperParameterTuningJobName")  # timestamped
    assert sent[0] == expected


def test_objective_and_validation_regexes_read_step_level_evaluation_lines(aws_offline: None,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """eval_every_steps: training/train.py logs `evaluation` rows (EpochStats with a step) instead of epoch_end; the
    validation metrics are not anchored to an event, so the tuning objective and the metric definitions read them."""
    from infra.sagemaker.metrics import metric_definitions

    regex = re.compile(_objective_regex(_request(BASE)))
    logs.setup()
    capsys.readouterr()
    row = EpochStats(epoch=1, train_loss=0.41, val_loss=0.55, val_accuracy=0.81, val_mcc=0.2875, val_f1=0.87,
                     step=1500).row()
    logs.event("evaluation", "step 1500/4000", **row)
    line = capsys.readouterr().out.splitlines()[0]
    assert json.loads(line)["step"] == 1500
    assert float(regex.search(line).group(1)) == 0.2875
    found = {d["Name"]: re.search(d["Regex"], line) for d in metric_definitions()}
    assert {name for name, match in found.items() if match} == {"validation:loss", "validation:accuracy",
                                                                "validation:mcc", "validation:f1"}
    assert float(found["validation:loss"].group(1)) == 0.55
