"""What every storage backend shares: the interface a backend implements (`Store`), the records publishing passes
around (files, options, the published result, the gate's view of the current run), and the digests the checks use."""

from __future__ import annotations

import base64
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ..atomic import visible_files
from ..errors import StorageError
from ..uris import Target

MANIFEST = "manifest.json"
LATEST = "latest.json"
MANIFEST_FORMAT = "seqcls-manifest/1"
POINTER_RACES = 20  # a gated publish re-reads latest.json and re-decides at most this often before giving up
BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Options:
    """Publish options from the hyperparameters (S3 ones are ignored for other schemes)."""

    s3_sse_kms_id: str = ""
    s3_expected_bucket_owner: str = ""
    latest: bool = True


@dataclass(frozen=True)
class FileEntry:
    name: str  # path inside the run folder (posix)
    path: Path  # local file
    size: int
    sha256: str  # hex
    md5: str  # hex


@dataclass(frozen=True)
class Published:
    uri: str  # the run folder
    files: int  # artifacts, manifest not counted
    bytes: int
    seconds: float
    checks: list[str]  # how the server's copies were verified ("sha256", "md5", "crc32c+md5", ...)


@dataclass(frozen=True)
class Current:
    """The run latest.json points at, as a gate sees it: its id (None: no latest.json) and its published files."""

    run_id: str | None
    read: Callable[[str, int], bytes | None]  # a file of that run folder by name, at most limit + 1 bytes; None if absent


class Gate(Protocol):
    """Decides, per attempt, whether latest.json moves to this run (promotion.Gate)."""

    def decide(self, current: Current) -> bool:
        """Decide against `current` and record the decision in the local files about to be (re)uploaded."""

    def commit(self) -> None:
        """The last decision stood: this run's manifest is written and latest.json moved (or was left)."""


@dataclass(frozen=True)
class Pointer:
    run_id: str | None  # None: no latest.json
    version: str | None  # what a conditional write must match: ETag, generation, sha256 (local)


def file_digest(path: Path) -> tuple[int, str, str]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return size, sha.hexdigest(), md5.hexdigest()


def part_digests(path: Path, part_bytes: int, algorithm: str) -> list[bytes]:
    """Per-part digests, for the composite checksums and ETags of multipart uploads."""
    digests = []
    with path.open("rb") as handle:
        while True:
            h, left = hashlib.new(algorithm), part_bytes
            while left:
                block = handle.read(min(BLOCK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            if left == part_bytes:
                return digests
            digests.append(h.digest())


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def collect(folders: Sequence[Path]) -> list[FileEntry]:
    """Every non-hidden file of the folders, named by its path inside its folder; names must not collide."""
    entries: dict[str, FileEntry] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in visible_files(folder):  # not staging folders or temp files of atomic writes
            name = path.relative_to(folder).as_posix()
            if name in (MANIFEST, LATEST) or name in entries:
                other = entries[name].path if name in entries else "the publisher's own file"
                raise StorageError(f"cannot publish {path}: its name {name!r} collides with {other} "
                                   "(the published folder is flat)")
            size, sha256, md5 = file_digest(path)
            entries[name] = FileEntry(name, path, size, sha256, md5)
    if not entries:
        raise StorageError(f"nothing to publish: {', '.join(map(str, folders))} hold no files")
    return list(entries.values())


def raced(uri: str) -> StorageError:
    """A no-clobber write found the name taken: another publisher got there first."""
    return StorageError(f"{uri} was written by another publisher meanwhile; this run's copy is not the published one")


def mismatch(uri: str, kind: str, got: object, expected: object) -> StorageError:
    """The server's checksum of an upload is not the local file's."""
    return StorageError(f"{uri}: server {kind} {got} does not match the local file's {expected}")


class Store(ABC):
    """One backend. Names are relative to the target; methods may raise the backend's own errors."""

    target: Target

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the object is there (a missing one is False, a denied check raises)."""

    @abstractmethod
    def upload(self, items: list[tuple[str, FileEntry]]) -> None:
        """Upload every (name, local file); retries are the backend's."""

    @abstractmethod
    def verify(self, name: str, entry: FileEntry) -> str:
        """Raise StorageError unless the stored object matches the file; return the check used."""

    @abstractmethod
    def put(self, name: str, data: bytes, new: bool) -> None:
        """Write a small object; with `new`, fail instead of replacing an existing one."""

    @abstractmethod
    def read(self, name: str, limit: int | None = None) -> bytes | None:
        """The object's bytes (at most limit + 1 of them, so a caller sees it is over), or None when absent."""

    @abstractmethod
    def read_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        """The object's bytes and the version a conditional write must match, in agreement; (None, None) when absent."""

    @abstractmethod
    def put_if(self, name: str, data: bytes, version: str | None) -> bool:
        """Write a small object only if it is still at `version` (None: only if it does not exist); False when
        another writer changed it meanwhile. Exactly one of several racing writers of one version succeeds."""

    @abstractmethod
    def download(self, name: str, dest: Path) -> None:
        """Copy the object to a local file."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object; a missing one is not an error."""

    def reason(self, err: Exception) -> str:
        """One line for the failure file: what went wrong, with a hint where one helps."""
        return f"{type(err).__name__}: {err}"
