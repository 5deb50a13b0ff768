"""The job, top-down, like the tutorial: settings, data, model, train, evaluate, save.

Each step is one call into the module that owns it; this file only says the order and what is logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform as host_platform
import time
from importlib import metadata
from pathlib import Path
import torch

from . import artifacts, atomic, checkpoint, data, distributed, evaluate, gpu, logs, model, scalars, storage, train, tuning
from . import platform as runtime
from . import settings as hyperparameters
from .errors import Interrupted

PACKAGES = ("seqcls", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "scikit-learn")


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = host_platform.python_version()
    return found


def _published(published: storage.Published) -> None:
    logs.event("artifacts_published", f"published {published.files} files ({published.bytes} bytes) to "
                                      f"{published.uri} in {published.seconds:.1f}s",
               uri=published.uri, files=published.files, bytes=published.bytes, seconds=published.seconds,
               checks=published.checks)


def run(where: runtime.Platform) -> Path:
    """Run the whole pipeline; returns the model folder. Raises on any failure (cli turns that into the failure file)."""
    started = time.perf_counter()

    # Step 1: the hyperparameters (the platform already told where things are) and the processes.
    world = distributed.from_env()
    if world.is_main:
        atomic.check_writable(where.output_folders)  # seconds, not a lost run, when the platform's folders are not ours
        where.failure_file.unlink(missing_ok=True)  # a reason left by an earlier run in this tree is stale
    resolved = hyperparameters.resolve(where.hyperparameter_layers)
    settings = resolved.settings
    if world.is_main and settings.checkpoint_dir:
        atomic.check_writable([Path(settings.checkpoint_dir)])
    if settings.run_id:
        where = dataclasses.replace(where, run_id=settings.run_id)
    gpu_seen = gpu.look(declared=runtime.declared_gpu(where.root))
    device = train.pick_device(settings, world, gpu_seen)  # fails here when a given GPU cannot be used
    no_gpu = gpu.cpu_note(gpu_seen) if device.type == "cpu" and settings.device == "auto" else None
    precision = train.pick_precision(settings, device)
    distributed.init(world, device, settings.distributed_timeout_s)
    logs.event("job_start", f"seqcls run {where.run_id} on {where.name} ({device.type}, {precision}, "
                            f"{world.size} process{'es' if world.active else ''})" + (f"; {no_gpu}" if no_gpu else ""),
               level=logging.WARNING if no_gpu else logging.INFO, no_gpu=no_gpu,
               run_id=where.run_id, platform=where.name, device=device.type, precision=precision, world_size=world.size,
               torch_threads=torch.get_num_threads(), channels={k: str(v) for k, v in where.channels.items()},
               settings=resolved.snapshot(), ignored_hyperparameters=where.ignored_hyperparameters)
    if world.is_main:  # TensorBoard and the tuning objective take their values from the events logged below
        logs.subscribe(scalars.TensorBoardScalars(where.tensorboard_dir, settings.epochs))
        if where.tuning_metric_file:
            logs.subscribe(tuning.ObjectiveReport(where.tuning_metric_file, where.trial_id, settings.select_best))
    # Fail before training, not after it, on a bad output location, wrong credentials or a taken run id.
    output_uri = settings.output_uri
    publish_options = storage.Options(settings.s3_sse_kms_id, settings.s3_expected_bucket_owner, settings.publish_latest)
    if output_uri and world.is_main:
        storage.preflight(output_uri, where.run_id, publish_options)
    if where.model_uri and world.is_main:
        storage.preflight_folder(where.model_uri, publish_options)

    # Step 2: data. Read and split first, then check the model config before loading any weights.
    splits = data.load_splits(where.channels, settings)
    model_source = str(where.channels.get("model") or settings.model_name_or_path)
    config = model.load_config(model_source, splits.label_map)
    model.check_max_length(config, settings.max_length, model_source)
    tokenizer = model.load_tokenizer(model_source)
    encoded, token_stats = {}, {}
    for split in (splits.train, splits.validation, splits.test):
        if split is None:
            continue
        labels = splits.label_map.encode(split)
        encoded[split.name], token_stats[split.name] = data.tokenize(tokenizer, split, labels, settings.max_length)
    logs.event("data_ready", f"train {len(encoded['train'])} / validation {len(encoded['validation'])} / "
                             f"test {len(encoded['test']) if 'test' in encoded else 0} rows",
               labels=splits.label_map.labels, validation_source=splits.validation_source,
               rows={name: len(e) for name, e in encoded.items()},
               label_balance={name: data.label_balance(e.labels, splits.label_map) for name, e in encoded.items()},
               longest_tokens={name: t.longest for name, t in token_stats.items()},
               truncated_rows={name: t.truncated for name, t in token_stats.items()},
               max_length=settings.max_length)

    # Step 3: model and training.
    classifier = model.load_model(model_source, config, settings.seed)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data_files = [f for split in (splits.train, splits.validation) for f in split.files]
    checkpointer = checkpoint.Checkpointer(
        Path(settings.checkpoint_dir) if settings.checkpoint_dir else where.checkpoint_dir,
        checkpoint.fingerprint(settings.as_dict(), model_source, data_files, world.size), settings.ignore_checkpoint)
    outcome = train.train(classifier, encoded["train"], encoded["validation"], settings, pad_token_id, device, precision,
                          checkpointer, world)

    # Step 4: test. A run the platform stopped (SIGTERM) skips it: the grace period is for saving a model.
    metrics: dict[str, object] = {
        "best_epoch": outcome.best_epoch,
        "validation": {k: v for k, v in outcome.stats[outcome.best_epoch - 1].__dict__.items()
                       if k.startswith("val_") and k != "val_seconds"} if outcome.best_epoch else {},
        "labels": splits.label_map.labels,
    }
    partial = outcome.partial(kept_best=settings.select_best != "none")
    if partial:
        metrics["partial"] = partial
    test_predictions = None
    if "test" in encoded and not partial:
        test_predictions = evaluate.predict(classifier, encoded["test"], pad_token_id, device, precision,
                                            settings.eval_batch_size, world)
        test_metrics = evaluate.classification_metrics(encoded["test"].labels, test_predictions.predicted,
                                                       len(splits.label_map.labels))
        test_metrics["loss"] = test_predictions.loss
        metrics["test"] = test_metrics
        logs.event("test_metrics", f"test MCC {test_metrics['mcc']:.4f}, accuracy {test_metrics['accuracy']:.4f}",
                   test_mcc=test_metrics["mcc"], test_accuracy=test_metrics["accuracy"], test_f1=test_metrics["f1"],
                   test_precision=test_metrics["precision"], test_recall=test_metrics["recall"],
                   test_loss=test_predictions.loss, confusion_matrix=test_metrics["confusion_matrix"])

    if not world.is_main:
        return where.model_dir  # rank 0 alone writes and publishes

    # Step 5: save the model and everything a person needs to judge it. All files go to staging folders
    # that move into place only after the reload check: a failure here (disk full...) leaves no partial set.
    with artifacts.staged(where.model_dir) as model_dir, artifacts.staged(where.output_data_dir) as out:
        saved = artifacts.save_model(classifier, tokenizer, model_dir)
        artifacts.write_json(model_dir / "metrics.json", metrics)
        artifacts.write_training_stats(out / "training_stats.csv", outcome.stats)
        artifacts.plot_loss_curve(out / "loss_curve.png", outcome.stats)
        if splits.test is not None and test_predictions is not None:
            artifacts.write_predictions(out / "test_predictions.csv", splits.test, encoded["test"].labels,
                                        test_predictions, splits.label_map)
            artifacts.plot_confusion_matrix(out / "confusion_matrix.png", metrics["test"]["confusion_matrix"],
                                            splits.label_map.labels)
        artifacts.write_json(model_dir / "run_manifest.json", {
            "run_id": where.run_id,
            "platform": where.name,
            "git_commit": where.git_commit,
            "settings": resolved.snapshot(),
            "model_source": model_source,
            "model_source_files": artifacts.model_source_files(model_source),
            "data": {"files": [f for s in (splits.train, splits.validation, splits.test) if s for f in s.files],
                     "rows": {name: len(e) for name, e in encoded.items()}, "validation_source": splits.validation_source},
            "packages": _versions(),
            "device": {"type": device.type, "precision": precision,
                       "name": torch.cuda.get_device_name(device) if device.type == "cuda" else host_platform.processor() or host_platform.machine(),
                       "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
            "timing": {"train_seconds": round(outcome.train_seconds, 3), "samples_per_s": round(outcome.samples_per_s, 1)},
            "partial": partial,
        })
        checked = artifacts.reload_check(classifier, tokenizer, model_dir, splits.test or splits.validation)
    logs.event("artifacts_saved", f"model saved to {where.model_dir} (reload check passed on {checked} rows)",
               model_dir=str(where.model_dir), output_data_dir=str(where.output_data_dir), files=saved + ["metrics.json", "run_manifest.json"],
               reload_check_rows=checked)

    if partial:  # the platform uploads the model folder as it is; the run still failed, and may resume
        raise Interrupted(f"{outcome.stopped}; a partial model ({partial['weights']}) was saved to {where.model_dir}")

    # Step 6: publish a plain, directly loadable copy; manifest.json last, so consumers never see half a model.
    # The platform's own model folder first: it is replaced, so a retry after a later failure redoes it safely.
    outputs = [where.model_dir, where.output_data_dir]
    if where.model_uri:
        _published(storage.replace(where.model_uri, where.run_id, outputs, publish_options))
    if output_uri:
        _published(storage.publish(output_uri, where.run_id, outputs, publish_options))
    checkpointer.remove()  # published: nothing is left for a later run in the same folder to resume

    test_mcc = metrics.get("test", {}).get("mcc") if isinstance(metrics.get("test"), dict) else None
    logs.event("job_end", f"done in {time.perf_counter() - started:.1f}s" + (f", test MCC {test_mcc:.4f}" if test_mcc is not None else ""),
               run_id=where.run_id, test_mcc=test_mcc, best_epoch=outcome.best_epoch,
               seconds=round(time.perf_counter() - started, 2), model_dir=str(where.model_dir))
    return where.model_dir
