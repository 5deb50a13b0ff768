"""code/inference.py in AWS's Hugging Face inference image answers as `seqcls predict` does, and a folder saved by our
transformers 5 loads in the transformers 4.x that image ships.

The image's real handler runs: sagemaker-huggingface-inference-toolkit 2.6.0's HuggingFaceHandlerService on
transformers 4.51.3 (AWS's newest 4.x Hugging Face inference image, 2.6.0-transformers4.51.3-cpu-py312-ubuntu22.04;
aws/deep-learning-containers huggingface/pytorch/inference/buildspec-2-6-0-transformers-4-53-1.yml), in the test
venv `make test` builds (.venv-hf-inference), called through tests/hf_toolkit_driver.py as a subprocess. Models are
trained by `seqcls train` on 240 CoLA rows (in_domain_train.tsv at a stride) and asked about 32 other CoLA rows.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from jobtools import build_tiny_model, minilm_folder, run_cli
from targets import QUICK, cola, score, tags, write_csv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HF_PYTHON = REPO / ".venv-hf-inference" / "bin" / "python"
DRIVER = Path(__file__).with_name("hf_toolkit_driver.py")
ROWS = 32
SCORE_ATOL = 1e-5  # predict writes probabilities rounded to 6 places; the two runs pad batches differently


def toolkit(command: str, model_dir: Path, payload: object, scratch: Path) -> dict:
    if not HF_PYTHON.exists():
        pytest.fail(f"{HF_PYTHON} is missing: `make test` builds it (make .venv-hf-inference/.ready)")
    given, out = scratch / f"{command}-in.json", scratch / f"{command}-out.json"
    given.write_text(json.dumps(payload), encoding="utf-8")
    done = subprocess.run([str(HF_PYTHON), str(DRIVER), command, str(model_dir), str(given), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(out.read_text(encoding="utf-8"))
    assert answer["transformers"].startswith("4."), answer["transformers"]
    return answer["result"]


@pytest.fixture(scope="module")
def data(cola_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hf-data")
    train, test = cola(cola_dir)
    test = test[:ROWS]
    return {
        "binary": write_csv(folder / "binary.csv", ["sentence", "label"], [[r[3], r[1]] for r in train]),
        "multi_label": write_csv(folder / "multi.csv", ["text", "labels"], [[r[3], ",".join(tags(r))] for r in train]),
        "regression": write_csv(folder / "regression.csv", ["text", "target"], [[r[3], score(r)] for r in train]),
        "input": write_csv(folder / "input.csv", ["sentence"], [[r[3]] for r in test]),
        "binary_test": write_csv(folder / "binary_test.csv", ["sentence", "label"], [[r[3], r[1]] for r in test]),
        "tiny": encoder_only(build_tiny_model(folder / "tiny", minilm_folder())),
    }


def encoder_only(folder: Path) -> Path:
    """The tiny BERT without its 2-label head, so a head of any size (4 tags, 1 score) starts from the seed."""
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(folder).bert.save_pretrained(folder, safe_serialization=True)
    return folder


CASES = {  # name: (train file, model, settings)
    "binary_auto_named": ("binary", "minilm", ["--decision_threshold", "auto",
                                               "--label_names", '["unacceptable", "acceptable"]']),
    "binary_default": ("binary", "tiny", ["--label_names", '{"1": "acceptable", "0": "unacceptable"}']),
    "multi_label": ("multi_label", "tiny", ["--problem_type", "multi_label", "--epochs", "2"]),
    "regression": ("regression", "tiny", ["--problem_type", "regression"]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request: pytest.FixtureRequest, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`seqcls train` (binary: tested on the 32 labelled rows), published to a folder (manifest.json), then
    `seqcls predict` of the published run in fp32 (as the hook computes)."""
    train_file, model, args = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    source = minilm_folder() if model == "minilm" else data["tiny"]
    tested = ["--test", str(data["binary_test"])] if train_file == "binary" else []
    run = run_cli(["train", "--train", str(data[train_file]), *tested, "--model_name_or_path", str(source),
                   "--output_dir", str(folder / "run"), "--output_uri", str(folder / "published"), "--run_id", "r1",
                   *QUICK, *args], env={"SEQCLS_GIT_COMMIT": "test"})
    assert run.returncode == 0, run.stderr[-3000:]
    model_dir = folder / "published" / "r1"
    out = folder / "predictions.csv"
    predicted = run_cli(["predict", "--model", str(model_dir), "--input", str(data["input"]), "--output", str(out),
                         "--precision", "fp32"])
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"name": request.param, "model": model_dir, "rows": rows, "scratch": folder,
            "config": json.loads((model_dir / "config.json").read_text()),
            "metrics": json.loads((model_dir / "metrics.json").read_text())}


def expected_answer(row: dict[str, str], config: dict) -> object:
    """What the hook must say for one row of `seqcls predict`'s output, in the pipeline's shape."""
    kind = config["problem_type"]
    if kind == "regression":
        return {"label": config["id2label"]["0"], "score": float(row["predicted"])}
    if kind == "multi_label_classification":
        chosen = [tag for tag in row["predicted"].split(",") if tag]
        return sorted(({"label": tag, "score": float(row[f"prob_{tag}"])} for tag in chosen), key=lambda e: -e["score"])
    return {"label": row["predicted"], "score": float(row[f"prob_{row['predicted']}"])}


def assert_same(answers: list, expected: list) -> None:
    assert len(answers) == len(expected) == ROWS
    for got, want in zip(answers, expected):
        got_rows, want_rows = (got, want) if isinstance(want, list) else ([got], [want])
        assert [g["label"] for g in got_rows] == [w["label"] for w in want_rows], (got, want)
        for g, w in zip(got_rows, want_rows):
            assert g["score"] == pytest.approx(w["score"], abs=SCORE_ATOL), (got, want)


def test_toolkit_handler_answers_as_seqcls_predict(trained: dict, data: dict[str, Path]) -> None:
    model_dir, config = trained["model"], trained["config"]
    texts = [row["text"] for row in trained["rows"]]
    manifest_names = {f["name"] for f in json.loads((model_dir / "manifest.json").read_text())["files"]}
    assert "code/inference.py" in manifest_names  # listed and checksummed like every other file
    requests = [{"content_type": "application/json", "body": json.dumps({"inputs": texts})},
                # the toolkit's default input_fn also takes CSV with an `inputs` header (decoder_encoder.decode_csv)
                {"content_type": "text/csv", "body": "inputs\n" + "".join(f'"{t.replace(chr(34), chr(34) * 2)}"\n'
                                                                         for t in texts)},
                {"content_type": "application/json", "body": json.dumps({"inputs": []})},
                {"content_type": "application/json", "body": json.dumps({"inputs": texts[:1], "parameters": {"top_k": 2}})}]
    answers = toolkit("handle", model_dir, requests, trained["scratch"])
    expected = [expected_answer(row, config) for row in trained["rows"]]
    assert_same(answers[0]["body"], expected)
    assert_same(answers[1]["body"], expected)
    assert answers[2]["code"] == 400 and "empty list" in answers[2]["error"]
    assert answers[3]["code"] == 400 and "parameters are not supported" in answers[3]["error"]
    # The rows themselves show the run's rule at work, where the pipeline's argmax (or 0.5) would answer otherwise.
    if trained["name"] == "binary_auto_named":
        argmax = ["acceptable" if float(r["prob_acceptable"]) > 0.5 else "unacceptable" for r in trained["rows"]]
        assert config["decision_threshold"] != 0.5 and argmax != [r["predicted"] for r in trained["rows"]]
    if trained["name"] == "multi_label":
        at_half = [sorted(k[5:] for k in r if k.startswith("prob_") and float(r[k]) >= 0.5) for r in trained["rows"]]
        assert at_half != [sorted(filter(None, r["predicted"].split(","))) for r in trained["rows"]]


def test_threshold_and_label_names_agree_everywhere(trained: dict) -> None:
    config, metrics = trained["config"], trained["metrics"]
    if trained["name"].startswith("binary"):
        assert config["id2label"] == {"0": "unacceptable", "1": "acceptable"}
        assert metrics["labels"] == ["unacceptable", "acceptable"]
        assert config["decision_threshold"] == metrics["decision_threshold"]  # one truth, 0.5 included
        if trained["name"] == "binary_default":
            assert config["decision_threshold"] == 0.5
        assert {row["predicted"] for row in trained["rows"]} <= {"unacceptable", "acceptable"}
        assert "`unacceptable`, `acceptable`" in (trained["model"] / "README.md").read_text()
        with (trained["model"] / "test_predictions.csv").open(encoding="utf-8") as handle:
            tested = list(csv.DictReader(handle))
        assert {r["label"] for r in tested} == {"unacceptable", "acceptable"}
        assert {r["predicted"] for r in tested} <= {"unacceptable", "acceptable"}
        assert {"prob_unacceptable", "prob_acceptable"} <= set(tested[0])
    else:
        assert "decision_threshold" not in metrics and config.get("decision_threshold") is None


ARCHITECTURES = {  # the BERT family we claim, each tiny, random and saved by our transformers 5
    "bert": {}, "roberta": {"pad_token_id": 1}, "distilbert": {"dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32},
    "electra": {"embedding_size": 16}, "deberta-v2": {}, "albert": {"embedding_size": 16},
}
LOGIT_ATOL = 1e-5  # float32, same ops in both versions


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_transformers5_folder_loads_in_4x_with_the_same_logits(model_type: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64, num_labels=3,
                                  **ARCHITECTURES[model_type])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    inputs = {"input_ids": torch.randint(5, 1000, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    inputs["attention_mask"][2, 7:] = 0  # a padded row
    with torch.no_grad():
        ours = model(**inputs).logits
    theirs = torch.tensor(toolkit("logits", tmp_path / "model", {k: v.tolist() for k, v in inputs.items()}, tmp_path))
    assert torch.allclose(ours, theirs, rtol=0, atol=LOGIT_ATOL), (ours, theirs)
