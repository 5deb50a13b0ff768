"""export_onnx=true: the job saves model.onnx beside the safetensors, lists it in the manifest, and its logits in
onnxruntime match PyTorch's (onnxmodel.ONNX_ATOL) on rows of other batch sizes and lengths than the export's
sample (the batch and sequence axes are dynamic). A model.onnx that disagrees fails the reload check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_cli
from seqcls.saving import onnxmodel
from seqcls.errors import SeqclsError

pytestmark = pytest.mark.slow


def test_export_onnx_run_matches_pytorch(cola_dir: Path, tmp_path: Path) -> None:
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train = tmp_path / "train.tsv"
    train.write_text(cola_rows(cola_dir, "in_domain_train.tsv", 200), encoding="utf-8")
    tiny = build_tiny_model(tmp_path / "tiny", minilm_folder())
    done = run_cli(["train", "--train", str(train), "--model_name_or_path", str(tiny), "--epochs", "1",
                    "--export_onnx", "true", "--output_dir", str(tmp_path / "run"),
                    "--output_uri", str(tmp_path / "published"), "--run_id", "r1"], env={"SEQCLS_GIT_COMMIT": "test"})
    assert done.returncode == 0, done.stderr[-3000:]
    published = tmp_path / "published" / "r1"
    names = {f["name"] for f in json.loads((published / "manifest.json").read_text())["files"]}
    assert {"model.onnx", "model.safetensors", "code/inference.py"} <= names
    saved = [json.loads(line) for line in done.stdout.splitlines() if '"artifacts_saved"' in line][0]
    assert "model.onnx" in saved["files"]

    sentences = [line.split("\t")[3] for line in cola_rows(cola_dir, "out_of_domain_dev.tsv", 40).splitlines()]
    model = AutoModelForSequenceClassification.from_pretrained(published).eval()
    tokenizer = AutoTokenizer.from_pretrained(published)
    session = onnxruntime.InferenceSession(str(published / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (sentences[:1], sentences[1:40]):  # one row; 39 rows padded to their longest
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            expected = model(**inputs).logits.numpy()
        got = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= onnxmodel.ONNX_ATOL


def test_an_onnx_file_that_disagrees_fails_the_check(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tiny = build_tiny_model(tmp_path / "tiny", minilm_folder())
    model = AutoModelForSequenceClassification.from_pretrained(tiny).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    onnxmodel.export(model, tokenizer, tmp_path)
    inputs = dict(tokenizer(["a short one", "and a somewhat longer sentence"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        logits = model(**inputs).logits
    onnxmodel.check(tmp_path / "model.onnx", inputs, logits)  # agrees
    with pytest.raises(SeqclsError, match=r"model.onnx \(onnxruntime\) differs from the PyTorch logits by up to"):
        onnxmodel.check(tmp_path / "model.onnx", inputs, logits + 1e-3)
