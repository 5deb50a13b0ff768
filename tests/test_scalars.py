"""TensorBoard scalars from the job's events, read back with the tensorboard library."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seqcls import logs, scalars


def _read(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def _progress(step: int, loss: float) -> dict:
    return {"epoch": 1, "step": step, "loss": loss, "lr": 1e-5, "samples_per_s": 100.0}


def test_a_resumed_run_replaces_the_steps_the_stopped_run_logged_after_its_checkpoint(tmp_path):
    stopped = scalars.TensorBoardScalars(tmp_path, epochs=1)
    for step in (1, 2, 3, 4):  # checkpoint at step 2, killed after step 4 was written
        stopped.on_event("train_progress", _progress(step, 1.0))
    stopped.close()
    resumed = scalars.TensorBoardScalars(tmp_path, epochs=1)
    resumed.on_event("resumed", {"step": 2, "epoch": 1, "step_in_epoch": 2})
    for step in (3, 4):
        resumed.on_event("train_progress", _progress(step, 0.5))
    resumed.close()
    assert _read(tmp_path)["train/loss"] == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5)]


def test_nothing_is_written_before_the_first_scalar_and_a_failure_closes_the_file(tmp_path):
    logs.setup()
    logs.subscribe(scalars.TensorBoardScalars(tmp_path / "tb", epochs=1))
    logs.event("data_ready", "no scalars here")
    assert not (tmp_path / "tb").exists()  # a job that fails before training leaves no empty run
    logs.event("train_progress", "step 1", **_progress(1, 0.25))
    logs.event("job_failed", "stopped")  # closes (flushes) the writer
    assert _read(tmp_path / "tb")["train/loss"] == [(1, 0.25)]


def test_step_level_evaluations_are_plotted_at_their_optimizer_step_and_test_at_the_last(tmp_path):
    """eval_every_steps: `evaluation` events (x: optimizer step) instead of epoch_end (x: epoch)."""
    writer = scalars.TensorBoardScalars(tmp_path, epochs=2)
    for step, loss in ((500, 0.6), (1000, 0.5), (1200, 0.45)):
        writer.on_event("evaluation", {"epoch": 1 + step // 1000, "step": step, "train_loss": loss + 0.1,
                                       "val_loss": loss, "val_mcc": 0.3})
    writer.on_event("test_metrics", {"test_mcc": 0.31, "test_loss": 0.5})
    writer.close()
    found = _read(tmp_path)
    assert [step for step, _ in found["val/loss"]] == [500, 1000, 1200]
    assert [value for _, value in found["val/loss"]] == pytest.approx([0.6, 0.5, 0.45])
    assert [step for step, _ in found["train/epoch_loss"]] == [500, 1000, 1200]
    assert [step for step, _ in found["test/mcc"]] == [1200]
