"""inference_backend=onnx: `seqcls predict` and `seqcls serve` score with the run's model.onnx in onnxruntime, through
predict's one batch function, and answer what the PyTorch weights answer (labels equal, probabilities within
onnxmodel.ONNX_ATOL's reach); a run saved without model.onnx says so and scores with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from jobtools import build_tiny_model, cola_rows, json_lines, minilm_folder, run_cli
from seqcls import runtime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cola_dir: Path) -> dict[str, Path]:
    """Two trained runs of the tiny model on CoLA rows: one saved with model.onnx, one without."""
    root = tmp_path_factory.mktemp("onnx-backend")
    train = root / "train.tsv"
    train.write_text(cola_rows(cola_dir, "in_domain_train.tsv", 200), encoding="utf-8")
    tiny = build_tiny_model(root / "tiny", minilm_folder())
    folders = {}
    test = root / "test.tsv"
    test.write_text(cola_rows(cola_dir, "in_domain_dev.tsv", 400), encoding="utf-8")
    for name, export in (("with_onnx", "true"), ("without_onnx", "false")):
        done = run_cli(["train", "--train", str(train), "--test", str(test), "--model_name_or_path", str(tiny),
                        "--epochs", "2", "--learning_rate", "1e-3", "--export_onnx", export,
                        "--export_onnx_int8", export, "--output_dir", str(root / name)],
                       env={"SEQCLS_GIT_COMMIT": "test"})
        assert done.returncode == 0, done.stderr[-3000:]
        folders[name] = root / name / "model"
    return folders


def predict(model: Path, rows: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, list[dict]]:
    done = run_cli(["predict", "--model", str(model), "--input", str(rows), "--output", str(out), *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out), json_lines(done.stdout)


def test_onnx_scores_every_row_as_the_pytorch_weights_do(runs, cola_dir, tmp_path):
    rows = tmp_path / "rows.tsv"
    rows.write_text(cola_rows(cola_dir, "out_of_domain_dev.tsv", 300), encoding="utf-8")
    torch_out, _ = predict(runs["with_onnx"], rows, tmp_path / "torch.csv", "--precision", "fp32")
    onnx_out, events = predict(runs["with_onnx"], rows, tmp_path / "onnx.csv", "--inference_backend", "onnx")
    written = next(e for e in events if e["event"] == "predictions_written")
    assert (written["backend"], written["device"], written["rows"]) == ("onnx", "cpu", 300)
    assert list(onnx_out["predicted"]) == list(torch_out["predicted"])
    probabilities = [c for c in torch_out.columns if c.startswith("prob")]
    assert probabilities and (onnx_out[probabilities] - torch_out[probabilities]).abs().max().max() < 1e-4


def test_a_run_without_model_onnx_warns_and_scores_with_pytorch(runs, cola_dir, tmp_path):
    rows = tmp_path / "rows.tsv"
    rows.write_text(cola_rows(cola_dir, "out_of_domain_dev.tsv", 20), encoding="utf-8")
    _, events = predict(runs["without_onnx"], rows, tmp_path / "out.csv", "--inference_backend", "onnx")
    assert [e["event"] for e in events if e["level"] == "WARNING"] == ["onnx_missing"]
    assert next(e for e in events if e["event"] == "predictions_written")["backend"] == "torch"


def test_an_endpoint_picks_the_backend_from_its_environment():
    """SageMaker and Vertex endpoints start `seqcls serve` without arguments: SEQCLS_<NAME> in the container
    environment chooses (docs/serving.md)."""
    where = runtime.serving(None, None, {"SEQCLS_INFERENCE_BACKEND": "onnx", "SEQCLS_EVAL_BATCH_SIZE": "64",
                                         "SEQCLS_OPT_ML": "/tmp/x"})
    assert where.settings == {"inference_backend": "onnx", "eval_batch_size": "64"}


def test_the_server_answers_with_the_onnx_model(runs):
    from fastapi.testclient import TestClient

    from seqcls import predict as predicting
    from seqcls.serving import serve

    loaded = predicting.load(str(runs["with_onnx"]), {"inference_backend": "onnx"})
    torch_loaded = predicting.load(str(runs["with_onnx"]), {"precision": "fp32"})
    assert (loaded.backend, torch_loaded.backend) == ("onnx", "torch")
    answers = {}
    for name, model in (("onnx", loaded), ("torch", torch_loaded)):
        app = serve.create_app(runtime.serving(str(runs["with_onnx"]), 8080, {}), serve.State(loaded=model))
        with TestClient(app) as client:
            reply = client.post("/invocations", json={"instances": ["The book was written by John.", "Book the by."]})
            assert reply.status_code == 200, reply.text
            answers[name] = reply.json()["predictions"]
    assert [p["label"] for p in answers["onnx"]] == [p["label"] for p in answers["torch"]]
    for onnx_row, torch_row in zip(answers["onnx"], answers["torch"]):
        assert max(abs(onnx_row["scores"][k] - torch_row["scores"][k]) for k in torch_row["scores"]) < 1e-4


def test_the_int8_model_is_kept_with_its_measured_agreement_and_scores_like_pytorch(runs, cola_dir, tmp_path):
    record = json.loads((runs["with_onnx"] / "run_manifest.json").read_text())["onnx_int8"]
    assert (record["file"], record["rows"], record["split"], record["kept"]) == ("model.int8.onnx", 400, "test", True)
    assert record["labels_equal"] >= 0.995 and record["largest_score_difference"] >= 0
    assert (runs["with_onnx"] / "model.int8.onnx").stat().st_size < (runs["with_onnx"] / "model.onnx").stat().st_size
    rows = tmp_path / "rows.tsv"
    rows.write_text(cola_rows(cola_dir, "out_of_domain_dev.tsv", 300), encoding="utf-8")
    torch_out, _ = predict(runs["with_onnx"], rows, tmp_path / "torch.csv", "--precision", "fp32")
    int8_out, events = predict(runs["with_onnx"], rows, tmp_path / "int8.csv", "--inference_backend", "onnx_int8")
    assert next(e for e in events if e["event"] == "predictions_written")["backend"] == "onnx_int8"
    assert (int8_out["predicted"] == torch_out["predicted"]).mean() >= 0.995


def test_an_int8_model_that_disagrees_is_not_saved(runs, monkeypatch, tmp_path, capsys):
    """The bar is what decides: raised above what any model can reach, the file goes and the record says why."""
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from seqcls import data, logs
    from seqcls.saving import onnxmodel
    from seqcls.settings import Settings

    logs.setup()
    folder = tmp_path / "model"
    shutil.copytree(runs["with_onnx"], folder)
    (folder / "model.int8.onnx").unlink()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = data.read_channel(runs["with_onnx"].parents[1] / "test.tsv", "test", Settings().reading, explicit=())
    monkeypatch.setattr(onnxmodel, "INT8_MIN_LABELS_EQUAL", 1.01)
    record = onnxmodel.quantize_int8(model, tokenizer, folder, rows)
    assert record["kept"] is False and not (folder / "model.int8.onnx").exists()
    warned = [e for e in json_lines(capsys.readouterr().out) if e["event"] == "onnx_int8_dropped"]
    assert len(warned) == 1 and warned[0]["labels_equal"] == record["labels_equal"]


def test_int8_needs_the_onnx_export():
    from seqcls import settings
    from seqcls.errors import SettingsError

    with pytest.raises(SettingsError, match="export_onnx_int8.*needs export_onnx=true"):
        settings.resolve([("cli", {"export_onnx_int8": "true"})])
