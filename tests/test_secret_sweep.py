"""No secret in any output (issue 30): credentials in URLs are masked everywhere we write, and JSON is strict.

The probe that failed: with `AWS_ENDPOINT_URL_S3=http://user:password@host:port`, botocore's "Could not
connect to the endpoint URL" names the URL, password included, and that message reached the `job_failed`
line, stderr, the failure file and `/ping`. Each test plants a secret and sweeps every output for it, and
checks the masked form is there, so the sweep cannot pass merely because the URL never appeared.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest

from jobtools import build_tiny_model, good_csv, minilm_folder, run_subprocess, write_tree

SECRET = "planted-S3cret-7f3a"


def strict(text: str) -> object:
    """json.loads that refuses NaN and Infinity, as JavaScript's, Go's and jq's parsers do."""
    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe closes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", minilm_folder())


@pytest.mark.slow  # a whole job in a child process
def test_an_endpoint_password_is_masked_in_the_failure_line_stderr_and_failure_file(tmp_path: Path, tiny: Path) -> None:
    endpoint = f"http://seqcls:{SECRET}@127.0.0.1:{closed_port()}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv()})
    outcome = run_subprocess(root, ["--model", str(tiny), "--output_uri", "s3://models-bucket/runs"], env)
    assert outcome.code != 0
    failure = (root / "output" / "failure").read_text()
    for where, text in {"stdout": outcome.stdout, "stderr": outcome.stderr, "failure file": failure}.items():
        assert SECRET not in text, f"the endpoint password leaked into {where}"
    assert "***@127.0.0.1" in failure, f"the failure no longer names the endpoint, so this sweep proves nothing: {failure}"
    for line in outcome.stdout.splitlines():
        strict(line)


@pytest.mark.slow  # a whole job in a child process
def test_a_successful_gated_run_writes_no_planted_secret_and_only_strict_json(tmp_path: Path, tiny: Path) -> None:
    env = {"AWS_ENDPOINT_URL_S3": f"http://seqcls:{SECRET}@127.0.0.1:9", "AWS_SECRET_ACCESS_KEY": SECRET,
           "HF_TOKEN": SECRET}
    published = tmp_path / "published"
    root = write_tree(tmp_path / "opt_ml", {"data/train/train.csv": good_csv(), "data/test/test.csv": good_csv(8)})
    outcome = run_subprocess(root, ["--model", str(tiny), "--epochs", "1", "--output_uri", str(published),
                                    "--promote_if", "test_mcc"], env)
    assert outcome.code == 0, outcome.stderr[-3000:]
    run = published / json.loads((published / "latest.json").read_text())["run_id"]
    swept = {"stdout": outcome.stdout, "stderr": outcome.stderr}
    for name in ("run_manifest.json", "README.md", "metrics.json"):
        swept[name] = (run / name).read_text()
    swept["promotion.json"] = (root / "output" / "data" / "promotion.json").read_text()
    swept["latest.json"] = (published / "latest.json").read_text()
    for where, text in swept.items():
        assert SECRET not in text, f"planted secret in {where}"
    for name in ("run_manifest.json", "metrics.json", "promotion.json", "latest.json"):
        strict(swept[name])
    for line in outcome.stdout.splitlines():
        strict(line)


def test_a_presigned_output_uri_is_refused_without_echoing_its_token() -> None:
    from seqcls import settings
    from seqcls.errors import SettingsError

    with pytest.raises(SettingsError) as refused:
        settings.resolve([("cli", {"output_uri": f"s3://models-bucket/runs?X-Amz-Security-Token={SECRET}"})])
    assert "query string" in str(refused.value) and "X-Amz-Security-Token=***" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_health_body_masks_the_load_error() -> None:
    from fastapi.testclient import TestClient

    from seqcls import runtime
    from seqcls.serving import serve

    state = serve.State()
    state.error = RuntimeError(f'Could not connect to the endpoint URL: "http://u:{SECRET}@10.0.0.1:9000/b/run/config.json"')
    body = TestClient(serve.create_app(runtime.Serving(8080, ("/ping",), ("/invocations",), "unused", "sagemaker"),
                                       state)).get("/ping").json()
    assert SECRET not in json.dumps(body) and "http://***@10.0.0.1:9000" in body["reason"]


def test_log_lines_mask_url_credentials_and_write_non_finite_numbers_as_null(capsys: pytest.CaptureFixture) -> None:
    from seqcls import logs

    logs.setup()
    logs.event("probe", f"reaching https://token:{SECRET}@example.com", loss=math.nan, best=math.inf,
               uri=f"gs://b/p?X-Goog-Signature={SECRET}&x=1", nested={"values": [1.0, -math.inf]})
    line = strict(capsys.readouterr().out.strip().splitlines()[-1])
    assert SECRET not in json.dumps(line)
    assert (line["loss"], line["best"], line["nested"]) == (None, None, {"values": [1.0, None]})
    assert line["uri"] == "gs://b/p?X-Goog-Signature=***&x=1"


def test_json_artifacts_write_nan_as_null(tmp_path: Path) -> None:
    from seqcls import atomic

    atomic.write_json(tmp_path / "metrics.json", {"test": {"mcc": math.nan, "loss": 0.5}})
    assert strict((tmp_path / "metrics.json").read_text()) == {"test": {"mcc": None, "loss": 0.5}}
