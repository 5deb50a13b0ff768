"""Model: find the pretrained model, check it is safe and fits the settings, load tokenizer and weights.

Weights load from safetensors only and remote code is never trusted: a model folder is data, not code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from . import logs
from .data import LabelMap
from .errors import ModelError, SettingsError
from .problem_types import TYPES

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def check_local_folder(path: Path) -> None:
    """A local model folder needs a config and safetensors weights; pickle-only weights are refused."""
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    names = {p.name for p in path.iterdir()}
    if "config.json" not in names:
        raise ModelError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
    if not any(name in names for name in SAFE_WEIGHTS):
        unsafe = sorted(names.intersection(PICKLE_WEIGHTS))
        if unsafe:
            raise ModelError(f"model folder {path} has only {', '.join(unsafe)}: pickle weights are refused; "
                             "convert them to model.safetensors (save_pretrained does by default)")
        raise ModelError(f"model folder {path} has no model.safetensors weights")
    for weights in sorted({*path.glob("*.safetensors"), *index_shards(path)}):
        try:
            with safe_open(str(weights), framework="pt") as handle:  # reads the header only
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise ModelError(f"model weights {weights} are unreadable ({err}): truncated or corrupt download?") from None


def index_shards(path: Path) -> list[Path]:
    """The shards model.safetensors.index.json names, each a .safetensors file inside the folder: transformers loads
    whatever file an index names, a torch.save pickle included, so the index is checked before any load."""
    index = path / "model.safetensors.index.json"
    if not index.exists():
        return []
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ModelError(f"model index {index} is unreadable ({type(err).__name__}): expected "
                         '{"weight_map": {tensor: shard file}}') from None
    shards = []
    for name in names:
        if not isinstance(name, str) or not name.endswith(".safetensors") or Path(name).name != name:
            raise ModelError(f"model index {index} names shard {name!r}: only .safetensors files in the model folder "
                             "are loaded (pickle weights are refused)")
        shard = path / name
        if shard.is_symlink() or not shard.is_file():
            raise ModelError(f"model index {index} names shard {name}, which is missing or not a plain file")
        shards.append(shard)
    return shards


def load_config(source: str, label_map: LabelMap) -> PretrainedConfig:
    """The config with our label names and problem type (so transformers' pipeline applies softmax, sigmoid or
    nothing, as ours does); read before any weights so bad settings fail fast."""
    local = Path(source)
    # A hub id is "name" or "org/name"; an existing or explicit path (a channel, /..., ./...) must be a usable folder
    # rather than fall through to a slow, doomed hub download.
    if local.exists() or source.startswith(("/", "./", "../", "~")):
        check_local_folder(local)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=len(label_map.labels), id2label=label_map.id2label,
                                            label2id=label_map.label2id, trust_remote_code=False,
                                            problem_type=TYPES[label_map.problem_type].hf_name)
    except (OSError, ValueError) as err:
        if "custom code" in str(err):
            raise ModelError(f"model {source!r} needs its own Python code (auto_map in config.json): seqcls never runs "
                             "code shipped with a model; use a model whose model_type transformers supports") from None
        raise ModelError(f"cannot load model {source!r}: {str(err).splitlines()[0][:300]} "
                         "(offline or network-isolated? mount the model folder as the `model` channel)") from None
    if hasattr(config, "label_thresholds"):  # a fine-tuned multi_label start: its thresholds are for its labels, not ours
        del config.label_thresholds
    return config


def check_max_length(config: PretrainedConfig, max_length: int | str, source: str) -> int | None:
    """The model's position limit (None when its config names none), after checking a given max_length against it."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length != "auto" and max_length > limit:
        raise SettingsError(f"hyperparameter max_length={max_length} is out of range: model {source} "
                            f"supports at most {limit} positions")
    return limit


def load_tokenizer(source: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the tokenizer of {source!r}: {str(err).splitlines()[0][:300]}") from None
    if not tokenizer.is_fast:
        raise ModelError(f"model {source!r} has no fast tokenizer (tokenizer.json); batched tokenization needs one")
    return tokenizer


def load_model(source: str, config: PretrainedConfig, seed: int, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """Pretrained encoder plus a classification head initialised from the seed; with gradient_checkpointing,
    switched to recomputing activations in backward (before any training, so an unsupported model fails fast)."""
    def load(reset_head: bool) -> torch.nn.Module:
        torch.manual_seed(seed)  # the new head's initialisation, the same on every attempt
        return AutoModelForSequenceClassification.from_pretrained(
            source, config=config, use_safetensors=True, trust_remote_code=False, dtype=torch.float32,
            ignore_mismatched_sizes=reset_head)

    try:
        try:
            model = load(reset_head=False)
        except RuntimeError as err:  # a classifier fine-tuned for another number of labels: transformers refuses
            if "ignore_mismatched_sizes" not in str(err):
                raise
            model = load(reset_head=True)
            logs.warning("classifier_head_reset", f"model {source} has a classification head for other labels; it is "
                         f"initialised afresh for this run's {config.num_labels} outputs (the encoder is kept)",
                         model=source, outputs=config.num_labels)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load weights of {source!r}: {str(err).splitlines()[0][:300]}") from None
    if gradient_checkpointing:
        enable_gradient_checkpointing(model, source)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module, source: str) -> None:
    """transformers' own switch, where the model class declares support (supports_gradient_checkpointing: ALBERT,
    MPNet, XLNet... do not). Non-reentrant torch.utils.checkpoint, as torch recommends (and transformers 5.24 defaults
    to); the newer name where this transformers has it (gradient_checkpointing_enable is its deprecated alias)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SettingsError(f"hyperparameter gradient_checkpointing=true: {type(model).__name__} (model {source}) does "
                            "not support gradient checkpointing in transformers; set it to false and lower "
                            "batch_size (with gradient_accumulation_steps to keep the recipe), or use another model")
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id; 0 for the few that define none (BERT's [PAD] is 0 too)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

