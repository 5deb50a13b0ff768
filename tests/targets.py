"""Targets of every problem type derived from real CoLA rows (test_problem_types_job's docstring says how),
shared by the problem-type, serving and HF-inference tests."""

from __future__ import annotations

import csv
from pathlib import Path

TRAIN_ROWS, TEST_ROWS = 240, 60
QUICK = ["--epochs", "1", "--batch_size", "16", "--learning_rate", "1e-4", "--log_every_steps", "5"]


def cola(cola_dir: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Train rows at a stride through in_domain_train.tsv, test rows at the same stride one row later."""
    rows = [line.rstrip("\n").split("\t") for line in (cola_dir / "in_domain_train.tsv").open(encoding="utf-8")]
    stride = len(rows) // (TRAIN_ROWS + TEST_ROWS)
    picked = rows[::stride][:TRAIN_ROWS + TEST_ROWS]
    return picked[:TRAIN_ROWS], picked[TRAIN_ROWS:]


def tags(row: list[str]) -> list[str]:
    sentence = row[3]
    words = f" {sentence.lower()} "
    found = ["acceptable"] if row[1] == "1" else []
    found += ["long"] if len(sentence.split()) > 8 else []
    found += ["negation"] if " not " in words or "n't" in words else []
    found += ["question"] if sentence.rstrip().endswith("?") else []
    return found


def score(row: list[str]) -> float:
    return int(row[1]) + len(row[3].split()) / 10


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
