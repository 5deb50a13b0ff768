"""Render the Step Functions state machine (ASL JSON) for scheduled retraining on SageMaker.

    python -m infra.schedule.aws.render <the options of infra.sagemaker.submit> > infra/schedule/aws/retrain.asl.json

The training request is the one `infra.sagemaker.submit --dry-run` prints for the same options, so a
scheduled job and a hand-submitted one cannot drift apart; only its name is computed at run time,
from the execution's start time, because a SageMaker job name must be unique.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from infra.common import SubmitError, run_cli
from infra.sagemaker import submit

SYNC_RESOURCE = "arn:aws:states:::sagemaker:createTrainingJob.sync"
# 2026-11-24T03:00:00.123Z -> ["2026", "11", "24", "03", "00", "00", "123"]: job names allow only
# letters, digits and '-'; StringSplit splits on each of the listed characters.
SPLIT_START_TIME = "States.StringSplit($$.Execution.StartTime, '-T:.Z')"


def job_name_expression(prefix: str) -> str:
    """`<prefix>-YYYYMMDD-HHMMSS` from the split start time (States.Format with nested ArrayGetItem)."""
    parts = ", ".join(f"States.ArrayGetItem($.startTime.parts, {i})" for i in range(6))
    return f"States.Format('{_literal(prefix)}-{{}}{{}}{{}}-{{}}{{}}{{}}', {parts})"


def _literal(text: str) -> str:
    """Escape a string for use inside an intrinsic function's quoted literal."""
    return "".join("\\" + ch if ch in "'{}\\" else ch for ch in text)


def state_machine(request: dict[str, Any], prefix: str) -> dict[str, Any]:
    """One training job per execution; any failure (API error or job failure) ends in a Fail state.

    Each run checkpoints under its own `<checkpoint uri>/<job name>`, so a run never resumes from an
    earlier week's checkpoint, while a spot interruption within the run still resumes.
    """
    parameters = {k: v for k, v in request.items() if k != "TrainingJobName"}
    parameters["TrainingJobName.$"] = "$.job.name"
    if "CheckpointConfig" in parameters:
        checkpoint = dict(parameters["CheckpointConfig"])
        base = checkpoint.pop("S3Uri").rstrip("/")
        checkpoint["S3Uri.$"] = f"States.Format('{_literal(base)}/{{}}', $.job.name)"
        parameters["CheckpointConfig"] = checkpoint
    return {
        "Comment": "seqcls scheduled retraining: one SageMaker training job named after the execution start "
                   "time; the execution fails when the job cannot start or does not complete.",
        "StartAt": "SplitStartTime",
        "States": {
            "SplitStartTime": {
                "Type": "Pass",
                "Parameters": {"parts.$": SPLIT_START_TIME},
                "ResultPath": "$.startTime",
                "Next": "NameJob",
            },
            "NameJob": {
                "Type": "Pass",
                "Parameters": {"name.$": job_name_expression(prefix)},
                "ResultPath": "$.job",
                "Next": "Train",
            },
            "Train": {
                "Type": "Task",
                "Resource": SYNC_RESOURCE,
                "Parameters": parameters,
                "ResultSelector": {
                    "TrainingJobName.$": "$.TrainingJobName",
                    "TrainingJobArn.$": "$.TrainingJobArn",
                    "ModelArtifacts.$": "$.ModelArtifacts",
                },
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "TrainingFailed"}],
                "End": True,
            },
            "TrainingFailed": {
                "Type": "Fail",
                "Error": "SeqclsTrainingFailed",
                # The cause carries SageMaker's FailureReason: the first line of the job's failure file.
                "CausePath": "$.error.Cause",
            },
        },
    }


def main(argv: Sequence[str]) -> int:
    args = submit._parser().parse_args(argv)
    if args.dry_run or args.wait:
        raise SubmitError("--dry-run and --wait do not apply to a rendered schedule")
    job = submit.job_from_args(args)
    print(json.dumps(state_machine(submit.dry_run(job), job.base_job_name), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
