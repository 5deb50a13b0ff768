"""report_to=wandb: one Weights & Biases run per job, resumed by id after a restart."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from .. import logs, outbound, scalars
from .base import RemoteTracker, RunContext


class WandbTracker(RemoteTracker):
    """One W&B run per job, id'd by the run id so a restarted job resumes it: config is the settings, history the
    events' scalars (train scalars against `global_step`, per-epoch ones against `epoch`), summary the test metrics
    and the promotion. WANDB_MODE=offline writes the run under WANDB_DIR for `wandb sync`."""

    def __init__(self, context: RunContext, directory: Path, epochs: int, timeout_s: float) -> None:
        self.context, self.directory = context, directory
        self.points = scalars.Points(epochs)
        self.run: Any = None
        super().__init__("wandb", "start the W&B run", timeout_s)

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        points = self.points.of(name, fields)
        if name == "test_metrics" or name == "promotion" or name == "artifacts_published":
            summary = {tag: value for tag, value, _ in points}
            if name == "promotion":
                summary["promotion"] = "promoted" if fields["promoted"] else "kept"
            elif name == "artifacts_published":
                summary["published_uri"] = outbound.mask(str(fields["uri"]))
            self.worker.submit(f"update the summary from {name}", functools.partial(self._summary, summary))
        elif points:
            axis = "epoch" if name == "epoch_end" else "global_step"
            self.worker.submit(f"log {name}", functools.partial(self._log, points, axis))
        elif name == "job_failed":
            self.worker.submit("finish the W&B run", functools.partial(self._end, 1))

    def finish(self) -> None:
        self.worker.submit("finish the W&B run", functools.partial(self._end, 0))
        self.worker.finish(self.timeout_s)

    def record(self) -> dict[str, Any]:
        self.opened.wait(self.timeout_s)
        return {"run_id": self.run.id if self.run else None, "project": self.run.project if self.run else None,
                "directory": str(self.directory), "status": self._status(self.run is not None)}

    # --- on the worker thread -----------------------------------------------------------------------------------

    def _attach(self) -> None:
        import wandb

        logs.adopt("wandb")
        c = self.context
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {name: entry["value"] for name, entry in c.settings.items()}
        config.update(c.origin())
        self.run = wandb.init(name=c.run_id, id=re.sub(r"[^A-Za-z0-9_-]", "-", c.run_id), resume="allow",
                              dir=str(self.directory), config=config, job_type="train",
                              tags=[c.platform] + ([f"trial-{c.trial_id}"] if c.trial_id else []),
                              settings=wandb.Settings(console="off", silent=True))  # stdout stays JSON lines
        for axis in ("global_step", "epoch"):
            self.run.define_metric(axis, hidden=True)
        logs.event("tracker_attached", f"wandb: run {self.run.id} in project {self.run.project}", tracker="wandb",
                   wandb_run_id=self.run.id, project=self.run.project)

    def _log(self, points: list[tuple[str, float, int]], axis: str) -> None:
        for tag, _, _ in points:
            self.run.define_metric(tag, step_metric=axis)
        self.run.log({**{tag: value for tag, value, _ in points}, axis: points[0][2]})

    def _summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def _end(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)
