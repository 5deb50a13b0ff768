"""`seqcls predict` scores and writes a file in chunks (issue 26): the same bytes as one chunk, progress events with
rows/s and the time left, and a file that appears complete or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder
from seqcls import logs, predict

FP32 = {"precision": "fp32"}  # bf16 scores move in the 4th decimal with a batch's padding; fp32 does not


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
def test_chunks_write_the_same_bytes_as_one_chunk_and_report_progress(suffix, tiny, rows, tmp_path, capsys) -> None:
    logs.setup()
    predict.run(str(tiny), rows, tmp_path / f"whole{suffix}", FP32, chunk_rows=10_000)
    capsys.readouterr()
    predict.run(str(tiny), rows, tmp_path / f"chunked{suffix}", FP32, chunk_rows=1_000)
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
