"""Publishing a run: preflight checks, upload and verify, the manifest written last, latest.json moved (by a
conditional write when a gate decides), and a platform's fixed model folder replaced."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .. import logs
from ..errors import SeqclsError, StorageError
from .base import LATEST, MANIFEST, MANIFEST_FORMAT, POINTER_RACES, Current, FileEntry, Gate, Options, Published, Store, collect
from .stores import open_store, read_pointer


def _check_free(store: Store, run_id: str) -> None:
    """The run id must not hold a manifest yet, nor be where latest.json points (a gated publish stopped between
    moving latest.json and writing its manifest); also the first request, so bad credentials fail here."""
    try:
        taken = (f"{store.target.join(run_id, MANIFEST)} already exists" if store.exists(f"{run_id}/{MANIFEST}") else
                 f"{store.target.join(LATEST)} already points at it" if read_pointer(store)[0].run_id == run_id else "")
    except SeqclsError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear line
        raise StorageError(f"cannot check {store.target.join(run_id)} for an earlier publish: {store.reason(err)}") from err
    if taken:
        raise StorageError(f"{taken}: run {run_id!r} was published before and is never overwritten; "
                           "set a new run_id (or output_uri)")


def preflight(output_uri: str, run_id: str, options: Options) -> None:
    """Before training: the location is reachable with these credentials and the run id is still free."""
    _check_free(open_store(output_uri, options), run_id)


def preflight_folder(folder_uri: str, options: Options) -> None:
    """Before training: a folder that `replace` will fill is reachable with these credentials."""
    store = open_store(folder_uri, options)
    try:
        store.exists(MANIFEST)
    except SeqclsError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear line
        raise StorageError(f"cannot reach {store.target.join()}: {store.reason(err)}") from err


def _manifest(run_id: str, entries: Iterable[FileEntry]) -> bytes:
    files = [{"name": e.name, "size": e.size, "sha256": e.sha256} for e in entries]
    return (json.dumps({"format": MANIFEST_FORMAT, "run_id": run_id,
                        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "total_bytes": sum(f["size"] for f in files), "files": files}, indent=2) + "\n").encode()


def publish(output_uri: str, run_id: str, folders: Sequence[Path], options: Options = Options(),
            gate: Gate | None = None) -> Published:
    """Upload every file of `folders` to <output_uri>/<run_id>/, verify them, then write manifest.json.

    Raises StorageError (with the run URI and the step that failed) and writes no manifest when any
    upload or check fails. Without a gate, `latest.json` beside the run folders is updated after the manifest;
    with one, only as the gate decides (`_publish_gated`).
    """
    started = time.perf_counter()
    store = open_store(output_uri, options)
    run_uri = store.target.join(run_id)
    entries = collect(folders)
    _check_free(store, run_id)
    if gate is not None:
        entries, checks = _publish_gated(store, run_id, folders, gate)
    else:
        checks = _upload_checked(store, run_id, entries, lambda: store.put(f"{run_id}/{MANIFEST}", _manifest(run_id, entries), new=True))
    if options.latest and gate is None:
        try:
            store.put(LATEST, _pointer(store, run_id, entries), new=False)
        except SeqclsError:
            raise
        except Exception as err:  # noqa: BLE001
            raise StorageError(f"run published to {run_uri} (manifest written) but updating "
                               f"{store.target.join(LATEST)} failed: {store.reason(err)}") from err
    return Published(run_uri, len(entries), sum(e.size for e in entries), round(time.perf_counter() - started, 3),
                     sorted(set(checks)))


def _pointer(store: Store, run_id: str, entries: Sequence[FileEntry]) -> bytes:
    """latest.json: the run and its files with their digests, so a consumer can verify the run from the pointer
    alone (a gated publish moves the pointer just before the run's own manifest is written)."""
    manifest = json.loads(_manifest(run_id, entries))
    pointer = {"run_id": run_id, "uri": store.target.join(run_id), "manifest": store.target.join(run_id, MANIFEST),
               "published_at": manifest["created_at"], "total_bytes": manifest["total_bytes"], "files": manifest["files"]}
    return (json.dumps(pointer, indent=2) + "\n").encode()


def _publish_gated(store: Store, run_id: str, folders: Sequence[Path], gate: Gate) -> tuple[list[FileEntry], list[str]]:
    """Decide, upload, move the pointer, seal: read latest.json (with its version), let the gate decide and record
    the decision in this run's files, upload and verify what changed, and when promoted move latest.json with a
    conditional write. A lost race (another run moved it meanwhile) re-reads and re-decides, so the loser never
    overwrites a better winner. The manifest, written last, seals the decision that stood: what metrics.json
    says always matches where latest.json went."""
    uploaded: dict[str, str] = {}
    checks: list[str] = []
    step = f"reading {LATEST}"
    try:
        for _ in range(POINTER_RACES):
            pointer, _ = read_pointer(store)
            step = f"reading run {pointer.run_id}'s files"
            promote = gate.decide(Current(pointer.run_id, lambda name, limit, current=pointer.run_id: store.read(f"{current}/{name}", limit)))
            entries = collect(folders)
            changed = [e for e in entries if uploaded.get(e.name) != e.sha256]
            checks += _upload_checked(store, run_id, changed, lambda: None)
            uploaded.update({e.name: e.sha256 for e in changed})
            step = f"moving {LATEST} (conditional write)"
            if promote and not store.put_if(LATEST, _pointer(store, run_id, entries), pointer.version):
                step = f"reading {LATEST}"
                continue  # another run moved latest.json after we read it: decide again against that one
            _upload_checked(store, run_id, [], lambda: store.put(f"{run_id}/{MANIFEST}", _manifest(run_id, entries), new=True))
            gate.commit()
            return entries, checks
    except SeqclsError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear line
        raise StorageError(f"publishing to {store.target.join(run_id)} failed while {step}: {store.reason(err)}; "
                           f"this run wrote no {MANIFEST}") from err
    raise StorageError(f"publishing to {store.target.join(run_id)}: {LATEST} kept moving ({POINTER_RACES} conditional "
                       f"writes lost to other runs); this run wrote no {MANIFEST}")


def replace(folder_uri: str, run_id: str, folders: Sequence[Path], options: Options = Options()) -> Published:
    """Make the folder itself hold this run's files (a platform's fixed model folder, Vertex's AIP_MODEL_DIR).

    A new run replaces the last one there, so its manifest.json goes first (a consumer never trusts a mix
    of two runs), then this run's files are uploaded and verified, the last run's files this one lacks are
    removed, and the new manifest is written last. No run-id folder, no latest.json.
    """
    started = time.perf_counter()
    store = open_store(folder_uri, options)
    entries = collect(folders)

    def finish() -> None:
        names = {e.name for e in entries}
        for stale in [name for name in _manifest_names(before) if name not in names]:
            store.delete(stale)
        store.put(MANIFEST, _manifest(run_id, entries), new=False)

    try:
        before = store.read(MANIFEST)
        if before is not None:
            store.delete(MANIFEST)
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear line
        raise StorageError(f"publishing to {store.target.join()} failed while removing the last run's {MANIFEST}: "
                           f"{store.reason(err)}") from err
    checks = _upload_checked(store, "", entries, finish)
    return Published(store.target.join(), len(entries), sum(e.size for e in entries),
                     round(time.perf_counter() - started, 3), sorted(set(checks)))


def _manifest_names(raw: bytes | None) -> list[str]:
    """The files an earlier manifest lists; none when there was none (or it is not ours)."""
    try:
        names = [item["name"] for item in json.loads(raw)["files"]] if raw else []
    except (ValueError, KeyError, TypeError):
        return []
    return [n for n in names if isinstance(n, str) and not n.startswith("/") and ".." not in n.split("/")]


def _upload_checked(store: Store, prefix: str, entries: list[FileEntry], finish: Callable[[], None]) -> list[str]:
    """Upload and verify every file under `prefix`, then `finish` (which writes the manifest); one clear error."""
    where = store.target.join(prefix) if prefix else store.target.join()
    names = [f"{prefix}/{e.name}" if prefix else e.name for e in entries]
    step, outcome = "uploading", "no manifest was written"
    try:
        store.upload(list(zip(names, entries)))
        step = "verifying the uploaded files"
        checks = [store.verify(name, e) for name, e in zip(names, entries)]
        step, outcome = f"writing {MANIFEST}", f"this run wrote no {MANIFEST}"
        finish()
    except StorageError as err:
        raise StorageError(f"publishing to {where} failed while {step}: {err}; {outcome}") from err
    except SeqclsError:
        raise  # Interrupted (SIGTERM) keeps its own exit code
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear line
        raise StorageError(f"publishing to {where} failed while {step}: {store.reason(err)}; {outcome}") from err
    return checks


def preflight_run(model_uri: str, output_uri: str, run_id: str, options: Options) -> None:
    """Before training: the platform's model folder (Vertex AIP_MODEL_DIR) and output_uri can be written."""
    if model_uri:
        preflight_folder(model_uri, options)
    if output_uri:
        preflight(output_uri, run_id, options)


def publish_run(model_uri: str, output_uri: str, run_id: str, folders: Sequence[Path], options: Options,
                gate: Gate | None = None) -> None:
    """After saving: the platform's model folder first (replaced, so a retry after a later failure redoes it
    safely), then <output_uri>/<run_id>/; each logged as `artifacts_published`. With a gate, output_uri goes
    first, so the model folder (Vertex AIP_MODEL_DIR) receives the files with the gate's final decision in them."""
    to_model = [lambda: replace(model_uri, run_id, folders, options)] if model_uri else []
    to_output = [lambda: publish(output_uri, run_id, folders, options, gate)] if output_uri else []
    for step in (to_output + to_model if gate is not None else to_model + to_output):
        published = step()
        logs.event("artifacts_published", f"published {published.files} files ({published.bytes} bytes) to "
                                          f"{published.uri} in {published.seconds:.1f}s",
                   uri=published.uri, files=published.files, bytes=published.bytes, seconds=published.seconds,
                   checks=published.checks)
