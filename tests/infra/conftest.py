"""Infra fixtures: one real short training run (cola_dir, minilm_path come from tests/conftest.py), and
AWS settings that reach nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobtools import run_cli


@pytest.fixture(scope="session")
def job_log_lines(tmp_path_factory: pytest.TempPathFactory, cola_dir: Path, minilm_path: Path) -> list[str]:
    """stdout of a real gated `seqcls train` (200 CoLA rows, MiniLM, 2 epochs keeping the best): the lines CloudWatch would get."""
    work = tmp_path_factory.mktemp("seqcls-run")
    # A short test file keeps the run quick; the test_metrics event is what matters here.
    test_rows = (cola_dir / "out_of_domain_dev.tsv").read_text(encoding="utf-8").splitlines()[:64]
    (work / "test.tsv").write_text("\n".join(test_rows) + "\n", encoding="utf-8")
    done = run_cli(
        ["train", "--train", str(cola_dir / "in_domain_train.tsv"), "--test", str(work / "test.tsv"),
         "--model_name_or_path", str(minilm_path), "--output_dir", str(work / "opt_ml"),
         "--epochs", "2", "--select_best", "mcc", "--max_train_samples", "200", "--log_every_steps", "2", "--device", "cpu",
         # gated, so the run logs the promotion event the promotion:promoted metric reads
         "--promote_if", "test_mcc", "--output_uri", str(work / "published")])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)  # stdout is JSON lines only
    return lines


@pytest.fixture
def aws_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region, so nothing can reach a real account."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "eu-west-1",
                       "AWS_REGION": "eu-west-1", "SAGEMAKER_VALIDATE_ROLE": "false"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
