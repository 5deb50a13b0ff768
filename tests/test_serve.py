"""`seqcls serve` without the image: FastAPI's own TestClient on the app, and the real server (`seqcls serve`
in a child process, uvicorn on a socket) for readiness, limits and failures.

Payload shapes are Vertex's (https://cloud.google.com/vertex-ai/docs/predictions/custom-container-requirements,
"Request and response requirements": `{"instances": [...], "parameters": {...}}` -> `{"predictions": [...]}`), taken
on SageMaker's /invocations too. Every answer is compared with what `seqcls predict` writes for the same rows.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jobtools import clean_env
from seqcls import predict, runtime
from seqcls.serving import serve

SAGEMAKER = runtime.Serving(8080, ("/ping",), ("/invocations",), "unused", "sagemaker")
VERTEX_ENV = {"AIP_HTTP_PORT": "7080", "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
              "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict", "AIP_STORAGE_URI": "gs://bucket/model"}


def client_for(loaded, serving: runtime.Serving = SAGEMAKER, **kwargs):
    from fastapi.testclient import TestClient

    state = serve.State(loaded=loaded)
    return TestClient(serve.create_app(serving, state, **kwargs))


@pytest.fixture(scope="module")
def loaded(served_models) -> dict[str, predict.Loaded]:
    return {name: predict.load(str(model.folder), {}) for name, model in served_models.items()}


def post(client, body, route: str = "/invocations", content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(route, content=data, headers={"Content-Type": content_type})


@pytest.mark.parametrize("name", ["binary", "multi_label", "regression"])
def test_invocations_answer_as_seqcls_predict_does(name, served_models, loaded) -> None:
    model = served_models[name]
    response = post(client_for(loaded[name]), {"instances": model.texts})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": model.expected}


def test_the_binary_model_keeps_its_tuned_threshold(served_models, loaded) -> None:
    """decision_threshold=auto gave a threshold other than 0.5; the endpoint labels by it, not by the argmax."""
    config = json.loads((served_models["binary"].folder / "config.json").read_text())
    threshold = config["decision_threshold"]
    assert threshold is not None and threshold != 0.5
    predictions = post(client_for(loaded["binary"]), {"instances": served_models["binary"].texts}).json()["predictions"]
    for p in predictions:
        assert p["label"] == ("1" if p["scores"]["1"] >= threshold else "0")


def test_multi_label_answers_use_each_labels_threshold(served_models, loaded) -> None:
    config = json.loads((served_models["multi_label"].folder / "config.json").read_text())
    cuts = dict(zip([config["id2label"][str(i)] for i in range(len(config["id2label"]))], config["label_thresholds"]))
    predictions = post(client_for(loaded["multi_label"]), {"instances": served_models["multi_label"].texts}).json()["predictions"]
    for p in predictions:
        assert p["labels"] == [label for label, score in p["scores"].items() if score >= cuts[label] - 1e-6]


def test_vertex_routes_and_model_come_from_its_environment(served_models, loaded) -> None:
    where = runtime.serving(None, None, VERTEX_ENV)
    assert where == runtime.Serving(7080, ("/ping", VERTEX_ENV["AIP_HEALTH_ROUTE"]),
                                    ("/invocations", VERTEX_ENV["AIP_PREDICT_ROUTE"]), "gs://bucket/model", "vertex")
    client = client_for(loaded["regression"], where)
    assert client.get(VERTEX_ENV["AIP_HEALTH_ROUTE"]).json() == {"status": "ready"}
    response = post(client, {"instances": served_models["regression"].texts, "parameters": {}}, VERTEX_ENV["AIP_PREDICT_ROUTE"])
    assert response.json() == {"predictions": served_models["regression"].expected}


@pytest.mark.parametrize("env, port, model", [
    ({}, 8080, "/opt/ml/model"),
    ({"SAGEMAKER_BIND_TO_PORT": "9090"}, 9090, "/opt/ml/model"),
    ({"SEQCLS_OPT_ML": "/tmp/ml", "AIP_HTTP_PORT": "7070", "SAGEMAKER_BIND_TO_PORT": "9090"}, 7070, "/tmp/ml/model"),
])
def test_sagemaker_defaults_and_port_variables(env, port, model) -> None:
    where = runtime.serving(None, None, env)
    assert (where.port, where.model_uri, where.health_routes, where.predict_routes) == (port, model, ("/ping",), ("/invocations",))
    assert runtime.serving("s3://b/run", 5000, env).model_uri == "s3://b/run"


@pytest.mark.parametrize("env, message", [
    ({"AIP_HTTP_PORT": "eighty"}, "is not a number"),
    ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "out of range"),
    ({"AIP_PREDICT_ROUTE": "predict"}, "must be a path starting with /"),
])
def test_bad_serving_variables_are_clear_errors(env, message) -> None:
    from seqcls.errors import SettingsError

    with pytest.raises(SettingsError, match=message):
        runtime.serving(None, None, env)


@pytest.mark.parametrize("body, content_type, status, reason", [
    (b"{not json", "application/json", 400, "body is not JSON"),
    ({"instances": []}, "application/json", 400, "instances is empty"),
    ({"inputs": 5}, "application/json", 400, 'body must be a JSON object {"instances": [...]} or {"inputs": [...]}'),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "body is not JSON: RecursionError"),
    ([1, 2], "application/json", 400, 'body must be a JSON object'),
    ({"instances": ["fine", 3]}, "application/json", 400, "instances[1] must be a string"),
    ({"instances": ["fine", " "]}, "application/json", 400, "instances[1].text must be a non-empty string"),
    ({"instances": [{"txt": "a"}]}, "application/json", 400, "instances[0] must be a string, an object with"),
    ({"instances": [["a", "b", "c"]]}, "application/json", 400, "or an array [text] or [text, text_pair]"),
    ({"instances": [{"text": "a", "text_pair": "b"}]}, "application/json", 400, "trained on single texts"),
    ({"instances": ["a"], "parameters": {"top_k": 2}}, "application/json", 400, "this model takes no parameters"),
    ({"instances": ["a"] * 1025}, "application/json", 413, "1025 instances in one request; at most 1024"),
    (b"<xml/>", "application/xml", 415, "content type 'application/xml' is not supported"),
    (b"\xff\xfe\n", "application/jsonlines", 400, "body is not UTF-8"),
    (b"\n\n", "text/csv", 400, "body holds no lines"),
])
def test_bad_requests_get_a_4xx_with_the_reason_and_the_server_keeps_serving(body, content_type, status, reason,
                                                                             served_models, loaded) -> None:
    client = client_for(loaded["binary"])
    response = post(client, body, content_type=content_type)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"] and "Traceback" not in response.text
    # The same 32 rows as predict's batch: in bf16 a row's score moves in the 4th decimal with its batch's padding.
    assert post(client, {"instances": served_models["binary"].texts}).json() == {
        "predictions": served_models["binary"].expected}


@pytest.mark.parametrize("body, content_type, accept, reasons", [
    (b'"fine"\n{"text": 3}\n{oops\n"also fine"\n', "application/jsonlines", "application/jsonlines",
     {1: "line 2.text must be a non-empty string", 2: "line 3 is not JSON"}),
    (b'fine\na,b,c\n"also fine"\n', "text/csv", "text/csv", {1: "line 2 has 3 fields: a record is the text, or text,text_pair"}),
    (b'{"text": "fine", "text_pair": "no"}\n"fine"\n', "application/jsonlines", "",
     {0: "this model was trained on single texts: text_pair is not accepted"}),
])
def test_a_bad_record_gets_an_error_line_in_its_place(body, content_type, accept, reasons, loaded) -> None:
    """Batch Transform posts many records per request: one bad record must not fail the mini-batch, and with it the
    whole transform job. Its line says why; every other record is answered in order, as alone."""
    client = client_for(loaded["binary"])
    response = client.post("/invocations", content=body, headers={"Content-Type": content_type, "Accept": accept})
    assert response.status_code == 200, response.text
    lines = response.text.split("\n")
    expected_good = post(client, {"instances": ["fine", "also fine"][:len(lines) - len(reasons)]}).json()["predictions"]
    good = []
    for number, line in enumerate(lines):
        if number in reasons:
            shown = line if content_type == "text/csv" else json.loads(line)["error"]
            assert reasons[number] in shown and (content_type != "text/csv" or shown.startswith('"ERROR: line'))
        else:
            good.append(line)
    if content_type != "text/csv":
        assert [json.loads(line) for line in good] == expected_good
    else:
        assert [row.split(",")[0] for row in good] == [p["label"] for p in expected_good]


def test_the_instance_shapes_vertex_batch_prediction_sends_are_answered_alike(served_models, loaded) -> None:
    """BatchPredictionJob.InstanceConfig: JSONL lines arrive as they are (objects may carry other fields, such as an
    id or a label: ignored), CSV and BigQuery rows as arrays in column order ([text], or [text, text_pair]);
    keyField's column is taken out by Vertex before the instance is sent."""
    model = served_models["binary"]
    client = client_for(loaded["binary"])
    shapes = [{"text": text, "id": n, "label": "1"} for n, text in enumerate(model.texts)]
    assert post(client, {"instances": shapes}).json() == {"predictions": model.expected}
    assert post(client, {"instances": [[text] for text in model.texts]}).json() == {"predictions": model.expected}


def test_hugging_face_inputs_are_answered_like_instances(served_models, loaded) -> None:
    """AWS's Hugging Face containers and text-embeddings-inference take {"inputs": [...]} (or one string)."""
    model = served_models["binary"]
    client = client_for(loaded["binary"])
    assert post(client, {"inputs": model.texts}).json() == {"predictions": model.expected}
    assert post(client, {"inputs": model.texts[0]}).json() == {"predictions": model.expected[:1]}


def test_json_lines_get_one_answer_per_line_as_batch_transform_joins_them(served_models, loaded) -> None:
    """SageMaker Batch Transform, SplitType=Line with BatchStrategy=MultiRecord, posts several input lines in one
    request and, with AssembleWith=Line, writes the answers line by line: one record per line, in order."""
    model = served_models["binary"]
    client = client_for(loaded["binary"])
    body = "".join(json.dumps(text) + "\n" for text in model.texts).encode()
    response = post(client, body, content_type="application/jsonlines")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/jsonlines")
    assert [json.loads(line) for line in response.text.splitlines()] == model.expected
    many = "".join(json.dumps({"text": f"sentence {i}."}) + "\n" for i in range(1500)).encode()
    assert len(post(client, many, content_type="application/jsonlines").text.splitlines()) == 1500  # no 1,024 cap


def test_csv_records_are_answered_per_line_in_the_accept_type(served_models, loaded) -> None:
    """Batch Transform from a CSV file (ContentType=text/csv, SplitType=Line): no header, one record per line; the
    answer is JSON lines by default, or CSV lines with Accept: text/csv (predict's `predicted` and `prob_<label>`
    columns, no header)."""
    import csv
    import io

    model = served_models["binary"]
    client = client_for(loaded["binary"])
    body = io.StringIO()
    csv.writer(body, lineterminator="\n").writerows([text] for text in model.texts)
    as_lines = post(client, body.getvalue().encode(), content_type="text/csv")
    assert [json.loads(line) for line in as_lines.text.splitlines()] == model.expected
    as_csv = client.post("/invocations", content=body.getvalue().encode(),
                         headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    labels = list(model.expected[0]["scores"])
    assert [row[0] for row in rows] == [record["label"] for record in model.expected]
    for row, record in zip(rows, model.expected):
        assert [float(value) for value in row[1:]] == pytest.approx([record["scores"][label] for label in labels], abs=1e-6)
    refused = client.post("/invocations", content=b"a\n", headers={"Content-Type": "text/csv", "Accept": "image/png"})
    assert refused.status_code == 406 and "accept type 'image/png' is not supported" in refused.json()["error"]


def test_batch_transforms_payload_limit_is_the_body_limit() -> None:
    assert runtime.serving(None, None, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}).max_body_bytes == 20 * 2**20
    assert runtime.serving(None, None, {}).max_body_bytes is None


def test_batch_transform_reads_its_execution_parameters(loaded) -> None:
    """Batch Transform asks GET /execution-parameters when MaxConcurrentTransforms is left unset (CreateTransformJob)."""
    response = client_for(loaded["binary"]).get("/execution-parameters")
    assert response.status_code == 200
    assert response.json() == {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


def test_a_body_over_the_limit_is_refused(loaded) -> None:
    client = client_for(loaded["binary"], max_body_bytes=1000)
    response = post(client, {"instances": ["a sentence. " * 100]})
    assert response.status_code == 413 and "over the 1000-byte limit" in response.json()["error"]


def test_a_text_over_max_length_is_truncated_as_training_did(loaded) -> None:
    """Rows longer than max_length are cut to it: anything after the first max_length tokens changes nothing."""
    model = loaded["binary"]
    long_text = " ".join(f"word{i}" for i in range(4 * model.max_length))
    predictions = post(client_for(model), {"instances": [long_text, long_text + " and then a different ending"]}).json()
    first, second = predictions["predictions"]
    assert first == second


def test_health_is_not_ready_until_the_model_is_loaded(loaded) -> None:
    from fastapi.testclient import TestClient

    state = serve.State()
    client = TestClient(serve.create_app(SAGEMAKER, state))
    assert client.get("/ping").status_code == 503 and client.get("/ping").json() == {"status": "loading"}
    assert post(client, {"instances": ["a"]}).status_code == 503
    state.loaded = loaded["binary"]
    assert client.get("/ping").status_code == 200


# --- The real server: `seqcls serve` on a socket --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start_server(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seqcls", "serve", *args], env=clean_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, server: subprocess.Popen, limit_s: float = 120) -> list[int]:
    """The /ping statuses seen until the first 200."""
    seen, deadline = [], time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1][-3000:]
        try:
            status, _ = http(f"{url}/ping", timeout=5)
            seen.append(status)
            if status == 200:
                return seen
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not ready after {limit_s}s: {seen[-5:]}")


@pytest.mark.slow
def test_the_real_server_refuses_bad_bodies_and_keeps_serving(served_models) -> None:
    model = served_models["multi_label"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # SAGEMAKER_BIND_TO_PORT moves the port as SageMaker's inference pipelines do; SEQCLS_OPT_ML points /opt/ml/model at the run.
    server = start_server([], {"SAGEMAKER_BIND_TO_PORT": str(port), "SEQCLS_OPT_ML": str(model.folder.parent)})
    try:
        wait_ready(url, server)
        status, answer = http(f"{url}/invocations", b"x" * (10 * 1024 * 1024))
        assert status == 413 and "limit" in answer["error"]
        assert http(f"{url}/invocations", b"[")[0] == 400
        assert http(f"{url}/invocations", json.dumps({"instances": []}).encode())[0] == 400
        status, answer = http(f"{url}/invocations", json.dumps({"instances": model.texts}).encode())
        assert status == 200 and answer == {"predictions": model.expected}
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (uvicorn/server.py `capture_signals`), so the
    # process ends as a SIGTERM'd one: what SageMaker and Vertex expect of a container they stop.
    assert server.returncode == -signal.SIGTERM, err[-3000:]
    events = [json.loads(line) for line in out.splitlines()]  # stdout: JSON lines only, uvicorn's included
    names = [e["event"] for e in events]
    assert names[:1] == ["serve_start"] and "serve_ready" in names and names.count("request_refused") == 3, names
    ready = next(e for e in events if e["event"] == "serve_ready")
    assert ready["problem_type"] == "multi_label" and ready["routes"] == ["/ping", "/invocations"]


@pytest.mark.slow
def test_concurrent_requests_share_passes_and_each_gets_its_own_answers(served_models) -> None:
    """16 clients at once against the real server: every answer is what the same request gets alone, and the
    requests shared passes of the model (serve_stop counts them). fp32, so a row's scores do not move with
    the padding of the pass it lands in."""
    model = served_models["binary"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(["--model", str(model.folder), "--port", str(port), "--precision", "fp32"])
    bodies = [json.dumps({"instances": model.texts[2 * n:2 * n + 2]}).encode() for n in range(16)]
    try:
        wait_ready(url, server)
        alone = [http(f"{url}/invocations", body) for body in bodies]
        together: list = [None] * len(bodies)
        start = threading.Barrier(len(bodies))

        def client(n: int) -> None:
            start.wait()
            together[n] = http(f"{url}/invocations", bodies[n])

        threads = [threading.Thread(target=client, args=(n,)) for n in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    assert all(status == 200 for status, _ in alone + together), err[-2000:]
    for (_, one), (_, shared) in zip(alone, together):
        for a, b in zip(one["predictions"], shared["predictions"]):
            assert a["label"] == b["label"] and a["scores"] == pytest.approx(b["scores"], abs=2e-6)
    [stop] = [json.loads(line) for line in out.splitlines() if '"serve_stop"' in line]
    assert stop["requests"] == 32 and stop["passes"] < 32, stop


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_server_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(["--model", str(tmp_path / "missing"), "--port", str(port)])
    out, err = server.communicate(timeout=120)
    assert server.returncode == 2, err[-3000:]
    failed = [json.loads(line) for line in out.splitlines() if '"job_failed"' in line]
    assert len(failed) == 1 and "missing" in failed[0]["message"], out
    assert "Traceback" not in err
