"""The promotion gate's decision and settings: directions, tolerance, NaN and missing values, bad input.

The end-to-end gate (real jobs, real storage servers, racing runs) is in tests/test_promotion_publish.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from seqcls import evaluate, problem_types, promotion, settings
from seqcls.errors import SettingsError
from seqcls.records import Comparison, Decision, Metrics
from seqcls.storage import Current


def test_higher_is_better_promotes_at_least_as_good_and_keeps_worse() -> None:
    assert promotion.decide(promotion.Rule("test_mcc", 0.0), 0.31, "old", 0.30).promoted
    assert promotion.decide(promotion.Rule("test_mcc", 0.0), 0.30, "old", 0.30).promoted  # equal counts as at least as good
    kept = promotion.decide(promotion.Rule("test_mcc", 0.0), 0.29, "old", 0.30)
    assert not kept.promoted
    assert kept.reason == "test_mcc 0.2900 is below run old's 0.3000 - tolerance 0"


def test_lower_is_better_for_loss_mse_and_mae() -> None:
    for metric in ("test_loss", "validation_loss", "test_mse", "validation_mae"):
        assert promotion.decide(promotion.Rule(metric, 0.0), 0.40, "old", 0.50).promoted, metric
        assert not promotion.decide(promotion.Rule(metric, 0.0), 0.60, "old", 0.50).promoted, metric
    for metric in ("test_pearson", "validation_f1_micro", "test_subset_accuracy", "test_spearman"):
        assert not promotion.decide(promotion.Rule(metric, 0.0), 0.40, "old", 0.50).promoted, metric


def test_tolerance_allows_that_much_worse_and_no_more() -> None:
    assert promotion.decide(promotion.Rule("test_mcc", 0.025), 0.28, "old", 0.30).promoted
    assert not promotion.decide(promotion.Rule("test_mcc", 0.025), 0.27, "old", 0.30).promoted
    assert promotion.decide(promotion.Rule("test_loss", 0.025), 0.52, "old", 0.50).promoted
    decision = promotion.decide(promotion.Rule("test_loss", 0.025), 0.53, "old", 0.50)
    assert not decision.promoted and decision.reason == "test_loss 0.5300 is above run old's 0.5000 + tolerance 0.025"


def test_no_current_run_promotes_and_an_unusable_current_value_is_beaten_by_any_number() -> None:
    first = promotion.decide(promotion.Rule("test_mcc", 0.0), -0.5, None, None)
    assert first.promoted and "no latest.json yet" in first.reason
    missing = promotion.decide(promotion.Rule("test_mcc", 0.0), -0.5, "old", None)
    assert missing.promoted and missing.reason.startswith("current run old has no test_mcc")
    nan = promotion.decide(promotion.Rule("test_pearson", 0.0), 0.1, "old", math.nan)
    assert nan.promoted and "has a NaN test_pearson" in nan.reason


def test_a_nan_or_missing_new_value_is_never_promoted() -> None:
    for current_run, current in ((None, None), ("old", 0.2), ("old", math.nan), ("old", None)):
        assert not promotion.decide(promotion.Rule("test_pearson", 10.0), math.nan, current_run, current).promoted
        assert not promotion.decide(promotion.Rule("test_pearson", 10.0), None, current_run, current).promoted


def test_the_record_has_the_contract_fields_in_order() -> None:
    record = promotion.decide(promotion.Rule("validation_loss", 0.0), 0.4, "old", 0.5).record()
    assert list(record) == ["promoted", "promoted_flag", "metric", "value", "current_value", "current_run_id",
                            "tolerance", "reason", "rule", "current_published_value", "comparison", "incomparable"]
    assert record["promoted"] is True and record["promoted_flag"] == 1
    assert promotion.decide(promotion.Rule("validation_loss", 0.0), 0.6, "old", 0.5).record()["promoted_flag"] == 0


def test_metric_values_are_read_where_metrics_json_keeps_them() -> None:
    record = Metrics.from_json({"test": {"mcc": 0.25, "loss": 0.6, "confusion_matrix": [[1, 2], [3, 4]]},
                                "validation": {"val_mcc": 0.3, "val_loss": 0.55}, "best_epoch": 2})
    assert promotion.metric_value(record, "test_mcc") == 0.25
    assert promotion.metric_value(record, "validation_mcc") == 0.3
    assert promotion.metric_value(record, "validation_loss") == 0.55
    assert promotion.metric_value(record, "test_f1") is None
    assert promotion.metric_value(Metrics.from_json({"validation": {}}), "test_mcc") is None  # no test split
    assert promotion.metric_value(None, "test_mcc") is None
    assert math.isnan(promotion.metric_value(Metrics.from_json({"test": {"pearson": math.nan}}), "test_pearson"))
    # a published champion's file from a foreign or broken writer: a field of the wrong type counts as missing
    assert promotion.metric_value(Metrics.from_json({"test": [0.9], "validation": {"val_mcc": "0.9"}}), "test_mcc") is None
    assert promotion.metric_value(Metrics.from_json({"validation": {"val_mcc": True}}), "validation_mcc") is None


def _recorded_names(problem_type: str) -> set[str]:
    """promote_if names as the real metric functions record them (test: evaluate's dicts; validation: epoch_end's)."""
    labels = np.array([0, 1, 1, 0, 1, 0])
    if problem_type == "single_label":
        test = evaluate.classification_metrics(labels, np.array([0, 1, 0, 0, 1, 1]), 2)
        validation = evaluate.epoch_validation(labels, evaluate.Predictions(np.eye(2)[labels].astype(np.float32), 0.5), 2)
    elif problem_type == "multi_label":
        multi = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
        test = evaluate.multi_label_metrics(multi, multi[::-1], ["a", "b"])
        validation = evaluate.epoch_validation(multi, evaluate.Predictions(multi.astype(np.float32), 0.5, "multi_label"), 2)
    else:
        scores = np.array([0.1, 0.5, 0.2, 0.9])
        test = evaluate.regression_metrics(np.array([0.0, 0.4, 0.3, 1.0]), scores)
        validation = evaluate.epoch_validation(np.array([0.0, 0.4, 0.3, 1.0]),
                                               evaluate.Predictions(scores[:, None].astype(np.float32), 0.5, "regression"), 1)
    test["loss"] = 0.5  # evaluate.test_metrics adds it
    return ({f"test_{k}" for k, v in test.items() if isinstance(v, float)}
            | {f"validation_{k.removeprefix('val_')}" for k in validation})


@pytest.mark.parametrize("problem_type", list(problem_types.TYPES))
def test_every_allowed_metric_is_one_the_problem_type_records(problem_type: str) -> None:
    assert set(problem_types.promotion_metrics(problem_type)) == _recorded_names(problem_type)


def _resolve(**values: str) -> settings.Settings:
    return settings.resolve([("cli", values)]).settings


@pytest.mark.parametrize("values, message", [
    ({"promote_if": "test_pearson", "output_uri": "s3://models-bucket/p"},
     "must be none or a metric of problem_type=single_label: test_mcc, test_accuracy"),
    ({"promote_if": "mcc", "output_uri": "s3://models-bucket/p"}, "must be none or a metric"),
    ({"promote_if": "test_mcc", "output_uri": "s3://models-bucket/p", "problem_type": "regression"},
     "problem_type=regression: test_pearson"),
    ({"promote_if": "test_mcc"}, "needs output_uri"),
    ({"promote_if": "test_mcc", "output_uri": "gs://models-bucket/p", "publish_latest": "false"}, "needs publish_latest=true"),
    ({"promotion_file": "/tmp/outcome"}, "promotion_file='/tmp/outcome' is out of range: needs promote_if"),
    ({"promote_if": "test_mcc", "output_uri": "s3://models-bucket/p", "promote_tolerance": "-0.1"}, "must be >= 0"),
    ({"promote_if": "test_mcc", "output_uri": "s3://models-bucket/p", "promote_tolerance": "inf"}, "expected a number"),
])
def test_bad_gate_settings_are_clear_settings_errors(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _resolve(**values)


def test_good_gate_settings_resolve() -> None:
    resolved = _resolve(promote_if="validation_f1_micro", output_uri="/models", problem_type="multi_label",
                        promote_tolerance="0.01", promotion_file="/tmp/kfp/outcome")
    assert (resolved.promote_if, resolved.promote_tolerance) == ("validation_f1_micro", 0.01)
    # the gate reads them as one group, under its own names (the flat names stay the CLI's and the platforms')
    assert resolved.promotion == settings.Promotion(metric="validation_f1_micro", tolerance=0.01, rule="not_worse",
                                                    confidence=0.95, incomparable="keep", output_uri="/models",
                                                    marker_file="/tmp/kfp/outcome", seed=42)


def test_a_test_metric_needs_a_test_channel(tmp_path) -> None:
    gated = _resolve(promote_if="test_mcc", output_uri="/models")
    with pytest.raises(SettingsError, match="promote_if=test_mcc needs a test channel.*validation_mcc"):
        promotion.check_channels(gated.promote_if, {"train": tmp_path})
    promotion.check_channels(gated.promote_if, {"train": tmp_path, "test": tmp_path})
    promotion.check_channels(_resolve(promote_if="validation_mcc", output_uri="/models").promote_if, {"train": tmp_path})


def test_every_gated_metric_has_the_range_its_values_lie_in() -> None:
    names = {name.partition("_")[2] for kind in problem_types.TYPES for name in problem_types.promotion_metrics(kind)}
    assert names == set(problem_types.METRIC_RANGES)
    assert {problem_types.METRIC_RANGES[name] for name in ("mcc", "pearson", "spearman")} == {(-1.0, 1.0)}
    assert {problem_types.METRIC_RANGES[name] for name in ("loss", "mse", "mae")} == {(0.0, math.inf)}
    assert {problem_types.METRIC_RANGES[name] for name in ("accuracy", "f1_micro", "subset_accuracy")} == {(0.0, 1.0)}


def _gate_against(tmp_path, champion: bytes | None, limit_seen: list[int] | None = None) -> Decision:
    """This run (test MCC 0.2) decided against a champion whose published metrics.json is `champion`."""
    model_dir, output_data = tmp_path / "model", tmp_path / "data"
    model_dir.mkdir()
    output_data.mkdir()
    (model_dir / "metrics.json").write_text(json.dumps({"test": {"mcc": 0.2}}))
    (model_dir / "run_manifest.json").write_text("{}")

    def read(name: str, limit: int) -> bytes | None:
        if limit_seen is not None:
            limit_seen.append(limit)
        return champion[: limit + 1] if champion is not None else None

    def same_rows(uri: str) -> Comparison:
        raise promotion.Incomparable("not scored in this test: only the published file is read")

    gate = promotion.Gate(_resolve(promote_if="test_mcc", output_uri="/models", promote_if_incomparable="promote").promotion,
                          model_dir, output_data, same_rows)
    gate.decide(Current("champ", read))
    assert gate.decision is not None
    return gate.decision


@pytest.mark.parametrize("champion", [
    b'{"test": ' * 100_000 + b"{}" + b"}" * 100_000,  # valid JSON, deeper than the parser's recursion limit
    b'{"test": {"mcc": Infinity}}', b'{"test": {"mcc": 1e999}}', b'{"test": {"mcc": -Infinity}}',
    b'{"test": {"mcc": 5.0}}',  # outside MCC's [-1, 1]
    b'{"test": {"mcc": 0.9}, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}',  # over the read limit
    b"\xff\xfe not json",
])
def test_no_champion_file_crashes_or_freezes_the_gate(champion: bytes, tmp_path) -> None:
    limits: list[int] = []
    decision = _gate_against(tmp_path, champion, limits)
    assert decision.current_published_value is None  # no usable value, recorded as such
    assert decision.promoted and "promote_if_incomparable=promote" in decision.reason
    assert limits == [promotion.READ_LIMIT]


def test_a_usable_published_value_is_recorded_for_reference(tmp_path) -> None:
    decision = _gate_against(tmp_path, b'{"test": {"mcc": 0.3}}')
    assert decision.current_published_value == 0.3 and decision.current_value is None


@pytest.mark.parametrize("name", ["mcc", "accuracy", "f1", "precision", "recall"])
@pytest.mark.parametrize("labels", [["a", "b"], ["a", "b", "c"]])
def test_the_gate_scores_rows_with_the_runs_own_metric_definitions(name, labels) -> None:
    """Same rows, same numbers as metrics.json would give: a macro average counts a label the rows lack."""
    from seqcls.promotion import champion
    from seqcls.data import LabelMap

    truth, predicted = np.array([0, 1, 1, 0, 1, 0]), np.array([0, 1, 0, 0, 1, 1])  # no row of label 2
    gate = champion._metric(name, truth, LabelMap(labels))(predicted, None)
    assert gate == pytest.approx(evaluate.classification_metrics(truth, predicted, len(labels))[name])


def test_the_gate_loads_without_torch() -> None:
    """The publish step and the orchestrators read the gate; it writes JSON, so it must not pull in a model stack."""
    import subprocess
    import sys

    probe = "import sys, seqcls.promotion; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded
