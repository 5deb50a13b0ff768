"""report_to=mlflow against a real MLflow tracking server: `mlflow server` with a SQLite store, its artifacts
proxied to a folder (the server's --artifacts-destination, so the job uploads over HTTP as it would to a team's
server). What the job sent is read back through MlflowClient, as a team's dashboard or deploy script would.

Not run here: SageMaker's managed MLflow itself (its endpoint needs AWS); the plugin's ARN resolution and SigV4
signing are checked offline below.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from jobtools import (QUICK_RUN_ENV, assert_clean_failure, build_tiny_model, clean_env, cola_rows, json_lines,
                      minilm_folder, run_cli, run_inprocess)
from seqcls import logs, runtime, settings, tracking
from seqcls.errors import SettingsError
from storage_servers import free_port

FAST = ["--epochs", "2", "--batch_size", "8", "--max_length", "32", "--log_every_steps", "3"]


def start_mlflow(folder: Path) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as answer:
                if answer.status == 200:
                    return process, uri
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("mlflow server did not answer /health within 120 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    process, uri = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop(process)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job sets MLflow's job defaults in its own process: undone after each in-process run."""
    for name in runtime.MLFLOW_JOB_DEFAULTS:
        monkeypatch.delenv(name, raising=False)


def cola_files(folder: Path, cola_dir: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.tsv", folder / "test.tsv"
    train.write_text(cola_rows(cola_dir, "in_domain_train.tsv", 120) + "\n")
    test.write_text(cola_rows(cola_dir, "in_domain_dev.tsv", 60) + "\n")
    return train, test


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --- settings ------------------------------------------------------------------------------------------------------

def test_report_to_is_a_list_of_known_trackers_or_none():
    assert settings.report_targets("tensorboard, MLflow") == ("tensorboard", "mlflow")
    assert settings.report_targets("none") == ()
    for bad in ("comet", "none,mlflow", ""):
        with pytest.raises(SettingsError, match="report_to.*must be none or a comma-separated list of tensorboard, mlflow, wandb"):
            settings.report_targets(bad)
    with pytest.raises(SettingsError, match="mlflow_registered_model.*needs report_to to include mlflow"):
        settings.resolve([("cli", {"mlflow_registered_model": "cola"})])


def test_mlflow_without_a_tracking_uri_fails_before_data_naming_the_variable(tmp_path, cola_dir, tiny_model, job_env,
                                                                             monkeypatch, capsys):
    train, _ = cola_files(tmp_path / "data", cola_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outcome = run_inprocess(tmp_path / "ml", ["--train", str(train), "--model", str(tiny_model), "--report_to", "mlflow"],
                            {}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["report_to=mlflow needs MLFLOW_TRACKING_URI"])
    assert not [e for e in outcome.events if e.get("event") == "data_ready"]


# --- the worker that keeps a tracker off the training loop ---------------------------------------------------------

class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def on_event(self, name: str, fields: dict) -> None:
        self.seen.append((name, fields))

    def close(self) -> None:
        pass


def test_a_failing_tracker_call_warns_once_and_drops_the_rest(capsys):
    logs.setup()
    worker = tracking.Worker("probe")
    done: list[str] = []

    def broken() -> None:
        raise ConnectionError("connection refused by http://user:secret@tracker:5000")

    worker.submit("log step 1", lambda: done.append("1"))
    worker.submit("log step 2", broken)
    worker.submit("log step 3", lambda: done.append("3"))
    worker.finish(10)
    events = json_lines(capsys.readouterr().out)
    failed = [e for e in events if e["event"] == "tracker_failed"]
    assert done == ["1"] and len(failed) == 1
    assert "log step 2: ConnectionError: connection refused" in failed[0]["reason"] and "secret" not in json.dumps(failed)


def test_a_tracker_that_never_answers_costs_at_most_its_timeout(capsys):
    logs.setup()
    worker = tracking.Worker("probe")
    release = threading.Event()
    worker.submit("upload the model", release.wait)
    started = time.monotonic()
    worker.finish(0.5)
    worker.finish(0.5)  # only the first call waits
    assert time.monotonic() - started < 5
    release.set()
    failed = [e for e in json_lines(capsys.readouterr().out) if e["event"] == "tracker_failed"]
    assert len(failed) == 1 and "no answer within tracker_timeout_s=0.5s, still waiting to upload the model" in failed[0]["reason"]


# --- a real server -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_lands_in_mlflow_with_settings_metric_histories_tags_and_files(tmp_path, cola_dir, tiny_model, mlflow_server,
                                                                           job_env, monkeypatch, capsys):
    train, test = cola_files(tmp_path / "data", cola_dir)
    args = ["--train", str(train), "--test", str(test), "--model", str(tiny_model), *FAST, "--report_to",
            "tensorboard,mlflow", "--mlflow_experiment", "cola-tracking", "--output_uri", str(tmp_path / "published"),
            "--run_id", "tracked-1"]
    outcome = run_inprocess(tmp_path / "ml", args, {"MLFLOW_TRACKING_URI": mlflow_server}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert all(line.startswith("{") for line in outcome.stdout.splitlines() if line.strip())  # no "View run" links
    manifest = json.loads((tmp_path / "ml" / "model" / "run_manifest.json").read_text())
    run_id = manifest["trackers"]["mlflow"]["run_id"]
    run = client(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked-1"
    assert client(mlflow_server).get_experiment(run.info.experiment_id).name == "cola-tracking"
    assert run.data.params["learning_rate"] == "2e-05" and run.data.params["epochs"] == "2"
    progress = [e for e in outcome.events if e.get("event") == "train_progress"]
    history = client(mlflow_server).get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(e["step"], e["loss"]) for e in progress]
    epochs = [e for e in outcome.events if e.get("event") == "epoch_end"]
    assert [(m.step, m.value) for m in client(mlflow_server).get_metric_history(run_id, "val/mcc")] == [
        (e["epoch"], e["val_mcc"]) for e in epochs]
    metrics = json.loads((tmp_path / "ml" / "model" / "metrics.json").read_text())
    assert run.data.metrics["test/mcc"] == pytest.approx(metrics["test"]["mcc"])
    files = manifest["data"]["files"]
    assert run.data.tags["seqcls/data_sha256"] == hashlib.sha256(
        "".join(f"{f['channel']}:{f['sha256']}\n" for f in files).encode()).hexdigest()
    assert {k: run.data.tags[k] for k in ("seqcls/run_id", "seqcls/platform", "mlflow.source.git.commit",
                                          "seqcls/model_source", "seqcls/output_uri")} == {
        "seqcls/run_id": "tracked-1", "seqcls/platform": "sagemaker",  # a SEQCLS_OPT_ML tree
        "mlflow.source.git.commit": "test",
        "seqcls/model_source": str(tiny_model), "seqcls/output_uri": str(tmp_path / "published")}
    listed = {a.path for folder in ("run", "plots") for a in client(mlflow_server).list_artifacts(run_id, folder)}
    assert {"run/metrics.json", "run/run_manifest.json", "run/README.md", "plots/loss_curve.png"} <= listed
    assert not client(mlflow_server).list_artifacts(run_id, "model")  # mlflow_log_model=false
    assert list((tmp_path / "ml" / "output" / "tensorboard").glob("events.out.tfevents.*"))  # both trackers


def gated_run(tmp_path: Path, name: str, train: Path, test: Path, tiny_model: Path, uri: str, monkeypatch, capsys,
              extra: list[str]):
    args = ["--train", str(train), "--test", str(test), "--model", str(tiny_model), *FAST, "--report_to", "mlflow",
            "--mlflow_registered_model", "cola-gate", "--promote_if", "test_mcc", "--output_uri",
            str(tmp_path / "published"), "--run_id", name, *extra]
    outcome = run_inprocess(tmp_path / name, args, {"MLFLOW_TRACKING_URI": uri}, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    return outcome


@pytest.mark.slow
def test_every_published_run_is_a_model_version_and_champion_follows_the_gate(tmp_path, cola_dir, tiny_model,
                                                                            mlflow_server, job_env, monkeypatch, capsys):
    train, test = cola_files(tmp_path / "data", cola_dir)
    first = gated_run(tmp_path, "week-1", train, test, tiny_model, mlflow_server, monkeypatch, capsys, [])
    # The same data, seed and settings: an improvement of exactly 0 on every resample, which `better` refuses.
    second = gated_run(tmp_path, "week-2", train, test, tiny_model, mlflow_server, monkeypatch, capsys,
                       ["--promote_rule", "better"])
    promoted = [next(e for e in o.events if e.get("event") == "promotion")["promoted"] for o in (first, second)]
    assert promoted == [True, False]
    versions = {v.tags["seqcls/run_id"]: v for v in client(mlflow_server).search_model_versions("name='cola-gate'")}
    assert sorted(versions) == ["week-1", "week-2"]
    assert versions["week-1"].tags["seqcls/promotion"] == "promoted" and versions["week-2"].tags["seqcls/promotion"] == "kept"
    champion = client(mlflow_server).get_model_version_by_alias("cola-gate", tracking.CHAMPION_ALIAS)
    assert champion.version == versions["week-1"].version

    import mlflow.artifacts

    files = Path(mlflow.artifacts.download_artifacts("models:/cola-gate@champion", dst_path=str(tmp_path / "champion"),
                                                     tracking_uri=mlflow_server))
    outputs = {}
    for label, model in (("registered", files), ("trained", tmp_path / "week-1" / "model")):
        done = run_cli(["predict", "--model", str(model), "--input", str(test), "--output", str(tmp_path / f"{label}.jsonl")])
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[label] = (tmp_path / f"{label}.jsonl").read_text()
    assert outputs["registered"] == outputs["trained"] and len(outputs["trained"].splitlines()) == 60


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_costs_a_warning_not_the_run(tmp_path, cola_dir, tiny_model):
    process, uri = start_mlflow(tmp_path / "server")
    train, test = cola_files(tmp_path / "data", cola_dir)
    args = ["train", "--train", str(train), "--test", str(test), "--model", str(tiny_model), *FAST, "--epochs", "4",
            "--report_to", "mlflow", "--mlflow_registered_model", "gone", "--tracker_timeout_s", "60",
            "--output_uri", str(tmp_path / "published"), "--run_id", "outage"]
    env = clean_env({**QUICK_RUN_ENV, "SEQCLS_OPT_ML": str(tmp_path / "ml"), "MLFLOW_TRACKING_URI": uri})
    job = subprocess.Popen([sys.executable, "-m", "seqcls", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines, attached = [], False
    try:
        for line in job.stdout:
            lines.append(line)
            if attached and process.poll() is None:
                # The server dies at the job's next event once the run is receiving: mid-training, or, where the
                # training outran MLflow's first answer (seen on a fast CPU), before the files and the version go up.
                stop(process)
            attached = attached or '"event": "tracker_attached"' in line
        job.wait(timeout=300)
    finally:
        stop(process)
        job.kill()
    events = json_lines("".join(lines))
    assert job.returncode == 0, job.stderr.read()[-3000:]
    assert attached and process.poll() is not None, "the server was not killed while the job ran"
    failed = [e for e in events if e["event"] == "tracker_failed"]
    assert len(failed) == 1 and failed[0]["tracker"] == "mlflow" and failed[0]["reason"]
    assert events[-1]["event"] == "job_end"
    assert json.loads((tmp_path / "published" / "latest.json").read_text())["run_id"] == "outage"


# --- SageMaker's managed MLflow (offline: resolution and signing only) ------------------------------------------------

def test_a_sagemaker_mlflow_arn_reaches_its_regional_endpoint_with_sigv4_signed_requests(monkeypatch):
    """sagemaker-mlflow (in the image's lock) turns a tracking server ARN into https://<region>.experiments.
    sagemaker.aws and signs every request with SigV4 (sagemaker_mlflow/auth_provider.py, auth.py)."""
    import requests

    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/team-a"
    for name, value in {"MLFLOW_TRACKING_URI": arn, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    host = client(arn)._tracking_client.store.get_host_creds()
    assert host.host == "https://eu-west-1.experiments.sagemaker.aws" and host.auth == "arn"
    from mlflow.tracking.request_auth.registry import fetch_auth

    request = requests.Session().prepare_request(  # as mlflow's rest_utils sends it: the session's default headers
        requests.Request("GET", f"{host.host}/api/2.0/mlflow/experiments/get-by-name?experiment_name=x"))
    signed = fetch_auth("arn")(request)
    assert signed.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/sagemaker-mlflow/aws4_request" in signed.headers["Authorization"]
    lock = Path(__file__).parents[1].joinpath("container", "requirements.txt").read_text()
    assert "\nsagemaker-mlflow==" in lock and "\nmlflow-skinny==" in lock


# --- Weights & Biases, offline ---------------------------------------------------------------------------------------

def wandb_records(run_file: Path) -> list:
    """The protobuf Records of an offline run file, as `wandb sync` reads them: a 7-byte header (":W&B", 0xBEE1,
    version 0), then LevelDB-log blocks of 32 KiB whose records are CRC32, length (2 bytes), type (1 FULL, 2 FIRST,
    3 MIDDLE, 4 LAST) and payload (wandb's former sdk/internal/datastore.py; the Go core writes the same format)."""
    from wandb.proto import wandb_internal_pb2

    raw = run_file.read_bytes()
    assert raw[:7] == b":W&B\xe1\xbe\x00", raw[:7]
    records, pending, offset, block = [], b"", 7, 32768
    while offset + 7 <= len(raw):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(raw[offset + 4:offset + 6], "little"), raw[offset + 6]
        payload, offset = raw[offset + 7:offset + 7 + length], offset + 7 + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.slow
def test_an_offline_wandb_run_holds_the_config_metric_history_and_summary(tmp_path, cola_dir, tiny_model, job_env,
                                                                           monkeypatch, capsys):
    train, test = cola_files(tmp_path / "data", cola_dir)
    args = ["--train", str(train), "--test", str(test), "--model", str(tiny_model), *FAST, "--report_to", "wandb",
            "--run_id", "wandb-1"]
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_PROJECT": "cola"}
    outcome = run_inprocess(tmp_path / "ml", args, env, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert all(line.startswith("{") for line in outcome.stdout.splitlines() if line.strip())
    [run_file] = (tmp_path / "wandb" / "wandb").glob("offline-run-*-wandb-1/run-wandb-1.wandb")
    records = wandb_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.display_name, run.project) == ("wandb-1", "wandb-1", "cola")
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["learning_rate"] == 2e-05 and config["seqcls/run_id"] == "wandb-1"
    rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    progress = [e for e in outcome.events if e.get("event") == "train_progress"]
    assert [(row["global_step"], row["train/loss"]) for row in rows if "train/loss" in row] == [
        (e["step"], e["loss"]) for e in progress]
    epochs = [e for e in outcome.events if e.get("event") == "epoch_end"]
    assert [(row["epoch"], row["val/mcc"]) for row in rows if "val/mcc" in row] == [(e["epoch"], e["val_mcc"]) for e in epochs]
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    metrics = json.loads((tmp_path / "ml" / "model" / "metrics.json").read_text())
    assert summary["test/mcc"] == pytest.approx(metrics["test"]["mcc"])
    manifest = json.loads((tmp_path / "ml" / "model" / "run_manifest.json").read_text())
    assert manifest["trackers"]["wandb"]["run_id"] == "wandb-1"
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]
