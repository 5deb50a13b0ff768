"""The shell scripts: shellcheck-clean, and their commands checked against stub docker/aws/gcloud."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqcls import settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "infra").rglob("*.sh"))
DIGEST = "sha256:" + "ab" * 32

# Stubs log each call as one JSON line and answer what the scripts read back. Stubs in a pipeline
# (`aws ... | docker login`) run at once, so each line goes out in one O_APPEND write, never interleaved.
STUB = """#!/usr/bin/env bash
python3 -c 'import json, os, sys; os.write(1, (json.dumps(sys.argv[1:]) + "\\n").encode())' "$(basename "$0")" "$@" >> "$STUB_LOG"
case "$(basename "$0") $1 $2" in
    "aws ecr get-login-password") echo secret-token ;;
    "aws ecr describe-repositories") exit "${STUB_REPO_MISSING:-0}" ;;
    "gcloud artifacts repositories") [[ "$3" != describe ]] || exit "${STUB_REPO_MISSING:-0}" ;;
    "docker login --username") cat > /dev/null ;;
    "docker image inspect") echo "other.example/seqcls@sha256:0000"; echo "$REPO_FOR_DIGEST@$STUB_DIGEST" ;;
esac
"""


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert len(SCRIPTS) >= 5
    done = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A clean git checkout holding the image scripts, so the tag is a known commit."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "infra" / "image", repo / "infra" / "image")
    (repo / "Dockerfile").write_text("FROM scratch\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    return repo


def _stub_env(tmp_path: Path, repo_for_digest: str, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("docker", "aws", "gcloud"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCOUNT_ID", "GCP_PROJECT", "DRY_RUN", "ALLOW_DIRTY")}
    return env | {"PATH": f"{bin_dir}:{env['PATH']}", "STUB_LOG": str(tmp_path / "calls.jsonl"),
                  "STUB_DIGEST": DIGEST, "REPO_FOR_DIGEST": repo_for_digest} | extra


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_push_ecr_builds_tags_pushes_and_prints_the_digest(checkout: Path, tmp_path: Path) -> None:
    repo_uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/seqcls"
    env = _stub_env(tmp_path, repo_uri, AWS_REGION="eu-west-1", AWS_ACCOUNT_ID="123456789012", STUB_REPO_MISSING="1")
    done = subprocess.run([str(checkout / "infra/image/push-ecr.sh")], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    tag = _commit(checkout)
    assert done.stdout.strip().splitlines()[-1] == f"{repo_uri}@{DIGEST}"
    calls = [c for c in _calls(tmp_path) if c[:3] != ["aws", "ecr", "describe-repositories"]]
    assert calls[0][:3] == ["aws", "ecr", "create-repository"]  # the stub said the repository is missing
    # The two sides of `aws ecr get-login-password | docker login` run at once: either may log first.
    assert sorted(calls[1:3]) == [["aws", "ecr", "get-login-password", "--region", "eu-west-1"],
                                  ["docker", "login", "--username", "AWS", "--password-stdin",
                                   "123456789012.dkr.ecr.eu-west-1.amazonaws.com"]]
    assert calls[3][:2] == ["docker", "build"] and f"{repo_uri}:{tag}" in calls[3] and calls[3][-1] == str(checkout)
    assert calls[4] == ["docker", "push", f"{repo_uri}:{tag}"]


def test_push_gar_configures_docker_and_prints_the_digest(checkout: Path, tmp_path: Path) -> None:
    repo_uri = "us-central1-docker.pkg.dev/my-proj/seqcls/seqcls"
    env = _stub_env(tmp_path, repo_uri, GAR_LOCATION="us-central1", GCP_PROJECT="my-proj")
    done = subprocess.run([str(checkout / "infra/image/push-gar.sh")], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"{repo_uri}@{DIGEST}"
    calls = _calls(tmp_path)
    assert ["gcloud", "auth", "configure-docker", "us-central1-docker.pkg.dev", "--quiet"] in calls
    assert ["docker", "push", f"{repo_uri}:{_commit(checkout)}"] in calls
    assert not any(c[:4] == ["gcloud", "artifacts", "repositories", "create"] for c in calls)  # it exists


def test_dirty_tree_is_refused_unless_allowed(checkout: Path, tmp_path: Path) -> None:
    (checkout / "Dockerfile").write_text("FROM scratch\nLABEL changed=1\n")
    env = _stub_env(tmp_path, "r", AWS_REGION="eu-west-1", AWS_ACCOUNT_ID="123456789012", DRY_RUN="1")
    refused = subprocess.run([str(checkout / "infra/image/push-ecr.sh")], capture_output=True, text=True, env=env, check=False)
    assert refused.returncode == 2 and "uncommitted changes" in refused.stderr
    allowed = subprocess.run([str(checkout / "infra/image/push-ecr.sh")], capture_output=True, text=True,
                             env=env | {"ALLOW_DIRTY": "1"}, check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert f"seqcls:{_commit(checkout)}-dirty" in allowed.stdout
    assert _calls(tmp_path) == []  # a dry run runs nothing


def test_local_run_mirrors_the_sagemaker_tree(tmp_path: Path) -> None:
    data = tmp_path / "train.tsv"
    data.write_text("x\t1\t\tA sentence.\n")
    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "out"
    done = subprocess.run(
        [str(ROOT / "infra/local/run.sh"), "--image", "seqcls:test", "--train", str(data), "--model", str(model),
         "--output", str(out), "--hp", "epochs=2", "--hp", "text_column=my sentence", "--hp", "group_by_length=false"],
        capture_output=True, text=True, env=os.environ | {"DRY_RUN": "1"}, check=False)
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    assert argv[:5] == ["docker", "run", "--rm", "--gpus", "all"]
    assert argv[-2:] == ["seqcls:test", "train"]
    mounts = {argv[i + 1] for i, a in enumerate(argv) if a == "-v"}
    assert {f"{data}:/opt/ml/input/data/train/train.tsv:ro", f"{model}:/opt/ml/input/data/model:ro",
            f"{out}/model:/opt/ml/model", f"{out}/output:/opt/ml/output", f"{out}/checkpoints:/opt/ml/checkpoints",
            f"{out}/input/config:/opt/ml/input/config:ro"} == mounts
    hyperparameters = out / "input/config/hyperparameters.json"
    raw = settings.load_hyperparameters_json(hyperparameters.read_text(), str(hyperparameters))
    assert raw == {"epochs": "2", "text_column": "my sentence", "group_by_length": "false"}
    resolved = settings.resolve([("hyperparameters.json", raw)]).settings
    assert (resolved.epochs, resolved.text_column, resolved.group_by_length) == (2, "my sentence", False)


def test_local_run_passes_mlflow_variables_by_name_never_by_value(tmp_path: Path) -> None:
    data = tmp_path / "train.tsv"
    data.write_text("x\t1\t\tA sentence.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    token = "s3cr3t-token"
    done = subprocess.run(
        [str(ROOT / "infra/local/run.sh"), "--image", "seqcls:test", "--train", str(data), "--output", str(tmp_path / "o"),
         "--hp", "report_to=mlflow"], capture_output=True, text=True, check=False,
        env=env | {"DRY_RUN": "1", "MLFLOW_TRACKING_URI": "https://mlflow.example.com", "MLFLOW_TRACKING_TOKEN": token})
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    passed = {argv[i + 1] for i, a in enumerate(argv) if a == "-e"}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"} <= passed  # docker copies the caller's values
    assert token not in done.stdout
