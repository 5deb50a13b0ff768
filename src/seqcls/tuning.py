"""The objective a hyperparameter-tuning trial reports after every evaluation, in the record Vertex reads.

Vertex AI's tuning service reads what `cloudml-hypertune` writes: a file of JSON lines, one record per
report, rewritten whole each time with the newest 100 (cloudml-hypertune 0.1.0.dev6 on PyPI,
hypertune/hypertune.py; its GitHub copy predates the `checkpoint_path` key). The record is written here directly rather than through that package: it is
a 2019 pre-release (0.1.0.dev6) that writes the file in place, so a reader can catch it half written;
this writes the same record atomically. tests/test_tuning.py checks the records match the package's.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from .atomic import replacing
from .problem_types import SINGLE_LABEL, objective

KEEP = 100  # the package's _MAX_NUM_METRIC_ENTRIES_TO_PRESERVE


class ObjectiveReport:
    """A logs.Listener: at each epoch_end, the objective as a hypertune record (global_step = the epoch); with
    eval_every_steps, at each `evaluation` (global_step = the optimizer step)."""

    def __init__(self, path: Path, trial_id: str, select_best: str, problem_type: str = SINGLE_LABEL) -> None:
        self.path = path
        self.trial = trial_id or "0"  # the package's default when CLOUD_ML_TRIAL_ID is unset
        self.metric = objective(select_best, problem_type)[0]
        self.records: deque[dict[str, Any]] = deque(maxlen=KEEP)

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        if name not in ("epoch_end", "evaluation"):
            return
        step = fields["step"] if name == "evaluation" else fields["epoch"]
        self.records.append({"timestamp": time.time(), "trial": str(self.trial),
                             self.metric: str(float(fields[self.metric])), "global_step": str(int(step)),
                             "checkpoint_path": ""})
        with replacing(self.path) as tmp:
            tmp.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in self.records))

    def close(self) -> None:
        pass
