"""Promotion: whether a run replaces the published one (`rule`), the champion scored on this run's rows
(`champion`), and the winner registered with SageMaker or Vertex AI (`registry`).

Only the rule is imported here: it is free of torch, so the job's publish step and the orchestrators can read the
gate without loading a model. `champion` and `registry` are imported where they are used.
"""

from .rule import READ_LIMIT, RECORD, Gate, Incomparable, Rule, check_channels, decide, gate, metric_value

__all__ = ["READ_LIMIT", "RECORD", "Gate", "Incomparable", "Rule", "check_channels", "decide", "gate",
           "metric_value"]
