"""The KFP v2 pipeline (infra/vertex/pipeline.py): its compiled IR, and its training task run by kfp.local on the image.

The image test runs the component with `kfp.local.init(runner=kfp.local.DockerRunner(...))`: KFP starts the
container with the pipeline root bind-mounted at the same path, points `{{$.outputs.parameters[...].output_file}}`
at a file under it, and reads the parameter back from that file after the container exits
(kfp/local/docker_task_handler.py `get_volumes_to_mount`, `run_docker_container`; kfp/local/executor_output_utils.py).
Vertex mounts buckets at /gcs; here host folders are mounted at the same /gcs paths, through the runner's
`mounts` (one of its documented docker-py run arguments, kfp/local/config.py DockerRunner.DOCKER_CONTAINER_RUN_ARGS).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.common import SubmitError
from infra.vertex import pipeline, submit
from jobtools import cola_lines

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "infra" / "vertex" / "retrain-pipeline.example.yaml"
IMAGE = os.environ.get("SEQCLS_IMAGE", "")


def _example_argv() -> list[str]:
    out = subprocess.run(["make", "-n", "--no-print-directory", "schedule-examples"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if "-m infra.vertex.pipeline " in line]
    return shlex.split(line)[3:]


def _job(*extra: str) -> submit.VertexJob:
    return submit.job_from_args(submit._parser().parse_args(
        ["--project", "p", "--region", "us-central1", "--image", "img:1", "--train", "gs://data/cola/train.tsv",
         "--base-output-dir", "gs://artifacts/seqcls", *extra]))


def test_committed_example_is_what_the_compiler_writes(tmp_path: Path) -> None:
    """Rerun `make schedule-examples` after changing the pipeline (or the kfp version)."""
    argv = _example_argv()
    out = tmp_path / "pipeline.yaml"
    argv[argv.index("--output") + 1] = str(out)
    assert pipeline.main(argv) == 0
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(EXAMPLE.read_text())


def test_training_task_runs_the_submitters_container_and_branches_on_its_promotion_output() -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())
    argv = _example_argv()
    job = submit.job_from_args(submit._parser().parse_args(argv[:argv.index("--model-id")]))
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert container["image"] == job.image and container["command"] == ["train"]
    assert container["args"] == [*job.container_args(), "--promotion_file",
                                 "{{$.outputs.parameters['promotion'].output_file}}"]
    assert container["resources"]["accelerator"]["type"] == job.accelerator_type
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {task["taskInfo"]["name"]: task["triggerPolicy"]["condition"] for task in branches.values()}
    assert conditions == {"promoted": "inputs.parameter_values['pipelinechannel--train-promotion'] == 'promoted'",
                          "kept": "!(inputs.parameter_values['pipelinechannel--train-promotion'] == 'promoted')"}
    # Only the promoted branch registers: `seqcls register vertex` in the image, with options it parses.
    promoted = next(t for t in branches.values() if t["taskInfo"]["name"] == "promoted")
    promoted_tasks = spec["components"][promoted["componentRef"]["name"]]["dag"]["tasks"]
    assert sorted(t["taskInfo"]["name"] for t in promoted_tasks.values()) == ["promoted", "register"]
    register = spec["deploymentSpec"]["executors"]["exec-register"]["container"]
    assert register["image"] == job.image and register["command"] == ["python3", "-m", "seqcls", "register", "vertex"]
    from seqcls import cli

    parsed = cli.register_parser().parse_args(["vertex", *register["args"]])
    assert (parsed.published, parsed.project, parsed.region) == (job.hyperparameters["output_uri"], job.project, job.region)
    assert parsed.model_id == "seqcls-cola" and parsed.image == job.image and parsed.alias == "champion"
    # A cached training task would skip this week's retrain: every task has caching off.
    assert spec["root"]["dag"]["tasks"]["train"]["cachingOptions"] == {}
    assert spec["defaultPipelineRoot"] == job.base_output_dir + "/pipeline-root"


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--hp promote_if=<metric>"),
    (["--hp", "promote_if=test_mcc", "--hp", "output_uri=s3://artifacts/published"], "--hp output_uri=gs://"),
    (["--hp", "promote_if=test_mcc", "--hp", "output_uri=gs://artifacts/published", "--replica-count", "2"], "--replica-count > 1"),
])
def test_bad_pipeline_options_are_clear_errors(extra: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=message.replace("<", ".").replace(">", ".")):
        pipeline.build(_job(*extra))  # job_from_args accepts these; only the pipeline refuses them


def test_output_must_be_a_yaml_file(tmp_path: Path) -> None:
    argv = _example_argv()
    argv[argv.index("--output") + 1] = str(tmp_path / "pipeline.json")
    with pytest.raises(SubmitError, match="must end in .yaml"):
        pipeline.main(argv)


@pytest.mark.image
@pytest.mark.skipif(not IMAGE, reason="SEQCLS_IMAGE is not set: `make image-test` builds the image and runs these")
def test_training_task_runs_under_kfp_local_docker_runner(tmp_path: Path, cola_dir: Path, minilm_path: Path) -> None:
    """The first gated run into an empty output_uri is promoted; the task's `promotion` output says so."""
    from docker.types import Mount
    from kfp import local

    data, published = tmp_path / "data", tmp_path / "published"
    (data / "test").mkdir(parents=True)
    published.mkdir()
    (data / "train.tsv").write_text("".join(cola_lines(cola_dir, "in_domain_train.tsv", 0, 160)))
    (data / "test" / "test.tsv").write_text("".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, 64)))
    job = _job("--image", IMAGE, "--train", "gs://data/train.tsv", "--test", "gs://data/test/", "--model",
               "gs://models/minilm", "--hp", "epochs=1", "--hp", "promote_if=test_mcc",
               "--hp", "output_uri=/gcs/artifacts/published", "--hp", "device=cpu")
    mounts = [Mount("/gcs/data", str(data), type="bind", read_only=True),
              Mount("/gcs/models/minilm", str(minilm_path), type="bind", read_only=True),
              Mount("/gcs/artifacts/published", str(published), type="bind")]
    local.init(runner=local.DockerRunner(mounts=mounts), pipeline_root=str(tmp_path / "pipeline-root"),
               raise_on_error=True)
    task = pipeline.train_component(job)()
    assert task.outputs["promotion"] == "promoted"
    latest = json.loads((published / "latest.json").read_text())
    assert (published / latest["run_id"] / "metrics.json").is_file()
    assert json.loads((published / latest["run_id"] / "metrics.json").read_text())["promotion"]["promoted"] is True
