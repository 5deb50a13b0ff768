"""Where artifacts go: s3://bucket/prefix, gs://bucket/prefix or a path, parsed once and checked early.

Its own small module so that settings can check `output_uri` before any training without importing
the storage clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingsError
from .outbound import MASK, mask

# Bucket names as the services define them: S3 3-63 characters of lowercase letters, digits, '.' and
# '-'; GCS 3-63, or up to 222 with dots, and '_' allowed too. The job and infra/'s submitters share these.
BUCKET_RULES = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"),
}


@dataclass(frozen=True)
class Target:
    """A parsed output location: scheme "s3", "gs" or "file"; for "file", `prefix` is the folder."""

    scheme: str
    bucket: str
    prefix: str

    def join(self, *names: str) -> str:
        parts = [p for p in (self.prefix, *names) if p]
        if self.scheme == "file":
            return str(Path(*parts)) if parts else "."
        return f"{self.scheme}://{self.bucket}/" + "/".join(parts)


def parse_uri(uri: str, what: str = "location") -> Target:
    """s3://bucket[/prefix], gs://bucket[/prefix] or a path; any other scheme is a settings error."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?(.*)$", uri)
    shown = mask(uri)  # every message below names the location, never a credential in it
    if match:
        scheme = match.group(1).lower()
        if scheme not in ("s3", "gs") or not match.group(2):
            raise SettingsError(f"{what} {shown!r}: unsupported location; "
                                "use s3://bucket/prefix, gs://bucket/prefix or a local/mounted path")
        if "?" in match.group(3) or "#" in match.group(3):
            raise SettingsError(f"{what} {shown!r}: a query string or fragment is not part of a {scheme}:// location "
                                "(a presigned token there would be logged and stored); credentials come from the "
                                "SDK's own chain (environment, profile, role), never from the URI")
        bucket, _, prefix = match.group(3).partition("/")
        if not BUCKET_RULES[scheme].match(bucket):
            allowed = "3-63 lowercase letters, digits, '.', '-'" if scheme == "s3" else \
                "3-222 lowercase letters, digits, '.', '-', '_'"
            named = f"{MASK}@{bucket.rpartition('@')[2]}" if "@" in bucket else bucket
            raise SettingsError(f"{what} {shown!r}: {named!r} is not a valid {scheme}:// bucket name ({allowed})")
        prefix = prefix.strip("/")
        if any(part in (".", "..") for part in prefix.split("/")) or "//" in prefix:
            raise SettingsError(f"{what} {shown!r}: the prefix must not hold empty, '.' or '..' parts")
        return Target(scheme, bucket, prefix)
    if not uri.strip():
        raise SettingsError(f"{what} is empty")
    return Target("file", "", uri)


def is_bucket_uri(uri: str, scheme: str) -> bool:
    """True for `<scheme>://<valid bucket>[/prefix]` (submitters check their channels with it)."""
    try:
        return parse_uri(uri).scheme == scheme
    except SettingsError:
        return False
