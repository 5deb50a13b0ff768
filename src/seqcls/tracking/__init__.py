"""Experiment trackers (report_to), each a listener on the log's event bus: TensorBoard event files, MLflow,
Weights & Biases and Vertex AI Experiments.

A tracker sees the events stdout carries, so it holds exactly the JSON log's values. A tracker never costs the
run: MLflow's and W&B's calls run in order on a thread of their own (as do Vertex AI's), so a slow server never holds
the training loop; the first failure stops the tracker with one `tracker_failed` warning naming the reason, and at the
job's end it has tracker_timeout_s to take the last of the run before the job exits as it would have.
run_manifest.json records each tracker as it stood when the model was saved (`trackers`).

One module per concern: `base` (the context, the worker thread, a remote tracker's life), one per tracker
(`mlflow_run`, `wandb_run`, `vertex_run`), and `trackers` (starting those report_to names).
"""

from .base import RunContext, Worker
from .mlflow_run import CHAMPION_ALIAS
from .trackers import Trackers, start
from .vertex_run import VertexTracker, vertex_run_name

__all__ = ["CHAMPION_ALIAS", "RunContext", "Trackers", "VertexTracker", "Worker", "start", "vertex_run_name"]
