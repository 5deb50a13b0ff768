"""The built image run by the SageMaker Python SDK v3 itself: `ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)`.

Nothing here prepares the world for the image: the SDK writes /opt/ml/input/config/*.json, creates and
mounts the /opt/ml folders (root-owned, mode 0755: sagemaker/train/local/local_container.py `train`,
`_create_config_file_directories`, `_create_docker_host`), starts the container through docker compose
with no command (the image's entrypoint runs with no arguments), and tars /opt/ml/model and
/opt/ml/output into `<local_container_root>/compressed_artifacts/{model,output}.tar.gz`
(`retrieve_artifacts`). With `instance_count=2` it starts algo-1 and algo-2 on one compose network.

Skipped unless SEQCLS_IMAGE names a built image; `make image-test` builds it and installs docker-compose.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from jobtools import cola_lines

IMAGE = os.environ.get("SEQCLS_IMAGE", "")
DOCKER = os.environ.get("DOCKER", "docker")
TRAIN_ROWS, TEST_ROWS = 320, 96

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(not IMAGE, reason="SEQCLS_IMAGE is not set: `make image-test` builds the image and runs these"),
]


@pytest.fixture
def sdk_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user's shell has for local mode: a region and some credentials (never sent anywhere here)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-mode-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-mode-test")
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")


def channels(tmp_path: Path, cola_dir: Path, minilm_path: Path) -> dict[str, Path]:
    train, test = tmp_path / "channels" / "train", tmp_path / "channels" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    (train / "in_domain_train.tsv").write_text("".join(cola_lines(cola_dir, "in_domain_train.tsv", 0, TRAIN_ROWS)))
    (test / "out_of_domain_dev.tsv").write_text("".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, TEST_ROWS)))
    return {"train": train, "test": test, "model": minilm_path}


def run_local(root: Path, inputs: dict[str, Path], hyperparameters: dict[str, object], instance_count: int = 1) -> None:
    """One training job through the SDK's local mode; raises what the SDK raises."""
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    root.mkdir(parents=True, exist_ok=True)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        sagemaker_session=None,
        training_image=IMAGE,
        role="arn:aws:iam::123456789012:role/SeqclsLocalMode",
        base_job_name="seqcls-local",
        compute=Compute(instance_type="local_cpu", instance_count=instance_count),
        hyperparameters=hyperparameters,
        local_container_root=str(root),
    )
    try:
        trainer.train(input_data_config=[InputData(channel_name=name, data_source=str(path))
                                          for name, path in inputs.items()], wait=True, logs=True)
    finally:
        containers = compose_containers(root)
        (root / "containers.json").write_text(json.dumps({name: container_record(name) for name in containers}))
        subprocess.run([DOCKER, "rm", "-f", *containers], capture_output=True, check=False)


def compose_containers(root: Path) -> list[str]:
    """The job's containers (compose labels them with the folder of its compose file), algo-1 first."""
    listed = subprocess.run([DOCKER, "ps", "-a", "--format", "{{.Names}}", "--filter",
                             f"label=com.docker.compose.project.working_dir={root}"],
                            capture_output=True, text=True, check=True).stdout.split()
    return sorted(listed)


def container_record(name: str) -> dict[str, object]:
    """The container's exit code and its stdout alone (docker logs keeps stderr apart)."""
    done = subprocess.run([DOCKER, "logs", name], capture_output=True, text=True, check=True)
    code = subprocess.run([DOCKER, "inspect", "--format", "{{.State.ExitCode}}", name], capture_output=True, text=True,
                          check=True).stdout.strip()
    return {"exit_code": int(code), "stdout": done.stdout.splitlines()}


def containers_of(root: Path) -> dict[str, dict]:
    """Per container: exit code and events; every stdout line must be one JSON object (json.loads fails otherwise)."""
    records = json.loads((root / "containers.json").read_text())
    assert records, "no container of the job was found"
    return {name: {"exit_code": r["exit_code"], "events": [json.loads(line) for line in r["stdout"]]}
            for name, r in records.items()}


def extract(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def test_local_mode_trains_and_returns_loadable_artifacts(tmp_path: Path, cola_dir: Path, minilm_path: Path,
                                                          sdk_caller: None) -> None:
    root = tmp_path / "local"
    run_local(root, channels(tmp_path, cola_dir, minilm_path),
              {"epochs": 1, "learning_rate": 1e-4, "log_every_steps": 5, "precision": "fp32"})
    (container,) = containers_of(root).values()
    events = container["events"]
    names = [e["event"] for e in events]
    assert names[0] == "job_start" and names[-1] == "job_end", names
    settings = events[0]["settings"]
    assert settings["learning_rate"] == {"value": 1e-4, "source": "hyperparameters.json"}

    compressed = root / "compressed_artifacts"
    model = extract(compressed / "model.tar.gz", tmp_path / "model")
    output = extract(compressed / "output.tar.gz", tmp_path / "output")
    metrics = json.loads((model / "metrics.json").read_text())
    assert -1 <= metrics["test"]["mcc"] <= 1 and "partial" not in metrics
    assert (output / "data" / "training_stats.csv").is_file() and not (output / "failure").exists()

    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model), device="cpu")
    predictions = classify(["The cat sat on the mat.", "Cat the mat on sat."])
    assert all(p["label"] in metrics["labels"] for p in predictions)


def test_local_mode_typo_fails_with_the_reason_in_output_failure(tmp_path: Path, cola_dir: Path, minilm_path: Path,
                                                                 sdk_caller: None) -> None:
    root = tmp_path / "local"
    with pytest.raises(RuntimeError, match="exited with code 2|code: 2|Process exited"):
        run_local(root, channels(tmp_path, cola_dir, minilm_path), {"epochs": 1, "learning_rat": 1e-4})
    output = extract(root / "compressed_artifacts" / "output.tar.gz", tmp_path / "output")
    reason = (output / "failure").read_text()
    assert reason.count("\n") == 1 and "learning_rat" in reason and "did you mean learning_rate" in reason, reason
    (container,) = containers_of(root).values()
    assert container["exit_code"] == 2 and [e["event"] for e in container["events"]] == ["job_failed"]


def test_local_mode_two_hosts_train_with_torchrun_and_write_once(tmp_path: Path, cola_dir: Path, minilm_path: Path,
                                                                 sdk_caller: None) -> None:
    root = tmp_path / "local"
    run_local(root, channels(tmp_path, cola_dir, minilm_path),
              {"epochs": 1, "log_every_steps": 5, "precision": "fp32"}, instance_count=2)
    containers = containers_of(root)
    assert len(containers) == 2 and all(c["exit_code"] == 0 for c in containers.values()), containers.keys()
    everything = [e for c in containers.values() for e in c["events"]]
    launches = [e for e in everything if e["event"] == "launch"]
    assert sorted((e["nnodes"], e["node_rank"]) for e in launches) == [(2, 0), (2, 1)]
    start = next(e for e in everything if e["event"] == "job_start")
    assert start["world_size"] == 2 and start["rank"] == 0  # other ranks log only warnings and errors
    assert [e["rank"] for e in everything if e["event"] == "artifacts_saved"] == [0]  # written once, by rank 0
    model = extract(root / "compressed_artifacts" / "model.tar.gz", tmp_path / "model")
    assert json.loads((model / "run_manifest.json").read_text())["platform"] == "sagemaker"
