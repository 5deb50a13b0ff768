"""`seqcls predict` scores and writes a file in chunks (issue 26): the same bytes as one chunk, progress events with
rows/s and the time left, and a file that appears complete or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder
from seqcls import evaluate, logs, predict

# Each row its own batch, in fp32: a row's scores then depend on that row alone. In a batch they move with the batch's
# shape (bf16: the 4th decimal; fp32: the last bit, as the CPU kernels' summation order follows the shape), and a
# rank's share changes which rows are batched together.
FP32 = {"precision": "fp32", "eval_batch_size": "1"}


@pytest.fixture(autouse=True)
def small_sort_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 100 rows and more, as predict.run requires, hold whole sort windows."""
    monkeypatch.setattr(predict, "SORT_WINDOW_ROWS", 100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory, cola_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("input") / "rows.csv"
    sentences = [line.split("\t")[3] for line in cola_rows(cola_dir, "in_domain_train.tsv", 2500).splitlines()]
    path.write_text("text\n" + "".join('"' + s.replace('"', '""') + '"\n' for s in sentences), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_chunks_write_the_same_bytes_as_one_chunk_and_report_progress(suffix, tiny, rows, tmp_path, capsys,
                                                                     monkeypatch) -> None:
    """Batches of many rows, at the default precision: a chunk holds whole sort windows, so every row is batched
    with the same neighbours as in one chunk of the whole file (the batches are compared, as the tiny model's
    scores rarely show a neighbour's effect), and scored to the same bits."""
    batches: list[list] = []
    collate = evaluate.collate

    def recorded(encoded, positions, *args):
        batch = collate(encoded, positions, *args)
        batches[-1].append(sorted(map(tuple, batch["input_ids"].tolist())))
        return batch

    monkeypatch.setattr(evaluate, "collate", recorded)
    logs.setup()
    for name, chunk_rows in (("whole", 10_000), ("chunked", 1_000)):
        batches.append([])
        predict.run(str(tiny), rows, tmp_path / f"{name}{suffix}", {"eval_batch_size": "64"}, chunk_rows=chunk_rows)
        if name == "whole":
            capsys.readouterr()
    assert sorted(batches[0]) == sorted(batches[1]) and len(batches[0]) == 25 * 2
    assert (tmp_path / f"chunked{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "predict_progress"]
    assert [e["rows_done"] for e in progress] == [1000, 2000, 2500]
    assert all(e["rows"] == 2500 and e["rows_per_s"] > 0 for e in progress) and progress[-1]["seconds_left"] == 0
    lines = (tmp_path / f"chunked{suffix}").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2500 + (suffix == ".csv")


def test_a_failure_mid_file_leaves_no_output_and_no_temp_file(tiny, rows, tmp_path, monkeypatch) -> None:
    calls = []
    scored = predict.predict_frame

    def failing(loaded, frame):
        calls.append(len(frame))
        if len(calls) == 2:
            raise MemoryError("the second chunk did not fit")
        return scored(loaded, frame)

    monkeypatch.setattr(predict, "predict_frame", failing)
    logs.setup()
    with pytest.raises(MemoryError):
        predict.run(str(tiny), rows, tmp_path / "out.csv", FP32, chunk_rows=1_000)
    assert list(tmp_path.iterdir()) == []


# --- reading in chunks: bounded memory whatever the row count -----------------------------------------------------

def _settings():
    from seqcls import settings as hyperparameters

    return hyperparameters.resolve([]).settings


def _inputs(folder: Path, cola_dir: Path) -> Path:
    """One folder of inputs in every format, 700 rows in all, some with empty text."""
    import pandas as pd

    folder.mkdir()
    lines = cola_rows(cola_dir, "in_domain_train.tsv", 700).splitlines(keepends=True)
    (folder / "a.tsv").write_text("".join(lines[:200]), encoding="utf-8")  # CoLA's headerless layout
    texts = [line.rstrip("\n").split("\t")[3] for line in lines[200:]]
    texts[300] = texts[450] = "   "  # in the JSONL and the Parquet file
    pd.DataFrame({"text": texts[:250]}).to_csv(folder / "b.csv", index=False)
    pd.DataFrame({"text": texts[250:400]}).to_json(folder / "c.jsonl", orient="records", lines=True)
    pd.DataFrame({"text": texts[400:]}).to_parquet(folder / "d.parquet")
    return folder


def test_chunks_hold_what_the_whole_read_holds_in_order_and_never_more_rows(tmp_path, cola_dir) -> None:
    from seqcls import data

    folder, settings = _inputs(tmp_path / "in", cola_dir), _settings()
    whole = data.read_channel(folder, "input", settings.reading, labelled=False, explicit=()).frame
    chunks = list(data.read_in_chunks(folder, "input", settings.reading, (), 64))
    assert max(len(c) for c in chunks) <= 64 and len(chunks) >= 700 // 64
    assert pd_concat(chunks).equals(whole) and len(whole) == 698  # the two blank texts dropped
    assert data.count_rows(folder, "input", settings.reading, ()) == 700  # lines: blank texts are still rows


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def test_reading_is_lazy_so_a_broken_row_near_the_end_fails_the_run_after_the_first_chunks(tmp_path, tiny) -> None:
    """A file is never read whole: the first chunks come before the ragged last row is reached, and the ragged row
    still fails the run (exit 2's DataError), leaving no output."""
    from seqcls import data
    from seqcls.errors import DataError

    path = tmp_path / "rows.csv"
    path.write_text("text,extra\n" + "".join(f"sentence {i},x\n" for i in range(5000)) + "short\n", encoding="utf-8")
    reader = data.read_in_chunks(path, "input", _settings().reading, (), 1000)
    assert len(next(reader)) == 1000
    with pytest.raises(DataError, match="has 1 field"):
        list(reader)
    logs.setup()
    with pytest.raises(DataError, match="has 1 field"):
        predict.run(str(tiny), path, tmp_path / "out.csv", FP32, chunk_rows=1000)
    assert not (tmp_path / "out.csv").exists()


def test_every_input_format_in_chunks_writes_the_same_bytes_and_ends_on_the_true_count(tiny, tmp_path, cola_dir,
                                                                                        capsys) -> None:
    folder = _inputs(tmp_path / "in", cola_dir)
    logs.setup()
    predict.run(str(tiny), folder, tmp_path / "whole.jsonl", FP32, chunk_rows=10_000)
    capsys.readouterr()
    summary = predict.run(str(tiny), folder, tmp_path / "chunked.jsonl", FP32, chunk_rows=100)
    assert (tmp_path / "chunked.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "predict_progress"]
    assert progress[0]["rows"] == 700 and progress[-1]["rows_done"] == progress[-1]["rows"] == 698 == summary.rows
    assert progress[-1]["seconds_left"] == 0
    (dropped,) = [e for e in events if e["event"] == "rows_dropped"]
    assert dropped["dropped"] == 2


@pytest.mark.slow
def test_two_torchrun_ranks_write_the_bytes_one_process_writes(tiny, rows, tmp_path) -> None:
    """`torchrun -m seqcls predict` (gloo on CPU): each rank scores every other row of each chunk on its own device,
    rank 0 writes them in input order; a chunk with fewer rows than ranks (the last, 2,500 = 2 x 1,249 + 2) works."""
    import subprocess
    import sys

    from jobtools import clean_env

    args = ["--model", str(tiny), "--input", str(rows), "--precision", "fp32", "--eval_batch_size", "1"]
    env = clean_env({"OMP_NUM_THREADS": "1", "SEQCLS_GIT_COMMIT": "test"})
    single = subprocess.run([sys.executable, "-m", "seqcls", "predict", *args, "--output", str(tmp_path / "one.csv")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "seqcls", "predict", *args, "--output", str(tmp_path / "two.csv")],
                             env=env, capture_output=True, text=True, timeout=600)
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    written = [json.loads(line) for line in sharded.stdout.splitlines() if '"predictions_written"' in line]
    assert len(written) == 1 and written[0]["ranks"] == 2 and written[0]["rows"] == 2500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "two.csv"]  # no temp file from either rank


def test_casting_once_keeps_each_weights_cast_and_scores_alike(tiny) -> None:
    """Inside predict.casting_once a pass reuses the weights' bf16 copies (so the server and a file's chunks cast
    them once): the scores equal per-pass casting's, and a weight changed inside it is not seen until it closes."""
    import pandas as pd
    import torch

    loaded = predict.load(str(tiny), {"precision": "bf16"})
    frame = pd.DataFrame({"text": ["a short one", "a rather longer sentence about books and their readers"]})
    cast_per_pass = predict.predict_frame(loaded, frame).logits
    with predict.casting_once(loaded):
        held = predict.predict_frame(loaded, frame).logits
        with torch.no_grad():
            loaded.scorer.model.classifier.weight.add_(1.0)
        stale = predict.predict_frame(loaded, frame).logits
    fresh = predict.predict_frame(loaded, frame).logits
    assert (held == cast_per_pass).all() and (stale == held).all() and not (fresh == held).all()


def test_chunks_that_would_split_a_sort_window_are_refused(tiny, rows, tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of SORT_WINDOW_ROWS"):
        predict.run(str(tiny), rows, tmp_path / "out.csv", FP32, chunk_rows=150)
    assert list(tmp_path.iterdir()) == []
