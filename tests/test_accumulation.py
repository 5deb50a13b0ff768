"""Scale settings through the real loop (train.train) on a CPU with a tiny BERT: gradient accumulation equals
one big batch (eager, the graph body, two gloo processes), every schedule equals transformers' get_scheduler,
max_steps, step-level evaluation and early stopping, gradient checkpointing and label smoothing."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from transformers import AlbertConfig, AlbertForSequenceClassification, get_scheduler

from seqcls import model as models
from seqcls.training import schedule, steps, train
from seqcls.training.checkpoint import STOP, Checkpointer
from seqcls.devices import Compute
from seqcls.distributed import World
from seqcls.errors import SettingsError
from seqcls.losses import row_losses
from seqcls.settings import Settings
from modeltools import synthetic, tiny_bert
from storage_servers import free_port

CPU = torch.device("cpu")
# 630 rows: 20 optimizer steps of 32 rows, the last 22 (micro-batches of 8, 8 and 6 under accumulation).
BIG = Settings(batch_size=32, epochs=1, learning_rate=2e-3, warmup_ratio=0.2, weight_decay=0.01, max_grad_norm=0.5,
               log_every_steps=1, select_best="none", precision="fp32")
ACCUMULATED = dataclasses.replace(BIG, batch_size=8, gradient_accumulation_steps=4)
CLASS_WEIGHTS = np.array([0.5, 1.0, 3.0], dtype=np.float32)


def weighted_rows(rows: int = 630) -> train.TrainData:
    encoded = synthetic(rows=rows)
    encoded.weights = CLASS_WEIGHTS[encoded.labels]  # class weights: the step mean must weigh rows, not batches
    return train.TrainData(encoded, synthetic(rows=40, seed=1), 0)


def run(settings: Settings, folder, monkeypatch, data: train.TrainData | None = None, model=None,
        world: World = World()) -> tuple[torch.nn.Module, train.Outcome, list[tuple[str, dict]]]:
    """One real training run; returns the model, the outcome and every event the job logged."""
    events = []
    monkeypatch.setattr(train.logs, "event", lambda name, message, level=logging.INFO, **fields:
                        events.append((name, fields)))
    model = model if model is not None else tiny_bert()
    outcome = train.train(model, data or weighted_rows(), settings, Compute(CPU, "fp32", world),
                          Checkpointer(folder, "test", False))
    return model, outcome, events


def progress(events: list[tuple[str, dict]]) -> tuple[list[float], list[float]]:
    rows = [fields for name, fields in events if name == "train_progress"]
    return [r["loss"] for r in rows], [r["lr"] for r in rows]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    with torch.no_grad():
        for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(y, x, rtol=0, atol=atol, msg=name)


def test_four_accumulated_batches_of_8_train_like_one_batch_of_32(tmp_path, monkeypatch):
    big_model, big, big_events = run(BIG, tmp_path / "big", monkeypatch)
    acc_model, acc, acc_events = run(ACCUMULATED, tmp_path / "acc", monkeypatch)
    big_losses, big_lrs = progress(big_events)
    acc_losses, acc_lrs = progress(acc_events)
    assert len(big_losses) == len(acc_losses) == 20
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    assert acc_lrs == big_lrs  # the schedule counts optimizer steps, not batches
    assert acc.stats[0].train_loss == pytest.approx(big.stats[0].train_loss, rel=1e-6)
    assert_same_weights(big_model, acc_model, atol=2e-5)
    # Not trivially equal: 79 plain steps of 8 rows train other weights.
    small_model, _, small_events = run(dataclasses.replace(ACCUMULATED, gradient_accumulation_steps=1),
                                       tmp_path / "small", monkeypatch)
    assert len(progress(small_events)[0]) == 79
    with pytest.raises(AssertionError):
        assert_same_weights(big_model, small_model, atol=1e-3)


def test_the_graph_step_body_accumulates_like_the_eager_step(tmp_path, monkeypatch):
    """The very body that is captured on a GPU (forward-backward per batch, then clip + AdamW), run eagerly."""
    eager_model, _, eager_events = run(ACCUMULATED, tmp_path / "eager", monkeypatch)
    monkeypatch.setattr(train, "graphs_unavailable", lambda *args: None)
    monkeypatch.setattr(train, "GraphSteps", lambda *args: steps.GraphSteps(*args, capture=False))
    graph_model, outcome, graph_events = run(ACCUMULATED, tmp_path / "graph", monkeypatch)
    assert outcome.path == "cuda_graphs"
    assert next(f for n, f in graph_events if n == "training_path")["graphs_per_step"].startswith("one per batch")
    np.testing.assert_allclose(progress(graph_events)[0], progress(eager_events)[0], rtol=1e-5)
    assert_same_weights(eager_model, graph_model, atol=1e-5)



class _CountingDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP with its default all-reduce wrapped in a comm hook that counts bucket syncs (torch's documented hook API)."""

    syncs = 0

    def __init__(self, module: torch.nn.Module) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        super().__init__(module)

        def counting(state, bucket):
            type(self).syncs += 1
            return allreduce_hook(state, bucket)

        self.register_comm_hook(None, counting)


def _rank(rank: int, port: int, folder: str, settings: Settings, results) -> None:
    """One of two gloo processes (as torchrun would start them) training the same run."""
    import pytest as _pytest

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        monkeypatch = _pytest.MonkeyPatch()
        monkeypatch.setattr(train, "DistributedDataParallel", _CountingDDP)
        model, outcome, events = run(settings, Path(folder), monkeypatch, world=World(rank, 2, rank))
        results[rank] = {"losses": progress(events)[0], "lrs": progress(events)[1], "syncs": _CountingDDP.syncs,
                         "weights": {k: v.clone() for k, v in model.state_dict().items()},
                         "train_loss": outcome.stats[0].train_loss}
    finally:
        torch.distributed.destroy_process_group()


def _two_processes(settings: Settings, folder) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(free_port(), str(folder), settings, results), nprocs=2, join=True)
        return dict(results)


@pytest.mark.slow
def test_two_gloo_processes_accumulate_like_one_and_sync_once_per_optimizer_step(tmp_path, monkeypatch):
    one_model, one, one_events = run(ACCUMULATED, tmp_path / "one", monkeypatch)
    two = _two_processes(ACCUMULATED, tmp_path / "two")
    losses, lrs = progress(one_events)
    assert two[1]["losses"] == two[0]["losses"]  # the window loss is all-reduced: the global step loss on every rank
    np.testing.assert_allclose(two[0]["losses"], losses, rtol=1e-5)
    assert two[0]["lrs"] == lrs and two[0]["train_loss"] == pytest.approx(one.stats[0].train_loss, rel=1e-5)
    for name, value in one_model.state_dict().items():
        torch.testing.assert_close(two[0]["weights"][name], value, rtol=0, atol=2e-5, msg=name)
        assert torch.equal(two[0]["weights"][name], two[1]["weights"][name]), name
    # no_sync on the first three batches of each step: as many bucket syncs as a run without accumulation.
    plain = _two_processes(BIG, tmp_path / "plain")
    assert two[0]["syncs"] == plain[0]["syncs"] > 0
    assert plain[0]["syncs"] % 20 == 0  # the same buckets synced once per optimizer step


SCHEDULES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]


@pytest.mark.parametrize("kind", SCHEDULES)
def test_every_schedule_steps_as_transformers_get_scheduler_does(tmp_path, monkeypatch, kind):
    """40 rows in steps of 2 x 4: 5 optimizer steps an epoch, 2 epochs; warmup_steps=4 wins over warmup_ratio."""
    warm_up = {"warmup_ratio": 0.0} if kind == "constant" else {"warmup_steps": 4, "warmup_ratio": 0.5}
    settings = dataclasses.replace(BIG, batch_size=4, gradient_accumulation_steps=2, epochs=2, lr_scheduler_type=kind,
                                   **warm_up)
    _, _, events = run(settings, tmp_path, monkeypatch, data=train.TrainData(synthetic(rows=40), synthetic(rows=8), 0))
    logged = progress(events)[1]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=settings.learning_rate)
    reference = get_scheduler(kind, optimizer, num_warmup_steps=None if kind == "constant" else 4,
                              num_training_steps=10)
    expected = []
    for _ in range(10):
        optimizer.step()
        reference.step()
        expected.append(optimizer.param_groups[0]["lr"])
    assert logged == expected
    assert len(set(expected)) == 1 if kind == "constant" else len(set(expected)) >= 4  # a schedule that moves


def test_max_steps_ends_the_run_mid_epoch_and_sets_the_schedule_length(tmp_path, monkeypatch):
    settings = dataclasses.replace(BIG, batch_size=4, gradient_accumulation_steps=2, epochs=1, max_steps=7)
    _, outcome, events = run(settings, tmp_path, monkeypatch, data=train.TrainData(synthetic(rows=40), synthetic(rows=8), 0))
    steps_logged = [f["step"] for n, f in events if n == "train_progress"]
    assert steps_logged == list(range(1, 8)) and {f["total_steps"] for n, f in events if n == "train_progress"} == {7}
    assert [s.epoch for s in outcome.stats] == [1, 2]  # max_steps runs past `epochs`; the last epoch is cut at step 7
    assert progress(events)[1][-1] == 0.0  # linear decay reached its end at max_steps
    plan = schedule.Plan.of(40, settings)
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps) == (5, 2, 7)


EVERY_3 = dataclasses.replace(BIG, batch_size=8, gradient_accumulation_steps=2, epochs=2, eval_every_steps=3,
                              select_best="loss")  # 75 rows: 5 steps an epoch, 10 in all


def test_eval_every_steps_validates_keeps_the_best_and_checkpoints_at_those_steps(tmp_path, monkeypatch):
    data = train.TrainData(synthetic(), synthetic(rows=20, seed=1), 0)
    model, outcome, events = run(EVERY_3, tmp_path, monkeypatch, data=data)
    evaluations = [f for n, f in events if n == "evaluation"]
    assert [f["step"] for f in evaluations] == [3, 6, 9, 10] and [f["epoch"] for f in evaluations] == [1, 2, 2, 2]
    assert not [n for n, _ in events if n == "epoch_end"]
    assert {3, 6, 9, 10} <= {f["step"] for n, f in events if n == "checkpoint_saved"}
    assert [s.step for s in outcome.stats] == [3, 6, 9, 10] and list(outcome.stats[0].row())[:3] == ["epoch", "step", "train_loss"]
    # train_loss: the mean step loss since the previous evaluation (steps 4-6, 7-9, then 10 alone).
    losses = dict(zip(range(1, 11), progress(events)[0]))
    assert outcome.stats[1].train_loss == pytest.approx(np.mean([losses[4], losses[5], losses[6]]), abs=1e-5)
    assert outcome.stats[3].train_loss == pytest.approx(losses[10], abs=1e-5)
    best = min(outcome.stats, key=lambda s: s.val_loss)
    assert (outcome.best_epoch, outcome.best_step) == (best.epoch, best.step)
    selected = next(f for n, f in events if n == "best_epoch_selected")
    assert selected["step"] == best.step and selected["val_loss"] == round(best.val_loss, 6)
    # Per epoch (the default) nothing changes: epoch_end rows without a step.
    _, per_epoch, epoch_events = run(dataclasses.replace(EVERY_3, eval_every_steps=0), tmp_path / "epochs", monkeypatch,
                                     data=data)
    assert [f["epoch"] for n, f in epoch_events if n == "epoch_end"] == [1, 2]
    assert all("step" not in s.row() for s in per_epoch.stats) and per_epoch.best_step == 0


def test_step_level_early_stopping_ends_the_run_at_that_evaluation(tmp_path, monkeypatch):
    settings = dataclasses.replace(EVERY_3, early_stopping_patience=1, early_stopping_min_delta=10.0)
    _, outcome, events = run(settings, tmp_path, monkeypatch, data=train.TrainData(synthetic(), synthetic(rows=20, seed=1), 0))
    stop = next(f for n, f in events if n == "early_stopping")
    assert stop["step"] == 6 and stop["best_step"] == 3
    assert max(f["step"] for n, f in events if n == "train_progress") == 6
    assert outcome.early_stopped_after == 2 and [s.step for s in outcome.stats] == [3, 6]


def test_a_sigterm_stops_its_own_run_with_a_checkpoint_and_not_the_next_one(tmp_path, monkeypatch):
    """The loop returns why it stopped; the stop request belongs to the run it arrived in, so a second run in the
    same process (a test session, a notebook) trains every step."""
    settings = dataclasses.replace(BIG, log_every_steps=1, checkpoint_every_steps=0)
    signalled = []

    def sigterm_after_step_2(name, message, level=logging.INFO, **fields):
        if name == "train_progress" and fields["step"] == 2 and not signalled:
            signalled.append(2)
            STOP._handle(signal.SIGTERM, None)  # what the installed handler does inside a run: only asks

    monkeypatch.setattr(train.logs, "event", sigterm_after_step_2)
    stopped = train.train(tiny_bert(), weighted_rows(), settings, Compute(CPU, "fp32", World()),
                          Checkpointer(tmp_path / "first", "test", False))
    assert stopped.stopped.startswith("interrupted by SIGTERM at step 2/20") and stopped.stopped_at_step == 2
    assert (tmp_path / "first").is_dir() and any((tmp_path / "first").iterdir())
    _, second, events = run(settings, tmp_path / "second", monkeypatch)
    assert second.stopped == "" and max(f["step"] for n, f in events if n == "train_progress") == 20


def test_gradient_checkpointing_trains_bit_for_bit_the_same_weights(tmp_path, monkeypatch):
    """With dropout on: the recompute replays the same dropout masks (torch.utils.checkpoint keeps the RNG state)."""
    def dropping(seed: int = 0):
        model = tiny_bert(seed)
        model.config.hidden_dropout_prob = 0.1
        return type(model)(model.config).train()

    plain_model, plain, _ = run(ACCUMULATED, tmp_path / "plain", monkeypatch, model=dropping())
    checkpointed = dropping()
    models.enable_gradient_checkpointing(checkpointed, "tiny")
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())
    checkpointed_model, again, _ = run(dataclasses.replace(ACCUMULATED, gradient_checkpointing=True), tmp_path / "gc",
                                       monkeypatch, model=checkpointed)
    assert again.stats[0].train_loss == plain.stats[0].train_loss
    assert all(torch.equal(a, b) for a, b in zip(plain_model.parameters(), checkpointed_model.parameters()))


def test_a_model_class_without_gradient_checkpointing_fails_before_training(tmp_path):
    """ALBERT declares supports_gradient_checkpointing = False in transformers: load_model refuses it, clearly."""
    config = AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, num_labels=2)
    AlbertForSequenceClassification(config).save_pretrained(tmp_path)
    assert models.load_model(str(tmp_path), config, 0) is not None
    with pytest.raises(SettingsError, match="gradient_checkpointing=true: AlbertForSequenceClassification .* does not "
                                            "support gradient checkpointing"):
        models.load_model(str(tmp_path), config, 0, gradient_checkpointing=True)


def test_gradient_checkpointing_trains_eagerly_on_a_gpu_with_the_reason():
    reason = steps.graphs_unavailable(Settings(gradient_checkpointing=True), Compute(torch.device("cuda", 0), "bf16", World()))
    assert reason.startswith("gradient_checkpointing=true")
    assert steps.graphs_unavailable(Settings(gradient_accumulation_steps=4), Compute(torch.device("cuda", 0), "bf16",
                                                                                     World())) is None


def test_label_smoothing_is_torchs_cross_entropy_with_label_smoothing():
    logits, labels = torch.randn(7, 3) * 4, torch.tensor([0, 2, 1, 2, 0, 1, 1])
    expected = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    assert torch.allclose(row_losses(logits, labels, "single_label", 0.1).mean(), expected)
    assert not torch.allclose(row_losses(logits, labels, "single_label").mean(), expected)
    # The training step's loss is that of torch, on the model's logits for the batch.
    from seqcls import data

    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight *= 50  # confident predictions, where smoothing changes the loss clearly
    encoded = synthetic()
    batch = data.collate(encoded, np.arange(16), 0, 1)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k not in ("labels", "weights")}).logits
    settings = dataclasses.replace(BIG, label_smoothing=0.1)
    optimizer = steps.make_optimizer(model, settings.optimizer, CPU, graphs=False)
    state = steps.TrainingState(model, optimizer, schedule.make_scheduler(optimizer, settings.lr_scheduler_type, schedule.Plan.of(16, settings)),
                                torch.amp.GradScaler("cpu", enabled=False))
    loss = steps.EagerStep(model, state, settings, Compute(CPU, "fp32"))([batch])
    smoothed = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, torch.from_numpy(batch["labels"]))
    assert float(loss) == pytest.approx(float(smoothed), rel=1e-5)
    assert float(loss) != pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["labels"]))),
                                        rel=1e-3)


def test_step_level_evaluations_are_rows_of_the_stats_table_and_points_of_the_loss_plot(tmp_path):
    """metrics.json keeps the chosen evaluation's metrics (several share an epoch), training_stats.csv gets a step
    column, loss_curve.png plots per step, and the card names the step."""
    import pandas as pd
    from PIL import Image

    from seqcls.saving import artifacts, card
    from seqcls.evaluate import EpochStats
    from seqcls.records import Metrics

    stats = [EpochStats(epoch=1, step=500, train_loss=0.7, val_loss=0.6, val_accuracy=0.6, val_mcc=0.1, val_f1=0.5),
             EpochStats(epoch=1, step=1000, train_loss=0.6, val_loss=0.5, val_accuracy=0.7, val_mcc=0.3, val_f1=0.6),
             EpochStats(epoch=2, step=1500, train_loss=0.5, val_loss=0.55, val_accuracy=0.65, val_mcc=0.2, val_f1=0.55)]
    record = artifacts.metrics_record(stats, 1, ["0", "1"], {"best_step": 1000})
    assert record.best_step == 1000 and record.validation["val_mcc"] == 0.3
    assert "best_step" not in artifacts.metrics_record(stats[:1], 1, ["0", "1"], {"best_step": 0}).to_json()
    artifacts.write_training_stats(tmp_path / "training_stats.csv", stats)
    table = pd.read_csv(tmp_path / "training_stats.csv")
    assert list(table.columns[:3]) == ["epoch", "step", "train_loss"] and list(table["step"]) == [500, 1000, 1500]
    artifacts.plot_loss_curve(tmp_path / "loss_curve.png", stats)
    assert Image.open(tmp_path / "loss_curve.png").size[0] > 100
    assert card._weights_saved(record) == "Weights saved: step 1000 (epoch 1)."
    assert card._weights_saved(Metrics(2, {}, [])) == "Weights saved: epoch 2."
