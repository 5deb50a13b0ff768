"""Storage: publish a run to s3://, gs:// or a path with the manifest written last; fetch it back verified.

The only module that talks to object storage. A consumer trusts a run folder only when its
`manifest.json` exists, and that object is written after every file has been uploaded and checked
against the server's own size and checksum, and never over an existing manifest. So a crash, a
killed job or a failed upload leaves a folder without a manifest (ignored), never a half model that
looks finished, and a rerun with the same run id cannot clobber a published model.

Credentials come from the default chains (AWS: env, profile, role; GCP: ADC) and are never logged.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Protocol, Sequence

from .atomic import replacing, visible_files
from .uris import Target, parse_uri
from . import logs
from .errors import SeqclsError, StorageError

MANIFEST = "manifest.json"
LATEST = "latest.json"
MANIFEST_FORMAT = "seqcls-manifest/1"
S3_MULTIPART_THRESHOLD = 32 * 1024 * 1024
S3_PART_BYTES = 16 * 1024 * 1024
S3_CONCURRENCY = 8
S3_MAX_ATTEMPTS = 8  # total attempts per request, standard mode (capped exponential backoff); AWS_MAX_ATTEMPTS overrides
POINTER_RACES = 20  # a gated publish re-reads latest.json and re-decides at most this often before giving up
GCS_CHUNK_BYTES = 16 * 1024 * 1024  # a multiple of 256 KiB; setting it makes every upload resumable
BLOCK = 1024 * 1024
_CREDENTIAL_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "InvalidToken", "AllAccessDisabled"}



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
class _Pointer:
    run_id: str | None  # None: no latest.json
    version: str | None  # what a conditional write must match: ETag, generation, sha256 (local)


def _digest(path: Path) -> tuple[int, str, str]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            sha.update(block)
            md5.update(block)
            size += len(block)
    return size, sha.hexdigest(), md5.hexdigest()


def _part_digests(path: Path, part_bytes: int, algorithm: str) -> list[bytes]:
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


def _b64(digest: bytes) -> str:
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
            size, sha256, md5 = _digest(path)
            entries[name] = FileEntry(name, path, size, sha256, md5)
    if not entries:
        raise StorageError(f"nothing to publish: {', '.join(map(str, folders))} hold no files")
    return list(entries.values())


def _raced(uri: str) -> StorageError:
    """A no-clobber write found the name taken: another publisher got there first."""
    return StorageError(f"{uri} was written by another publisher meanwhile; this run's copy is not the published one")


def _mismatch(uri: str, kind: str, got: object, expected: object) -> StorageError:
    """The server's checksum of an upload is not the local file's."""
    return StorageError(f"{uri}: server {kind} {got} does not match the local file's {expected}")


class _Store(ABC):
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


class _S3(_Store):
    def __init__(self, target: Target, options: Options) -> None:
        import boto3
        import botocore.session
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.target = target
        session = botocore.session.get_session()  # reads AWS_* env, profiles, AWS_ENDPOINT_URL_S3
        attempts = int(session.get_config_variable("max_attempts") or S3_MAX_ATTEMPTS)
        self.client = boto3.Session(botocore_session=session).client("s3", config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=10, read_timeout=120))
        self.transfer = TransferConfig(multipart_threshold=S3_MULTIPART_THRESHOLD, multipart_chunksize=S3_PART_BYTES,
                                       max_concurrency=S3_CONCURRENCY, preferred_transfer_client="classic")
        self.owner = {"ExpectedBucketOwner": options.s3_expected_bucket_owner} if options.s3_expected_bucket_owner else {}
        self.sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": options.s3_sse_kms_id} if options.s3_sse_kms_id else {}
        self.put_args = {"ChecksumAlgorithm": "SHA256", **self.sse, **self.owner}

    def _key(self, name: str) -> str:
        return "/".join(p for p in (self.target.prefix, name) if p)

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def upload(self, items: list[tuple[str, FileEntry]]) -> None:
        """All files through one TransferManager: parts and files upload concurrently, retried per request."""
        from boto3.s3.transfer import create_transfer_manager

        with create_transfer_manager(self.client, self.transfer) as manager:
            futures = [manager.upload(str(entry.path), self.target.bucket, self._key(name), extra_args=dict(self.put_args))
                       for name, entry in items]
            for future in futures:
                future.result()

    def verify(self, name: str, entry: FileEntry) -> str:
        """Compare the server's size and checksum (SHA-256, composite for multipart; else the MD5 ETag)."""
        from s3transfer.utils import ChunksizeAdjuster

        head = self.client.head_object(Bucket=self.target.bucket, Key=self._key(name), ChecksumMode="ENABLED", **self.owner)
        if head["ContentLength"] != entry.size:
            raise StorageError(f"{self.target.join(name)} holds {head['ContentLength']} bytes, expected {entry.size}")
        part_bytes = ChunksizeAdjuster().adjust_chunksize(S3_PART_BYTES, entry.size)
        stored = head.get("ChecksumSHA256")
        etag = head.get("ETag", "").strip('"')
        if stored:
            kind, got = "sha256", stored
            if "-" in stored:
                parts = _part_digests(entry.path, part_bytes, "sha256")
                expected = _b64(hashlib.sha256(b"".join(parts)).digest()) + f"-{len(parts)}"
            else:
                expected = _b64(bytes.fromhex(entry.sha256))
        elif re.fullmatch(r"[0-9a-f]{32}(-\d+)?", etag) and not self.sse:  # SSE-KMS ETags are not MD5s
            kind, got = "md5", etag
            if "-" in etag:
                parts = _part_digests(entry.path, part_bytes, "md5")
                expected = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
            else:
                expected = entry.md5
        else:
            return "size"
        if got != expected:
            raise _mismatch(self.target.join(name), kind, got, expected)
        return kind

    def put(self, name: str, data: bytes, new: bool) -> None:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if new else {}
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self._key(name), Body=data,
                                   ContentType="application/json", **self.put_args, **condition)
        except ClientError as err:
            if new and err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                if self.read(name) == data:
                    return  # a retry of our own write that landed but whose answer was lost
                raise _raced(self.target.join(name)) from None
            raise

    def read(self, name: str, limit: int | None = None) -> bytes | None:
        from botocore.exceptions import ClientError

        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            return self.client.get_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner, **ranged)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def read_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None, None
            raise
        return got["Body"].read(), got["ETag"]

    def put_if(self, name: str, data: bytes, version: str | None) -> bool:
        """PutObject with If-Match on the ETag read, or If-None-Match: * (S3 conditional writes). SeaweedFS 4.48 re-checks
        them under a per-object write lock for single-part PUTs (withObjectWriteLock, weed/s3api); ours is one."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.target.bucket, Key=self._key(name), Body=data,
                                   ContentType="application/json", **self.put_args, **condition)
            return True
        except ClientError as err:
            # 412: the ETag moved (or the object appeared); 409: a concurrent conditional write is in flight;
            # 404: If-Match on an object deleted meanwhile (AWS; SeaweedFS answers 412).
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                                             "409", "NoSuchKey", "404"):
                return self.read(name) == data  # our own write whose answer was lost and was retried
            raise

    def download(self, name: str, dest: Path) -> None:
        self.client.download_file(self.target.bucket, self._key(name), str(dest), ExtraArgs=dict(self.owner),
                                  Config=self.transfer)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.target.bucket, Key=self._key(name), **self.owner)

    def reason(self, err: Exception) -> str:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(err, NoCredentialsError):
            return "no AWS credentials found (env AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or instance role)"
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code, message = str(error.get("Code", "")), error.get("Message", "") or str(err)
            text = f"{code}: {message}"
            if code in _CREDENTIAL_CODES:
                text += " (check the AWS credentials and the bucket policy; the bucket owner if s3_expected_bucket_owner is set)"
            return text
        return f"{type(err).__name__}: {err} (endpoint {self.client.meta.endpoint_url})"


class _GCS(_Store):
    def __init__(self, target: Target) -> None:
        try:
            from google.cloud import storage as gcs
        except ImportError:
            raise StorageError(f"{target.join()} needs google-cloud-storage (a dependency of seqcls: reinstall it)") from None
        self.target = target
        self.client = gcs.Client()  # ADC; STORAGE_EMULATOR_HOST switches to the emulator with anonymous credentials
        self.bucket = self.client.bucket(target.bucket)

    def _blob(self, name: str):
        return self.bucket.blob("/".join(p for p in (self.target.prefix, name) if p), chunk_size=GCS_CHUNK_BYTES)

    def exists(self, name: str) -> bool:
        return self._blob(name).exists()

    def upload(self, items: list[tuple[str, FileEntry]]) -> None:
        """Resumable uploads, retried (whole-object writes of the same bytes are safe to repeat), crc32c-checked."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        for name, entry in items:
            self._blob(name).upload_from_filename(str(entry.path), checksum="crc32c", retry=DEFAULT_RETRY)

    def verify(self, name: str, entry: FileEntry) -> str:
        import google_crc32c

        blob = self.bucket.get_blob(self._blob(name).name)
        if blob is None:
            raise StorageError(f"{self.target.join(name)} is missing after upload")
        if blob.size != entry.size:
            raise StorageError(f"{self.target.join(name)} holds {blob.size} bytes, expected {entry.size}")
        crc = google_crc32c.Checksum()
        with entry.path.open("rb") as handle:
            for block in iter(lambda: handle.read(BLOCK), b""):
                crc.update(block)
        checks = {"crc32c": (blob.crc32c, _b64(crc.digest())), "md5": (blob.md5_hash, _b64(bytes.fromhex(entry.md5)))}
        done = []
        for kind, (got, expected) in checks.items():
            if got is None:
                continue
            if got != expected:
                raise _mismatch(self.target.join(name), kind, got, expected)
            done.append(kind)
        return "+".join(done) or "size"

    def put(self, name: str, data: bytes, new: bool) -> None:
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            self._blob(name).upload_from_string(data, content_type="application/json", retry=DEFAULT_RETRY,
                                                if_generation_match=0 if new else None)
        except PreconditionFailed:
            if self.read(name) == data:
                return  # a retry of our own write that landed but whose answer was lost
            raise _raced(self.target.join(name)) from None

    def read(self, name: str, limit: int | None = None) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return self._blob(name).download_as_bytes(**({} if limit is None else {"start": 0, "end": limit}))
        except NotFound:
            return None

    def read_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        """The object's metadata, then its bytes at that generation (ifGenerationMatch): bytes and version agree."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        for _ in range(POINTER_RACES):
            blob = self.bucket.get_blob(self._blob(name).name)
            if blob is None:
                return None, None
            try:
                return blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation)
            except (NotFound, PreconditionFailed):
                continue  # replaced or deleted between the two requests: read again
        raise StorageError(f"{self.target.join(name)} kept changing while being read")

    def put_if(self, name: str, data: bytes, version: str | None) -> bool:
        """ifGenerationMatch on the generation read, 0 when absent (GCS request preconditions)."""
        from google.api_core.exceptions import PreconditionFailed
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            self._blob(name).upload_from_string(data, content_type="application/json", retry=DEFAULT_RETRY,
                                                if_generation_match=int(version) if version else 0)
            return True
        except PreconditionFailed:
            return self.read(name) == data  # our own write whose answer was lost and was retried

    def download(self, name: str, dest: Path) -> None:
        self._blob(name).download_to_filename(str(dest))  # md5-checked by the client

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._blob(name).delete()
        except NotFound:
            pass

    def reason(self, err: Exception) -> str:
        from google.api_core.exceptions import Forbidden, GoogleAPICallError, Unauthorized
        from google.auth.exceptions import DefaultCredentialsError

        if isinstance(err, DefaultCredentialsError):
            return "no Google credentials found (Application Default Credentials)"
        if isinstance(err, GoogleAPICallError):
            hint = " (check the Google credentials and the bucket's IAM)" if isinstance(err, (Forbidden, Unauthorized)) else ""
            return f"{err.code}: {err.message}{hint}"
        return f"{type(err).__name__}: {err}"


class _Local(_Store):
    """A local or FUSE-mounted folder (Vertex's /gcs): every file written to a temp name, then renamed."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.root = Path(target.prefix)

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def _write(self, dest: Path, source: BinaryIO) -> None:
        with replacing(dest) as tmp, tmp.open("wb") as out:
            shutil.copyfileobj(source, out, BLOCK)

    def upload(self, items: list[tuple[str, FileEntry]]) -> None:
        for name, entry in items:
            with entry.path.open("rb") as source:
                self._write(self.root / name, source)

    def verify(self, name: str, entry: FileEntry) -> str:
        size, sha256, _ = _digest(self.root / name)  # reads back through the mount
        if (size, sha256) != (entry.size, entry.sha256):
            raise StorageError(f"{self.root / name} reads back as {size} bytes sha256 {sha256}, "
                               f"expected {entry.size} bytes sha256 {entry.sha256}")
        return "sha256"

    def put(self, name: str, data: bytes, new: bool) -> None:
        dest = self.root / name
        if new and dest.exists():  # a mounted bucket has no no-clobber rename: check, then rename
            raise _raced(str(dest))
        self._write(dest, io.BytesIO(data))

    def read(self, name: str, limit: int | None = None) -> bytes | None:
        path = self.root / name
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            return handle.read(-1 if limit is None else limit + 1)

    def read_versioned(self, name: str) -> tuple[bytes | None, str | None]:
        data = self.read(name)  # files are only ever renamed into place: a read sees one whole version
        return data, None if data is None else hashlib.sha256(data).hexdigest()

    def put_if(self, name: str, data: bytes, version: str | None) -> bool:
        """Compare and rename under an exclusive flock on a hidden lock file beside the object: writers on this
        host (or on a file system whose flock is shared, such as local disks) are serialised; a FUSE-mounted
        bucket (/gcs) shares no lock between machines, so gate such runs with gs:// instead."""
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.parent / f".{dest.name}.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes, also if the process dies
            if self.read_versioned(name)[1] != version:
                return False
            self._write(dest, io.BytesIO(data))
            return True

    def _inside(self, name: str) -> Path:
        """The entry `name` names, refused when a symlinked folder on the way leads out of the root."""
        path = self.root / name
        if not path.parent.resolve().is_relative_to(self.root.resolve()):
            raise StorageError(f"{path}: a folder on its way is a symlink out of {self.root}; it is never followed")
        return path

    def download(self, name: str, dest: Path) -> None:
        """A copy of a plain file, as a bucket download would give: a symlink or device is refused, never read."""
        path = self._inside(name)
        try:
            source = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW))
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise StorageError(f"{path} is a symlink: a published run holds plain files, and none is followed") from None
            raise
        with source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise StorageError(f"{path} is not a plain file")
            with dest.open("wb") as out:
                shutil.copyfileobj(source, out, BLOCK)

    def delete(self, name: str) -> None:
        """Removes the entry itself (a symlink, not what it points at), never through a symlinked folder."""
        self._inside(name).unlink(missing_ok=True)

    def reason(self, err: Exception) -> str:
        if isinstance(err, OSError):
            return f"{err.strerror or type(err).__name__}: {err.filename or self.root}"
        return f"{type(err).__name__}: {err}"


def open_store(uri: str, options: Options = Options()) -> _Store:
    target = parse_uri(uri)
    try:
        if target.scheme == "s3":
            return _S3(target, options)
        if target.scheme == "gs":
            return _GCS(target)
        return _Local(target)
    except SeqclsError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. no credentials or a bad AWS profile
        raise StorageError(f"cannot open {target.join()}: {type(err).__name__}: {err}") from err


def _check_free(store: _Store, run_id: str) -> None:
    """The run id must not hold a manifest yet, nor be where latest.json points (a gated publish stopped between
    moving latest.json and writing its manifest); also the first request, so bad credentials fail here."""
    try:
        taken = (f"{store.target.join(run_id, MANIFEST)} already exists" if store.exists(f"{run_id}/{MANIFEST}") else
                 f"{store.target.join(LATEST)} already points at it" if _read_pointer(store)[0].run_id == run_id else "")
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


def _pointer(store: _Store, run_id: str, entries: Sequence[FileEntry]) -> bytes:
    """latest.json: the run and its files with their digests, so a consumer can verify the run from the pointer
    alone (a gated publish moves the pointer just before the run's own manifest is written)."""
    manifest = json.loads(_manifest(run_id, entries))
    pointer = {"run_id": run_id, "uri": store.target.join(run_id), "manifest": store.target.join(run_id, MANIFEST),
               "published_at": manifest["created_at"], "total_bytes": manifest["total_bytes"], "files": manifest["files"]}
    return (json.dumps(pointer, indent=2) + "\n").encode()


def _read_pointer(store: _Store) -> tuple[_Pointer, dict | None]:
    """latest.json with its version; a file there that is not a seqcls pointer is an error, never overwritten."""
    raw, version = store.read_versioned(LATEST)
    if raw is None:
        return _Pointer(None, None), None
    try:
        body = json.loads(raw)
        run_id = body["run_id"]
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"{store.target.join(LATEST)} is not a seqcls latest.json (no run_id); move it away or "
                           "publish elsewhere") from None
    if not isinstance(run_id, str) or not run_id or "/" in run_id or run_id.startswith("."):
        raise StorageError(f"{store.target.join(LATEST)} names an unsafe run id {run_id!r}")
    return _Pointer(run_id, version), body


def _publish_gated(store: _Store, run_id: str, folders: Sequence[Path], gate: Gate) -> tuple[list[FileEntry], list[str]]:
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
            pointer, _ = _read_pointer(store)
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


def _upload_checked(store: _Store, prefix: str, entries: list[FileEntry], finish: Callable[[], None]) -> list[str]:
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


def _check_against_manifest(manifest: dict, folder: Path, source: str) -> None:
    """Sizes first (a wrong size is never hashed), then sha256."""
    for item in manifest["files"]:
        size = (folder / item["name"]).stat().st_size
        if size != item["size"]:
            raise StorageError(f"{source}: {item['name']} is {size} bytes but {MANIFEST} says {item['size']} bytes")
        _, sha256, _ = _digest(folder / item["name"])
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


def _followed(store: _Store) -> tuple[_Store, bytes] | None:
    """The run latest.json points at, and the manifest to check it by: its own, else the pointer's file list (a
    gated publish moves the pointer just before writing the run's manifest). None when there is no latest.json."""
    pointer, body = _read_pointer(store)
    if pointer.run_id is None:
        return None
    run = open_store(store.target.join(pointer.run_id))
    raw = run.read(MANIFEST)
    if raw is None and isinstance(body.get("files"), list):
        raw = json.dumps({"format": MANIFEST_FORMAT, "run_id": pointer.run_id, "files": body["files"]}).encode()
    logs.event("latest_followed", f"{store.target.join(LATEST)} points at run {pointer.run_id}",
               latest=store.target.join(LATEST), run_id=pointer.run_id, uri=run.target.join())
    return run, raw


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
