"""code/inference.py of every seqcls model folder: the custom-inference hook of sagemaker-huggingface-inference-toolkit,
so AWS's Hugging Face inference image answers as `seqcls predict` does.

The toolkit imports this file from <model_dir>/code and uses `model_fn` and `predict_fn` in place of its default
pipeline (its own input_fn and output_fn still decode the JSON or CSV request and encode the JSON answer). The
default pipeline takes the argmax; this hook applies what the training run saved in config.json: the two-label
`decision_threshold`, multi_label's per-label `label_thresholds`, a regression model's raw score, the label names
in `id2label`, and the `inference_max_length` the run truncated to.

Self-contained on purpose: that image has transformers (4.x or 5) and torch, not seqcls. seqcls copies this file
verbatim; it never imports it.

Request: {"inputs": "a text" | {"text": ..., "text_pair": ...} | [either, ...]}. Answer: one entry per input row,
shaped like the toolkit's text-classification pipeline: {"label": name, "score": probability} (single_label: the
predicted class and its probability; regression: id2label[0] and the raw score), or for multi_label a list of
{"label", "score"} for every label at or above its threshold, highest score first (possibly empty).
"""

from __future__ import annotations

import json
import os

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

BATCH_ROWS = 64  # rows per forward pass: bounds memory for a long request
PROBLEM_TYPES = {None: "single_label", "single_label_classification": "single_label",
                 "multi_label_classification": "multi_label", "regression": "regression"}


def model_fn(model_dir: str) -> dict:
    """Tokenizer, weights (safetensors only, no remote code) and the run's decision rules from config.json."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return {"model": model.to(device).eval(), "device": device, "labels": labels,
            "tokenizer": AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False),
            "problem_type": PROBLEM_TYPES.get(config.get("problem_type"), "single_label"),
            "decision_threshold": config.get("decision_threshold"), "label_thresholds": config.get("label_thresholds"),
            "max_length": config.get("inference_max_length")}


def _rows(data: object) -> tuple[list[str], list[str] | None]:
    """The request's texts (and text pairs), one per row; a clear error for anything else."""
    inputs = data.get("inputs", data) if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("parameters"):
        raise ValueError("parameters are not supported: thresholds, label names and truncation come from the model's "
                         "config.json, as in seqcls predict")
    rows = inputs if isinstance(inputs, list) else [inputs]
    if not rows:
        raise ValueError("inputs is an empty list: send at least one text")
    texts, pairs = [], []
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            texts.append(row["text"])
            pairs.append(row.get("text_pair"))
        elif isinstance(row, str):
            texts.append(row)
            pairs.append(None)
        else:
            raise ValueError(f'each input must be a text or {{"text": ..., "text_pair": ...}}, got {json.dumps(row)[:80]}')
    if any(pair is not None for pair in pairs) and not all(isinstance(pair, str) for pair in pairs):
        raise ValueError("either every input has a text_pair (a text) or none has")
    return texts, (pairs if pairs and pairs[0] is not None else None)


@torch.no_grad()
def _logits(texts: list[str], pairs: list[str] | None, loaded: dict) -> torch.Tensor:
    tokenizer, model = loaded["tokenizer"], loaded["model"]
    limit = {"max_length": loaded["max_length"]} if loaded["max_length"] else {}
    chunks = []
    for start in range(0, len(texts), BATCH_ROWS):
        batch = tokenizer(texts[start:start + BATCH_ROWS], pairs[start:start + BATCH_ROWS] if pairs else None,
                          padding=True, truncation=True, return_tensors="pt", **limit).to(loaded["device"])
        chunks.append(model(**batch).logits.float().cpu())
    return torch.cat(chunks)


def _answer(row: torch.Tensor, loaded: dict) -> object:
    """One row's logits as the pipeline would answer them, decided by the run's own rules."""
    labels, kind = loaded["labels"], loaded["problem_type"]
    if kind == "regression":
        return {"label": labels[0], "score": float(row[0])}
    if kind == "multi_label":
        scores = torch.sigmoid(row).tolist()
        cuts = loaded["label_thresholds"] or [0.5] * len(labels)
        chosen = [{"label": labels[i], "score": s} for i, s in enumerate(scores) if s >= cuts[i]]
        return sorted(chosen, key=lambda entry: -entry["score"])
    scores = torch.softmax(row, dim=-1).tolist()
    threshold = loaded["decision_threshold"]
    best = int(scores[1] >= threshold) if threshold is not None and len(labels) == 2 else int(row.argmax())
    return {"label": labels[best], "score": scores[best]}


def predict_fn(data: object, loaded: dict) -> list:
    """The decoded request (what the toolkit's input_fn returns) to one answer per row."""
    texts, pairs = _rows(data)
    return [_answer(row, loaded) for row in _logits(texts, pairs, loaded)]
