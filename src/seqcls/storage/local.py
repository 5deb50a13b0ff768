"""The local-path backend (a folder, or a FUSE mount such as Vertex's /gcs): copies checked by sha256, no-clobber and
locked conditional writes."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from ..atomic import replacing
from ..errors import StorageError
from ..uris import Target
from .base import BLOCK, FileEntry, Store, file_digest, raced


class LocalStore(Store):
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
        size, sha256, _ = file_digest(self.root / name)  # reads back through the mount
        if (size, sha256) != (entry.size, entry.sha256):
            raise StorageError(f"{self.root / name} reads back as {size} bytes sha256 {sha256}, "
                               f"expected {entry.size} bytes sha256 {entry.sha256}")
        return "sha256"

    def put(self, name: str, data: bytes, new: bool) -> None:
        dest = self.root / name
        if new and dest.exists():  # a mounted bucket has no no-clobber rename: check, then rename
            raise raced(str(dest))
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
