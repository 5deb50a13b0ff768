"""Reading a channel: its files (a folder, a file, a wildcard), CoLA TSV, CSV/TSV, JSON Lines and Parquet, whole or
in chunks, Vertex AI's text-dataset rows and BigQuery tables, into canonical rows with their labels."""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import hashlib
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import bigquery, logs
from ..atomic import visible_files
from ..errors import DataError
from ..problem_types import MULTI_LABEL
from ..settings import Reading
from .columns import LABEL, PAIR, TEXT, Channel, ColumnRule, Columns, channel_columns, file_columns
from .labels import read_labels

SUPPORTED_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
# Far beyond any max_length; a longer cell is almost always rows merged by an unclosed quote or a wrong delimiter.
MAX_TEXT_CHARS = 1_000_000


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


def _canonical(frame: pd.DataFrame, path: Path, columns: Columns, reading: Reading) -> tuple[pd.DataFrame, str]:
    """Canonical columns, checked; also returns the label kind (see `read_labels`; "" when unlabelled)."""
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
        out[LABEL], kind = read_labels(frame[label_col], path, label_col, reading)
        return out, kind
    return out, ""


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


def read_channel(source: Path | bigquery.Table, channel: str, reading: Reading, labelled: bool = True,
                 explicit: Collection[str] | None = None) -> Channel:
    """Read every file of a channel (or a BigQuery table) into one frame; rows with empty text are dropped and counted.

    `explicit`: the column settings the user gave (None: all); the others are chosen from each file's header.
    """
    if isinstance(source, bigquery.Table):
        return _read_table(source, channel, reading, labelled, explicit)
    return _read_files(channel_files(source, channel), source, channel, reading, labelled, explicit)


def _read_table(table: bigquery.Table, channel: str, reading: Reading, labelled: bool,
                explicit: Collection[str] | None) -> Channel:
    """The table's rows exported to a temporary Parquet file, then read as a file; messages and the manifest
    name the table, never the temporary file."""
    with tempfile.TemporaryDirectory(prefix="seqcls-bq-") as folder:
        file = bigquery.export(table, Path(folder), channel)
        try:
            read = _read_files([file], table, channel, reading, labelled, explicit)
        except DataError as err:
            raise DataError(str(err).replace(str(file), str(table))) from None
    return dataclasses.replace(read, files=[{**f, "path": str(table)} for f in read.files])


def _read_files(found: list[Path], source: Path | bigquery.Table, channel: str, reading: Reading, labelled: bool,
                explicit: Collection[str] | None) -> Channel:
    rule = ColumnRule.from_settings(reading, explicit)
    frames, files, kinds, chosen = [], [], {}, []
    for file in found:
        frame, cola = _read_file(file, rule)
        frame = _vertex_text_rows(frame, file, channel, reading.problem_type)
        columns = file_columns(frame, file, rule, labelled, cola)
        frame, kind = _canonical(frame, file, columns, reading)
        frames.append(frame)
        chosen.append((file, columns))
        files.append({"channel": channel, "path": str(file), "sha256": file_sha256(file), "rows": len(frame),
                      "columns": columns.record()})
        kinds.setdefault(kind, file)
    columns = channel_columns(chosen, channel)
    if "integer" in kinds and "name" in kinds:
        raise DataError(f"{channel} channel mixes numeric labels ({kinds['integer']}) and label names ({kinds['name']})")
    combined, dropped = _without_empty_text(pd.concat(frames, ignore_index=True))
    _dropped_or_empty(dropped, len(combined), source, channel)
    return Channel(channel, combined, files, columns)


def read_in_chunks(source: Path, channel: str, reading: Reading, explicit: Collection[str] | None,
                   chunk_rows: int) -> Iterator[pd.DataFrame]:
    """What read_channel(labelled=False) holds (text, [text_pair]), in file order, at most `chunk_rows` rows at a
    time and never all at once: `seqcls predict` over any number of rows. The same checks, file by file."""
    rule = ColumnRule.from_settings(reading, explicit)
    chosen: list[tuple[Path, Columns]] = []
    dropped = kept = 0
    for file in channel_files(source, channel):
        for frame, cola in _file_frames(file, rule, chunk_rows):
            frame = _vertex_text_rows(frame, file, channel, reading.problem_type)
            columns = file_columns(frame, file, rule, False, cola)
            if not chosen or chosen[-1][0] != file:
                chosen.append((file, columns))
                channel_columns(chosen, channel)
            frame, empty = _without_empty_text(_canonical(frame, file, columns, reading)[0])
            dropped, kept = dropped + empty, kept + len(frame)
            if len(frame):
                yield frame
    _dropped_or_empty(dropped, kept, source, channel)


def count_rows(source: Path, channel: str, reading: Reading, explicit: Collection[str] | None) -> int:
    """About how many rows the channel holds, without reading them: Parquet's metadata, else the non-blank lines
    less a header (a quoted text spanning lines counts more than once). For progress and the time left only."""
    rule, rows = ColumnRule.from_settings(reading, explicit), 0
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
