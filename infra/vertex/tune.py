"""Submit a Vertex AI hyperparameter tuning job over seqcls (`--dry-run` prints the HyperparameterTuningJob as JSON).

    python -m infra.vertex.tune <the options of infra.vertex.submit> [--learning-rate 1e-5:2e-4] [--epochs 2:4] \
        [--batch-sizes 16,32] [--warmup-ratio 0:0.2] [--max-trials 12] [--parallel-trials 3] [--dry-run]

Each trial is the CustomJob infra.vertex.submit builds, with the trial's values appended to the container
args as `--name=value`. The objective is the metric the job reports after every epoch (seqcls.tuning):
the `select_best` metric (`--hp select_best=loss` -> val_loss, minimized), else the problem type's headline
(val_mcc; val_f1_micro for `--hp problem_type=multi_label`, val_pearson for regression), maximized. With
select_best on, the trial's best epoch counts (the model it keeps); otherwise its last.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from google.cloud.aiplatform_v1.types import HyperparameterTuningJob, StudySpec

from infra.common import SubmitError, job_hyperparameters, run_cli
from infra.vertex import submit
from seqcls import tuning
from seqcls.problem_types import SINGLE_LABEL

Parameter = StudySpec.ParameterSpec
TUNED = ("learning_rate", "epochs", "batch_size", "warmup_ratio")


def _range(text: str, option: str, kind: type) -> tuple:
    low, sep, high = text.partition(":")
    try:
        bounds = (kind(low), kind(high)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not bounds[0] < bounds[1]:
        raise SubmitError(f"{option} {text!r}: expected MIN:MAX with MIN < MAX")
    for bound in bounds:  # both ends must be values the job accepts
        job_hyperparameters({option.lstrip("-").replace("-", "_"): str(bound)})
    return bounds


def _batch_sizes(text: str) -> list[float]:
    try:
        sizes = sorted({int(size) for size in text.split(",")})
    except ValueError:
        raise SubmitError(f"--batch-sizes {text!r}: expected integers separated by commas") from None
    for size in sizes:
        job_hyperparameters({"batch_size": str(size)})
    return [float(size) for size in sizes]


def parameters(args: argparse.Namespace) -> list[Parameter]:
    """The search space; Vertex passes each trial's values as `--<parameter_id>=<value>` container args."""
    lr_min, lr_max = _range(args.learning_rate, "--learning-rate", float)
    epochs_min, epochs_max = _range(args.epochs, "--epochs", int)
    warmup_min, warmup_max = _range(args.warmup_ratio, "--warmup-ratio", float)
    return [
        Parameter(parameter_id="learning_rate", double_value_spec={"min_value": lr_min, "max_value": lr_max},
                  scale_type=Parameter.ScaleType.UNIT_LOG_SCALE),
        Parameter(parameter_id="epochs", integer_value_spec={"min_value": epochs_min, "max_value": epochs_max},
                  scale_type=Parameter.ScaleType.UNIT_LINEAR_SCALE),
        Parameter(parameter_id="batch_size", discrete_value_spec={"values": _batch_sizes(args.batch_sizes)}),
        Parameter(parameter_id="warmup_ratio", double_value_spec={"min_value": warmup_min, "max_value": warmup_max},
                  scale_type=Parameter.ScaleType.UNIT_LINEAR_SCALE),
    ]


def spec(args: argparse.Namespace) -> HyperparameterTuningJob:
    """The HyperparameterTuningJob resource, exactly as `main` sends it to JobService."""
    job = submit.job_from_args(args)
    fixed = sorted(set(job.hyperparameters) & set(TUNED))
    if fixed:
        raise SubmitError(f"--hp {', '.join(fixed)}: tuned by this job; set its range instead (see --help)")
    select_best = job.hyperparameters.get("select_best", "none")
    metric_id, goal = tuning.objective(select_best, job.hyperparameters.get("problem_type", SINGLE_LABEL))
    if args.max_trials < 1 or not 1 <= args.parallel_trials <= args.max_trials:
        raise SubmitError("--max-trials must be >= 1 and --parallel-trials between 1 and --max-trials")
    selection = StudySpec.MeasurementSelectionType
    return HyperparameterTuningJob(
        display_name=args.display_name,
        study_spec=StudySpec(
            metrics=[StudySpec.MetricSpec(metric_id=metric_id, goal=StudySpec.MetricSpec.GoalType[goal])],
            parameters=parameters(args),
            measurement_selection_type=selection.LAST_MEASUREMENT if select_best == "none" else selection.BEST_MEASUREMENT,
        ),
        max_trial_count=args.max_trials,
        parallel_trial_count=args.parallel_trials,
        max_failed_trial_count=args.max_failed_trials,
        trial_job_spec=job.spec().job_spec,
    )


def _parser() -> argparse.ArgumentParser:
    p = submit._parser()
    p.prog, p.description = "python -m infra.vertex.tune", __doc__.split("\n")[0]
    p.set_defaults(display_name="seqcls-tuning")
    p.add_argument("--learning-rate", default="1e-5:2e-4", metavar="MIN:MAX", help="searched on a log scale")
    p.add_argument("--epochs", default="2:4", metavar="MIN:MAX")
    p.add_argument("--batch-sizes", default="16,32", metavar="N,N,...")
    p.add_argument("--warmup-ratio", default="0:0.2", metavar="MIN:MAX")
    p.add_argument("--max-trials", type=int, default=12)
    p.add_argument("--parallel-trials", type=int, default=3)
    p.add_argument("--max-failed-trials", type=int, default=0, help="0: Vertex's default")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if args.wait:
        raise SubmitError("--wait is not supported here: follow the tuning job in the console or with gcloud")
    tuning_job = spec(args)
    if args.dry_run:
        print(HyperparameterTuningJob.to_json(tuning_job, indent=2, use_integers_for_enums=False,
                                              always_print_fields_with_no_presence=False))
        return 0
    client = JobServiceClient(client_options={"api_endpoint": f"{args.region}-aiplatform.googleapis.com"})
    created = client.create_hyperparameter_tuning_job(parent=f"projects/{args.project}/locations/{args.region}",
                                                      hyperparameter_tuning_job=tuning_job)
    print(json.dumps({"name": created.name, "state": created.state.name}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
