"""The runtime contract: where inputs and outputs live on SageMaker, Vertex AI or a workstation.

The only package that knows SageMaker and Vertex names and reads os.environ (tests/test_layout.py). One module per
concern: `platform` (the training job's inputs, outputs and hyperparameter sources, as one read-only `Platform`),
`launch` (the torchrun launch across GPUs and hosts, the GPU a platform declares) and `endpoint` (the serving
container's port, routes and model).
"""

from .endpoint import SERVING_SETTINGS, Serving, serving, vertex_container_spec
from .launch import Launch, declared_gpu, launch_plan, process_ranks
from .platform import (
    CHANNELS,
    MLFLOW_JOB_DEFAULTS,
    Platform,
    debug_enabled,
    detect,
    exec_env,
    failure_file_for,
    gcs_to_fuse,
    hyperparameter_name,
    mlflow_job_defaults,
    parse_cli,
    pinned_for_ranks,
)

__all__ = ["CHANNELS", "MLFLOW_JOB_DEFAULTS", "SERVING_SETTINGS", "Launch", "Platform", "Serving", "debug_enabled",
           "declared_gpu", "detect", "exec_env", "failure_file_for", "gcs_to_fuse", "hyperparameter_name",
           "launch_plan", "mlflow_job_defaults", "parse_cli", "pinned_for_ranks", "process_ranks", "serving",
           "vertex_container_spec"]
