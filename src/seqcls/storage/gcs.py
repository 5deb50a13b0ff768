"""The Google Cloud Storage backend: resumable uploads, crc32c/md5 verification, generation-matched writes for
latest.json."""

from __future__ import annotations

from pathlib import Path

from ..errors import StorageError
from ..uris import Target
from .base import BLOCK, POINTER_RACES, FileEntry, Store, b64, mismatch, raced

GCS_CHUNK_BYTES = 16 * 1024 * 1024  # a multiple of 256 KiB; setting it makes every upload resumable


class GCSStore(Store):
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
        checks = {"crc32c": (blob.crc32c, b64(crc.digest())), "md5": (blob.md5_hash, b64(bytes.fromhex(entry.md5)))}
        done = []
        for kind, (got, expected) in checks.items():
            if got is None:
                continue
            if got != expected:
                raise mismatch(self.target.join(name), kind, got, expected)
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
            raise raced(self.target.join(name)) from None

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
