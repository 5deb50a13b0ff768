"""report_to=mlflow: one MLflow run per job (found again after a restart), params, metrics, artifacts, and the
registered model whose `champion` alias follows latest.json."""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any

from .. import logs, outbound, scalars
from ..records import METRICS, RUN_MANIFEST, RunManifest
from .base import RemoteTracker, RunContext

DEFAULT_EXPERIMENT = "seqcls"
CHAMPION_ALIAS = "champion"  # models:/NAME@champion names the model latest.json points at
RUN_TAG = "seqcls/run_id"  # finds this job's MLflow run again after a restart (spot, retry)
PARAMS_PER_CALL = 100  # MLflow's log_batch limits: 100 params, 100 tags, 1000 metrics per request


class MlflowTracker(RemoteTracker):
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
        for name in (METRICS, RUN_MANIFEST, "README.md"):
            if (model_dir / name).is_file():
                self.client.log_artifact(self.mlflow_run_id, str(model_dir / name), "run")
        for plot in sorted(data_dir.glob("*.png")):
            self.client.log_artifact(self.mlflow_run_id, str(plot), "plots")
        if self.log_model:
            self.client.log_artifacts(self.mlflow_run_id, str(model_dir), "model")
        manifest = RunManifest.read(model_dir)
        files = manifest.data.files if manifest else []
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
