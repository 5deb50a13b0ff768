"""The splits: train, validation and test read together, validation cut from train when absent, rows shared between
splits found, label names applied, and the checks that the splits agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import bigquery, logs, splitcheck
from ..errors import DataError
from ..problem_types import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from ..settings import Settings, label_name_map
from .columns import LABEL, PAIR, TEXT, Channel
from .labels import LabelMap, check_binary_only, check_label_count, label_weights, normalise_label
from .readers import read_channel


def split_train_validation(train: Channel, share: float, seed: int, stratified: bool = True) -> tuple[Channel, Channel]:
    """Seeded hold-out (the tutorial's random_split was unseeded), stratified by class where `stratified`
    (single_label: tag sets and scores are not classes to stratify by)."""
    from sklearn.model_selection import train_test_split

    frame = train.frame
    counts = frame[LABEL].value_counts()
    stratify = frame[LABEL] if stratified and counts.min() >= 2 else None
    n_val = max(1, round(len(frame) * share))
    if len(frame) - n_val < 1:
        raise DataError(f"train channel has {len(frame)} row(s): too few to hold out validation_split={share}")
    if stratify is not None and n_val < len(counts):
        stratify = None
    train_idx, val_idx = train_test_split(np.arange(len(frame)), test_size=n_val, random_state=seed, stratify=stratify)
    return (Channel("train", frame.iloc[np.sort(train_idx)].reset_index(drop=True), train.files, train.columns),
            Channel("validation", frame.iloc[np.sort(val_idx)].reset_index(drop=True), [], train.columns))


def sample_rows(channel: Channel, limit: int, seed: int) -> Channel:
    if not limit or len(channel.frame) <= limit:
        return channel
    return dataclasses.replace(channel, frame=channel.frame.sample(n=limit, random_state=seed).sort_index().reset_index(drop=True))


@dataclass(frozen=True)
class Splits:
    train: Channel
    validation: Channel
    test: Channel | None
    label_map: LabelMap
    validation_source: str  # "channel" or "split"
    class_weights: np.ndarray | None = None  # float32 per label id, from class_weights; None: unweighted
    split_checks: splitcheck.SplitReport | None = None  # overlap across splits, conflicting labels in train


def load_splits(channels: dict[str, Path | bigquery.Table], settings: Settings, explicit: Collection[str] | None = None) -> Splits:
    """Read train (+ validation, test); map labels from train; hold out a seeded validation share if needed.

    `explicit`: the settings the user gave; column settings left at their defaults are chosen from each header.
    """
    if "train" not in channels:
        raise DataError("no train channel: mount data at <root>/input/data/train, set AIP_TRAINING_DATA_URI, or pass --train PATH")
    train = sample_rows(read_channel(channels["train"], "train", settings.reading, explicit=explicit),
                        settings.max_train_samples, settings.seed)
    # Labels come from the whole train channel, so a rare class that the hold-out split happens to move
    # entirely into validation is still a class, not an "unseen" label.
    label_map = LabelMap.from_labels(train.frame[LABEL], settings.problem_type)
    check_label_count(label_map, train)
    if "validation" in channels:
        validation = read_channel(channels["validation"], "validation", settings.reading, explicit=explicit)
        validation_source = "channel"
    else:
        train, validation = split_train_validation(train, settings.validation_split, settings.seed,
                                                   stratified=settings.problem_type == SINGLE_LABEL)
        validation_source = "split"
    test = read_channel(channels["test"], "test", settings.reading, explicit=explicit) if "test" in channels else None
    for split in (validation, test):
        if split is not None:
            _check_same_inputs(train, split)
            label_map.check_known(split)
    check_binary_only(settings.decision_threshold, label_map)
    train, checks = check_splits(train, {"validation": validation, "test": test}, settings)
    splits = Splits(train, validation, test, label_map, validation_source,
                    label_weights(settings.class_weights, label_map, train), checks)
    return named_labels(splits, settings.label_names)


def _keys(channel: Channel) -> np.ndarray:
    return splitcheck.row_keys(channel.frame[TEXT], channel.frame[PAIR] if PAIR in channel.frame else None)


def check_splits(train: Channel, others: dict[str, Channel | None],
                 settings: Settings) -> tuple[Channel, splitcheck.SplitReport]:
    """Train rows also in validation/test, and train texts with two labels (seqcls.splitcheck); split_overlap
    decides what an overlap does: a warning, a DataError before training, or those rows dropped from train."""
    keys = _keys(train)
    masks = splitcheck.overlapping(keys, {name: _keys(split) for name, split in others.items() if split is not None})
    conflict = (0, 0, []) if settings.problem_type == REGRESSION else splitcheck.conflicts(keys, train.frame[LABEL],
                                                                                            train.frame[TEXT])
    leaked = np.logical_or.reduce(list(masks.values()))
    drop = settings.split_overlap == "drop"
    checks = splitcheck.report(train.frame[TEXT], masks, conflict, int(leaked.sum()) if drop else 0)
    found = {name: count for name, count in checks.overlap.items() if count}
    if found:
        where = " and ".join(f"{count} also in {name}" for name, count in found.items())
        example = next(iter(checks.overlap_examples[name][0] for name in found))
        message = f"{where} (texts equal after {splitcheck.NORMALISATION}), e.g. {example!r}"
        if settings.split_overlap == "fail":
            raise DataError(f"train rows cross splits: {message}; remove them, or set split_overlap=drop")
        if drop and leaked.all():
            raise DataError(f"split_overlap=drop would drop every train row: {message}")
        logs.warning("split_overlap", f"train rows cross splits: {message}; "
                     + ("dropped from train" if drop else "kept (split_overlap=warn: the metrics read on them are inflated)"),
                     overlap=checks.overlap, examples=checks.overlap_examples, dropped=checks.dropped)
    if checks.conflicting_texts:
        logs.warning("label_conflicts", f"{checks.conflicting_texts} train text(s) carry more than one label "
                     f"({checks.conflicting_rows} rows), e.g. {checks.conflict_examples[0]}",
                     conflicting_texts=checks.conflicting_texts, conflicting_rows=checks.conflicting_rows,
                     examples=checks.conflict_examples)
    if drop and leaked.any():
        train = dataclasses.replace(train, frame=train.frame[~leaked].reset_index(drop=True))
    return train, checks


def named_labels(splits: Splits, setting: str) -> Splits:
    """label_names applied: every split's labels and the label map renamed, ids kept (the sorted labels' order,
    so decision_threshold still means the second label). class_weights were matched to the labels as found."""
    given = label_name_map(setting)
    if given is None:
        return splits
    labels = splits.label_map.labels
    if isinstance(given, list):
        if len(given) != len(labels):
            raise DataError(f"hyperparameter label_names has {len(given)} name(s) but train has {len(labels)} label(s) "
                            f"({', '.join(map(repr, labels[:20]))}): give one name per label, in this order")
        renamed = dict(zip(labels, given))
    else:
        renamed = {normalise_label(label): name for label, name in given.items()}
        unknown, unnamed = sorted(set(renamed) - set(labels)), [label for label in labels if label not in renamed]
        if unknown or unnamed:
            raise DataError("hyperparameter label_names must name every label train has, and only those: "
                            + "; ".join(part for part in (
                                f"not in train: {', '.join(map(repr, unknown))}" if unknown else "",
                                f"unnamed: {', '.join(map(repr, unnamed[:20]))}" if unnamed else "") if part)
                            + f" (labels: {', '.join(map(repr, labels[:20]))})")
    multi = splits.label_map.problem_type == MULTI_LABEL

    def rename(channel: Channel | None) -> Channel | None:
        if channel is None:
            return None
        values = channel.frame[LABEL]
        frame = channel.frame.assign(**{LABEL: values.map(lambda tags: [renamed[t] for t in tags]) if multi
                                        else values.map(renamed)})
        return dataclasses.replace(channel, frame=frame)

    return dataclasses.replace(splits, train=rename(splits.train), validation=rename(splits.validation),
                               test=rename(splits.test),
                               label_map=LabelMap([renamed[label] for label in labels], splits.label_map.problem_type))


def _check_same_inputs(train: Channel, split: Channel) -> None:
    """A model trained on sentence pairs cannot be scored on single texts, nor the other way round."""
    if bool(train.columns.pair) != bool(split.columns.pair):
        shape = {True: "sentence pairs", False: "single texts"}
        raise DataError(f"{split.name} channel holds {shape[bool(split.columns.pair)]} (columns {split.columns.record()}) "
                        f"but train holds {shape[bool(train.columns.pair)]} (columns {train.columns.record()})")
