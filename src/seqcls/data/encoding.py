"""Tokenization: rows into flat token arrays (no Python object per row, so a million rows stay in bounded memory),
their lengths, `max_length=auto`, and the tokenized splits a run trains on (`Prepared`)."""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd

from .. import logs
from ..settings import Settings
from .columns import PAIR, TEXT, Channel
from .labels import label_balance
from .splits import Splits

TOKENIZE_CHUNK_ROWS = 20_000
MAX_AUTO_LENGTH = 8192  # max_length's own upper bound


def padded_width(longest: int, pad_to_multiple_of: int) -> int:
    """A batch's width: its longest row rounded up to the multiple the device pads to."""
    return -(-longest // pad_to_multiple_of) * pad_to_multiple_of


@dataclass
class Encoded:
    """A tokenized split as flat arrays: row i is input_ids[offsets[i]:offsets[i+1]]."""

    input_ids: np.ndarray  # int32, all rows concatenated
    token_type_ids: np.ndarray  # int8, same shape
    offsets: np.ndarray  # int64, len rows + 1
    labels: np.ndarray  # int64 [rows] (single_label), float32 [rows, labels] (multi_label), float32 [rows] (regression)
    weights: np.ndarray | None = None  # float32 loss weight per row (class_weights); None: all 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TokenStats:
    longest: int
    truncated: int


_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its private backend copy


def _encoder(tokenizer):
    """Encode a list of texts (or text pairs) without truncation, as (input_ids, token_type_ids) lists.

    A fast tokenizer's Rust backend is called directly: transformers' batched call spends most of its
    time building Python lists for attention masks and BatchEncoding, so the backend's
    `encode_batch_fast` (no character offsets) is ~2.5x faster here and gives the same ids. A private
    copy keeps the transformers tokenizer's own truncation/padding state out of it.
    """
    if not getattr(tokenizer, "is_fast", False):
        def slow(texts: list[str], pairs: list[str] | None) -> tuple[list, list]:
            full = tokenizer(texts, pairs, truncation=False, return_attention_mask=False, return_token_type_ids=True)
            return full["input_ids"], full["token_type_ids"]

        return slow
    backend = _BACKENDS.get(tokenizer)
    if backend is None:  # made once per tokenizer: rebuilding it cost a served one-sentence request a third of its time
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        _BACKENDS[tokenizer] = backend

    def fast(texts: list[str], pairs: list[str] | None) -> tuple[list, list]:
        encodings = backend.encode_batch_fast(texts if pairs is None else list(zip(texts, pairs)))
        return [e.ids for e in encodings], [e.type_ids for e in encodings]

    return fast


def _encoded_chunks(tokenizer, frame: pd.DataFrame):
    """(texts, pairs or None, input_ids, token_type_ids) per TOKENIZE_CHUNK_ROWS rows, untruncated."""
    encode = _encoder(tokenizer)
    for start in range(0, len(frame), TOKENIZE_CHUNK_ROWS):
        part = frame.iloc[start:start + TOKENIZE_CHUNK_ROWS]
        texts = part[TEXT].tolist()
        pairs = part[PAIR].tolist() if PAIR in part else None
        yield (texts, pairs, *encode(texts, pairs))


def tokenize(tokenizer, channel: Channel, labels: np.ndarray, max_length: int) -> tuple[Encoded, TokenStats]:
    """Batched tokenization in chunks; over-long rows are re-encoded with the tokenizer's own truncation.

    Encoding without truncation first tells the true longest length (the tutorial prints it to choose
    max_length) and exactly how many rows get cut.
    """
    has_pair = PAIR in channel.frame
    id_chunks, type_chunks, length_chunks = [], [], []
    longest = truncated = 0
    for texts, pairs, ids, types in _encoded_chunks(tokenizer, channel.frame):
        too_long = [i for i, row in enumerate(ids) if len(row) > max_length]
        longest = max(longest, max(map(len, ids)))
        if too_long:
            truncated += len(too_long)
            cut = tokenizer([texts[i] for i in too_long], [pairs[i] for i in too_long] if has_pair else None,
                            truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=True)
            for j, i in enumerate(too_long):
                ids[i], types[i] = cut["input_ids"][j], cut["token_type_ids"][j]
        row_lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        length_chunks.append(row_lengths)
        # chain.from_iterable flattens in C; a generator expression here cost more than the tokenizer.
        total = int(row_lengths.sum())
        id_chunks.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=total))
        type_chunks.append(np.fromiter(chain.from_iterable(types), dtype=np.int8, count=total))
    lengths = np.concatenate(length_chunks)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    encoded = Encoded(np.concatenate(id_chunks), np.concatenate(type_chunks), offsets, labels)
    return encoded, TokenStats(longest=longest, truncated=truncated)


def token_lengths(tokenizer, channel: Channel) -> np.ndarray:
    """Every row's untruncated token count (special tokens included)."""
    return np.concatenate([np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
                           for _, _, ids, _ in _encoded_chunks(tokenizer, channel.frame)])


def resolve_max_length(tokenizer, train: Channel, settings: Settings, limit: int | None) -> int:
    """max_length as given, or for `auto` the training rows' max_length_percentile rounded up to a multiple
    of 8 (what GPU tensor cores and the CUDA graph widths use), capped at the model's limit; logged."""
    if settings.max_length != "auto":
        return int(settings.max_length)
    lengths = token_lengths(tokenizer, train)
    wanted = int(np.percentile(lengths, settings.max_length_percentile, method="higher"))
    ceiling = min(limit or MAX_AUTO_LENGTH, MAX_AUTO_LENGTH)
    chosen = min(max(padded_width(wanted, 8), 8), ceiling)
    logs.event("max_length_chosen", f"max_length=auto: {chosen} tokens ({settings.max_length_percentile:g}th "
                                    f"percentile of train is {wanted}, longest {int(lengths.max())}"
                                    + (f", model limit {limit}" if limit else "") + ")",
               max_length=chosen, percentile=settings.max_length_percentile, percentile_tokens=wanted,
               longest_tokens=int(lengths.max()), model_limit=limit,
               train_rows_truncated=int((lengths > chosen).sum()))
    return chosen


@dataclass(frozen=True)
class Prepared:
    """What the data stage hands to training: the splits, the max_length chosen, the tokenized splits and the
    token counts `data_ready` reports. Train's text is dropped once tokenized (nothing later reads it; at
    millions of rows it is the largest thing in memory); validation and test keep theirs for predictions."""

    splits: Splits
    max_length: int
    encoded: dict[str, Encoded]
    stats: dict[str, TokenStats]

    def without_text(self) -> "Prepared":
        """The same facts with no rows of text and no token arrays: what a rank that maps its host's arrays
        receives from the rank that tokenized (small enough to pickle)."""
        splits = self.splits
        return dataclasses.replace(self, encoded={}, splits=dataclasses.replace(
            splits, train=_textless(splits.train), validation=_textless(splits.validation),
            test=_textless(splits.test) if splits.test else None))


def _textless(channel: Channel) -> Channel:
    return dataclasses.replace(channel, frame=channel.frame.iloc[:0])


def encode_splits(tokenizer, splits: Splits, max_length: int) -> Prepared:
    """Tokenize every split there is (train's class weights per row), then drop train's text."""
    encoded, stats = {}, {}
    for split in (splits.train, splits.validation, splits.test):
        if split is not None:
            labels = splits.label_map.encode(split)
            encoded[split.name], stats[split.name] = tokenize(tokenizer, split, labels, max_length)
    if splits.class_weights is not None:
        encoded["train"].weights = splits.class_weights[encoded["train"].labels]
    return Prepared(dataclasses.replace(splits, train=_textless(splits.train)), max_length, encoded, stats)


def log_ready(prepared: Prepared, stage: dict[str, object]) -> None:
    """`data_ready`: rows, label balance, longest and truncated rows, and `stage`: which ranks read and tokenized
    (one per host) and which mapped their host's arrays."""
    splits, encoded, stats = prepared.splits, prepared.encoded, prepared.stats
    channels = [split for split in (splits.train, splits.validation, splits.test) if split is not None]
    logs.event("data_ready", f"train {len(encoded['train'])} / validation {len(encoded['validation'])} / "
                             f"test {len(encoded['test']) if 'test' in encoded else 0} rows; {stage['summary']}",
               labels=splits.label_map.labels, problem_type=splits.label_map.problem_type,
               validation_source=splits.validation_source,
               columns={split.name: split.columns.record() for split in channels},
               rows={name: len(e) for name, e in encoded.items()},
               label_balance={name: label_balance(e.labels, splits.label_map) for name, e in encoded.items()},
               longest_tokens={name: t.longest for name, t in stats.items()},
               truncated_rows={name: t.truncated for name, t in stats.items()}, max_length=prepared.max_length,
               split_checks=splits.split_checks.record() if splits.split_checks else None,
               class_weights=None if splits.class_weights is None else
               {label: round(float(w), 6) for label, w in zip(splits.label_map.labels, splits.class_weights)},
               **{k: v for k, v in stage.items() if k != "summary"})
