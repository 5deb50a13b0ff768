"""The trackers report_to names, started as listeners on the event bus and closed together at the job's end."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from .. import logs, runtime, scalars
from ..errors import SettingsError
from ..settings import Resolved, report_targets
from .base import RunContext
from .mlflow_run import DEFAULT_EXPERIMENT, MlflowTracker
from .vertex_run import VertexTracker
from .wandb_run import WandbTracker


class Tracker(logs.Listener, Protocol):
    def record(self) -> dict[str, Any]:
        """How the tracker stands, for run_manifest.json."""
        ...

    def finish(self) -> None:
        """The run is published: hand over the rest before job_end."""
        ...


class Trackers:
    """The listeners report_to chose (rank 0 only), subscribed to the log's events."""

    def __init__(self, listeners: dict[str, Tracker]) -> None:
        self.listeners = listeners
        for listener in listeners.values():
            logs.subscribe(listener)

    def record(self) -> dict[str, Any]:
        return {name: listener.record() for name, listener in self.listeners.items()}

    def finish(self) -> None:
        for listener in self.listeners.values():
            listener.finish()


def start(resolved: Resolved, where: runtime.Platform, model_source: str) -> Trackers:
    """The trackers report_to names; a tracker's own setting missing (MLFLOW_TRACKING_URI) fails here, before data."""
    settings = resolved.settings
    chosen = report_targets(settings.report_to)
    listeners: dict[str, Tracker] = {}
    if "tensorboard" in chosen:
        listeners["tensorboard"] = scalars.TensorBoardScalars(where.tensorboard_dir, settings.epochs)
    if "mlflow" in chosen:
        if "MLFLOW_TRACKING_URI" not in where.tracking_env:
            raise SettingsError("report_to=mlflow needs MLFLOW_TRACKING_URI: a tracking server's URL, a SageMaker "
                                "MLflow tracking server's ARN, or a folder (docs/tracking.md)")
        runtime.mlflow_job_defaults()
        context = _context(resolved, where, model_source)
        experiment = settings.mlflow_experiment or where.tracking_env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        listeners["mlflow"] = MlflowTracker(context, experiment, settings.mlflow_registered_model,
                                            settings.mlflow_log_model, settings.epochs, settings.tracker_timeout_s)
    if "wandb" in chosen:
        directory = Path(where.tracking_env.get("WANDB_DIR") or where.root / "output" / "wandb")
        listeners["wandb"] = WandbTracker(_context(resolved, where, model_source), directory, settings.epochs,
                                          settings.tracker_timeout_s)
    if "vertex" in chosen:
        experiment = settings.vertex_experiment or where.tracking_env.get("AIP_EXPERIMENT_NAME", "")
        if not experiment:
            raise SettingsError("report_to=vertex needs an experiment: submit the job with one (infra.vertex.submit "
                                "--experiment, which sets AIP_EXPERIMENT_NAME) or set vertex_experiment")
        listeners["vertex"] = VertexTracker(_context(resolved, where, model_source), experiment,
                                            settings.vertex_api_endpoint, settings.epochs, settings.tracker_timeout_s)
    return Trackers(listeners)


def _context(resolved: Resolved, where: runtime.Platform, model_source: str) -> RunContext:
    return RunContext(where.run_id, where.name, where.git_commit, where.trial_id, model_source,
                      resolved.settings.output_uri or where.model_uri, resolved.snapshot(), where.model_dir,
                      where.output_data_dir, where.tracking_env)
