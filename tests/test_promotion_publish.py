"""The promotion gate end to end, on the real servers the storage tests use: SeaweedFS (S3), fake-gcs-server
(GCS) and a local folder.

- Scheduled reruns (real jobs, the tiny model, in-process): a worse rerun leaves latest.json on the old run,
  logs why, exits 0, and `seqcls predict --model <output_uri>` still serves the old model; a better one moves it.
- Racing runs (storage.publish with the real promotion.Gate on small run folders, in threads): runs that read
  the same latest.json and all decide to promote never both win; the pointer ends on the best; what each run's
  published metrics.json says matches where the pointer went.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
from pathlib import Path
from typing import Callable

import pytest

from jobtools import build_tiny_model, cola_rows, minilm_folder, run_inprocess
from seqcls import promotion, storage
from seqcls import settings as hyperparameters
from seqcls.errors import StorageError
from seqcls.records import Comparison
from storage_servers import FakeGCS, s3_with_bucket

ACCESS_KEY = "seqcls-gate"
SECRET_KEY = "seqcls-gate-secret-5d21c0"
BUCKET = "seqcls-gate"
BACKENDS = ("s3", "gs", "file")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One SeaweedFS and one fake-gcs-server for the module; each test gets its own prefix."""
    with s3_with_bucket(tmp_path_factory.mktemp("weed"), ACCESS_KEY, SECRET_KEY, BUCKET) as s3:
        gcs = FakeGCS(tmp_path_factory.mktemp("gcs")).start()
        try:
            yield s3, gcs
        finally:
            gcs.stop()


@pytest.fixture(params=BACKENDS)
def backend(request, servers, tmp_path, monkeypatch) -> tuple[str, dict[str, str]]:
    """(output_uri, the environment a job needs to reach it), set in this process too."""
    s3, gcs = servers
    prefix = re.sub(r"[^a-z0-9]+", "-", f"{request.node.name.lower()}-{os.getpid()}")
    env = {"s3": s3.env(), "gs": {"STORAGE_EMULATOR_HOST": gcs.url}, "file": {}}[request.param]
    if request.param == "gs":
        from google.cloud import storage as gcs_storage

        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        client = gcs_storage.Client()
        if client.lookup_bucket(BUCKET) is None:
            client.create_bucket(BUCKET)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    uri = {"s3": f"s3://{BUCKET}/{prefix}", "gs": f"gs://{BUCKET}/{prefix}", "file": str(tmp_path / "models")}[request.param]
    return uri, env


def read_published(uri: str, name: str) -> bytes | None:
    """A published object as a consumer reads it (our own store classes: the same client calls)."""
    return storage.open_store(uri).read(name)


def pointer(uri: str) -> dict:
    return json.loads(read_published(uri, "latest.json"))


# --- racing runs -------------------------------------------------------------------------------------------------

def make_run(root: Path, run_id: str, mcc: float) -> tuple[Path, Path]:
    """The files the gate reads and rewrites (metrics.json, run_manifest.json) beside a stand-in weights file."""
    model_dir, out_dir = root / run_id / "model", root / run_id / "output" / "data"
    model_dir.mkdir(parents=True)
    out_dir.mkdir(parents=True)
    (model_dir / "metrics.json").write_text(json.dumps({"best_epoch": 1, "test": {"mcc": mcc}, "validation": {}}))
    (model_dir / "run_manifest.json").write_text(json.dumps({"run_id": run_id}))
    (model_dir / "model.safetensors").write_bytes(run_id.encode() * 1000)
    return model_dir, out_dir


class HookedGate(promotion.Gate):
    """The real gate, with a hook after each decision: lets a test hold a run between deciding and moving
    latest.json, so both runs have read the same latest.json (our code, not the platform's, is paused)."""

    def __init__(self, promotion, model_dir: Path, out_dir: Path, after_decide: Callable[[int], None]) -> None:
        super().__init__(promotion, model_dir, out_dir, self.published_as_scored)
        self.after_decide, self.decisions = after_decide, 0

    def published_as_scored(self, champion_uri: str) -> Comparison:
        """Stand-in weights cannot score rows: the champion's published test MCC stands in for its score on this
        run's rows (these tests are about the pointer under races, not about scoring)."""
        theirs = json.loads(storage.open_store(champion_uri).read("metrics.json"))["test"]["mcc"]
        ours = json.loads((self.model_dir / "metrics.json").read_text())["test"]["mcc"]
        return Comparison(ours, theirs, 1, "0" * 64, "test", ours - theirs, (ours - theirs, ours - theirs), 0.95, 0)

    def decide(self, current: storage.Current) -> bool:
        promoted = super().decide(current)
        self.decisions += 1
        self.after_decide(self.decisions)
        return promoted


def gate_settings(uri: str, flag: Path) -> hyperparameters.Promotion:
    return hyperparameters.resolve([("test", {"promote_if": "test_mcc", "output_uri": uri,
                                              "promotion_file": str(flag)})]).settings.promotion


def publish_gated(uri: str, root: Path, run_id: str, mcc: float, after_decide: Callable[[int], None] = lambda n: None):
    folders = make_run(root, run_id, mcc)
    gate = HookedGate(gate_settings(uri, root / run_id / "outcome"), *folders, after_decide)
    storage.publish(uri, run_id, list(folders), storage.Options(), gate)
    return gate


def run_threads(targets: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Run each target in its own thread; re-raise the first error."""
    results: dict[str, object] = {}

    def wrap(name: str, target: Callable[[], object]) -> None:
        try:
            results[name] = target()
        except BaseException as err:  # noqa: BLE001 - surfaced below
            results[name] = err

    threads = [threading.Thread(target=wrap, args=item) for item in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
    assert len(results) == len(targets), "a racing publish hung"
    return results


def published_record(uri: str, run_id: str) -> dict:
    """The decision as the run's published, manifest-sealed metrics.json says it (and its promotion.json)."""
    run = storage.open_store(storage.open_store(uri).target.join(run_id))
    assert run.read("manifest.json") is not None, f"{run_id} was not published"
    record = json.loads(run.read("metrics.json"))["promotion"]
    assert json.loads(run.read("promotion.json")) == record
    assert json.loads(run.read("run_manifest.json"))["promotion"] == record
    return record


@pytest.mark.parametrize("first", ["better", "worse"])
def test_two_runs_that_read_the_same_latest_never_both_win(backend, tmp_path, first):
    """Both runs read latest.json at L and decide to promote; one conditional write wins. When the better run
    wins, the worse one re-reads, is kept, and leaves the pointer alone; when the worse wins first, the better
    one re-decides against it and replaces it. Either way the pointer ends on the better run, and each run's
    published record says exactly what happened to it."""
    uri, _ = backend
    publish_gated(uri, tmp_path, "L", 0.10)
    both_read = threading.Barrier(2, timeout=60)
    committed = threading.Event()
    winner, loser = ("B", "A") if first == "better" else ("A", "B")

    def hold(run: str) -> Callable[[int], None]:
        def after_decide(n: int) -> None:
            if n == 1:
                both_read.wait()  # both decided against L
                if run == loser:
                    assert committed.wait(60), "the first run never committed"
        return after_decide

    class Committing(HookedGate):
        def commit(self) -> None:
            super().commit()
            committed.set()

    def race(run: str, mcc: float) -> Callable[[], HookedGate]:
        def go() -> HookedGate:
            folders = make_run(tmp_path, run, mcc)
            gate = (Committing if run == winner else HookedGate)(gate_settings(uri, tmp_path / run / "outcome"),
                                                                 *folders, hold(run))
            storage.publish(uri, run, list(folders), storage.Options(), gate)
            return gate
        return go

    gates = run_threads({"A": race("A", 0.30), "B": race("B", 0.50)})
    assert pointer(uri)["run_id"] == "B"
    a, b = published_record(uri, "A"), published_record(uri, "B")
    assert gates[winner].decisions == 1 and gates[loser].decisions == 2, "the loser re-read and decided again"
    if first == "better":
        assert (b["promoted"], b["current_run_id"]) == (True, "L")
        assert (a["promoted"], a["current_run_id"], a["current_value"]) == (False, "B", 0.5)
        assert "below run B's 0.5000" in a["reason"]
    else:
        assert (a["promoted"], a["current_run_id"]) == (True, "L")
        assert (b["promoted"], b["current_run_id"]) == (True, "A")  # B replaced A, not the stale L
    for run, record in (("A", a), ("B", b)):
        assert (tmp_path / run / "outcome").read_text() == ("promoted" if record["promoted"] else "kept")
        assert json.loads((tmp_path / run / "model" / "metrics.json").read_text())["promotion"] == record


@pytest.mark.slow
def test_many_runs_finishing_together_leave_the_pointer_on_the_best(backend, tmp_path):
    """Five runs decide against the same latest.json at once, with no ordering imposed: the pointer ends on the
    best, and the promoted runs form one chain from L to it (each replaced the one before: no two won the
    same version)."""
    uri, _ = backend
    publish_gated(uri, tmp_path, "L", 0.10)
    values = {"r1": 0.20, "r2": 0.50, "r3": 0.30, "r4": 0.45, "r5": 0.15}
    all_read = threading.Barrier(len(values), timeout=60)
    run_threads({run: (lambda run=run, mcc=mcc: publish_gated(
        uri, tmp_path, run, mcc, lambda n: all_read.wait() if n == 1 else None)) for run, mcc in values.items()})
    assert pointer(uri)["run_id"] == "r2"
    records = {run: published_record(uri, run) for run in values}
    replaced = {r["current_run_id"]: run for run, r in records.items() if r["promoted"]}
    assert len(replaced) == sum(r["promoted"] for r in records.values()), "two runs replaced the same run"
    chain, run = [], "L"
    while run in replaced:
        run = replaced[run]
        chain.append(run)
    assert chain and chain[-1] == "r2" and len(chain) == len(replaced)
    assert [values[r] for r in chain] == sorted(values[r] for r in chain)
    for run, record in records.items():
        if not record["promoted"]:
            assert record["current_value"] > values[run], f"{run} was kept against a worse run"


def test_a_latest_json_that_is_not_ours_is_never_overwritten(backend, tmp_path):
    uri, _ = backend
    store = storage.open_store(uri)
    store.put("latest.json", b"not json", new=False)
    with pytest.raises(StorageError, match="is not a seqcls latest.json"):
        publish_gated(uri, tmp_path, "A", 0.3)
    assert read_published(uri, "latest.json") == b"not json"


# --- scheduled reruns of the real job ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory, cola_dir) -> dict[str, Path]:
    """200 CoLA training rows, 100 test rows, the 1-layer model: a run takes seconds."""
    base = tmp_path_factory.mktemp("inputs")
    (base / "train.tsv").write_text(cola_rows(cola_dir, "in_domain_train.tsv", 200), encoding="utf-8")
    (base / "test.tsv").write_text(cola_rows(cola_dir, "out_of_domain_dev.tsv", 100), encoding="utf-8")
    return {"train": base / "train.tsv", "test": base / "test.tsv", "model": build_tiny_model(base / "tiny", minilm_folder())}


def train(root: Path, inputs: dict[str, Path], uri: str, run_id: str, env: dict[str, str], monkeypatch, capsys, *extra: str):
    args = ["--train", str(inputs["train"]), "--test", str(inputs["test"]), "--model_name_or_path", str(inputs["model"]),
            "--epochs", "1", "--max_length", "32", "--learning_rate", "1e-3", "--output_dir", str(root / run_id),
            "--run_id", run_id, "--output_uri", uri, "--promote_if", "test_loss",
            "--promotion_file", str(root / "kfp" / run_id / "outcome"), *extra]
    outcome = run_inprocess(root / run_id, args, env, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr[-3000:]
    [event] = [e for e in outcome.events if e.get("event") == "promotion"]
    return outcome, event


def predict(tmp_path: Path, uri: str, inputs: dict[str, Path], env: dict[str, str], monkeypatch, capsys):
    from seqcls import cli

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    output = tmp_path / "predictions.csv"
    capsys.readouterr()
    assert cli.main(["predict", "--model", uri, "--input", str(inputs["test"]), "--output", str(output)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [followed] = [e for e in events if e.get("event") == "latest_followed"]
    with output.open() as handle:
        return followed["run_id"], [row["predicted"] + row["prob_1"] for row in csv.DictReader(handle)]


def job_prediction_rows(root: Path) -> list[str]:
    with (root / "output" / "data" / "test_predictions.csv").open() as handle:
        return [row["predicted"] + row["prob_1"] for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_a_worse_rerun_keeps_latest_and_a_better_one_moves_it(backend, job_inputs, tmp_path, monkeypatch, capsys):
    uri, env = backend
    first, event = train(tmp_path, job_inputs, uri, "week-1", env, monkeypatch, capsys)
    assert event["promoted"] and event["current_run_id"] is None
    # A bad week: a learning rate that wrecks the weights, so the test loss is clearly worse.
    _, kept = train(tmp_path, job_inputs, uri, "week-2", env, monkeypatch, capsys, "--learning_rate", "0.9")
    assert kept["value"] > event["value"], "precondition: week-2 is worse"
    assert (kept["promoted"], kept["promoted_flag"], kept["current_run_id"]) == (False, 0, "week-1")
    assert kept["current_value"] == pytest.approx(event["value"], abs=2e-3)  # week-1 on the same rows, as predict scores
    assert kept["reason"] == (f"test_loss {kept['value']:.4f} is above run week-1's {kept['current_value']:.4f} "
                              "on the same 100 test rows + tolerance 0")
    assert kept["comparison"]["rows"] == 100 and kept["current_published_value"] == event["value"]
    assert pointer(uri)["run_id"] == "week-1"
    assert (tmp_path / "kfp" / "week-2" / "outcome").read_bytes() == b"kept"
    record = published_record(uri, "week-2")  # published anyway, with the decision sealed in
    assert record == {k: v for k, v in kept.items() if k in record}
    assert json.loads((tmp_path / "week-2" / "output" / "data" / "promotion.json").read_text()) == record
    served, rows = predict(tmp_path, uri, job_inputs, env, monkeypatch, capsys)
    assert served == "week-1" and rows == job_prediction_rows(first.root)
    # A better week: three epochs at the good learning rate.
    better, moved = train(tmp_path, job_inputs, uri, "week-3", env, monkeypatch, capsys, "--epochs", "3")
    assert moved["value"] < event["value"], "precondition: week-3 is better"
    assert (moved["promoted"], moved["promoted_flag"], moved["current_run_id"]) == (True, 1, "week-1")
    assert pointer(uri)["run_id"] == "week-3"
    assert (tmp_path / "kfp" / "week-3" / "outcome").read_bytes() == b"promoted"
    served, rows = predict(tmp_path, uri, job_inputs, env, monkeypatch, capsys)
    assert served == "week-3" and rows == job_prediction_rows(better.root)


@pytest.mark.slow
def test_on_vertex_the_gate_moves_output_uri_latest_and_aip_model_dir_gets_the_same_record(job_inputs, tmp_path,
                                                                                          monkeypatch, capsys):
    """AIP_MODEL_DIR is this job's own model folder (Vertex model upload reads it), replaced every run; the gate
    decides <output_uri>/latest.json, and publishes there first so AIP_MODEL_DIR's metrics.json carries the
    decision that stood (a pipeline can branch on it, or on promotion_file)."""
    model_dir, uri = tmp_path / "aip-model", str(tmp_path / "models")
    vertex = {"AIP_MODEL_DIR": str(model_dir), "CLOUD_ML_JOB_ID": "vertex-1"}
    first, event = train(tmp_path, job_inputs, uri, "vertex-1", vertex, monkeypatch, capsys)
    vertex["CLOUD_ML_JOB_ID"] = "vertex-2"
    second, kept = train(tmp_path, job_inputs, uri, "vertex-2", vertex, monkeypatch, capsys, "--learning_rate", "0.9")
    assert event["promoted"] and not kept["promoted"] and pointer(uri)["run_id"] == "vertex-1"
    published = [e["uri"] for e in second.events if e.get("event") == "artifacts_published"]
    assert published == [str(Path(uri) / "vertex-2"), str(model_dir)]
    record = published_record(uri, "vertex-2")
    assert json.loads((model_dir / "metrics.json").read_text())["promotion"] == record
    assert json.loads((model_dir / "manifest.json").read_text())["run_id"] == "vertex-2"


def test_a_run_id_latest_json_already_names_is_refused_before_training(backend, tmp_path):
    """A gated publish that died between moving latest.json and writing its manifest: its run id stays taken,
    so a retry cannot replace files the pointer's list vouches for."""
    uri, _ = backend
    storage.open_store(uri).put("latest.json", json.dumps({"run_id": "week-9", "files": []}).encode(), new=False)
    with pytest.raises(StorageError, match="latest.json already points at it: run 'week-9' was published before"):
        storage.preflight(uri, "week-9", storage.Options())
    storage.preflight(uri, "week-10", storage.Options())
