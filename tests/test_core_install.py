"""The core install (`pip install .`, no extras) trains on a workstation and runs `seqcls predict`; a command that
needs an extra it lacks fails at its start with the line that installs it (pyproject.toml, src/seqcls/extras.py).

The environment is the test venv's own site-packages with the extras' distributions taken out: every other entry
is linked into a folder that a `python -S` child adds as its only site directory, so those packages are not
installed for it (their modules and their metadata are both absent), as after `pip install .`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from jobtools import REPO, QUICK_RUN_ENV, build_tiny_model, clean_env, make_tree

pytestmark = pytest.mark.slow
# What the extras bring (pyproject.toml) and what they pull in: none of it may be needed by the core.
EXTRA_DISTRIBUTIONS = re.compile(r"boto3|botocore|s3transfer|google-cloud-.*|fastapi|starlette|uvicorn|mlflow.*|"
                                 r"sagemaker.*")
ABSENT_MODULES = ("boto3", "botocore", "google.cloud.storage", "google.cloud.bigquery", "google.cloud.aiplatform",
                  "fastapi", "uvicorn", "mlflow")


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _core_site(folder: Path) -> Path:
    """A site folder holding every entry of this venv's site-packages except the extras' distributions."""
    site_packages = Path(torch.__file__).resolve().parents[1]
    owned: set[Path] = set()
    for dist in metadata.distributions(path=[str(site_packages)]):
        if EXTRA_DISTRIBUTIONS.fullmatch(_normalised(dist.metadata["Name"])):
            owned |= {Path(*f.parts[:2]) if f.parts[0] == "google" else Path(f.parts[0])
                      for f in dist.files or () if f.parts and f.parts[0] not in ("..", "bin")}
    folder.mkdir()
    for entry in site_packages.iterdir():
        if entry.name == "google":  # a namespace shared with protobuf and google-auth: keep those, drop google/cloud
            (folder / "google").mkdir()
            for child in entry.iterdir():
                if Path("google", child.name) not in owned:
                    (folder / "google" / child.name).symlink_to(child)
        elif Path(entry.name) not in owned:
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command line of `seqcls` run in the core-only environment."""
    site = _core_site(tmp_path_factory.mktemp("core") / "site-packages")
    launcher = (f"import site, sys; site.addsitedir({str(site)!r}); sys.path.insert(0, {str(REPO / 'src')!r}); "
                "from seqcls.cli import run; run()")
    return [sys.executable, "-S", "-c", launcher]


def _run(command: list[str], args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], env=clean_env({**QUICK_RUN_ENV, **(env or {})}), capture_output=True,
                          text=True, timeout=600)


def test_the_core_dependencies_hold_no_cloud_sdk_or_server() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [_normalised(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in declared]
    assert names and not [n for n in names if EXTRA_DISTRIBUTIONS.fullmatch(n)], names


def test_the_core_environment_lacks_the_extras(core: list[str]) -> None:
    modules = [*ABSENT_MODULES, "torch", "transformers", "google.protobuf"]
    probe = ("import importlib.util, json\n"
             "def found(name):\n"
             "    try:\n"
             "        return importlib.util.find_spec(name) is not None\n"
             "    except ModuleNotFoundError:\n"
             "        return False\n"
             f"print(json.dumps({{name: found(name) for name in {modules!r}}}))")
    launcher = core[-1].split("from seqcls")[0].replace("; ", "\n") + "\n" + probe
    done = subprocess.run([*core[:-1], launcher], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {**dict.fromkeys(ABSENT_MODULES, False), "torch": True, "transformers": True,
                     "google.protobuf": True}


def test_train_then_predict_on_the_core_install(core: list[str], cola_dir: Path, minilm_path: Path, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny", minilm_path)
    root = make_tree(tmp_path / "opt_ml", cola_dir, {"epochs": "1", "max_length": "32"}, train_rows=96, test_rows=32,
                     model=model)
    trained = _run(core, ["train"], {"SEQCLS_OPT_ML": str(root)})
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    rows = tmp_path / "rows.csv"
    rows.write_text("text\nThe cat sat on the mat.\nMat the on sat cat.\n")
    predicted = _run(core, ["predict", "--model", str(root / "model"), "--input", str(rows),
                            "--output", str(tmp_path / "out.jsonl")])
    assert predicted.returncode == 0, predicted.stdout[-3000:] + predicted.stderr[-3000:]
    answers = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [a["text"] for a in answers] == ["The cat sat on the mat.", "Mat the on sat cat."]


@pytest.mark.parametrize("args, extra", [
    (["serve", "--model", "/nonexistent"], "serve"),
    (["predict", "--model", "s3://bucket/runs/run-1", "--input", "/dev/null"], "sagemaker"),
    (["predict", "--model", "gs://bucket/runs/run-1", "--input", "/dev/null"], "vertex"),
])
def test_a_command_needing_a_missing_extra_names_it(core: list[str], args: list[str], extra: str) -> None:
    done = _run(core, args)
    failure = [json.loads(line) for line in done.stdout.splitlines() if '"job_failed"' in line]
    assert done.returncode == 2 and failure, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"pip install 'seqcls[{extra}]'" in failure[-1]["message"] and "Traceback" not in done.stderr


def test_training_toward_s3_without_boto3_fails_before_training(core: list[str], cola_dir: Path, minilm_path: Path,
                                                                 tmp_path: Path) -> None:
    root = make_tree(tmp_path / "opt_ml", cola_dir, {"epochs": "1", "output_uri": "s3://bucket/runs"},
                     train_rows=32, test_rows=8, model=build_tiny_model(tmp_path / "tiny", minilm_path))
    done = _run(core, ["train"], {"SEQCLS_OPT_ML": str(root)})
    events = [json.loads(line)["event"] for line in done.stdout.splitlines()]
    assert done.returncode == 2 and "pip install 'seqcls[sagemaker]'" in done.stdout, done.stdout[-2000:]
    assert "epoch_end" not in events and not (root / "model" / "model.safetensors").exists()


SUBMITTERS = ("infra.sagemaker.submit", "infra.sagemaker.tune", "infra.sagemaker.transform", "infra.sagemaker.pipeline",
              "infra.vertex.submit", "infra.vertex.tune", "infra.vertex.batch_predict", "infra.vertex.pipeline",
              "infra.airflow.render")


def test_the_submitters_import_no_torch() -> None:
    """A laptop or a CI runner that only submits jobs needs the cloud SDKs, not torch (seqcls.tuning's objective and
    seqcls.settings' checks are pure Python)."""
    probe = (f"import importlib, json, sys\nfor name in {SUBMITTERS!r}:\n    importlib.import_module(name)\n"
             "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == []
