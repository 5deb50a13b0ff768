"""storage.publish / fetch against real servers on loopback: SeaweedFS (S3), fake-gcs-server, a folder.

What is pinned: manifest.json is written last and only after every file checks out; it matches the
bytes a consumer downloads; an existing manifest is never overwritten; big files go multipart; bad
credentials and dead or flaky servers end in a clear StorageError and no manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from seqcls import settings as hyperparameters
from seqcls import storage
from seqcls.errors import SettingsError, StorageError
from storage_servers import FakeGCS, FaultProxy, SeaweedS3, s3_with_bucket

ACCESS_KEY = "seqcls-test"
SECRET_KEY = "seqcls-secret-7f3a91c2"  # must never appear in an error message
BUCKET = "seqcls-test"
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_run(root: Path, sizes: dict[str, int], seed: int = 0) -> list[Path]:
    """A fake model folder and output-data folder; names prefixed `out_` go to the second."""
    model_dir, out_dir = root / "model", root / "output" / "data"
    model_dir.mkdir(parents=True), out_dir.mkdir(parents=True)
    rng = __import__("random").Random(seed)
    for name, size in sizes.items():
        folder = out_dir if name.startswith("out_") else model_dir
        (folder / name).write_bytes(rng.randbytes(size))
    (model_dir / ".staging-x").mkdir()  # hidden leftovers of atomic writes are not published
    (model_dir / ".staging-x" / "junk").write_bytes(b"junk")
    return [model_dir, out_dir]


def local_files(folders: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for folder in folders for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_with_bucket(tmp_path_factory.mktemp("weed"), ACCESS_KEY, SECRET_KEY, BUCKET) as server:
        yield server


@pytest.fixture
def aws(s3, monkeypatch):
    """Point storage at the server the way a user would: the standard AWS_* variables."""
    for key in ("AWS_PROFILE", "AWS_MAX_ATTEMPTS", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def s3_objects(s3: SeaweedS3, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing}


def assert_manifest_matches(objects: dict[str, bytes], local: dict[str, bytes]) -> dict:
    manifest = json.loads(objects["manifest.json"])
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == set(local), "manifest lists exactly the local files"
    assert set(objects) == set(local) | {"manifest.json"}
    for name, data in local.items():
        assert objects[name] == data
        assert (listed[name]["size"], listed[name]["sha256"]) == (len(data), sha256(data))
    assert manifest["total_bytes"] == sum(map(len, local.values()))
    return manifest


def test_s3_publish_writes_manifest_last_and_it_matches_the_downloaded_bytes(aws, tmp_path, monkeypatch):
    folders = make_run(tmp_path, {"config.json": 300, "model.safetensors": 3 * MiB, "out_training_stats.csv": 500})
    with FaultProxy(int(aws.endpoint.rsplit(":", 1)[1])) as proxy:  # no faults: it only records the order
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        published = storage.publish(f"s3://{BUCKET}/runs", "run-a", folders)
    assert published.uri == f"s3://{BUCKET}/runs/run-a"
    assert (published.files, published.bytes, published.checks) == (3, 300 + 3 * MiB + 500, ["sha256"])
    manifest = assert_manifest_matches(s3_objects(aws, "runs/run-a/"), local_files(folders))
    assert manifest["run_id"] == "run-a"

    writes = [path.split("?")[0] for method, path, _ in proxy.log if method in ("PUT", "POST")]
    assert writes[-2:] == [f"/{BUCKET}/runs/run-a/manifest.json", f"/{BUCKET}/runs/latest.json"]
    assert all(path not in writes[:-2] for path in writes[-2:]), "manifest and latest written once, last"
    heads = [i for i, (method, path, _) in enumerate(proxy.log) if method == "HEAD" and "training_stats" in path]
    assert heads and heads[-1] < len(proxy.log) - 2, "every file verified (HEAD) before the manifest"
    latest = json.loads(s3_objects(aws, "runs/latest.json")[""])
    assert latest["run_id"] == "run-a" and latest["manifest"] == f"s3://{BUCKET}/runs/run-a/manifest.json"


def test_s3_refuses_a_run_id_that_already_has_a_manifest(aws, tmp_path):
    folders = make_run(tmp_path, {"config.json": 100})
    storage.publish(f"s3://{BUCKET}/refuse", "run-1", folders)
    before = s3_objects(aws, "refuse/run-1/")
    (folders[0] / "config.json").write_bytes(b"changed")
    with pytest.raises(StorageError, match=r"s3://seqcls-test/refuse/run-1/manifest.json already exists"):
        storage.publish(f"s3://{BUCKET}/refuse", "run-1", folders)
    with pytest.raises(StorageError, match="already exists"):
        storage.preflight(f"s3://{BUCKET}/refuse", "run-1", storage.Options())
    assert s3_objects(aws, "refuse/run-1/") == before


def test_s3_wrong_credentials_fail_clearly_and_never_show_the_secret(aws, tmp_path, monkeypatch):
    wrong = "wrong-secret-0d9e8c7b"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    folders = make_run(tmp_path, {"config.json": 100})
    with pytest.raises(StorageError) as caught:
        storage.publish(f"s3://{BUCKET}/creds", "run-1", folders)
    message = str(caught.value)
    assert "s3://seqcls-test/creds/run-1" in message and "403" in message and "credentials" in message
    assert wrong not in message and SECRET_KEY not in message
    assert s3_objects(aws, "creds/") == {}


@pytest.mark.slow
def test_s3_large_file_goes_multipart_with_composite_sha256(aws, tmp_path):
    folders = make_run(tmp_path, {"config.json": 100})
    (folders[0] / "model.safetensors").write_bytes(os.urandom(105 * MiB))
    published = storage.publish(f"s3://{BUCKET}/big", "run-1", folders)
    head = aws.client().head_object(Bucket=BUCKET, Key="big/run-1/model.safetensors", ChecksumMode="ENABLED")
    parts = -(-105 * MiB // storage.s3.S3_PART_BYTES)
    assert head["ETag"].strip('"').endswith(f"-{parts}") and head["ChecksumSHA256"].endswith(f"-{parts}")
    assert published.checks == ["sha256"]
    fetched = storage.fetch(f"s3://{BUCKET}/big/run-1", tmp_path / "fetched")  # verifies sha256 of every file
    assert (fetched / "model.safetensors").stat().st_size == 105 * MiB


def test_fetch_refuses_a_run_without_manifest(aws, tmp_path):
    aws.client().put_object(Bucket=BUCKET, Key="partial/run-1/config.json", Body=b"{}")
    with pytest.raises(StorageError, match="has no manifest.json"):
        storage.fetch(f"s3://{BUCKET}/partial/run-1", tmp_path)


def test_a_listed_object_missing_from_the_bucket_is_named(aws, tmp_path):
    manifest = {"format": "seqcls-manifest/1", "run_id": "run-1",
                "files": [{"name": "config.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}]}
    aws.client().put_object(Bucket=BUCKET, Key="gone/run-1/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(StorageError, match=rf"cannot fetch s3://{BUCKET}/gone/run-1/config.json \(listed in .*404"):
        storage.fetch(f"s3://{BUCKET}/gone/run-1", tmp_path)


@pytest.mark.slow
def test_flaky_server_trials_either_publish_verified_bytes_or_leave_no_manifest(aws, tmp_path, monkeypatch):
    """12 trials through a proxy that drops, 500s or loses the answer of requests: 9 mild (~16% of
    requests, default retries: should recover) and 3 harsh (~60%, 2 attempts: should fail cleanly)."""
    monkeypatch.setattr(storage.s3, "S3_MULTIPART_THRESHOLD", 5 * MiB)  # S3's smallest part: multipart stays cheap
    monkeypatch.setattr(storage.s3, "S3_PART_BYTES", 5 * MiB)
    folders = make_run(tmp_path / "run", {"config.json": 700, "tokenizer.json": 200_000, "model.safetensors": 11 * MiB,
                                          "out_loss_curve.png": 30_000})
    local = local_files(folders)
    outcomes = []
    for trial in range(12):
        harsh = trial >= 9
        rates = dict(drop=0.25, error=0.25, lose=0.1) if harsh else dict(drop=0.06, error=0.06, lose=0.04)
        if harsh:
            monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        with FaultProxy(int(aws.endpoint.rsplit(":", 1)[1]), seed=trial, **rates) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
            try:
                storage.publish(f"s3://{BUCKET}/flaky", f"trial-{trial}", folders, storage.Options(latest=False))
                published = True
            except StorageError as err:
                assert f"s3://{BUCKET}/flaky/trial-{trial}" in str(err)
                published = False
        faults = sum(outcome != "pass" for _, _, outcome in proxy.log)
        objects = s3_objects(aws, f"flaky/trial-{trial}/")  # straight from the server, not through the proxy
        if published:
            assert_manifest_matches(objects, local)
        else:
            assert "manifest.json" not in objects, f"trial {trial} failed yet left a manifest"
        outcomes.append((harsh, published, faults))
    assert any(not harsh and ok and faults for harsh, ok, faults in outcomes), f"no trial recovered by retrying: {outcomes}"
    assert any(harsh and not ok for harsh, ok, _ in outcomes), f"no trial failed under heavy faults: {outcomes}"


@pytest.mark.slow
def test_server_killed_mid_upload_fails_with_no_manifest(tmp_path, monkeypatch):
    server = SeaweedS3(tmp_path / "weed", ACCESS_KEY, SECRET_KEY).start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        monkeypatch.setattr(storage.s3, "S3_MULTIPART_THRESHOLD", 5 * MiB)
        monkeypatch.setattr(storage.s3, "S3_PART_BYTES", 5 * MiB)
        folders = make_run(tmp_path / "run", {"config.json": 100, "model.safetensors": 30 * MiB})

        def kill_on_third_part(method: str, path: str) -> None:
            if "partNumber=3" in path:
                server.kill()

        with FaultProxy(server.ports["s3.port"], on_request=kill_on_third_part) as proxy:
            for key, value in server.env(endpoint=proxy.endpoint).items():
                monkeypatch.setenv(key, value)
            monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # the standard variable: fail fast once the server is gone
            with pytest.raises(StorageError, match=r"publishing to s3://seqcls-test/killed/run-1 failed while uploading.*"
                                                   r"no manifest was written"):
                storage.publish(f"s3://{BUCKET}/killed", "run-1", folders)
        assert server.process.poll() is not None, "the server was killed mid-upload"
        server.start()  # same data folder and ports
        assert "manifest.json" not in s3_objects(server, "killed/run-1/")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server = FakeGCS(tmp_path_factory.mktemp("gcs")).start()
    yield server
    server.stop()


@pytest.fixture
def gcs_client(gcs, monkeypatch):
    from google.cloud import storage as gcs_storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    client = gcs_storage.Client()
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    return client


def test_gcs_publish_fetch_and_refusal(gcs_client, tmp_path):
    folders = make_run(tmp_path / "run", {"config.json": 300, "model.safetensors": 20 * MiB, "out_metrics.csv": 90})
    published = storage.publish(f"gs://{BUCKET}/runs", "run-1", folders)
    assert published.uri == f"gs://{BUCKET}/runs/run-1" and published.checks == ["crc32c+md5"]
    bucket = gcs_client.bucket(BUCKET)
    objects = {b.name[len("runs/run-1/"):]: b.download_as_bytes() for b in gcs_client.list_blobs(BUCKET, prefix="runs/run-1/")}
    assert_manifest_matches(objects, local_files(folders))
    assert json.loads(bucket.blob("runs/latest.json").download_as_bytes())["run_id"] == "run-1"
    fetched = storage.fetch(f"gs://{BUCKET}/runs/run-1", tmp_path / "fetched")
    assert local_files([fetched]) == {**local_files(folders), "manifest.json": objects["manifest.json"]}
    with pytest.raises(StorageError, match="already exists"):
        storage.publish(f"gs://{BUCKET}/runs", "run-1", folders)


def test_gcs_replace_makes_a_fixed_folder_hold_exactly_the_newest_run(gcs_client, tmp_path):
    """Vertex's AIP_MODEL_DIR without the /gcs mount: each scheduled run replaces the last, files flat in it."""
    week1 = make_run(tmp_path / "w1", {"config.json": 300, "model.safetensors": 2 * MiB, "out_predictions.csv": 90})
    week2 = make_run(tmp_path / "w2", {"config.json": 310, "model.safetensors": 2 * MiB}, seed=1)
    storage.replace(f"gs://{BUCKET}/sched/model/", "job-1", week1)
    published = storage.replace(f"gs://{BUCKET}/sched/model/", "job-2", week2)
    assert published.uri == f"gs://{BUCKET}/sched/model" and published.checks == ["crc32c+md5"]
    objects = {b.name[len("sched/model/"):]: b.download_as_bytes() for b in gcs_client.list_blobs(BUCKET, prefix="sched/model/")}
    manifest = assert_manifest_matches(objects, local_files(week2))  # the week-1 predictions are gone too
    assert manifest["run_id"] == "job-2" and "latest.json" not in objects


def test_replace_takes_the_old_manifest_down_before_uploading(tmp_path, monkeypatch):
    """A replace that fails midway leaves no manifest: a consumer never trusts a mix of two runs."""
    target = tmp_path / "model"
    storage.replace(str(target), "job-1", make_run(tmp_path / "w1", {"config.json": 300, "model.safetensors": MiB}))
    monkeypatch.setattr(storage.local.LocalStore, "verify", lambda self, name, entry: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(StorageError, match="failed while verifying"):
        storage.replace(str(target), "job-2", make_run(tmp_path / "w2", {"config.json": 300, "model.safetensors": MiB}, seed=1))
    assert not (target / "manifest.json").exists()


def test_local_path_publish_is_verified_and_refuses_to_overwrite(tmp_path):
    """The Vertex /gcs FUSE case: a plain folder, files renamed into place, manifest last."""
    folders = make_run(tmp_path / "run", {"config.json": 300, "model.safetensors": 2 * MiB, "out_stats.csv": 50})
    target = tmp_path / "gcs" / "bucket" / "models"
    published = storage.publish(str(target), "run-1", folders)
    assert published.uri == str(target / "run-1") and published.checks == ["sha256"]
    objects = {p.name: p.read_bytes() for p in (target / "run-1").iterdir()}
    assert_manifest_matches(objects, local_files(folders))
    assert json.loads((target / "latest.json").read_text())["run_id"] == "run-1"
    fetched = storage.fetch(str(target / "run-1"), tmp_path / "fetched")  # copied as a bucket download would be
    assert {p.name: p.read_bytes() for p in fetched.iterdir()} == objects
    with pytest.raises(StorageError, match="already exists"):
        storage.publish(str(target), "run-1", folders)
    (target / "run-1" / "config.json").write_bytes(b"tampered")
    with pytest.raises(StorageError, match="config.json is 8 bytes but manifest.json says 300 bytes"):
        storage.fetch(str(target / "run-1"), tmp_path / "again")


def test_name_collisions_between_the_folders_are_refused(tmp_path):
    folders = make_run(tmp_path, {"config.json": 10, "out_x.csv": 10})
    (folders[1] / "config.json").write_bytes(b"other")
    with pytest.raises(StorageError, match="collides"):
        storage.publish(str(tmp_path / "pub"), "run-1", folders)
    assert not (tmp_path / "pub").exists()


@pytest.mark.parametrize("uri", ["ftp://host/x", "s3:/bucket/x", "s3://", "gs://Bad_Bucket/x", "s3://bucket/a/../b", "http://x"])
def test_bad_output_uri_is_a_settings_error_before_training(uri):
    with pytest.raises(SettingsError, match="hyperparameter output_uri"):
        hyperparameters.resolve([("cli", {"output_uri": uri})])


def test_publish_settings_parse_and_the_kms_id_is_not_masked():
    resolved = hyperparameters.resolve([("cli", {"output_uri": "s3://bucket/prefix", "s3_sse_kms_id": "alias/seqcls",
                                                 "s3_expected_bucket_owner": "123456789012", "publish_latest": "False"})])
    assert resolved.settings.publish_latest is False
    assert resolved.snapshot()["s3_sse_kms_id"]["value"] == "alias/seqcls"
    with pytest.raises(SettingsError, match="12-digit"):
        hyperparameters.resolve([("cli", {"s3_expected_bucket_owner": "me"})])
