"""Render the JSON config an Airflow DAG in infra/airflow/dags/ reads from beside itself.

    python -m infra.airflow.render sagemaker <the options of infra.sagemaker.submit> [--model-package-group NAME] \
        > DAGS/seqcls_sagemaker.json
    python -m infra.airflow.render vertex <the options of infra.vertex.submit> [--model-display-name NAME] \
        > DAGS/seqcls_vertex.json
    python -m infra.airflow.render docker --image IMAGE --train PATH [--test PATH] [--model DIR] \
        --output-dir DIR [--gpus all|none|N] [--hp NAME=VALUE ...] [--env KEY=VALUE ...] \
        [--pass-env NAME ...] > DAGS/seqcls_docker.json

The SageMaker config holds the CreateTrainingJob request `infra.sagemaker.submit --dry-run` prints and
the Vertex config the CustomJob `infra.vertex.submit --dry-run` prints, so a DAG-run job, a scheduled
one and a hand-submitted one cannot drift apart. The DAG files import only Airflow and its providers
(nothing from seqcls), so they load on MWAA or Cloud Composer as they are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.common import SubmitError, check_environment, job_hyperparameters, parse_pairs, run_cli
from seqcls.runtime import CHANNELS


def sagemaker_config(argv: Sequence[str]) -> dict[str, Any]:
    from infra.sagemaker import submit

    from seqcls.promotion import registry

    parser = submit._parser()
    parser.add_argument("--model-package-group", default="seqcls",
                        help="the Model Package Group a promoted run is registered in (created on the first one)")
    args = parser.parse_args(argv)
    if args.dry_run or args.wait:
        raise SubmitError("--dry-run and --wait do not apply to a DAG's config")
    job = submit.job_from_args(args)
    # The DAG names each job after its run (SageMaker job names are unique), as the Step Functions schedule does.
    request = {k: v for k, v in submit.dry_run(job).items() if k != "TrainingJobName"}
    return {"region": job.region, "base_job_name": job.base_job_name, "check_interval_s": 60, "request": request,
            "model_package_group": args.model_package_group, "served_types": registry.SERVED_TYPES}


def vertex_config(argv: Sequence[str]) -> dict[str, Any]:
    from infra.vertex import submit

    from seqcls import runtime

    parser = submit._parser()
    parser.add_argument("--model-display-name", default="seqcls",
                        help="the Vertex AI model a promoted run becomes a version of (created on the first one)")
    args = parser.parse_args(argv)
    if args.dry_run or args.wait:
        raise SubmitError("--dry-run and --wait do not apply to a DAG's config")
    job = submit.job_from_args(args)
    output_uri = job.hyperparameters.get("output_uri", "")
    if "promote_if" not in job.hyperparameters or not output_uri.startswith("gs://"):
        raise SubmitError("the DAG branches on the promotion gate and registers the run latest.json names: pass "
                          "--hp promote_if=<metric> and --hp output_uri=gs://bucket/prefix")
    return {"project": job.project, "region": job.region, "custom_job": json.loads(submit.spec_json(job)),
            "registry": {"display_name": args.model_display_name, "output_uri": output_uri, "alias": "champion",
                         "container_spec": runtime.vertex_container_spec(job.image)}}


def _docker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.airflow.render docker")
    p.add_argument("--image", required=True, help="the training image on the GPU box (docker images)")
    for channel in CHANNELS:
        p.add_argument(f"--{channel}", metavar="PATH", help=f"file or folder on the Docker host: the {channel} channel")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="folder on the Docker host; each DAG run writes <DIR>/<run id>/{model,output,checkpoints}")
    p.add_argument("--gpus", default="all", help="all, none (CPU), or a number of GPUs")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a seqcls hyperparameter (repeat)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="container environment written into the config (repeat), e.g. MLFLOW_TRACKING_URI=http://...")
    p.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="a variable the worker's own environment passes into the container at run time, its value "
                        "never written into the config or shown by Airflow (repeat), e.g. MLFLOW_TRACKING_TOKEN")
    return p


def docker_config(argv: Sequence[str]) -> dict[str, Any]:
    args = _docker_parser().parse_args(argv)
    channels = {c: getattr(args, c) for c in CHANNELS if getattr(args, c)}
    if "train" not in channels:
        raise SubmitError("--train is required: the job has no training data otherwise")
    for option, path in [*((f"--{c}", p) for c, p in channels.items()), ("--output-dir", args.output_dir)]:
        if not Path(path).is_absolute():
            raise SubmitError(f"{option} {path!r}: give an absolute path on the Docker host (docker mounts need one)")
    if args.gpus not in ("all", "none") and not (args.gpus.isdigit() and int(args.gpus) > 0):
        raise SubmitError(f"--gpus {args.gpus!r}: expected all, none or a positive number")
    environment = check_environment(parse_pairs(args.env, "--env"))
    for name in args.pass_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in environment:
            raise SubmitError(f"--pass-env {name!r}: expected a variable name not also given with --env")
    return {"image": args.image, "channels": channels, "output_dir": args.output_dir, "gpus": args.gpus,
            "hyperparameters": job_hyperparameters(parse_pairs(args.hp, "--hp")),
            "environment": environment, "pass_env": sorted(set(args.pass_env))}


RENDERERS = {"sagemaker": sagemaker_config, "vertex": vertex_config, "docker": docker_config}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in RENDERERS:
        raise SubmitError(f"usage: python -m infra.airflow.render {{{','.join(RENDERERS)}}} <options> (--help for each)")
    print(json.dumps(RENDERERS[argv[0]](argv[1:]), indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
