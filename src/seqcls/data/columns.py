"""Which columns hold the text, the pair and the label, by setting or by name, and the canonical rows (`Channel`) every
reader yields: the one place column names are decided."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..settings import Reading

COLA_TEXT, COLA_LABEL = "sentence", "label"
TEXT, PAIR, LABEL = "text", "text_pair", "label"
# Names a column is taken for when text_column / label_column are left at their defaults.
LABEL_NAMES = ("label", "labels", "target")
TEXT_NAMES = ("text", "sentence")
PAIR_NAMES = ("sentence1", "sentence2")
COLUMN_SETTINGS = frozenset({"text_column", "text_pair_column", "label_column"})


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
    def from_settings(cls, reading: Reading, explicit: Collection[str] | None = None) -> "ColumnRule":
        """`explicit`: the setting names given by the user (a source other than the default); None: all of them.

        A pair is only looked for when the text column is chosen too: `--text_column sentence1` alone means one text.
        """
        given = COLUMN_SETTINGS if explicit is None else COLUMN_SETTINGS & set(explicit)
        text_given = "text_column" in given
        pair_given = text_given or "text_pair_column" in given
        return cls(reading.text_column if text_given else None, reading.text_pair_column if pair_given else None,
                   reading.label_column if "label_column" in given else None)

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


def file_columns(frame: pd.DataFrame, path: Path, rule: ColumnRule, labelled: bool, cola: bool) -> Columns:
    if cola:
        return COLA_COLUMNS_CHOSEN if labelled else dataclasses.replace(COLA_COLUMNS_CHOSEN, label="")
    if len(frame.columns) == 0:
        raise DataError(f"{path} holds no data")
    return choose_columns(list(frame.columns), rule, labelled, path)


def channel_columns(chosen: list[tuple[Path, Columns]], channel: str) -> Columns:
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
