"""Experiment trackers (report_to), each a listener on the log's event bus: TensorBoard event files, MLflow,
Weights & Biases and Vertex AI Experiments.

A tracker sees the events stdout carries, so it holds exactly the JSON log's values. A tracker never costs the
run: MLflow's and W&B's calls run in order on a thread of their own (as do Vertex AI's), so a slow server never holds the training
loop; the first failure stops the tracker with one `tracker_failed` warning naming the reason, and at the job's
end it has tracker_timeout_s to take the last of the run before the job exits as it would have. run_manifest.json
records each tracker as it stood when the model was saved (`trackers`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import logs, outbound, runtime, scalars
from .errors import SettingsError
from .settings import Resolved, report_targets

DEFAULT_EXPERIMENT = "seqcls"
CHAMPION_ALIAS = "champion"  # models:/NAME@champion names the model latest.json points at
RUN_TAG = "seqcls/run_id"  # finds this job's MLflow run again after a restart (spot, retry)
PARAMS_PER_CALL = 100  # MLflow's log_batch limits: 100 params, 100 tags, 1000 metrics per request


@dataclass(frozen=True)
class RunContext:
    """What a tracker records about the run besides its events."""

    run_id: str
    platform: str
    git_commit: str
    trial_id: str
    model_source: str
    output_uri: str
    settings: dict[str, dict[str, Any]]  # the resolved snapshot: values (secrets masked) and their sources
    model_dir: Path
    output_data_dir: Path
    tracking_env: dict[str, str]

    def origin(self) -> dict[str, str]:
        """Where the run came from, as W&B config and Vertex params carry it (MLflow has tags of its own names)."""
        return {"seqcls/run_id": self.run_id, "seqcls/platform": self.platform, "seqcls/git_commit": self.git_commit,
                "seqcls/model_source": self.model_source, "seqcls/output_uri": outbound.mask(self.output_uri)}


class _Worker:
    """Runs one tracker's calls in order on a daemon thread; the first failure drops the rest, with one warning."""

    def __init__(self, tracker: str) -> None:
        self.tracker = tracker
        self.failure: str | None = None
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._current = ""
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"seqcls-{tracker}", daemon=True)
        self._thread.start()

    def submit(self, what: str, call: Callable[[], None]) -> None:
        if self.failure is None:
            self._calls.put((what, call))

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            what, call = item
            if self.failure is not None:
                continue
            self._current = what
            try:
                call()
            except Exception as err:  # noqa: BLE001 - a tracker must not stop the run: say why, once
                self._fail(f"{what}: {type(err).__name__}: {' '.join(str(err).split())[:400]}")

    def _fail(self, reason: str) -> None:
        self.failure = reason
        logs.warning("tracker_failed", f"{self.tracker} stopped receiving this run ({reason}); the run goes on",
                     tracker=self.tracker, reason=reason)

    def finish(self, timeout_s: float) -> None:
        """Let the queued calls run for at most `timeout_s`; then leave the thread behind (it dies with the process).
        Only the first call waits."""
        if self._finished:
            return
        self._finished = True
        self._calls.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive() and self.failure is None:
            self._fail(f"no answer within tracker_timeout_s={timeout_s:g}s, still waiting to {self._current}")


class _RemoteTracker:
    """What every tracker that talks to a service shares: a worker thread whose first call opens the run, the event
    record() waits on (the run exists, or opening it failed), its status for run_manifest.json, and close()."""

    def __init__(self, tracker: str, opening: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.opened = threading.Event()
        self.worker = _Worker(tracker)
        self.worker.submit(opening, self._open)

    def close(self) -> None:
        self.worker.finish(self.timeout_s)

    def _status(self, connected: bool) -> str:
        return f"failed: {self.worker.failure}" if self.worker.failure else "receiving" if connected else "connecting"

    def _open(self) -> None:
        try:
            self._attach()
        finally:
            self.opened.set()

    def _attach(self) -> None:
        raise NotImplementedError


class MlflowTracker(_RemoteTracker):
    """One MLflow run per job: params are the settings, metrics the events' scalars at their steps, tags say where
    the run came from; at the end the run's files (and the model folder, when asked) become artifacts, and with
    mlflow_registered_model the run becomes a model version, aliased `champion` when the gate promoted it."""

    def __init__(self, context: RunContext, experiment: str, registered_model: str, log_model: bool,
                 epochs: int, timeout_s: float) -> None:
        self.context, self.experiment, self.registered_model = context, experiment, registered_model
        self.log_model = log_model or bool(registered_model)
        self.points = scalars.Points(epochs)
        self.client: Any = None
        self.mlflow_run_id: str | None = None
        self.experiment_id: str | None = None
        self.promoted: bool | None = None  # None: no gate, so every published run is the champion
        self.published = False
        super().__init__("mlflow", "start the MLflow run", timeout_s)

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        points = self.points.of(name, fields)
        if points:
            self.worker.submit(f"log {name}", functools.partial(self._log_points, points))
        if name == "promotion":
            self.promoted = bool(fields["promoted"])
            outcome = "promoted" if self.promoted else "kept"
            self.worker.submit("log the promotion", functools.partial(self._log_tags, {"seqcls/promotion": outcome}))
        elif name == "artifacts_published":
            self.published = True
            uri = outbound.mask(str(fields["uri"]))
            self.worker.submit("tag the published URI", functools.partial(self._log_tags, {"seqcls/published_uri": uri}))
        elif name == "job_failed":
            self.worker.submit("end the MLflow run", functools.partial(self._end, "FAILED"))

    def finish(self) -> None:
        """The run is published: its files, the model version, the end; waits at most tracker_timeout_s."""
        self.worker.submit("upload the run's files", self._upload)
        if self.registered_model:
            self.worker.submit(f"register the run as a version of {self.registered_model}", self._register)
        self.worker.submit("end the MLflow run", functools.partial(self._end, "FINISHED"))
        self.worker.finish(self.timeout_s)

    def record(self) -> dict[str, Any]:
        """Waits (at most tracker_timeout_s) for the run to exist, so the manifest names it."""
        self.opened.wait(self.timeout_s)
        return {"tracking_uri": outbound.mask(self.context.tracking_env.get("MLFLOW_TRACKING_URI", "")),
                "experiment": self.experiment, "experiment_id": self.experiment_id, "run_id": self.mlflow_run_id,
                "status": self._status(self.mlflow_run_id is not None)}

    # --- on the worker thread -----------------------------------------------------------------------------------

    def _attach(self) -> None:
        from mlflow import MlflowClient

        logs.adopt("mlflow")  # mlflow installs a stderr handler on import
        self.client = MlflowClient(tracking_uri=self.context.tracking_env["MLFLOW_TRACKING_URI"])
        run, reattached = self._run()
        self.mlflow_run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        given = {name: str(entry["value"])[:6000] for name, entry in self.context.settings.items()}
        params = {name: value for name, value in given.items() if name not in run.data.params}  # params are immutable
        self._log_batch(params=params, tags=self._tags())
        logs.event("tracker_attached", f"mlflow: run {run.info.run_id} in experiment {self.experiment}"
                                       + (" (reattached)" if reattached else ""), tracker="mlflow",
                   mlflow_run_id=run.info.run_id, experiment_id=run.info.experiment_id, reattached=reattached)

    def _run(self) -> tuple[Any, bool]:
        """MLFLOW_RUN_ID's run; else this job's run from an earlier attempt (its seqcls/run_id tag); else a new one."""
        given = self.context.tracking_env.get("MLFLOW_RUN_ID")
        if given:
            self.client.update_run(given, status="RUNNING")
            return self.client.get_run(given), True
        experiment_id = self._experiment_id()
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{self.context.run_id}'", max_results=1)
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0], True
        return self.client.create_run(experiment_id, run_name=self.context.run_id, tags={RUN_TAG: self.context.run_id}), False

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        existing = self.client.get_experiment_by_name(self.experiment)
        if existing is not None:
            return existing.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # created meanwhile by a parallel run (a tuning trial, say)
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _tags(self) -> dict[str, str]:
        c = self.context
        tags = {RUN_TAG: c.run_id, "seqcls/platform": c.platform, "mlflow.source.git.commit": c.git_commit,
                "seqcls/model_source": c.model_source, "seqcls/output_uri": outbound.mask(c.output_uri),
                "seqcls/trial_id": c.trial_id}
        return {name: value for name, value in tags.items() if value}

    def _log_batch(self, metrics: list | None = None, params: dict[str, str] | None = None,
                   tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        items = [Param(k, v) for k, v in (params or {}).items()]
        for start in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.mlflow_run_id, params=items[start:start + PARAMS_PER_CALL])
        self.client.log_batch(self.mlflow_run_id, metrics=[Metric(*m) for m in metrics or []],
                              tags=[RunTag(k, v) for k, v in (tags or {}).items()])

    def _log_points(self, points: list[tuple[str, float, int]]) -> None:
        now = int(time.time() * 1000)
        self._log_batch(metrics=[(tag, value, now, x) for tag, value, x in points])

    def _log_tags(self, tags: dict[str, str]) -> None:
        self._log_batch(tags=tags)

    def _upload(self) -> None:
        """metrics.json, run_manifest.json and the model card under run/, the plots under plots/, and the model
        folder under model/ when asked; tagged with a fingerprint of the data files the manifest lists."""
        model_dir, data_dir = self.context.model_dir, self.context.output_data_dir
        for name in ("metrics.json", "run_manifest.json", "README.md"):
            if (model_dir / name).is_file():
                self.client.log_artifact(self.mlflow_run_id, str(model_dir / name), "run")
        for plot in sorted(data_dir.glob("*.png")):
            self.client.log_artifact(self.mlflow_run_id, str(plot), "plots")
        if self.log_model:
            self.client.log_artifacts(self.mlflow_run_id, str(model_dir), "model")
        files = json.loads((model_dir / "run_manifest.json").read_text())["data"]["files"]
        fingerprint = hashlib.sha256("".join(f"{f['channel']}:{f['sha256']}\n" for f in files).encode()).hexdigest()
        self._log_tags({"seqcls/data_sha256": fingerprint})

    def _register(self) -> None:
        from mlflow.exceptions import MlflowException

        name = self.registered_model
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        outcome = {None: "ungated", True: "promoted", False: "kept"}[self.promoted]
        source = f"{self.client.get_run(self.mlflow_run_id).info.artifact_uri}/model"
        version = self.client.create_model_version(name, source, run_id=self.mlflow_run_id,
                                                   tags={RUN_TAG: self.context.run_id, "seqcls/promotion": outcome})
        champion = self.promoted is not False
        if champion:
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
        logs.event("model_registered", f"mlflow: {name} version {version.version}" +
                   (f", alias {CHAMPION_ALIAS} moved to it" if champion else f" ({outcome}: {CHAMPION_ALIAS} stays)"),
                   tracker="mlflow", registered_model=name, version=version.version, champion=champion)

    def _end(self, status: str) -> None:
        self.client.set_terminated(self.mlflow_run_id, status)


class WandbTracker(_RemoteTracker):
    """One W&B run per job, id'd by the run id so a restarted job resumes it: config is the settings, history the
    events' scalars (train scalars against `global_step`, per-epoch ones against `epoch`), summary the test metrics
    and the promotion. WANDB_MODE=offline writes the run under WANDB_DIR for `wandb sync`."""

    def __init__(self, context: RunContext, directory: Path, epochs: int, timeout_s: float) -> None:
        self.context, self.directory = context, directory
        self.points = scalars.Points(epochs)
        self.run: Any = None
        super().__init__("wandb", "start the W&B run", timeout_s)

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        points = self.points.of(name, fields)
        if name == "test_metrics" or name == "promotion" or name == "artifacts_published":
            summary = {tag: value for tag, value, _ in points}
            if name == "promotion":
                summary["promotion"] = "promoted" if fields["promoted"] else "kept"
            elif name == "artifacts_published":
                summary["published_uri"] = outbound.mask(str(fields["uri"]))
            self.worker.submit(f"update the summary from {name}", functools.partial(self._summary, summary))
        elif points:
            axis = "epoch" if name == "epoch_end" else "global_step"
            self.worker.submit(f"log {name}", functools.partial(self._log, points, axis))
        elif name == "job_failed":
            self.worker.submit("finish the W&B run", functools.partial(self._end, 1))

    def finish(self) -> None:
        self.worker.submit("finish the W&B run", functools.partial(self._end, 0))
        self.worker.finish(self.timeout_s)

    def record(self) -> dict[str, Any]:
        self.opened.wait(self.timeout_s)
        return {"run_id": self.run.id if self.run else None, "project": self.run.project if self.run else None,
                "directory": str(self.directory), "status": self._status(self.run is not None)}

    # --- on the worker thread -----------------------------------------------------------------------------------

    def _attach(self) -> None:
        import wandb

        logs.adopt("wandb")
        c = self.context
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {name: entry["value"] for name, entry in c.settings.items()}
        config.update(c.origin())
        self.run = wandb.init(name=c.run_id, id=re.sub(r"[^A-Za-z0-9_-]", "-", c.run_id), resume="allow",
                              dir=str(self.directory), config=config, job_type="train",
                              tags=[c.platform] + ([f"trial-{c.trial_id}"] if c.trial_id else []),
                              settings=wandb.Settings(console="off", silent=True))  # stdout stays JSON lines
        for axis in ("global_step", "epoch"):
            self.run.define_metric(axis, hidden=True)
        logs.event("tracker_attached", f"wandb: run {self.run.id} in project {self.run.project}", tracker="wandb",
                   wandb_run_id=self.run.id, project=self.run.project)

    def _log(self, points: list[tuple[str, float, int]], axis: str) -> None:
        for tag, _, _ in points:
            self.run.define_metric(tag, step_metric=axis)
        self.run.log({**{tag: value for tag, value, _ in points}, axis: points[0][2]})

    def _summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def _end(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)


class VertexTracker(_RemoteTracker):
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
