"""Data: every input format, label mapping, the seeded split, tokenization lengths and batching."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from jobtools import cola_lines
from seqcls import data
from seqcls.errors import DataError, SettingsError
from seqcls.settings import Settings

ROWS = [("the cat sat.", "good"), ("cat the sat on.", "bad"), ("dogs bark loudly.", "good"), ("bark dogs the.", "bad")]


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def test_cola_layout_tsv_is_detected(cola_dir, tmp_path):
    path = tmp_path / "cola.tsv"
    path.write_text("".join(cola_lines(cola_dir, "in_domain_train.tsv", 0, 50)), encoding="utf-8")
    channel = data.read_channel(path, "train", Settings().reading)
    assert len(channel.frame) == 50
    assert channel.frame["text"][0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert set(channel.frame["label"]) <= {"0", "1"}
    assert channel.files[0]["rows"] == 50 and len(channel.files[0]["sha256"]) == 64


def test_real_cola_quotes_are_kept_verbatim(cola_dir):
    channel = data.read_channel(cola_dir / "in_domain_train.tsv", "train", Settings().reading)
    assert len(channel.frame) == 8551
    assert channel.frame["text"].str.contains('"').any()
    assert (channel.frame["label"].value_counts().to_dict()) == {"1": 6023, "0": 2528}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_headered_formats_with_column_names(tmp_path, suffix):
    frame = pd.DataFrame(ROWS, columns=["review", "verdict"])
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"review": t, "verdict": v}) + "\n" for t, v in ROWS))
    else:
        frame.to_parquet(path)
    channel = data.read_channel(path, "train", Settings(text_column="review", label_column="verdict").reading)
    assert channel.frame["text"].tolist() == [t for t, _ in ROWS]
    assert channel.frame["label"].tolist() == [v for _, v in ROWS]


def test_sentence_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"premise": ["a man runs", "a dog"], "hypothesis": ["someone moves", "a cat"], "label": [1, 0]}).to_csv(path, index=False)
    channel = data.read_channel(path, "train", Settings(text_column="premise", text_pair_column="hypothesis").reading)
    assert channel.frame["text_pair"].tolist() == ["someone moves", "a cat"]


def test_a_channel_folder_concatenates_its_files_in_name_order(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    pd.DataFrame({"sentence": ["b1", "b2"], "label": [0, 1]}).to_csv(folder / "b.csv", index=False)
    (folder / "a.jsonl").write_text(json.dumps({"sentence": "a1", "label": 1}) + "\n")
    (folder / ".hidden.csv").write_text("junk")
    (folder / "README.txt").write_text("not data")
    channel = data.read_channel(folder, "train", Settings().reading)
    assert channel.frame["text"].tolist() == ["a1", "b1", "b2"]
    assert [f["path"] for f in channel.files] == [str(folder / "a.jsonl"), str(folder / "b.csv")]


def test_integer_labels_map_numerically_and_strings_lexically():
    ints = data.LabelMap.from_labels(pd.Series(["10", "2", "1", "2"]))
    assert ints.labels == ["1", "2", "10"]
    strings = data.LabelMap.from_labels(pd.Series(["pos", "neg", "neutral"]))
    assert strings.labels == ["neg", "neutral", "pos"]
    assert strings.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert strings.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_labels_compare_across_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"sentence": "x", "label": 1.0}) + "\n" + json.dumps({"sentence": "y", "label": 0}) + "\n")
    pd.DataFrame({"sentence": ["z"], "label": ["1"]}).to_csv(tmp_path / "b.csv", index=False)
    channel = data.read_channel(tmp_path, "train", Settings().reading)
    assert channel.frame["label"].tolist() == ["1", "0", "1"]


def test_a_test_label_unseen_in_training_is_an_error(tmp_path):
    label_map = data.LabelMap(["neg", "pos"])
    path = tmp_path / "test.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": ["pos", "mixed"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="test channel has label\\(s\\) 'mixed' not seen in training"):
        label_map.encode(data.read_channel(path, "test", Settings().reading))


def test_seeded_split_is_reproducible_and_stratified(cola_dir):
    train = data.read_channel(cola_dir / "in_domain_train.tsv", "train", Settings().reading)
    a_train, a_val = data.split_train_validation(train, 0.1, seed=42)
    b_train, b_val = data.split_train_validation(train, 0.1, seed=42)
    _, c_val = data.split_train_validation(train, 0.1, seed=7)
    assert a_val.frame.equals(b_val.frame) and a_train.frame.equals(b_train.frame)
    assert not a_val.frame.equals(c_val.frame)
    assert len(a_val.frame) == 855 and len(a_train.frame) == 8551 - 855
    # Every row lands in exactly one side: together the two sides are the channel's rows, each once
    # (CoLA repeats some sentences, so rows are compared as (text, label) multisets, not as sets).
    rows = Counter(zip(train.frame["text"], train.frame["label"]))
    assert Counter(zip(a_train.frame["text"], a_train.frame["label"])) + Counter(zip(a_val.frame["text"], a_val.frame["label"])) == rows
    share = (a_val.frame["label"] == "1").mean()
    assert abs(share - 6023 / 8551) < 0.005


def test_tokenization_lengths_and_truncation(cola_dir, tokenizer):
    channel = data.read_channel(cola_dir / "in_domain_train.tsv", "train", Settings().reading)
    labels = data.LabelMap(["0", "1"]).encode(channel)
    encoded, stats = data.tokenize(tokenizer, channel, labels, max_length=16)
    reference = [len(ids) for ids in tokenizer(channel.frame["text"].tolist())["input_ids"]]
    assert stats.longest == max(reference) == 47  # the tutorial's "Max sentence length: 47"
    assert stats.truncated == sum(n > 16 for n in reference)
    assert encoded.lengths.tolist() == [min(n, 16) for n in reference]
    first = encoded.input_ids[encoded.offsets[0]:encoded.offsets[1]].tolist()
    assert first == tokenizer(channel.frame["text"][0], truncation=True, max_length=16)["input_ids"]
    assert encoded.input_ids.dtype == np.int32 and len(encoded) == 8551


class _SlowOnly:
    """The transformers call alone, as a tokenizer without a Rust backend would be used."""

    is_fast = False

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


@pytest.mark.parametrize("pairs", [False, True])
def test_backend_tokenization_equals_the_transformers_call(cola_dir, tokenizer, pairs):
    channel = data.read_channel(cola_dir / "in_domain_train.tsv", "train", Settings().reading)
    frame = channel.frame.iloc[:600].reset_index(drop=True)
    if pairs:
        frame = frame.assign(text_pair=frame["text"].iloc[::-1].tolist())
    channel = data.Channel("train", frame, [])
    labels = data.LabelMap(["0", "1"]).encode(channel)
    encoded, stats = data.tokenize(tokenizer, channel, labels, max_length=20)
    slow, slow_stats = data.tokenize(_SlowOnly(tokenizer), channel, labels, max_length=20)
    reference = tokenizer(frame["text"].tolist(), frame["text_pair"].tolist() if pairs else None, truncation=True,
                          max_length=20)
    rows = [encoded.input_ids[a:b].tolist() for a, b in zip(encoded.offsets[:-1], encoded.offsets[1:])]
    types = [encoded.token_type_ids[a:b].tolist() for a, b in zip(encoded.offsets[:-1], encoded.offsets[1:])]
    assert rows == reference["input_ids"] and types == reference["token_type_ids"]
    assert stats.truncated > 0 and stats == slow_stats
    assert (slow.input_ids == encoded.input_ids).all() and (slow.offsets == encoded.offsets).all()


def test_epoch_order_covers_every_row_once_in_full_batches(tmp_path):
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    for group in (True, False):
        batches = data.epoch_order(lengths, 32, seed=42, epoch=1, group_by_length=group)
        assert [len(b) for b in batches] == [32] * 31 + [11]
        assert sorted(np.concatenate(batches).tolist()) == list(range(1003))
        again = data.epoch_order(lengths, 32, seed=42, epoch=1, group_by_length=group)
        assert all((a == b).all() for a, b in zip(batches, again))
        other_epoch = data.epoch_order(lengths, 32, seed=42, epoch=2, group_by_length=group)
        assert not all(len(a) == len(b) and (a == b).all() for a, b in zip(batches, other_epoch))


def test_eval_batches_within_a_window_are_the_same_whether_the_rows_come_whole_or_in_window_multiples():
    """What makes `seqcls predict`'s streamed file the in-memory bytes: a row's batch depends on its window alone."""
    lengths = np.random.default_rng(1).integers(3, 60, size=2500)
    whole = data.eval_order(lengths, 64, window=500)
    pieces = [start + b for start in range(0, 2500, 1000) for b in data.eval_order(lengths[start:start + 1000], 64, 500)]
    assert [b.tolist() for b in whole] == [b.tolist() for b in pieces]
    assert sorted(np.concatenate(whole).tolist()) == list(range(2500))
    assert all(np.all(np.diff(lengths[np.concatenate(whole[i:i + 8])]) >= 0) for i in range(0, len(whole), 8))
    unwindowed = [start + b for start in range(0, 2500, 1000) for b in data.eval_order(lengths[start:start + 1000], 64)]
    assert [b.tolist() for b in data.eval_order(lengths, 64)] != [b.tolist() for b in unwindowed]


def test_length_grouping_pads_less():
    lengths = np.random.default_rng(0).integers(3, 60, size=5000)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    grouped = padded(data.epoch_order(lengths, 32, 42, 1, True))
    plain = padded(data.epoch_order(lengths, 32, 42, 1, False))
    assert grouped < 0.7 * plain


def test_collate_pads_to_the_batch_not_to_max_length(tokenizer):
    channel = data.Channel("train", pd.DataFrame({"text": ["short one.", "a somewhat longer sentence than the other."],
                                                  "label": ["0", "1"]}), [])
    encoded, _ = data.tokenize(tokenizer, channel, np.array([0, 1]), max_length=64)
    batch = data.collate(encoded, np.array([0, 1]), pad_token_id=0, pad_to_multiple_of=8)
    width = int(encoded.lengths.max())
    assert batch["input_ids"].shape == (2, -(-width // 8) * 8)
    assert data.collate(encoded, np.array([0, 1]), 0, data.pad_multiple("cpu"))["input_ids"].shape == (2, width)
    assert batch["attention_mask"].sum(axis=1).tolist() == encoded.lengths.tolist()
    assert batch["labels"].tolist() == [0, 1]


def test_split_needs_rows_for_both_sides(tmp_path):
    channel = data.Channel("train", pd.DataFrame({"text": ["only"], "label": ["1"]}), [])
    with pytest.raises(DataError, match="too few to hold out"):
        data.split_train_validation(channel, 0.1, 42)


@pytest.mark.parametrize("percentile, limit", [(99.5, 512), (100, 512), (50, 512), (99.5, 24)])
def test_max_length_auto_is_the_training_percentile_rounded_up_to_8_and_capped(cola_dir, tokenizer, percentile, limit):
    channel = data.read_channel(cola_dir / "in_domain_train.tsv", "train", Settings().reading)
    reference = np.array([len(ids) for ids in tokenizer(channel.frame["text"].tolist())["input_ids"]])
    wanted = int(np.percentile(reference, percentile, method="higher"))
    settings = Settings(max_length="auto", max_length_percentile=percentile)
    chosen = data.resolve_max_length(tokenizer, channel, settings, limit)
    assert chosen == min(-(-wanted // 8) * 8, limit) and chosen % 8 == 0
    assert (reference > chosen).mean() <= (100 - percentile) / 100 or chosen == limit
    if percentile == 100:
        assert chosen == 48  # the longest CoLA sentence is 47 tokens
    assert data.resolve_max_length(tokenizer, channel, Settings(max_length=40), limit) == 40


def test_class_weights_balanced_as_scikit_learn_and_a_given_map_by_label_name(cola_dir):
    from sklearn.utils.class_weight import compute_class_weight

    channel = data.read_channel(cola_dir / "in_domain_train.tsv", "train", Settings().reading)
    label_map = data.LabelMap.from_labels(channel.frame["label"])
    ids = label_map.encode(channel)
    balanced = data.label_weights("balanced", label_map, channel)
    np.testing.assert_allclose(balanced, compute_class_weight("balanced", classes=np.array([0, 1]), y=ids), rtol=1e-6)
    assert balanced[0] > 1 > balanced[1] and abs(balanced[ids].mean() - 1) < 1e-5  # CoLA is 30/70: the rarer 0 weighs more
    assert data.label_weights('{"1.0": 2.5}', label_map, channel).tolist() == [1.0, 2.5]  # "1.0" is label "1"
    assert data.label_weights("none", label_map, channel) is None
    with pytest.raises(SettingsError, match="'yes'.*train does not have"):
        data.label_weights('{"yes": 2}', label_map, channel)
