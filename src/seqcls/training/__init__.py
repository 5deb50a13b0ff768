"""Training: the explicit loop and what it needs to be fast and to survive preemption (docs/layout.md).

`train` (AdamW, the schedule, validation, early stopping, the stop reason), `steps` (one optimizer step: eager, or
replayed as a CUDA graph and checked against eager) and `checkpoint` (atomic checkpoints, exact resume, SIGTERM).
Nothing is imported here, so a caller names the module it uses.
"""
