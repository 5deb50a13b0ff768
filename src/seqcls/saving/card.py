"""The model card: README.md in the model folder, so a published model says what it is on the Hub or in a registry.

The metadata is huggingface_hub's `ModelCardData` (the Hub's own schema and its `model-index` writer), never
hand-written YAML; the body is Markdown built from what the run already recorded (run_manifest.json,
metrics.json, the per-epoch stats), so the card cannot disagree with them.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..data import COLUMN_SETTINGS
from ..problem_types import REGRESSION, SINGLE_LABEL, TYPES
from ..records import Metrics, RunManifest
from ..settings import FIELDS

# The `datasets` builder that reads each suffix (`load_dataset("csv", ...)`): the honest dataset "type" of local files.
BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TIMING_COLUMNS = ("train_seconds", "val_seconds")


def hub_id(name: str) -> str | None:
    """`name` when it is a Hub repository id and not a local folder (a path is not a base model on the Hub)."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    def cell(value: object) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def reproduce_command(manifest: RunManifest) -> str:
    """`seqcls train` with the same data files, model and every setting that changes the weights; a column
    setting left to the files' headers stays unset so the same header picks the same column again."""
    args = ["seqcls", "train"]
    for channel in ("train", "validation", "test"):
        paths = [str(f["path"]) for f in manifest.data.of_channel(channel)]
        if paths:
            args += [f"--{channel}", paths[0] if len(paths) == 1 else str(PurePosixPath(paths[0]).parent)]
    args += ["--model_name_or_path", manifest.model_source]
    for name, entry in manifest.settings.items():
        left_to_header = name in COLUMN_SETTINGS and entry["source"] == "default"
        if name == "model_name_or_path" or not FIELDS[name].metadata["math"] or left_to_header:
            continue
        value = entry["value"]
        args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return " ".join(shlex.quote(a) for a in args)


def _metadata(manifest: RunManifest, metrics: Metrics, base_model: str | None) -> ModelCardData:
    results = []
    test_files = manifest.data.of_channel("test")
    if metrics.test and test_files:
        builder = BUILDERS.get(Path(str(test_files[0]["path"])).suffix.lower(), "csv")
        name = ", ".join(Path(str(f["path"])).name for f in test_files)
        results = [EvalResult(task_type="text-classification", task_name="Text Classification", dataset_type=builder,
                              dataset_name=name, dataset_split="test", metric_type=metric, metric_name=shown,
                              metric_config=config, metric_value=round(float(metrics.test[key]), 4))
                   for key, metric, shown, config in TYPES[manifest.problem_type].card_metrics]
    return ModelCardData(base_model=base_model, library_name="transformers", pipeline_tag="text-classification",
                         tags=["seqcls", "text-classification"] + (["partial"] if manifest.partial else []),
                         model_name=manifest.run_id, eval_results=results or None)


def _columns(chosen: dict[str, str | None] | None) -> str:
    if not chosen:
        return ""
    roles = ", ".join(f"{role} `{chosen[role]}`" for role in ("text", "text_pair", "label") if chosen.get(role))
    return f"{roles} ({chosen['chosen']})"


def _data_section(manifest: RunManifest, labels: list[str]) -> str:
    data = manifest.data
    files = [(f["channel"], f"`{f['path']}`", f["rows"], _columns(f.get("columns")), str(f["sha256"])[:12])
             for f in data.files]
    rows = ", ".join(f"{split} {count}" for split, count in data.rows.items())
    held_out = " (held out from train, seeded)" if data.validation_source == "split" else ""
    return "\n\n".join([
        "## Data", _table(("channel", "file", "rows read", "columns (how chosen)", "sha256"), files),
        f"Rows per split after sampling and splitting: {rows}; validation{held_out}.",
        f"Labels (id order, as in config.json's id2label): {', '.join(f'`{label}`' for label in labels)}.",
    ])


def _test_table(test: dict[str, Any], kind: str) -> str:
    if kind == SINGLE_LABEL:  # the tutorial's table, F1's averaging named
        return _table(("loss", "MCC", "accuracy", f"F1 ({test['f1_average']})", "precision", "recall"),
                      [(test["loss"], test["mcc"], test["accuracy"], test["f1"], test["precision"], test["recall"])])
    shown = TYPES[kind].card_metrics
    return _table(("loss", *(name for _, _, name, _ in shown)), [(test["loss"], *(test[key] for key, *_ in shown))])


def _weights_saved(metrics: Metrics) -> str:
    if metrics.best_step:
        return f"Weights saved: step {metrics.best_step} (epoch {metrics.best_epoch})."
    return f"Weights saved: epoch {metrics.best_epoch}." if metrics.best_epoch else "Weights saved: mid-epoch."


def _results_section(stats: list[dict[str, Any]], metrics: Metrics, kind: str) -> str:
    columns = [c for c in (stats[0] if stats else {}) if c not in TIMING_COLUMNS]
    parts = ["## Results", "Validation after each epoch:",
             _table(tuple(columns), [tuple(row[c] for c in columns) for row in stats]),
             _weights_saved(metrics)]
    if metrics.early_stopped_after_epoch:
        parts.append(f"Early stopping ended training after epoch {metrics.early_stopped_after_epoch}.")
    if (metrics.decision_threshold or 0.5) != 0.5:
        parts.append(f"Decision threshold: the second label is predicted when its probability is at least "
                     f"{metrics.decision_threshold:.4f} (`config.json` `decision_threshold`; `seqcls predict` applies "
                     "it, `transformers.pipeline` takes the argmax).")
    test = metrics.test
    if test:
        parts += ["Test split:", _test_table(test, kind)]
        if "per_label" in test:
            parts += ["Per label (test, at the tuned thresholds):",
                      _table(("label", "threshold", "precision", "recall", "F1", "support"),
                             [(name, (metrics.label_thresholds or {}).get(name, ""), v["precision"], v["recall"],
                               v["f1"], v["support"]) for name, v in test["per_label"].items()])]
    else:
        parts.append("No test split was scored.")
    return "\n\n".join(parts)


def _limits(manifest: RunManifest, base: str) -> str:
    kind, partial = manifest.problem_type, manifest.partial
    warning = (f"> **Partial model.** The run was stopped before it finished: these weights are {partial.get('weights')} "
               f"({partial.get('reason', 'stopped')}); no test split was scored.\n\n" if partial else "")
    return warning + "\n\n".join([
        "## Intended use and limits",
        f"{TYPES[kind].use} of text like the training data's, with {base}: load it with "
        "`seqcls predict`, or on AWS's Hugging Face inference image, whose toolkit runs this folder's "
        "`code/inference.py` (the run's decision thresholds, problem type and labels; seqcls docs/serving-hf.md). "
        "`transformers.pipeline(\"text-classification\", model=...)` loads it too but takes the argmax, ignoring "
        "the thresholds in config.json. "
        + ("`model.onnx` (batch and sequence axes dynamic) gives the PyTorch logits within 1e-4 in onnxruntime; "
           "apply the thresholds as above. " if manifest.value("export_onnx") else "")
        + "It knows only the labels above, and scores only as well as the metrics here say on data like the "
        "validation and test files; other domains, languages or inputs longer than `max_length` tokens (truncated) are untested. It inherits the "
        "base model's biases and limits. Not for decisions about people without a review of its errors.",
    ])


def render(manifest: RunManifest, metrics: Metrics, stats: list[dict[str, Any]]) -> ModelCard:
    """The card for one run, from its manifest, metrics.json and per-epoch stats."""
    base_model = hub_id(manifest.value("base_model", "")) or hub_id(manifest.model_source)
    base = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else f"the local model folder `{manifest.model_source}`"
    hyperparameters = [(f"`{name}`", f"`{entry['value']}`" if entry["value"] != "" else "(empty)", entry["source"])
                       for name, entry in manifest.settings.items()]
    body = "\n\n".join([
        f"# {manifest.run_id}",
        f"A `{manifest.problem_type}` text {'regressor' if manifest.problem_type == REGRESSION else 'classifier'} "
        f"fine-tuned from {base} (weights read from `{manifest.model_source}`) "
        f"by seqcls (commit `{manifest.git_commit}`). "
        "Every input's sha256 and the package versions are in `run_manifest.json`; the metrics in `metrics.json`.",
        _limits(manifest, base),
        _data_section(manifest, metrics.labels),
        "## Training", "Hyperparameters (value and where it came from):",
        _table(("name", "value", "source"), hyperparameters),
        _results_section(stats, metrics, manifest.problem_type),
        "## Reproduce", "```bash\n" + reproduce_command(manifest) + "\n```",
    ])
    # huggingface_hub writes the metadata (to_yaml), as its ModelCard.from_template does, without needing jinja2.
    return ModelCard(f"---\n{_metadata(manifest, metrics, base_model).to_yaml()}\n---\n\n{body}\n")
