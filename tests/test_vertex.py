"""The job as Vertex AI runs it: AIP_* folders on the /gcs mount, container args, one job id per execution.

What Vertex sets is cited in seqcls/runtime/platform.py and tests/test_runtime.py: AIP_MODEL_DIR, AIP_CHECKPOINT_DIR
and AIP_TENSORBOARD_LOG_DIR under baseOutputDirectory (the same folders for every run of a schedule, which
posts the same CustomJob body), CLOUD_ML_JOB_ID new for each CustomJob and kept through Vertex's worker
restarts and job retries (https://cloud.google.com/vertex-ai/docs/training/understanding-training-service).
SEQCLS_GCS_ROOT stands in for /gcs and SEQCLS_OPT_ML for the container's own /opt/ml, fresh per attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jobtools import cola_lines, json_lines, run_cli

pytestmark = pytest.mark.slow

BUCKET = "sched-bkt"
HYPERPARAMETERS = ["--epochs=2", "--batch_size=16", "--learning_rate=5e-05", "--log_every_steps=1",
                   "--checkpoint_every_steps=2", "--select_best=mcc"]
STEPS_PER_EPOCH = 6  # 96 rows, 10% held out -> 86 train rows in batches of 16
TRAIN_ROWS = 96


class Vertex:
    """One bucket mounted at <tmp>/gcs/<bucket>, and the environment Vertex gives each execution."""

    def __init__(self, tmp: Path, cola_dir: Path, minilm: Path) -> None:
        self.tmp, self.minilm = tmp, minilm
        self.fuse = tmp / "gcs"
        self.bucket = self.fuse / BUCKET
        lines = (cola_dir / "in_domain_train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        stride = len(lines) // (2 * TRAIN_ROWS)
        for week, offset in (("week1", 0), ("week2", 1)):  # new data each week: disjoint rows
            self.write(f"data/{week}/train.tsv", "".join(lines[offset::stride][:TRAIN_ROWS]))
        self.write("data/test.tsv", "".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, 64)))
        self.attempts = 0

    def write(self, name: str, text: str) -> None:
        path = self.bucket / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def base(self, name: str) -> Path:
        return self.bucket / name

    def env(self, base: str, job_id: str) -> dict[str, str]:
        self.attempts += 1
        return {"AIP_MODEL_DIR": f"gs://{BUCKET}/{base}/model/", "AIP_CHECKPOINT_DIR": f"gs://{BUCKET}/{base}/checkpoints/",
                "AIP_TENSORBOARD_LOG_DIR": f"gs://{BUCKET}/{base}/logs/", "CLOUD_ML_JOB_ID": job_id,
                "CLOUD_ML_HP_METRIC_FILE": str(self.tmp / f"hypertune-{job_id}" / "output.metrics"),
                "SEQCLS_GCS_ROOT": str(self.fuse), "SEQCLS_OPT_ML": str(self.tmp / f"container-{self.attempts}")}

    def args(self, week: str, test: bool = True) -> list[str]:
        """As infra/vertex/submit.py writes them: channels as /gcs paths, then hyperparameters."""
        channels = [f"--train={self.bucket}/data/{week}/train.tsv", f"--model={self.minilm}"]
        return channels + ([f"--test={self.bucket}/data/test.tsv"] if test else []) + HYPERPARAMETERS


@pytest.fixture
def vertex(tmp_path, cola_dir, minilm_path) -> Vertex:
    return Vertex(tmp_path, cola_dir, minilm_path)


def train(vertex: Vertex, base: str, job_id: str, week: str, test: bool = True) -> list[dict]:
    done = run_cli(["train", *vertex.args(week, test)], env=vertex.env(base, job_id))
    assert done.returncode == 0, done.stderr[-3000:]
    return json_lines(done.stdout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_scheduled_runs_both_train_from_scratch_and_publish_into_aip_model_dir(vertex):
    from transformers import pipeline

    first = train(vertex, "sched", "1001", "week1")
    model_dir = vertex.base("sched") / "model"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["run_id"] == "1001"
    assert "test_predictions.csv" in {f["name"] for f in manifest["files"]}
    assert not (vertex.base("sched") / "checkpoints" / "1001").exists()  # nothing left for a later run to take
    assert any(e["event"] == "checkpoints_removed" for e in first)
    check_tensorboard_and_tuning_report(vertex, "1001", first)
    first_weights = sha256(model_dir / "model.safetensors")

    second = train(vertex, "sched", "1002", "week2", test=False)
    assert not [e for e in second if e["event"] in ("resumed", "checkpoint_ignored")]
    assert [e["epoch"] for e in second if e["event"] == "epoch_end"] == [1, 2]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["run_id"] == "1002"
    # Exactly this run's files, flat in AIP_MODEL_DIR: the last run's test predictions are gone, no run-id folders.
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()) == sorted(
        [f["name"] for f in manifest["files"]] + ["manifest.json"])
    for item in manifest["files"]:
        assert sha256(model_dir / item["name"]) == item["sha256"]
    assert sha256(model_dir / "model.safetensors") != first_weights
    record = json.loads((model_dir / "run_manifest.json").read_text())
    assert record["run_id"] == "1002" and "week2" in record["data"]["files"][0]["path"]
    assert not list((vertex.base("sched") / "checkpoints").glob("*/ckpt-*.pt"))

    classify = pipeline("text-classification", model=str(model_dir), device="cpu")  # how a consumer loads it
    labels = classify(["The cat sat on the mat.", "Cat the mat on sat."])
    assert {p["label"] for p in labels} <= {"0", "1"}


def interrupt(vertex: Vertex, base: str, job_id: str, week: str, at_step: int) -> tuple[int, list[dict]]:
    """The job, sent SIGTERM (a Vertex preemption or cancel) once it logged `at_step`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQCLS_", "AIP_", "CLOUD_ML"))} | vertex.env(base, job_id)
    child = subprocess.Popen([sys.executable, "-m", "seqcls", "train", *vertex.args(week)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events, sent = [], False
    for line in child.stdout:
        events.append(json.loads(line))
        if not sent and events[-1]["event"] == "train_progress" and events[-1]["step"] == at_step:
            child.send_signal(signal.SIGTERM)
            sent = True
    assert sent, "the job never reached the step"
    return child.wait(timeout=120), events


def test_a_restarted_execution_resumes_bit_exactly_and_another_execution_does_not_take_its_state(vertex):
    train(vertex, "reference", "2000", "week1")
    reference = sha256(vertex.base("reference") / "model" / "model.safetensors")

    code, events = interrupt(vertex, "sched", "2001", "week1", at_step=STEPS_PER_EPOCH + 3)
    assert code == 143
    saved = [e for e in events if e["event"] == "checkpoint_saved"][-1]
    assert Path(saved["path"]).parent == vertex.base("sched") / "checkpoints" / "2001"

    other = train(vertex, "sched", "2002", "week1")  # the next scheduled run, while 2001's state is still there
    assert not [e for e in other if e["event"] in ("resumed", "checkpoint_ignored")]
    assert (vertex.base("sched") / "checkpoints" / "2001" / Path(saved["path"]).name).is_file()

    resumed = train(vertex, "sched", "2001", "week1")  # Vertex restarts job 2001 in a fresh container
    assert [e["step"] for e in resumed if e["event"] == "resumed"] == [saved["step"]]
    assert sha256(vertex.base("sched") / "model" / "model.safetensors") == reference
    assert not (vertex.base("sched") / "checkpoints" / "2001").exists()

    # TensorBoard run of job 2001: both attempts' event files, every step once, equal to the two attempts' logs.
    logged = {e["step"]: e for e in events + resumed if e["event"] == "train_progress"}
    scalars = tensorboard_scalars(vertex.base("sched") / "logs" / "2001")
    assert [s.step for s in scalars["train/loss"]] == sorted(logged) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for point in scalars["train/loss"]:
        assert point.value == float(np.float32(logged[point.step]["loss"]))


def tensorboard_scalars(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def check_tensorboard_and_tuning_report(vertex: Vertex, job_id: str, events: list[dict]) -> None:
    """The execution's TensorBoard run and tuning records hold the JSON log's values."""
    scalars = tensorboard_scalars(vertex.base("sched") / "logs" / job_id)

    def check(tag: str, expected: dict[int, float]) -> None:
        assert {s.step: s.value for s in scalars[tag]} == {k: float(np.float32(v)) for k, v in expected.items()}, tag

    progress = [e for e in events if e["event"] == "train_progress"]
    assert len(progress) == 2 * STEPS_PER_EPOCH
    for field, tag in (("loss", "train/loss"), ("lr", "train/learning_rate"), ("samples_per_s", "train/samples_per_s")):
        check(tag, {e["step"]: e[field] for e in progress})
    epochs = [e for e in events if e["event"] == "epoch_end"]
    for field in ("loss", "accuracy", "mcc", "f1"):
        check(f"val/{field}", {e["epoch"]: e[f"val_{field}"] for e in epochs})
    test = next(e for e in events if e["event"] == "test_metrics")
    for field in ("loss", "accuracy", "mcc", "f1", "precision", "recall"):
        check(f"test/{field}", {2: test[f"test_{field}"]})

    # select_best=mcc: the tuning objective is val_mcc, one record per epoch (cloudml-hypertune's format, test_tuning.py).
    lines = (vertex.tmp / f"hypertune-{job_id}" / "output.metrics").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["global_step"], float(r["val_mcc"])) for r in records] == [(str(e["epoch"]), e["val_mcc"]) for e in epochs]
