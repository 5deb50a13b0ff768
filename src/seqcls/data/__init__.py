"""Data: read channels, map labels, split, tokenize, and cut batches; one module per step (docs/layout.md).

Rows live in pandas while they are text and in flat numpy arrays once tokenized (no Python object per row), so a
million-row file stays in bounded memory. What the job, predict and the tests call is named here.
"""

from .batches import batch_widths, collate, epoch_order, eval_order, pad_multiple
from .columns import COLUMN_SETTINGS, LABEL, PAIR, TEXT, Channel, ColumnRule, choose_columns
from .encoding import Encoded, Prepared, encode_splits, log_ready, resolve_max_length, tokenize
from .labels import LabelMap, label_weights
from .readers import channel_files, count_rows, file_sha256, read_channel, read_in_chunks
from .splits import Splits, check_splits, load_splits, sample_rows, split_train_validation

__all__ = ["COLUMN_SETTINGS", "LABEL", "PAIR", "TEXT", "Channel", "ColumnRule", "Encoded", "LabelMap", "Prepared",
           "Splits", "batch_widths", "channel_files", "check_splits", "choose_columns", "collate", "count_rows",
           "encode_splits", "epoch_order", "eval_order", "file_sha256", "label_weights", "load_splits", "log_ready",
           "pad_multiple", "read_channel", "read_in_chunks", "resolve_max_length", "sample_rows",
           "split_train_validation", "tokenize"]
