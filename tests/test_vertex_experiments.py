"""report_to=vertex: a run lands in Vertex AI Experiments through aiplatform's own SDK, against a local stub of the
Vertex AI REST methods it calls (tests/vertex_stub.py), with credentials from a service-account key file as
Application Default Credentials would find them.

What a custom job's container sees (Vertex sets it when the job is submitted with an experiment):
AIP_EXPERIMENT_NAME and AIP_EXPERIMENT_RUN_NAME, the contexts' resource names, read by the SDK itself
(google/cloud/aiplatform/metadata/metadata.py, `_ExperimentTracker.experiment` / `.experiment_run`), and the
CustomJobSpec fields `experiment` / `experiment_run` that set them (aiplatform_v1/types/custom_job.py).

Not run here: Vertex AI itself (no emulator exists): the stub answers in the REST reference's shapes, so a
service-side rule the stub does not know (quotas, IAM, a time series' name rules) is not exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vertex_stub
from infra.common import SubmitError
from infra.vertex import submit
from json_stub import service_account_file
from jobtools import (assert_clean_failure, build_tiny_model, cola_rows, json_lines, minilm_folder, run_inprocess)
from seqcls import logs, tracking
from seqcls.errors import SettingsError
from seqcls import settings

PROJECT, REGION = "stub-project", "us-central1"
STORE = f"projects/{PROJECT}/locations/{REGION}/metadataStores/default"
TENSORBOARD = f"projects/{PROJECT}/locations/{REGION}/tensorboards/42"
FAST = ["--epochs", "2", "--batch_size", "8", "--max_length", "32", "--log_every_steps", "3"]


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stub = vertex_stub.VertexStub()
    server = vertex_stub.start(stub)
    key = service_account_file(tmp_path / "key.json", f"{stub.endpoint}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    stub.seed(STORE)
    yield stub
    server.shutdown()


@pytest.fixture(autouse=True)
def fresh_sdk_config():
    """aiplatform.init is process-wide: each test starts and leaves the SDK as a new process has it."""
    from google.cloud.aiplatform import initializer
    from google.cloud.aiplatform.metadata import metadata

    def fresh() -> None:  # the same object: aiplatform.init is bound to it (aiplatform/__init__.py)
        initializer.global_config.__init__()
        metadata._experiment_tracker.reset()

    fresh()
    yield
    fresh()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


def seed_experiment(stub: vertex_stub.VertexStub, name: str, run: str = "", tensorboard: bool = True) -> None:
    """What `infra.vertex.submit --experiment NAME --experiment-run RUN` leaves before the job starts."""
    metadata = {"experiment_deleted": False, **({"backing_tensorboard_resource": TENSORBOARD} if tensorboard else {})}
    if tensorboard:
        stub.seed(TENSORBOARD, displayName="seqcls")
    stub.seed(f"{STORE}/contexts/{name}", displayName=name, schemaTitle="system.Experiment", schemaVersion="0.0.1",
              metadata=metadata)
    if run:
        stub.seed(f"{STORE}/contexts/{name}-{run}", displayName=run, schemaTitle="system.ExperimentRun",
                  schemaVersion="0.0.1", metadata={"_params": {}, "_metrics": {}, "_state": "RUNNING"})


def series(stub: vertex_stub.VertexStub, run: str) -> dict[str, list[tuple[int, float]]]:
    """Each time series' points as the SDK wrote them (runs/*:write), by display name."""
    names = {r["name"].rsplit("/", 1)[-1]: r["displayName"] for n, r in stub.resources.items()
             if n.startswith(f"{run}/timeSeries/")}
    points: dict[str, list[tuple[int, float]]] = {}
    for request in stub.sent("POST", f"{run}:write"):
        for data in request.body["timeSeriesData"]:
            for value in data["values"]:
                points.setdefault(names[data["tensorboardTimeSeriesId"]], []).append(
                    (int(value["step"]), value["scalar"].get("value", 0.0)))  # proto3 JSON omits a 0.0
    return points


# --- settings ------------------------------------------------------------------------------------------------------

def test_vertex_settings_need_report_to_vertex_and_an_experiment(tmp_path, cola_dir, tiny_model, monkeypatch, capsys):
    with pytest.raises(SettingsError, match="vertex_experiment.*needs report_to to include vertex"):
        settings.resolve([("cli", {"vertex_experiment": "cola"})])
    train = tmp_path / "train.tsv"
    train.write_text(cola_rows(cola_dir, "in_domain_train.tsv", 40) + "\n")
    outcome = run_inprocess(tmp_path / "job", ["--train", str(train), "--model", str(tiny_model), "--report_to",
                                               "vertex"], {}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["report_to=vertex needs an experiment", "--experiment", "vertex_experiment"])
    assert not [e for e in outcome.events if e.get("event") == "data_ready"]


def test_the_image_lock_has_the_vertex_sdk():
    lock = Path(__file__).parents[1].joinpath("container", "requirements.txt").read_text()
    assert "\ngoogle-cloud-aiplatform==" in lock


def test_run_names_are_what_vertex_accepts():
    assert tracking.vertex_run_name("Tuning_Trial.7/2026") == "tuning-trial-7-2026"
    assert tracking.vertex_run_name("x" * 200) == "x" * 60


# --- a job's run in the stub ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_custom_job_run_gets_params_time_series_and_metrics_and_vertex_ends_it(tmp_path, cola_dir, tiny_model, stub,
                                                                                monkeypatch, capsys):
    """As a job submitted with --experiment weekly --experiment-run job-7: the SDK finds both from the environment.

    Vertex also sets CLOUD_ML_PROJECT_ID, the project number, which the SDK turns into the project id through Cloud
    Resource Manager (google/cloud/aiplatform/initializer.py, `_set_project_as_env_var_or_google_auth_default`) on
    its default endpoint, not api_endpoint: no stub can answer that, so the key file's project_id stands in."""
    seed_experiment(stub, "weekly", "job-7")
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text(cola_rows(cola_dir, "in_domain_train.tsv", 120) + "\n")
    test.write_text(cola_rows(cola_dir, "in_domain_dev.tsv", 60) + "\n")
    env = {"AIP_EXPERIMENT_NAME": f"{STORE}/contexts/weekly", "AIP_EXPERIMENT_RUN_NAME": f"{STORE}/contexts/weekly-job-7",
           "CLOUD_ML_REGION": REGION, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json")}
    args = ["--train", str(train), "--test", str(test), "--model", str(tiny_model), *FAST, "--report_to",
            "tensorboard,vertex", "--vertex_api_endpoint", stub.endpoint, "--run_id", "vertex-1"]
    outcome = run_inprocess(tmp_path / "job", args, env, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert all(line.startswith("{") for line in outcome.stdout.splitlines() if line.strip())  # the SDK's logs too
    manifest = json.loads((tmp_path / "job" / "model" / "run_manifest.json").read_text())
    assert manifest["trackers"]["vertex"]["status"] == "receiving", manifest["trackers"]["vertex"]
    run = stub.resources[f"{STORE}/contexts/weekly-job-7"]["metadata"]
    assert run["_params"]["learning_rate"] == 2e-05 and run["_params"]["epochs"] == 2
    assert run["_params"]["seqcls/run_id"] == "vertex-1" and run["_params"]["report_to"] == "tensorboard,vertex"
    metrics = json.loads((tmp_path / "job" / "model" / "metrics.json").read_text())
    assert run["_metrics"]["test/mcc"] == pytest.approx(metrics["test"]["mcc"])
    assert not [e for e in outcome.events if e.get("event") == "listener_failed"]  # closed with the job
    assert run["_state"] == "RUNNING"  # the job's run is Vertex's: it ends it with the CustomJob (jobs.py, _run)
    written = series(stub, f"{TENSORBOARD}/experiments/weekly/runs/job-7")
    progress = [e for e in outcome.events if e.get("event") == "train_progress"]
    assert written["train/loss"] == [(e["step"], pytest.approx(e["loss"])) for e in progress]
    epochs = [e for e in outcome.events if e.get("event") == "epoch_end"]
    assert written["val/mcc"] == [(e["epoch"], pytest.approx(e["val_mcc"])) for e in epochs]
    assert manifest["trackers"]["vertex"]["run"] == f"{STORE}/contexts/weekly-job-7"
    attached = [e for e in json_lines(outcome.stdout) if e.get("event") == "tracker_attached"]
    assert [e["experiment_run"] for e in attached] == [f"{STORE}/contexts/weekly-job-7"]


def test_without_a_backing_tensorboard_params_and_metrics_still_land_with_one_warning(stub, capsys):
    """vertex_experiment on a job Vertex did not name a run for: the experiment and a run named after the run id are
    created, and the job ends the run it created."""
    logs.setup()
    context = tracking.RunContext("Nightly_3", "local", "abc", "", "/models/minilm", "gs://b/out",
                                  {"epochs": {"value": 3, "source": "cli"}, "fp16": {"value": True, "source": "default"}},
                                  Path("/tmp"), Path("/tmp"), {"CLOUD_ML_PROJECT_ID": PROJECT, "CLOUD_ML_REGION": REGION})
    tracker = tracking.VertexTracker(context, "nightly", stub.endpoint, 3, 30)
    for step in (3, 6):
        tracker.on_event("train_progress", {"step": step, "loss": 0.5, "lr": 1e-4})
    tracker.on_event("test_metrics", {"test_mcc": 0.25, "test_accuracy": 0.7})
    tracker.on_event("promotion", {"promoted": False})
    tracker.finish()
    assert tracker.record()["time_series"] is False and tracker.record()["status"] == "receiving"
    assert stub.resources[f"{STORE}/contexts/nightly"]["schemaTitle"] == "system.Experiment"
    run = stub.resources[f"{STORE}/contexts/nightly-nightly-3"]
    assert run["schemaTitle"] == "system.ExperimentRun" and run["displayName"] == "nightly-3"
    assert run["metadata"]["_params"] == {"epochs": 3, "fp16": "True", "seqcls/run_id": "Nightly_3",
                                          "seqcls/platform": "local", "seqcls/git_commit": "abc",
                                          "seqcls/model_source": "/models/minilm", "seqcls/output_uri": "gs://b/out"}
    assert run["metadata"]["_metrics"] == {"test/mcc": 0.25, "test/accuracy": 0.7, "promotion/promoted": 0}
    assert run["metadata"]["_state"] == "COMPLETE"
    assert stub.sent("POST", f"{STORE}/contexts/nightly:addContextChildren")
    warnings = [e for e in json_lines(capsys.readouterr().out) if e.get("event") == "tracker_partial"]
    assert len(warnings) == 1 and "backing tensorboard" in warnings[0]["reason"]


def test_credentials_vertex_refuses_cost_a_warning_not_the_run(stub, capsys):
    logs.setup()
    stub.denied = True
    context = tracking.RunContext("r", "local", "", "", "", "", {}, Path("/tmp"), Path("/tmp"),
                                  {"CLOUD_ML_PROJECT_ID": PROJECT, "CLOUD_ML_REGION": REGION})
    tracker = tracking.VertexTracker(context, "nightly", stub.endpoint, 3, 60)
    tracker.on_event("train_progress", {"step": 3, "loss": 0.5})
    tracker.finish()
    status = tracker.record()["status"]
    assert status.startswith("failed: start the Vertex AI experiment run: Forbidden: 403"), status
    failed = [e for e in json_lines(capsys.readouterr().out) if e.get("event") == "tracker_failed"]
    assert len(failed) == 1 and failed[0]["tracker"] == "vertex" and "aiplatform.metadataStores.get" in failed[0]["reason"]


# --- the submitter ---------------------------------------------------------------------------------------------------

SUBMIT = ["--project", PROJECT, "--region", REGION, "--image", "us-central1-docker.pkg.dev/p/r/seqcls:1",
          "--train", "gs://data/train.tsv", "--base-output-dir", "gs://out/run1", "--hp", "report_to=tensorboard,vertex"]


def test_submit_creates_the_experiment_and_run_and_names_them_in_the_custom_job(stub):
    """Through the SDK's REST transport to the stub: CustomJob.submit takes only existing experiments and runs
    (jobs.py, _get_experiment_and_run_resource_name), so the submitter creates them first."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    aiplatform.init(api_endpoint=stub.endpoint, api_transport="rest")
    job = submit.job_from_args(submit._parser().parse_args([*SUBMIT, "--experiment", "weekly",
                                                            "--experiment-run", "job-7"]))
    submit.submit(job, wait=False, credentials=AnonymousCredentials())
    assert stub.resources[f"{STORE}/contexts/weekly"]["schemaTitle"] == "system.Experiment"
    assert stub.resources[f"{STORE}/contexts/weekly-job-7"]["schemaTitle"] == "system.ExperimentRun"
    (created,) = stub.sent("POST", f"projects/{PROJECT}/locations/{REGION}/customJobs")
    assert created.body["jobSpec"]["experiment"] == f"{STORE}/contexts/weekly"
    assert created.body["jobSpec"]["experimentRun"] == f"{STORE}/contexts/weekly-job-7"
    spec = json.loads(submit.spec_json(job))["jobSpec"]  # what --dry-run, the DAG and the schedule send
    assert (spec["experiment"], spec["experimentRun"]) == (created.body["jobSpec"]["experiment"],
                                                          created.body["jobSpec"]["experimentRun"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--experiment-run", "job-7"], "--experiment-run needs --experiment"),
    (["--experiment", "Weekly_Runs"], "lowercase letters, digits and hyphens"),
    (["--experiment", "weekly", "--hp", "report_to=mlflow"], "add vertex to --hp report_to"),
])
def test_bad_experiment_options_fail_before_any_call(extra, message):
    argv = [*SUBMIT[:-2], *(extra if "report_to=mlflow" in extra else [*SUBMIT[-2:], *extra])]
    with pytest.raises(SubmitError, match=message):
        submit.job_from_args(submit._parser().parse_args(argv))
