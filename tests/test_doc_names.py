"""Every file and module our docs and comments name exists: a renamed module must not leave a pointer to
nowhere behind (a new maintainer follows those names first)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("src/seqcls/", "tests/", "docs/", "bench/", "infra/", "container/", "entrypoint/", ".ci/")
# Files of other projects that our comments cite, each next to its repository or URL, and files a run writes.
EXTERNAL = {
    "tests/unit/test_handler_service_with_context.py", "docs/semantics.md", "gpu-check.md",
    "run_glue.py", "environment.py", "torch_distributed.py", "smdataparallel.py", "mpi.py", "estimator.py",
    "entities.py", "local_container.py", "image.py", "tuner.py", "handler_service.py", "params.py", "server.py",
    "api.py", "dag.py", "dagbag.py", "hypertune.py", "models.py", "handlers.py", "config.py", "run.py",
    "custom_job.py", "environment_variables.py", "executor_output_utils.py", "docker_task_handler.py",
    "local_session.py", "local_pipeline_session.py", "utils.py", "model_builder.py", "local_resources.py",
    "air_hub.py", "sagemaker.py", "test_handler_service_with_context.py", "semantics.md", "SOURCE.md",
    "data.py", "jobs.py", "auth.py",  # sagemaker.local.data, google.cloud.aiplatform.jobs, sagemaker_mlflow.auth
    "configuration_evil.py", "inference.py",  # written by tests: a planted file, and code/inference.py outside code/
}
PATH = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[\w-]+\.(?:py|md))(?![\w/])")
MODULE = re.compile(r"\bseqcls\.([a-z][a-z_]*)\b")


def _texts() -> dict[str, str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, text=True,
                            capture_output=True, check=True).stdout.split()
    wanted = [name for name in listed if name.endswith((".py", ".md", ".toml")) or name in ("Makefile", ".ci/run")]
    return {name: (ROOT / name).read_text() for name in wanted if (ROOT / name).is_file()}


TEXTS = _texts()


@functools.cache
def basenames() -> set[str]:
    """Names of the files in our tree, walked without the venvs (.venv, .venv-hf-inference hold other projects'
    names, which would hide a dangling one; walking them took 5 s of every worker's collection)."""
    names = {Path(name).name for name in TEXTS}
    for _, folders, files in os.walk(ROOT):
        folders[:] = [f for f in folders if f != ".git" and not f.startswith(".venv")]
        names.update(folders, files)
    return names


def _dangling(name: str) -> bool:
    if name in EXTERNAL:
        return False
    if name.startswith("seqcls/"):
        name = "src/" + name
    if "/" in name:
        if not name.startswith(OURS):
            return False
        return not (ROOT / name).exists()
    return name not in basenames()


def test_every_cited_file_exists() -> None:
    missing = sorted({f"{source}: {name}" for source, text in TEXTS.items() for name in PATH.findall(text)
                      if _dangling(name.lstrip("./"))})
    assert not missing, "cited but not in the tree:\n" + "\n".join(missing)


def test_every_cited_seqcls_module_exists() -> None:
    package = ROOT / "src" / "seqcls"
    missing = sorted({f"{source}: seqcls.{name}" for source, text in TEXTS.items() for name in MODULE.findall(text)
                      if not (package / f"{name}.py").exists() and not (package / name).is_dir()})
    assert not missing, "cited but not in the package:\n" + "\n".join(missing)

