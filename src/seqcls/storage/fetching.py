"""Fetching a published run: the files its manifest (or latest.json's file list) names, each downloaded and checked
by size and sha256; a plain local model folder is used as is."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import logs
from ..errors import SeqclsError, StorageError
from .base import LATEST, MANIFEST, MANIFEST_FORMAT, Store, file_digest
from .stores import open_store, read_pointer


def _check_against_manifest(manifest: dict, folder: Path, source: str) -> None:
    """Sizes first (a wrong size is never hashed), then sha256."""
    for item in manifest["files"]:
        size = (folder / item["name"]).stat().st_size
        if size != item["size"]:
            raise StorageError(f"{source}: {item['name']} is {size} bytes but {MANIFEST} says {item['size']} bytes")
        _, sha256, _ = file_digest(folder / item["name"])
        if sha256 != item["sha256"]:
            raise StorageError(f"{source}: {item['name']} has sha256 {sha256} but {MANIFEST} says {item['sha256']}")


def _load_manifest(raw: bytes, source: str) -> dict:
    """The manifest, each entry checked: a safe relative name, a whole size, a sha256 of 64 hex digits."""
    try:
        manifest = json.loads(raw)
        items = manifest["files"]
        if not isinstance(items, list):
            raise TypeError("files is not a list")
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise StorageError(f"{source}/{MANIFEST} is not a seqcls manifest: {type(err).__name__}: {err}") from None
    for number, item in enumerate(items, 1):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
            raise StorageError(f"{source}/{MANIFEST} lists an unsafe file name {name!r} (entry {number})")
        size, sha256 = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StorageError(f"{source}/{MANIFEST}: entry {name} has no valid size (a whole number of bytes), got {size!r}")
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise StorageError(f"{source}/{MANIFEST}: entry {name} has no valid sha256 (64 hex digits), got {sha256!r}")
    return manifest


def fetch(uri: str, scratch: Path) -> Path:
    """A published run as a local folder holding exactly the files its manifest lists, each verified.

    Every run, local or remote, is copied into `scratch` file by file as its manifest lists them (a local
    copy refuses symlinks and devices), sizes checked before hashing: unlisted files are never used. A
    prefix holding latest.json (an output_uri) means the run it points at, verified against its manifest
    or the pointer's file list. A run without either is refused; only a plain local folder that is no
    published run (no manifest, no latest.json beside it: `runs/<run>/model`) is returned as is, unverified.
    """
    store = open_store(uri)
    source = store.target.join()
    try:
        raw = store.read(MANIFEST)
        if raw is None and (pointer := _followed(store)) is not None:
            store, raw = pointer
            source = store.target.join()
        elif raw is None and store.target.scheme == "file" and not _published_here(Path(store.target.prefix)):
            return Path(store.target.prefix)
        if raw is None:
            raise StorageError(f"{source} has no {MANIFEST}: not a completed publish (or not a run folder)")
        manifest = _load_manifest(raw, source)
        scratch.mkdir(parents=True, exist_ok=True)
        for item in manifest["files"]:
            dest = scratch / item["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                store.download(item["name"], dest)
            except SeqclsError:
                raise
            except Exception as err:  # noqa: BLE001 - "404: Not Found" alone would not say which object
                raise StorageError(f"cannot fetch {store.target.join(item['name'])} (listed in {source}/{MANIFEST}): "
                                   f"{store.reason(err)}") from err
        _check_against_manifest(manifest, scratch, source)
        (scratch / MANIFEST).write_bytes(raw)  # the local copy mirrors the published folder
        return scratch
    except SeqclsError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear line
        raise StorageError(f"cannot fetch {source}: {store.reason(err)}") from err


def _published_here(folder: Path) -> bool:
    """A folder inside an output_uri (latest.json beside it) is a published run, never a plain model folder."""
    return (folder.resolve().parent / LATEST).exists()


def _followed(store: Store) -> tuple[Store, bytes] | None:
    """The run latest.json points at, and the manifest to check it by: its own, else the pointer's file list (a
    gated publish moves the pointer just before writing the run's manifest). None when there is no latest.json."""
    pointer, body = read_pointer(store)
    if pointer.run_id is None:
        return None
    run = open_store(store.target.join(pointer.run_id))
    raw = run.read(MANIFEST)
    if raw is None and isinstance(body.get("files"), list):
        raw = json.dumps({"format": MANIFEST_FORMAT, "run_id": pointer.run_id, "files": body["files"]}).encode()
    logs.event("latest_followed", f"{store.target.join(LATEST)} points at run {pointer.run_id}",
               latest=store.target.join(LATEST), run_id=pointer.run_id, uri=run.target.join())
    return run, raw
