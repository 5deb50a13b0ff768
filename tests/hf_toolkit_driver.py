"""Runs in .venv-hf-inference (`make test` builds it: AWS's Hugging Face inference toolkit on transformers 4.51.3),
never in our venv: tests/test_hf_inference.py calls it as a subprocess and reads the JSON it writes.

  handle MODEL_DIR REQUESTS.json OUT.json  each request through the toolkit's own HuggingFaceHandlerService, as its
                                           model server calls it (initialize once, then handle per request)
  logits MODEL_DIR INPUTS.json OUT.json    transformers 4.x's AutoModelForSequenceClassification on given input ids

The context objects are multi-model-server's own (mms.context.Context, RequestProcessor, MetricsStore), built as
the toolkit's unit tests build them (aws/sagemaker-huggingface-inference-toolkit
tests/unit/test_handler_service_with_context.py: Context(name, model_dir, {}, 1, -1, "1.1.4")). handle() is the
entry point the server calls (src/sagemaker_huggingface_inference_toolkit/handler_service.py): it imports
<model_dir>/code/inference.py, decodes the body with the toolkit's input_fn, and wraps any error in
mms.service.PredictionException(message, 400).
"""

from __future__ import annotations

import json
import sys


def handle(model_dir: str, requests: list[dict]) -> list[dict]:
    from mms.context import Context, RequestProcessor
    from mms.metrics.metrics_store import MetricsStore
    from sagemaker_huggingface_inference_toolkit import handler_service

    service = handler_service.HuggingFaceHandlerService()
    context = Context("model", model_dir, {}, 1, -1, "1.1.11")
    context.metrics = MetricsStore(1, "model")
    answers = []
    for request in requests:
        context.request_processor = [RequestProcessor({"Content-Type": request["content_type"],
                                                       "Accept": "application/json"})]
        try:
            response = service.handle([{"body": request["body"].encode()}], context)
        except Exception as err:  # noqa: BLE001 - the toolkit's PredictionException: what the client would get
            answers.append({"error": getattr(err, "message", str(err)), "code": getattr(err, "error_code", None)})
        else:
            answers.append({"body": json.loads(response[0])})
    return answers


def logits(model_dir: str, inputs: dict) -> list:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.tolist()


def main() -> None:
    import transformers

    command, model_dir, given, out = sys.argv[1:5]
    with open(given, encoding="utf-8") as source:
        payload = json.load(source)
    result = handle(model_dir, payload) if command == "handle" else logits(model_dir, payload)
    with open(out, "w", encoding="utf-8") as sink:
        json.dump({"transformers": transformers.__version__, "result": result}, sink)


if __name__ == "__main__":
    main()
