"""The data stage once per host (seqcls.hostdata): two real gloo processes, in-process stages for the
mechanics (arrays, clean-up, failures) and the real entry point under torchrun for the job's outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from jobtools import REPO, clean_env, json_lines, make_tree
from storage_servers import free_port

FIELDS = ("input_ids", "token_type_ids", "offsets", "labels", "weights")


def _stage(cola_dir: str, model: str, calls: str, fail: bool):
    """The job's data stage on a CoLA slice (class weights on, so `weights` is shared too); counts its calls."""
    from transformers import AutoTokenizer

    from seqcls import data
    from seqcls.errors import DataError
    from seqcls.settings import Settings

    with open(calls, "a") as handle:
        handle.write("called\n")
    if fail:
        raise DataError("injected: train channel is broken")
    settings = Settings(class_weights="balanced", max_length="auto")
    splits = data.load_splits({"train": Path(cola_dir) / "in_domain_train.tsv",
                               "test": Path(cola_dir) / "out_of_domain_dev.tsv"}, settings)
    tokenizer = AutoTokenizer.from_pretrained(model)
    return data.encode_splits(tokenizer, splits, data.resolve_max_length(tokenizer, splits.train, settings, 512))


class _Ready:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_event(self, name: str, fields: dict) -> None:
        if name == "data_ready":
            self.events.append(fields)

    def close(self) -> None:
        pass


def _rank(rank: int, init: str, cola_dir: str, model: str, out: str, fail: bool) -> None:
    """One of two ranks on one host: two runs of the stage through once_per_host, arrays and events saved."""
    import tempfile

    import torch

    from seqcls import distributed, hostdata, logs

    tempfile.tempdir = str(Path(out) / "scratch")  # the stdlib's own override of the temporary folder (as TMPDIR)
    world = distributed.World(rank, 2, rank)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    logs.setup(rank=rank)
    ready = _Ready()
    logs.subscribe(ready)
    result: dict = {"runs": [], "error": None}
    try:
        for run in range(2):
            prepared = hostdata.once_per_host(world, lambda: _stage(cola_dir, model, f"{out}/calls-{rank}", fail),
                                              f"run{run}", 60)
            left = sorted(os.listdir(tempfile.tempdir))
            arrays = {f"{split}.{field}": np.asarray(getattr(encoded, field)) for split, encoded in prepared.encoded.items()
                      for field in FIELDS if getattr(encoded, field) is not None}
            np.savez(f"{out}/rank{rank}-run{run}.npz", **arrays)
            result["runs"].append({"left_in_scratch": left, "max_length": prepared.max_length,
                                   "files": prepared.splits.train.files})
    except Exception as err:  # noqa: BLE001 - what each rank saw is the test's subject
        result["error"] = [type(err).__name__, str(err)]
    result["ready"] = ready.events
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(result, default=str))
    torch.distributed.destroy_process_group()


def _two_ranks(tmp_path: Path, cola_dir: Path, model: Path, fail: bool = False) -> list[dict]:
    (tmp_path / "scratch").mkdir()
    mp.start_processes(_rank, args=(str(tmp_path / "init"), str(cola_dir), str(model), str(tmp_path), fail), nprocs=2,
                       start_method="spawn")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_local_rank_0_tokenizes_and_every_rank_gets_the_same_arrays(tmp_path, cola_dir, minilm_path):
    results = _two_ranks(tmp_path, cola_dir, minilm_path)
    assert [r["error"] for r in results] == [None, None]
    # The stage (reading, hashing, tokenizing) ran on rank 0 only, once per run.
    assert (tmp_path / "calls-0").read_text().count("called") == 2 and not (tmp_path / "calls-1").exists()
    single = _stage(str(cola_dir), str(minilm_path), str(tmp_path / "calls-single"), False)
    for run in range(2):
        for rank in range(2):
            arrays = np.load(tmp_path / f"rank{rank}-run{run}.npz")
            expected = {f"{split}.{field}": getattr(encoded, field) for split, encoded in single.encoded.items()
                        for field in FIELDS if getattr(encoded, field) is not None}
            assert sorted(arrays.files) == sorted(expected)
            for name, array in expected.items():
                assert arrays[name].dtype == array.dtype and np.array_equal(arrays[name], array), name
            assert results[rank]["runs"][run]["max_length"] == single.max_length
            assert results[rank]["runs"][run]["files"] == json.loads(json.dumps(single.splits.train.files))
    ready = results[0]["ready"]
    assert [(e["tokenized_by"], e["mapped_by"]) for e in ready] == [([0], [1]), ([0], [1])]
    first, second = ready[0]["shared_folders"][0], ready[1]["shared_folders"][0]
    # Each run its own folder, named for the run, removed once every rank has mapped it.
    assert first != second and "run0" in first and "run1" in second
    assert Path(first).parent == tmp_path / "scratch" and not Path(first).exists() and not Path(second).exists()
    # Rank 0 removes the folder before once_per_host returns (rank 1 may return a moment earlier).
    assert [run["left_in_scratch"] for run in results[0]["runs"]] == [[], []]
    assert not os.listdir(tmp_path / "scratch")


@pytest.mark.slow
def test_a_failure_on_the_tokenizing_rank_is_raised_on_every_rank(tmp_path, cola_dir, minilm_path):
    results = _two_ranks(tmp_path, cola_dir, minilm_path, fail=True)
    assert results[0]["error"] == ["DataError", "injected: train channel is broken"]
    # Rank 1 does not wait out the timeout: it raises the same kind of error (same exit code), naming rank 0.
    assert results[1]["error"] == ["DataError", "rank 0 failed in the data stage (reading and tokenizing for its "
                                                "host): injected: train channel is broken"]
    assert not os.listdir(tmp_path / "scratch")


def _torchrun(root: Path, nnodes: int, node_rank: int, nproc: int, port: int, env: dict | None = None) -> subprocess.Popen:
    """`torchrun` as the entrypoint execs it (seqcls.cli), here with an explicit node layout."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
         f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "seqcls", "train"],
        env=clean_env({"SEQCLS_OPT_ML": str(root), **(env or {})}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)



def _finish(process: subprocess.Popen) -> tuple[int, list[dict], str]:
    out, err = process.communicate(timeout=900)
    return process.returncode, json_lines(out), err


@pytest.mark.slow
def test_one_host_of_two_ranks_trains_exactly_as_two_hosts_that_each_tokenize(tmp_path, cola_dir, minilm_path):
    """One host, 2 ranks: rank 1 maps rank 0's arrays. Two hosts of 1 rank: each tokenizes for itself, as every
    rank did before. Same world size and ranks, so the same dropout streams: the weights must be identical."""
    hyperparameters = {"epochs": "1", "batch_size": "16", "class_weights": "balanced"}
    shared = make_tree(tmp_path / "shared", cola_dir, hyperparameters, train_rows=120, test_rows=40, model=minilm_path)
    apart = make_tree(tmp_path / "apart", cola_dir, hyperparameters, train_rows=120, test_rows=40, model=minilm_path)
    # torchrun sets OMP_NUM_THREADS=1 only for several processes per node; the same threads in both layouts
    # keep the float reductions in the same order.
    threads = {"OMP_NUM_THREADS": "1"}
    code, records, err = _finish(_torchrun(shared, 1, 0, 2, free_port(), threads))
    assert code == 0, err[-3000:]
    port = free_port()
    hosts = [_torchrun(apart, 2, node, 1, port, threads) for node in range(2)]
    (code0, records0, err0), (code1, _, err1) = [_finish(p) for p in hosts]
    assert code0 == code1 == 0, err0[-2000:] + err1[-2000:]

    ready = next(r for r in records if r["event"] == "data_ready")
    assert (ready["tokenized_by"], ready["mapped_by"]) == ([0], [1]), ready
    assert "once per host" in ready["message"]
    assert next(r for r in records0 if r["event"] == "data_ready")["tokenized_by"] == [0, 1]
    assert (shared / "model" / "model.safetensors").read_bytes() == (apart / "model" / "model.safetensors").read_bytes()
    metrics = [json.loads((root / "model" / "metrics.json").read_text()) for root in (shared, apart)]
    assert metrics[0]["test"] == metrics[1]["test"]
    assert not Path(ready["shared_folders"][0]).exists()


@pytest.mark.slow
def test_a_fault_in_tokenizing_fails_every_rank_with_the_reason(tmp_path, cola_dir, minilm_path):
    root = make_tree(tmp_path / "ml", cola_dir, {"epochs": "1", "batch_size": "8"}, train_rows=60, test_rows=20,
                     model=minilm_path)
    env = {"FAULT_INJECT_RANK": "0", "FAULT_INJECT_STAGE": "tokenize",
           "PYTHONPATH": f"{Path(__file__).parent / 'fault_injection'}:{REPO / 'src'}"}
    code, records, err = _finish(_torchrun(root, 1, 0, 2, free_port(), env))
    assert code != 0
    failed = {r["rank"]: r["message"] for r in records if r["event"] == "job_failed"}
    assert failed[0] == "rank 0: internal error: RuntimeError: injected fault in tokenization", failed
    # Rank 1 says why at once (not a timeout of the exchange), naming the rank that failed.
    assert failed[1] == ("rank 1: rank 0 failed in the data stage (reading and tokenizing for its host): internal "
                         "error: RuntimeError: injected fault in tokenization"), failed
    assert "injected fault in tokenization" in (root / "output" / "failure").read_text()
    assert not (root / "model" / "model.safetensors").exists()
