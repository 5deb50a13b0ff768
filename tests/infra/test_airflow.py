"""The Airflow DAGs (infra/airflow/dags/) under the real Airflow 3 and providers, in the venv `make airflow-venv` builds.

The DAGs run in that venv's interpreter (tests/airflow_driver.py); this process renders their configs
with the project's own submitters and judges what came back.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.airflow import render
from infra.sagemaker import submit
from jobtools import cola_lines

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "infra" / "airflow" / "dags"
EXAMPLES = ROOT / "infra" / "airflow" / "examples"
AIRFLOW_PYTHON = ROOT / ".venv" / "airflow" / "bin" / "python"
DRIVER = ROOT / "tests" / "airflow_driver.py"
DAG_IDS = ["seqcls_docker_retrain", "seqcls_sagemaker_retrain", "seqcls_vertex_retrain"]


def _example_commands() -> dict[str, list[str]]:
    """The argv of each `infra.airflow.render` command `make schedule-examples` runs, by renderer."""
    out = subprocess.run(["make", "-n", "--no-print-directory", "schedule-examples"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    argvs = [shlex.split(line.split(" > ")[0])[3:] for line in out.splitlines() if "-m infra.airflow.render " in line]
    return {argv[0]: argv for argv in argvs}


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh AIRFLOW_HOME with its metadata DB made by `airflow db migrate`, which dag.test() writes runs to."""
    assert AIRFLOW_PYTHON.exists(), "no Airflow venv: run `make airflow-venv` (make install does)"
    home = tmp_path_factory.mktemp("airflow-home")
    done = subprocess.run([str(AIRFLOW_PYTHON.parent / "airflow"), "db", "migrate"], env=_env(home, home / "dags"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def _env(home: Path, dags: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    # dag.test() syncs the configured DAG bundle (dags_folder) to the DB before it runs
    # (task-sdk/src/airflow/sdk/definitions/dag.py, DAG.test), so the folder under test is that bundle.
    return env | {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                  "AIRFLOW__CORE__LOAD_EXAMPLES": "False"} | extra


def _drive(home: Path, dags: Path, command: str, *args: str, **env: str) -> dict:
    done = subprocess.run([str(AIRFLOW_PYTHON), str(DRIVER), command, str(dags), *args], env=_env(home, dags, **env),
                          capture_output=True, text=True, timeout=600, cwd=home)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def _dag_folder(tmp_path: Path, configs: dict[str, dict]) -> Path:
    """The DAG files as a deployment copies them, each beside its rendered `<name>.json`."""
    folder = tmp_path / "dags"
    folder.mkdir(parents=True)
    for dag in DAGS.glob("*.py"):
        shutil.copy(dag, folder)
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _examples() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in EXAMPLES.glob("*.json")}


def test_committed_examples_match_the_renderer(aws_offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The examples are what `infra.airflow.render` prints today (rerun `make schedule-examples` after a change)."""
    commands = _example_commands()
    assert sorted(commands) == ["docker", "sagemaker", "vertex"]
    for name, argv in commands.items():
        assert render.main(argv) == 0
        assert json.loads(capsys.readouterr().out) == _examples()[f"seqcls_{name}"], name


def test_every_dag_imports_without_errors_and_a_missing_config_says_how_to_render_it(airflow_home: Path,
                                                                                      tmp_path: Path) -> None:
    partial = _examples()
    del partial["seqcls_vertex"]
    complete, missing = _drive(airflow_home, _dag_folder(tmp_path / "complete", _examples()), "dagbag",
                               str(_dag_folder(tmp_path / "partial", partial)))["bags"]
    assert complete == {"import_errors": {}, "dag_ids": DAG_IDS}
    assert missing["dag_ids"] == ["seqcls_docker_retrain", "seqcls_sagemaker_retrain"]
    (error,) = missing["import_errors"].values()
    assert "seqcls_vertex.json is missing" in error and "python -m infra.airflow.render vertex" in error


def test_sagemaker_dag_sends_the_dry_run_request(aws_offline: None, airflow_home: Path, tmp_path: Path) -> None:
    """dag.test() under moto: the operator's CreateTrainingJob is `submit --dry-run`'s, named per DAG run.

    The provider's SageMakerHook makes its CloudWatch Logs hook without the operator's region_name
    (providers/amazon/.../hooks/sagemaker.py, SageMakerHook.__init__: `AwsLogsHook(aws_conn_id=...)`), so
    the worker needs a default region (the connection's, or AWS_DEFAULT_REGION as MWAA sets it).
    """
    argv = _example_commands()["sagemaker"][1:]
    config = render.sagemaker_config(argv)
    config["check_interval_s"] = 1  # seconds between polls; moto completes the job at once
    at = argv.index("--model-package-group")  # the renderer's own option; the rest are the submitter's
    dry_run = submit.dry_run(submit.job_from_args(submit._parser().parse_args(argv[:at] + argv[at + 2:])))
    channels = [c["DataSource"]["S3DataSource"]["S3Uri"] for c in dry_run["InputDataConfig"]]
    folder = _dag_folder(tmp_path, {"seqcls_sagemaker": config})
    result = _drive(airflow_home, folder, "sagemaker", json.dumps(channels),
                    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=config["region"])
    (sent,) = result["sent"]
    name = sent["TrainingJobName"]
    assert re.fullmatch(r"seqcls-\d{8}-\d{6}", name), name
    expected = dict(dry_run, TrainingJobName=name)
    # Each run checkpoints under its own prefix, as the Step Functions schedule does, so no run resumes last week's.
    expected["CheckpointConfig"] = dict(dry_run["CheckpointConfig"], S3Uri=dry_run["CheckpointConfig"]["S3Uri"] + "/" + name)
    assert sent == expected
    assert result["states"]["train"] == "success"
    # moto reports a canned FinalMetricDataList without the gate's metric: the branch fails loudly, no guess.
    assert result["states"]["promotion_gate"] == "failed"
    assert result["states"]["promoted"] == result["states"]["kept"] == "upstream_failed"
    assert result["states"]["register"] == "upstream_failed" and result["packages"] == []


@pytest.mark.slow
def test_sagemaker_dag_registers_a_promoted_run(job_log_lines: list[str], aws_offline: None, airflow_home: Path,
                                                tmp_path: Path) -> None:
    """dag.test() under moto, the job reporting FinalMetricDataList as the service fills it from a real gated run's
    log (its first run: promoted): the provider's operator registers one Approved version of the run, serving its
    model.tar.gz with the image, with the test metrics as ModelMetrics and the gate's metric as metadata."""
    config = _examples()["seqcls_sagemaker"]
    config["check_interval_s"] = 1
    channels = [c["DataSource"]["S3DataSource"]["S3Uri"] for c in config["request"]["InputDataConfig"]]
    result = _drive(airflow_home, _dag_folder(tmp_path, {"seqcls_sagemaker": config}), "sagemaker", json.dumps(channels),
                    json.dumps(job_log_lines), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                    AWS_DEFAULT_REGION=config["region"])
    states = result["states"]
    assert states["promotion_gate"] == states["promoted"] == states["model_metrics"] == states["register"] == "success"
    assert states["kept"] == "skipped"
    (package,) = result["packages"]
    job = result["sent"][0]["TrainingJobName"]
    assert package["ModelPackageGroupName"] == config["model_package_group"] == "seqcls-cola"
    assert package["ModelApprovalStatus"] == "Approved"
    (container,) = package["InferenceSpecification"]["Containers"]
    assert container["Image"] == config["request"]["AlgorithmSpecification"]["TrainingImage"]
    assert container["ModelDataUrl"] == f"{config['request']['OutputDataConfig']['S3OutputPath']}/{job}/output/model.tar.gz"
    assert "application/jsonlines" in package["InferenceSpecification"]["SupportedContentTypes"]
    test_metrics = next(json.loads(line) for line in job_log_lines if json.loads(line)["event"] == "test_metrics")
    promotion = next(json.loads(line) for line in job_log_lines if json.loads(line)["event"] == "promotion")
    meta = package["CustomerMetadataProperties"]
    assert meta["seqcls:run_id"] == job and meta["seqcls:metric"] == "test_mcc"
    assert float(meta["seqcls:value"]) == pytest.approx(promotion["value"], abs=1e-6)
    assert "seqcls:champion_value" not in meta  # the first gated run has no champion
    statistics = result["statistics"][package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]]
    assert statistics["multiclass_classification_metrics"]["mcc"]["value"] == pytest.approx(test_metrics["test_mcc"], abs=1e-6)


def test_vertex_dag_uploads_the_promoted_run_as_a_version_aiplatform_accepts(airflow_home: Path, tmp_path: Path) -> None:
    """The promoted branch's Model, for the latest.json a gated run publishes, is a valid UploadModelRequest for
    aiplatform's own types (an unknown or mistyped field raises), serving the published run folder with the image.
    Vertex itself is not called: the provider's hooks speak gRPC to Vertex, which has no emulator."""
    from google.cloud.aiplatform_v1.types import UploadModelRequest

    config = _examples()["seqcls_vertex"]
    result = _drive(airflow_home, _dag_folder(tmp_path, _examples()), "vertex_version",
                    json.dumps({"run_id": "seqcls-20261130-030000", "files": []}))
    request = UploadModelRequest(parent="projects/example-project/locations/us-central1", model=result["model"],
                                 parent_model="projects/example-project/locations/us-central1/models/123")
    assert request.model.artifact_uri == config["registry"]["output_uri"] + "/seqcls-20261130-030000"
    assert request.model.display_name == "seqcls-cola" and list(request.model.version_aliases) == ["champion", "default"]
    spec = request.model.container_spec
    assert spec.image_uri == config["custom_job"]["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"]
    assert list(spec.args) == ["serve"] and (spec.predict_route, spec.health_route) == ("/predict", "/health")
    assert result["operator"] == "UploadModelOperator"
    assert result["champion_upstream"] == ["promoted"] and result["register_upstream"] == ["champion"]
    assert "champion" in result["templated"]["model"] and "champion" in result["templated"]["parent_model"]


def test_vertex_render_needs_the_gate_and_a_gs_output_uri(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["vertex", "--project", "p", "--region", "us-central1", "--image", "img:1", "--train", "gs://data/t.tsv",
            "--base-output-dir", "gs://artifacts/b", "--hp", "promote_if=test_mcc", "--hp", "output_uri=/tmp/published"]
    assert render.run_cli(render.main, argv) == 2
    assert "--hp output_uri=gs://bucket/prefix" in capsys.readouterr().err


def test_docker_dag_passes_tracking_settings_into_the_container(airflow_home: Path, tmp_path: Path) -> None:
    """`--env` values go into the config and the container; `--pass-env` names go into the config, their values
    come from the worker's environment at parse time (Airflow 3 parses the DAG file again in the worker before
    it runs the task) into DockerOperator's private_environment, which the provider hands the container
    without templating or logging it (providers/docker/.../operators/docker.py: kept as `_private_environment`, merged
    into the container's environment only when it is created)."""
    config = render.docker_config(["--image", "seqcls:latest", "--train", "/srv/cola/train.tsv", "--output-dir", "/srv/runs",
                                   "--hp", "report_to=mlflow", "--env", "MLFLOW_TRACKING_URI=http://mlflow.internal:5000",
                                   "--pass-env", "MLFLOW_TRACKING_TOKEN", "--pass-env", "WANDB_API_KEY"])
    assert "s3cr3t" not in json.dumps(config)
    folder = _dag_folder(tmp_path, {**_examples(), "seqcls_docker": config})
    seen = _drive(airflow_home, folder, "docker_env", MLFLOW_TRACKING_TOKEN="s3cr3t")
    assert seen["environment"] == {"HOME": "/tmp", "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    assert seen["private_environment"] == {"MLFLOW_TRACKING_TOKEN": "s3cr3t"}  # WANDB_API_KEY unset on this worker


def test_docker_render_refuses_a_name_given_both_as_value_and_as_passed(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["docker", "--image", "i", "--train", "/t.tsv", "--output-dir", "/o", "--env", "A=1", "--pass-env", "A"]
    assert render.run_cli(render.main, argv) == 2
    assert "--pass-env 'A'" in capsys.readouterr().err


@pytest.mark.slow
def test_sagemaker_dag_branches_on_the_metric_sagemaker_reads_from_the_jobs_log(job_log_lines: list[str],
                                                                              airflow_home: Path, tmp_path: Path) -> None:
    """FinalMetricDataList as the service fills it: the request's promotion:promoted regex applied to the
    `promotion` line of a real gated run (promoted: its first run), and to that line with the flag at 0."""
    regex = re.compile(next(d["Regex"] for d in _examples()["seqcls_sagemaker"]["request"]["AlgorithmSpecification"]
                            ["MetricDefinitions"] if d["Name"] == "promotion:promoted"))
    (line,) = [line for line in job_log_lines if json.loads(line)["event"] == "promotion"]
    kept_line = json.dumps({**json.loads(line), "promoted": False, "promoted_flag": 0})

    def described(*lines: str) -> dict:
        values = [float(m.group(1)) for text in lines if (m := regex.search(text))]
        return {"TrainingJobName": "seqcls-x", "FinalMetricDataList": [
            {"MetricName": "promotion:promoted", "Value": values[-1]}] if values else []}

    result = _drive(airflow_home, _dag_folder(tmp_path, _examples()), "gate",
                    json.dumps([described(line), described(kept_line), described(job_log_lines[0])]))
    assert result["outcomes"][:2] == ["promoted", "kept"]
    assert result["outcomes"][2].startswith("error: training job seqcls-x reported no promotion:promoted metric")


@pytest.mark.image
@pytest.mark.skipif(not os.environ.get("SEQCLS_IMAGE"), reason="SEQCLS_IMAGE is not set: `make image-test` builds the image")
def test_docker_dag_trains_publishes_and_takes_the_promoted_branch(airflow_home: Path, tmp_path: Path, cola_dir: Path,
                                                                  minilm_path: Path) -> None:
    """dag.test() of the Docker DAG against the built image: the job trains on CoLA rows, publishes to a host
    folder, and the first gated run there is promoted, so `promoted` runs and `kept` is skipped."""
    (tmp_path / "test").mkdir()
    (tmp_path / "train.tsv").write_text("".join(cola_lines(cola_dir, "in_domain_train.tsv", 0, 160)))
    (tmp_path / "test" / "test.tsv").write_text("".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, 64)))
    published, runs = tmp_path / "published", tmp_path / "runs"
    config = render.docker_config(
        ["--image", os.environ["SEQCLS_IMAGE"], "--train", str(tmp_path / "train.tsv"), "--test", str(tmp_path / "test"),
         "--model", str(minilm_path), "--output-dir", str(runs), "--gpus", "none",
         "--hp", "epochs=1", "--hp", "promote_if=test_mcc", "--hp", f"output_uri={published}"])
    result = _drive(airflow_home, _dag_folder(tmp_path, {"seqcls_docker": config}), "run", "seqcls_docker_retrain")
    assert result["states"] == {"prepare": "success", "train": "success", "promotion_gate": "success",
                                "promoted": "success", "kept": "skipped"}
    (run_dir,) = runs.iterdir()
    record = json.loads((run_dir / "output" / "data" / "promotion.json").read_text())
    latest = json.loads((published / "latest.json").read_text())
    assert record["promoted"] is True and (published / latest["run_id"] / "manifest.json").is_file()
    assert (run_dir / "model" / "model.safetensors").is_file()
