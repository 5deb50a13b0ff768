"""The CUDA-graph step's math, checked on a CPU: the very body that gets captured, run eagerly on static
buffers, must train like the eager step (short last batch included), and warm-up must not train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from seqcls import data
from seqcls.training import steps
from seqcls.devices import Compute
from seqcls.distributed import World
from modeltools import CPU, SETTINGS, synthetic, tiny_bert
from seqcls.settings import Settings


def run(path: str, precision: str, encoded: data.Encoded, settings: Settings = SETTINGS,
        device: torch.device = CPU) -> tuple[torch.nn.Module, list[float]]:
    """Train `settings.epochs` epochs along one path ("eager", "graph" body run eagerly, or "replay" of
    captured CUDA graphs); returns the model and every step's loss."""
    model = tiny_bert().to(device)
    batches = [rows for epoch in range(1, settings.epochs + 1)
               for rows in data.epoch_order(encoded.lengths, settings.batch_size, settings.seed, epoch, False)]
    optimizer = steps.make_optimizer(model, settings.optimizer, device, graphs=path != "eager")
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * len(batches)), len(batches))
    state = steps.TrainingState(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=False))
    compute = Compute(device, precision)
    if path == "eager":
        step = steps.EagerStep(model, state, settings, compute)
    else:
        step = steps.GraphSteps(state, settings, compute, data.batch_widths(encoded.lengths, batches, 8),
                                capture=path == "replay")
    losses = [float(step([data.collate(encoded, rows, 0, 8)])) for rows in batches]
    return model, losses


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-6), ("bf16", 1e-4)])
def test_graph_step_body_trains_like_the_eager_step(precision, tolerance):
    encoded = synthetic()  # 75 rows: batches of 32, 32 and a short 11, twice
    eager, eager_losses = run("eager", precision, encoded)
    graph, graph_losses = run("graph", precision, encoded)
    assert len(eager_losses) == 6
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-5)
    moved = 0.0
    with torch.no_grad():
        for (name, a), b, start in zip(eager.named_parameters(), graph.parameters(), tiny_bert().parameters()):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=tolerance, err_msg=name)
            moved = max(moved, float((a - start).abs().max()))
    assert moved > 100 * tolerance  # the runs trained, so agreeing is not trivial


def test_a_short_batch_loss_is_the_mean_over_its_real_rows():
    encoded = synthetic(rows=11)
    settings = Settings(batch_size=32, learning_rate=1e-3, epochs=1)
    _, alone = run("graph", "fp32", encoded, settings)
    model = tiny_bert()
    batch = data.collate(encoded, np.arange(11), 0, 8)
    reference = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "weights"}).loss
    assert alone == pytest.approx([float(reference.detach())], rel=1e-6)


def _graph_steps(encoded: data.Encoded) -> tuple[steps.GraphSteps, torch.nn.Module, torch.optim.Optimizer]:
    batches = data.epoch_order(encoded.lengths, 32, 42, 1, False)
    model = tiny_bert()
    optimizer = steps.make_optimizer(model, SETTINGS.optimizer, CPU, graphs=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10)
    widths = data.batch_widths(encoded.lengths, batches, 8)
    state = steps.TrainingState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    return steps.GraphSteps(state, SETTINGS, Compute(CPU, "fp32"), widths, capture=False), model, optimizer


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        tensors += [v.clone() for v in optimizer.state[p].values() if torch.is_tensor(v)]
    return tensors


@pytest.mark.parametrize("trained_steps", [0, 2])
def test_warm_up_changes_neither_weights_nor_optimizer_state_nor_rng(trained_steps):
    """Two identical runs, one warmed up after `trained_steps` (0: AdamW state not even created yet)."""
    encoded = synthetic()
    batches = data.epoch_order(encoded.lengths, 32, 42, 1, False)
    plain, plain_model, plain_optimizer = _graph_steps(encoded)
    warmed, warmed_model, warmed_optimizer = _graph_steps(encoded)
    for rows in batches[:trained_steps]:
        plain([data.collate(encoded, rows, 0, 8)])
        warmed([data.collate(encoded, rows, 0, 8)])
    rng = torch.get_rng_state()
    before = _state(warmed_model, warmed_optimizer)
    warmed.warm_up()
    assert torch.equal(torch.get_rng_state(), rng)
    if trained_steps:
        assert all(torch.equal(a, b) for a, b in zip(before, _state(warmed_model, warmed_optimizer), strict=True))
    for rows in batches[trained_steps:]:
        plain([data.collate(encoded, rows, 0, 8)])
        warmed([data.collate(encoded, rows, 0, 8)])
    a, b = _state(plain_model, plain_optimizer), _state(warmed_model, warmed_optimizer)
    assert len(a) == len(b) > len(list(plain_model.parameters()))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_batch_widths_are_exactly_the_widths_collate_produces():
    encoded = synthetic(rows=1000)
    batches = [rows for epoch in (1, 2) for rows in data.epoch_order(encoded.lengths, 32, 42, epoch, False)]
    produced = {data.collate(encoded, rows, 0, 8)["input_ids"].shape[1] for rows in batches}
    assert data.batch_widths(encoded.lengths, batches, 8) == sorted(produced)
    assert all(width % 8 == 0 for width in produced)


def test_graphs_are_used_only_where_they_can_be():
    cuda = torch.device("cuda", 0)
    assert steps.graphs_unavailable(Settings(), Compute(CPU, "fp32", World())) == "device is cpu"
    assert steps.graphs_unavailable(Settings(), Compute(cuda, "bf16", World())) is None
    assert "cuda_graphs=false" in steps.graphs_unavailable(Settings(cuda_graphs=False), Compute(cuda, "bf16", World()))
    assert "fp16" in steps.graphs_unavailable(Settings(), Compute(cuda, "fp16", World()))
    assert "2 processes" in steps.graphs_unavailable(Settings(), Compute(cuda, "bf16", World(rank=0, size=2, local_rank=0)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_replayed_cuda_graphs_train_like_the_same_body_run_eagerly(precision):
    cuda = torch.device("cuda", 0)
    encoded = synthetic()
    body, body_losses = run("graph", precision, encoded, device=cuda)
    replayed, replay_losses = run("replay", precision, encoded, device=cuda)
    np.testing.assert_allclose(replay_losses, body_losses, rtol=1e-3)
    with torch.no_grad():
        for (name, a), b in zip(body.named_parameters(), replayed.parameters()):
            np.testing.assert_allclose(b.cpu().numpy(), a.cpu().numpy(), rtol=0, atol=1e-4, err_msg=name)


def test_auto_precision_is_bf16_only_on_cpus_that_compute_it_natively(tmp_path, monkeypatch):
    from seqcls import devices

    native, emulated = tmp_path / "native", tmp_path / "emulated"
    native.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    emulated.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert devices.cpu_has_native_bf16(native) and not devices.cpu_has_native_bf16(emulated)
    assert not devices.cpu_has_native_bf16(tmp_path / "absent")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.pick_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.pick_precision("auto", CPU) == "bf16"
    assert devices.pick_precision("fp32", CPU) == "fp32"


class FlakyForward(Exception):
    """Not a RuntimeError: what a library's assertion or type check inside forward raises."""


def _fail_while_warming_up(graphs: steps.GraphSteps, error: BaseException) -> None:
    """Warm-up's first width runs one step, then the second raises: the weights have moved by then."""
    body, calls = graphs._step, []

    def step(width: int) -> None:
        calls.append(width)
        if len(calls) > 1:
            raise error
        body(width)

    graphs._step = step
    graphs.warm_up()


@pytest.mark.parametrize("stage, error, reason", [
    ("capture", RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail"),
     "RuntimeError: CUDA error: operation not permitted when stream is capturing"),
    ("capture", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ("warm_up", FlakyForward("data-dependent branch"), "FlakyForward: data-dependent branch"),
    ("warm_up", AssertionError(), "AssertionError"),
    ("warm_up", NotImplementedError("aten::_foo is not implemented for capture"),
     "NotImplementedError: aten::_foo is not implemented for capture"),
])
def test_a_failed_capture_falls_back_to_eager_steps_with_a_warning(tmp_path, monkeypatch, stage, error, reason):
    """Where warm-up or capture fails with any exception (a model that syncs in forward, out of memory, a
    library's assertion), the job trains eagerly from the unchanged weights and says why; simulated on a CPU."""
    import logging

    from seqcls.training import train
    from seqcls.training.checkpoint import Checkpointer

    encoded, held_out = synthetic(), synthetic(rows=20, seed=1)
    settings = Settings(epochs=1, select_best="none", learning_rate=1e-3)

    def train_tiny(folder: str) -> tuple[torch.nn.Module, train.Outcome]:
        model = tiny_bert()
        outcome = train.train(model, train.TrainData(encoded, held_out, 0), settings, Compute(CPU, "fp32"),
                              Checkpointer(tmp_path / folder, "test", False))
        return model, outcome

    reference, plain = train_tiny("plain")

    def graphs_that_fail(state, settings, compute, widths):
        graphs = steps.GraphSteps(state, settings, compute, widths, capture=False)
        if stage == "warm_up":
            _fail_while_warming_up(graphs, error)
        graphs.warm_up()
        raise error

    events = []
    monkeypatch.setattr(train, "graphs_unavailable", lambda *args: None)
    monkeypatch.setattr(train, "GraphSteps", graphs_that_fail)
    monkeypatch.setattr(train.logs, "event", lambda name, message, level=logging.INFO, **fields:
                        events.append((name, level, fields)))
    fallen_back, outcome = train_tiny("fallback")
    name, level, fields = next(e for e in events if e[0] == "training_path")
    assert level == logging.WARNING and fields["path"] == "eager" and outcome.path == "eager"
    assert fields["reason"] == f"CUDA graph capture failed: {reason}"
    assert outcome.stats[0].train_loss == plain.stats[0].train_loss  # warm-up's gradients were cleared too
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), fallen_back.parameters()))


def test_class_weighted_steps_agree_and_scale_each_rows_loss():
    """class_weights travel as per-row weights: both paths weight the same rows the same way (short batch
    included), and a step's loss is the mean over rows of (label weight x cross-entropy), as Keras weights rows."""
    encoded = synthetic()
    class_weights = np.array([0.5, 1.0, 3.0], dtype=np.float32)
    encoded.weights = class_weights[encoded.labels]
    eager_model, eager_losses = run("eager", "fp32", encoded)
    graph_model, graph_losses = run("graph", "fp32", encoded)
    assert np.allclose(eager_losses, graph_losses, atol=1e-6)
    for (name, a), b in zip(eager_model.state_dict().items(), graph_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    unweighted = run("eager", "fp32", synthetic())[1]
    assert not np.allclose(eager_losses, unweighted, atol=1e-3)  # the weights changed training

    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 2, 0])
    rows = torch.from_numpy(class_weights)[labels] / 5
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(steps.weighted_loss(logits, labels, rows), (per_row * torch.from_numpy(class_weights)[labels]).mean())


class _Replayed:
    """Stands in for a captured graph on a CPU: `replay` runs the step body eagerly, then `skew` (a wrong capture)."""

    def __init__(self, body, skew=lambda: None) -> None:
        self.body, self.skew = body, skew

    def replay(self) -> None:
        self.body()
        self.skew()


def _graphs_replaying(settings: Settings, skew=lambda graphs: None, model=None) -> steps.GraphSteps:
    model = model or tiny_bert()
    optimizer = steps.make_optimizer(model, settings.optimizer, CPU, graphs=True)
    state = steps.TrainingState(model, optimizer, get_linear_schedule_with_warmup(optimizer, 0, 10),
                                torch.amp.GradScaler("cpu", enabled=False))
    graphs = steps.GraphSteps(state, settings, Compute(CPU, "fp32"), [8, 16], capture=False)
    graphs.warm_up()
    graphs.graphs = {w: _Replayed(lambda w=w: graphs._step(w), lambda: skew(graphs)) for w in graphs.inputs}
    return graphs


def test_the_replay_self_check_passes_a_faithful_capture_and_leaves_the_weights_alone():
    model = tiny_bert()
    before = [p.detach().clone() for p in model.parameters()]
    graphs = _graphs_replaying(SETTINGS, model=model)
    graphs.check_replay()
    assert graphs.checked == {"loss": 0.0, "grad_norm": 0.0}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("buffer, factor", [("loss", 1.01), ("grad_norm", 0.9), ("loss", float("nan"))])
def test_a_replay_that_computes_other_numbers_is_caught_and_named(buffer, factor):
    """A capture that runs but computes wrongly (simulated: the replay scales one of its outputs) raises
    ReplayMismatch naming the width and the quantity; the weights are put back all the same."""
    model = tiny_bert()
    before = [p.detach().clone() for p in model.parameters()]
    graphs = _graphs_replaying(SETTINGS, lambda g: getattr(g, buffer).mul_(factor), model=model)
    with pytest.raises(steps.ReplayMismatch, match=rf"width 16: {buffer} .* replayed vs .* eager"):
        graphs.check_replay()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_failed_self_check_trains_eagerly_with_a_warning(tmp_path, monkeypatch):
    """On a mismatch the job says so and trains the same weights as a plain eager run (simulated on a CPU)."""
    import logging

    from seqcls.training import train
    from seqcls.training.checkpoint import Checkpointer

    encoded, held_out = synthetic(), synthetic(rows=20, seed=1)
    settings = Settings(epochs=1, select_best="none", learning_rate=1e-3)

    def train_tiny(folder: str) -> tuple[torch.nn.Module, train.Outcome]:
        model = tiny_bert()
        outcome = train.train(model, train.TrainData(encoded, held_out, 0), settings, Compute(CPU, "fp32"),
                              Checkpointer(tmp_path / folder, "test", False))
        return model, outcome

    reference, plain = train_tiny("plain")

    def wrong_graphs(state, settings, compute, widths):
        graphs = steps.GraphSteps(state, settings, compute, widths, capture=False)
        graphs.warm_up()
        graphs.graphs = {w: _Replayed(lambda w=w: graphs._step(w), lambda: graphs.loss.mul_(2)) for w in widths}
        graphs.check_replay()
        return graphs

    events = []
    monkeypatch.setattr(train, "graphs_unavailable", lambda *args: None)
    monkeypatch.setattr(train, "GraphSteps", wrong_graphs)
    monkeypatch.setattr(train.logs, "event", lambda name, message, level=logging.INFO, **fields:
                        events.append((name, level, fields)))
    fallen_back, outcome = train_tiny("fallback")
    name, level, fields = next(e for e in events if e[0] == "training_path")
    assert level == logging.WARNING and fields["path"] == "eager" and outcome.path == "eager"
    assert fields["reason"].startswith("CUDA graph self-check failed: ReplayMismatch: width ")
    assert "loss" in fields["reason"] and "relative difference" in fields["reason"]
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), fallen_back.parameters()))
