"""Opening a store by its URI's scheme, and reading latest.json (the pointer at the current run) from one."""

from __future__ import annotations

import json

from .. import extras
from ..errors import SeqclsError, StorageError
from ..uris import parse_uri
from .base import LATEST, Options, Pointer, Store
from .gcs import GCSStore
from .local import LocalStore
from .s3 import S3Store


def open_store(uri: str, options: Options = Options()) -> Store:
    target = parse_uri(uri)
    if target.scheme in ("s3", "gs"):
        extras.require("boto3" if target.scheme == "s3" else "google.cloud.storage", f"{target.scheme}:// storage")
    try:
        if target.scheme == "s3":
            return S3Store(target, options)
        if target.scheme == "gs":
            return GCSStore(target)
        return LocalStore(target)
    except SeqclsError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. no credentials or a bad AWS profile
        raise StorageError(f"cannot open {target.join()}: {type(err).__name__}: {err}") from err


def read_pointer(store: Store) -> tuple[Pointer, dict | None]:
    """latest.json with its version; a file there that is not a seqcls pointer is an error, never overwritten."""
    raw, version = store.read_versioned(LATEST)
    if raw is None:
        return Pointer(None, None), None
    try:
        body = json.loads(raw)
        run_id = body["run_id"]
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"{store.target.join(LATEST)} is not a seqcls latest.json (no run_id); move it away or "
                           "publish elsewhere") from None
    if not isinstance(run_id, str) or not run_id or "/" in run_id or run_id.startswith("."):
        raise StorageError(f"{store.target.join(LATEST)} names an unsafe run id {run_id!r}")
    return Pointer(run_id, version), body
