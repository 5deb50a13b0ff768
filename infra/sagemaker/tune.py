"""Launch a SageMaker hyperparameter tuning job over seqcls (`--dry-run` prints the request).

    python -m infra.sagemaker.tune --image URI --role ARN --train s3://... --output-path s3://... \
        [--tune learning_rate,epochs,batch_size,warmup_ratio] [--learning-rate 1e-5:1e-4] [--epochs 2:5] \
        [--batch-size 16,32] [--warmup-ratio 0:0.2] [--max-jobs 20] [--max-parallel-jobs 2] \
        [--strategy Bayesian|Random] [--early-stopping Auto|Off] [--hp NAME=VALUE ...] \
        [--spot --checkpoint-s3-uri s3://...] [--network-isolation --model s3://...] [--dry-run | --wait]

Every option of `infra.sagemaker.submit` describes each trial, checked the same way. The objective is
what the job itself ranks epochs by (seqcls.problem_types.objective, as Vertex's tune.py uses it): the
`--hp select_best` metric (`loss`: `validation:loss`, minimised), else the problem type's headline,
maximised: `validation:mcc` (`validation:f1_micro` with `--hp problem_type=multi_label`,
`validation:pearson` with `regression`). SageMaker reads it from the `epoch_end` log line of every epoch with the
metric definitions in `infra.sagemaker.metrics`, which is also what early stopping (`Auto`) compares.
The learning rate is searched on a log scale (its effect is multiplicative), epochs and warm-up
linearly, batch sizes as a list. A hyperparameter left out of `--tune` can be fixed with `--hp`.
SageMaker ranks each trial by the latest objective value it logged (FinalHyperParameterTuningJobObjectiveMetric
in the API reference): the last epoch's, even when `select_best=mcc` keeps an earlier epoch's weights.
With `--spot`, every trial gets the same CheckpointConfig (the API has one per definition).

The request is the CreateHyperParameterTuningJob API's, sent with boto3. Each trial's definition is
made from the very CreateTrainingJob request `infra.sagemaker.submit` builds with SDK v3's ModelTrainer,
so both scripts send the same image, channels, spot, checkpoint and isolation settings. SDK v3's own
`HyperparameterTuner` is not used: its `_build_training_job_definition` (sagemaker-train 1.27,
sagemaker/train/tuner.py) leaves out EnableNetworkIsolation, so an isolated job would silently get a
network, and it has no way to print a request without sending it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from infra.common import SubmitError, job_hyperparameters, run_cli
from infra.sagemaker import metrics, submit
from seqcls import settings, tuning

OPERATION = "CreateHyperParameterTuningJob"
TUNING_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}$")  # the API's pattern for the name
NAME_STAMP = "%y%m%d-%H%M%S"
DONE = ("Completed", "Failed", "Stopped")
# Keys of the training request that a trial definition names differently or not at all.
RENAMED = {"HyperParameters": "StaticHyperParameters"}
NOT_PER_TRIAL = {"TrainingJobName"}  # SageMaker names each trial after the tuning job


@dataclass(frozen=True)
class Tunable:
    """One searchable hyperparameter: its API range type, default range and scale."""

    name: str
    kind: str  # "Continuous" | "Integer" | "Categorical"
    default: str  # MIN:MAX, or a comma-separated list for Categorical
    scaling: str | None = None  # ScalingType; None for Categorical


TUNABLES = (
    Tunable("learning_rate", "Continuous", "1e-5:1e-4", "Logarithmic"),
    Tunable("epochs", "Integer", "2:5", "Linear"),
    Tunable("batch_size", "Categorical", "16,32"),
    Tunable("warmup_ratio", "Continuous", "0:0.2", "Linear"),  # a log scale cannot reach 0
)
BY_NAME = {t.name: t for t in TUNABLES}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.sagemaker.tune", description=__doc__.split("\n")[0])
    submit.add_job_options(p)
    p.add_argument("--tune", default=",".join(BY_NAME), metavar="NAMES",
                   help=f"hyperparameters to search (default: {','.join(BY_NAME)})")
    for t in TUNABLES:
        shape = "V1,V2,..." if t.kind == "Categorical" else "MIN:MAX"
        p.add_argument(_option(t.name), metavar=shape, help=f"{t.kind.lower()} range (default {t.default})")
    p.add_argument("--max-jobs", type=int, default=20, help="trials in all")
    p.add_argument("--max-parallel-jobs", type=int, default=2, help="trials at once")
    p.add_argument("--strategy", choices=("Bayesian", "Random"), default="Bayesian")
    p.add_argument("--early-stopping", choices=("Auto", "Off"), default="Auto",
                   help="Auto: SageMaker stops trials whose per-epoch objective lags the others")
    p.add_argument("--random-seed", type=int, help="makes the search's choices repeatable")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help=f"print the {OPERATION} request; call no AWS API")
    mode.add_argument("--wait", action="store_true", help="poll until the tuning job ends; print the best trial")
    return p


def _value(name: str, text: str, option: str) -> tuple[str, Any]:
    """A bound as the job will parse it: (string sent, typed value); a bad one fails like the job would."""
    try:
        sent = job_hyperparameters({name: text.strip()})[name]
    except SubmitError as err:
        raise SubmitError(f"{option} {text!r}: {err}") from None
    return sent, settings.parse_value(name, sent)


def parameter_range(tunable: Tunable, spec: str) -> dict[str, Any]:
    """`1e-5:1e-4` or `16,32` -> the API's range object; every value checked by seqcls.settings."""
    option = _option(tunable.name)
    if tunable.kind == "Categorical":
        values = [_value(tunable.name, v, option)[0] for v in spec.split(",")]
        if len(set(values)) != len(values):
            raise SubmitError(f"{option} {spec!r}: a value is given twice")
        return {"Name": tunable.name, "Values": values}
    low, colon, high = spec.partition(":")
    if not colon:
        raise SubmitError(f"{option} {spec!r}: expected MIN:MAX")
    (low_sent, low_value), (high_sent, high_value) = _value(tunable.name, low, option), _value(tunable.name, high, option)
    if not low_value < high_value:
        raise SubmitError(f"{option} {spec!r}: MIN must be below MAX; to fix the value, leave "
                          f"{tunable.name} out of --tune and pass --hp {tunable.name}=VALUE")
    return {"Name": tunable.name, "MinValue": low_sent, "MaxValue": high_sent, "ScalingType": tunable.scaling}


def ranges_from_args(args: argparse.Namespace, static: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """ParameterRanges from --tune and the range options; a tuned name cannot also be fixed with --hp."""
    names = [n.strip() for n in args.tune.split(",") if n.strip()]
    for name in names:
        if name not in BY_NAME:
            raise SubmitError(f"--tune {name}: can tune {', '.join(BY_NAME)}")
        if name in static:
            raise SubmitError(f"{name} is both tuned and fixed (--hp {name}={static[name]}): "
                              f"leave it out of --tune or drop the --hp")
    if not names:
        raise SubmitError("--tune names no hyperparameter")
    for t in TUNABLES:
        if getattr(args, t.name) is not None and t.name not in names:
            raise SubmitError(f"{_option(t.name)} is given but {t.name} is not in --tune")
    ranges: dict[str, list[dict[str, Any]]] = {}
    for name in dict.fromkeys(names):
        t = BY_NAME[name]
        spec = getattr(args, name) or t.default
        ranges.setdefault(f"{t.kind}ParameterRanges", []).append(parameter_range(t, spec))
    return ranges


def _definition_shape(region: str) -> Any:
    model = boto3.Session(region_name=region).client("sagemaker").meta.service_model
    return model.operation_model(OPERATION).input_shape.members["TrainingJobDefinition"]


def trial_definition(training: dict[str, Any], region: str) -> dict[str, Any]:
    """A CreateTrainingJob request as a tuning job's TrainingJobDefinition.

    A setting the definition has no place for is an error, never dropped: a tuning job that quietly
    loses, say, network isolation is worse than one that does not start.
    """
    shape = _definition_shape(region)
    definition: dict[str, Any] = {}
    lost: list[str] = []
    for key, value in training.items():
        if key in NOT_PER_TRIAL:
            continue
        key = RENAMED.get(key, key)
        if key not in shape.members:
            lost.append(key)
            continue
        if isinstance(value, dict) and shape.members[key].type_name == "structure":
            lost += [f"{key}.{k}" for k in value if k not in shape.members[key].members]
        definition[key] = value
    if lost:
        raise SubmitError(f"a tuning job's trials cannot carry {', '.join(lost)}; submit a single job instead")
    return definition


def tuning_job_name(base: str) -> str:
    """<base>-<yymmdd-HHMMSS>, cut to the API's 32 characters."""
    stamp = time.strftime(NAME_STAMP, time.gmtime())
    name = f"{base[:32 - len(stamp) - 1].rstrip('-')}-{stamp}"
    if not TUNING_JOB_NAME.match(name):
        raise SubmitError(f"--base-job-name {base!r}: use letters, digits and hyphens, starting with a letter or digit")
    return name


def objective(hyperparameters: dict[str, str]) -> dict[str, str]:
    """What the job ranks its epochs by (seqcls's one objective: the `select_best` metric, else the problem
    type's headline), as the metric definition that reads that validation field and the goal it has."""
    problem_type = hyperparameters.get("problem_type", "single_label")
    field, goal = tuning.objective(hyperparameters.get("select_best", "none"), problem_type)
    name = next(name for name, event, read in metrics.METRICS_BY_PROBLEM_TYPE[problem_type] if read == field and not event)
    return {"Type": goal.title(), "MetricName": name}


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The checked CreateHyperParameterTuningJob request; calls no AWS API."""
    job = submit.job_from_args(args)
    ranges = ranges_from_args(args, job.hyperparameters)
    if not 1 <= args.max_parallel_jobs <= args.max_jobs:
        raise SubmitError(f"--max-parallel-jobs must be between 1 and --max-jobs ({args.max_jobs})")
    config: dict[str, Any] = {
        "Strategy": args.strategy,
        "HyperParameterTuningJobObjective": objective(job.hyperparameters),
        "ResourceLimits": {"MaxNumberOfTrainingJobs": args.max_jobs, "MaxParallelTrainingJobs": args.max_parallel_jobs},
        "ParameterRanges": ranges,
        "TrainingJobEarlyStoppingType": args.early_stopping,
    }
    if args.random_seed is not None:
        config["RandomSeed"] = args.random_seed
    request = {"HyperParameterTuningJobName": tuning_job_name(job.base_job_name),
               "HyperParameterTuningJobConfig": config,
               "TrainingJobDefinition": trial_definition(submit.training_request(job), job.region)}
    submit.validate_request(request, job.region, OPERATION)
    return request


def launch(request: dict[str, Any], session: boto3.Session, wait: bool, poll_s: float = 60.0) -> dict[str, Any]:
    """Create the tuning job; with `wait`, report trial counts on stderr until it ends. Returns its summary."""
    client = session.client("sagemaker")
    name = request["HyperParameterTuningJobName"]
    arn = client.create_hyper_parameter_tuning_job(**request)["HyperParameterTuningJobArn"]
    result: dict[str, Any] = {"tuning_job_name": name, "tuning_job_arn": arn}
    while wait:
        described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        status = described["HyperParameterTuningJobStatus"]
        print(f"{name}: {status}, trials {json.dumps(described.get('TrainingJobStatusCounters', {}))}",
              file=sys.stderr, flush=True)
        if status in DONE:
            best = described.get("BestTrainingJob") or {}
            result.update(status=status, best_training_job=best.get("TrainingJobName"),
                          best_hyperparameters=best.get("TunedHyperParameters"),
                          best_objective=best.get("FinalHyperParameterTuningJobObjectiveMetric"))
            break
        time.sleep(poll_s)
    return result


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    request = build_request(args)
    if args.dry_run:
        print(json.dumps(request, indent=2, sort_keys=True, default=str))
        return 0
    result = launch(request, boto3.Session(region_name=args.region), wait=args.wait)
    print(json.dumps(result, default=str))
    return 0 if not args.wait or result["status"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
