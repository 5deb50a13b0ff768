"""Preemption: SIGTERM/SIGKILL at different points, resume, and compare with an uninterrupted run bit for bit."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
import torch

from jobtools import clean_env, json_lines, make_tree, run_cli

pytestmark = pytest.mark.slow

HYPERPARAMETERS = {"epochs": "2", "batch_size": "16", "learning_rate": "5e-5", "log_every_steps": "1",
                   "checkpoint_every_steps": "2", "select_best": "mcc"}
STEPS_PER_EPOCH = 6  # 96 rows, 10% held out -> 86 train rows in batches of 16


def outputs(root: Path) -> tuple[str, dict]:
    weights = hashlib.sha256((root / "model" / "model.safetensors").read_bytes()).hexdigest()
    return weights, json.loads((root / "model" / "metrics.json").read_text())


def env_for(root: Path) -> dict[str, str]:
    return {"SEQCLS_OPT_ML": str(root), "TRAINING_JOB_NAME": "resume-test"}


def interrupt(root: Path, when, sig: int = signal.SIGTERM) -> tuple[int, list[dict]]:
    """Run the job and send `sig` once an event satisfies `when`; returns the exit code and the events."""
    env = clean_env(env_for(root))
    child = subprocess.Popen([sys.executable, "-m", "seqcls", "train"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    events, sent = [], False
    for line in child.stdout:
        events.append(json.loads(line))
        if not sent and when(events[-1]):
            child.send_signal(sig)
            sent = True
    assert sent, "the trigger event never came"
    return child.wait(timeout=120), events


@pytest.fixture(scope="module")
def template(tmp_path_factory, cola_dir, minilm_path) -> Path:
    return make_tree(tmp_path_factory.mktemp("template"), cola_dir, HYPERPARAMETERS, train_rows=96, test_rows=64,
                     model=minilm_path)


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("reference") / "ml"
    shutil.copytree(template, root, symlinks=True)
    result = run_cli(["train"], env=env_for(root))
    assert result.returncode == 0, result.stderr[-2000:]
    return outputs(root)


def assert_partial_model(root: Path, events: list[dict]) -> None:
    """SageMaker uploads /opt/ml/model even from a stopped job (tuner early stop, MaxRuntime): it must hold a
    loadable model, marked partial, with the best epoch so far when there is one, else the current weights."""
    from safetensors.torch import load_file
    from transformers import pipeline

    metrics = json.loads((root / "model" / "metrics.json").read_text())
    manifest = json.loads((root / "model" / "run_manifest.json").read_text())
    partial = metrics["partial"]
    assert manifest["partial"] == partial and "SIGTERM" in partial["reason"] and "test" not in metrics
    epochs_done = [e["epoch"] for e in events if e["event"] == "epoch_end"]
    assert partial["epochs_completed"] == len(epochs_done)
    saved = load_file(root / "model" / "model.safetensors")
    if epochs_done:  # select_best=mcc: the best epoch so far, the very weights kept in the checkpoint folder
        assert metrics["best_epoch"] >= 1 and partial["weights"] == f"best epoch so far ({metrics['best_epoch']})"
        best = load_file(root / "checkpoints" / f"best-epoch{metrics['best_epoch']:04d}.safetensors")
        shared = saved.keys() & best.keys()
        assert len(shared) > 10 and all(torch.equal(saved[k], best[k]) for k in shared)
    else:
        assert metrics["best_epoch"] == 0 and partial["weights"] == f"step {partial['stopped_at_step']}, mid-epoch"
    classify = pipeline("text-classification", model=str(root / "model"), device="cpu")
    assert classify("The book was written by John.")[0]["label"] in metrics["labels"]
    card = ModelCard.load(root / "model" / "README.md")  # the card published with it says it is partial
    assert "**Partial model.**" in card.text and partial["weights"] in card.text
    assert "partial" in card.data.tags and not card.data.eval_results


def fresh(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ml"
    shutil.copytree(template, root, symlinks=True)
    return root


@pytest.mark.parametrize("label, when", [
    ("mid first epoch", lambda e: e["event"] == "train_progress" and e["step"] == 3),
    ("at the epoch boundary", lambda e: e["event"] == "epoch_end" and e["epoch"] == 1),
    ("mid second epoch", lambda e: e["event"] == "train_progress" and e["step"] == STEPS_PER_EPOCH + 3),
])
def test_sigterm_then_resume_is_bitwise_identical(template, reference, tmp_path, label, when):
    root = fresh(template, tmp_path)
    code, events = interrupt(root, when)
    assert code == 143, label
    saved = [e for e in events if e["event"] == "checkpoint_saved"]
    assert saved, "no checkpoint on SIGTERM"
    reason = (root / "output" / "failure").read_text()
    assert "SIGTERM" in reason and "rerun to resume" in reason and "partial model" in reason
    assert events[-1]["event"] == "job_failed"
    assert_partial_model(root, events)

    result = run_cli(["train"], env=env_for(root))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = [e for e in json_lines(result.stdout) if e["event"] == "resumed"]
    assert resumed and resumed[0]["step"] == saved[-1]["step"]
    assert not (root / "output" / "failure").exists()
    assert outputs(root) == reference


def test_sigkill_resumes_from_the_last_periodic_checkpoint_and_skips_a_corrupt_one(template, reference, tmp_path):
    root = fresh(template, tmp_path)
    code, events = interrupt(root, lambda e: e["event"] == "checkpoint_saved" and e["step"] == 4, signal.SIGKILL)
    assert code == -signal.SIGKILL
    checkpoints = sorted((root / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in checkpoints][-1] >= "ckpt-000000004.pt" and len(checkpoints) == 2
    newest = checkpoints[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # a torn write

    result = run_cli(["train"], env=env_for(root))
    assert result.returncode == 0, result.stderr[-2000:]
    records = json_lines(result.stdout)
    assert any(e["event"] == "checkpoint_unreadable" and e["path"] == str(newest) for e in records)
    resumed = next(e for e in records if e["event"] == "resumed")
    assert resumed["path"] == str(checkpoints[0])
    assert outputs(root) == reference


def test_a_mismatched_checkpoint_is_refused_unless_ignored(template, tmp_path):
    root = fresh(template, tmp_path)
    code, _ = interrupt(root, lambda e: e["event"] == "train_progress" and e["step"] == 2)
    assert code == 143
    hyperparameters = root / "input" / "config" / "hyperparameters.json"
    hyperparameters.write_text(json.dumps(HYPERPARAMETERS | {"learning_rate": "3e-5"}))
    (root / "output" / "failure").unlink()

    refused = run_cli(["train"], env=env_for(root))
    assert refused.returncode == 2
    reason = (root / "output" / "failure").read_text()
    assert "refusing to resume" in reason and "ignore_checkpoint=true" in reason

    fresh_start = run_cli(["train", "--ignore_checkpoint", "true", "--epochs", "1"], env=env_for(root))
    assert fresh_start.returncode == 0, fresh_start.stderr[-2000:]
    records = json_lines(fresh_start.stdout)
    assert any(e["event"] == "checkpoint_ignored" for e in records)
    assert not any(e["event"] == "resumed" for e in records)


def unstopped_run(template: Path, root: Path) -> tuple[str, dict, list[dict]]:
    """The reference a stopped-and-resumed run must equal: the weights' digest, metrics.json and the events."""
    shutil.copytree(template, root, symlinks=True)
    result = run_cli(["train"], env=env_for(root))
    assert result.returncode == 0, result.stderr[-2000:]
    return (*outputs(root), json_lines(result.stdout))


# Early stopping: epoch 1 sets the first best validation loss, and no epoch can beat it by min_delta=1.0 (a
# mean cross-entropy near 0.6 cannot fall by 1.0), so with patience 1 the run stops after epoch 2 of 4.
EARLY_STOPPING = HYPERPARAMETERS | {"epochs": "4", "select_best": "loss", "early_stopping_patience": "1",
                                    "early_stopping_min_delta": "1.0"}


@pytest.fixture(scope="module")
def early_template(tmp_path_factory, cola_dir, minilm_path) -> Path:
    return make_tree(tmp_path_factory.mktemp("early"), cola_dir, EARLY_STOPPING, train_rows=96, test_rows=64,
                     model=minilm_path)


@pytest.fixture(scope="module")
def early_reference(early_template, tmp_path_factory) -> tuple[str, dict, list[dict]]:
    return unstopped_run(early_template, tmp_path_factory.mktemp("early-reference") / "ml")


def test_early_stopping_ends_the_run_at_the_patience_epoch(early_reference):
    _, metrics, events = early_reference
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1, 2]
    stop = next(e for e in events if e["event"] == "early_stopping")
    losses = {e["epoch"]: e["val_loss"] for e in events if e["event"] == "epoch_end"}
    best = min(losses, key=losses.get)  # a smaller loss is still kept, though not better by min_delta
    assert stop["epoch"] == 2 and stop["metric"] == "val_loss" and stop["best_epoch"] == best
    assert metrics["early_stopped_after_epoch"] == 2 and metrics["best_epoch"] == best and "test" in metrics


@pytest.mark.parametrize("label, when", [
    ("mid second epoch", lambda e: e["event"] == "train_progress" and e["step"] == STEPS_PER_EPOCH + 3),
    ("right after the stopping decision", lambda e: e["event"] == "early_stopping"),
])
def test_early_stopping_sigterm_then_resume_stops_at_the_same_epoch_bitwise(early_template, early_reference, tmp_path,
                                                                            label, when):
    root = fresh(early_template, tmp_path)
    code, _ = interrupt(root, when)
    assert code == 143, label
    result = run_cli(["train"], env=env_for(root))
    assert result.returncode == 0, result.stderr[-2000:]
    events = json_lines(result.stdout)
    assert any(e["event"] == "resumed" for e in events)
    assert not any(e["event"] == "epoch_end" and e["epoch"] > 2 for e in events)
    assert outputs(root) == early_reference[:2]


# Accumulation and step-level evaluation: steps of 8 x 2 rows (86 train rows -> 6 optimizer steps an epoch, 12 in
# all), validation every 3 steps (3, 6, 9, 12), periodic checkpoints every 2. SIGTERM once step 4 is logged (the stop
# lands at 4 or 5, between the evaluations at 3 and 6) and once step 7 is (7 or 8: between 6 and 9, after the epoch
# boundary); each resumed run must end bit for bit as the unstopped one.
STEPWISE = HYPERPARAMETERS | {"batch_size": "8", "gradient_accumulation_steps": "2", "eval_every_steps": "3",
                              "lr_scheduler_type": "cosine", "warmup_steps": "2"}


@pytest.fixture(scope="module")
def stepwise_template(tmp_path_factory, cola_dir, minilm_path) -> Path:
    return make_tree(tmp_path_factory.mktemp("stepwise"), cola_dir, STEPWISE, train_rows=96, test_rows=64,
                     model=minilm_path)


@pytest.fixture(scope="module")
def stepwise_reference(stepwise_template, tmp_path_factory) -> tuple[str, dict, list[dict]]:
    return unstopped_run(stepwise_template, tmp_path_factory.mktemp("stepwise-reference") / "ml")


def test_step_level_evaluations_run_at_their_steps(stepwise_reference):
    _, metrics, events = stepwise_reference
    evaluations = [e for e in events if e["event"] == "evaluation"]
    assert [e["step"] for e in evaluations] == [3, 6, 9, 12] and not [e for e in events if e["event"] == "epoch_end"]
    assert [e["total_steps"] for e in events if e["event"] == "train_progress"][-1] == 12
    best = max(evaluations, key=lambda e: e["val_mcc"])  # the first of equal MCCs is kept
    assert (metrics["best_epoch"], metrics["best_step"]) == (best["epoch"], best["step"])
    assert metrics["validation"]["val_mcc"] == best["val_mcc"]


@pytest.mark.parametrize("at_step", [4, 7])
def test_sigterm_between_step_evaluations_with_accumulation_resumes_bitwise(stepwise_template, stepwise_reference,
                                                                            tmp_path, at_step):
    root = fresh(stepwise_template, tmp_path)
    code, events = interrupt(root, lambda e: e["event"] == "train_progress" and e["step"] == at_step)
    assert code == 143
    saved = [e for e in events if e["event"] == "checkpoint_saved"]
    stopped_at = saved[-1]["step"]
    assert stopped_at in (at_step, at_step + 1) and stopped_at % 3  # the stop's own checkpoint, between two evaluations
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert metrics["partial"]["weights"].startswith("best evaluation so far (step ")

    result = run_cli(["train"], env=env_for(root))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = [e for e in json_lines(result.stdout) if e["event"] == "resumed"]
    assert resumed and resumed[0]["step"] == stopped_at
    assert outputs(root) == stepwise_reference[:2]
