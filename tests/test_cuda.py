"""The training loop on a real GPU (`pytest -m cuda`; `make gpu-check` runs these, elsewhere they skip):
whole-step CUDA graphs train like eager steps, and a model that cannot be captured falls back for real."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from transformers import BertForSequenceClassification

from seqcls.training import train
from seqcls.training.checkpoint import Checkpointer
from seqcls.devices import Compute
from seqcls.settings import Settings
from modeltools import synthetic, tiny_bert

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SETTINGS = Settings(epochs=2, select_best="none", learning_rate=1e-3, warmup_ratio=0.1, batch_size=32)
EAGER = dataclasses.replace(SETTINGS, cuda_graphs=False)


class HostSyncingBert(BertForSequenceClassification):
    """Reads a value back to the host in forward, as guards against divergence do: forbidden during capture."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if float(out.logits.detach().abs().max()) > 1e9:
            raise FloatingPointError("logits diverged")
        return out


def train_on_gpu(model: torch.nn.Module, settings: Settings, folder, monkeypatch) -> tuple[train.Outcome, list]:
    """75 rows (two full batches and a short one), 2 epochs; returns the outcome and its training_path events."""
    events = []
    monkeypatch.setattr(train.logs, "event", lambda name, message, level=logging.INFO, **fields:
                        events.append((name, level, fields)))
    encoded, held_out = synthetic(), synthetic(rows=20, seed=1)
    outcome = train.train(model, train.TrainData(encoded, held_out, 0), settings, Compute(torch.device("cuda", 0), "fp32"),
                          Checkpointer(folder, "test", False))
    return outcome, [e for e in events if e[0] == "training_path"]


def assert_trained_alike(first: tuple, second: tuple, loss_rel: float, weight_atol: float) -> None:
    """Two (outcome, model) pairs: the same loss per epoch within loss_rel, the same weights within weight_atol."""
    (first_outcome, first_model), (second_outcome, second_model) = first, second
    for a, b in zip(first_outcome.stats, second_outcome.stats):
        assert a.train_loss == pytest.approx(b.train_loss, rel=loss_rel)
    with torch.no_grad():
        for a, b in zip(first_model.parameters(), second_model.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=weight_atol)


def test_graph_path_trains_like_the_eager_path_on_a_gpu(tmp_path, monkeypatch):
    graphs_model, eager_model = tiny_bert(), tiny_bert()
    graphs, path = train_on_gpu(graphs_model, SETTINGS, tmp_path / "graphs", monkeypatch)
    eager, _ = train_on_gpu(eager_model, EAGER, tmp_path / "eager", monkeypatch)
    assert graphs.path == "cuda_graphs" and path[0][2]["widths"], path
    assert eager.path == "eager"
    assert_trained_alike((graphs, graphs_model), (eager, eager_model), loss_rel=1e-3, weight_atol=1e-4)


def test_a_model_that_syncs_in_forward_falls_back_to_eager_and_trains_like_eager(tmp_path, monkeypatch):
    config = tiny_bert().config
    syncing = HostSyncingBert(config).train()
    syncing.load_state_dict(tiny_bert().state_dict())
    fallen_back, path = train_on_gpu(syncing, SETTINGS, tmp_path / "syncing", monkeypatch)
    name, level, fields = path[0]
    assert fallen_back.path == "eager" and level == logging.WARNING
    assert fields["reason"].startswith("CUDA graph capture failed: "), fields
    reference = tiny_bert()
    eager, _ = train_on_gpu(reference, EAGER, tmp_path / "eager", monkeypatch)
    assert_trained_alike((fallen_back, syncing), (eager, reference), loss_rel=1e-4, weight_atol=1e-5)


def test_accumulated_graph_steps_train_like_eager_accumulation_on_a_gpu(tmp_path, monkeypatch):
    """Batches of 8 x 4: a forward-backward graph per width and one clip + AdamW graph, replayed per step."""
    accumulated = dataclasses.replace(SETTINGS, batch_size=8, gradient_accumulation_steps=4)
    graphs_model, eager_model = tiny_bert(), tiny_bert()
    graphs, path = train_on_gpu(graphs_model, accumulated, tmp_path / "graphs", monkeypatch)
    eager, _ = train_on_gpu(eager_model, dataclasses.replace(accumulated, cuda_graphs=False), tmp_path / "eager",
                            monkeypatch)
    assert graphs.path == "cuda_graphs" and path[0][2]["graphs_per_step"].startswith("one per batch"), path
    assert_trained_alike((graphs, graphs_model), (eager, eager_model), loss_rel=1e-3, weight_atol=1e-4)


def test_gradient_checkpointing_trains_eagerly_on_a_gpu_like_without_it(tmp_path, monkeypatch):
    from seqcls.model import enable_gradient_checkpointing

    checkpointed = tiny_bert()
    enable_gradient_checkpointing(checkpointed, "tiny")
    with_it, path = train_on_gpu(checkpointed, dataclasses.replace(SETTINGS, gradient_checkpointing=True),
                                 tmp_path / "gc", monkeypatch)
    assert with_it.path == "eager" and path[0][2]["reason"].startswith("gradient_checkpointing=true")
    reference = tiny_bert()
    without, _ = train_on_gpu(reference, EAGER, tmp_path / "plain", monkeypatch)
    assert_trained_alike((with_it, checkpointed), (without, reference), loss_rel=1e-4, weight_atol=1e-5)


@pytest.mark.parametrize("dropout, precision", [(0.0, "fp32"), (0.1, "fp32"), (0.1, "bf16")])
def test_a_real_capture_passes_its_self_check_with_dropout_and_bf16(dropout, precision):
    """The replay and the eager step draw the same dropout masks from the same seed (graph-safe philox offsets),
    so a faithful capture agrees within SELF_CHECK_RTOL: the default GPU path is not thrown away by its own check."""
    from transformers import get_linear_schedule_with_warmup

    from seqcls.training import steps

    device = torch.device("cuda", 0)
    model = tiny_bert()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = dropout
    model = BertForSequenceClassification(model.config).to(device).train()
    optimizer = steps.make_optimizer(model, SETTINGS.optimizer, device, graphs=True)
    state = steps.TrainingState(model, optimizer, get_linear_schedule_with_warmup(optimizer, 0, 10),
                                torch.amp.GradScaler("cuda", enabled=False))
    graphs = steps.GraphSteps(state, SETTINGS, Compute(device, precision), [8, 32])
    assert set(graphs.checked) == {"loss", "grad_norm"}
    assert max(graphs.checked.values()) <= steps.SELF_CHECK_RTOL
