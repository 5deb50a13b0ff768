"""Per-row training losses for every problem type: the one place the loss is defined.

Both training paths (training/steps.py) and evaluation weight and sum these rows themselves, so a per-row
weight (a short batch's padding rows, class weights) multiplies a row's loss and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .problem_types import MULTI_LABEL, REGRESSION


def row_losses(logits: torch.Tensor, labels: torch.Tensor, problem_type: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """float32 [rows]: cross-entropy (single_label, labels int64 [rows]); binary cross-entropy with logits
    averaged over the labels (multi_label, labels float32 multi-hot [rows, labels]); squared error
    (regression, labels float32 [rows], logits [rows, 1]). The same losses transformers' models compute
    for each config.problem_type, before their mean over rows. `label_smoothing` (single_label, training only):
    cross-entropy against (1 - e) x the label + e / classes everywhere, as torch's CrossEntropyLoss computes it."""
    logits = logits.float()
    if problem_type == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(dim=1)
    if problem_type == REGRESSION:
        return (logits.reshape(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
