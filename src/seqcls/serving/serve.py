"""Serve: `seqcls serve`, the image as a SageMaker or Vertex AI endpoint (or on a workstation).

FastAPI routes on uvicorn (docs/serving.md says why these two). Every request goes through predict.py's one
loaded model and one batch function, so an endpoint answers exactly as `seqcls predict` does: the training
run's max_length, decision_threshold, per-label thresholds and label names. The model loads in a thread
after the server starts listening, so the platforms' probes see "not ready" (503) rather than a refused
connection; a model that cannot load stops the server with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import evaluate, logs, outbound

from . import batching
from ..data import PAIR, TEXT
from ..errors import SeqclsError
from ..problem_types import MULTI_LABEL, REGRESSION
from ..runtime import Serving

# Vertex refuses online requests over 1.5 MB and SageMaker real-time invocations over 6 MB before they reach the
# container; this server refuses what neither platform would deliver, so a local client learns the same limit.
MAX_BODY_BYTES = 6 * 1024 * 1024
MAX_INSTANCES = 1024
DRAIN_FACTOR = 4
JSON_TYPES = ("application/json", "")
# SageMaker Batch Transform with SplitType=Line sends several input lines in one request (BatchStrategy=MultiRecord)
# and joins the answers by line (AssembleWith=Line): one JSON record per line in, one per line out.
JSON_LINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
CSV_TYPE = "text/csv"  # one record per line, no header: the text, or text,text_pair
# Answered on GET /execution-parameters, which Batch Transform reads when MaxConcurrentTransforms is left unset:
# one request at a time (the model runs one pass at a time), as many lines as fit the body limit (MaxPayloadInMB).
EXECUTION_PARAMETERS = {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD"}


class BadRequest(Exception):
    """A request the server refuses, with the HTTP status and the one-line reason the client sees."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class State:
    """What the routes share: the loaded model once the loader thread has it, or why it failed, and the batcher
    that merges concurrent requests into shared passes through predict's batch function."""

    loaded: Any = None
    error: BaseException | None = None  # why the model could not be loaded
    max_batch_rows: int = batching.MAX_BATCH_ROWS
    max_queue_rows: int = batching.MAX_QUEUE_ROWS
    batcher: batching.Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards creating the batcher

    def queue(self) -> batching.Batcher:
        from .. import predict

        with self.lock:
            if self.batcher is None:
                self.batcher = batching.Batcher(functools.partial(predict.predict_frame, self.loaded),
                                                self.max_batch_rows, self.max_queue_rows,
                                                functools.partial(predict.casting_once, self.loaded))
            return self.batcher


def _json(text: bytes | str, what: str) -> object:
    """One JSON value; a body that is not JSON, or nested too deeply to parse, is the client's error (400)."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BadRequest(400, f"{what} is not JSON: {type(err).__name__ if isinstance(err, RecursionError) else err}") from None


def parse_instances(body: bytes, pairs: bool | None, max_instances: int = MAX_INSTANCES) -> pd.DataFrame:
    """`{"instances": [...], "parameters": {}}` (Vertex's shape, also taken on /invocations), or Hugging Face's
    `{"inputs": [...]}` / `{"inputs": "..."}` (AWS's Hugging Face containers, text-embeddings-inference), into the
    frame predict.predict_frame reads; each instance is a string or {"text": ..., "text_pair": ...}."""
    payload = _json(body, "body")
    key = "inputs" if isinstance(payload, dict) and "inputs" in payload and "instances" not in payload else "instances"
    if key == "inputs" and isinstance(payload["inputs"], (str, dict)):
        payload = {**payload, "inputs": [payload["inputs"]]}
    if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
        raise BadRequest(400, 'body must be a JSON object {"instances": [...]} or {"inputs": [...]} (each a string or '
                              '{"text": ..., "text_pair": ...})')
    unknown = sorted(set(payload) - {key, "parameters"})
    if unknown or payload.get("parameters") not in (None, {}):
        raise BadRequest(400, f"unsupported fields {unknown or ['parameters']}: this model takes no parameters")
    instances = payload[key]
    if not instances:
        raise BadRequest(400, f"{key} is empty: send at least one text")
    if len(instances) > max_instances:
        raise BadRequest(413, f"{len(instances)} {key} in one request; at most {max_instances}")
    return _frame([_instance(f"{key}[{i}]", item) for i, item in enumerate(instances)], pairs)


@dataclass(frozen=True)
class Records:
    """A line-format body (Batch Transform's MultiRecord): the rows that can be scored, and per input record either
    its row's index or why it was refused: a bad record gets an error line in its place instead of failing the
    mini-batch, and with it the whole transform job."""

    frame: pd.DataFrame
    order: list[int | str]

    @property
    def refused(self) -> list[str]:
        return [item for item in self.order if isinstance(item, str)]


def _records(items: list[dict[str, str] | str], pairs: bool | None) -> Records:
    """Rows in one shape: the model's (text pairs or single texts), else that of the first good record."""
    shape = pairs if pairs is not None else next((PAIR in item for item in items if isinstance(item, dict)), False)
    rows: list[dict[str, str]] = []
    order: list[int | str] = []
    for item in items:
        if isinstance(item, dict) and (PAIR in item) != shape:
            item = "this model was trained on text pairs: give text and text_pair" if shape else (
                "this model was trained on single texts: text_pair is not accepted")
        order.append(item if isinstance(item, str) else len(rows))
        rows += [] if isinstance(item, str) else [item]
    return Records(pd.DataFrame(rows, columns=[TEXT, PAIR] if shape else [TEXT]), order)


def _record(where: str, read: Callable[[], object]) -> dict[str, str] | str:
    try:
        return _instance(where, read())
    except BadRequest as err:
        return err.reason


def parse_lines(body: bytes, pairs: bool | None) -> Records:
    """JSON lines (Batch Transform's MultiRecord): one instance per non-blank line, a string or {"text": ...}; as
    many as the body limit allows. A line that is not one gets an error line in its place."""
    try:
        lines = [line for line in body.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"body is not UTF-8: {err}") from None
    if not lines:
        raise BadRequest(400, "body holds no lines: send one JSON record per line")
    return _records([_record(f"line {n}", functools.partial(_json, line, f"line {n}")) for n, line in enumerate(lines, 1)],
                    pairs)


def _csv_fields(number: int, row: list[str]) -> list[str]:
    if len(row) > 2:
        raise BadRequest(400, f"line {number} has {len(row)} fields: a record is the text, or text,text_pair")
    return row


def parse_csv(body: bytes, pairs: bool | None) -> Records:
    """CSV records (Batch Transform from a CSV file, SplitType=Line): no header, one record per line, the text or
    text,text_pair, quoted as CSV quotes. A record that is neither gets an error line in its place."""
    try:
        records = [row for row in csv.reader(io.StringIO(body.decode("utf-8"))) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise BadRequest(400, f"body is not UTF-8 CSV: {err}") from None
    if not records:
        raise BadRequest(400, "body holds no lines: send one CSV record per line")
    return _records([_record(f"line {n}", functools.partial(_csv_fields, n, row)) for n, row in enumerate(records, 1)],
                    pairs)


def csv_lines(predictions, label_map, delimiter: str) -> str:
    """One CSV line per row, no header and no newline after the last (Batch Transform's AssembleWith=Line adds one
    after each response): the `predicted` and `prob_<label>` columns `seqcls predict` writes, in that order."""
    from ..saving.artifacts import prediction_columns

    frame = pd.DataFrame(prediction_columns(predictions, label_map, delimiter))
    return frame.to_csv(index=False, header=False, lineterminator="\n").removesuffix("\n")


def _frame(rows: list[dict[str, str]], pairs: bool | None) -> pd.DataFrame:
    with_pair = {PAIR in row for row in rows}
    if len(with_pair) > 1:
        raise BadRequest(400, "some instances have text_pair and some do not")
    if pairs is not None and with_pair != {pairs}:
        raise BadRequest(400, "this model was trained on text pairs: give every instance text and text_pair" if pairs
                         else "this model was trained on single texts: text_pair is not accepted")
    return pd.DataFrame(rows, columns=[TEXT, PAIR] if with_pair == {True} else [TEXT])


def _instance(where: str, item: object) -> dict[str, str]:
    """An instance as Vertex batch prediction may send it (docs/serving.md): a string; an object, whose `text`
    and `text_pair` are read and other fields (ids, labels) ignored; an array `[text]` or `[text, text_pair]`
    (a CSV or BigQuery row, in column order)."""
    if isinstance(item, str):
        row = {TEXT: item}
    elif isinstance(item, list) and 1 <= len(item) <= 2:
        row = dict(zip((TEXT, PAIR), item))
    elif isinstance(item, dict) and TEXT in item:
        row = {key: item[key] for key in (TEXT, PAIR) if key in item}
    else:
        raise BadRequest(400, f'{where} must be a string, an object with "text" (and "text_pair"), or an array '
                              "[text] or [text, text_pair] (from CSV or BigQuery: set instanceConfig.includedFields "
                              "to those columns)")
    for key, value in row.items():
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(400, f"{where}.{key} must be a non-empty string")
    return row


def prediction_records(predictions, label_map) -> list[dict[str, object]]:
    """One JSON object per row from the same Predictions `seqcls predict` writes as columns:
    {"label", "scores"} (single_label), {"labels", "scores"} (multi_label), {"score"} (regression)."""
    names = label_map.names(predictions.predicted)
    if label_map.problem_type == REGRESSION:
        return [{"score": name} for name in names]
    key = "labels" if label_map.problem_type == MULTI_LABEL else "label"
    # predict's own prob_<label> columns (float32, rounded to 6 places), each as the decimal its CSV shows:
    # str() of a float32 is its shortest repr, where float() would add float32's binary tail (0.41016599...).
    columns = evaluate.probability_columns(predictions, label_map.labels)
    scores = [{label: float(str(columns[f"prob_{label}"][i])) for label in label_map.labels} for i in range(len(names))]
    return [{key: name, "scores": row} for name, row in zip(names, scores)]


PARSERS = {**dict.fromkeys(JSON_TYPES, parse_instances), **dict.fromkeys(JSON_LINES_TYPES, parse_lines), CSV_TYPE: parse_csv}


async def answer(state: State, body: bytes, content_type: str, accept: str) -> Response:
    """The predict route's work: parse (in a worker thread), queue the rows for the batcher's next shared pass,
    then answer in the type asked for: JSON for a JSON body, else one line per record (JSON lines, or CSV when
    `Accept: text/csv`), a refused record's line saying why."""
    loaded = state.loaded
    parsed = await run_in_threadpool(PARSERS[content_type], body, loaded.pairs)
    frame = parsed.frame if isinstance(parsed, Records) else parsed
    predictions = await asyncio.wrap_future(state.queue().submit(frame)) if len(frame) else None
    if isinstance(parsed, Records) or accept in (CSV_TYPE, *JSON_LINES_TYPES):
        records = parsed if isinstance(parsed, Records) else Records(frame, list(range(len(frame))))
        return await run_in_threadpool(_lines, records, predictions, loaded, accept == CSV_TYPE)
    return JSONResponse({"predictions": await run_in_threadpool(prediction_records, predictions, loaded.label_map)})


def _lines(records: Records, predictions, loaded, as_csv: bool) -> Response:
    """One line per input record, in order; no newline after the last (Batch Transform's AssembleWith=Line adds
    one after each response). A refused record's line: {"error": reason}, or one CSV field "ERROR: reason"."""
    if as_csv:
        scored = csv_lines(predictions, loaded.label_map, loaded.reading.label_delimiter).split("\n") if predictions else []
        refusal = _csv_error
    else:
        scored = [outbound.dumps(r) for r in prediction_records(predictions, loaded.label_map)] if predictions else []
        refusal = _json_error
    if records.refused:
        logs.warning("records_refused", f"{len(records.refused)} of {len(records.order)} records refused, answered "
                                        f"with error lines: {records.refused[0]}", status=200,
                     refused=len(records.refused), records=len(records.order))
    lines = [scored[item] if isinstance(item, int) else refusal(item) for item in records.order]
    return Response("\n".join(lines), media_type=CSV_TYPE if as_csv else "application/jsonlines")


def _json_error(reason: str) -> str:
    return outbound.dumps({"error": reason})


def _csv_error(reason: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([f"ERROR: {reason}"])
    return buffer.getvalue()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it passes `limit`. An over-long body is still read (and dropped) up to DRAIN_FACTOR
    times the limit: a server that answers and closes while the client is still sending resets the connection,
    and the client never sees the reason."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        declared = request.headers.get("content-length", "")
        total = int(declared) if declared.isdigit() else size
        raise BadRequest(413, f"body of {total} bytes is over the {limit}-byte limit")
    return b"".join(chunks)


def refused(err: BadRequest) -> JSONResponse:
    logs.warning("request_refused", err.reason, status=err.status)
    return JSONResponse({"error": err.reason}, status_code=err.status)


def create_app(serving: Serving, state: State, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The routes: SageMaker's /ping and /invocations, and Vertex's AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE."""
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield  # on shutdown (SIGTERM), before uvicorn re-raises the signal: how the requests shared passes
        requests, passes = (state.batcher.requests, state.batcher.passes) if state.batcher else (0, 0)
        logs.event("serve_stop", f"answered {requests} requests in {passes} passes of the model",
                   requests=requests, passes=passes)

    app = FastAPI(title="seqcls", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    async def health() -> JSONResponse:
        if state.loaded is None:
            failed = state.error is not None
            return JSONResponse({"status": "failed" if failed else "loading",
                                 **({"reason": " ".join(outbound.mask(str(state.error)).split())[:1024]} if failed else {})},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    async def invoke(request: Request) -> JSONResponse:
        if state.loaded is None:
            return JSONResponse({"error": "the model is not loaded yet"}, status_code=503)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        accept = request.headers.get("accept", "").split(";")[0].split(",")[0].strip().lower()
        try:
            if content_type not in PARSERS:
                raise BadRequest(415, f"content type {content_type!r} is not supported: send application/json, "
                                      "application/jsonlines or text/csv")
            if accept not in ("", "*/*", CSV_TYPE, *JSON_TYPES, *JSON_LINES_TYPES):
                raise BadRequest(406, f"accept type {accept!r} is not supported: application/json, "
                                      "application/jsonlines or text/csv")
            body = await read_body(request, max_body_bytes)
            return await answer(state, body, content_type, accept)
        except BadRequest as err:
            return refused(err)
        except batching.Busy as err:
            logs.warning("request_refused", str(err), status=503)
            return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": "1"})
        except SeqclsError as err:
            return refused(BadRequest(400, str(err)))

    async def execution_parameters() -> JSONResponse:
        return JSONResponse({**EXECUTION_PARAMETERS, "MaxPayloadInMB": max(1, max_body_bytes // 2**20)})

    for route in serving.health_routes:
        app.add_api_route(route, health, methods=["GET"])
    app.add_api_route("/execution-parameters", execution_parameters, methods=["GET"])
    for route in serving.predict_routes:
        app.add_api_route(route, invoke, methods=["POST"])

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:  # the traceback stays in the log
        logs.event("request_failed", f"internal error: {type(err).__name__}: {err}", level=logging.ERROR,
                   error_type=type(err).__name__)
        return JSONResponse({"error": f"internal error: {type(err).__name__}"}, status_code=500)

    return app


def load_in_background(serving: Serving, state: State, overrides: dict[str, str], server) -> threading.Thread:
    """Load the model while the server already answers probes; on failure tell the probes and stop the server."""
    from .. import predict

    def work() -> None:
        try:
            state.loaded = predict.load(serving.model_uri, overrides)
        except BaseException as err:  # noqa: BLE001 - run() re-raises it into the CLI's one handler
            state.error = err
            server.should_exit = True
            return
        loaded = state.loaded
        logs.event("serve_ready", f"serving {serving.model_uri} on port {serving.port}", model=serving.model_uri,
                   port=serving.port, routes=[*serving.health_routes, *serving.predict_routes],
                   problem_type=loaded.label_map.problem_type, labels=loaded.label_map.labels,
                   max_length=loaded.max_length, decision_threshold=loaded.threshold,
                   device=loaded.scorer.compute.device.type)

    thread = threading.Thread(target=work, name="seqcls-model-loader", daemon=True)
    thread.start()
    return thread


def run(serving: Serving, overrides: dict[str, str], max_body_bytes: int = MAX_BODY_BYTES,
        max_batch_rows: int = batching.MAX_BATCH_ROWS, max_queue_rows: int = batching.MAX_QUEUE_ROWS) -> int:
    """Listen on 0.0.0.0 (both platforms probe the container's address) until SIGTERM; 0 after a clean stop,
    the loader's error (the CLI turns it into job_failed and an exit code) when the model could not be loaded."""
    import uvicorn

    state = State(max_batch_rows=max_batch_rows, max_queue_rows=max_queue_rows)
    # log_config=None: uvicorn keeps its loggers off stdout's JSON lines; access_log off: one line per request
    # would drown the events (refusals and failures are logged as events).
    config = uvicorn.Config(create_app(serving, state, max_body_bytes), host="0.0.0.0", port=serving.port,
                            log_config=None, access_log=False, timeout_graceful_shutdown=20)
    server = uvicorn.Server(config)
    load_in_background(serving, state, overrides, server)
    logs.event("serve_start", f"listening on 0.0.0.0:{serving.port}, loading {serving.model_uri}",
               port=serving.port, model=serving.model_uri, platform=serving.platform)
    asyncio.run(server.serve())
    if state.error is not None:
        raise state.error
    return 0
