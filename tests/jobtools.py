"""Helpers for tests that run the job: CoLA slices, temp SageMaker trees, the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLA_DIR = Path(os.environ.get("COLA_DIR", REPO.parent / "shared" / "data" / "cola"))


def cola_lines(cola_dir: Path, name: str, start: int, count: int) -> list[str]:
    lines = (cola_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return lines[start:start + count]


def make_tree(root: Path, cola_dir: Path, hyperparameters: dict[str, str], train_rows: int = 240, test_rows: int = 120,
              model: Path | None = None) -> Path:
    """A SageMaker /opt/ml tree: string-valued hyperparameters.json and CoLA-layout channels."""
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    train = root / "input" / "data" / "train"
    test = root / "input" / "data" / "test"
    train.mkdir(parents=True)
    test.mkdir(parents=True)
    # A stride through the file mixes sources and both labels.
    lines = (cola_dir / "in_domain_train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (train / "train.tsv").write_text("".join(lines[::len(lines) // train_rows][:train_rows]), encoding="utf-8")
    (test / "test.tsv").write_text("".join(cola_lines(cola_dir, "out_of_domain_dev.tsv", 0, test_rows)), encoding="utf-8")
    if model is not None:
        (root / "input" / "data" / "model").symlink_to(model, target_is_directory=True)
    return root


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real entry point in a child process, so stdout is exactly what a platform would capture."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQCLS_", "AIP_", "TRAINING_JOB"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "seqcls", *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object."""
    return [json.loads(line) for line in stdout.splitlines()]
