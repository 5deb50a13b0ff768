"""Data: read channels, map labels, split, tokenize, and cut batches.

Rows live in pandas while they are text and in flat numpy arrays once tokenized (no Python object
per row), so a million-row file stays in bounded memory.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import hashlib
import tempfile
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import bigquery, logs, splitcheck
from .atomic import visible_files
from .errors import DataError, SettingsError
from .problem_types import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from .settings import Settings, class_weight_map, label_name_map

SUPPORTED_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
COLA_TEXT, COLA_LABEL = "sentence", "label"
TEXT, PAIR, LABEL = "text", "text_pair", "label"
# Names a column is taken for when text_column / label_column are left at their defaults.
LABEL_NAMES = ("label", "labels", "target")
TEXT_NAMES = ("text", "sentence")
PAIR_NAMES = ("sentence1", "sentence2")
COLUMN_SETTINGS = frozenset({"text_column", "text_pair_column", "label_column"})
TOKENIZE_CHUNK_ROWS = 20_000
MAX_AUTO_LENGTH = 8192  # max_length's own upper bound
# Far beyond any max_length; a longer cell is almost always rows merged by an unclosed quote or a wrong delimiter.
MAX_TEXT_CHARS = 1_000_000


@dataclass(frozen=True)
class Columns:
    """Which of a file's columns hold the text, the optional pair and the label, and how they were chosen:
    "settings" (text_column / label_column given), "auto" (picked from the header) or "cola" (headerless CoLA)."""

    text: str
    pair: str  # "" when single texts
    label: str  # "" when the rows are not labelled
    chosen: str

    def record(self) -> dict[str, str | None]:
        """As logged in `data_ready` and stored per file in the run manifest."""
        return {TEXT: self.text, PAIR: self.pair or None, LABEL: self.label or None, "chosen": self.chosen}


@dataclass(frozen=True)
class ColumnRule:
    """The column settings a user gave; None where the file's header decides."""

    text: str | None
    pair: str | None
    label: str | None

    @classmethod
    def from_settings(cls, settings: Settings, explicit: Collection[str] | None = None) -> "ColumnRule":
        """`explicit`: the setting names given by the user (a source other than the default); None: all of them.

        A pair is only looked for when the text column is chosen too: `--text_column sentence1` alone means one text.
        """
        given = COLUMN_SETTINGS if explicit is None else COLUMN_SETTINGS & set(explicit)
        text_given = "text_column" in given
        pair_given = text_given or "text_pair_column" in given
        return cls(settings.text_column if text_given else None, settings.text_pair_column if pair_given else None,
                   settings.label_column if "label_column" in given else None)

    @property
    def names(self) -> set[str]:
        """Names a headerless CoLA file's first row must not hold (else it is a header)."""
        chosen = {self.text, self.label} - {None}
        return chosen or {*TEXT_NAMES, *LABEL_NAMES}


COLA_COLUMNS_CHOSEN = Columns(COLA_TEXT, "", COLA_LABEL, "cola")


def _quoted(names: Collection[object]) -> str:
    return ", ".join(repr(str(n)) for n in names)


def _pick_label(header: list[str], path: Path) -> str:
    """run_glue's rule, `label`, then the other common names; several of those is a question only the user can answer."""
    present = [name for name in LABEL_NAMES if name in header]
    if len(present) == 1 or "label" in present:
        return present[0]
    if present:
        raise DataError(f"{path}: columns {_quoted(present)} could each be the label; set label_column")
    raise DataError(f"{path}: cannot tell which column is the label: none is named {_quoted(LABEL_NAMES)} "
                    f"(columns: {_quoted(header)}); set label_column (and text_column)")


def _pick_text(free: list[str], path: Path) -> str:
    """A common text name, else the single remaining column (run_glue); anything else is ambiguous."""
    named = [name for name in TEXT_NAMES if name in free]
    candidates = named or free
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{path}: no column is left for the text; set text_column")
    raise DataError(f"{path}: cannot tell which column is the text: candidates {_quoted(candidates)}; "
                    "set text_column (and text_pair_column for sentence pairs)")


def choose_columns(header: list[str], rule: ColumnRule, labelled: bool, path: Path) -> Columns:
    """The text, pair and label columns of one headed file.

    What the user set wins. Otherwise, as transformers' examples/pytorch/text-classification/run_glue.py
    does for custom CSV/JSON files: `label` is the label; `sentence1` and `sentence2` together are a
    pair; else the single other column is the text. Added here: the common names `labels`/`target`
    for the label and `text`/`sentence` for the text. Where run_glue takes the first two remaining
    columns as a pair, this refuses and names the candidates: a silently wrong column trains a useless model.
    """
    label = rule.label
    if label is None and labelled:
        label = _pick_label([c for c in header if c not in (rule.text, rule.pair)], path)
    # Unlabelled rows (predict) may still carry a label column: it is never the text.
    not_text = {label} if label else set(LABEL_NAMES)
    free = [c for c in header if c not in not_text and c != rule.pair]
    text, pair = rule.text, rule.pair
    if text is None:
        if pair is None and all(name in free for name in PAIR_NAMES):
            text, pair = PAIR_NAMES
        else:
            text = _pick_text(free, path)
    auto = rule.text is None or (labelled and rule.label is None)
    return Columns(text, pair or "", (label or "") if labelled else "", "auto" if auto else "settings")


@dataclass(frozen=True)
class Channel:
    """One split's rows with canonical columns text, [text_pair], label (labels as strings)."""

    name: str
    frame: pd.DataFrame
    files: list[dict[str, object]]  # path, sha256, rows, columns: recorded in the run manifest
    columns: Columns | None = None  # the columns the channel's files were read by


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


WILDCARD_CHARS = "*?["


def matching_files(pattern: Path, channel: str) -> list[Path]:
    """A wildcard means exactly the files it matches, in name order, never their folder: Vertex hands a managed
    dataset over as `gs://…/training-*`, `validation-*` and `test-*`, all in one folder ("Use managed datasets",
    https://cloud.google.com/vertex-ai/docs/training/using-managed-datasets), so the folder holds every split."""
    folder = pattern.parent
    listed = visible_files(folder, recursive=False) if folder.is_dir() else []
    files = [p for p in listed if fnmatch.fnmatchcase(p.name, pattern.name)]
    if not files:
        raise DataError(f"{channel} channel {pattern}: no files match the wildcard")
    unsupported = [p.name for p in files if p.suffix.lower() not in SUPPORTED_SUFFIXES]
    if unsupported:
        raise DataError(f"{channel} channel {pattern} matches files of unsupported type ({', '.join(unsupported[:3])}); "
                        f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return _inside(files, folder, channel)


def channel_files(path: Path, channel: str) -> list[Path]:
    """A channel is one file, a folder of files (hidden files and unsupported suffixes skipped) or a wildcard."""
    if not path.exists() and any(ch in path.name for ch in WILDCARD_CHARS):
        return matching_files(path, channel)
    if not path.exists():
        raise DataError(f"{channel} channel {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(f"{channel} file {path} has unsupported type {path.suffix or '(none)'}; "
                            f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [path]
    files = visible_files(path)
    supported = [p for p in files if p.suffix.lower() in SUPPORTED_SUFFIXES]
    if not supported:
        listing = ", ".join(p.name for p in files[:5]) or "no files"
        raise DataError(f"{channel} channel {path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files (found: {listing})")
    return _inside(supported, path, channel)


def _inside(files: list[Path], folder: Path, channel: str) -> list[Path]:
    """Files of a folder or wildcard must stay inside that folder: a symlink to elsewhere on the host is refused,
    so a channel (possibly assembled by someone else) cannot make the job read files it was not given."""
    root = folder.resolve()
    for file in files:
        target = file.resolve()
        if not target.is_relative_to(root):
            raise DataError(f"{channel} file {file} is a symlink to {target}, outside the channel folder {folder}: "
                            "copy the file into the channel instead")
    return files


def _is_cola_layout(first_line: str, rule: ColumnRule) -> bool:
    fields = first_line.rstrip("\r\n").split("\t")
    return len(fields) == 4 and fields[1].strip().lstrip("-").isdigit() and not rule.names & set(fields)


def _read_file(path: Path, rule: ColumnRule) -> tuple[pd.DataFrame, bool]:
    """Read one file as strings; returns the frame and whether it is a headerless CoLA file."""
    return next(_file_frames(path, rule, None))


def _file_frames(path: Path, rule: ColumnRule, chunk_rows: int | None) -> Iterator[tuple[pd.DataFrame, bool]]:
    """One file as string frames of at most `chunk_rows` rows (None: the whole file as one frame), each with
    whether the file is a headerless CoLA file; every failure, however late in the file, is a DataError."""
    suffix = path.suffix.lower()
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes)")
        if suffix == ".parquet":
            batches = ([pd.read_parquet(path)] if chunk_rows is None else
                       (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)))
            yield from ((frame, False) for frame in batches)
        elif suffix in (".jsonl", ".json"):
            read = pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows)
            yield from ((frame, False) for frame in ([read] if chunk_rows is None else read))
        else:
            yield from _delimited_frames(path, rule, chunk_rows)
    except DataError:
        raise
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not valid UTF-8 (byte {err.start}): save it as UTF-8") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path} could not be parsed: {str(err).strip()}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except (ValueError, OSError, pa.ArrowException) as err:
        raise DataError(f"{path} could not be read as {suffix[1:]}: {str(err).strip()[:300]}") from None


def _delimited_frames(path: Path, rule: ColumnRule, chunk_rows: int | None) -> Iterator[tuple[pd.DataFrame, bool]]:
    """CSV, or TSV (CoLA's headerless layout detected from its first line); ragged rows are refused first."""
    with path.open("r", encoding="utf-8") as handle:
        first_line = handle.readline()
    if not first_line.strip():
        raise DataError(f"{path} is empty")
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if path.suffix.lower() == ".tsv" else (",", csv.QUOTE_MINIMAL)
    cola = path.suffix.lower() == ".tsv" and _is_cola_layout(first_line, rule)
    header = next(csv.reader([first_line], delimiter=delimiter))
    if not cola:
        # pandas renames a repeated header "a" to "a.1"; a silently renamed column is a bug magnet.
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise DataError(f"{path}: duplicate column name(s) {', '.join(map(repr, duplicates))} in the header")
    names = {"header": None, "names": COLA_COLUMNS} if cola else {}
    read = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, quoting=quoting, engine="c",
                       chunksize=chunk_rows, **names)
    if chunk_rows is None:  # the whole file: parse errors first, then the ragged-row pass, then the frame
        _check_no_short_rows(path, delimiter, quoting, read.shape[1], not cola)
        yield read, cola
        return
    for frame in read:  # a ragged row found by the closing pass fails the whole read, after the chunks
        yield frame, cola
    _check_no_short_rows(path, delimiter, quoting, len(COLA_COLUMNS) if cola else len(header), not cola)


def _check_no_short_rows(path: Path, delimiter: str, quoting: int, expected: int, has_header: bool) -> None:
    """pandas pads a row with too few fields with "" (it only rejects too many); a ragged row is a broken file.

    A second pass with the csv module, which reports each row's true field count (blank lines skipped, as pandas does).
    """
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) would reject cells that the text-length check reports better
    with path.open("r", encoding="utf-8", newline="") as handle:
        rows = (row for row in csv.reader(handle, delimiter=delimiter, quoting=quoting) if row)
        if has_header:
            next(rows, None)
        for number, row in enumerate(rows, 1):
            if len(row) < expected:
                raise DataError(f"{path}: row {number}{' after the header' if has_header else ''} has {len(row)} field(s), "
                                f"expected {expected}: check the delimiter and quoting")


def _label_kind(label: str) -> str:
    try:
        number = float(label)
    except ValueError:
        return "name"
    return "integer" if number.is_integer() else "fraction"


def _check_label_kinds(labels: pd.Series, path: Path, column: str) -> str:
    """Classes are integers or names. Fractions, or numbers mixed with names, mean a wrong column or a broken file.

    Returns the file's kind ("integer" or "name") so a channel can refuse files that disagree.
    """
    kinds = labels.map({value: _label_kind(value) for value in labels.unique()}).to_numpy()
    fractions = np.flatnonzero(kinds == "fraction")
    if len(fractions):
        row = int(fractions[0])
        raise DataError(f"{path}: row {row + 1} has label {labels.iloc[row]!r} in column {column!r}: classes must be "
                        "integers or names (a fractional score is a regression target: use problem_type=regression)")
    odd = np.flatnonzero(kinds != kinds[0])
    if len(odd):
        row = int(odd[0])
        raise DataError(f"{path}: column {column!r} mixes numbers and names: row 1 has label {labels.iloc[0]!r}, "
                        f"row {row + 1} has {labels.iloc[row]!r}")
    return str(kinds[0])


def _normalise_label(value: object) -> str:
    """Labels compare as strings: 1, 1.0 and "1" are the same label across files and formats."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    text = str(value).strip()
    try:
        number = float(text)
        if number.is_integer():
            return str(int(number))
    except ValueError:
        pass
    return text


def _canonical(frame: pd.DataFrame, path: Path, columns: Columns, settings: Settings) -> tuple[pd.DataFrame, str]:
    """Canonical columns, checked; also returns the label kind (see `_read_labels`; "" when unlabelled)."""
    text_col, label_col, labelled = columns.text, columns.label, bool(columns.label)
    wanted = [text_col] + ([columns.pair] if columns.pair else []) + ([label_col] if labelled else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, map(str, frame.columns)))}"
                        f" (set text_column / text_pair_column / label_column)")
    if len(frame) == 0:
        raise DataError(f"{path} has a header but no rows")
    out = pd.DataFrame({TEXT: frame[text_col]})
    if columns.pair:
        out[PAIR] = frame[columns.pair]
    for column, source in zip(out.columns, wanted):
        out[column] = out[column].where(out[column].notna(), "").astype(str)
        lengths = out[column].str.len().to_numpy()
        if lengths.max() > MAX_TEXT_CHARS:
            row = int(lengths.argmax())
            raise DataError(f"{path}: row {row + 1} has {int(lengths[row]):,} characters in column {source!r} (limit "
                            f"{MAX_TEXT_CHARS:,}): an unclosed quote or a wrong delimiter can merge many rows into one")
    if labelled:
        out[LABEL], kind = _read_labels(frame[label_col], path, label_col, settings)
        return out, kind
    return out, ""


def _read_labels(labels: pd.Series, path: Path, column: str, settings: Settings) -> tuple[list, str]:
    """One file's labels as the problem type reads them, and their kind: "integer" or "name" classes
    (single_label), "tags" (multi_label: a tuple of names per row, possibly empty) or "number" (regression)."""
    if settings.problem_type == MULTI_LABEL:
        return [_tag_set(value, settings.label_delimiter) for value in labels.tolist()], "tags"
    empty = labels.isna() | (labels.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{path}: row {row + 1} has an empty label in column {column!r} ({int(empty.sum())} such rows)")
    normalised = [_normalise_label(v) for v in labels.tolist()]
    if settings.problem_type == REGRESSION:
        return _targets(normalised, path, column), "number"
    return normalised, _check_label_kinds(pd.Series(normalised), path, column)


def _tag_set(value: object, delimiter: str) -> tuple[str, ...]:
    """A multi_label cell: a list (JSONL, Parquet) or a delimited string (CSV/TSV); sorted, repeats dropped.
    An empty cell or list is a row with no labels, which is allowed (every label's sigmoid learns "no")."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        items = []
    else:
        items = str(value).split(delimiter)
    tags = {_normalise_label(item) for item in items}
    return tuple(sorted(tags - {""}))


def _targets(labels: list[str], path: Path, column: str) -> list[float]:
    """Regression targets, used as given (no scaling): every one a finite number."""
    targets = []
    for row, label in enumerate(labels):
        try:
            number = float(label)
        except ValueError:
            number = float("nan")
        if not np.isfinite(number):
            raise DataError(f"{path}: row {row + 1} has label {label!r} in column {column!r}: problem_type=regression "
                            "needs a finite number in every row")
        targets.append(number)
    return targets


def _file_columns(frame: pd.DataFrame, path: Path, rule: ColumnRule, labelled: bool, cola: bool) -> Columns:
    if cola:
        return COLA_COLUMNS_CHOSEN if labelled else dataclasses.replace(COLA_COLUMNS_CHOSEN, label="")
    if len(frame.columns) == 0:
        raise DataError(f"{path} holds no data")
    return choose_columns(list(frame.columns), rule, labelled, path)


def _channel_columns(chosen: list[tuple[Path, Columns]], channel: str) -> Columns:
    """The files of one channel must agree on their columns; a headerless CoLA file has no names, so it
    only has to agree on being single texts."""
    named = [(file, columns) for file, columns in chosen if columns.chosen != "cola"]
    first_file, first = (named or chosen)[0]
    for file, columns in chosen:
        agrees = (bool(columns.pair) == bool(first.pair) if columns.chosen == "cola"
                  else (columns.text, columns.pair, columns.label) == (first.text, first.pair, first.label))
        if not agrees:
            raise DataError(f"{channel} channel: {file} is read with columns {columns.record()} but {first_file} with "
                            f"{first.record()}; give the files the same header or set text_column / label_column")
    return first


# Vertex AI's text classification datasets as JSON lines (import and export), "Prepare text training data for
# classification": https://cloud.google.com/vertex-ai/docs/text-data/classification/prepare-data
VERTEX_TEXT, VERTEX_GCS_TEXT = "textContent", "textGcsUri"
VERTEX_SINGLE, VERTEX_MULTI = "classificationAnnotation", "classificationAnnotations"
VERTEX_RESOURCE_LABELS, VERTEX_ML_USE = "dataItemResourceLabels", "aiplatform.googleapis.com/ml_use"
ML_USE = {"train": "training", "validation": "validation", "test": "test"}  # channel -> its ml_use value


def _vertex_text_rows(frame: pd.DataFrame, path: Path, channel: str, problem_type: str) -> pd.DataFrame:
    """A Vertex text dataset file (detected by its keys) as columns text and label: the displayName, or for
    classificationAnnotations the list of them. Rows whose ml_use names another split are left to that channel."""
    if not {VERTEX_TEXT, VERTEX_GCS_TEXT} & set(frame.columns):
        return frame
    if VERTEX_TEXT not in frame.columns or frame[VERTEX_TEXT].isna().any():
        raise DataError(f"{path}: a Vertex text dataset row names its text by {VERTEX_GCS_TEXT} (a file in Cloud Storage); "
                        f"seqcls reads inline {VERTEX_TEXT} only: export the dataset with the text inline")
    out = pd.DataFrame({TEXT: frame[VERTEX_TEXT]})
    if VERTEX_MULTI in frame.columns:
        if problem_type != MULTI_LABEL:
            raise DataError(f"{path} holds {VERTEX_MULTI} (several labels per text): set problem_type=multi_label")
        out[LABEL] = [[a.get("displayName") for a in annotations if isinstance(a, dict)]
                      if isinstance(annotations, list) else [] for annotations in frame[VERTEX_MULTI]]
    elif VERTEX_SINGLE in frame.columns:
        names = [a.get("displayName") if isinstance(a, dict) else None for a in frame[VERTEX_SINGLE]]
        out[LABEL] = [[name] if name else [] for name in names] if problem_type == MULTI_LABEL else names
    uses = (frame[VERTEX_RESOURCE_LABELS].map(lambda labels: labels.get(VERTEX_ML_USE) if isinstance(labels, dict) else None)
            if VERTEX_RESOURCE_LABELS in frame.columns else pd.Series([None] * len(frame)))
    wanted = ML_USE.get(channel)
    mine = (uses.isna() | (uses == wanted)).to_numpy() if wanted else np.ones(len(frame), dtype=bool)
    if not mine.any():
        found = ", ".join(sorted(map(str, set(uses.dropna()))))
        raise DataError(f"{path}: no row is for the {channel} split (ml_use {wanted}; the file has {found}): give the "
                        f"{channel} channel the file of its split")
    if not mine.all():
        logs.event("ml_use_rows", f"{channel}: {path.name} keeps {int(mine.sum())} of {len(frame)} rows (ml_use "
                   f"{wanted}); the others name another split", channel=channel, path=str(path), kept=int(mine.sum()),
                   rows=len(frame), ml_use=wanted)
    return out[mine].reset_index(drop=True)


def read_channel(source: Path | bigquery.Table, channel: str, settings: Settings, labelled: bool = True,
                 explicit: Collection[str] | None = None) -> Channel:
    """Read every file of a channel (or a BigQuery table) into one frame; rows with empty text are dropped and counted.

    `explicit`: the column settings the user gave (None: all); the others are chosen from each file's header.
    """
    if isinstance(source, bigquery.Table):
        return _read_table(source, channel, settings, labelled, explicit)
    return _read_files(channel_files(source, channel), source, channel, settings, labelled, explicit)


def _read_table(table: bigquery.Table, channel: str, settings: Settings, labelled: bool,
                explicit: Collection[str] | None) -> Channel:
    """The table's rows exported to a temporary Parquet file, then read as a file; messages and the manifest
    name the table, never the temporary file."""
    with tempfile.TemporaryDirectory(prefix="seqcls-bq-") as folder:
        file = bigquery.export(table, Path(folder), channel)
        try:
            read = _read_files([file], table, channel, settings, labelled, explicit)
        except DataError as err:
            raise DataError(str(err).replace(str(file), str(table))) from None
    return dataclasses.replace(read, files=[{**f, "path": str(table)} for f in read.files])


def _read_files(found: list[Path], source: Path | bigquery.Table, channel: str, settings: Settings, labelled: bool,
                explicit: Collection[str] | None) -> Channel:
    rule = ColumnRule.from_settings(settings, explicit)
    frames, files, kinds, chosen = [], [], {}, []
    for file in found:
        frame, cola = _read_file(file, rule)
        frame = _vertex_text_rows(frame, file, channel, settings.problem_type)
        columns = _file_columns(frame, file, rule, labelled, cola)
        frame, kind = _canonical(frame, file, columns, settings)
        frames.append(frame)
        chosen.append((file, columns))
        files.append({"channel": channel, "path": str(file), "sha256": file_sha256(file), "rows": len(frame),
                      "columns": columns.record()})
        kinds.setdefault(kind, file)
    columns = _channel_columns(chosen, channel)
    if "integer" in kinds and "name" in kinds:
        raise DataError(f"{channel} channel mixes numeric labels ({kinds['integer']}) and label names ({kinds['name']})")
    combined, dropped = _without_empty_text(pd.concat(frames, ignore_index=True))
    _dropped_or_empty(dropped, len(combined), source, channel)
    return Channel(channel, combined, files, columns)


def read_in_chunks(source: Path, channel: str, settings: Settings, explicit: Collection[str] | None,
                   chunk_rows: int) -> Iterator[pd.DataFrame]:
    """What read_channel(labelled=False) holds (text, [text_pair]), in file order, at most `chunk_rows` rows at a
    time and never all at once: `seqcls predict` over any number of rows. The same checks, file by file."""
    rule = ColumnRule.from_settings(settings, explicit)
    chosen: list[tuple[Path, Columns]] = []
    dropped = kept = 0
    for file in channel_files(source, channel):
        for frame, cola in _file_frames(file, rule, chunk_rows):
            frame = _vertex_text_rows(frame, file, channel, settings.problem_type)
            columns = _file_columns(frame, file, rule, False, cola)
            if not chosen or chosen[-1][0] != file:
                chosen.append((file, columns))
                _channel_columns(chosen, channel)
            frame, empty = _without_empty_text(_canonical(frame, file, columns, settings)[0])
            dropped, kept = dropped + empty, kept + len(frame)
            if len(frame):
                yield frame
    _dropped_or_empty(dropped, kept, source, channel)


def count_rows(source: Path, channel: str, settings: Settings, explicit: Collection[str] | None) -> int:
    """About how many rows the channel holds, without reading them: Parquet's metadata, else the non-blank lines
    less a header (a quoted text spanning lines counts more than once). For progress and the time left only."""
    rule, rows = ColumnRule.from_settings(settings, explicit), 0
    for file in channel_files(source, channel):
        if file.suffix.lower() == ".parquet":
            rows += pq.ParquetFile(file).metadata.num_rows
            continue
        with file.open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())  # pandas skips blank lines (spaces only, too)
            handle.seek(0)
            first = handle.readline().decode("utf-8", errors="replace")
        headerless = file.suffix.lower() in (".jsonl", ".json") or (
            file.suffix.lower() == ".tsv" and _is_cola_layout(first, rule))
        rows += lines - (0 if headerless else 1)
    return max(rows, 0)


def _without_empty_text(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows whose text (or text pair) is empty or blank removed; returns how many there were."""
    empty = np.zeros(len(frame), dtype=bool)
    for column in [TEXT] + ([PAIR] if PAIR in frame else []):
        empty |= (frame[column].str.strip() == "").to_numpy()
    return (frame[~empty].reset_index(drop=True), int(empty.sum())) if empty.any() else (frame, 0)


def _dropped_or_empty(dropped: int, kept: int, source: Path | bigquery.Table, channel: str) -> None:
    if dropped:
        logs.warning("rows_dropped", f"{channel}: dropped {dropped} row(s) with empty text", channel=channel,
                     dropped=dropped)
    if kept == 0:
        raise DataError(f"{channel} channel {source} has no rows with text")


REGRESSION_LABEL = "score"  # the one output of a regression model, as config.json's id2label names it


@dataclass(frozen=True)
class LabelMap:
    """The model's outputs: class or tag names in id order (sorted from train), or the one regression score."""

    labels: list[str]  # id -> label
    problem_type: str = SINGLE_LABEL

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @classmethod
    def from_labels(cls, values: pd.Series, problem_type: str = SINGLE_LABEL) -> "LabelMap":
        """Sorted for determinism: integers numerically, anything else as text; multi_label: every tag seen."""
        if problem_type == REGRESSION:
            return cls([REGRESSION_LABEL], problem_type)
        unique = sorted(set(chain.from_iterable(values) if problem_type == MULTI_LABEL else values.tolist()))
        if all(v.lstrip("-").isdigit() for v in unique):
            unique.sort(key=int)
        return cls(unique, problem_type)

    def check_known(self, channel: Channel) -> None:
        """A label the model never saw in training cannot be scored: refuse it before any model work."""
        if self.problem_type == REGRESSION:
            return
        values = channel.frame[LABEL]
        seen = set(chain.from_iterable(values)) if self.problem_type == MULTI_LABEL else set(values)
        unseen = sorted(seen - set(self.labels))
        if unseen:
            raise DataError(f"{channel.name} channel has label(s) {', '.join(map(repr, unseen[:10]))} not seen in training "
                            f"(training labels: {', '.join(map(repr, self.labels[:20]))})")

    def encode(self, channel: Channel) -> np.ndarray:
        """int64 class ids [rows], float32 multi-hot [rows, labels] or float32 targets [rows]; writable: torch shares it."""
        self.check_known(channel)
        values = channel.frame[LABEL]
        if self.problem_type == REGRESSION:
            return np.array(values.to_numpy(dtype=np.float32))
        if self.problem_type == MULTI_LABEL:
            hot = np.zeros((len(values), len(self.labels)), dtype=np.float32)
            ids = self.label2id
            for row, tags in enumerate(values):
                hot[row, [ids[tag] for tag in tags]] = 1.0
            return hot
        return np.array(values.map(self.label2id).to_numpy(dtype=np.int64))

    def blank(self, rows: int) -> np.ndarray:
        """Labels of the right dtype and shape for unlabelled rows (predict): never read as truth."""
        if self.problem_type == MULTI_LABEL:
            return np.zeros((rows, len(self.labels)), dtype=np.float32)
        return np.zeros(rows, dtype=np.float32 if self.problem_type == REGRESSION else np.int64)

    def names(self, labels: np.ndarray) -> list:
        """Encoded labels or predictions back to what a person reads: class names, tag lists, or the numbers."""
        if self.problem_type == REGRESSION:
            return [round(float(v), 6) for v in labels]
        if self.problem_type == MULTI_LABEL:
            return [[self.labels[i] for i in np.flatnonzero(row)] for row in labels]
        return [self.labels[i] for i in labels]


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


def label_balance(labels: np.ndarray, label_map: LabelMap) -> dict[str, float]:
    """Rows per class (single_label), rows per tag (multi_label), or the targets' min, mean and max (regression)."""
    if label_map.problem_type == REGRESSION:
        return {"min": round(float(labels.min()), 6), "mean": round(float(labels.mean()), 6),
                "max": round(float(labels.max()), 6)}
    counts = labels.sum(axis=0) if label_map.problem_type == MULTI_LABEL else np.bincount(labels, minlength=len(label_map.labels))
    return {label: int(count) for label, count in zip(label_map.labels, counts)}


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
    chosen = min(max(_padded_width(wanted, 8), 8), ceiling)
    logs.event("max_length_chosen", f"max_length=auto: {chosen} tokens ({settings.max_length_percentile:g}th "
                                    f"percentile of train is {wanted}, longest {int(lengths.max())}"
                                    + (f", model limit {limit}" if limit else "") + ")",
               max_length=chosen, percentile=settings.max_length_percentile, percentile_tokens=wanted,
               longest_tokens=int(lengths.max()), model_limit=limit,
               train_rows_truncated=int((lengths > chosen).sum()))
    return chosen


def epoch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[np.ndarray]:
    """The batches of one epoch: a pure function of (seed, epoch), so a resumed run sees the same order.

    Every batch holds batch_size rows except the last. With group_by_length, a shuffled order is cut
    into megabatches of 50 batches whose rows are sorted by length, so batches pad less yet stay random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        mega = 50 * batch_size
        order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                                for chunk in np.split(order, range(mega, len(order), mega))])
    return np.split(order, range(batch_size, len(order), batch_size))


def eval_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length (least padding); callers restore row order by index."""
    order = np.argsort(lengths, kind="stable")
    return np.split(order, range(batch_size, len(order), batch_size))


def pad_multiple(device_type: str) -> int:
    """GPU tensor cores want widths in multiples of 8 (and the CUDA graphs one bucket per multiple);
    a CPU only pays for the extra columns."""
    return 8 if device_type == "cuda" else 1


def _padded_width(longest: int, pad_to_multiple_of: int) -> int:
    return -(-longest // pad_to_multiple_of) * pad_to_multiple_of


def batch_widths(lengths: np.ndarray, batches: list[np.ndarray], pad_to_multiple_of: int) -> list[int]:
    """Every padded width `collate` will produce for these batches (the CUDA graph path captures one each)."""
    return sorted({_padded_width(int(lengths[rows].max()), pad_to_multiple_of) for rows in batches})


def collate(encoded: Encoded, rows: np.ndarray, pad_token_id: int, pad_to_multiple_of: int) -> dict[str, np.ndarray]:
    """Pad one batch to its own longest row (rounded up), not to max_length. `weights` is each row's share of
    the batch loss: 1/rows, times its label's class weight when there are class weights."""
    starts, ends = encoded.offsets[rows], encoded.offsets[rows + 1]
    width = _padded_width(int((ends - starts).max()), pad_to_multiple_of)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (start, end) in enumerate(zip(starts, ends)):
        n = end - start
        input_ids[i, :n] = encoded.input_ids[start:end]
        token_type_ids[i, :n] = encoded.token_type_ids[start:end]
        attention_mask[i, :n] = 1
    weights = encoded.weights[rows] if encoded.weights is not None else np.ones(len(rows), dtype=np.float32)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": encoded.labels[rows], "weights": weights / np.float32(len(rows))}



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
    train = sample_rows(read_channel(channels["train"], "train", settings, explicit=explicit), settings.max_train_samples,
                        settings.seed)
    # Labels come from the whole train channel, so a rare class that the hold-out split happens to move
    # entirely into validation is still a class, not an "unseen" label.
    label_map = LabelMap.from_labels(train.frame[LABEL], settings.problem_type)
    _check_label_count(label_map, train)
    if "validation" in channels:
        validation = read_channel(channels["validation"], "validation", settings, explicit=explicit)
        validation_source = "channel"
    else:
        train, validation = split_train_validation(train, settings.validation_split, settings.seed,
                                                   stratified=settings.problem_type == SINGLE_LABEL)
        validation_source = "split"
    test = read_channel(channels["test"], "test", settings, explicit=explicit) if "test" in channels else None
    for split in (validation, test):
        if split is not None:
            _check_same_inputs(train, split)
            label_map.check_known(split)
    _check_binary_only(settings, label_map)
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
        renamed = {_normalise_label(label): name for label, name in given.items()}
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


def _check_binary_only(settings: Settings, label_map: LabelMap) -> None:
    if settings.decision_threshold != 0.5 and len(label_map.labels) != 2:
        raise SettingsError(f"hyperparameter decision_threshold={settings.decision_threshold} needs exactly two labels; "
                            f"train has {len(label_map.labels)} ({', '.join(map(repr, label_map.labels[:10]))})")


def label_weights(setting: str, label_map: LabelMap, train: Channel) -> np.ndarray | None:
    """class_weights per label id: `balanced` as scikit-learn computes it (n_rows / (n_labels * label_rows), so
    the mean row weight over train is 1 and the learning rate keeps its meaning), or the given map."""
    if setting == "none":
        return None
    if setting == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        ids = label_map.encode(train)
        return compute_class_weight("balanced", classes=np.arange(len(label_map.labels)), y=ids).astype(np.float32)
    given = {_normalise_label(label): weight for label, weight in class_weight_map(setting).items()}
    unknown = sorted(set(given) - set(label_map.labels))
    if unknown:
        raise SettingsError(f"hyperparameter class_weights names label(s) {', '.join(map(repr, unknown))} that train "
                            f"does not have (labels: {', '.join(map(repr, label_map.labels[:20]))})")
    return np.array([given.get(label, 1.0) for label in label_map.labels], dtype=np.float32)


def _check_label_count(label_map: LabelMap, train: Channel) -> None:
    """A single_label classifier needs two classes; a multi_label one at least one tag somewhere in train."""
    if label_map.problem_type == SINGLE_LABEL and len(label_map.labels) < 2:
        raise DataError(f"train channel has a single label {label_map.labels[0]!r} in column "
                        f"{train.columns.label!r}: a classifier needs at least two")
    if label_map.problem_type == MULTI_LABEL and not label_map.labels:
        raise DataError(f"train channel has no labels in any row of column {train.columns.label!r}: "
                        "problem_type=multi_label needs at least one")


def _check_same_inputs(train: Channel, split: Channel) -> None:
    """A model trained on sentence pairs cannot be scored on single texts, nor the other way round."""
    if bool(train.columns.pair) != bool(split.columns.pair):
        shape = {True: "sentence pairs", False: "single texts"}
        raise DataError(f"{split.name} channel holds {shape[bool(split.columns.pair)]} (columns {split.columns.record()}) "
                        f"but train holds {shape[bool(train.columns.pair)]} (columns {train.columns.record()})")


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
