"""Predict: load a published run (s3://, gs:// or a folder) the way a consumer would, and label a file.

This is the proof that what the job publishes is usable: the model is fetched and checked against
its manifest.json, loaded with plain transformers calls, and run on new rows with the training
run's own max_length and column names (from run_manifest.json) unless the command line overrides them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
from transformers import AutoConfig

from . import atomic, data, devices, distributed, evaluate, logs, model, problem_types, storage
from .saving import artifacts, onnxmodel
from . import settings as hyperparameters
from .errors import ModelError, SettingsError
from .records import RUN_MANIFEST, RunManifest
from .uris import parse_uri

SORT_WINDOW_ROWS = 10_000  # rows sorted by length together into batches: what decides a row's batch (predict_frame)
CHUNK_ROWS = 5 * SORT_WINDOW_ROWS  # rows scored and written at a time: bounds the token arrays and scores, paces the
# progress events; a multiple of the window, so a file streamed chunk by chunk gets the bytes of one whole chunk
# Settings that describe the input and the model, taken from the training run when it recorded them.
INHERITED = ("max_length", "text_column", "text_pair_column", "eval_batch_size", "label_delimiter")


@dataclass(frozen=True)
class Summary:
    rows: int
    output: Path
    labels: list[str]
    seconds: float


def _progress(done: int, rows: int, seconds: float) -> None:
    rate = done / seconds if seconds > 0 else 0.0
    left = (rows - done) / rate if rate else None
    logs.event("predict_progress", f"{done:,} of {rows:,} rows scored ({rate:,.0f} rows/s"
               + (f", {left:.0f}s left)" if left is not None else ")"), rows_done=done, rows=rows,
               rows_per_s=round(rate, 1), seconds_left=None if left is None else round(left, 1))


def _training_settings(manifest: RunManifest | None) -> dict[str, object]:
    """The training run's values of INHERITED that it was given; a column it chose from its files' headers
    is chosen again from the input's header (the input need not have the training file's layout)."""
    if manifest is None:
        return {}
    inherited = {name: manifest.value(name) for name in INHERITED if name in manifest.settings
                 and (name not in data.COLUMN_SETTINGS or manifest.given(name))}
    if inherited.get("max_length") == "auto":  # the length the training run worked out
        inherited["max_length"] = manifest.data.max_length
    return inherited


def _serialise(frame: pd.DataFrame, as_json: bool, header: bool) -> str:
    """JSON lines for .jsonl/.json, CSV otherwise: chunk after chunk, the same text as the whole frame at once."""
    if as_json:
        text = frame.to_json(orient="records", lines=True, force_ascii=False)
        return text if text.endswith("\n") else text + "\n"
    return frame.to_csv(index=False, header=header)


@dataclass(frozen=True)
class Loaded:
    """A run's model loaded once, with everything that makes its answers the training run's own: the CLI labels
    a file with it and the server (serving/serve.py) answers every request with it."""

    source: str
    reading: hyperparameters.Reading  # how an input file's rows are read: its columns, the tag delimiter
    explicit: frozenset[str]  # settings given (not defaulted): which columns a file is read by
    max_length: int  # the tokens a row is truncated to: the training run's (config.json), or --max_length
    timeout_s: int  # distributed_timeout_s: how long a torchrun rank waits for its peers
    tokenizer: object
    scorer: evaluate.Scorer  # the classifier (torch or ONNX) with its pad id, eval_batch_size, device and precision
    label_map: data.LabelMap
    threshold: float | None  # single_label, two labels: the training run's decision_threshold (config.json)
    pairs: bool | None = None  # trained on text pairs (run_manifest.json); None when the folder does not say

    @property
    def backend(self) -> str:
        if isinstance(self.scorer.model, onnxmodel.OnnxClassifier):
            return "onnx_int8" if self.scorer.model.path.name == onnxmodel.ONNX_INT8_FILE else "onnx"
        return "torch"


def load(model_uri: str, overrides: Mapping[str, str], world: distributed.World = distributed.World()) -> Loaded:
    """Fetch (and verify) the model, settle the settings it was trained with, load it onto its device."""
    parse_uri(model_uri, "--model")
    with tempfile.TemporaryDirectory(prefix="seqcls-predict-") as scratch:
        folder = storage.fetch(model_uri, Path(scratch))
        model.check_local_folder(folder)
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot read the config of {model_uri}: {str(err).splitlines()[0][:300]}") from None
        # config.json is the inference contract (code/inference.py and the ONNX export read it too): its
        # inference_max_length is the length the run truncated to; run_manifest.json's only for folders without it.
        truncated = getattr(config, "inference_max_length", None)
        manifest = RunManifest.read(folder)
        resolved = hyperparameters.resolve([(RUN_MANIFEST, _training_settings(manifest)),
                                            ("config.json", {"max_length": truncated} if truncated else {}),
                                            ("cli", overrides)])
        settings = resolved.settings
        if settings.max_length == "auto":
            raise SettingsError("predict needs max_length as a number (auto is worked out from training data); "
                                "leave it unset to use the training run's")
        tokenizer = model.load_tokenizer(str(folder))
        classifier, compute = _classifier(folder, config, settings, model_uri, world)
        pairs = manifest.trained_on_pairs() if manifest else None
    label_map = data.LabelMap([config.id2label[i] for i in range(config.num_labels)],
                              problem_types.of_config(config.problem_type))
    scorer = evaluate.Scorer(classifier, model.pad_token_id(tokenizer), settings.eval_batch_size, compute)
    return Loaded(model_uri, settings.reading, frozenset(resolved.explicit), int(settings.max_length),
                  settings.distributed_timeout_s, tokenizer, scorer, label_map,
                  getattr(config, "decision_threshold", None), pairs)


def _classifier(folder: Path, config, settings: hyperparameters.Settings, model_uri: str,
                world: distributed.World) -> tuple[torch.nn.Module, devices.Compute]:
    """inference_backend=onnx (onnx_int8): the run's model.onnx (model.int8.onnx) on the CPU (a run without the
    file: a warning, then torch);
    torch: the safetensors weights on the settings' device and precision."""
    wanted = onnxmodel.FILES.get(settings.inference_backend)
    if wanted and (folder / wanted).is_file():
        return onnxmodel.OnnxClassifier(folder / wanted, config).eval(), devices.Compute(torch.device("cpu"), "fp32")
    if wanted:
        logs.warning("onnx_missing", f"{model_uri} has no {wanted} (trained without export_onnx=true, or "
                                     "export_onnx_int8=true, or its int8 check dropped it): scoring with PyTorch",
                     model=model_uri, file=wanted)
    device = devices.pick_device(settings.device, world)  # under torchrun: this rank's GPU
    return (model.load_model(str(folder), config, settings.seed).to(device).eval(),
            devices.Compute(device, devices.pick_precision(settings.precision, device)))


def predict_frame(loaded: Loaded, frame: pd.DataFrame) -> evaluate.Predictions:
    """The one batch function: rows with `text` (and `text_pair`) tokenized with the training run's max_length
    (longer rows truncated as training truncated them), scored, with the run's decision thresholds. Rows are
    batched within windows of SORT_WINDOW_ROWS, so every row's scores are the same bits in any frame that starts
    on a window boundary (run's chunks)."""
    channel = data.Channel("input", frame, [])
    encoded, _ = data.tokenize(loaded.tokenizer, channel, loaded.label_map.blank(len(frame)), loaded.max_length)
    predictions = loaded.scorer.predict(encoded, SORT_WINDOW_ROWS)
    return dataclasses.replace(predictions, threshold=loaded.threshold)


def casting_once(loaded: Loaded) -> contextlib.AbstractContextManager:
    """Autocast held open around many passes of a model whose weights do not change (the server's batcher, a
    file's chunks): autocast keeps each weight's bf16/fp16 copy until its outermost context exits, so the weights
    are cast once instead of on every pass (the same values: MiniLM on one sentence, 2 CPU cores, 9.8 -> 5.2 ms).
    Enter it in the thread that scores: autocast's state is per thread."""
    return devices.autocast(loaded.scorer.compute.device, loaded.scorer.compute.precision)


def run(model_uri: str, input_path: Path, output_path: Path, overrides: Mapping[str, str],
        chunk_rows: int = CHUNK_ROWS) -> Summary:
    """Load the model, then read, score and write the input `chunk_rows` rows at a time: memory stays bounded
    whatever the row count (reading included), `predict_progress` reports rows/s and the time left, and the
    output file appears complete or not at all. Under torchrun each rank scores its share of every chunk on its
    own device and rank 0 writes the rows in input order (`_score_shard`)."""
    if chunk_rows % SORT_WINDOW_ROWS:
        raise ValueError(f"chunk_rows ({chunk_rows}) must be a multiple of SORT_WINDOW_ROWS ({SORT_WINDOW_ROWS})")
    started = time.perf_counter()
    world = distributed.from_env()
    loaded = load(model_uri, overrides, world)
    distributed.init(world, loaded.scorer.compute.device, loaded.timeout_s)
    try:
        rows = _score_file(loaded, input_path, output_path, chunk_rows, world)
    finally:
        distributed.shutdown()
    summary = Summary(rows, output_path, loaded.label_map.labels, round(time.perf_counter() - started, 2))
    logs.event("predictions_written", f"{summary.rows} predictions from {model_uri} written to {output_path}",
               model=model_uri, input=str(input_path), output=str(output_path), rows=summary.rows,
               labels=summary.labels, problem_type=loaded.label_map.problem_type, device=loaded.scorer.compute.device.type,
               backend=loaded.backend, ranks=world.size, seconds=summary.seconds)
    return summary


def _score_file(loaded: Loaded, input_path: Path, output_path: Path, chunk_rows: int,
                world: distributed.World) -> int:
    """Every chunk scored (shared across ranks) and, on rank 0, written; returns the rows scored."""
    done, scoring = 0, time.perf_counter()
    estimate = data.count_rows(input_path, "input", loaded.reading, loaded.explicit)
    as_json = output_path.suffix.lower() in (".jsonl", ".json")
    with (atomic.replacing(output_path) if world.is_main else contextlib.nullcontext()) as tmp, \
            (tmp.open("w", encoding="utf-8", newline="") if tmp else contextlib.nullcontext()) as out, \
            casting_once(loaded):
        for frame in data.read_in_chunks(input_path, "input", loaded.reading, loaded.explicit, chunk_rows):
            columns = _score_shard(loaded, frame, world)
            if out is not None:
                out.write(_serialise(frame.assign(**columns), as_json, header=done == 0))
            done += len(frame)
            _progress(done, max(estimate, done), time.perf_counter() - scoring)
        if done != estimate:  # the estimate counted lines: the last event says what was scored
            _progress(done, done, time.perf_counter() - scoring)
    return done


def _score_shard(loaded: Loaded, frame: pd.DataFrame, world: distributed.World) -> dict[str, list]:
    """The prediction columns of `frame`: this rank scores every world.size-th row from its rank on, and rank 0
    puts the ranks' answers back in input order (the other ranks get {})."""
    mine = frame.iloc[world.rank::world.size]
    columns = (artifacts.prediction_columns(predict_frame(loaded, mine), loaded.label_map,
                                            loaded.reading.label_delimiter) if len(mine) else None)
    if not world.active:
        return columns or {}
    parts = distributed.gather_objects(columns, world)
    if not world.is_main:
        return {}
    merged: dict[str, list] = {}
    for rank, part in enumerate(parts):
        for name, values in (part or {}).items():
            merged.setdefault(name, [None] * len(frame))[rank::world.size] = list(values)
    return merged
