"""One verification for every fetch (issue 30): a local run is checked exactly as an S3/GCS download is.

Each test is a probe that passed before the change: a run loaded without its manifest, an unlisted file
used, a symlink followed, a size hashed before it was compared, a bad manifest entry as a bare KeyError,
and `replace` deleting through a symlinked folder. S3 and GCS already download only the listed files and
refuse a run without manifest.json (tests/test_storage.py); these are the local paths that differed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from seqcls import storage
from seqcls.errors import StorageError

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"w" * 4096, "tokenizer.json": b"{}"}


def published(tmp_path: Path, files: dict[str, bytes] = FILES) -> Path:
    """<tmp>/pub, an output_uri holding latest.json and run-1/ with its manifest."""
    staged = tmp_path / "staged"
    staged.mkdir()
    for name, body in files.items():
        (staged / name).write_bytes(body)
    storage.publish(str(tmp_path / "pub"), "run-1", [staged])
    return tmp_path / "pub"


def test_a_run_behind_latest_json_without_manifest_or_file_list_is_refused(tmp_path: Path) -> None:
    pub = published(tmp_path)
    (pub / "run-1" / "manifest.json").unlink()
    pointer = json.loads((pub / "latest.json").read_text())
    del pointer["files"]
    (pub / "latest.json").write_text(json.dumps(pointer))
    with pytest.raises(StorageError, match="has no manifest.json: not a completed publish"):
        storage.fetch(str(pub), tmp_path / "scratch")


def test_a_published_run_named_directly_without_manifest_is_refused(tmp_path: Path) -> None:
    pub = published(tmp_path)
    (pub / "run-1" / "manifest.json").unlink()
    with pytest.raises(StorageError, match="has no manifest.json"):
        storage.fetch(str(pub / "run-1"), tmp_path / "scratch")


def test_a_plain_model_folder_is_used_in_place_unverified(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "run-1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert storage.fetch(str(folder), tmp_path / "scratch") == folder


def test_files_the_manifest_does_not_list_are_never_used(tmp_path: Path) -> None:
    pub = published(tmp_path)
    (pub / "run-1" / "special_tokens_map.json").write_text('{"cls_token": "[SEP]"}')
    fetched = storage.fetch(str(pub), tmp_path / "scratch")
    assert sorted(p.name for p in fetched.iterdir()) == sorted([*FILES, "manifest.json"])
    assert fetched != pub / "run-1"


def test_an_empty_file_list_gives_an_empty_folder_not_the_run(tmp_path: Path) -> None:
    pub = published(tmp_path)
    manifest = json.loads((pub / "run-1" / "manifest.json").read_text())
    (pub / "run-1" / "manifest.json").write_text(json.dumps({**manifest, "files": []}))
    fetched = storage.fetch(str(pub / "run-1"), tmp_path / "scratch")
    assert [p.name for p in fetched.iterdir()] == ["manifest.json"]


def test_a_symlink_in_a_run_is_refused_without_reading_it(tmp_path: Path) -> None:
    pub = published(tmp_path)
    (pub / "run-1" / "tokenizer.json").unlink()
    (pub / "run-1" / "tokenizer.json").symlink_to("/dev/zero")  # reading it would never end
    started = time.monotonic()
    with pytest.raises(StorageError, match="tokenizer.json is a symlink"):
        storage.fetch(str(pub), tmp_path / "scratch")
    assert time.monotonic() - started < 10


def test_a_symlinked_folder_on_the_way_is_refused(tmp_path: Path) -> None:
    pub = published(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inference.py").write_text("stolen")
    manifest = json.loads((pub / "run-1" / "manifest.json").read_text())
    manifest["files"].append({"name": "code/inference.py", "size": 6, "sha256": "0" * 64})
    (pub / "run-1" / "manifest.json").write_text(json.dumps(manifest))
    (pub / "run-1" / "code").symlink_to(outside)
    with pytest.raises(StorageError, match="symlink out of"):
        storage.fetch(str(pub / "run-1"), tmp_path / "scratch")


def test_a_wrong_size_is_refused_before_any_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pub = published(tmp_path)
    (pub / "run-1" / "model.safetensors").write_bytes(b"w" * 5000)
    hashed: list[Path] = []
    digest = storage.fetching.file_digest
    monkeypatch.setattr(storage.fetching, "file_digest", lambda path: hashed.append(Path(path).name) or digest(path))
    with pytest.raises(StorageError, match="model.safetensors is 5000 bytes but manifest.json says 4096 bytes"):
        storage.fetch(str(pub), tmp_path / "scratch")
    assert "model.safetensors" not in hashed


@pytest.mark.parametrize("change, expect", [
    (lambda entry: entry.update(size=str(entry["size"])), "has no valid size (a whole number of bytes), got '"),
    (lambda entry: entry.pop("sha256"), "has no valid sha256 (64 hex digits), got None"),
    (lambda entry: entry.update(name="a\0b"), "unsafe file name"),
])
def test_a_bad_manifest_entry_is_named_not_a_bare_error(change, expect: str, tmp_path: Path) -> None:
    pub = published(tmp_path)
    manifest = json.loads((pub / "run-1" / "manifest.json").read_text())
    change(manifest["files"][0])
    (pub / "run-1" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        storage.fetch(str(pub / "run-1"), tmp_path / "scratch")


def test_a_deeply_nested_manifest_is_refused_not_a_crash(tmp_path: Path) -> None:
    pub = published(tmp_path)
    (pub / "run-1" / "manifest.json").write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(StorageError, match="is not a seqcls manifest"):
        storage.fetch(str(pub / "run-1"), tmp_path / "scratch")


def test_replace_never_deletes_through_a_symlinked_folder(tmp_path: Path) -> None:
    """Vertex's AIP_MODEL_DIR path: the last run's manifest names sub/keep.txt, and sub is a symlink out."""
    model_dir = tmp_path / "model_dir"
    model_dir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    (model_dir / "sub").symlink_to(outside)
    (model_dir / "manifest.json").write_text(json.dumps({"files": [{"name": "sub/keep.txt", "size": 8, "sha256": "0" * 64}]}))
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.json").write_text("{}")
    with pytest.raises(StorageError, match="symlink out of"):
        storage.replace(str(model_dir), "run-2", [staged])
    assert (outside / "keep.txt").read_text() == "not ours"
