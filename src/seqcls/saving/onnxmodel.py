"""The run's ONNX files: model.onnx exported by torch and checked against PyTorch, an optional dynamically quantized
model.int8.onnx kept only when it agrees with PyTorch on held-out rows, and either one run by onnxruntime behind
the interface predict's one batch function calls (inference_backend=onnx / onnx_int8)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from .. import logs
from ..data import PAIR, TEXT, Channel
from ..errors import ModelError, SeqclsError
from ..evaluate import Predictions
from ..problem_types import REGRESSION, of_config

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
FILES = {"onnx": ONNX_FILE, "onnx_int8": ONNX_INT8_FILE}  # inference_backend -> the file it runs
ONNX_ATOL = 1e-4  # most any logit of model.onnx (onnxruntime, CPU) may differ from PyTorch's on the check rows
INT8_CHECK_ROWS = 2000  # held-out rows the int8 model is compared on
INT8_MIN_LABELS_EQUAL = 0.995  # share of those rows whose predicted labels must equal PyTorch's to keep the file
CHECK_BATCH = 64


def export(model: torch.nn.Module, tokenizer, folder: Path) -> str:
    """model.onnx beside the safetensors, from torch's own exporter (torch.onnx.export, dynamo: the one torch
    keeps developing), with batch and sequence as dynamic axes; the reload check then compares it with PyTorch."""
    inputs = dict(tokenizer(["an export example", "a longer example sentence for the export"], padding=True,
                            return_tensors="pt").to(next(model.parameters()).device))
    batch, sequence = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
    was_training = model.training
    model.eval()
    try:
        # The exporter prints progress (stdout is for JSON lines only) and warns about its own internals.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (), str(folder / ONNX_FILE), kwargs=inputs, input_names=list(inputs),
                              output_names=["logits"], dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
                              dynamo=True, external_data=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - any exporter failure becomes one clear line; nothing is saved
        raise SeqclsError(f"export_onnx: torch.onnx.export could not export this {model.config.model_type} model: "
                          f"{str(err).splitlines()[0][:300] if str(err) else type(err).__name__}") from err
    finally:
        model.train(was_training)
    return ONNX_FILE


def check(path: Path, inputs: dict[str, torch.Tensor], expected: torch.Tensor) -> None:
    """model.onnx run by onnxruntime on the reload check's rows gives PyTorch's logits within ONNX_ATOL."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].cpu().numpy() for i in session.get_inputs()}
    got = torch.from_numpy(session.run(["logits"], feed)[0])
    worst = float((got - expected.float().cpu()).abs().max())
    if not worst <= ONNX_ATOL:
        raise SeqclsError(f"reload check failed: {path.name} (onnxruntime) differs from the PyTorch logits by up to "
                          f"{worst:.3g} on {len(expected)} held-out rows (tolerance {ONNX_ATOL:g}); nothing was saved")


def _logits_both(model: torch.nn.Module, session, tokenizer, rows: Channel) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch (fp32, the trained model) and onnxruntime logits of the same rows, tokenized as predict does."""
    frame = rows.frame.head(INT8_CHECK_ROWS)
    texts, pairs = frame[TEXT].tolist(), frame[PAIR].tolist() if PAIR in frame else None
    device, max_length = next(model.parameters()).device, getattr(model.config, "inference_max_length", None)
    names = [i.name for i in session.get_inputs()]
    torch_logits, onnx_logits = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), CHECK_BATCH):
            inputs = tokenizer(texts[start:start + CHECK_BATCH], pairs and pairs[start:start + CHECK_BATCH],
                               padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                torch_logits.append(model(**inputs.to(device)).logits.float().cpu().numpy())
            onnx_logits.append(session.run(["logits"], {n: inputs[n].cpu().numpy() for n in names})[0])
    finally:
        model.train(was_training)
    return np.concatenate(torch_logits), np.concatenate(onnx_logits)


def quantize_int8(model: torch.nn.Module, tokenizer, folder: Path, rows: Channel | None) -> dict[str, Any]:
    """model.int8.onnx from model.onnx by onnxruntime's dynamic quantization (int8 weights, activations quantized
    per batch), compared with PyTorch on up to INT8_CHECK_ROWS held-out rows: kept when at least
    INT8_MIN_LABELS_EQUAL of them get the same labels (the run's thresholds), else deleted with a warning.
    Returns the record run_manifest.json keeps (`onnx_int8`)."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if rows is None:
        raise SeqclsError("export_onnx_int8 needs held-out rows (a test or validation split) to check the int8 model")
    target = folder / ONNX_INT8_FILE
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(folder / ONNX_FILE, target, weight_type=QuantType.QInt8)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    expected, got = _logits_both(model, session, tokenizer, rows)
    config = model.config
    kind = of_config(config.problem_type)
    thresholds = getattr(config, "label_thresholds", None)
    decided = [Predictions(logits, 0.0, kind, None if thresholds is None else np.asarray(thresholds, dtype=np.float32),
                           getattr(config, "decision_threshold", None)) for logits in (expected, got)]
    if kind == REGRESSION:  # a score, no labels: the record says how far the scores move
        equal, difference = None, float(np.abs(got - expected).max())
    else:
        same = decided[0].predicted == decided[1].predicted
        equal = float((same.all(axis=1) if same.ndim == 2 else same).mean())
        difference = float(np.abs(decided[1].probabilities - decided[0].probabilities).max())
    kept = equal is None or equal >= INT8_MIN_LABELS_EQUAL
    record = {"file": ONNX_INT8_FILE, "rows": len(expected), "split": rows.name, "labels_equal": equal,
              "required": INT8_MIN_LABELS_EQUAL, "largest_score_difference": round(difference, 6), "kept": kept}
    if not kept:
        target.unlink()
        logs.warning("onnx_int8_dropped", f"{ONNX_INT8_FILE} not saved: its labels equal PyTorch's on {equal:.2%} of "
                                          f"{len(expected)} {rows.name} rows (needs {INT8_MIN_LABELS_EQUAL:.1%})", **record)
    return record


class OnnxClassifier(torch.nn.Module):
    """A run's model.onnx (or model.int8.onnx) run by onnxruntime behind what predict's one batch function calls:
    `.config`, eval(), and a forward taking the collated tensors and returning `.logits`; so every payload scores
    through the same code."""

    def __init__(self, path: Path, config: PretrainedConfig) -> None:
        super().__init__()
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a broken file
            raise ModelError(f"cannot load {path.name} with onnxruntime: {' '.join(str(err).split())[:300]}") from None
        self.path, self.config = path, config
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        feed = {name: inputs[name].cpu().numpy() for name in self.input_names}
        return SequenceClassifierOutput(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))
