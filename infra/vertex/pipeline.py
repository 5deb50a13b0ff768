"""Compile seqcls retraining as a Vertex AI Pipelines (KFP v2) pipeline that branches on the promotion gate.

    python -m infra.vertex.pipeline <the options of infra.vertex.submit> --hp promote_if=test_mcc \
        --hp output_uri=gs://bucket/seqcls/published [--model-id seqcls] --output retrain-pipeline.yaml

The training task is a container component running the image exactly as `infra.vertex.submit` would
(`train` with the same `--name=value` args, data read through Vertex's /gcs mount), plus
`--promotion_file <output>`: the job writes `promoted` or `kept` there, KFP returns it as the task's
`promotion` output, and `dsl.If` / `dsl.Else` take the matching branch, which the Vertex console
shows as the branch that ran. On the promoted branch a second task on the image runs `seqcls register vertex`:
the run `<output_uri>/latest.json` names becomes a new version of the Vertex AI model `--model-id` (created on the
first registration), serving with the image on its AIP routes, and takes the alias `champion` (and `default`)
from the version that had it. A kept run is not registered. The compiled YAML is what `aiplatform.PipelineJob(template_path=...)`
runs and schedules (infra/README.md, "Vertex AI Pipelines").
"""

# No `from __future__ import annotations`: KFP reads the components' annotations (dsl.OutputPath(str)) as objects.
import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from kfp import compiler, dsl

from infra.common import SubmitError, run_cli
from infra.vertex import submit

PIPELINE_NAME = "seqcls-retrain"
OUTCOMES = ("promoted", "kept")
# The branch steps log one JSON line (the job's logging contract) saying which way the gate went.
ANNOUNCE = ("import json, sys; print(json.dumps({'event': 'promotion_branch', 'outcome': sys.argv[1], "
            "'run': sys.argv[2]}))")


def train_component(job: "submit.VertexJob") -> Callable:
    """The chief's container exactly as the custom job runs it, with the gate's outcome as an output parameter."""

    @dsl.container_component
    def train(promotion: dsl.OutputPath(str)):
        return dsl.ContainerSpec(image=job.image, command=["train"],
                                 args=[*job.container_args(), "--promotion_file", promotion])

    return train


def announce_component(image: str) -> Callable:
    @dsl.container_component
    def announce(outcome: str, run: str):
        return dsl.ContainerSpec(image=image, command=["python3", "-c", ANNOUNCE, outcome, run])

    return announce


def register_component(job: "submit.VertexJob", model_id: str) -> Callable:
    """`seqcls register vertex` in the image: the promoted run into the Model Registry, as the pipeline's account."""

    @dsl.container_component
    def register():
        return dsl.ContainerSpec(image=job.image, command=["python3", "-m", "seqcls", "register", "vertex"], args=[
            "--published", job.hyperparameters["output_uri"], "--project", job.project, "--region", job.region,
            "--model_id", model_id, "--image", job.image])

    return register


def build(job: submit.VertexJob, model_id: str = "seqcls") -> Callable:
    """The pipeline function: train, then one branch per outcome of the promotion gate; promoted registers."""
    if job.replica_count > 1:
        raise SubmitError("--replica-count > 1: a pipeline's container task runs one replica; "
                          "submit multi-replica jobs with infra.vertex.submit")
    if "promote_if" not in job.hyperparameters:
        raise SubmitError("the pipeline branches on the promotion gate: pass --hp promote_if=<metric> "
                          "(and --hp output_uri=..., where latest.json lives)")
    if not job.hyperparameters.get("output_uri", "").startswith(("gs://", "/gcs/")):
        raise SubmitError("the pipeline registers the run latest.json names: pass --hp output_uri=gs://... (a gs:// "
                          "location, which Vertex AI can read a model from)")
    train, announce, register = train_component(job), announce_component(job.image), register_component(job, model_id)

    # --base-output-dir becomes the pipeline root: where Vertex keeps each task's outputs (the promotion word).
    @dsl.pipeline(name=PIPELINE_NAME, description="seqcls retraining; latest.json moves only when the gate passes",
                  pipeline_root=job.base_output_dir.rstrip("/") + "/pipeline-root")
    def retrain():
        # No caching: a scheduled rerun has the same inputs by design, and must train on this week's data.
        task = train().set_display_name("train").set_caching_options(False)
        for name, value in job.environment.items():
            task.set_env_variable(name, value)
        if job.accelerator_count:
            task.set_accelerator_type(job.accelerator_type).set_accelerator_limit(job.accelerator_count)
        with dsl.If(task.outputs["promotion"] == "promoted", name="promoted"):
            announce(outcome="promoted", run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER).set_display_name("promoted") \
                .set_caching_options(False)
            register().set_display_name("register").set_caching_options(False)
        with dsl.Else(name="kept"):
            announce(outcome="kept", run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER).set_display_name("kept") \
                .set_caching_options(False)

    return retrain


def compile_to(job: submit.VertexJob, path: Path, model_id: str = "seqcls") -> None:
    compiler.Compiler().compile(build(job, model_id), str(path))


def _parser() -> argparse.ArgumentParser:
    p = submit._parser()
    p.prog = "python -m infra.vertex.pipeline"
    p.description = __doc__.split("\n")[0]
    p.add_argument("--output", required=True, type=Path, metavar="FILE.yaml", help="where the pipeline YAML goes")
    p.add_argument("--model-id", default="seqcls", help="the Vertex AI model a promoted run becomes a version of")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if args.dry_run or args.wait:
        raise SubmitError("--dry-run and --wait do not apply to a compiled pipeline")
    if args.output.suffix != ".yaml":
        raise SubmitError(f"--output {args.output}: the pipeline spec file must end in .yaml")
    compile_to(submit.job_from_args(args), args.output, args.model_id)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
