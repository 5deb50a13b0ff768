"""The problem types (single_label, multi_label, regression): the one place that says what differs between them.

Transformers' name for each, the metrics its runs record and which of them fall, the headline that ranks epochs and
heads the test results, the select_best choices it allows and the objective they rank by, what the model card and
SageMaker's model-quality statistics call it. Every other module reads this one; none spells a type's name itself
(tests/test_layout.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
REGRESSION = "regression"


@dataclass(frozen=True)
class ProblemType:
    """What one problem type records and how it is shown."""

    name: str
    hf_name: str  # transformers' config.problem_type, which its pipeline and AWS's HF image read
    headline: str  # the metric that ranks epochs when select_best names none, and heads the test results
    headline_shown: str
    test_metrics: tuple[str, ...]  # metrics.json's "test" block
    validation_metrics: tuple[str, ...]  # the epoch_end event's val_<name> fields
    select_best: tuple[str, ...]  # the select_best choices that need this type
    card_metrics: tuple[tuple[str, str, str, str | None], ...]  # (metrics.json key, model-index type, shown, config)
    use: str  # the model card's "intended use"
    # SageMaker Model Monitor's model-quality statistics name their block by problem type (binary_classification_metrics,
    # multiclass_classification_metrics, regression_metrics); None: binary or multiclass by the label count.
    statistics_block: str | None


TYPES = {t.name: t for t in (
    ProblemType(SINGLE_LABEL, "single_label_classification", "mcc", "MCC",
                ("mcc", "accuracy", "f1", "precision", "recall", "loss"), ("mcc", "accuracy", "f1", "loss"),
                ("mcc",),
                (("mcc", "matthews_correlation", "MCC", None), ("accuracy", "accuracy", "Accuracy", None),
                 ("f1", "f1", "F1", None)),
                "Single-label sequence classification (one class per text)", None),
    ProblemType(MULTI_LABEL, "multi_label_classification", "f1_micro", "micro-F1",
                ("f1_micro", "f1_macro", "precision_micro", "recall_micro", "subset_accuracy", "loss"),
                ("f1_micro", "f1_macro", "subset_accuracy", "loss"),
                ("f1_micro",),
                (("f1_micro", "f1", "micro-F1", "micro"), ("f1_macro", "f1", "macro-F1", "macro"),
                 ("subset_accuracy", "accuracy", "subset accuracy", None)),
                "Multi-label sequence classification (a set of labels per text, each decided by its own threshold "
                "in config.json's `label_thresholds`)",
                # Model Monitor has no multi-label block: one in the same shape under its own name.
                "multilabel_classification_metrics"),
    ProblemType(REGRESSION, "regression", "pearson", "Pearson",
                ("pearson", "spearman", "mse", "mae", "loss"), ("pearson", "spearman", "mse", "mae", "loss"),
                ("pearson", "mse"),
                (("pearson", "pearsonr", "Pearson", None), ("spearman", "spearmanr", "Spearman", None),
                 ("mse", "mse", "MSE", None), ("mae", "mae", "MAE", None)),
                "Sequence regression (one score per text)", "regression_metrics"),
)}
# select_best choices and the problem type each needs (None: any).
SELECT_BEST = {"none": None, "loss": None, **{name: t.name for t in TYPES.values() for name in t.select_best}}
# The one list of metrics where lower is better: the gate, select_best and the tuning objective all read it.
MINIMIZED_METRICS = ("loss", "mse", "mae")
# Every value a run can measure lies in its metric's range: the gate ignores a champion value outside it.
_CORRELATIONS = ("mcc", "pearson", "spearman")
METRIC_RANGES = {name: (-1.0, 1.0) if name in _CORRELATIONS else (0.0, float("inf")) if name in MINIMIZED_METRICS
                 else (0.0, 1.0) for t in TYPES.values() for name in (*t.test_metrics, *t.validation_metrics)}


def of_config(config_problem_type: str | None) -> str:
    """Ours from a config's problem_type; a config saved without one (before it was set) is single_label."""
    found = {t.hf_name: t.name for t in TYPES.values()}
    return found.get(config_problem_type or TYPES[SINGLE_LABEL].hf_name, SINGLE_LABEL)


def promotion_metrics(problem_type: str) -> list[str]:
    """The promote_if names (<split>_<metric>) a problem type's runs record: test_mcc, validation_loss, ..."""
    t = TYPES[problem_type]
    return [f"test_{name}" for name in t.test_metrics] + [f"validation_{name}" for name in t.validation_metrics]


def objective(select_best: str, problem_type: str = SINGLE_LABEL) -> tuple[str, str]:
    """(epoch_end field, goal) of the metric that ranks epochs: the select_best metric, else the problem type's
    headline (val_mcc, val_f1_micro, val_pearson), all maximised. select_best, early stopping and a tuning
    trial's reported objective all follow it."""
    if select_best == "none":
        return f"val_{TYPES[problem_type].headline}", "MAXIMIZE"
    return f"val_{select_best}", "MINIMIZE" if select_best in MINIMIZED_METRICS else "MAXIMIZE"


def better(select_best: str, value: float, reference: float, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `reference` on the objective by more than min_delta (every headline is maximised,
    so the goal follows from select_best alone). A NaN (Pearson of a constant prediction) beats nothing and
    is beaten by any number, so one early NaN epoch cannot freeze select_best or early stopping."""
    if math.isnan(value) or math.isnan(reference):
        return not math.isnan(value)
    goal = objective(select_best)[1]
    return value > reference + min_delta if goal == "MAXIMIZE" else value < reference - min_delta
