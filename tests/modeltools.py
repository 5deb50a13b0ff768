"""A tiny BERT and synthetic encoded rows, shared by the step, accumulation, problem-type and CUDA tests."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from seqcls import data
from seqcls.settings import Settings

CPU = torch.device("cpu")
SETTINGS = Settings(batch_size=32, learning_rate=5e-3, warmup_ratio=0.2, weight_decay=0.01, max_grad_norm=0.5,
                    epochs=2)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """Two layers, 32 wide, no dropout: the two paths then compute the same function."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=3)
    return BertForSequenceClassification(config).train()


def synthetic(rows: int = 75, seed: int = 0) -> data.Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 30, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(5, 500, size=int(offsets[-1])).astype(np.int32)
    return data.Encoded(ids, np.zeros_like(ids, dtype=np.int8), offsets, rng.integers(0, 3, size=rows))
