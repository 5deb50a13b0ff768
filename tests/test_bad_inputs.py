"""Every bad input fails fast through the real entry point with one clear line that names what is wrong.

Each case builds a temp SageMaker tree (SEQCLS_OPT_ML), runs `seqcls train`, and checks the contract
in `assert_clean_failure`: the expected exit code within 30 s, a one-line failure file naming the
file/column/row/hyperparameter at fault, one `job_failed` event on a pure-JSON stdout, no training
started, and nothing in model/ or output/data. Most cases run in-process through `seqcls.cli.main`
(the console script's function: same handler, torch imported once); those marked `subprocess` run as
`python -m seqcls train` in a child, exactly as a platform starts it.

Documented decision exercised here: rows whose text is empty are dropped and counted (`rows_dropped`
warning); a channel left with no text at all is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobtools import (artifact_files, assert_clean_failure, build_tiny_model, good_csv, minilm_folder, run_inprocess, run_subprocess,
                       read_only_prefix, tmpfs_prefix, write_tree)

TRAIN = "data/train/train.csv"
HP = "config/hyperparameters.json"
GOOD = {TRAIN: good_csv()}


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes | None]
    expect: list[str]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    model: str | None = "tiny"  # which model folder `--model` points at; None: no --model
    code: int = 2
    subprocess: bool = False


def hp(**values: object) -> dict[str, str]:
    """hyperparameters.json as SageMaker writes it: every value a JSON string."""
    return {HP: json.dumps({k: str(v) for k, v in values.items()})}


def cola_tsv(*rows: str) -> str:
    return "".join(row + "\n" for row in rows)


CASES = [
    # Channels and files.
    Case("no_train_channel", {}, ["no train channel"], subprocess=True),
    Case("empty_train_folder", {"data/train": None}, ["train channel", "holds no", "no files"]),
    Case("unsupported_file_type", {"data/train/rows.txt": "a,1\n"}, ["train channel", "rows.txt"]),
    Case("empty_csv", {TRAIN: ""}, ["train.csv", "is empty"]),
    Case("blank_lines_csv", {TRAIN: "\n\n\n"}, ["train.csv", "is empty"]),
    Case("empty_jsonl", {"data/train/train.jsonl": ""}, ["train.jsonl", "is empty"]),
    Case("empty_test_file", {**GOOD, "data/test/test.csv": ""}, ["test.csv", "is empty"]),
    Case("header_only_csv", {TRAIN: "sentence,label\n"}, ["train.csv", "header but no rows"]),
    Case("missing_text_column", {TRAIN: "text,label\nhello,1\nworld,0\n"}, ["train.csv", "missing column", "'sentence'", "'text'"],
         args=["--text_column", "sentence"]),
    Case("missing_label_column", {TRAIN: "sentence,target\nhello,1\nworld,0\n"}, ["train.csv", "'label'"], args=["--label_column", "label"]),
    # Columns chosen from the header (text_column / label_column left at their defaults).
    Case("no_label_looking_column", {TRAIN: "review,summary,stars\ngood film,liked it,5\nbad film,hated it,1\n"},
         ["train.csv", "cannot tell which column is the label", "'review', 'summary', 'stars'", "set label_column"]),
    Case("two_free_text_columns", {TRAIN: "title,body,label\ngood,a fine film,1\nbad,a dull film,0\n"},
         ["train.csv", "cannot tell which column is the text", "'title', 'body'", "set text_column"]),
    Case("two_label_looking_columns", {TRAIN: "text,labels,target\ngood,1,a\nbad,0,b\n"},
         ["train.csv", "'labels', 'target' could each be the label", "set label_column"]),
    Case("channel_files_with_different_headers", {"data/train/a.csv": "text,label\na b,0\nc d,1\n",
                                                  "data/train/b.csv": "sentence,label\ne f,0\ng h,1\n"},
         ["train channel", "a.csv", "b.csv", "'text'", "'sentence'"]),
    Case("pairs_in_train_single_texts_in_test", {TRAIN: "sentence1,sentence2,label\n" + "".join(f"a {i},b {i},{i % 2}\n" for i in range(8)),
                                                 "data/test/test.csv": "text,label\nx y,0\n"},
         ["test channel holds single texts", "train holds sentence pairs", "'sentence2'"]),
    Case("text_column_not_in_file", GOOD, ["train.csv", "'body'"], args=["--text_column", "body"]),
    Case("test_file_missing_label", {**GOOD, "data/test/test.csv": "sentence\nhello\n"}, ["test.csv", "'label'"]),
    # Labels.
    Case("mixed_labels", {TRAIN: "sentence,label\na b,0\nc d,1\ne f,maybe\n"}, ["train.csv", "mixes numbers and names", "row 3", "'maybe'"]),
    # Classification options (issue 13): what only makes sense with the data or with another setting.
    Case("decision_threshold_with_three_labels",
         {TRAIN: "sentence,label\n" + "".join(f"row {i} here,{'abc'[i % 3]}\n" for i in range(12))},
         ["decision_threshold=0.3", "needs exactly two labels", "train has 3"], args=["--decision_threshold", "0.3"]),
    Case("class_weights_for_an_unknown_label", GOOD, ["class_weights", "'yes'", "train does not have", "'0', '1'"],
         args=["--class_weights", '{"yes": 2}']),
    Case("class_weights_not_a_map", GOOD, ["class_weights='heavy'", "none, balanced or a JSON object"],
         args=["--class_weights", "heavy"]),
    Case("class_weight_not_positive", GOOD, ["class_weights", "label '1'", "positive number", "got 0"],
         args=["--class_weights", '{"1": 0}']),
    # label_names (issue 22): the form is checked with the settings, the fit once train's labels are known.
    Case("label_names_not_json", GOOD, ["label_names='bad,good'", "JSON list of names in label id order"],
         args=["--label_names", "bad,good"]),
    Case("label_names_too_few", GOOD, ["label_names has 1 name(s)", "train has 2 label(s)", "'0', '1'"],
         args=["--label_names", '["only"]']),
    Case("label_names_unknown_label", GOOD, ["label_names must name every label", "not in train: '2'", "unnamed: '0'"],
         args=["--label_names", '{"1": "good", "2": "bad"}']),
    Case("label_names_repeated", GOOD, ["label_names", "must be distinct", "'same'"],
         args=["--label_names", '["same", "same"]']),
    Case("label_names_for_regression", GOOD, ["label_names", "regression model has one output"],
         args=["--label_names", '["low", "high"]', "--problem_type", "regression"]),
    Case("early_stopping_without_select_best", GOOD, ["early_stopping_patience=2", "needs select_best"],
         args=["--early_stopping_patience", "2"]),
    # Scale settings (issue 21).
    Case("gradient_checkpointing_unsupported_model", GOOD, ["gradient_checkpointing=true",
                                                            "AlbertForSequenceClassification",
                                                            "does not support gradient checkpointing"],
         args=["--gradient_checkpointing", "true"], model="albert"),
    Case("label_smoothing_for_regression", GOOD, ["label_smoothing=0.1", "needs problem_type=single_label"],
         args=["--label_smoothing", "0.1", "--problem_type", "regression"]),
    Case("constant_schedule_with_warmup", GOOD, ["lr_scheduler_type='constant'", "use constant_with_warmup"],
         args=["--lr_scheduler_type", "constant", "--warmup_steps", "10"]),
    Case("no_accumulation_steps", GOOD, ["gradient_accumulation_steps=0", "must be >= 1"],
         args=["--gradient_accumulation_steps", "0"]),
    Case("max_length_neither_number_nor_auto", GOOD, ["max_length='long'", "an integer or auto"],
         args=["--max_length", "long"]),
    Case("fractional_labels", {TRAIN: "sentence,label\na b,0\nc d,0.5\n"}, ["train.csv", "row 2", "'0.5'"]),
    Case("mixed_label_files", {"data/train/a.csv": "sentence,label\na b,0\nc d,1\n",
                               "data/train/b.csv": "sentence,label\na b,neg\nc d,pos\n"}, ["train channel", "a.csv", "b.csv"]),
    Case("empty_label", {TRAIN: "sentence,label\na b,0\nc d,\ne f,1\n"}, ["train.csv", "row 2", "empty label", "'label'"]),
    Case("one_class", {TRAIN: "sentence,label\n" + "".join(f"row {i},1\n" for i in range(20))}, ["single label", "'1'"]),
    Case("test_label_unseen", {**GOOD, "data/test/test.csv": "sentence,label\nx y,0\nz w,2\n"}, ["test channel", "'2'", "not seen in training"]),
    Case("validation_label_unseen", {**GOOD, "data/validation/val.csv": "sentence,label\nx y,0\nz w,7\n"}, ["validation channel", "'7'"]),
    # Labels for problem_type (docs/problem-types.md).
    Case("fractional_labels_suggest_regression", {TRAIN: "sentence,label\na b,0\nc d,0.5\n"},
         ["train.csv", "row 2", "'0.5'", "use problem_type=regression"]),
    Case("regression_label_not_a_number", {TRAIN: "sentence,label\na b,0.5\nc d,high\ne f,1\n"},
         ["train.csv", "row 2", "'high'", "problem_type=regression needs a finite number"], args=["--problem_type", "regression"]),
    Case("multi_label_test_tag_unseen", {TRAIN: "sentence,labels\n" + "".join(f"row {i},\"a,b\"\n" for i in range(8)),
                                         "data/test/test.csv": "sentence,labels\nx y,\"a,c\"\n"},
         ["test channel", "'c'", "not seen in training"], args=["--problem_type", "multi_label"]),
    Case("multi_label_no_tags_at_all", {TRAIN: "sentence,labels\n" + "".join(f"row {i},\n" for i in range(8))},
         ["train channel has no labels", "'labels'", "multi_label"], args=["--problem_type", "multi_label"]),
    Case("label_delimiter_empty", GOOD, ["label_delimiter=''", "must not be empty"], args=["--label_delimiter", ""]),
    Case("select_best_of_another_problem_type", GOOD, ["select_best=mcc needs problem_type=single_label",
                                                       "problem_type=regression use one of none, loss, pearson, mse"],
         args=["--problem_type", "regression", "--select_best", "mcc"]),
    Case("unknown_problem_type", GOOD, ["problem_type='multiclass'", "single_label, multi_label, regression"],
         env={"SEQCLS_PROBLEM_TYPE": "multiclass"}),
    # The promotion gate (docs/publishing.md): checked with the settings, before any data is read.
    Case("promote_if_without_output_uri", {**GOOD, **hp(promote_if="validation_mcc")},
         ["promote_if='validation_mcc'", "needs output_uri", "AIP_MODEL_DIR"]),
    Case("promote_if_on_a_test_metric_without_test_data", GOOD, ["promote_if=test_mcc needs a test channel",
                                                                 "gate on validation_mcc"],
         args=["--promote_if", "test_mcc", "--output_uri", "/tmp/seqcls-never-written"]),
    Case("promote_if_of_another_problem_type", GOOD, ["promote_if='validation_pearson'",
                                                      "metric of problem_type=single_label: test_mcc"],
         args=["--promote_if", "validation_pearson", "--output_uri", "/tmp/seqcls-never-written"]),
    Case("promote_if_with_publish_latest_off", GOOD, ["needs publish_latest=true"],
         args=["--promote_if", "validation_loss", "--output_uri", "/tmp/seqcls-never-written", "--publish_latest", "false"]),
    Case("promotion_file_without_promote_if", GOOD, ["promotion_file=", "needs promote_if"],
         env={"SEQCLS_PROMOTION_FILE": "/tmp/outcome"}),
    Case("promote_tolerance_negative", GOOD, ["promote_tolerance=-0.5", "must be >= 0"],
         args=["--promote_if", "validation_loss", "--output_uri", "/tmp/seqcls-never-written", "--promote_tolerance", "-0.5"]),
    # Texts.
    Case("all_texts_empty", {TRAIN: "sentence,label\n,0\n  ,1\n,1\n"}, ["train channel", "no rows with text"]),
    Case("huge_single_row", {TRAIN: "sentence,label\nshort,0\n" + "x" * 1_100_000 + ",1\n"},
         ["train.csv", "row 2", "1,100,000 characters", "'sentence'"]),
    # Malformed files.
    Case("ragged_tsv_extra_field", {"data/train/train.tsv": cola_tsv("s1\t1\t\tGood one.", "s1\t0\t*\tBad one.",
                                                                     "s1\t1\t\tToo\tmany fields.")},
         ["train.tsv", "Expected 4 fields in line 3, saw 5"]),
    Case("ragged_tsv_missing_field", {"data/train/train.tsv": cola_tsv("s1\t1\t\tGood one.", "s1\t0\t*\tBad one.", "s1\t1")},
         ["train.tsv", "row 3 has 2 field(s), expected 4"]),
    Case("ragged_csv_missing_field", {TRAIN: "sentence,label\nhello,1\nworld\nagain,0\n"}, ["train.csv", "row 2 after the header", "1 field(s)"]),
    Case("unclosed_quote_csv", {TRAIN: 'sentence,label\n"hello,1\nworld,0\n'}, ["train.csv", "EOF inside string"]),
    Case("duplicate_column_names", {TRAIN: "sentence,label,sentence\na,1,b\nc,0,d\n"}, ["train.csv", "duplicate column", "'sentence'"]),
    Case("invalid_utf8_csv", {TRAIN: b"sentence,label\nfine,1\ncaf\xe9 latin-1,0\n"}, ["train.csv", "not valid UTF-8"]),
    Case("invalid_utf8_jsonl", {"data/train/train.jsonl": b'{"sentence": "ok", "label": 1}\n{"sentence": "\xff\xfe", "label": 0}\n'},
         ["train.jsonl", "not valid UTF-8"]),
    Case("binary_garbage_csv", {TRAIN: bytes(range(256)) * 16}, ["train.csv", "not valid UTF-8"]),
    Case("binary_garbage_parquet", {"data/train/train.parquet": bytes(range(256)) * 16}, ["train.parquet", "could not be read as parquet"]),
    Case("malformed_jsonl_line", {"data/train/train.jsonl": '{"sentence": "ok", "label": 1}\n{"sentence": "oops", \n'},
         ["train.jsonl", "could not be read as jsonl"]),
    # hyperparameters.json and other hyperparameter sources.
    Case("hyperparameters_not_json", {**GOOD, HP: "{epochs: 2"}, ["hyperparameters.json", "not valid JSON", "line 1"], subprocess=True),
    Case("hyperparameters_not_object", {**GOOD, HP: '["epochs", "2"]'}, ["hyperparameters.json", "JSON object", "list"]),
    Case("hyperparameter_list_value", {**GOOD, HP: '{"epochs": ["2"]}'}, ["hyperparameters.json", "epochs", "string or number"]),
    Case("hyperparameter_null_value", {**GOOD, HP: '{"batch_size": null}'}, ["hyperparameters.json", "batch_size"]),
    Case("hyperparameter_unknown_name", {**GOOD, **hp(learning_rat="2e-5")}, ["'learning_rat'", "did you mean learning_rate"]),
    Case("hyperparameter_not_a_number", {**GOOD, **hp(learning_rate="fast")}, ["learning_rate='fast'", "a number"]),
    Case("hyperparameter_fractional_int", {**GOOD, **hp(epochs="2.5")}, ["epochs='2.5'", "an integer"]),
    Case("hyperparameter_not_a_bool", {**GOOD, **hp(group_by_length="maybe")}, ["group_by_length='maybe'", "true or false"]),
    Case("hyperparameter_nan", {**GOOD, **hp(learning_rate="nan")}, ["learning_rate='nan'"]),
    Case("unknown_precision", {**GOOD, **hp(precision="fp64")}, ["precision='fp64'", "auto, fp32, bf16, fp16"]),
    Case("unknown_device", {**GOOD}, ["device='tpu'"], args=["--device", "tpu"]),
    Case("unknown_select_best", {**GOOD}, ["select_best='f1'"], env={"SEQCLS_SELECT_BEST": "f1"}),
    Case("env_unknown_name", {**GOOD}, ["'epocs'", "did you mean epochs"], env={"SEQCLS_EPOCS": "3"}),
    Case("cli_missing_value", {**GOOD}, ["--epochs needs a value"], args=["--epochs"]),
    Case("cli_positional_argument", {**GOOD}, ["unexpected argument 'data.csv'"], args=["data.csv"]),
    Case("output_uri_bad_scheme", {**GOOD, **hp(output_uri="ftp://host/models")}, ["output_uri 'ftp://host/models'", "unsupported location", "s3://"]),
    Case("output_uri_http", {**GOOD}, ["output_uri 'https://bucket.example/x'", "unsupported location"], args=["--output_uri", "https://bucket.example/x"]),
    Case("output_uri_s3_bucket_with_underscore", {**GOOD}, ["'my_bucket' is not a valid s3:// bucket name"],
         args=["--output_uri", "s3://my_bucket/runs"]),
    Case("output_uri_no_bucket", {**GOOD}, ["output_uri 's3://'", "not a valid s3:// bucket name"], args=["--output_uri", "s3://"]),
    Case("base_model_is_a_path", {**GOOD}, ["base_model='/opt/ml/input/data/model'", "Hub id"],
         args=["--base_model", "/opt/ml/input/data/model"]),
    Case("run_id_escapes_folder", {**GOOD}, ["run_id='../other'"], args=["--run_id", "../other"]),
    Case("single_row", {TRAIN: "sentence,label\na b,0\n"}, ["single label"]),
    Case("too_few_rows_to_hold_out", {TRAIN: "sentence,label\na b,0\nc d,1\n"}, ["train channel has 2 row(s)", "validation_split=0.9"],
         args=["--validation_split", "0.9"]),
    # Devices.
    Case("gpu_requested_but_absent", GOOD, ["device=cuda", "no CUDA GPU is visible"], args=["--device", "cuda"],
         env={"CUDA_VISIBLE_DEVICES": ""}, subprocess=True),
    Case("fp16_on_cpu", GOOD, ["precision=fp16", "needs a CUDA GPU"], args=["--precision", "fp16", "--device", "cpu"]),
    # Model folders.
    Case("model_missing_weights", GOOD, ["no model.safetensors"], model="no_weights"),
    Case("model_pickle_weights_only", GOOD, ["pytorch_model.bin", "pickle weights are refused"], model="bin_only", subprocess=True),
    Case("model_without_config", GOOD, ["no config.json"], model="no_config"),
    Case("model_truncated_weights", GOOD, ["model.safetensors", "unreadable"], model="truncated"),
    Case("model_path_missing", GOOD, ["does not exist"], model="missing"),
    Case("model_too_short_for_max_length", GOOD, ["max_length=64", "at most 32 positions"], model="short_positions"),
]

# Every numeric hyperparameter just outside its range.
OUT_OF_RANGE = {
    "max_length": ["1", "9000"], "batch_size": ["0"], "eval_batch_size": ["0"], "learning_rate": ["0", "1.5"],
    "adam_epsilon": ["0"], "weight_decay": ["-0.1"], "epochs": ["0", "1001"], "warmup_ratio": ["1"], "max_grad_norm": ["-1"],
    "seed": ["-1", str(2**32)], "validation_split": ["0", "1"], "checkpoint_every_steps": ["-1"], "log_every_steps": ["0"],
    "max_train_samples": ["-1"],
}
CASES += [Case(f"out_of_range_{name}_{value}", {**GOOD, **hp(**{name: value})}, [f"hyperparameter {name}=", "out of range"])
          for name, values in OUT_OF_RANGE.items() for value in values]


def _tiny_albert(folder: Path, tokenizer_from: Path) -> Path:
    """ALBERT: a real transformers classifier that does not support gradient checkpointing (its class says so)."""
    from transformers import AlbertConfig, AlbertForSequenceClassification

    AlbertForSequenceClassification(AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    for item in tokenizer_from.iterdir():
        if item.name.startswith(("tokenizer", "vocab", "special_tokens")):
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny valid model and broken variants of it, built in tmp (weights never live in the repo)."""
    base = tmp_path_factory.mktemp("models")
    tiny = build_tiny_model(base / "tiny", minilm_folder())
    folders = {"tiny": tiny, "short_positions": build_tiny_model(base / "short", minilm_folder(), max_position_embeddings=32),
               "missing": base / "not-there"}
    folders["albert"] = _tiny_albert(base / "albert", tiny)
    for name in ("no_weights", "bin_only", "no_config", "truncated"):
        folder = base / name
        folder.mkdir()
        for item in tiny.iterdir():
            (folder / item.name).write_bytes(item.read_bytes())
        folders[name] = folder
    (folders["no_weights"] / "model.safetensors").unlink()
    (folders["bin_only"] / "model.safetensors").rename(folders["bin_only"] / "pytorch_model.bin")
    (folders["no_config"] / "config.json").unlink()
    truncated = folders["truncated"] / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    return folders


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_clearly(case: Case, tmp_path: Path, model_folders: dict[str, Path],
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = write_tree(tmp_path / "opt_ml", case.files)
    args = [*case.args] + (["--model", str(model_folders[case.model])] if case.model else [])
    if case.subprocess:
        outcome = run_subprocess(root, args, case.env)
    else:
        outcome = run_inprocess(root, args, case.env, monkeypatch, capsys)
    assert_clean_failure(outcome, case.expect, code=case.code)


def test_empty_texts_are_dropped_and_counted(tmp_path: Path, model_folders: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The documented choice: a row with empty text is dropped with a `rows_dropped` warning, not an error.

    The run is stopped right after (an unseen test label) so no training is spent; the warning comes first.
    """
    train = good_csv() + ",1\n   ,0\n"
    root = write_tree(tmp_path / "opt_ml", {TRAIN: train, "data/test/test.csv": "sentence,label\nx,9\n"})
    outcome = run_inprocess(root, ["--model", str(model_folders["tiny"])], {}, monkeypatch, capsys)
    assert_clean_failure(outcome, ["test channel", "'9'"])
    dropped = [e for e in outcome.events if e.get("event") == "rows_dropped"]
    assert [(e["channel"], e["dropped"], e["level"]) for e in dropped] == [("train", 2, "WARNING")]


DISK_FULL = [
    # (where the tiny disk is mounted, its size, a word the reason must hold)
    ("model", "1m", "model"),  # the 2 MB weights do not fit
    ("output/data", "4k", "output/data"),  # the model fits, the loss plot does not: the model must not stay behind
]


@pytest.mark.parametrize("mount, size, where", DISK_FULL, ids=["model_dir_full", "output_data_full"])
def test_disk_full_while_saving_leaves_nothing_behind(mount: str, size: str, where: str, tmp_path: Path,
                                                      model_folders: dict[str, Path]) -> None:
    """A real full disk (a tiny tmpfs in a private mount namespace), hit after training, while saving."""
    root = write_tree(tmp_path / "opt_ml", GOOD)
    prefix = tmpfs_prefix(root / mount, size)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs root or unprivileged user namespaces)")
    outcome = run_subprocess(root, ["--model", str(model_folders["tiny"]), "--epochs", "1"], prefix=prefix)
    reason = assert_clean_failure(outcome, ["no space left on device", where], code=1, before_training=False, limit_s=60)
    assert str(root / mount) in reason


@pytest.mark.parametrize("folder", ["model", "checkpoints", "output"])
def test_unwritable_output_folder_fails_in_seconds(folder: str, tmp_path: Path, model_folders: dict[str, Path]) -> None:
    """SageMaker mounts /opt/ml/{model,output,checkpoints} root-owned 0755 (seen with the SDK's local mode);
    a container user that cannot write one must hear so before any data or model work, not after training.
    A read-only bind mount stands in for "not writable by this user" (root ignores mode bits)."""
    root = write_tree(tmp_path / "opt_ml", GOOD)
    prefix = read_only_prefix(root / folder)
    if prefix is None:
        pytest.skip("cannot make a read-only mount here (needs root or unprivileged user namespaces)")
    outcome = run_subprocess(root, ["--model", str(model_folders["tiny"])], prefix=prefix)
    assert outcome.code == 2, outcome.stderr[-2000:]
    assert outcome.seconds < 30
    events = outcome.events
    assert [e["event"] for e in events] == ["job_failed"], "failed only after other work had started"
    reason = events[0]["message"]
    assert f"cannot write to {root / folder}" in reason and f"uid {os.getuid()}" in reason, reason
    assert f"seqcls: error: {reason}" in outcome.stderr and "Traceback" not in outcome.stderr
    failure_file = root / "output" / "failure"
    if folder == "output":  # the failure file's own folder: the reason can only go to stderr and the event
        assert not failure_file.exists()
        assert "could not write failure file" in outcome.stderr
    else:
        assert failure_file.read_text() == reason + "\n"
    assert artifact_files(root) == []
