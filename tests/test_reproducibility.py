"""Reproducibility: the same inputs and seed on CPU give byte-identical metrics.json and model weights,
and the run manifest alone is enough to rerun: the second run is built only from the first's manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from jobtools import cola_rows, minilm_folder, run_subprocess, write_tree
from jobtools import COLA_DIR


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_rerun_from_manifest_is_bit_identical(tmp_path: Path) -> None:
    if not (COLA_DIR / "in_domain_train.tsv").is_file():
        pytest.fail(f"CoLA not found in {COLA_DIR}: set COLA_DIR (the Makefile passes it)")
    first = write_tree(tmp_path / "first", {
        "data/train/train.tsv": cola_rows(COLA_DIR, "in_domain_train.tsv", 200),
        "data/test/test.tsv": cola_rows(COLA_DIR, "out_of_domain_dev.tsv", 100),
        "config/hyperparameters.json": json.dumps({"epochs": "1", "seed": "7", "batch_size": "16"}),
    })
    outcome = run_subprocess(first, ["--model", str(minilm_folder()), "--device", "cpu"])
    assert outcome.code == 0, outcome.stderr[-3000:]
    manifest = json.loads((first / "model" / "run_manifest.json").read_text())

    # Rebuild the run from the manifest alone: every setting, the exact data files, the exact model.
    hyperparameters = {name: str(entry["value"]) for name, entry in manifest["settings"].items()
                       if entry["value"] != "***"}
    channels = {}
    for entry in manifest["data"]["files"]:
        path = Path(entry["path"])
        assert sha256(path) == entry["sha256"], f"{path} changed since the first run"
        channels.setdefault(entry["channel"], []).append(path)
    model = Path(manifest["model_source"])
    assert manifest["model_source_files"], "the manifest must pin the model's files"
    for entry in manifest["model_source_files"]:
        assert sha256(model / entry["name"]) == entry["sha256"]
    assert manifest["data"]["validation_source"] == "split"
    assert manifest["packages"]["torch"] and manifest["packages"]["transformers"] and manifest["git_commit"]

    second = write_tree(tmp_path / "second", {"config/hyperparameters.json": json.dumps(hyperparameters)})
    args = ["--model", str(model)]
    for channel, paths in channels.items():
        assert len(paths) == 1
        args += [f"--{channel}", str(paths[0])]
    outcome = run_subprocess(second, args)
    assert outcome.code == 0, outcome.stderr[-3000:]

    assert (second / "model" / "metrics.json").read_bytes() == (first / "model" / "metrics.json").read_bytes()
    assert sha256(second / "model" / "model.safetensors") == sha256(first / "model" / "model.safetensors")
    rerun = json.loads((second / "model" / "run_manifest.json").read_text())
    assert {k: v["value"] for k, v in rerun["settings"].items()} == {k: v["value"] for k, v in manifest["settings"].items()}
