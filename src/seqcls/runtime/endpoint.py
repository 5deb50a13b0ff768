"""The serving contract: the port, routes and model location SageMaker and Vertex AI give an inference container,
Batch Transform's payload limit, and the container spec Vertex is handed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import SettingsError
from .platform import OPT_ML_DEFAULT, OPT_ML_OVERRIDE, env_hyperparameters

# Batch Transform tells the container its MaxPayloadInMB (and SAGEMAKER_BATCH=true) in the environment.
SM_MAX_PAYLOAD_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
# --- Serving: what SageMaker hosting and Vertex AI prediction tell a serving container -------------------------
# SageMaker runs `docker run IMAGE serve`, unpacks the model into /opt/ml/model and sends GET /ping and
# POST /invocations to port 8080 (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html);
# in an inference pipeline or multi-container endpoint it names another port in SAGEMAKER_BIND_TO_PORT
# (https://docs.aws.amazon.com/sagemaker/latest/dg/inference-pipeline-real-time.html). Vertex AI sets the port and
# both routes, and where it copied the model (https://cloud.google.com/vertex-ai/docs/predictions/custom-container-requirements,
# "Environment variables"); its own defaults are 8080 and routes under /v1/endpoints/...
SM_SERVING_ROUTES = ("/ping", "/invocations")
SM_BIND_TO_PORT = "SAGEMAKER_BIND_TO_PORT"
AIP_HTTP_PORT = "AIP_HTTP_PORT"
AIP_HEALTH_ROUTE = "AIP_HEALTH_ROUTE"
AIP_PREDICT_ROUTE = "AIP_PREDICT_ROUTE"
AIP_STORAGE_URI = "AIP_STORAGE_URI"
DEFAULT_SERVING_PORT = 8080
# The routes a Vertex model's container spec names (and Vertex then hands the server as AIP_PREDICT_ROUTE and
# AIP_HEALTH_ROUTE): one spec for every Vertex model we make (batch prediction, the Model Registry).
VERTEX_PREDICT_ROUTE, VERTEX_HEALTH_ROUTE = "/predict", "/health"


def vertex_container_spec(image: str) -> dict[str, Any]:
    """A Vertex ModelContainerSpec (proto field names) that runs this image's server: without `serve` it trains."""
    return {"image_uri": image, "args": ["serve"], "predict_route": VERTEX_PREDICT_ROUTE,
            "health_route": VERTEX_HEALTH_ROUTE, "ports": [{"container_port": DEFAULT_SERVING_PORT}]}


@dataclass(frozen=True)
class Serving:
    """Where the server listens, which routes it answers, and which model it loads."""

    port: int
    health_routes: tuple[str, ...]
    predict_routes: tuple[str, ...]
    model_uri: str
    platform: str  # "vertex" | "sagemaker" | "local"
    max_body_bytes: int | None = None  # Batch Transform's MaxPayloadInMB (SAGEMAKER_MAX_PAYLOAD_IN_MB), when it says
    settings: dict[str, str] = field(default_factory=dict)  # SEQCLS_<NAME> of SERVING_SETTINGS (an endpoint has no args)


# What an endpoint may set in its container environment as SEQCLS_<NAME> (the command line's --name wins).
SERVING_SETTINGS = ("device", "precision", "eval_batch_size", "inference_backend")


def _route(value: str, name: str) -> str:
    if not value.startswith("/"):
        raise SettingsError(f"{name}={value!r} must be a path starting with /")
    return value


def serving(model_arg: str | None, port_arg: int | None, env: Mapping[str, str] | None = None) -> Serving:
    """SageMaker's routes always; Vertex's too when it names them. The model: --model, else AIP_STORAGE_URI
    (Vertex), else <root>/model (SageMaker's /opt/ml/model, relocatable with SEQCLS_OPT_ML)."""
    env = os.environ if env is None else env
    platform = "vertex" if env.get(AIP_PREDICT_ROUTE) or env.get(AIP_STORAGE_URI) else (
        "sagemaker" if not model_arg else "local")
    port_text = str(port_arg) if port_arg is not None else env.get(AIP_HTTP_PORT) or env.get(SM_BIND_TO_PORT) or ""
    try:
        port = int(port_text) if port_text else DEFAULT_SERVING_PORT
    except ValueError:
        raise SettingsError(f"serving port {port_text!r} (from {AIP_HTTP_PORT} or {SM_BIND_TO_PORT}) is not a number") from None
    if not 0 < port < 65536:
        raise SettingsError(f"serving port {port} is out of range 1-65535")
    health = dict.fromkeys([SM_SERVING_ROUTES[0], *([_route(env[AIP_HEALTH_ROUTE], AIP_HEALTH_ROUTE)]
                                                    if env.get(AIP_HEALTH_ROUTE) else [])])
    predict = dict.fromkeys([SM_SERVING_ROUTES[1], *([_route(env[AIP_PREDICT_ROUTE], AIP_PREDICT_ROUTE)]
                                                     if env.get(AIP_PREDICT_ROUTE) else [])])
    root = Path(env.get(OPT_ML_OVERRIDE) or OPT_ML_DEFAULT)
    model_uri = model_arg or env.get(AIP_STORAGE_URI) or str(root / "model")
    payload = env.get(SM_MAX_PAYLOAD_MB, "")
    if payload and not payload.isdigit():
        raise SettingsError(f"{SM_MAX_PAYLOAD_MB}={payload!r} must be a whole number of MB")
    chosen = {name: value for name, value in env_hyperparameters(env).items() if name in SERVING_SETTINGS}
    return Serving(port, tuple(health), tuple(predict), model_uri, platform,
                   int(payload) * 2**20 if payload and int(payload) > 0 else None, chosen)
