"""The job, top-down, like the tutorial: settings, data, model, train, evaluate, save, publish.

Each step is one call into the module that owns it; this file only says the order.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

import torch

from . import atomic, data, devices, distributed, evaluate, logs, model, storage
from . import hostdata, promotion, records, runtime, tracking, tuning
from .promotion import champion
from .saving import artifacts
from . import settings as hyperparameters
from .training import checkpoint, train
from .errors import Interrupted, SettingsError


def run(where: runtime.Platform) -> Path:
    """Run the whole pipeline; returns the model folder. Raises on any failure (cli turns that into the failure file)."""
    started = time.perf_counter()

    # Step 1: the hyperparameters, the processes and the device; everything that can fail fast fails here.
    world = distributed.from_env()
    if world.is_main:
        atomic.check_writable(where.output_folders)  # seconds, not a lost run, when the platform's folders are not ours
        where.failure_file.unlink(missing_ok=True)  # a reason left by an earlier run in this tree is stale
    resolved = hyperparameters.resolve(where.hyperparameter_layers)
    settings = resolved.settings
    where = _settled(where, settings)
    model_source = str(where.channels.get("model") or settings.model_name_or_path)
    compute, trackers = _start(where, resolved, world, model_source)

    # Step 2: data, read and tokenized once per host (its other ranks map the arrays); then the model's config.
    prepared = hostdata.once_per_host(world, functools.partial(_read_and_tokenize, where, resolved, model_source),
                                      where.run_id, settings.distributed_timeout_s)
    splits, max_length, encoded = prepared.splits, prepared.max_length, prepared.encoded
    config = model.load_config(model_source, splits.label_map)
    tokenizer = model.load_tokenizer(model_source)

    # Step 3: model and training (resuming from a matching checkpoint).
    classifier = model.load_model(model_source, config, settings.seed, settings.gradient_checkpointing)
    checkpointer = checkpoint.Checkpointer(where.checkpoint_dir, checkpoint.fingerprint(
        settings.as_dict(), model_source, [f for s in (splits.train, splits.validation) for f in s.files], world.size),
        settings.ignore_checkpoint)
    pad_token_id = model.pad_token_id(tokenizer)
    outcome = train.train(classifier, train.TrainData(encoded["train"], encoded["validation"], pad_token_id), settings,
                          compute, checkpointer)

    # Step 4: the decision threshold (config.json, read by predict and code/inference.py), test, the gate's rows.
    partial = outcome.partial(kept_best=settings.select_best != "none")  # stopped (SIGTERM): no tuning, test or gate
    scorer = evaluate.Scorer(classifier, pad_token_id, settings.eval_batch_size, compute)
    threshold = evaluate.resolve_threshold(scorer, encoded["validation"], settings.decision_threshold, not partial)
    classifier.config.decision_threshold, classifier.config.inference_max_length = threshold, max_length
    label_thresholds = evaluate.tune_thresholds(scorer, encoded["validation"], not partial)
    metrics = artifacts.metrics_record(outcome.stats, outcome.best_epoch, splits.label_map.labels, {
        "problem_type": settings.problem_type, "decision_threshold": threshold, "label_thresholds": label_thresholds,
        "early_stopped_after_epoch": outcome.early_stopped_after, "best_step": outcome.best_step, "partial": partial})
    test = None
    if "test" in encoded and not partial:
        tested, predictions = evaluate.test_metrics(scorer, encoded["test"], threshold)
        metrics, test = dataclasses.replace(metrics, test=tested), (splits.test, encoded["test"].labels, predictions)
    gate_rows = champion.gate_rows("none" if partial else settings.promote_if, splits, encoded, test and test[2],
                                   lambda: dataclasses.replace(scorer.predict(encoded["validation"]), threshold=threshold))
    if not world.is_main:
        return where.model_dir  # rank 0 alone writes and publishes

    # Step 5: save the model and everything a person needs to judge it (nothing half-written).
    manifest = artifacts.run_manifest(
        {"run_id": where.run_id, "platform": where.name, "git_commit": where.git_commit, "settings": resolved.snapshot(),
         "device": artifacts.device_record(compute.device, compute.precision), "partial": partial, "trackers": trackers.record(),
         "timing": {"train_seconds": round(outcome.train_seconds, 3), "samples_per_s": round(outcome.samples_per_s, 1)}},
        model_source, [s for s in (splits.train, splits.validation, splits.test) if s],
        {"rows": {name: len(e) for name, e in encoded.items()}, "validation_source": splits.validation_source,
         "max_length": max_length, "split_checks": splits.split_checks.record() if splits.split_checks else None})
    artifacts.save_run(classifier, tokenizer, where.model_dir, where.output_data_dir, artifacts.RunRecord(
        metrics, manifest, outcome.stats, splits.label_map, test, splits.test or splits.validation, settings.onnx_exports))
    if partial:  # the platform uploads the model folder as it is; the run still failed, and may resume
        raise Interrupted(f"{outcome.stopped}; a partial model ({partial['weights']}) was saved to {where.model_dir}")

    # Step 6: publish a loadable copy, manifest last (never half a model); promote_if gates latest.json (promotion/rule.py).
    folders = [where.model_dir, where.output_data_dir]
    gate = promotion.gate(settings.promotion, *folders, champion.comparer(settings.promotion, gate_rows))
    storage.publish_run(where.model_uri, settings.output_uri, where.run_id, folders, _publish_options(settings), gate)
    checkpointer.remove()  # published: nothing is left for a later run in the same folder to resume
    _log_end(where, metrics, started, settings.problem_type, trackers)
    return where.model_dir


def _read_and_tokenize(where: runtime.Platform, resolved: hyperparameters.Resolved, model_source: str) -> data.Prepared:
    """Step 2 on the rank that tokenizes for its host: read and split, check the model's config and length
    limit (a bad model fails before minutes of tokenizing), choose max_length, tokenize every split."""
    settings = resolved.settings
    splits = data.load_splits(where.channels, settings, resolved.explicit)
    config = model.load_config(model_source, splits.label_map)
    length_limit = model.check_max_length(config, settings.max_length, model_source)
    tokenizer = model.load_tokenizer(model_source)
    max_length = data.resolve_max_length(tokenizer, splits.train, settings, length_limit)
    return data.encode_splits(tokenizer, splits, max_length)


def _log_end(where: runtime.Platform, metrics: records.Metrics, started: float, problem_type: str,
             trackers: tracking.Trackers) -> None:
    """The trackers take the last of the run (bounded by tracker_timeout_s); then job_end with the problem type's
    test headline (test_mcc, test_f1_micro or test_pearson)."""
    trackers.finish()
    tested = evaluate.test_headline(metrics, problem_type)
    logs.event("job_end", f"done in {time.perf_counter() - started:.1f}s" + "".join(
        f", {name} {value:.4f}" for name, value in tested.items() if value is not None),
               run_id=where.run_id, **tested, best_epoch=metrics.best_epoch,
               seconds=round(time.perf_counter() - started, 2), model_dir=str(where.model_dir))


def _publish_options(settings: hyperparameters.Settings) -> storage.Options:
    return storage.Options(settings.s3_sse_kms_id, settings.s3_expected_bucket_owner, settings.publish_latest)


def _settled(where: runtime.Platform, settings: hyperparameters.Settings) -> runtime.Platform:
    """The run id and checkpoint folder the settings choose: the run_id setting, else the platform's job id or a
    timestamp (runtime's detect), which must be as safe a run id."""
    if not settings.run_id and not hyperparameters.is_safe_run_id(where.run_id):
        raise SettingsError(f"the platform's job name {where.run_id!r}, used as the run id, {hyperparameters.RUN_ID_RULE}: "
                            "set hyperparameter run_id")
    return dataclasses.replace(where, run_id=settings.run_id or where.run_id,
                               checkpoint_dir=Path(settings.checkpoint_dir) if settings.checkpoint_dir else where.checkpoint_dir)


def _start(where: runtime.Platform, resolved: hyperparameters.Resolved, world: distributed.World,
           model_source: str) -> tuple[devices.Compute, tracking.Trackers]:
    """Device and processes, `job_start`, the listeners that feed the trackers (report_to) and a tuning service,
    and the publish targets checked: a bad output location, wrong credentials or a taken run id fail before training."""
    settings = resolved.settings
    if world.is_main and settings.checkpoint_dir:
        atomic.check_writable([where.checkpoint_dir])
    promotion.check_channels(settings.promote_if, where.channels)
    declared = runtime.declared_gpu(where.root)  # a given GPU must work
    compute, no_gpu = devices.choose(settings.device, settings.precision, world, declared)
    distributed.init(world, compute.device, settings.distributed_timeout_s)
    logs.event("job_start", f"seqcls run {where.run_id} on {where.name} ({compute.device.type}, {compute.precision}, "
                            f"{world.size} process{'es' if world.active else ''})" + (f"; {no_gpu}" if no_gpu else ""),
               level=logging.WARNING if no_gpu else logging.INFO, no_gpu=no_gpu,
               run_id=where.run_id, platform=where.name, device=compute.device.type, precision=compute.precision,
               world_size=world.size, torch_threads=torch.get_num_threads(),
               channels={k: str(v) for k, v in where.channels.items()},
               settings=resolved.snapshot(), ignored_hyperparameters=where.ignored_hyperparameters)
    trackers = tracking.Trackers({})
    if world.is_main:
        if where.tuning_metric_file:
            logs.subscribe(tuning.ObjectiveReport(where.tuning_metric_file, where.trial_id, settings.select_best,
                                                  settings.problem_type))
        storage.preflight_run(where.model_uri, settings.output_uri, where.run_id, _publish_options(settings))
        trackers = tracking.start(resolved, where, model_source)
    return compute, trackers
