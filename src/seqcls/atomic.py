"""Files, safely: atomic replacement (a file appears complete or not at all), strict JSON written that way,
writable-folder checks, and which files in a folder count (hidden ones, such as staging folders and temp files, never do)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import outbound
from .errors import SetupError


def current_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success fsync it and rename it over `path`,
    on any failure delete it. The file gets the mode a plain open() would give (mkstemp's is 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    try:
        with replacing(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)  # "disk full" is only useful with the file that did not fit
        raise


def write_json(path: Path, value: Any) -> None:
    """Strict JSON (NaN and infinities as null), URL credentials masked: see outbound."""
    write_atomic(path, (outbound.dumps(value, indent=2, sort_keys=False, default=str) + "\n").encode())


def check_writable(folders: Iterable[Path]) -> None:
    """Create each folder and a file in it, so that a folder the job cannot write fails in seconds, not
    after training. A real write, not os.access: root passes access() on any mode, and FUSE mounts
    (Vertex's /gcs) answer it loosely."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".seqcls-write-check-"):
                pass
        except OSError as err:
            raise SetupError(f"cannot write to {folder} (running as uid {os.getuid()}, gid {os.getgid()}): "
                             f"{err.strerror or err}. The job writes its model, outputs and checkpoints there: run "
                             "the container as a user that can write it (the image's default user, root, can)") from None


def visible_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The folder's files in name order, leaving out any whose path inside it has a hidden part: staging
    folders, temp files of atomic writes, .cache folders."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
