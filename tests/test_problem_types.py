"""problem_type, unit by unit: the losses and metrics against scikit-learn and scipy, the per-label
threshold search, the objective per type, the settings checks, and labels read per type and format."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, log_loss, mean_absolute_error, mean_squared_error, precision_recall_fscore_support

from seqcls import data, evaluate, problem_types, settings
from seqcls.errors import DataError, SettingsError
from seqcls.losses import row_losses

RNG = np.random.default_rng(7)


def test_single_label_row_losses_are_sklearns_log_loss_per_row():
    logits = torch.from_numpy(RNG.normal(size=(20, 3)).astype(np.float32))
    labels = torch.from_numpy(RNG.integers(0, 3, size=20))
    rows = row_losses(logits, labels, "single_label")
    probs = torch.softmax(logits.double(), dim=1).numpy()
    expected = [log_loss([y], [p], labels=[0, 1, 2]) for y, p in zip(labels.numpy(), probs)]
    assert rows.dtype == torch.float32 and rows.shape == (20,)
    np.testing.assert_allclose(rows.numpy(), expected, rtol=1e-5)


def test_multi_label_row_losses_are_the_mean_over_labels_of_sklearns_log_loss():
    logits = RNG.normal(size=(12, 4)).astype(np.float32)
    hot = (RNG.random((12, 4)) < 0.4).astype(np.float32)
    rows = row_losses(torch.from_numpy(logits), torch.from_numpy(hot), "multi_label").numpy()
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = [np.mean([log_loss([y], [p], labels=[0, 1]) for y, p in zip(hot[i], probs[i])]) for i in range(12)]
    assert rows.shape == (12,)
    np.testing.assert_allclose(rows, expected, rtol=1e-5)
    # The mean over rows is sklearn's log loss of every (row, label) decision taken together.
    assert rows.mean() == pytest.approx(log_loss(hot.ravel(), probs.ravel()), rel=1e-5)


def test_regression_row_losses_are_squared_errors_whose_mean_is_sklearns_mse():
    scores = RNG.normal(size=(15, 1)).astype(np.float32)
    targets = RNG.normal(size=15).astype(np.float32)
    rows = row_losses(torch.from_numpy(scores), torch.from_numpy(targets), "regression").numpy()
    assert rows.shape == (15,)
    assert rows.mean() == pytest.approx(mean_squared_error(targets, scores[:, 0]), rel=1e-5)
    np.testing.assert_allclose(rows, (scores[:, 0] - targets) ** 2, rtol=1e-6)


def test_multi_label_metrics_match_sklearn_on_multi_hot_arrays():
    truth = (RNG.random((40, 3)) < 0.5).astype(np.int64)
    predicted = (RNG.random((40, 3)) < 0.5).astype(np.int64)
    got = evaluate.multi_label_metrics(truth, predicted, ["a", "b", "c"])
    assert got["f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert got["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert got["subset_accuracy"] == pytest.approx(np.mean((truth == predicted).all(axis=1)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, average=None)
    assert [got["per_label"][k]["f1"] for k in "abc"] == pytest.approx(list(f1))
    assert [got["per_label"][k]["precision"] for k in "abc"] == pytest.approx(list(precision))
    assert [got["per_label"][k]["recall"] for k in "abc"] == pytest.approx(list(recall))
    assert [got["per_label"][k]["support"] for k in "abc"] == list(support) == list(truth.sum(axis=0))


def test_regression_metrics_match_scipy_and_sklearn():
    targets = RNG.normal(size=50)
    scores = targets + RNG.normal(scale=0.5, size=50)
    got = evaluate.regression_metrics(targets, scores)
    assert got["pearson"] == pytest.approx(pearsonr(targets, scores)[0])
    assert got["spearman"] == pytest.approx(spearmanr(targets, scores)[0])
    assert got["mse"] == pytest.approx(mean_squared_error(targets, scores))
    assert got["mae"] == pytest.approx(mean_absolute_error(targets, scores))
    flat = evaluate.regression_metrics(targets, np.full(50, 0.3))
    assert np.isnan(flat["pearson"]) and np.isnan(flat["spearman"]) and flat["mse"] > 0


@pytest.mark.parametrize("seed", range(20))
def test_each_labels_threshold_has_the_best_f1_any_cut_gives(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random(60) < 0.3).astype(np.int64)
    scores = np.round(truth * 0.2 + rng.random(60) * 0.8, 1)  # few distinct scores: ties must be handled
    cut = evaluate.best_f1_threshold(truth, scores)
    best = max(f1_score(truth, scores >= t, zero_division=0) for t in np.unique(scores))
    assert f1_score(truth, scores >= cut) == pytest.approx(best)
    assert cut in scores


def test_a_label_without_positives_keeps_the_default_threshold():
    assert evaluate.best_f1_threshold(np.zeros(10), RNG.random(10)) == evaluate.DEFAULT_THRESHOLD == 0.5


def test_multi_label_predictions_use_the_saved_thresholds():
    logits = np.log(np.array([[0.3, 0.7], [0.6, 0.2]]) / (1 - np.array([[0.3, 0.7], [0.6, 0.2]]))).astype(np.float32)
    default = evaluate.Predictions(logits, 0.0, "multi_label")
    tuned = evaluate.Predictions(logits, 0.0, "multi_label", np.array([0.25, 0.8], dtype=np.float32))
    assert default.predicted.tolist() == [[0, 1], [1, 0]]
    assert tuned.predicted.tolist() == [[1, 0], [1, 0]]


@pytest.mark.parametrize("select_best, problem_type, expected", [
    ("none", "single_label", ("val_mcc", "MAXIMIZE")), ("none", "multi_label", ("val_f1_micro", "MAXIMIZE")),
    ("none", "regression", ("val_pearson", "MAXIMIZE")), ("f1_micro", "multi_label", ("val_f1_micro", "MAXIMIZE")),
    ("pearson", "regression", ("val_pearson", "MAXIMIZE")), ("mse", "regression", ("val_mse", "MINIMIZE")),
    ("loss", "regression", ("val_loss", "MINIMIZE")), ("loss", "multi_label", ("val_loss", "MINIMIZE")),
])
def test_the_objective_follows_the_problem_type(select_best, problem_type, expected):
    assert problem_types.objective(select_best, problem_type) == expected
    field, goal = expected
    assert problem_types.better(select_best, 0.5, 0.4) == (goal == "MAXIMIZE")


def test_epoch_stats_rows_hold_only_their_problem_types_fields():
    single = evaluate.EpochStats(epoch=1, train_loss=0.5, val_loss=0.4, val_accuracy=0.8, val_mcc=0.3, val_f1=0.7)
    assert list(single.row()) == ["epoch", "train_loss", "val_loss", "val_accuracy", "val_mcc", "val_f1",
                                  "train_seconds", "val_seconds"]
    regression = evaluate.EpochStats(epoch=1, train_loss=0.5, val_loss=0.4, val_pearson=0.9, val_spearman=0.8,
                                     val_mse=0.4, val_mae=0.5)
    assert evaluate.EpochStats(**regression.row()) == regression  # what a checkpoint stores and restores
    assert "val_mcc" not in regression.row()


@pytest.mark.parametrize("values, message", [
    ({"select_best": "mcc", "problem_type": "regression"},
     "select_best=mcc needs problem_type=single_label; with problem_type=regression use one of none, loss, pearson, mse"),
    ({"select_best": "f1_micro"}, "select_best=f1_micro needs problem_type=multi_label"),
    ({"select_best": "pearson", "problem_type": "multi_label"}, "select_best=pearson needs problem_type=regression"),
    ({"problem_type": "multiclass"}, "problem_type='multiclass' is out of range: must be one of single_label, multi_label"),
    ({"label_delimiter": ""}, "label_delimiter='' is out of range: must not be empty"),
    ({"problem_type": "regression", "class_weights": "balanced"},
     "class_weights='balanced' is out of range: needs problem_type=single_label"),
    ({"problem_type": "multi_label", "decision_threshold": "auto"},
     "decision_threshold='auto' is out of range: needs problem_type=single_label"),
])
def test_settings_refuse_metrics_of_another_problem_type(values, message):
    with pytest.raises(SettingsError, match=message):
        settings.resolve([("cli", values)])


def _labels(tmp_path: Path, name: str, content: str, **values: str) -> data.Channel:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return data.read_channel(path, "train", settings.resolve([("cli", values)]).settings.reading, explicit=set(values))


def test_multi_label_cells_read_alike_from_csv_jsonl_and_parquet(tmp_path):
    rows = [("a cat", ["pet", "small"]), ("a lion", ["big"]), ("a rock", [])]
    csv_channel = _labels(tmp_path, "t.csv", "text,labels\n" + "".join(f'{t},"{",".join(tags)}"\n' for t, tags in rows),
                          problem_type="multi_label")
    jsonl_channel = _labels(tmp_path, "t.jsonl", "".join(json.dumps({"text": t, "labels": tags}) + "\n" for t, tags in rows),
                            problem_type="multi_label")
    pd.DataFrame({"text": [t for t, _ in rows], "labels": [tags for _, tags in rows]}).to_parquet(tmp_path / "t.parquet")
    parquet_channel = data.read_channel(tmp_path / "t.parquet", "train",
                                        settings.resolve([("cli", {"problem_type": "multi_label"})]).settings.reading,
                                        explicit=())
    expected = [("pet", "small"), ("big",), ()]
    for channel in (csv_channel, jsonl_channel, parquet_channel):
        assert channel.frame[data.LABEL].tolist() == expected
    label_map = data.LabelMap.from_labels(csv_channel.frame[data.LABEL], "multi_label")
    assert label_map.labels == ["big", "pet", "small"]
    assert label_map.encode(csv_channel).tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert label_map.encode(csv_channel).dtype == np.float32


def test_the_label_delimiter_setting_splits_cells(tmp_path):
    channel = _labels(tmp_path, "t.csv", "text,labels\nx,a|b\ny,b\n", problem_type="multi_label", label_delimiter="|")
    assert channel.frame[data.LABEL].tolist() == [("a", "b"), ("b",)]


def test_regression_targets_are_float32_as_given(tmp_path):
    channel = _labels(tmp_path, "t.csv", "text,label\nx,1.25\ny,-3\nz,1e2\n", problem_type="regression")
    label_map = data.LabelMap.from_labels(channel.frame[data.LABEL], "regression")
    assert label_map.labels == ["score"]
    encoded = label_map.encode(channel)
    assert encoded.dtype == np.float32 and encoded.tolist() == [1.25, -3.0, 100.0]


def test_labels_of_the_wrong_kind_name_the_problem_type(tmp_path):
    with pytest.raises(DataError, match="use problem_type=regression"):
        _labels(tmp_path, "a.csv", "text,label\nx,0.5\ny,1\n")
    with pytest.raises(DataError, match=r"row 2 has label 'good'.*problem_type=regression needs a finite number"):
        _labels(tmp_path, "b.csv", "text,label\nx,0.5\ny,good\n", problem_type="regression")


def test_an_unknown_multi_label_tag_in_test_is_named(tmp_path):
    train = _labels(tmp_path, "train.csv", "text,labels\nx,\"a,b\"\ny,b\n", problem_type="multi_label")
    test = _labels(tmp_path, "test.csv", "text,labels\nz,\"b,c\"\n", problem_type="multi_label")
    label_map = data.LabelMap.from_labels(train.frame[data.LABEL], "multi_label")
    with pytest.raises(DataError, match=r"has label\(s\) 'c' not seen in training"):
        label_map.check_known(test)


def _tiny_bert(num_labels: int, problem_type: str) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        num_labels=num_labels, problem_type=problem_types.TYPES[problem_type].hf_name)
    return BertForSequenceClassification(config).train()


def _encoded(problem_type: str, rows: int = 75) -> data.Encoded:
    from modeltools import synthetic

    encoded = synthetic(rows)
    rng = np.random.default_rng(3)
    if problem_type == "multi_label":
        encoded.labels = (rng.random((rows, 3)) < 0.4).astype(np.float32)
    else:
        encoded.labels = rng.normal(size=rows).astype(np.float32)
    return encoded


def _train(path: str, problem_type: str, encoded: data.Encoded) -> tuple[torch.nn.Module, list[float]]:
    """Two epochs along one path (as tests/test_steps.py's `run`), for a multi_label or regression model."""
    from transformers import get_linear_schedule_with_warmup

    from seqcls.training import steps
    from seqcls.devices import Compute
    from modeltools import SETTINGS

    run_settings = dataclasses.replace(SETTINGS, problem_type=problem_type)
    model = _tiny_bert(3 if problem_type == "multi_label" else 1, problem_type)
    batches = [rows for epoch in (1, 2) for rows in data.epoch_order(encoded.lengths, 32, 42, epoch, False)]
    optimizer = steps.make_optimizer(model, run_settings.optimizer, torch.device("cpu"), graphs=path == "graph")
    scheduler = get_linear_schedule_with_warmup(optimizer, 1, len(batches))
    state = steps.TrainingState(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    compute = Compute(torch.device("cpu"), "fp32")
    step = (steps.EagerStep(model, state, run_settings, compute) if path == "eager" else
            steps.GraphSteps(state, run_settings, compute, data.batch_widths(encoded.lengths, batches, 8), capture=False))
    return model, [float(step([data.collate(encoded, rows, 0, 8)])) for rows in batches]


@pytest.mark.parametrize("problem_type", ["multi_label", "regression"])
def test_the_graph_step_body_trains_like_the_eager_step_for(problem_type):
    """The graph path's static label buffer holds multi-hot rows or targets (a short last batch included)."""
    encoded = _encoded(problem_type)
    eager, eager_losses = _train("eager", problem_type, encoded)
    graph, graph_losses = _train("graph", problem_type, encoded)
    assert len(eager_losses) == 6
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-5)
    start = _tiny_bert(3 if problem_type == "multi_label" else 1, problem_type)
    with torch.no_grad():
        for (name, a), b in zip(eager.named_parameters(), graph.parameters()):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6, err_msg=name)
        assert max(float((a - s).abs().max()) for a, s in zip(eager.parameters(), start.parameters())) > 1e-3


@pytest.mark.parametrize("problem_type", ["single_label", "multi_label", "regression"])
def test_the_mean_row_loss_is_the_loss_transformers_computes_for_the_configs_problem_type(problem_type):
    """What a consumer fine-tuning the saved model with transformers would optimise is what we optimised."""
    encoded = _encoded(problem_type, rows=16)
    if problem_type == "single_label":
        encoded.labels = np.random.default_rng(4).integers(0, 3, size=16)
    model = _tiny_bert(1 if problem_type == "regression" else 3, problem_type).eval()
    batch = {k: torch.from_numpy(v) for k, v in data.collate(encoded, np.arange(16), 0, 1).items()}
    with torch.no_grad():
        out = model(**batch)
        ours = row_losses(out.logits, batch["labels"], problem_type).mean()
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-6)


@pytest.mark.parametrize("problem_type, outputs", [("multi_label", 3), ("regression", 1)])
@pytest.mark.parametrize("batch", [32, 11, 1])
def test_sharded_row_losses_give_the_global_batch_gradient(problem_type, outputs, batch):
    """As tests/test_distributed.py checks for cross-entropy: each rank's mean row loss times its share,
    averaged over ranks as DDP does, has the one-process gradient, for multi-hot rows and targets too."""
    from seqcls.distributed import World, shard

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, outputs)
    x = torch.randn(batch, 4)
    y = (torch.rand(batch, outputs) < 0.5).float() if problem_type == "multi_label" else torch.randn(batch)

    def grad(rows: np.ndarray, share: float) -> torch.Tensor:
        layer.zero_grad()
        (row_losses(layer(x[rows]), y[rows], problem_type).mean() * share).backward()
        return layer.weight.grad.clone()

    whole = grad(np.arange(batch), 1.0)
    averaged = sum(grad(*shard(np.arange(batch), World(rank, 4))) for rank in range(4)) / 4
    assert torch.allclose(averaged, whole, atol=1e-6)


def test_a_classifier_fine_tuned_for_other_labels_starts_with_a_fresh_head(tmp_path, capsys) -> None:
    """Fine-tuning a 2-label checkpoint for 3 labels: transformers refuses the mismatched head (RuntimeError, which
    used to end the job as an internal error); the encoder is kept, the head starts afresh, and a warning says so."""
    from jobtools import build_tiny_model, minilm_folder
    from seqcls import logs, model

    source = build_tiny_model(tmp_path / "two-labels", minilm_folder())
    logs.setup()
    config = model.load_config(str(source), data.LabelMap(["a", "b", "c"]))
    loaded = model.load_model(str(source), config, seed=0)
    assert loaded.classifier.out_features == 3
    from safetensors.torch import load_file

    saved = load_file(str(source / "model.safetensors"))
    assert torch.equal(loaded.bert.embeddings.word_embeddings.weight, saved["bert.embeddings.word_embeddings.weight"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["outputs"] for e in events if e.get("event") == "classifier_head_reset"] == [3]
