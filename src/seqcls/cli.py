"""Command line: `seqcls train [--name value ...]`, `seqcls predict --model URI --input FILE`, `seqcls serve` and
`seqcls register sagemaker|vertex` (a promoted run into a model registry).

One top-level handler turns every failure into the failure file, a `job_failed` event and a non-zero
exit; the traceback goes to stderr only.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn, Sequence

from . import extras, logs, outbound
from . import runtime
from .errors import Interrupted, SeqclsError, SettingsError, UserError

FAILURE_REASON_LIMIT = 1024
USAGE = """usage: seqcls train [--train PATH] [--validation PATH] [--test PATH] [--model PATH] [--output_dir DIR] [--<hyperparameter> VALUE ...]
       seqcls predict --model s3://bucket/prefix/RUN_ID|gs://...|DIR --input FILE [--output FILE]
       seqcls serve [--model URI|DIR] [--port N]   (SageMaker: /ping, /invocations; Vertex: AIP_* routes; docs/serving.md)
       seqcls register sagemaker --model model.tar.gz|DIR --model_package_group NAME --image URI --model_data_url s3://... --statistics_uri s3://...json
       seqcls register vertex --published gs://... --project P --region R --model_id NAME --image URI [--alias champion]

Fine-tune a sequence classifier. Hyperparameters, lowest precedence first: defaults <
<root>/input/config/hyperparameters.json < SEQCLS_<NAME> environment variables < --name value.
`seqcls train --help` lists them; docs/contract.md has the rest."""
HELP_FLAGS = ("-h", "--help", "help")


def train_help() -> str:
    from .settings import help_lines

    return "\n".join([USAGE, "", "Hyperparameters:", *help_lines()])


def failure_reason(err: BaseException) -> str:
    """One line, no traceback, at most 1024 characters: what the platform shows as the failure reason."""
    if isinstance(err, SeqclsError):
        text = str(err)
    elif isinstance(err, KeyboardInterrupt):
        text = "interrupted (SIGINT)"
    elif isinstance(err, MemoryError):
        text = "out of memory: lower batch_size, eval_batch_size or max_length"
    elif isinstance(err, OSError) and err.errno == 28:
        text = f"no space left on device while writing {err.filename or 'output'}: free space or give the job a larger disk"
    else:
        text = f"internal error: {type(err).__name__}: {err}"
    text = " ".join(outbound.mask(text).split())
    return text[:FAILURE_REASON_LIMIT]


def write_failure(path: Path, reason: str) -> None:
    """First write wins: a later, secondary error must not hide the original reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as handle:
            handle.write(reason + "\n")
    except FileExistsError:
        pass
    except OSError as err:
        print(f"seqcls: could not write failure file {path}: {err}", file=sys.stderr)


def exit_code(err: BaseException) -> int:
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, Interrupted):
        return 143
    return 2 if isinstance(err, UserError) else 1


def _failed(err: BaseException, failure_file: Path | None) -> int:
    """The reason goes to the failure file, a job_failed event and stderr. A user error's reason is the
    whole story, so its traceback is shown only with SEQCLS_DEBUG=1 (the training toolkit likewise
    separates client errors from framework errors); internal errors always show theirs."""
    reason = failure_reason(err)
    rank, size, _ = runtime.process_ranks()
    if size > 1:
        reason = f"rank {rank}: {reason}"[:FAILURE_REASON_LIMIT]
    kind = err.kind if isinstance(err, SeqclsError) else "internal"
    logs.event("job_failed", reason, level=logging.ERROR, error_kind=kind, error_type=type(err).__name__)
    if not isinstance(err, UserError) or runtime.debug_enabled():
        print(outbound.mask(traceback.format_exc()), end="", file=sys.stderr)
    print(f"seqcls: error: {reason}", file=sys.stderr)
    if failure_file is not None:
        write_failure(failure_file, reason)
    return exit_code(err)


def train_command(argv: Sequence[str]) -> int:
    import torch  # heavy imports (torch, transformers) only once we know the command

    from . import distributed, job
    from .training.checkpoint import STOP

    STOP.install()

    failure_file = runtime.failure_file_for(argv)
    try:
        where = runtime.detect(argv)
        failure_file = where.failure_file
        launch = runtime.launch_plan(where.root, torch.cuda.device_count())
        if launch is not None:
            logs.event("launch", f"starting torchrun: {launch.nnodes} node(s) x {launch.nproc_per_node} process(es)",
                       nnodes=launch.nnodes, node_rank=launch.node_rank, nproc_per_node=launch.nproc_per_node,
                       master_addr=launch.master_addr, master_port=launch.master_port, env_added=dict(launch.env))
            sys.stdout.flush()
            # exec: torchrun becomes this process, so the platform's SIGTERM reaches it (it forwards to ranks).
            os.execve(sys.executable, [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(),
                                       "-m", "seqcls", "train", *argv, *runtime.pinned_for_ranks(where, argv)],
                      runtime.exec_env(launch.env))
        job.run(where)
        return 0
    except BaseException as err:  # noqa: BLE001 - the one place that turns every failure into a reason
        return _failed(err, failure_file)
    finally:
        distributed.shutdown()


def predict_command(argv: Sequence[str]) -> int:
    """Label a file with a published (or local) model; failures end like the job's, without a failure file."""
    parser = argparse.ArgumentParser(prog="seqcls predict", description="Predict with a published seqcls run.")
    parser.add_argument("--model", required=True, help="s3://bucket/prefix/RUN_ID, gs://bucket/prefix/RUN_ID or a folder")
    parser.add_argument("--input", required=True, type=Path, help="a .tsv/.csv/.jsonl/.parquet file or folder (labels not needed)")
    parser.add_argument("--output", type=Path, help="predictions .csv or .jsonl (default: <input stem>.predictions.csv here)")
    for name in ("text_column", "text_pair_column", "max_length", "eval_batch_size", "label_delimiter"):
        parser.add_argument(f"--{name}", help="default: the training run's value (from run_manifest.json)")
    for name in ("device", "precision"):
        parser.add_argument(f"--{name}", help="default: auto")
    parser.add_argument("--inference_backend", choices=("torch", "onnx", "onnx_int8"), help="default: torch (docs/serving.md)")
    args = parser.parse_args(list(argv))
    overrides = {name: value for name, value in vars(args).items()
                 if name not in ("model", "input", "output") and value is not None}
    output = args.output or Path(f"{args.input.stem}.predictions.csv")
    from . import predict  # heavy imports only once the arguments are known

    try:
        predict.run(args.model, args.input, output, overrides)
        return 0
    except BaseException as err:  # noqa: BLE001 - same single handler as train
        return _failed(err, None)


def serve_command(argv: Sequence[str]) -> int:
    """An HTTP endpoint for a run's model until SIGTERM; a model that cannot be loaded ends it like a failed job."""
    parser = argparse.ArgumentParser(prog="seqcls serve", description="Serve a seqcls run over HTTP (docs/serving.md).")
    parser.add_argument("--model", help="s3://..., gs://... or a folder (default: AIP_STORAGE_URI on Vertex, "
                                        "else /opt/ml/model as SageMaker unpacks it)")
    parser.add_argument("--port", type=int, help="default: AIP_HTTP_PORT, SAGEMAKER_BIND_TO_PORT or 8080")
    parser.add_argument("--max_body_bytes", type=int, help="largest request body accepted (default: 6 MiB, SageMaker's limit)")
    parser.add_argument("--max_batch_rows", type=int, help="rows of queued requests one pass takes at most (default 256)")
    parser.add_argument("--max_queue_rows", type=int, help="rows that may wait; more get 503 + Retry-After (default 8192)")
    for name in ("device", "precision", "eval_batch_size"):
        parser.add_argument(f"--{name}", help="default: auto" if name != "eval_batch_size" else "default: the training run's")
    parser.add_argument("--inference_backend", choices=("torch", "onnx", "onnx_int8"), help="default: torch (docs/serving.md)")
    args = parser.parse_args(list(argv))
    given = {name: getattr(args, name) for name in runtime.SERVING_SETTINGS if getattr(args, name) is not None}
    try:
        extras.require("fastapi", "seqcls serve")
        extras.require("uvicorn", "seqcls serve")
        from .serving import serve  # heavy imports only once the arguments are known

        where = runtime.serving(args.model, args.port)
        overrides = {**where.settings, **given}
        for name in ("max_body_bytes", "max_batch_rows", "max_queue_rows"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise SettingsError(f"--{name}={getattr(args, name)} must be at least 1")
        return serve.run(where, overrides, args.max_body_bytes or where.max_body_bytes or serve.MAX_BODY_BYTES,
                         args.max_batch_rows or serve.batching.MAX_BATCH_ROWS,
                         args.max_queue_rows or serve.batching.MAX_QUEUE_ROWS)
    except BaseException as err:  # noqa: BLE001 - same single handler as train
        return _failed(err, None)


def register_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqcls register", description="Register a promoted seqcls run in a model "
                                     "registry (docs/publishing.md).")
    to = parser.add_subparsers(dest="registry", required=True)
    sm = to.add_parser("sagemaker", help="an Approved version in a SageMaker Model Package Group")
    sm.add_argument("--model", required=True, type=Path, help="the run's model.tar.gz or model folder (its records)")
    sm.add_argument("--model_package_group", required=True, help="created on the first registration")
    sm.add_argument("--image", required=True, help="the inference image: this image, which serves with `serve`")
    sm.add_argument("--model_data_url", required=True, help="s3://.../model.tar.gz the endpoint loads")
    sm.add_argument("--statistics_uri", required=True, help="s3://.../model-metrics.json: written, then named in ModelMetrics")
    sm.add_argument("--region", help="default: the SDK's (AWS_REGION)")
    vx = to.add_parser("vertex", help="a new version of a Vertex AI model, with an alias (default: champion)")
    vx.add_argument("--published", required=True, help="the output_uri whose latest.json names the run (gs:// or /gcs/...)")
    vx.add_argument("--project", required=True)
    vx.add_argument("--region", required=True, help="Vertex location, e.g. us-central1")
    vx.add_argument("--model_id", required=True, help="the model's id in the registry (created on the first registration)")
    vx.add_argument("--image", required=True, help="the serving image: this image, which serves with `serve`")
    vx.add_argument("--alias", default="champion", help="moved to the new version (default: champion)")
    vx.add_argument("--api_endpoint", help="Vertex AI API host (Private Service Connect); default: the region's")
    return parser


def register_command(argv: Sequence[str]) -> int:
    """Register a promoted run in SageMaker's or Vertex AI's model registry (the pipelines' promoted branch)."""
    args = register_parser().parse_args(list(argv))
    import tempfile

    from .promotion import registry

    try:
        extras.require("boto3" if args.registry == "sagemaker" else "google.cloud.aiplatform",
                       f"seqcls register {args.registry}")
        if args.registry == "sagemaker":
            registry.register(registry.Registration(args.model_package_group, args.image, args.model_data_url,
                                                    args.statistics_uri, args.region), args.model)
        else:
            with tempfile.TemporaryDirectory(prefix="seqcls-register-") as scratch:
                registry.register_vertex(registry.VertexRegistration(args.project, args.region, args.model_id, args.image,
                                                                     args.alias, args.api_endpoint),
                                         args.published, Path(scratch) / "run")
        return 0
    except BaseException as err:  # noqa: BLE001 - same single handler as train
        return _failed(err, None)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logs.setup(rank=runtime.process_ranks()[0])
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command in HELP_FLAGS:
        print(train_help())
        return 0
    if command == "train":
        # SageMaker runs the image as `train`; an ENTRYPOINT of `train` then sees `train` again.
        if rest[:1] == ["train"]:
            rest = rest[1:]
        if any(arg in HELP_FLAGS[:2] for arg in rest):
            print(train_help())
            return 0
        return train_command(rest)
    if command == "predict":
        return predict_command(rest)
    if command == "serve":
        return serve_command(rest)
    if command == "register":
        return register_command(rest)
    print(f"seqcls: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


def exit_with(code: int) -> NoReturn:
    """Exit without the interpreter's last garbage collection over torch's, transformers' and the SDKs' objects: about
    a second at the end of every command (1.1-1.3 s measured, docs/measured.md) that frees nothing an ending process
    needs freed. Every file is written and closed before main returns, and atexit handlers still run."""
    gc.freeze()
    sys.exit(code)


def run() -> NoReturn:
    """The `seqcls` script and `python -m seqcls`."""
    exit_with(main())


if __name__ == "__main__":
    run()
