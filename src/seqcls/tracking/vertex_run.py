"""report_to=vertex: a Vertex AI Experiments run per job (params, time series, metrics), named as Vertex allows."""

from __future__ import annotations

import functools
import re
from typing import Any

from .. import logs, scalars
from .base import RemoteTracker, RunContext


class VertexTracker(RemoteTracker):
    """One Vertex AI experiment run per job, through aiplatform's SDK over REST: the run CustomJob.run(experiment=...,
    experiment_run=...) names in AIP_EXPERIMENT_RUN_NAME, else one named after the run id (found again after a
    restart). Params are the settings, time series the events' scalars at their steps (the experiment needs a
    backing Vertex AI TensorBoard: without one they are skipped with one warning), metrics the test metrics and the
    promotion. A run the job created it also ends; one the CustomJob names, Vertex ends with the job."""

    def __init__(self, context: RunContext, experiment: str, api_endpoint: str, epochs: int, timeout_s: float) -> None:
        self.context, self.experiment_name, self.api_endpoint = context, experiment, api_endpoint
        self.points = scalars.Points(epochs)
        self.run: Any = None
        self.owned = False  # created here (no AIP_EXPERIMENT_RUN_NAME): this job ends it
        self.time_series: bool | None = None  # None until the first series is written
        super().__init__("vertex", "start the Vertex AI experiment run", timeout_s)

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        points = self.points.of(name, fields)
        summary: dict[str, Any] = {}
        if name == "test_metrics":
            summary = {tag: value for tag, value, _ in points}
        elif name == "promotion":
            summary = {"promotion/promoted": int(bool(fields["promoted"]))}
        elif points:
            self.worker.submit(f"log {name}", functools.partial(self._log_series, points))
        elif name == "job_failed":
            self.worker.submit("end the Vertex AI experiment run", functools.partial(self._end, "FAILED"))
        if summary:
            self.worker.submit(f"log {name}", functools.partial(self._log_metrics, summary))

    def finish(self) -> None:
        self.worker.submit("end the Vertex AI experiment run", functools.partial(self._end, "COMPLETE"))
        self.worker.finish(self.timeout_s)

    def record(self) -> dict[str, Any]:
        self.opened.wait(self.timeout_s)
        return {"experiment": self.experiment_name, "run": self.run.resource_name if self.run else None,
                "time_series": self.time_series, "status": self._status(self.run is not None)}

    # --- on the worker thread -----------------------------------------------------------------------------------

    def _attach(self) -> None:
        from google.cloud import aiplatform

        logs.adopt("google.cloud.aiplatform")
        env = self.context.tracking_env
        found = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)/metadataStores/[^/]+/contexts/([^/]+)",
                             self.experiment_name)
        project, location, experiment_id = found.groups() if found else (
            env.get("CLOUD_ML_PROJECT_ID"), env.get("CLOUD_ML_REGION"), self.experiment_name)
        # REST, not gRPC: one HTTP stack, through proxies and Private Service Connect alike. Transport and endpoint
        # first: init with a project already reads the experiment AIP_EXPERIMENT_NAME names
        # (google/cloud/aiplatform/initializer.py, init).
        aiplatform.init(api_transport="rest", api_endpoint=self.api_endpoint or None)
        aiplatform.init(project=project, location=location)
        experiment = aiplatform.Experiment.get_or_create(experiment_id)
        given = env.get("AIP_EXPERIMENT_RUN_NAME", "").replace(f"{experiment.resource_name}-", "").rsplit("/", 1)[-1]
        run_name = given or vertex_run_name(self.context.run_id)
        run = aiplatform.ExperimentRun.get(run_name, experiment=experiment)
        self.owned, reattached = not given, run is not None
        if run is None:
            run = aiplatform.ExperimentRun.create(run_name, experiment=experiment)
        self.run = run
        run.log_params(vertex_params(self.context))
        logs.event("tracker_attached", f"vertex: run {run.name} in experiment {experiment.name}"
                   + (" (reattached)" if reattached else ""), tracker="vertex", experiment=experiment.resource_name,
                   experiment_run=run.resource_name, reattached=reattached)

    def _log_series(self, points: list[tuple[str, float, int]]) -> None:
        if self.time_series is False:
            return
        try:
            self.run.log_time_series_metrics({tag: value for tag, value, _ in points}, step=points[0][2])
            self.time_series = True
        except RuntimeError as err:  # the SDK's "Please set this experiment run with backing tensorboard resource"
            self.time_series = False
            logs.warning("tracker_partial", f"vertex: no time series for this run ({err}); params and metrics go on. "
                         "Give the experiment a backing Vertex AI TensorBoard (docs/tracking.md)",
                         tracker="vertex", reason=str(err))

    def _log_metrics(self, metrics: dict[str, Any]) -> None:
        self.run.log_metrics(metrics)

    def _end(self, state: str) -> None:
        from google.cloud.aiplatform.compat.types import execution as execution_types

        if self.owned and self.run is not None:
            self.run.end_run(state=execution_types.Execution.State[state])


def vertex_run_name(run_id: str) -> str:
    """An experiment run id Vertex accepts ([a-z0-9][a-z0-9-]*, the experiment's name and the run's together at
    most 128 characters) from the job's run id."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-") or "run"
    return name[:60].rstrip("-")


def vertex_params(context: RunContext) -> dict[str, float | int | str]:
    """The settings as Vertex AI params (a string, an integer or a float each), with where the run came from."""
    params: dict[str, float | int | str] = {}
    for name, entry in context.settings.items():
        value = entry["value"]
        params[name] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)[:6000]
    params.update(context.origin())
    return params
