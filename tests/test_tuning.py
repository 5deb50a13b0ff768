"""The tuning objective in the record Vertex's tuning service reads: what cloudml-hypertune writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqcls import logs, problem_types, promotion, tuning
from seqcls.problem_types import SELECT_BEST

EPOCHS = [{"epoch": 1, "val_loss": 0.61234, "val_mcc": 0.125}, {"epoch": 2, "val_loss": 0.58, "val_mcc": 0.2501}]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _hypertune_records(path: Path, monkeypatch: pytest.MonkeyPatch, metric: str, trial: str | None) -> list[dict]:
    """The package Vertex documents for reporting, fed the same values (it reads its file and trial from env)."""
    import hypertune

    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
    if trial is None:
        monkeypatch.delenv("CLOUD_ML_TRIAL_ID", raising=False)
    else:
        monkeypatch.setenv("CLOUD_ML_TRIAL_ID", trial)
    reporter = hypertune.HyperTune()
    for epoch in EPOCHS:
        reporter.report_hyperparameter_tuning_metric(hyperparameter_metric_tag=metric, metric_value=epoch[metric],
                                                     global_step=epoch["epoch"])
    return _lines(path)


@pytest.mark.parametrize("select_best, metric, trial", [("none", "val_mcc", "3"), ("mcc", "val_mcc", None),
                                                        ("loss", "val_loss", "12")])
def test_records_match_cloudml_hypertune(tmp_path, monkeypatch, select_best, metric, trial):
    expected = _hypertune_records(tmp_path / "theirs" / "output.metrics", monkeypatch, metric, trial)
    report = tuning.ObjectiveReport(tmp_path / "ours" / "output.metrics", trial or "", select_best)
    for epoch in EPOCHS:
        report.on_event("epoch_end", epoch | {"train_loss": 0.7, "val_accuracy": 0.7})
    ours = _lines(tmp_path / "ours" / "output.metrics")
    assert len(ours) == len(EPOCHS)
    for mine, theirs in zip(ours, expected):
        assert mine.keys() == theirs.keys()
        assert {k: v for k, v in mine.items() if k != "timestamp"} == {k: v for k, v in theirs.items() if k != "timestamp"}
        assert isinstance(mine["timestamp"], float)
    # The file is rewritten whole with sorted keys, as the package does (the service parses each line).
    assert (tmp_path / "ours" / "output.metrics").read_text().splitlines()[0] == json.dumps(ours[0], sort_keys=True)


def test_objective_follows_select_best():
    assert problem_types.objective("none") == ("val_mcc", "MAXIMIZE")
    assert problem_types.objective("mcc") == ("val_mcc", "MAXIMIZE")
    assert problem_types.objective("loss") == ("val_loss", "MINIMIZE")


def test_the_report_listens_to_the_logged_events_and_stops_at_job_end(tmp_path):
    logs.setup()
    path = tmp_path / "output.metrics"
    logs.subscribe(tuning.ObjectiveReport(path, "1", "none"))
    logs.event("epoch_end", "epoch 1", epoch=1, val_mcc=0.5, val_loss=0.4)
    logs.event("job_end", "done")
    logs.event("epoch_end", "a later job's epoch", epoch=1, val_mcc=0.9, val_loss=0.1)
    assert [r["val_mcc"] for r in _lines(path)] == ["0.5"]


def test_a_nan_epoch_neither_wins_nor_blocks_a_later_number():
    """regression's Pearson is NaN when an epoch predicts a constant; select_best and early stopping use `better`."""
    nan = float("nan")
    assert problem_types.better("pearson", 0.1, nan) and not problem_types.better("pearson", nan, 0.1)
    assert not problem_types.better("pearson", nan, nan) and problem_types.better("mse", 2.0, nan)
    assert problem_types.better("mcc", 0.3, 0.2) and not problem_types.better("mcc", 0.3, 0.2, min_delta=0.1)
    assert problem_types.better("loss", 0.4, 0.5) and not problem_types.better("loss", 0.5, 0.4)


def test_step_level_evaluations_report_the_optimizer_step_as_global_step(tmp_path, monkeypatch):
    """eval_every_steps: one record per `evaluation` event, global_step the optimizer step, as cloudml-hypertune
    writes for global_step=<step>."""
    steps = [{"epoch": 1, "step": 500, "val_mcc": 0.125}, {"epoch": 1, "step": 1000, "val_mcc": 0.2501}]
    expected = _hypertune_records(tmp_path / "theirs" / "output.metrics", monkeypatch, "val_mcc", "4")
    report = tuning.ObjectiveReport(tmp_path / "ours" / "output.metrics", "4", "mcc")
    for evaluation in steps:
        report.on_event("evaluation", evaluation | {"val_loss": 0.6})
    ours = _lines(tmp_path / "ours" / "output.metrics")
    assert [r["global_step"] for r in ours] == ["500", "1000"]
    assert [(r["val_mcc"], r["trial"]) for r in ours] == [(r["val_mcc"], r["trial"]) for r in expected]


@pytest.mark.parametrize("name", [name for name in SELECT_BEST if name != "none"])
def test_select_best_and_the_promotion_gate_agree_on_which_way_is_better(name):
    """One list of lower-is-better metrics: an epoch ranked best must also be the run the gate prefers."""
    _, goal = problem_types.objective(name, SELECT_BEST[name] or "single_label")
    lower_wins = promotion.decide(promotion.Rule(f"validation_{name}"), 1.0, "champion", 2.0).promoted
    assert (goal == "MINIMIZE") == lower_wins
