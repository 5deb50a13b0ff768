"""SageMaker metric definitions that read seqcls's JSON log lines (see seqcls.logs and the README).

SageMaker applies each regex to every CloudWatch log line and takes the first group as the value.
A line looks like `{"timestamp": ..., "message": ..., "event": "epoch_end", "epoch": 1,
"train_loss": 0.68, "val_loss": 0.67, ...}`: `event` always comes before the event's own fields,
so anchoring on it keeps `"loss"` of `train_progress` apart from every other loss. The validation
metrics are not anchored: `epoch_end` carries them each epoch and `best_epoch_selected` repeats the kept
epoch's at the end, so that the value a tuning job ranks by (the last one logged, per the API's
FinalHyperParameterTuningJobObjectiveMetric) is the one of the model that was saved.
"""

from __future__ import annotations

# A JSON number without a second capture group (SageMaker reads group 1): 0.5, -0.03, 1.3e-05.
# NaN and Infinity are not matched, so a diverged run reports no value rather than a wrong one.
NUMBER = r"(-?[0-9][0-9.eE+-]*)"

# (SageMaker metric name, seqcls event ("": any event with that field), field of that event); problem_type=single_label
METRICS: tuple[tuple[str, str, str], ...] = (
    ("train:loss", "train_progress", "loss"),
    ("train:learning_rate", "train_progress", "lr"),
    ("train:samples_per_s", "train_progress", "samples_per_s"),
    ("train:epoch_loss", "epoch_end", "train_loss"),
    ("validation:loss", "", "val_loss"),
    ("validation:accuracy", "", "val_accuracy"),
    ("validation:mcc", "", "val_mcc"),
    ("validation:f1", "", "val_f1"),
    ("test:mcc", "test_metrics", "test_mcc"),
    ("test:accuracy", "test_metrics", "test_accuracy"),
    ("test:f1", "test_metrics", "test_f1"),
    ("test:loss", "test_metrics", "test_loss"),
)
# The promotion gate's outcome (1: latest.json moved to this run, 0: kept), logged once by a gated run
# (promote_if set); DescribeTrainingJob's FinalMetricDataList carries it, so Airflow and the SageMaker
# console can show which way the gate went, and what it compared: both runs' metric on the same rows
# (`value`, `current_value`: none for the first run) and the difference (`comparison.improvement`).
_PROMOTION = (
    ("promotion:promoted", "promotion", "promoted_flag"),
    ("promotion:value", "promotion", "value"),
    ("promotion:champion_value", "promotion", "current_value"),
    ("promotion:improvement", "promotion", "improvement"),
)
METRICS += _PROMOTION
_LOSSES = METRICS[:5] + (("test:loss", "test_metrics", "test_loss"),)  # train:*, validation:loss, test:loss
# The metrics each problem_type's job logs (epoch_end's fields follow the problem type).
METRICS_BY_PROBLEM_TYPE: dict[str, tuple[tuple[str, str, str], ...]] = {
    "single_label": METRICS,
    "multi_label": _LOSSES + (
        ("validation:f1_micro", "", "val_f1_micro"),
        ("validation:f1_macro", "", "val_f1_macro"),
        ("validation:subset_accuracy", "", "val_subset_accuracy"),
        ("test:f1_micro", "test_metrics", "test_f1_micro"),
        ("test:f1_macro", "test_metrics", "test_f1_macro"),
        ("test:subset_accuracy", "test_metrics", "test_subset_accuracy"),
    ) + _PROMOTION,
    "regression": _LOSSES + (
        ("validation:pearson", "", "val_pearson"),
        ("validation:spearman", "", "val_spearman"),
        ("validation:mse", "", "val_mse"),
        ("validation:mae", "", "val_mae"),
        ("test:pearson", "test_metrics", "test_pearson"),
        ("test:spearman", "test_metrics", "test_spearman"),
        ("test:mse", "test_metrics", "test_mse"),
        ("test:mae", "test_metrics", "test_mae"),
    ) + _PROMOTION,
}


def regex(event: str, field: str) -> str:
    return f'"event": "{event}".*"{field}": {NUMBER}' if event else f'"{field}": {NUMBER}'


def metric_definitions(problem_type: str = "single_label") -> list[dict[str, str]]:
    """CreateTrainingJob's AlgorithmSpecification.MetricDefinitions for a job of this problem_type, in the service's own shape."""
    return [{"Name": name, "Regex": regex(event, field)} for name, event, field in METRICS_BY_PROBLEM_TYPE[problem_type]]
